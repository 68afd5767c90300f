package main

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/outbox-relay/outbox-relay/internal/e2e"
)

// cleanupEnv turns the janitor on with a retention of an hour, running every
// half second.
var cleanupEnv = []string{"RELAY_RETENTION", "1h", "RELAY_RETENTION_INTERVAL", "500ms"}

// oldStamp is a created_at far older than any retention the tests use.
const oldStamp = "2020-01-01 00:00:00+00"

// outboxRows counts the outbox's rows older than an hour and all of them.
func (f *fixture) outboxRows(t *testing.T) (old, all int) {
	t.Helper()
	conn := f.pg.Connect(t, f.db)
	defer conn.Close(context.Background())
	require.NoError(t, conn.QueryRow(context.Background(),
		`SELECT count(*) FILTER (WHERE created_at < now() - interval '1 hour'), count(*) FROM events`).Scan(&old, &all))
	return old, all
}

// waitOldRowsGone waits until the outbox holds no row older than an hour.
func (f *fixture) waitOldRowsGone(t *testing.T) {
	t.Helper()
	require.Eventually(t, func() bool {
		old, _ := f.outboxRows(t)
		return old == 0
	}, time.Minute, 100*time.Millisecond, "the janitor should delete the old rows")
}

// TestJanitorDeletesOldRowsWhilePublishing: with --retention, rows older
// than it are deleted in batches (3000 rows, batches of 1000) while new
// rows are kept, and every event, old or new, deleted before or after the
// relay read it, is on the stream once in commit order: the relay reads the
// WAL, not the table. The run is counted, logged and shown by relay status.
func TestJanitorDeletesOldRowsWhilePublishing(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	r := f.startRelay(t, cleanupEnv...)

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	produced := f.produce(ctx, 1500, "new")
	for i := range 5 {
		f.writeAt(t, 600, tagf("old-%d", i), oldStamp)
		time.Sleep(200 * time.Millisecond)
	}
	<-produced
	f.waitOldRowsGone(t)
	committed := f.writer.Committed(t)
	f.waitStream(t, len(committed), time.Minute)
	f.verify(t)
	_, all := f.outboxRows(t)
	require.Equal(t, len(committed)-3000, all, "the new rows are kept")

	require.Eventually(t, func() bool { return r.Metrics()["outbox_relay_janitor_rows_deleted_total"] == 3000 },
		10*time.Second, 100*time.Millisecond, "3000 rows deleted")
	m := r.Metrics()
	require.Greater(t, m["outbox_relay_janitor_last_success_timestamp_seconds"], float64(time.Now().Add(-time.Minute).Unix()))
	require.GreaterOrEqual(t, m["outbox_relay_janitor_last_run_timestamp_seconds"], m["outbox_relay_janitor_last_success_timestamp_seconds"])
	require.Zero(t, m["outbox_relay_janitor_errors_total"])
	require.Contains(t, r.Logs(), `"msg":"cleanup run done"`)

	code, out := runCommand(t, f.bin, f.env(cleanupEnv...), "check")
	require.Equal(t, 0, code, out)
	require.Contains(t, out, `retention: rows of "public"."events" created more than 1h0m0s ago (by created_at) are deleted every 500ms, in batches of 1000`)
	code, out = runCommand(t, f.bin, f.env(cleanupEnv...), "status")
	require.Equal(t, 0, code, out)
	require.Contains(t, out, "enabled:             yes, retention 1h0m0s, every 500ms")
	require.Contains(t, out, "rows deleted:        3000, partitions dropped: 0")
	require.Regexp(t, `last run: +\S+, retention 1h0m0s: ok`, out)
}

// TestJanitorFailureShownByStatus: a cleanup run that fails (its delete
// cannot get the outbox's lock within the lock timeout) is counted and shown
// by relay status with its error, which is no consistency problem; once the
// lock is gone the next run deletes the rows, and status shows it ok again.
func TestJanitorFailureShownByStatus(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	// The publication exists before the lock, which would block creating it.
	r := f.startRelay(t)
	f.writeAt(t, 20, "old", oldStamp)
	f.waitStream(t, 20, 30*time.Second)
	stopRelay(t, r)
	ctx := context.Background()
	blocker := f.pg.Connect(t, f.db)
	tx, err := blocker.Begin(ctx)
	require.NoError(t, err)
	// EXCLUSIVE lets the relay read the table and blocks every delete.
	_, err = tx.Exec(ctx, `LOCK TABLE events IN EXCLUSIVE MODE`)
	require.NoError(t, err)
	defer func() { _ = tx.Rollback(ctx) }()

	r = f.startRelay(t, cleanupEnv...)
	require.Eventually(t, func() bool { return r.Metrics()["outbox_relay_janitor_errors_total"] >= 1 },
		time.Minute, 100*time.Millisecond, "the locked delete should fail")
	m := r.Metrics()
	require.Positive(t, m["outbox_relay_janitor_last_run_timestamp_seconds"], "a failed run is a run")
	require.Zero(t, m["outbox_relay_janitor_last_success_timestamp_seconds"], "but no success")
	code, out := runCommand(t, f.bin, f.env(cleanupEnv...), "status")
	require.Equal(t, 0, code, "a failing cleanup is no consistency problem:\n%s", out)
	require.Regexp(t, `last run: +\S+, retention 1h0m0s: failed: .*lock timeout`, out)
	require.NotContains(t, out, "last success:")
	require.Contains(t, out, "rows deleted:        0, partitions dropped: 0")
	old, _ := f.outboxRows(t)
	require.Equal(t, 20, old, "nothing deleted under the lock")

	require.NoError(t, tx.Rollback(ctx))
	f.waitOldRowsGone(t)
	require.Eventually(t, func() bool {
		_, out = runCommand(t, f.bin, f.env(cleanupEnv...), "status")
		return strings.Contains(out, "rows deleted:        20,")
	}, 30*time.Second, 200*time.Millisecond, "status should show the successful run")
	require.Regexp(t, `last run: +\S+, retention 1h0m0s: ok`, out)
	require.Contains(t, out, "last success:")
	f.waitStream(t, 20, 30*time.Second)
	f.verify(t)
}

// TestJanitorDropsExpiredPartitions: on an outbox range-partitioned by
// created_at, a partition whose upper bound is older than the retention is
// detached and dropped, also while rows of it are not yet published; rows of
// the default partition are deleted by batches; newer partitions and rows
// stay. Every event is on the stream once, in commit order.
func TestJanitorDropsExpiredPartitions(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	partitionOutbox(t, f.pg, f.db)
	f.pg.Exec(t, f.db, `CREATE TABLE events_default PARTITION OF events DEFAULT`)
	r := f.startRelay(t)
	f.writeAt(t, 5, "old", "2020-01-01 00:00:00+00")
	f.writeAt(t, 3, "older-than-partitions", "1990-01-01 00:00:00+00") // default partition
	f.writeAt(t, 2, "future", day(5))                                  // default partition, kept
	f.write(t, 4, "cur")
	f.waitStream(t, 14, 30*time.Second)
	stopRelay(t, r)

	// Rows the relay has not read yet when their partition is dropped.
	f.writeAt(t, 5, "old-unread", "2021-01-01 00:00:00+00")
	r = f.startRelay(t, cleanupEnv...)
	f.write(t, 3, "cur-after")
	require.Eventually(t, func() bool {
		var gone bool
		conn := f.pg.Connect(t, f.db)
		defer conn.Close(context.Background())
		require.NoError(t, conn.QueryRow(context.Background(), `SELECT to_regclass('events_old') IS NULL`).Scan(&gone))
		return gone
	}, time.Minute, 100*time.Millisecond, "events_old should be dropped")
	f.waitOldRowsGone(t)
	_, all := f.outboxRows(t)
	require.Equal(t, 4+2+3, all, "events_cur and the default partition's new rows are kept")
	f.waitStream(t, 22, 30*time.Second)
	f.verify(t)
	require.Eventually(t, func() bool {
		m := r.Metrics()
		return m["outbox_relay_janitor_partitions_dropped_total"] == 1 && m["outbox_relay_janitor_rows_deleted_total"] == 3
	}, 10*time.Second, 100*time.Millisecond, "one partition dropped, the default partition's 3 old rows deleted")
}

// TestJanitorCleansOnlyOnTheLeader: a standby configured for cleanup
// deletes nothing while another relay leads; once it leads, it cleans.
func TestJanitorCleansOnlyOnTheLeader(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	env := append([]string{"RELAY_LEADER_POLL_INTERVAL", "200ms"}, cleanupEnv...)
	leader := f.startRelay(t, env...)
	standby := e2e.StartRelay(t, f.bin, f.env(env...))
	waitRole(t, standby, "standby")

	f.writeAt(t, 10, "old-1", oldStamp)
	f.waitOldRowsGone(t)
	require.Eventually(t, func() bool { return leader.Metrics()["outbox_relay_janitor_rows_deleted_total"] == 10 },
		10*time.Second, 100*time.Millisecond)
	// A standby that cleaned would show it within a few of its runs.
	require.Never(t, func() bool {
		sm := standby.Metrics()
		return sm == nil || sm["outbox_relay_janitor_rows_deleted_total"] != 0 || strings.Contains(standby.Logs(), "cleanup run")
	}, 3*time.Second, 100*time.Millisecond, "the standby does not clean up")

	leader.Kill()
	waitRole(t, standby, "leader")
	f.writeAt(t, 5, "old-2", oldStamp)
	f.waitOldRowsGone(t)
	require.Eventually(t, func() bool { return standby.Metrics()["outbox_relay_janitor_rows_deleted_total"] == 5 },
		10*time.Second, 100*time.Millisecond, "the new leader cleans")
	f.waitStream(t, 15, 30*time.Second)
	f.verify(t)
}

// TestJanitorCrashMidRunLeavesNothingInconsistent: a relay killed while its
// janitor detaches an expired partition (the DETACH waits for a lock another
// session holds) leaves the partition attached, not detached and kept; the
// next relay's janitor drops it. Nothing is lost from the stream.
func TestJanitorCrashMidRunLeavesNothingInconsistent(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	partitionOutbox(t, f.pg, f.db)
	r := f.startRelay(t)
	f.writeAt(t, 5, "old", oldStamp)
	f.write(t, 2, "cur")
	f.waitStream(t, 7, 30*time.Second)
	stopRelay(t, r)

	ctx := context.Background()
	blocker := f.pg.Connect(t, f.db)
	tx, err := blocker.Begin(ctx)
	require.NoError(t, err)
	var n int
	require.NoError(t, tx.QueryRow(ctx, `SELECT count(*) FROM events_old`).Scan(&n)) // holds its lock until rollback
	require.Equal(t, 5, n)

	r = f.startRelay(t, cleanupEnv...)
	admin := f.pg.Connect(t, f.db)
	const detaching = `SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'ALTER TABLE % DETACH PARTITION %' AND wait_event_type = 'Lock'`
	require.Eventually(t, func() bool {
		var waiting int
		require.NoError(t, admin.QueryRow(ctx, detaching).Scan(&waiting))
		return waiting > 0
	}, time.Minute, 10*time.Millisecond, "the janitor should be waiting to detach events_old")
	r.Kill()
	require.NoError(t, tx.Rollback(ctx))

	// Once the killed relay's session is gone, its transaction is undone.
	require.Eventually(t, func() bool {
		var left int
		require.NoError(t, admin.QueryRow(ctx, `SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'ALTER TABLE % DETACH PARTITION %' AND state <> 'idle'`).Scan(&left))
		return left == 0
	}, 30*time.Second, 50*time.Millisecond)
	var attached bool
	require.NoError(t, admin.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pg_inherits WHERE inhrelid = to_regclass('events_old') AND inhparent = to_regclass('events'))`).Scan(&attached))
	require.True(t, attached, "events_old is still a partition of events after the crash")

	f.write(t, 2, "after-crash")
	r = f.startRelay(t, cleanupEnv...)
	f.waitOldRowsGone(t)
	require.Eventually(t, func() bool { return r.Metrics()["outbox_relay_janitor_partitions_dropped_total"] == 1 },
		30*time.Second, 100*time.Millisecond)
	f.waitStream(t, 9, 30*time.Second)
	f.verify(t)
	code, out := runCommand(t, f.bin, f.env(cleanupEnv...), "status")
	require.Equal(t, 0, code, out)
	require.Contains(t, out, "partitions dropped: 1")
}

// TestInsertAndDeleteInOneTransaction: services that insert an event and
// delete it again in the same transaction keep the outbox empty; the WAL
// still carries each insert, so every event is on the stream once, in
// commit order. The publication here publishes deletes too: the relay
// ignores them.
func TestInsertAndDeleteInOneTransaction(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	f.pg.Exec(t, f.db, `CREATE PUBLICATION outbox_relay FOR TABLE events WITH (publish = 'insert, update, delete', publish_via_partition_root = true)`)
	f.startRelay(t)

	writeConcurrently(t, 4, 25, func(ctx context.Context, w, i int) error {
		_, err := f.writer.WriteDeleted(ctx, e2e.SampleEvents(1+(i*7+w)%10, 64, fmt.Sprintf("w%d-%d", w, i)))
		return err
	})
	committed := f.writer.Committed(t)
	require.NotEmpty(t, committed)
	f.waitStream(t, len(committed), time.Minute)
	msgs := f.verify(t)
	require.Len(t, msgs, len(committed))
	_, all := f.outboxRows(t)
	require.Zero(t, all, "the outbox stays empty")
}
