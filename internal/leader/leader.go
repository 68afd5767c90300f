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
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
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
	conn   *pgx.Conn
	lost   chan struct{}
	once   sync.Once
	cancel context.CancelFunc
	done   chan struct{}
}

// Lost is closed when the lease may have ended: a renewal failed or timed
// out, so the server may already have released the lock.
func (l *Lease) Lost() <-chan struct{} { return l.lost }

// Release gives leadership up by closing the lock's connection.
func (l *Lease) Release() {
	l.cancel()
	<-l.done
}

// Acquire blocks until this instance holds the lock or ctx is done.
// Connection failures are retried with backoff: a standby outlives its
// database's restarts. standby, when set, is told whether the instance
// stands by ready to take over (true) or cannot reach PostgreSQL (false).
func (e *Elector) Acquire(ctx context.Context, standby func(ready bool)) (*Lease, error) {
	if standby == nil {
		standby = func(bool) {}
	}
	bo := backoff.Backoff{Min: e.cfg.PollInterval, Max: e.cfg.ReconnectMax}
	id := LockID(e.cfg.Key)
	for {
		conn, err := e.connect(ctx)
		if err == nil {
			var lease *Lease
			lease, err = e.poll(ctx, conn, id, standby)
			if lease != nil {
				return lease, nil
			}
			closeQuietly(conn, e.cfg.ConnectTimeout)
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

// poll tries for the lock on conn until it gets it, the connection fails or
// ctx is done.
func (e *Elector) poll(ctx context.Context, conn *pgx.Conn, id int64, standby func(bool)) (*Lease, error) {
	logged := false
	for {
		var got bool
		qctx, cancel := context.WithTimeout(ctx, e.renewTimeout())
		err := conn.QueryRow(qctx, `SELECT pg_try_advisory_lock($1)`, id).Scan(&got)
		cancel()
		if err != nil {
			return nil, fmt.Errorf("try leader lock: %w", err)
		}
		if got {
			return e.hold(conn), nil
		}
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

// hold renews the lease until it is released or a renewal fails.
func (e *Elector) hold(conn *pgx.Conn) *Lease {
	ctx, cancel := context.WithCancel(context.Background())
	l := &Lease{conn: conn, lost: make(chan struct{}), cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(l.done)
		defer closeQuietly(conn, e.cfg.ConnectTimeout)
		t := time.NewTicker(e.cfg.LeaseTimeout / 3)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
			qctx, qcancel := context.WithTimeout(ctx, e.renewTimeout())
			_, err := conn.Exec(qctx, `SELECT 1`)
			qcancel()
			if err != nil && ctx.Err() == nil {
				e.log.Warn("leader lease renewal failed, stepping down", zap.Error(err))
				l.once.Do(func() { close(l.lost) })
				return
			}
		}
	}()
	return l
}

// renewTimeout leaves room for a renewal to fail and the holder to step down
// before the server ends the session and a standby can win.
func (e *Elector) renewTimeout() time.Duration { return e.cfg.LeaseTimeout / 3 }

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
	cfg.RuntimeParams["application_name"] = "outbox-relay-leader"
	cfg.RuntimeParams["idle_session_timeout"] = fmt.Sprintf("%d", e.cfg.LeaseTimeout.Milliseconds())
	cfg.RuntimeParams["tcp_keepalives_idle"] = fmt.Sprintf("%d", max(1, int(e.cfg.LeaseTimeout.Seconds()/3)))
	cfg.RuntimeParams["tcp_keepalives_interval"] = "1"
	cfg.RuntimeParams["tcp_keepalives_count"] = "3"
	cctx, cancel := context.WithTimeout(ctx, e.cfg.ConnectTimeout)
	defer cancel()
	conn, err := pgx.ConnectConfig(cctx, cfg)
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
