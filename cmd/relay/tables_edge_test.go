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

// Edge cases of several outbox tables (--table patterns): each writes a row
// the relay should publish, or stop for, then a barrier row in a fresh tenant
// that the relay does publish; once the barrier is on the stream, the row
// before it must be on the stream too, or the relay must have stopped.

// patternEnv is the relay's configuration for tenant_*.outbox.
func patternEnv(extra ...string) []string {
	return append([]string{
		"RELAY_TABLE", "tenant_*.outbox",
		"RELAY_COLUMN_HEADERS", "",
		"RELAY_MESSAGE_ID", "table-id",
		"RELAY_SUBJECT_TEMPLATE", "outbox.{schema}.{event_type}",
	}, extra...)
}

func patternRow(table string) tableRow {
	return tableRow{table: table, insert: fmt.Sprintf(`INSERT INTO %s (aggregate_type, aggregate_id, event_type, payload) VALUES ('account', '{n}', 'opened', $1)`, table)}
}

// requireAllOrStopped waits for the barrier (the stream holding at least
// barrier events), then asserts that the stream holds want events or that
// the relay stopped, saying why (reason, in its log).
func requireAllOrStopped(t *testing.T, f *fixture, r *e2e.Relay, barrier, want int, reason string) {
	t.Helper()
	require.Eventually(t, func() bool { return e2e.StreamCount(f.nc, "OUTBOX") >= barrier || r.Exited() }, time.Minute, 50*time.Millisecond)
	// Give a slow relay every chance to publish the rest or to stop.
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) && e2e.StreamCount(f.nc, "OUTBOX") < want && !r.Exited() {
		time.Sleep(100 * time.Millisecond)
	}
	if r.Exited() {
		require.Contains(t, r.Logs(), reason, "the relay stopped, saying why")
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
	r := f.startRelay(t, patternEnv()...)
	w := newMultiTableWriter(t, f.pg.AdminURL(f.db))
	w.commit(t, "", patternRow("tenant_a.outbox"))
	return f, r, w
}

// TestPatternUnloggedTenantTableStopsTheRelay: a publication FOR ALL TABLES does not
// publish unlogged tables, and PostgreSQL allows ALTER TABLE ... SET UNLOGGED
// on a table that is a member of no publication by name; a tenant table the
// pattern matches that is unlogged (created so, or altered) would have its
// rows skipped: the relay stops, naming it (preflight, and the publication
// check every second). Before, it ran on without them.
func TestPatternUnloggedTenantTableStopsTheRelay(t *testing.T) {
	f, r, w := startTenantA(t)

	// A tenant created unlogged, and an existing one altered to unlogged.
	w.commit(t, `CREATE SCHEMA tenant_b; `+strings.Replace(tenantOutbox("tenant_b"), "CREATE TABLE", "CREATE UNLOGGED TABLE", 1),
		patternRow("tenant_b.outbox"))
	w.commit(t, `ALTER TABLE tenant_a.outbox SET UNLOGGED`, patternRow("tenant_a.outbox"))
	// The barrier.
	w.commit(t, `CREATE SCHEMA tenant_c; `+tenantOutbox("tenant_c"), patternRow("tenant_c.outbox"))
	requireAllOrStopped(t, f, r, 2, w.next, "is UNLOGGED, so its rows never reach the WAL")
}

// TestPatternTenantAttachedAsPartitionStopsTheRelay: a tenant table the pattern
// matches, attached as a partition of a table no pattern matches, has its
// rows published via that root under the root's name, which no setting
// names: the relay stops at the first such row, naming both. Before, it
// dropped them as no outbox's.
func TestPatternTenantAttachedAsPartitionStopsTheRelay(t *testing.T) {
	f, r, w := startTenantA(t)

	w.commit(t, `CREATE TABLE public.all_outbox (id bigint NOT NULL, aggregate_type text NOT NULL, aggregate_id text NOT NULL,
			event_type text NOT NULL, payload jsonb NOT NULL, created_at timestamptz NOT NULL DEFAULT now()) PARTITION BY LIST (aggregate_type);
		ALTER TABLE public.all_outbox ATTACH PARTITION tenant_a.outbox FOR VALUES IN ('account')`, patternRow("tenant_a.outbox"))
	w.commit(t, `CREATE SCHEMA tenant_c; `+tenantOutbox("tenant_c"), patternRow("tenant_c.outbox"))
	requireAllOrStopped(t, f, r, 2, w.next, `the outbox \"tenant_a\".\"outbox\" is a partition of \"public\".\"all_outbox\"`)
}

// TestPatternTableRenamedAfterARestartStopsTheRelay: the README says a table the relay
// read as an outbox that is renamed out of the pattern while it runs stops
// it; also after a restart (or any reconnect), since the OIDs of the tables
// the pattern matches are looked up at session start. Before, the decoder
// knew them only from the Relation messages of its session, and the renamed
// table's rows were skipped.
func TestPatternTableRenamedAfterARestartStopsTheRelay(t *testing.T) {
	f, r, w := startTenantA(t)
	// A later transaction of another tenant, confirmed, so that the next
	// session starts past every row of tenant_a.
	w.commit(t, `CREATE SCHEMA tenant_b; `+tenantOutbox("tenant_b"), patternRow("tenant_b.outbox"))
	f.waitStream(t, 2, time.Minute)
	wal := f.currentWAL(t)
	require.Eventually(t, func() bool { return f.confirmedLSN(t) >= wal }, time.Minute, 50*time.Millisecond)
	r.Signal(syscall.SIGTERM)
	_, err := r.Wait(time.Minute)
	require.NoError(t, err)
	r = f.startRelay(t, patternEnv()...)

	w.commit(t, `ALTER TABLE tenant_a.outbox RENAME TO outbox_old`, patternRow("tenant_a.outbox_old"))
	w.commit(t, `CREATE SCHEMA tenant_c; `+tenantOutbox("tenant_c"), patternRow("tenant_c.outbox"))
	requireAllOrStopped(t, f, r, 3, w.next, "it was renamed")
}

// TestPatternIgnoresTemporaryTables: a pattern's schema part matches the pg_temp_N
// schemas too, so an application session's temporary table named outbox
// (whose rows are never decoded) is no outbox table. Before, it was listed:
// the janitor failed on it at every run ("cannot access temporary tables of
// other sessions"), as would the initial snapshot and relay replay.
func TestPatternIgnoresTemporaryTables(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	f.pg.Exec(t, f.db, `CREATE SCHEMA tenant_a; `+tenantOutbox("tenant_a"))
	app := newMultiTableWriter(t, f.pg.AdminURL(f.db))
	_, err := app.conn.Exec(context.Background(), `CREATE TEMP TABLE outbox (LIKE tenant_a.outbox INCLUDING ALL)`)
	require.NoError(t, err)
	env := patternEnv("RELAY_TABLE", "*.outbox", "RELAY_RETENTION", "1h", "RELAY_RETENTION_INTERVAL", "500ms")
	r := e2e.StartRelay(t, f.bin, f.env(env...))
	require.Eventually(t, func() bool {
		return r.Metrics()["outbox_relay_janitor_last_run_timestamp_seconds"] > 0 || r.Exited()
	}, time.Minute, 100*time.Millisecond, r.Logs())
	require.False(t, r.Exited(), r.Logs())
	require.Zero(t, r.Metrics()["outbox_relay_janitor_errors_total"], r.LogText())
}

// TestReplayIDsAcrossTablesOfOtherIDTypes: relay replay --replay-ids with a pattern
// whose tables have ids of different types (a bigserial tenant and a uuid
// tenant, as --message-id=table-id allows) looks a plain id up only in the
// tables whose id type can hold it, and a qualified id
// (<schema>.<table>/<id>) in its table only. Before, each id was cast to
// every table's type, and an id of one table failed the whole replay.
func TestReplayIDsAcrossTablesOfOtherIDTypes(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	f.pg.Exec(t, f.db, `CREATE SCHEMA tenant_a; `+tenantOutbox("tenant_a")+`
		CREATE SCHEMA tenant_u; CREATE TABLE tenant_u.outbox (id uuid PRIMARY KEY DEFAULT gen_random_uuid(), aggregate_type text NOT NULL,
			aggregate_id text NOT NULL, event_type text NOT NULL, payload jsonb NOT NULL, created_at timestamptz NOT NULL DEFAULT now())`)
	env := patternEnv()
	r := f.startRelay(t, env...)
	w := newMultiTableWriter(t, f.pg.AdminURL(f.db))
	w.commit(t, "", patternRow("tenant_a.outbox"), patternRow("tenant_u.outbox"))
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
	// A row of one table by its message id; a plain id another table
	// lacks is missing.
	code, out = runCommand(t, f.bin, f.env(env...), "replay", "--replay-ids=tenant_a.outbox/1,12345", "--replay-subject-prefix=replay", "--replay-id=r2")
	require.Equal(t, 0, code, out)
	require.Contains(t, out, "1 rows selected", out)
	require.Contains(t, out, "12345", "named as missing")
	replayed := e2e.ReadStream(t, f.nc, "REPLAY")
	require.Len(t, replayed, 2)
	require.Equal(t, []string{"tenant_u.outbox/" + uuid, "tenant_a.outbox/1"}, replayedOf(replayed))
}

// TestRecoverAfterSwitchingToTableIDs: a relay of one table (Nats-Msg-Id the
// id, the default) gets a second table as the README describes, which needs
// --message-id; with table-id the first table's rows get other message ids.
// relay recover compares the rows it reads with the stream by message id,
// so the rows published under the old ids are published again: recover
// says so (the README: switch to table-id only after a clean stop).
func TestRecoverAfterSwitchingToTableIDs(t *testing.T) {
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
	// The rows published under their old ids are published again, and
	// recover says why.
	require.Contains(t, out, "warning: 5 of the relay's messages the comparison reads have ids that name no outbox table", out)
	require.Contains(t, out, "to publish: 5", out)
}
