package main

import (
	"context"
	"fmt"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"

	"github.com/outbox-relay/outbox-relay/internal/e2e"
)

// Review tests of several outbox tables (--table patterns): each writes a row
// the relay should publish, or stop for, then a barrier row in a fresh tenant
// that the relay does publish; once the barrier is on the stream, the row
// before it must be on the stream too, or the relay must have stopped.

// reviewPatternEnv is the relay's configuration for tenant_*.outbox.
func reviewPatternEnv(extra ...string) []string {
	return append([]string{
		"RELAY_TABLE", "tenant_*.outbox",
		"RELAY_COLUMN_HEADERS", "",
		"RELAY_MESSAGE_ID", "table-id",
		"RELAY_SUBJECT_TEMPLATE", "outbox.{schema}.{event_type}",
	}, extra...)
}

func reviewRow(table string) tableRow {
	return tableRow{table: table, insert: fmt.Sprintf(`INSERT INTO %s (aggregate_type, aggregate_id, event_type, payload) VALUES ('account', '{n}', 'opened', $1)`, table)}
}

// requireAllOrStopped waits for the barrier (the stream holding at least
// barrier events), then asserts that the stream holds want events or that
// the relay stopped.
func requireAllOrStopped(t *testing.T, f *fixture, r *e2e.Relay, barrier, want int) {
	t.Helper()
	require.Eventually(t, func() bool { return e2e.StreamCount(f.nc, "OUTBOX") >= barrier || r.Exited() }, time.Minute, 50*time.Millisecond)
	// Give a slow relay every chance to publish the rest or to stop.
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) && e2e.StreamCount(f.nc, "OUTBOX") < want && !r.Exited() {
		time.Sleep(100 * time.Millisecond)
	}
	if r.Exited() {
		if reviewDebug {
			t.Logf("relay stopped: %s", r.LogText())
		}
		return
	}
	var ids []string
	for _, m := range e2e.ReadStream(t, f.nc, "OUTBOX") {
		ids = append(ids, m.Header.Get("Nats-Msg-Id"))
	}
	require.Len(t, ids, want, "the relay runs on (slot confirmed at %s) and the stream lacks rows: %s", f.slotConfirmed(t), strings.Join(ids, " "))
}

// startTenantA starts a relay of tenant_*.outbox with one tenant, tenant_a,
// and writes a row to it, which may still be on its way to the stream.
func startTenantA(t *testing.T) (*fixture, *e2e.Relay, *multiTableWriter) {
	t.Helper()
	t.Parallel()
	f := newFixture(t)
	f.pg.Exec(t, f.db, `CREATE SCHEMA tenant_a; `+tenantOutbox("tenant_a"))
	r := f.startRelay(t, reviewPatternEnv()...)
	w := newMultiTableWriter(t, f.pg.AdminURL(f.db))
	w.commit(t, "", reviewRow("tenant_a.outbox"))
	return f, r, w
}

// TestReviewPatternUnloggedTenantTable: a publication FOR ALL TABLES does not
// publish unlogged tables, and PostgreSQL allows ALTER TABLE ... SET UNLOGGED
// on a table that is a member of no publication by name; a tenant table the
// pattern matches that is unlogged (created so, or altered) has its rows
// silently skipped by the running relay, while the initial snapshot and
// replay would read them.
func TestReviewPatternUnloggedTenantTable(t *testing.T) {
	f, r, w := startTenantA(t)

	// A tenant created unlogged, and an existing one altered to unlogged.
	w.commit(t, `CREATE SCHEMA tenant_b; `+strings.Replace(tenantOutbox("tenant_b"), "CREATE TABLE", "CREATE UNLOGGED TABLE", 1),
		reviewRow("tenant_b.outbox"))
	w.commit(t, `ALTER TABLE tenant_a.outbox SET UNLOGGED`, reviewRow("tenant_a.outbox"))
	// The barrier.
	w.commit(t, `CREATE SCHEMA tenant_c; `+tenantOutbox("tenant_c"), reviewRow("tenant_c.outbox"))
	requireAllOrStopped(t, f, r, 2, w.next)
}

// TestReviewPatternTenantAttachedAsPartition: a tenant table the pattern
// matches, attached as a partition of a table no pattern matches, has its
// rows published via that root under the root's name, which the relay drops
// as no outbox; the publication fingerprint covers only listed tables, so
// nothing notices.
func TestReviewPatternTenantAttachedAsPartition(t *testing.T) {
	f, r, w := startTenantA(t)

	w.commit(t, `CREATE TABLE public.all_outbox (id bigint NOT NULL, aggregate_type text NOT NULL, aggregate_id text NOT NULL,
			event_type text NOT NULL, payload jsonb NOT NULL, created_at timestamptz NOT NULL DEFAULT now()) PARTITION BY LIST (aggregate_type);
		ALTER TABLE public.all_outbox ATTACH PARTITION tenant_a.outbox FOR VALUES IN ('account')`, reviewRow("tenant_a.outbox"))
	w.commit(t, `CREATE SCHEMA tenant_c; `+tenantOutbox("tenant_c"), reviewRow("tenant_c.outbox"))
	requireAllOrStopped(t, f, r, 2, w.next)
}

// TestReviewPatternRenameAfterRestart: the README says a table the relay
// read as an outbox that is renamed out of the pattern while it runs stops
// it. The decoder learns the pattern tables' OIDs only from the Relation
// messages of its current session, so after a restart (or any reconnect) a
// rename goes unnoticed and the renamed table's rows are skipped.
func TestReviewPatternRenameAfterRestart(t *testing.T) {
	f, r, w := startTenantA(t)
	// A later transaction of another tenant, confirmed, so that the next
	// session starts past every row of tenant_a.
	w.commit(t, `CREATE SCHEMA tenant_b; `+tenantOutbox("tenant_b"), reviewRow("tenant_b.outbox"))
	f.waitStream(t, 2, time.Minute)
	wal := f.currentWAL(t)
	require.Eventually(t, func() bool { return f.confirmedLSN(t) >= wal }, time.Minute, 50*time.Millisecond)
	r.Signal(syscall.SIGTERM)
	_, err := r.Wait(time.Minute)
	require.NoError(t, err)
	r = f.startRelay(t, reviewPatternEnv()...)

	w.commit(t, `ALTER TABLE tenant_a.outbox RENAME TO outbox_old`, reviewRow("tenant_a.outbox_old"))
	w.commit(t, `CREATE SCHEMA tenant_c; `+tenantOutbox("tenant_c"), reviewRow("tenant_c.outbox"))
	requireAllOrStopped(t, f, r, 3, w.next)
}

var reviewDebug = false

// TestReviewPatternTempTable: a pattern's schema part matches the pg_temp_N
// schemas too, so an application session's temporary table named outbox
// (whose rows are never decoded) is listed as an outbox table: the janitor
// fails on it at every run ("cannot access temporary tables of other
// sessions"), as would the initial snapshot and relay replay.
func TestReviewPatternTempTable(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	f.pg.Exec(t, f.db, `CREATE SCHEMA tenant_a; `+tenantOutbox("tenant_a"))
	app := newMultiTableWriter(t, f.pg.AdminURL(f.db))
	_, err := app.conn.Exec(context.Background(), `CREATE TEMP TABLE outbox (LIKE tenant_a.outbox INCLUDING ALL)`)
	require.NoError(t, err)
	env := reviewPatternEnv("RELAY_TABLE", "*.outbox", "RELAY_RETENTION", "1h", "RELAY_RETENTION_INTERVAL", "500ms")
	r := e2e.StartRelay(t, f.bin, f.env(env...))
	require.Eventually(t, func() bool {
		return r.Metrics()["outbox_relay_janitor_last_run_timestamp_seconds"] > 0 || r.Exited()
	}, time.Minute, 100*time.Millisecond, r.Logs())
	require.False(t, r.Exited(), r.Logs())
	require.Zero(t, r.Metrics()["outbox_relay_janitor_errors_total"], r.LogText())
}

// TestReviewReplayIDsAcrossIDTypes: relay replay --replay-ids with a pattern
// whose tables have ids of different types (a bigserial tenant and a uuid
// tenant, as --message-id=table-id allows) casts each id to every table's id
// type, so an id of one table fails the whole replay on the other's type.
func TestReviewReplayIDsAcrossIDTypes(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	f.pg.Exec(t, f.db, `CREATE SCHEMA tenant_a; `+tenantOutbox("tenant_a")+`
		CREATE SCHEMA tenant_u; CREATE TABLE tenant_u.outbox (id uuid PRIMARY KEY DEFAULT gen_random_uuid(), aggregate_type text NOT NULL,
			aggregate_id text NOT NULL, event_type text NOT NULL, payload jsonb NOT NULL, created_at timestamptz NOT NULL DEFAULT now())`)
	env := reviewPatternEnv()
	r := f.startRelay(t, env...)
	w := newMultiTableWriter(t, f.pg.AdminURL(f.db))
	w.commit(t, "", reviewRow("tenant_a.outbox"), reviewRow("tenant_u.outbox"))
	f.waitStream(t, 2, time.Minute)
	var uuid string
	require.NoError(t, w.conn.QueryRow(context.Background(), `SELECT id::text FROM tenant_u.outbox`).Scan(&uuid))
	_, err := r.Stop(time.Minute)
	require.NoError(t, err)
	js, err := jetstream.New(f.nc)
	require.NoError(t, err)
	_, err = js.CreateStream(context.Background(), jetstream.StreamConfig{Name: "REPLAY", Subjects: []string{"replay.>"}, Storage: jetstream.FileStorage})
	require.NoError(t, err)
	code, out := runCommand(t, f.bin, f.env(env...), "replay", "--replay-ids="+uuid, "--replay-subject-prefix=replay", "--replay-id=r1")
	require.Equal(t, 0, code, out)
	require.Contains(t, out, "1 rows selected", out)
}

// TestReviewRecoverAfterAddingATable: a relay of one table (Nats-Msg-Id the
// id, the default) gets a second table as the README describes, which needs
// --message-id; with table-id the first table's rows get other message ids.
// relay recover compares the rows it reads with the stream by message id,
// so the rows published under the old ids are published again.
func TestReviewRecoverAfterAddingATable(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	r := f.startRelay(t)
	f.write(t, 5, "before")
	f.waitStream(t, 5, time.Minute)
	_, err := r.Stop(time.Minute)
	require.NoError(t, err)
	f.pg.Exec(t, f.db, `CREATE SCHEMA billing; `+tenantOutbox("billing")+`;
		ALTER PUBLICATION outbox_relay ADD TABLE billing.outbox;
		SELECT pg_drop_replication_slot('outbox_relay')`)
	code, out := runCommand(t, f.bin, f.env("RELAY_TABLE", "public.events,billing.outbox", "RELAY_MESSAGE_ID", "table-id",
		"RELAY_TABLE_COLUMNS", "billing.outbox: headers="), "recover")
	require.Equal(t, 0, code, out)
	require.Contains(t, out, "to publish: 0", out)
}
