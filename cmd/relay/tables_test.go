package main

import (
	"context"
	"encoding/json"
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"

	"github.com/outbox-relay/outbox-relay/internal/e2e"
	"github.com/outbox-relay/outbox-relay/internal/relay"
)

// tableRow is one row a multi-table test writes: into which table, and its
// place in the one global order of the writes (payload {"n": n}).
type tableRow struct {
	table string // quoted, schema-qualified
	// insert is the INSERT for the row, with $1 the payload; {n} in it
	// reads the row's number.
	insert string
}

// tenantOutbox creates schema.outbox, an outbox table with a bigserial id
// and no headers column.
func tenantOutbox(schema string) string {
	return fmt.Sprintf(`CREATE TABLE %s.outbox (id bigserial PRIMARY KEY, aggregate_type text NOT NULL, aggregate_id text NOT NULL,
		event_type text NOT NULL, payload jsonb NOT NULL, created_at timestamptz NOT NULL DEFAULT now());`, schema)
}

// multiTableWriter commits transactions of rows in several tables, one
// transaction at a time, so commit order is the order of n.
type multiTableWriter struct {
	conn *pgx.Conn
	next int
}

func newMultiTableWriter(t *testing.T, url string) *multiTableWriter {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, url)
	require.NoError(t, err)
	t.Cleanup(func() { _ = conn.Close(context.Background()) })
	return &multiTableWriter{conn: conn}
}

// commit writes rows in one transaction, after the statements in before
// (DDL, say), numbering the rows from the writer's counter.
func (w *multiTableWriter) commit(t *testing.T, before string, rows ...tableRow) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	tx, err := w.conn.Begin(ctx)
	require.NoError(t, err)
	defer func() { _ = tx.Rollback(ctx) }()
	if before != "" {
		_, err := tx.Exec(ctx, before)
		require.NoError(t, err)
	}
	for _, r := range rows {
		_, err := tx.Exec(ctx, strings.ReplaceAll(r.insert, "{n}", strconv.Itoa(w.next)), fmt.Sprintf(`{"n": %d}`, w.next))
		require.NoError(t, err, r.insert)
		w.next++
	}
	require.NoError(t, tx.Commit(ctx))
}

// checkGlobalOrder asserts the stream's event messages carry n = 0, 1, ...,
// want-1 in stream order (every row once, in commit order across tables),
// and returns them.
func checkGlobalOrder(t *testing.T, f *fixture, want int) []e2e.StoredMessage {
	t.Helper()
	var events []e2e.StoredMessage
	for _, m := range e2e.ReadStream(t, f.nc, "OUTBOX") {
		if !strings.HasPrefix(m.Subject, "outbox_dead_letter.") {
			events = append(events, m)
		}
	}
	require.Len(t, events, want, "every committed row once")
	for i, m := range events {
		var body struct{ N int }
		require.NoError(t, json.Unmarshal(m.Data, &body), string(m.Data))
		require.Equal(t, i, body.N, "stream position %d holds row n=%d (%s, %s): commit order across tables", i, body.N, m.Subject, m.Header.Get("Nats-Msg-Id"))
	}
	return events
}

// TestSeveralTablesShareOneSlot: one relay, one slot and one publication
// carry two outbox tables in different schemas with different column names
// and ids that repeat across them (a sequence each). With
// --message-id=table-id each event's Nats-Msg-Id is <schema>.<table>/<id>,
// so JetStream keeps both of two rows with the same id; {schema} and {table}
// name the table in the subject; rows of both tables, in one transaction and
// across transactions, land once each in commit order, across a kill of the
// relay mid-stream.
func TestSeveralTablesShareOneSlot(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	f.pg.Exec(t, f.db, `CREATE SCHEMA billing; CREATE SCHEMA shop;
		`+tenantOutbox("billing")+`
		CREATE TABLE shop.events (event_id bigserial PRIMARY KEY, entity text NOT NULL, entity_id text NOT NULL,
			kind text NOT NULL, body jsonb NOT NULL, created_at timestamp NOT NULL DEFAULT now());
		CREATE TABLE public.audit (id bigserial PRIMARY KEY, note text);`)
	env := []string{
		"RELAY_TABLE", "billing.outbox, shop.events",
		"RELAY_TABLE_COLUMNS", "shop.events: id=event_id aggregate-type=entity aggregate-id=entity_id event-type=kind payload=body",
		"RELAY_COLUMN_HEADERS", "",
		"RELAY_MESSAGE_ID", "table-id",
		"RELAY_SUBJECT_TEMPLATE", "outbox.{schema}.{table}.{event_type}",
	}
	billing := tableRow{table: "billing.outbox", insert: `INSERT INTO billing.outbox (aggregate_type, aggregate_id, event_type, payload) VALUES ('invoice', '1', 'issued', $1)`}
	shop := tableRow{table: "shop.events", insert: `INSERT INTO shop.events (entity, entity_id, kind, body) VALUES ('order', '7', 'placed', $1)`}
	audit := `INSERT INTO public.audit (note) VALUES ('not an outbox')`
	w := newMultiTableWriter(t, f.pg.AdminURL(f.db))

	// Without --message-id, several tables are refused: ids may repeat.
	refused := e2e.StartRelay(t, f.bin, f.env(env[:len(env)-4]...))
	code, err := refused.Wait(30 * time.Second)
	require.NoError(t, err)
	require.NotZero(t, code, refused.Logs())
	require.Contains(t, refused.Logs(), "message-id: required with several tables")

	r := f.startRelay(t, env...)
	shapes := [][]tableRow{{billing}, {shop}, {billing, shop, billing}, {shop, shop}, {shop, billing}}
	for i := range 60 {
		if i == 30 {
			r.Signal(syscall.SIGKILL)
			_, _ = r.Wait(10 * time.Second)
		}
		before := ""
		if i%7 == 0 {
			before = audit
		}
		w.commit(t, before, shapes[i%len(shapes)]...)
		if i == 40 {
			r = f.startRelay(t, env...)
		}
	}
	f.waitStream(t, w.next, time.Minute)
	events := checkGlobalOrder(t, f, w.next)
	ids := map[string]bool{}
	for _, m := range events {
		id := m.Header.Get("Nats-Msg-Id")
		switch {
		case strings.HasPrefix(id, "billing.outbox/"):
			require.Equal(t, "outbox.billing.outbox.issued", m.Subject)
		case strings.HasPrefix(id, "shop.events/"):
			require.Equal(t, "outbox.shop.events.placed", m.Subject)
			require.Equal(t, "order", m.Header.Get("Outbox-Aggregate-Type"), "shop.events maps its own columns")
		default:
			t.Fatalf("message id %q is not qualified by its table", id)
		}
		ids[id] = true
	}
	require.True(t, ids["billing.outbox/1"] && ids["shop.events/1"], "both tables' row 1 are on the stream")

	// A restart resumes where it was: nothing published twice.
	stopRelay(t, r)
	w.commit(t, "", billing, shop)
	f.startRelay(t, env...)
	f.waitStream(t, w.next, time.Minute)
	checkGlobalOrder(t, f, w.next)
	require.Never(t, func() bool { return e2e.StreamCount(f.nc, "OUTBOX") > w.next }, 2*time.Second, 200*time.Millisecond)
}

// TestTablePatternPicksUpTenantsCreatedLater: --table='*.outbox' reads
// every schema's outbox table through a publication FOR ALL TABLES, which
// the relay creates (a superuser here) and requires: one that lists its
// tables is refused, naming the fix. A tenant schema created while the relay
// runs, with rows written in the very transaction that creates it, is
// picked up; a tenant dropped while the relay runs and a relay killed in
// between lose nothing; tables the pattern does not match are ignored. A
// tenant table that lacks a mapped column stops the relay, naming it.
func TestTablePatternPicksUpTenantsCreatedLater(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	tenant := func(name string) string {
		return "CREATE SCHEMA " + name + "; " + tenantOutbox(name)
	}
	row := func(name string) tableRow {
		return tableRow{table: name + ".outbox", insert: fmt.Sprintf(`INSERT INTO %s.outbox (aggregate_type, aggregate_id, event_type, payload) VALUES ('account', '1', 'opened', $1)`, name)}
	}
	f.pg.Exec(t, f.db, tenant("tenant_a")+`CREATE TABLE public.outbox_like (id bigserial, payload jsonb);
		CREATE PUBLICATION outbox_relay FOR TABLE tenant_a.outbox WITH (publish = 'insert')`)
	env := []string{
		"RELAY_TABLE", "*.outbox",
		"RELAY_COLUMN_HEADERS", "",
		"RELAY_MESSAGE_ID", "table-id",
		"RELAY_SUBJECT_TEMPLATE", "outbox.{schema}.{event_type}",
	}

	// A publication that lists its tables would miss tenants created later.
	refused := e2e.StartRelay(t, f.bin, f.env(env...))
	code, err := refused.Wait(60 * time.Second)
	require.NoError(t, err)
	require.NotZero(t, code, refused.Logs())
	require.Contains(t, refused.Logs(), "a pattern needs a publication FOR ALL TABLES")
	// One that publishes a partitioned tenant's rows under its partitions'
	// names would hide them.
	f.pg.Exec(t, f.db, `DROP PUBLICATION outbox_relay; CREATE PUBLICATION outbox_relay FOR ALL TABLES WITH (publish = 'insert')`)
	refused = e2e.StartRelay(t, f.bin, f.env(env...))
	code, err = refused.Wait(60 * time.Second)
	require.NoError(t, err)
	require.NotZero(t, code, refused.Logs())
	require.Contains(t, refused.Logs(), "publish_via_partition_root = true")
	f.pg.Exec(t, f.db, `DROP PUBLICATION outbox_relay`)

	r := f.startRelay(t, env...)
	w := newMultiTableWriter(t, f.pg.AdminURL(f.db))
	for i := range 10 {
		w.commit(t, `INSERT INTO public.outbox_like (payload) VALUES ('{}')`, row("tenant_a"))
		if i == 4 {
			// A tenant created, and written to, in one transaction.
			w.commit(t, tenant("tenant_b"), row("tenant_b"), row("tenant_a"), row("tenant_b"))
		}
		if i > 4 {
			w.commit(t, "", row("tenant_b"))
		}
	}
	r.Signal(syscall.SIGKILL)
	_, _ = r.Wait(10 * time.Second)
	// While the relay is down: a tenant created, written to, and another
	// dropped with its rows published or not.
	w.commit(t, tenant("tenant_c"), row("tenant_c"), row("tenant_a"))
	w.commit(t, `DROP SCHEMA tenant_a CASCADE`, row("tenant_b"))
	r = f.startRelay(t, env...)
	w.commit(t, "", row("tenant_c"), row("tenant_b"))
	// A tenant dropped while the relay runs, right after its last row.
	w.commit(t, `DROP SCHEMA tenant_c CASCADE`, row("tenant_b"))
	f.waitStream(t, w.next, time.Minute)
	events := checkGlobalOrder(t, f, w.next)
	schemas := map[string]int{}
	for _, m := range events {
		schema := strings.Split(m.Subject, ".")[1]
		require.True(t, strings.HasPrefix(m.Header.Get("Nats-Msg-Id"), schema+".outbox/"), m.Header.Get("Nats-Msg-Id"))
		schemas[schema]++
	}
	require.Equal(t, map[string]int{"tenant_a": 12, "tenant_b": 10, "tenant_c": 2}, schemas)

	// A tenant table the mapping does not fit stops the relay loudly.
	f.pg.Exec(t, f.db, `CREATE SCHEMA tenant_d; CREATE TABLE tenant_d.outbox (id bigserial PRIMARY KEY, payload jsonb NOT NULL);
		INSERT INTO tenant_d.outbox (payload) VALUES ('{}')`)
	code, err = r.Wait(time.Minute)
	require.NoError(t, err, "the relay should stop")
	require.NotZero(t, code)
	require.Contains(t, r.Logs(), `outbox table tenant_d.outbox has no column`)
}

// TestSeveralTablesSnapshotCleanupAndReplay: the initial snapshot, the
// janitor and relay replay work on every table a pattern names. Rows
// written before the slot into two tenants' tables are published first, in
// creation order across both tables, then the rows committed later; rows
// older than the retention are deleted from both tables; a replay of the
// last hour republishes both tables' rows in creation order, with ids
// qualified by table.
func TestSeveralTablesSnapshotCleanupAndReplay(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	f.pg.Exec(t, f.db, `CREATE SCHEMA tenant_a; CREATE SCHEMA tenant_b;
		`+tenantOutbox("tenant_a")+`
		CREATE TABLE tenant_b.outbox (LIKE tenant_a.outbox INCLUDING ALL);
		CREATE SEQUENCE tenant_b.ids; ALTER TABLE tenant_b.outbox ALTER COLUMN id SET DEFAULT nextval('tenant_b.ids')`)
	row := func(schema, created string) tableRow {
		return tableRow{table: schema + ".outbox", insert: fmt.Sprintf(`INSERT INTO %s.outbox (aggregate_type, aggregate_id, event_type, payload, created_at)
			VALUES ('account', '{n}', 'opened', $1, %s)`, schema, created)}
	}
	// Created at a time that grows with n: three hours ago (older than the
	// retention) or half an hour ago. Tenant b's transaction commits first
	// but its rows were created after tenant a's: creation order, not
	// commit order, is what the table records.
	threeHours := "now() - interval '3 hours' + {n} * interval '1 second'"
	halfHour := "now() - interval '30 minutes' + {n} * interval '1 second'"
	w := newMultiTableWriter(t, f.pg.AdminURL(f.db))
	w.next = 2
	w.commit(t, "", row("tenant_b", threeHours), row("tenant_b", threeHours))
	w.next = 0
	w.commit(t, "", row("tenant_a", threeHours), row("tenant_a", threeHours))
	w.next = 4
	for range 3 {
		w.commit(t, "", row("tenant_a", halfHour), row("tenant_b", halfHour))
	}
	env := []string{
		"RELAY_TABLE", "tenant_*.outbox",
		"RELAY_COLUMN_HEADERS", "",
		"RELAY_MESSAGE_ID", "table-id",
		"RELAY_SUBJECT_TEMPLATE", "outbox.{schema}.{event_type}",
		"RELAY_INITIAL_SNAPSHOT", "all",
		"RELAY_RETENTION", "1h", "RELAY_RETENTION_INTERVAL", "500ms",
	}
	r := f.startRelay(t, env...)
	for range 3 {
		// Rows of one transaction share now(); clock_timestamp() orders them.
		w.commit(t, "", row("tenant_b", "clock_timestamp()"), row("tenant_a", "clock_timestamp()"))
	}
	f.waitStream(t, w.next, time.Minute)
	checkGlobalOrder(t, f, w.next)

	// The janitor deletes the old rows of both tables, and only those.
	oldRows := func() (old, all int) {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		conn, err := pgx.Connect(ctx, f.pg.AdminURL(f.db))
		require.NoError(t, err)
		defer func() { _ = conn.Close(ctx) }()
		require.NoError(t, conn.QueryRow(ctx, `SELECT count(*) FILTER (WHERE created_at < now() - interval '1 hour'), count(*)
			FROM (SELECT created_at FROM tenant_a.outbox UNION ALL SELECT created_at FROM tenant_b.outbox) rows`).Scan(&old, &all))
		return old, all
	}
	require.Eventually(t, func() bool { old, _ := oldRows(); return old == 0 }, 30*time.Second, 200*time.Millisecond, "old rows deleted")
	_, all := oldRows()
	require.Equal(t, w.next-4, all, "newer rows kept")
	require.Eventually(t, func() bool { return r.Metrics()["outbox_relay_janitor_rows_deleted_total"] == 4 }, 10*time.Second, 100*time.Millisecond)
	code, out := runCommand(t, f.bin, f.env(env...), "status")
	require.Equal(t, 0, code, out)
	require.Contains(t, out, "initial snapshot:    done (all)")
	require.Contains(t, out, "rows deleted:        4")

	// A replay of the last hour, into a stream of its own.
	js, err := jetstream.New(f.nc)
	require.NoError(t, err)
	_, err = js.CreateStream(context.Background(), jetstream.StreamConfig{Name: "REPLAY", Subjects: []string{"replay.>"}, Storage: jetstream.FileStorage})
	require.NoError(t, err)
	code, out = runCommand(t, f.bin, f.env(env...), "replay", "--replay-since="+time.Now().Add(-time.Hour).UTC().Format(time.RFC3339),
		"--replay-subject-prefix=replay", "--replay-id=r1")
	require.Equal(t, 0, code, out)
	require.Contains(t, out, fmt.Sprintf("replay r1: %d rows selected, %[1]d published", w.next-4))
	replayed := e2e.ReadStream(t, f.nc, "REPLAY")
	require.Len(t, replayed, w.next-4)
	for i, m := range replayed {
		var body struct{ N int }
		require.NoError(t, json.Unmarshal(m.Data, &body))
		require.Equal(t, i+4, body.N, "creation order across both tables")
		of := m.Header.Get(relay.HeaderReplayOf)
		require.Regexp(t, `^tenant_[ab]\.outbox/\d+$`, of)
		require.Equal(t, of+"/replay/r1", m.Header.Get(nats.MsgIdHdr))
		require.True(t, strings.HasPrefix(m.Subject, "replay.outbox."+strings.Split(of, ".")[0]+"."), m.Subject)
	}
}

// TestAddingATableAsDocumented: the README's procedure for adding a table to
// a running setup: stop the relay, add the table to the publication under a
// lock that keeps its writers out, restart with the longer --table, which is
// refused until the publication change is acknowledged; then the new table's
// rows are published after the old one's, nothing lost or doubled.
func TestAddingATableAsDocumented(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	f.pg.Exec(t, f.db, `CREATE SCHEMA billing; CREATE SCHEMA shop;
		`+tenantOutbox("billing")+`
		CREATE TABLE shop.outbox (LIKE billing.outbox INCLUDING ALL)`)
	row := func(schema string) tableRow {
		return tableRow{table: schema + ".outbox", insert: fmt.Sprintf(`INSERT INTO %s.outbox (aggregate_type, aggregate_id, event_type, payload) VALUES ('a', '1', 'e', $1)`, schema)}
	}
	env := []string{
		"RELAY_TABLE", "billing.outbox", "RELAY_COLUMN_HEADERS", "", "RELAY_MESSAGE_ID", "table-id",
		"RELAY_SUBJECT_TEMPLATE", "outbox.{schema}.{event_type}",
	}
	w := newMultiTableWriter(t, f.pg.AdminURL(f.db))
	r := f.startRelay(t, env...)
	w.commit(t, "", row("billing"), row("billing"))
	f.waitStream(t, 2, 30*time.Second)
	stopRelay(t, r)

	w.commit(t, "", row("billing"))
	f.pg.Exec(t, f.db, strings.ReplaceAll(readmeSQL(t, "or by you. Adding a table to"), "new_service.outbox", "shop.outbox"))
	env[1] = "billing.outbox, shop.outbox"
	again := e2e.StartRelay(t, f.bin, f.env(env...))
	code, err := again.Wait(time.Minute)
	require.NoError(t, err, "the relay must refuse to start")
	require.NotZero(t, code)
	require.Contains(t, again.Logs(), "changed since the relay last started")
	digest := regexp.MustCompile(`--accept-publication=([0-9a-f]+)`).FindStringSubmatch(again.Logs())
	require.NotNil(t, digest, "the error says how to acknowledge the change")

	w.commit(t, "", row("shop"), row("billing"), row("shop"))
	f.startRelay(t, append(env, "RELAY_ACCEPT_PUBLICATION", digest[1])...)
	w.commit(t, "", row("shop"))
	f.waitStream(t, w.next, time.Minute)
	checkGlobalOrder(t, f, w.next)
}
