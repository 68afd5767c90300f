package main

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/outbox-relay/outbox-relay/internal/e2e"
	"github.com/outbox-relay/outbox-relay/internal/relay"
	"github.com/outbox-relay/outbox-relay/internal/testenv"
)

// multiHostURL is a connection URL naming the primary first and the standby
// second, for whichever of them accepts writes: pgx tries them in order.
func multiHostURL(primary, standby *testenv.Postgres, db string) string {
	return fmt.Sprintf("postgres://postgres@127.0.0.1:%d,127.0.0.1:%d/%s?sslmode=disable&target_session_attrs=read-write",
		primary.Port(), standby.Port(), db)
}

// newFailoverFixture is a fixture whose PostgreSQL of the given major
// version has a streaming standby, with the relay's settings naming both
// servers (the primary first) and a writer that writes to whichever accepts
// writes, so that the commit log compared with the stream is the promoted
// standby's after a failover.
func newFailoverFixture(t *testing.T, major int, opts ...testenv.StandbyOption) (*fixture, *testenv.Standby, []string) {
	t.Helper()
	f := newFixture(t, testenv.WithPostgresBin(testenv.PostgresBinFor(t, major)))
	standby := testenv.StartStandby(t, f.pg, opts...)
	url := multiHostURL(f.pg, standby.Postgres, f.db)
	f.writer = e2e.NewWriter(t, url, 2)
	return f, standby, []string{"RELAY_POSTGRES_URL", url}
}

// pgValue runs a query returning one value on pg over its Unix socket; ok is
// false when the query fails (a server down or in recovery, say).
func pgValue[T any](pg *testenv.Postgres, db, sql string, args ...any) (T, bool) {
	var v T
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, pg.AdminURL(db))
	if err != nil {
		return v, false
	}
	defer conn.Close(ctx)
	return v, conn.QueryRow(ctx, sql, args...).Scan(&v) == nil
}

// waitSlotSynced waits until the standby's slot sync worker holds a copy of
// the relay's failover slot that survives promotion (synced, not temporary).
func waitSlotSynced(t *testing.T, standby *testenv.Standby, db string) {
	t.Helper()
	require.Eventually(t, func() bool {
		ready, ok := pgValue[bool](standby.Postgres, db,
			`SELECT synced AND NOT temporary FROM pg_replication_slots WHERE slot_name = 'outbox_relay'`)
		return ok && ready
	}, 90*time.Second, 200*time.Millisecond, "the standby should synchronise the failover slot")
}

// lastCommitLSN returns the commit LSN of the last message on the stream.
func lastCommitLSN(t *testing.T, msgs []e2e.StoredMessage) pglogrepl.LSN {
	t.Helper()
	require.NotEmpty(t, msgs)
	lsn, err := pglogrepl.ParseLSN(msgs[len(msgs)-1].Header.Get(relay.HeaderCommitLSN))
	require.NoError(t, err)
	return lsn
}

// TestDivergedStandbyStopsTheRelay: the relay published events a lagging
// standby never received (a failover slot without synchronized_standby_slots,
// the misconfiguration that allows it); the standby is promoted, and new
// transactions on its timeline reuse the positions of those events. The relay
// follows the failover on its own (multi-host URL) and must stop, saying
// why, rather than take the new transactions for ones it already published
// and confirm the slot past them. With leader election the relay loses its
// lock with the old primary and starts over, so the check runs on the mark
// read back from the stream and the timeline recorded in the state bucket;
// without, the same reader reconnects and checks what it read itself.
func TestDivergedStandbyStopsTheRelay(t *testing.T) {
	t.Parallel()
	for _, election := range []string{"true", "false"} {
		t.Run("leader-election="+election, func(t *testing.T) {
			t.Parallel()
			divergedStandby(t, "RELAY_LEADER_ELECTION", election)
		})
	}
}

func divergedStandby(t *testing.T, overrides ...string) {
	f, standby, env := newFailoverFixture(t, 17, testenv.WithStandbyConfig("sync_replication_slots", "on"))
	r := f.startRelay(t, append(append(env, "RELAY_FAILOVER_SLOT", "true"), overrides...)...)

	f.write(t, 5, "synced")
	f.waitStream(t, 5, 30*time.Second)
	standby.CatchUp(t)
	waitSlotSynced(t, standby, f.db)

	// Published from the primary, never shipped to the standby.
	standby.PauseWAL(t)
	for i := range 20 {
		f.write(t, 10, tagf("lost-%d", i))
	}
	f.waitStream(t, 205, 60*time.Second)
	published := lastCommitLSN(t, e2e.ReadStream(t, f.nc, "OUTBOX"))

	f.pg.Stop(t, "immediate")
	standby.Promote(t)
	writer := e2e.NewWriter(t, standby.AdminURL(f.db), 2)
	var reused []string
	for i := range 3 {
		ids, err := writer.Write(context.Background(), e2e.SampleEvents(1, 64, tagf("new-%d", i)), false)
		require.NoError(t, err)
		reused = append(reused, ids...)
	}
	end, ok := pgValue[string](standby.Postgres, f.db, `SELECT pg_current_wal_lsn()::text`)
	require.True(t, ok)
	newEnd, err := pglogrepl.ParseLSN(end)
	require.NoError(t, err)
	require.Less(t, newEnd, published, "the test needs the new timeline's transactions at positions the relay already published")

	code, err := r.Wait(2 * time.Minute)
	if err != nil {
		confirmed, _ := pgValue[string](standby.Postgres, f.db,
			`SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = 'outbox_relay'`)
		msgs := e2e.ReadStream(t, f.nc, "OUTBOX")
		v := e2e.Compare(reused, e2e.IDs(msgs[205:]))
		require.NoError(t, err, "the relay should stop on the diverged server; instead it runs on: of the %d new events the stream holds %d, and the slot is confirmed at %s, past the new transactions (WAL end %s)",
			len(reused), v.Expected-v.Lost, confirmed, newEnd)
	}
	require.Equal(t, 1, code)
	logs := r.LogText()
	require.Contains(t, logs, "diverged")
	require.Contains(t, logs, published.String(), "the error names the last position published")
	confirmed, ok := pgValue[string](standby.Postgres, f.db,
		`SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = 'outbox_relay'`)
	require.True(t, ok)
	confirmedLSN, err := pglogrepl.ParseLSN(confirmed)
	require.NoError(t, err)
	require.Less(t, confirmedLSN, published, "the slot was not confirmed past the new transactions")
	require.Equal(t, 205, e2e.StreamCount(f.nc, "OUTBOX"), "nothing was published from the diverged server")

	// relay check says so too, as relay run would at its next start.
	code, out := runCommand(t, f.bin, f.env(append(append(env, "RELAY_FAILOVER_SLOT", "true"), overrides...)...), "check")
	require.NotEqual(t, 0, code, "relay check must fail on the diverged server:\n%s", out)
	require.Contains(t, out, "diverged")
	require.Contains(t, out, published.String(), "relay check names the last position published")
}

// TestFailoverSlotFollowsThePromotedStandby: on PostgreSQL 17 the relay's
// failover slot, synchronised to a standby that synchronized_standby_slots
// names, survives the primary's death. While events are written all along,
// the primary is killed and the standby promoted; the relay, configured with
// a multi-host URL, follows on its own, and the stream holds every event the
// promoted server committed (its own commit log, which the standby received
// with the WAL) once, in commit order. Before that, a standby that falls
// behind holds the relay back, which the metric and the log say. With
// leader election the relay starts over on the promoted server; without, its
// reader reconnects there and resets its replay state for the new timeline.
func TestFailoverSlotFollowsThePromotedStandby(t *testing.T) {
	t.Parallel()
	for _, election := range []string{"true", "false"} {
		t.Run("leader-election="+election, func(t *testing.T) {
			t.Parallel()
			failoverSlot(t, election)
		})
	}
}

func failoverSlot(t *testing.T, election string) {
	f, standby, env := newFailoverFixture(t, 17, testenv.WithStandbyConfig("sync_replication_slots", "on"))
	// On the primary only: the promoted standby has no standby of its own.
	f.pg.Exec(t, "postgres", `ALTER SYSTEM SET synchronized_standby_slots = 'standby1'`)
	f.pg.Exec(t, "postgres", `SELECT pg_reload_conf()`)
	env = append(env, "RELAY_FAILOVER_SLOT", "true", "RELAY_SLOT_POLL_INTERVAL", "1s", "RELAY_LEADER_ELECTION", election)
	r := f.startRelay(t, env...)

	f.write(t, 5, "first")
	f.waitStream(t, 5, 30*time.Second)
	waitSlotSynced(t, standby, f.db)
	code, out := runCommand(t, f.bin, f.env(env...), "status")
	require.Equal(t, 0, code, out)
	require.Contains(t, out, "failover:            true")
	require.Contains(t, out, "synced:              false")
	require.Contains(t, out, "standby slot standby1: attached")
	require.Contains(t, out, "timeline:            1 (the relay last streamed from 1)")
	code, out = runCommand(t, f.bin, f.env(env...), "check")
	require.Equal(t, 0, code, out)
	require.Contains(t, out, "failover-slot: synchronized_standby_slots names 1 standby slot(s), each with its standby attached")

	// A standby that receives nothing holds the relay back.
	standby.PauseWAL(t)
	f.write(t, 3, "held")
	require.Eventually(t, func() bool { return r.Metrics()["outbox_relay_cdc_waiting_for_standby"] == 1 }, 30*time.Second, 100*time.Millisecond,
		"the metric shows the walsender waiting for the standby")
	require.Contains(t, r.LogText(), `the walsender holds changes back until a standby in synchronized_standby_slots confirms them`)
	require.Contains(t, r.LogText(), `"standby1"`, "the log names the standby's slot")
	require.Equal(t, 5, e2e.StreamCount(f.nc, "OUTBOX"), "nothing the standby lacks is published")
	standby.ResumeWAL(t)
	f.waitStream(t, 8, 30*time.Second)
	require.Eventually(t, func() bool { return r.Metrics()["outbox_relay_cdc_waiting_for_standby"] == 0 }, 30*time.Second, 100*time.Millisecond)

	// The failover, while events flow.
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := f.produce(ctx, 4000, "flow")
	f.waitStream(t, 200, 60*time.Second)
	f.pg.Stop(t, "immediate")
	standby.Promote(t)
	promoted := len(f.writer.Committed(t))
	require.Eventually(t, func() bool { return len(f.writer.Committed(t)) > promoted+300 }, 2*time.Minute, 200*time.Millisecond,
		"the writer goes on on the promoted standby")
	cancel()
	<-done

	expected := f.writer.Committed(t)
	require.Eventually(t, func() bool { return e2e.StreamCount(f.nc, "OUTBOX") >= len(expected) }, 2*time.Minute, 100*time.Millisecond,
		"the relay follows the failover and publishes what the promoted standby commits")
	f.verify(t)
	require.False(t, r.Exited(), "the relay rode the failover out")
	if election == "false" {
		require.Contains(t, r.LogText(), "the server switched timelines (a failover)", "the same reader followed the failover")
	}
	m := r.Metrics()
	t.Logf("%d events on the stream; %v replayed events skipped, %v duplicates, %v reconnects",
		len(expected), m["outbox_relay_pump_skipped_total"], m["outbox_relay_sink_duplicates_total"], m["outbox_relay_cdc_reconnects_total"])

	code, out = runCommand(t, f.bin, f.env(env...), "status")
	require.Equal(t, 0, code, out)
	require.Contains(t, out, "failover:            true")
	require.Contains(t, out, "synced:              true", "the slot is the standby's synchronised copy")
	require.Contains(t, out, "timeline:            2 (the relay last streamed from 2)")
	code, out = runCommand(t, f.bin, f.env(env...), "check")
	require.Equal(t, 0, code, "a promoted server without standbys is a warning, not a refusal: %s", out)
	require.Contains(t, out, "warn  failover-slot: synchronized_standby_slots is empty")
}
