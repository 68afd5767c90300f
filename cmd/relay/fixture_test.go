package main

import (
	"context"
	"fmt"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
	"github.com/nats-io/nats.go"
	"github.com/stretchr/testify/require"

	"github.com/outbox-relay/outbox-relay/internal/e2e"
	"github.com/outbox-relay/outbox-relay/internal/testenv"
)

// fixture is a throwaway PostgreSQL with an outbox, a NATS server, and the
// relay binary.
type fixture struct {
	pg     *testenv.Postgres
	nats   *testenv.NATS
	nc     *nats.Conn
	db     string
	writer *e2e.Writer
	bin    string
}

func newFixture(t *testing.T, pgOpts ...testenv.PostgresOption) *fixture {
	t.Helper()
	f := &fixture{db: "app", bin: e2e.BuildRelay(t)}
	f.pg = testenv.StartPostgres(t, pgOpts...)
	f.pg.CreateDatabase(t, f.db)
	e2e.SetupOutbox(t, f.pg, f.db)
	f.nats = testenv.StartNATS(t)
	f.nc = f.nats.Connect(t)
	f.writer = e2e.NewWriter(t, f.pg.AdminURL(f.db), 8)
	return f
}

// env is the relay's configuration for this fixture, plus overrides.
func (f *fixture) env(overrides ...string) map[string]string {
	env := map[string]string{
		"RELAY_POSTGRES_URL":    f.pg.URL(f.db),
		"RELAY_NATS_URL":        f.nats.URL(),
		"RELAY_CREATE_STREAM":   "true",
		"RELAY_STATUS_INTERVAL": "500ms",
		"RELAY_RECONNECT_MAX":   "2s",
		"RELAY_RETRY_MAX":       "1s",
		"RELAY_LOG_LEVEL":       "info",
	}
	for k, v := range publishModeEnv() {
		env[k] = v
	}
	for i := 0; i+1 < len(overrides); i += 2 {
		env[overrides[i]] = overrides[i+1]
	}
	return env
}

// publishModeEnv is the relay's configuration for the publishing mode the
// end-to-end tests run in: OUTBOX_RELAY_TEST_PUBLISH_MODE, empty for the
// default (one message at a time, pipelined), atomic (--atomic-transactions)
// or batch (--publish-mode=batch: fast batches; streams the tests create
// allow them). make test-modes runs the suite in each. Every guarantee must
// hold in each.
func publishModeEnv() map[string]string {
	switch mode := os.Getenv("OUTBOX_RELAY_TEST_PUBLISH_MODE"); mode {
	case "":
		return nil
	case "atomic":
		return map[string]string{"RELAY_ATOMIC_TRANSACTIONS": "true"}
	case "batch":
		return map[string]string{"RELAY_PUBLISH_MODE": "batch"}
	default:
		panic("OUTBOX_RELAY_TEST_PUBLISH_MODE: unknown mode " + mode)
	}
}

// atomicMode reports whether the tests run with --atomic-transactions.
func atomicMode() bool { return publishModeEnv()["RELAY_ATOMIC_TRANSACTIONS"] == "true" }

// batchMode reports whether the tests run with --publish-mode=batch.
func batchMode() bool { return publishModeEnv()["RELAY_PUBLISH_MODE"] == "batch" }

// startRelay starts the relay and waits until it is streaming, so the slot
// exists before the test writes.
func (f *fixture) startRelay(t *testing.T, overrides ...string) *e2e.Relay {
	t.Helper()
	r := e2e.StartRelay(t, f.bin, f.env(overrides...))
	waitReady(t, r)
	return r
}

// waitReady waits until the relay leads and streams (a standby is ready too,
// but has no slot yet).
func waitReady(t *testing.T, r *e2e.Relay) {
	t.Helper()
	require.Eventually(t, func() bool {
		code, body := r.Get("/readyz")
		return (code == 200 && strings.Contains(body, `"role":"leader"`)) || r.Exited()
	}, 60*time.Second, 50*time.Millisecond, "relay should become ready as leader")
	require.False(t, r.Exited(), "relay exited while starting")
}

// waitStream waits until the stream holds n messages.
func (f *fixture) waitStream(t *testing.T, n int, timeout time.Duration) {
	t.Helper()
	require.Eventually(t, func() bool { return e2e.StreamCount(f.nc, "OUTBOX") >= n }, timeout, 50*time.Millisecond,
		"stream should reach %d messages, has %d", n, e2e.StreamCount(f.nc, "OUTBOX"))
}

// verify asserts the stream holds every committed event once, in commit order.
func (f *fixture) verify(t *testing.T) []e2e.StoredMessage {
	t.Helper()
	expected := f.writer.Committed(t)
	msgs := e2e.ReadStream(t, f.nc, "OUTBOX")
	v := e2e.Compare(expected, e2e.IDs(msgs))
	require.True(t, v.OK(), "stream vs commit log: %s", v)
	return msgs
}

// write commits a transaction of n sample events and fails the test on error.
func (f *fixture) write(t *testing.T, n int, tag string) []string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	ids, err := f.writer.Write(ctx, e2e.SampleEvents(n, 64, tag), false)
	require.NoError(t, err)
	return ids
}

// slotConfirmed returns the slot's confirmed_flush_lsn as text.
func (f *fixture) slotConfirmed(t *testing.T) string {
	t.Helper()
	conn := f.pg.Connect(t, f.db)
	var lsn string
	err := conn.QueryRow(context.Background(), `SELECT COALESCE(confirmed_flush_lsn::text, '') FROM pg_replication_slots WHERE slot_name = 'outbox_relay'`).Scan(&lsn)
	if err != nil {
		return ""
	}
	return lsn
}

func tagf(format string, args ...any) string { return fmt.Sprintf(format, args...) }

// lsn runs a query returning one pg_lsn as text and parses it; 0 when the
// query finds nothing or fails (the server may be restarting).
func (f *fixture) lsn(t *testing.T, query string) pglogrepl.LSN {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, f.pg.AdminURL(f.db))
	if err != nil {
		return 0
	}
	defer conn.Close(ctx)
	var text *string
	if err := conn.QueryRow(ctx, query).Scan(&text); err != nil || text == nil {
		return 0
	}
	lsn, err := pglogrepl.ParseLSN(*text)
	if err != nil {
		return 0
	}
	return lsn
}

func (f *fixture) confirmedLSN(t *testing.T) pglogrepl.LSN {
	return f.lsn(t, `SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = 'outbox_relay'`)
}

func (f *fixture) currentWAL(t *testing.T) pglogrepl.LSN {
	return f.lsn(t, `SELECT pg_current_wal_lsn()::text`)
}

// produce commits transactions of mixed sizes until total events were
// attempted or ctx is done. Failed transactions (a server restarting) are
// retried later; what committed is in the commit log either way.
func (f *fixture) produce(ctx context.Context, total int, tag string) <-chan struct{} {
	done := make(chan struct{})
	go func() {
		defer close(done)
		sizes := []int{1, 10, 1, 50, 3}
		written := 0
		for i := 0; written < total && ctx.Err() == nil; i++ {
			n := min(sizes[i%len(sizes)], total-written)
			wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			_, err := f.writer.Write(wctx, e2e.SampleEvents(n, 128, tagf("%s-%d", tag, i)), i%11 == 5)
			cancel()
			if err != nil {
				select {
				case <-ctx.Done():
				case <-time.After(100 * time.Millisecond):
				}
				continue
			}
			written += n
			time.Sleep(2 * time.Millisecond)
		}
	}()
	return done
}

// unescaped undoes JSON string escapes of quotes and backslashes in a log or
// a command's output, so that a test can look for a quoted name the way the
// relay writes it in an error ("public"."events").
func unescaped(s string) string {
	return strings.NewReplacer(`\\`, `\`, `\"`, `"`).Replace(s)
}

// writeConcurrently runs writers goroutines, each calling write for i from 0
// to txns-1 until one fails, and fails the test on the first error.
func writeConcurrently(t *testing.T, writers, txns int, write func(ctx context.Context, w, i int) error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var wg sync.WaitGroup
	errs := make(chan error, writers)
	for w := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range txns {
				if err := write(ctx, w, i); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		require.NoError(t, err)
	}
}
