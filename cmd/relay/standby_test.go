package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/stretchr/testify/require"

	"github.com/outbox-relay/outbox-relay/internal/e2e"
	"github.com/outbox-relay/outbox-relay/internal/testenv"
)

// startStandby makes a hot standby of primary (testenv.StartStandby: a
// physical slot of its own, hot_standby_feedback on, as logical decoding on
// a standby needs) and returns once it has replayed the primary's WAL up to
// now.
func startStandby(t *testing.T, primary *testenv.Postgres, opts ...testenv.StandbyOption) *testenv.Standby {
	t.Helper()
	standby := testenv.StartStandby(t, primary, opts...)
	standby.CatchUp(t)
	return standby
}

// TestRelayReadsFromAStandby: on PostgreSQL 16 and 18 the relay reads the outbox
// from a hot standby (logical decoding on a standby) while the application
// writes to the primary: the slot lives on the standby, and so does the
// leader lock (advisory locks work in recovery). Every committed event
// arrives once, in commit order, across a restart; the slot on the standby
// advances past what was acknowledged; relay status reads it.
func TestRelayReadsFromAStandby(t *testing.T) {
	t.Parallel()
	for _, major := range []int{16, 18} {
		t.Run(fmt.Sprintf("pg%d", major), func(t *testing.T) {
			t.Parallel()
			relayReadsFromAStandby(t, testenv.PostgresBinFor(t, major))
		})
	}
}

func relayReadsFromAStandby(t *testing.T, bin string) {
	f := newFixture(t, testenv.WithPostgresBin(bin))
	// A standby is read-only: the publication is created on the primary.
	f.pg.Exec(t, f.db, `CREATE PUBLICATION outbox_relay FOR TABLE events WITH (publish = 'insert', publish_via_partition_root = true)`)
	standby := startStandby(t, f.pg)
	env := f.env("RELAY_POSTGRES_URL", standby.URL(f.db), "RELAY_CREATE_PUBLICATION", "false")

	// Creating a slot on a standby waits for the primary to log its
	// running transactions, which it does every 15 s when busy.
	relay := startOnStandby(t, f, env)
	ctx := context.Background()

	for i := range 10 {
		f.write(t, 1+i%4*10, tagf("first-%d", i))
	}
	n := len(f.writer.Committed(t))
	f.waitStream(t, n, 60*time.Second)
	f.verify(t)

	// The slot on the standby moves past what JetStream acknowledged: the
	// relay confirms there, as on a primary.
	written := f.currentWAL(t)
	standbyConn := standby.Connect(t, f.db)
	standbyConfirmed := func() pglogrepl.LSN {
		var text *string
		require.NoError(t, standbyConn.QueryRow(context.Background(), `SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = 'outbox_relay'`).Scan(&text))
		if text == nil {
			return 0
		}
		lsn, err := pglogrepl.ParseLSN(*text)
		require.NoError(t, err)
		return lsn
	}
	require.Eventually(t, func() bool { return standbyConfirmed() >= written }, 60*time.Second, 100*time.Millisecond,
		"the standby's slot should reach %s, is at %s", written, standbyConfirmed())

	code, out := runCommand(t, f.bin, env, "status")
	require.Equal(t, 0, code, out)
	require.Contains(t, out, "active:              true")

	stopRelay(t, relay)
	f.write(t, 7, "while-stopped")
	relay = e2e.StartRelay(t, f.bin, env)
	waitReady(t, relay)
	f.write(t, 3, "after")
	n = len(f.writer.Committed(t))
	f.waitStream(t, n, 60*time.Second)
	f.verify(t)
	require.NotContains(t, relay.Logs(), "publication check failed")

	// A change of the publication on the primary reaches the standby's
	// catalog by replay: the relay stops, and the standby's slot is not
	// confirmed past the insert made in between.
	published := e2e.IDs(e2e.ReadStream(t, f.nc, "OUTBOX"))
	conn := f.pg.Connect(t, f.db)
	_, err := conn.Exec(ctx, `ALTER PUBLICATION outbox_relay DROP TABLE events`)
	require.NoError(t, err)
	before := f.currentWAL(t)
	skipped := f.write(t, 1, "while-off")
	_, err = conn.Exec(ctx, `ALTER PUBLICATION outbox_relay ADD TABLE events`)
	require.NoError(t, err)
	f.write(t, 1, "after-change")
	code, err = relay.Wait(60 * time.Second)
	require.NoError(t, err, "the relay stops")
	require.Equal(t, 1, code)
	require.Contains(t, relay.Logs(), "changed while the relay ran")
	require.LessOrEqual(t, uint64(standbyConfirmed()), uint64(before), "the slot is not confirmed past the insert made in between")
	onStream := e2e.IDs(e2e.ReadStream(t, f.nc, "OUTBOX"))
	require.Equal(t, published, onStream[:len(published)])
	require.NotContains(t, onStream, skipped[0])
}

// startOnStandby starts the relay with env, whose PostgreSQL is a standby of
// f's, and waits until it streams. Creating a slot on a standby waits for
// the primary to log its running transactions, which it does every 15 s
// when busy: meanwhile the primary is asked to, as an operator would.
func startOnStandby(t *testing.T, f *fixture, env map[string]string) *e2e.Relay {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		for ctx.Err() == nil {
			_ = f.pg.ExecContext(ctx, f.db, `SELECT pg_log_standby_snapshot()`)
			select {
			case <-ctx.Done():
			case <-time.After(200 * time.Millisecond):
			}
		}
	}()
	relay := e2e.StartRelay(t, f.bin, env)
	waitReady(t, relay)
	return relay
}

// TestRelayOnAPromotedStandby: the relay reads from a standby on PostgreSQL
// 16; the primary dies and that standby is promoted, with the slot, which
// lives on it. The relay goes on with the promoted server, which the
// application now writes to: the stream holds exactly the events committed
// on the promoted server (those the primary committed but never sent it are
// gone from the database too), once, in commit order.
func TestRelayOnAPromotedStandby(t *testing.T) {
	t.Parallel()
	bin := testenv.PostgresBinFor(t, 16)
	f := newFixture(t, testenv.WithPostgresBin(bin))
	f.pg.Exec(t, f.db, `CREATE PUBLICATION outbox_relay FOR TABLE events WITH (publish = 'insert', publish_via_partition_root = true)`)
	standby := startStandby(t, f.pg)
	env := f.env("RELAY_POSTGRES_URL", standby.URL(f.db), "RELAY_CREATE_PUBLICATION", "false")
	relay := startOnStandby(t, f, env)

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	<-f.produce(ctx, 300, "on-primary")
	f.pg.Stop(t, "immediate")
	standby.Promote(t)
	f.writer = e2e.NewWriter(t, standby.AdminURL(f.db), 8)
	for i := range 10 {
		f.write(t, 1+i%3*5, tagf("on-promoted-%d", i))
	}
	n := len(f.writer.Committed(t))
	f.waitStream(t, n, 90*time.Second)
	f.verify(t)
	require.False(t, relay.Exited(), "the relay goes on with the promoted server")
}

// TestStandbyPreflightExplainsWhatIsMissing: pointed at a standby that cannot
// feed it, relay check and relay run say what is missing: PostgreSQL 16 for
// logical decoding on a standby, hot_standby_feedback, and a publication,
// which only the primary can create.
func TestStandbyPreflightExplainsWhatIsMissing(t *testing.T) {
	t.Parallel()
	t.Run("before 16", func(t *testing.T) {
		t.Parallel()
		bin := "" // the harness default, 15
		var opts []testenv.PostgresOption
		if testenv.DefaultPostgresMajor(t) >= 16 {
			bin = testenv.PostgresBinFor(t, 14)
			opts = append(opts, testenv.WithPostgresBin(bin))
		}
		f := newFixture(t, opts...)
		standby := startStandby(t, f.pg)
		code, out := runCommand(t, f.bin, f.env("RELAY_POSTGRES_URL", standby.URL(f.db)), "check")
		require.Equal(t, 1, code, out)
		require.Contains(t, out, "the server is a standby, and logical decoding on a standby needs PostgreSQL 16 or later")
	})
	t.Run("16", func(t *testing.T) {
		t.Parallel()
		bin := testenv.PostgresBinFor(t, 16)
		f := newFixture(t, testenv.WithPostgresBin(bin))
		standby := startStandby(t, f.pg, testenv.WithStandbyConfig("hot_standby_feedback", "off"))
		env := f.env("RELAY_POSTGRES_URL", standby.URL(f.db))
		code, out := runCommand(t, f.bin, env, "check")
		require.Equal(t, 1, code, out)
		require.Contains(t, out, "the server is a standby with hot_standby_feedback off")
		require.Contains(t, out, `publication: "outbox_relay" does not exist, and the server is read-only (a standby); create it on the primary`)
		code, out = runCommand(t, f.bin, env, "run")
		require.Equal(t, 1, code, out)
		require.Contains(t, out, "hot_standby_feedback off")

		conf, err := os.OpenFile(filepath.Join(standby.DataDir(), "postgresql.conf"), os.O_APPEND|os.O_WRONLY, 0)
		require.NoError(t, err)
		_, err = conf.WriteString("hot_standby_feedback = on\n")
		require.NoError(t, err)
		require.NoError(t, conf.Close())
		standby.Exec(t, "postgres", `SELECT pg_reload_conf()`)
		conn := standby.Connect(t, "postgres")
		require.Eventually(t, func() bool {
			var on string
			require.NoError(t, conn.QueryRow(context.Background(), `SHOW hot_standby_feedback`).Scan(&on))
			return on == "on"
		}, 10*time.Second, 100*time.Millisecond)
		code, out = runCommand(t, f.bin, env, "run")
		require.Equal(t, 1, code, out)
		require.Contains(t, unescaped(out), `publication: "outbox_relay" does not exist, and the server is read-only (a standby); create it on the primary with CREATE PUBLICATION`)
	})
}
