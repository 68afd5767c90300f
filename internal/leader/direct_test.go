package leader

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.uber.org/zap/zaptest"

	"github.com/outbox-relay/outbox-relay/internal/chaos"
	"github.com/outbox-relay/outbox-relay/internal/testenv"
)

// leaseParameters are the startup parameters the lease's connection sets,
// which PgBouncer refuses unless told to ignore them.
var leaseParameters = []string{"idle_session_timeout", "tcp_keepalives_idle", "tcp_keepalives_interval", "tcp_keepalives_count"}

// TestLeaseRefusedThroughPgBouncer: through a real PgBouncer the advisory
// lock is no lease (session mode: a dead holder keeps it until PgBouncer
// notices; transaction mode: it sits on a pooled backend that other clients
// share, so two relays both "hold" it). Two electors pointed at the pooler
// must both refuse, naming the fix, instead of leading.
func TestLeaseRefusedThroughPgBouncer(t *testing.T) {
	t.Parallel()
	pg := testenv.StartPostgres(t)
	tests := []struct {
		name string
		opts []testenv.PgBouncerOption
	}{
		{"session mode, startup parameters ignored", []testenv.PgBouncerOption{
			testenv.WithPoolMode(testenv.PoolSession), testenv.WithIgnoreStartupParameters(leaseParameters...),
		}},
		{"transaction mode, startup parameters ignored", []testenv.PgBouncerOption{
			testenv.WithPoolMode(testenv.PoolTransaction), testenv.WithPoolSize(1), testenv.WithIgnoreStartupParameters(leaseParameters...),
		}},
		{"transaction mode, every backend given idle_session_timeout", []testenv.PgBouncerOption{
			testenv.WithPoolMode(testenv.PoolTransaction), testenv.WithPoolSize(1), testenv.WithIgnoreStartupParameters(leaseParameters...),
			testenv.WithConnectQuery("SET idle_session_timeout = 3000"),
		}},
		{"session mode, startup parameters refused", []testenv.PgBouncerOption{
			testenv.WithPoolMode(testenv.PoolSession),
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			bouncer := testenv.StartPgBouncer(t, pg, tt.opts...)
			cfg := testConfig(bouncer.URL("postgres"))
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			results := make(chan error, 2)
			for range 2 {
				go func() {
					lease, err := New(cfg, zaptest.NewLogger(t)).Acquire(ctx, nil)
					if lease != nil {
						// Keep it: a second lease at once is the failure.
						defer lease.Release()
						<-ctx.Done()
						results <- nil
						return
					}
					results <- err
				}()
			}
			for range 2 {
				err := <-results
				require.Error(t, err, "an elector led through PgBouncer")
				require.ErrorIs(t, err, ErrNotDirect)
				require.ErrorContains(t, err, "--leader-postgres-url")
			}
		})
	}
}

// TestLeaseRidesOutASlowRenewal: a renewal that takes longer than usual (a
// checkpoint stall, a slow network) does not cost leadership while the lock
// cannot yet have run out on the server. With the default 5s lease a
// renewal may take up to 5s - 0.5s margin - 0.83s since the last renewal
// began; here renewals take 2s for 4s, longer than the 1.7s one could
// take before.
func TestLeaseRidesOutASlowRenewal(t *testing.T) {
	t.Parallel()
	pg := testenv.StartPostgres(t)
	cfg := testConfig("")
	cfg.LeaseTimeout = 5 * time.Second
	link, lease := leaseThroughLink(t, pg, cfg)

	require.NoError(t, link.Latency(time.Second, 0))
	select {
	case <-lease.Lost():
		t.Fatalf("a slow renewal cost the lease: %v", lease.Err())
	case <-time.After(4 * time.Second):
	}
	require.NoError(t, link.Heal())
	select {
	case <-lease.Lost():
		t.Fatalf("a slow renewal cost the lease: %v", lease.Err())
	case <-time.After(2 * cfg.LeaseTimeout):
	}
	require.True(t, lockHeld(t, pg), "the lock is still held")
}

// TestLeaseStepsDownBeforeTheServerReleases: when renewals cannot get
// through, the holder steps down while the server still holds the lock for
// it, so no standby can win before this one stopped.
func TestLeaseStepsDownBeforeTheServerReleases(t *testing.T) {
	t.Parallel()
	pg := testenv.StartPostgres(t)
	cfg := testConfig("")
	link, lease := leaseThroughLink(t, pg, cfg)

	require.NoError(t, link.Blackhole())
	select {
	case <-lease.Lost():
	case <-time.After(3 * cfg.LeaseTimeout):
		t.Fatal("the holder did not step down when it could no longer renew")
	}
	require.True(t, lockHeld(t, pg), "the server still held the lock when the holder stepped down")
	require.NoError(t, link.Heal())
}

// leaseThroughLink wins a lease with cfg on pg through a toxiproxy link,
// for faults on the lease's connection; it is released in cleanup.
func leaseThroughLink(t *testing.T, pg *testenv.Postgres, cfg Config) (*chaos.Link, *Lease) {
	t.Helper()
	network := chaos.NewNetwork()
	t.Cleanup(network.Close)
	link, err := network.Link("lease", fmt.Sprintf("127.0.0.1:%d", pg.Port()))
	require.NoError(t, err)
	cfg.PostgresURL = fmt.Sprintf("postgres://postgres@%s/postgres?sslmode=disable", link.Addr())
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	lease, err := New(cfg, zaptest.NewLogger(t)).Acquire(ctx, nil)
	require.NoError(t, err)
	t.Cleanup(lease.Release)
	return link, lease
}

// lockHeld reports whether the server holds an advisory lock for anyone.
func lockHeld(t *testing.T, pg *testenv.Postgres) bool {
	t.Helper()
	var held bool
	err := pg.Connect(t, "postgres").QueryRow(context.Background(),
		`SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND granted)`).Scan(&held)
	require.NoError(t, err)
	return held
}

// TestCheckFindsTheLockInPgLocks: check reads the advisory lock from
// pg_locks as the server shows it (the key's high and low words as classid
// and objid, unsigned), for keys of either sign and low words above and
// below 2^31, and tells a lock held from one that is not; as a role with
// no privileges, as a relay's may be.
func TestCheckFindsTheLockInPgLocks(t *testing.T) {
	t.Parallel()
	pg := testenv.StartPostgres(t)
	pg.Exec(t, "postgres", `CREATE ROLE plain LOGIN`)
	url := fmt.Sprintf("postgres://plain@127.0.0.1:%d/postgres?sslmode=disable", pg.Port())
	var negative, positive, highLow bool
	for _, name := range []string{"outbox_relay", "db/slot", "slot-2", "c"} {
		key := newLockKey(name)
		negative, positive, highLow = negative || key.id < 0, positive || key.id > 0, highLow || key.low >= 1<<31
		t.Run(name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			cfg := testConfig(url)
			cfg.Key = name
			e := New(cfg, zaptest.NewLogger(t))
			conn, err := e.connect(ctx)
			require.NoError(t, err)
			defer closeQuietly(conn, time.Second)

			require.NoError(t, e.check(ctx, conn, key, false))
			err = e.check(ctx, conn, key, true)
			require.ErrorIs(t, err, ErrNotDirect)
			require.ErrorContains(t, err, "does not hold the leader lock")

			var got bool
			require.NoError(t, conn.QueryRow(ctx, `SELECT pg_try_advisory_lock($1)`, key.id).Scan(&got))
			require.True(t, got)
			require.NoError(t, e.check(ctx, conn, key, true))
			err = e.check(ctx, conn, key, false)
			require.ErrorIs(t, err, ErrNotDirect)
			require.ErrorContains(t, err, "holds the leader lock before")
		})
	}
	require.True(t, negative && positive && highLow, "keys of both signs, and a low word above 2^31, are covered")
}

// TestLeaseLostAtOnceWhenTheSessionEnds: the holder hears the server end
// the lock's session (an administrator, a crashed backend) when it happens,
// not at its next renewal: by then a standby may already lead.
func TestLeaseLostAtOnceWhenTheSessionEnds(t *testing.T) {
	t.Parallel()
	pg := testenv.StartPostgres(t)
	cfg := testConfig(pg.URL("postgres"))
	cfg.LeaseTimeout = 30 * time.Second // renewals 5s apart
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	lease, err := New(cfg, zaptest.NewLogger(t)).Acquire(ctx, nil)
	require.NoError(t, err)
	defer lease.Release()
	pg.Exec(t, "postgres", `SELECT pg_terminate_backend(pid) FROM pg_locks WHERE locktype = 'advisory' AND granted`)
	ended := time.Now()
	select {
	case <-lease.Lost():
		t.Logf("lost %s after the session ended: %v", time.Since(ended), lease.Err())
	case <-time.After(2 * time.Second):
		t.Fatal("the holder did not hear at once that its lock's session ended")
	}
}
