// Package leader elects one relay per slot using nothing but PostgreSQL: a
// session-level advisory lock, held on a connection the server closes when
// the holder stops renewing it. The slot's single active consumer remains the
// last safeguard.
package leader

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"go.uber.org/zap"

	"github.com/outbox-relay/outbox-relay/internal/backoff"
	"github.com/outbox-relay/outbox-relay/internal/cdc"
)

// Config configures the election.
type Config struct {
	// PostgresURL is where the lock is held (the outbox's database).
	PostgresURL string
	// Key names what is being led, e.g. database and slot.
	Key string
	// LeaseTimeout is how long a holder that stopped renewing (killed, or
	// cut off the network) keeps the lock: the server ends its session
	// after this much silence. Standbys take over shortly after.
	LeaseTimeout time.Duration
	// PollInterval is how often a standby tries for the lock.
	PollInterval time.Duration
	// ConnectTimeout bounds connecting; ReconnectMax caps the backoff.
	ConnectTimeout time.Duration
	ReconnectMax   time.Duration
}

// Validate reports every problem of c at once.
func (c Config) Validate() error {
	var errs []error
	if c.LeaseTimeout < 3*time.Second {
		errs = append(errs, fmt.Errorf("leader-lease-timeout: %s, must be at least 3s", c.LeaseTimeout))
	}
	if c.PollInterval <= 0 {
		errs = append(errs, fmt.Errorf("leader-poll-interval: %s, must be positive", c.PollInterval))
	}
	return errors.Join(errs...)
}

// LockID is the advisory lock key for key.
func LockID(key string) int64 {
	h := fnv.New64a()
	_, _ = h.Write([]byte("outbox-relay:" + key)) // hash writes never fail
	return int64(h.Sum64())
}

// ErrNotDirect marks a lock session that is no lease: the connection goes
// through a pooler (or a proxy that speaks the protocol itself), so the
// server would not end the session, and release the lock, when the holder
// vanishes, or other clients share the session and its lock. Retrying
// cannot fix it; the configuration must.
var ErrNotDirect = errors.New("the leader lock needs a direct session with PostgreSQL")

// Elector wins and keeps leadership.
type Elector struct {
	cfg Config
	log *zap.Logger
}

// New builds an Elector.
func New(cfg Config, log *zap.Logger) *Elector { return &Elector{cfg: cfg, log: log} }

// Lease is held leadership. Lost is closed when it may have ended; the holder
// must stop relaying at once.
type Lease struct {
	lost   chan struct{}
	err    error // why it was lost; written before lost is closed
	cancel context.CancelFunc
	done   chan struct{}
}

// Lost is closed when the lease may have ended: the lock's session ended,
// or no renewal succeeded for so long that the server may release the lock
// soon, or the session turned out not to be a direct one (Err wraps
// ErrNotDirect then).
func (l *Lease) Lost() <-chan struct{} { return l.lost }

// Err returns why the lease was lost, and nil while it is held.
func (l *Lease) Err() error {
	select {
	case <-l.lost:
		return l.err
	default:
		return nil
	}
}

// Release gives leadership up by closing the lock's connection. It waits
// until the connection is closed, at most the connect timeout.
func (l *Lease) Release() {
	l.cancel()
	<-l.done
}

// Acquire blocks until this instance holds the lock or ctx is done.
// Connection failures are retried with backoff: a standby outlives its
// database's restarts. A session that is not a direct one is not: Acquire
// returns an error wrapping ErrNotDirect. standby, when set, is told whether
// the instance stands by ready to take over (true) or cannot reach
// PostgreSQL (false).
func (e *Elector) Acquire(ctx context.Context, standby func(ready bool)) (*Lease, error) {
	if standby == nil {
		standby = func(bool) {}
	}
	bo := backoff.Backoff{Min: e.cfg.PollInterval, Max: e.cfg.ReconnectMax}
	key := newLockKey(e.cfg.Key)
	for {
		conn, err := e.connect(ctx)
		if err == nil {
			var lease *Lease
			lease, err = e.poll(ctx, conn, key, standby)
			if lease != nil {
				return lease, nil
			}
			closeQuietly(conn, e.cfg.ConnectTimeout)
		}
		if errors.Is(err, ErrNotDirect) {
			return nil, err
		}
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		standby(false)
		delay := bo.Next()
		e.log.Warn("leader election connection failed, retrying", zap.Int("attempt", bo.Attempt()), zap.Duration("backoff", delay), zap.Error(err))
		if !backoff.Sleep(ctx, delay) {
			return nil, ctx.Err()
		}
	}
}

// poll checks that conn is a direct session, then tries for the lock on it
// until it gets it, the connection fails or ctx is done.
func (e *Elector) poll(ctx context.Context, conn *pgx.Conn, key lockKey, standby func(bool)) (*Lease, error) {
	qctx, cancel := context.WithTimeout(ctx, e.pollTimeout())
	err := e.check(qctx, conn, key, false)
	cancel()
	if err != nil {
		return nil, err
	}
	logged := false
	for {
		var got bool
		started := time.Now()
		qctx, cancel := context.WithTimeout(ctx, e.pollTimeout())
		err := conn.QueryRow(qctx, `SELECT pg_try_advisory_lock($1)`, key.id).Scan(&got)
		if err != nil {
			cancel()
			return nil, fmt.Errorf("try leader lock: %w", err)
		}
		if got {
			err = e.check(qctx, conn, key, true)
			cancel()
			if err != nil {
				e.unlock(conn, key)
				return nil, err
			}
			return e.hold(conn, key, started), nil
		}
		cancel()
		standby(true)
		if !logged {
			e.log.Info("standing by: another relay leads this slot")
			logged = true
		}
		if !backoff.Sleep(ctx, e.cfg.PollInterval) {
			return nil, ctx.Err()
		}
	}
}

// hold renews the lease, which was last known held at renewed, until it is
// released or may have ended.
func (e *Elector) hold(conn *pgx.Conn, key lockKey, renewed time.Time) *Lease {
	ctx, cancel := context.WithCancel(context.Background())
	l := &Lease{lost: make(chan struct{}), cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(l.done)
		defer closeQuietly(conn, e.cfg.ConnectTimeout)
		err := e.renew(ctx, conn, key, renewed)
		if ctx.Err() != nil {
			return // released
		}
		l.err = err
		close(l.lost)
	}()
	return l
}

// renew keeps the lock's session verified and busy enough that the server
// does not end it, until ctx is done or the lease may have ended, and
// returns why it ended.
//
// The server ends the session, releasing the lock, once it has been idle
// for LeaseTimeout; the session is busy from the moment a renewal arrives
// until its answer is sent, so a renewal that began at t keeps the lock at
// least until t + LeaseTimeout. A slow renewal (a checkpoint stall, a slow
// network) is therefore waited for, and a failed one retried, until that
// point less a margin: only then may the lock really be gone, and the holder
// steps down while the server still holds it, before a standby can win.
func (e *Elector) renew(ctx context.Context, conn *pgx.Conn, key lockKey, renewed time.Time) error {
	for {
		expires := renewed.Add(e.cfg.LeaseTimeout - e.margin())
		if err := e.idle(ctx, conn, renewed.Add(e.renewInterval())); err != nil {
			return err
		}
		for {
			started := time.Now()
			if !started.Before(expires) {
				return fmt.Errorf("renew leader lease: no renewal succeeded for %s, the server may release the lock %s from now",
					started.Sub(renewed).Round(time.Millisecond), renewed.Add(e.cfg.LeaseTimeout).Sub(started).Round(time.Millisecond))
			}
			qctx, cancel := context.WithDeadline(ctx, expires)
			err := e.check(qctx, conn, key, true)
			cancel()
			if err == nil {
				renewed = started
				break
			}
			if ctx.Err() != nil {
				return ctx.Err()
			}
			if errors.Is(err, ErrNotDirect) || conn.IsClosed() {
				return fmt.Errorf("renew leader lease: %w", err)
			}
			e.log.Warn("leader lease renewal failed, retrying", zap.Error(err))
			if !backoff.Sleep(ctx, min(e.retryInterval(), time.Until(expires))) {
				return ctx.Err()
			}
		}
	}
}

// idle waits until next with the connection quiet, reading from it all the
// same: when the server ends the session (terminated by an administrator, a
// crash, a restart) its last words arrive at once, and the lease is lost
// now rather than at the next renewal, before a standby can take over.
func (e *Elector) idle(ctx context.Context, conn *pgx.Conn, next time.Time) error {
	wctx, cancel := context.WithDeadline(ctx, next)
	defer cancel()
	for {
		// Nothing LISTENs on this session, so only an error or the
		// deadline ends the wait.
		err := conn.PgConn().WaitForNotification(wctx)
		switch {
		case ctx.Err() != nil:
			return ctx.Err()
		case err == nil:
			continue
		case wctx.Err() != nil && !conn.IsClosed():
			return nil
		default:
			return fmt.Errorf("leader lock session ended: %w", err)
		}
	}
}

// lockKey is the advisory lock, as the bigint the lock functions take and
// as pg_locks shows it.
type lockKey struct {
	id          int64
	high, low   int64 // pg_locks.classid and objid
	description string
}

func newLockKey(key string) lockKey {
	id := LockID(key)
	return lockKey{id: id, high: int64(uint64(id) >> 32), low: int64(uint64(id) & 0xffffffff), description: key}
}

// check verifies that conn is a direct session with PostgreSQL and, when
// held, that its backend holds the lock; when not held, that it does not
// hold it yet. An error wrapping ErrNotDirect names the cause and the fix.
//
// A session is direct when the backend the server announced at connect
// (BackendKeyData, which poolers replace with their own) is the one
// answering, and it runs with the idle_session_timeout the relay asked for
// (poolers drop or refuse that startup parameter). A pooler in transaction
// mode runs each query on whichever backend is free: its backend then
// changes between renewals, or holds the lock for another client.
func (e *Elector) check(ctx context.Context, conn *pgx.Conn, key lockKey, held bool) error {
	var (
		pid      uint32
		timeout  *int64
		hasLock  bool
		announce = conn.PgConn().PID()
	)
	err := conn.QueryRow(ctx, `SELECT pg_backend_pid(),
		(SELECT setting::bigint FROM pg_settings WHERE name = 'idle_session_timeout'),
		EXISTS (SELECT 1 FROM pg_locks
			WHERE locktype = 'advisory' AND granted AND pid = pg_backend_pid() AND objsubid = 1
			AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
			AND classid::bigint = $1 AND objid::bigint = $2)`, key.high, key.low).Scan(&pid, &timeout, &hasLock)
	if err != nil {
		return fmt.Errorf("check the leader lock's session: %w", err)
	}
	want := e.cfg.LeaseTimeout.Milliseconds()
	var cause string
	switch {
	case timeout == nil || *timeout != want:
		got := "unset"
		if timeout != nil {
			got = fmt.Sprintf("%dms", *timeout)
		}
		cause = fmt.Sprintf("the session's idle_session_timeout is %s, not the %dms the relay asked for: "+
			"a pooler dropped the setting (PgBouncer's ignore_startup_parameters), so a vanished leader would keep the lock", got, want)
	case pid != announce:
		cause = fmt.Sprintf("the session is answered by backend %d, not by backend %d the server announced at connect: "+
			"something between the relay and PostgreSQL (a pooler such as PgBouncer) hands the session's queries to backends of its choosing", pid, announce)
	case held && !hasLock:
		cause = fmt.Sprintf("pg_locks shows that backend %d does not hold the leader lock it took: another backend took it", pid)
	case !held && hasLock:
		cause = fmt.Sprintf("backend %d holds the leader lock before this relay took it: its session is shared with another client", pid)
	default:
		return nil
	}
	return fmt.Errorf("leader-postgres-url: %s; point --leader-postgres-url (default: --postgres-url) at PostgreSQL itself, not at a pooler: %w", cause, ErrNotDirect)
}

// unlock gives back, once, the lock just taken on a session found not to
// be direct, so that it does not stay behind on a pooled backend; best
// effort. Only what this session took is given back: on a shared backend
// the lock may be another client's too.
func (e *Elector) unlock(conn *pgx.Conn, key lockKey) {
	if conn.IsClosed() {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), e.pollTimeout())
	defer cancel()
	_, _ = conn.Exec(ctx, `SELECT pg_advisory_unlock($1)`, key.id) // the connection is closed next anyway
}

// renewInterval is how long the lease's session stays quiet between
// renewals: several renewals fit in one lease timeout, so one slow or
// failed renewal does not lose it.
func (e *Elector) renewInterval() time.Duration { return e.cfg.LeaseTimeout / 6 }

// margin is how long before the server could release the lock the holder
// steps down: time to retire the reader before a standby can win, which
// takes microseconds, with room for a late timer on a loaded machine.
func (e *Elector) margin() time.Duration { return e.cfg.LeaseTimeout / 10 }

// retryInterval is the pause before a failed renewal is tried again.
func (e *Elector) retryInterval() time.Duration { return e.cfg.LeaseTimeout / 20 }

// pollTimeout bounds a standby's queries; a slow one only delays a takeover.
func (e *Elector) pollTimeout() time.Duration { return e.cfg.LeaseTimeout / 3 }

// connect opens the lock connection. idle_session_timeout makes the server
// end the session, releasing the lock, once the holder falls silent for
// LeaseTimeout: that covers a holder whose host vanished without closing its
// connections, which TCP alone would notice only after many minutes.
func (e *Elector) connect(ctx context.Context) (*pgx.Conn, error) {
	cfg, err := cdc.ParseURL(e.cfg.PostgresURL)
	if err != nil {
		return nil, err
	}
	cfg.ConnectTimeout = e.cfg.ConnectTimeout
	// Unnamed statements: a pooler in transaction mode would lose
	// prepared ones and fail with a confusing error before check can
	// explain what is wrong.
	cfg.DefaultQueryExecMode = pgx.QueryExecModeExec
	cfg.RuntimeParams["application_name"] = "outbox-relay-leader"
	cfg.RuntimeParams["idle_session_timeout"] = fmt.Sprintf("%d", e.cfg.LeaseTimeout.Milliseconds())
	cfg.RuntimeParams["tcp_keepalives_idle"] = fmt.Sprintf("%d", max(1, int(e.cfg.LeaseTimeout.Seconds()/3)))
	cfg.RuntimeParams["tcp_keepalives_interval"] = "1"
	cfg.RuntimeParams["tcp_keepalives_count"] = "3"
	cctx, cancel := context.WithTimeout(ctx, e.cfg.ConnectTimeout)
	defer cancel()
	conn, err := pgx.ConnectConfig(cctx, cfg)
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) && strings.Contains(pgErr.Message, "unsupported startup parameter") {
		// PgBouncer's answer to idle_session_timeout and tcp_keepalives_*.
		return nil, fmt.Errorf("leader-postgres-url: the server refused the lease's session settings (%s): a pooler such as PgBouncer "+
			"stands between the relay and PostgreSQL; point --leader-postgres-url (default: --postgres-url) at PostgreSQL itself, not at a pooler: %w", pgErr.Message, ErrNotDirect)
	}
	if err != nil {
		return nil, fmt.Errorf("connect for leader election: %w", err)
	}
	return conn, nil
}

func closeQuietly(conn *pgx.Conn, timeout time.Duration) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	_ = conn.Close(ctx) // the lock goes with the session either way
}
