package leader

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.uber.org/zap/zaptest"

	"github.com/outbox-relay/outbox-relay/internal/testenv"
)

func testConfig(url string) Config {
	return Config{
		PostgresURL: url, Key: "db/slot", LeaseTimeout: 3 * time.Second, PollInterval: 100 * time.Millisecond,
		ConnectTimeout: 5 * time.Second, ReconnectMax: time.Second,
	}
}

// TestOneLeaderAtATime: a second elector stands by while the first holds
// the lease and wins it once the first releases it.
func TestOneLeaderAtATime(t *testing.T) {
	t.Parallel()
	pg := testenv.StartPostgres(t)
	first := New(testConfig(pg.URL("postgres")), zaptest.NewLogger(t))
	second := New(testConfig(pg.URL("postgres")), zaptest.NewLogger(t))

	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	lease, err := first.Acquire(ctx, nil)
	require.NoError(t, err)

	won := make(chan *Lease, 1)
	go func() {
		l, err := second.Acquire(ctx, nil)
		if err == nil {
			won <- l
		}
	}()
	select {
	case <-won:
		t.Fatal("two leaders at once")
	case <-time.After(2 * time.Second):
	}
	lease.Release()
	select {
	case l := <-won:
		l.Release()
	case <-time.After(10 * time.Second):
		t.Fatal("the standby did not take over after the release")
	}
}

// TestLeaseLostWhenTheSessionEnds: when the server ends the lock's session
// (here terminated by hand, as idle_session_timeout would), the holder is
// told to step down, and another elector can win.
func TestLeaseLostWhenTheSessionEnds(t *testing.T) {
	t.Parallel()
	pg := testenv.StartPostgres(t)
	cfg := testConfig(pg.URL("postgres"))
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	lease, err := New(cfg, zaptest.NewLogger(t)).Acquire(ctx, nil)
	require.NoError(t, err)
	pg.Exec(t, "postgres", `SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'outbox-relay-leader'`)
	select {
	case <-lease.Lost():
	case <-time.After(10 * time.Second):
		t.Fatal("the holder was not told its lease ended")
	}
	lease.Release()
	other, err := New(cfg, zaptest.NewLogger(t)).Acquire(ctx, nil)
	require.NoError(t, err)
	other.Release()
}

// TestSilentHolderLosesTheLockOnTheServer: the lock's session carries
// idle_session_timeout = LeaseTimeout, so a holder that stops renewing
// (its host gone) loses the lock on the server side.
func TestSilentHolderLosesTheLockOnTheServer(t *testing.T) {
	t.Parallel()
	pg := testenv.StartPostgres(t)
	cfg := testConfig(pg.URL("postgres"))
	e := New(cfg, zaptest.NewLogger(t))
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	conn, err := e.connect(ctx)
	require.NoError(t, err)
	var got bool
	require.NoError(t, conn.QueryRow(ctx, `SELECT pg_try_advisory_lock($1)`, LockID(cfg.Key)).Scan(&got))
	require.True(t, got)
	// No renewals: the server must end the session and free the lock.
	start := time.Now()
	lease, err := New(cfg, zaptest.NewLogger(t)).Acquire(ctx, nil)
	require.NoError(t, err)
	defer lease.Release()
	waited := time.Since(start)
	var still bool
	require.Error(t, conn.QueryRow(ctx, `SELECT true`).Scan(&still), "the server ended the silent holder's session")
	// The holder's session was idle since before the contender started, so
	// the wait is at most about one lease timeout.
	require.Less(t, waited, 3*cfg.LeaseTimeout)
}

func TestConfigValidate(t *testing.T) {
	t.Parallel()
	require.NoError(t, testConfig("x").Validate())
	bad := testConfig("x")
	bad.LeaseTimeout, bad.PollInterval = time.Second, 0
	err := bad.Validate()
	require.ErrorContains(t, err, "leader-lease-timeout")
	require.ErrorContains(t, err, "leader-poll-interval")
}
