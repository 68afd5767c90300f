package main

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/outbox-relay/outbox-relay/internal/chaos"
	"github.com/outbox-relay/outbox-relay/internal/e2e"
	"github.com/outbox-relay/outbox-relay/internal/testenv"
)

// TestLostLeaseLetsGoOfTheSlot: a leader whose lease is lost while it still
// has publishes in flight winds its pump down for up to --shutdown-timeout.
// In that time it must not start another replication session, nor end the
// new leader's: the two would take the slot from each other until it is
// done. Here the old leader's NATS link swallows everything (its publishes
// hang), its lock session is ended from outside, and a standby takes over.
func TestLostLeaseLetsGoOfTheSlot(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	network := chaos.NewNetwork()
	t.Cleanup(network.Close)
	natsLink, err := network.Link("old-leader-nats", strings.TrimPrefix(f.nats.URL(), "nats://"))
	require.NoError(t, err)

	settings := []string{"RELAY_LEADER_POLL_INTERVAL", "200ms", "RELAY_SHUTDOWN_TIMEOUT", "8s", "RELAY_RECONNECT_MAX", "1s"}
	old := f.startRelay(t, append(settings, "RELAY_NATS_URL", "nats://"+natsLink.Addr())...)
	standby := e2e.StartRelay(t, f.bin, f.env(settings...))
	waitRole(t, standby, "standby")

	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	produced := f.produce(ctx, 3000, "lost")
	f.waitStream(t, 200, time.Minute)

	// The old leader's publishes now hang until its shutdown timeout.
	require.NoError(t, natsLink.Blackhole())
	f.write(t, 20, "in-flight")
	mark := len(old.Logs())
	ended := f.endLeaderLockSession(t)
	require.Equal(t, 1, ended, "one session holds the lock")

	waitRole(t, standby, "leader")
	const started = `"msg":"replication started"`
	require.Eventually(t, func() bool { return strings.Contains(standby.Logs(), started) }, 10*time.Second, 20*time.Millisecond)
	newStarts := strings.Count(standby.Logs(), started)

	// Until the old leader has wound down and stands by again, the slot
	// stays with the new leader's walsender.
	admin := f.pg.Connect(t, f.db)
	holders := map[int32]bool{}
	require.Eventually(t, func() bool {
		var pid *int32
		err := admin.QueryRow(context.Background(), `SELECT active_pid FROM pg_replication_slots WHERE slot_name = 'outbox_relay'`).Scan(&pid)
		if err == nil && pid != nil {
			holders[*pid] = true
		}
		return strings.Contains(old.Logs()[mark:], `"msg":"standing by: another relay leads this slot"`)
	}, time.Minute, 100*time.Millisecond, "the old leader winds down and stands by")
	// A reconnect at the end of the wind-down would come within the
	// reconnect backoff.
	require.Never(t, func() bool { return strings.Contains(old.Logs()[mark:], started) }, 2*time.Second, 100*time.Millisecond,
		"the old leader started a replication session after losing its lease")

	after := old.Logs()[mark:]
	t.Logf("the old leader after losing its lease:\n%s", after)
	require.NotContains(t, after, `"msg":"ended a lingering session of a previous leader on the slot"`, "the old leader ended the new leader's walsender")
	require.Equal(t, newStarts, strings.Count(standby.Logs(), started), "the new leader kept its replication session")
	require.Len(t, holders, 1, "one walsender held the slot after the takeover: %v", holders)

	require.NoError(t, natsLink.Heal())
	<-produced
	f.waitStream(t, len(f.writer.Committed(t)), time.Minute)
	f.verify(t)
}

// waitRole waits until r reports role on /readyz and is ready.
func waitRole(t *testing.T, r *e2e.Relay, role string) {
	t.Helper()
	require.Eventually(t, func() bool {
		code, body := r.Get("/readyz")
		return code == 200 && strings.Contains(body, `"role":"`+role+`"`)
	}, time.Minute, 50*time.Millisecond, "relay should be a ready %s", role)
}

// endLeaderLockSession ends, from outside, the session holding a leader
// lock, as an administrator or a crashing backend would, and returns how
// many it ended.
func (f *fixture) endLeaderLockSession(t *testing.T) int {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, f.pg.AdminURL(f.db))
	require.NoError(t, err)
	defer conn.Close(ctx)
	var n int
	// Not the test writer's lock (e2e.Writer orders its commits with
	// pg_advisory_xact_lock(727274)), which a writer may hold right now.
	require.NoError(t, conn.QueryRow(ctx, `SELECT count(pg_terminate_backend(pid)) FROM pg_locks
		WHERE locktype = 'advisory' AND granted AND NOT (classid = 0 AND objid = 727274 AND objsubid = 1)`).Scan(&n))
	return n
}

// TestLeaderLockNeedsADirectSession: pointed at PgBouncer for its lease,
// the relay refuses at once, naming the fix, instead of leading on a lock
// that is no lease. With --leader-postgres-url naming the server itself,
// the lease is held there while everything else uses --postgres-url.
func TestLeaderLockNeedsADirectSession(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	bouncer := testenv.StartPgBouncer(t, f.pg, testenv.WithPoolMode(testenv.PoolTransaction),
		testenv.WithIgnoreStartupParameters("idle_session_timeout", "tcp_keepalives_idle", "tcp_keepalives_interval", "tcp_keepalives_count"))

	t.Run("lease through PgBouncer", func(t *testing.T) {
		r := e2e.StartRelay(t, f.bin, f.env("RELAY_POSTGRES_URL", bouncer.URL(f.db)))
		code, err := r.Wait(30 * time.Second)
		require.NoError(t, err, "the relay should refuse to lead through PgBouncer")
		require.Equal(t, 1, code)
		require.Contains(t, r.Logs(), "--leader-postgres-url")
		require.NotContains(t, r.Logs(), `"msg":"leadership acquired"`)
	})

	t.Run("lease on a direct session", func(t *testing.T) {
		// The Unix socket, so the lease's session is told apart from the
		// relay's other connections, which come over TCP.
		r := f.startRelay(t, "RELAY_LEADER_POSTGRES_URL", f.pg.AdminURL(f.db))
		admin := f.pg.Connect(t, f.db)
		var overSocket []bool
		rows, err := admin.Query(context.Background(), `SELECT a.client_addr IS NULL FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
			WHERE l.locktype = 'advisory' AND l.granted`)
		require.NoError(t, err)
		overSocket, err = pgx.CollectRows(rows, pgx.RowTo[bool])
		require.NoError(t, err)
		require.Equal(t, []bool{true}, overSocket, "the lease is held on --leader-postgres-url, over the Unix socket")
		f.write(t, 10, "direct-lease")
		f.waitStream(t, 10, time.Minute)
		f.verify(t)
		code, err := r.Stop(30 * time.Second)
		require.NoError(t, err)
		require.Zero(t, code)
	})
}
