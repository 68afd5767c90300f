package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"

	"github.com/outbox-relay/outbox-relay/internal/e2e"
	"github.com/outbox-relay/outbox-relay/internal/relay"
)

// TestRecoverAfterFailover: on PostgreSQL 16 a failover loses the slot. The
// relay published some events; others were committed and replicated but not
// yet published when the primary died (the relay was down too); more are
// committed on the promoted standby, before and while the operator
// recovers. The relay refuses to create the slot; `relay recover`, as the
// README says, creates it and publishes from the outbox table what the
// stream lacks; the relay goes on from the new slot. Every event the
// promoted server committed is on the stream once, in commit order (one
// writer at a time, so creation order is commit order).
func TestRecoverAfterFailover(t *testing.T) {
	t.Parallel()
	// 14: the oldest supported major (pg_start_backup for the standby, no
	// failover slots); 16: the newest without failover slots.
	for _, major := range []int{14, 16} {
		t.Run(fmt.Sprintf("pg%d", major), func(t *testing.T) {
			t.Parallel()
			recoverAfterFailover(t, major)
		})
	}
}

func recoverAfterFailover(t *testing.T, major int) {
	f, standby, env := newFailoverFixture(t, major)
	r := f.startRelay(t, env...)
	for i := range 4 {
		f.write(t, 5, tagf("published-%d", i))
	}
	f.waitStream(t, 20, 30*time.Second)

	// Committed and replicated, never published: the relay is down when
	// the primary dies.
	r.Kill()
	for i := range 5 {
		f.write(t, 3, tagf("unpublished-%d", i))
	}
	standby.CatchUp(t)
	f.pg.Stop(t, "immediate")
	standby.Promote(t)
	for i := range 5 {
		writeAgain(t, f, 2, tagf("promoted-%d", i))
	}

	again := e2e.StartRelay(t, f.bin, f.env(env...))
	code, err := again.Wait(60 * time.Second)
	require.NoError(t, err, "the relay refuses to create the slot the stream shows existed")
	require.Equal(t, 1, code)
	require.Contains(t, again.Logs(), "was dropped")

	// A recovery that was killed after creating the slot leaves the slot
	// and its marker: the relay refuses to stream from that slot, and the
	// next recovery starts over.
	systemID, ok := pgValue[string](standby.Postgres, f.db, `SELECT system_identifier::text FROM pg_control_system()`)
	require.True(t, ok)
	js, err := jetstream.New(f.nc)
	require.NoError(t, err)
	kv, err := js.KeyValue(context.Background(), "outbox-relay")
	require.NoError(t, err)
	_, err = kv.Put(context.Background(), recoveryKey("OUTBOX", origin(systemID, f.db, "outbox_relay")), []byte(`{"slot":"outbox_relay"}`))
	require.NoError(t, err)
	standby.Exec(t, f.db, `SELECT pg_create_logical_replication_slot('outbox_relay', 'pgoutput')`)
	again = e2e.StartRelay(t, f.bin, f.env(env...))
	code, err = again.Wait(60 * time.Second)
	require.NoError(t, err, "the relay refuses the slot of an unfinished recovery")
	require.Equal(t, 1, code)
	require.Contains(t, again.LogText(), `relay recover created slot "outbox_relay"`)

	// The operator recovers while the application goes on writing.
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := f.produce(ctx, 1_000_000, "during")
	require.Eventually(t, func() bool { return len(f.writer.Committed(t)) > 60 }, 30*time.Second, 50*time.Millisecond)
	readme, err := os.ReadFile(filepath.Join(e2e.RepoRoot(), "README.md"))
	require.NoError(t, err)
	_, section, found := strings.Cut(string(readme), "#### PostgreSQL 16 and older: `relay recover`")
	require.True(t, found, "the README documents the recovery")
	require.Contains(t, section, "```sh\nrelay recover\n```", "with the relay's configuration, the README's command is relay recover")
	code, out := runCommand(t, f.bin, f.env(env...), "recover")
	require.Equal(t, 0, code, out)
	require.Contains(t, out, "slot outbox_relay: dropped, created by a recovery that did not finish")
	require.Contains(t, out, "recovery done")
	t.Log(out)

	f.startRelay(t, env...)
	committed := len(f.writer.Committed(t))
	require.Eventually(t, func() bool { return len(f.writer.Committed(t)) > committed+100 }, time.Minute, 50*time.Millisecond)
	cancel()
	<-done
	expected := f.writer.Committed(t)
	require.Eventually(t, func() bool { return e2e.StreamCount(f.nc, "OUTBOX") >= len(expected) }, time.Minute, 100*time.Millisecond)
	msgs := f.verify(t)
	for _, m := range msgs {
		// Published again from the table or from the slot, a message looks
		// the same.
		_, err := time.Parse(time.RFC3339Nano, m.Header.Get(relay.HeaderCreatedAt))
		require.NoError(t, err, "message %d", m.Seq)
		require.Contains(t, string(m.Data), `"pad"`, "message %d carries the payload", m.Seq)
		require.Equal(t, "order", m.Header.Get(relay.HeaderAggregateType))
	}
}

// writeAgain writes a transaction of n events, trying again while the
// writer's connections find the server that accepts writes.
func writeAgain(t *testing.T, f *fixture, n int, tag string) {
	t.Helper()
	require.Eventually(t, func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_, err := f.writer.Write(ctx, e2e.SampleEvents(n, 64, tag), false)
		return err == nil
	}, time.Minute, 100*time.Millisecond, "write on the promoted standby")
}

// TestRecoverAfterDivergedFailover: on PostgreSQL 16 the relay published
// events a lagging standby never received, and the standby was promoted.
// relay recover refuses to recreate the slot under its old name (positions
// the new timeline reuses would hide new events behind the high-water mark)
// and, as the README says, recovers under a new name: every event the
// promoted server committed reaches the stream once, in commit order; the
// events published from the old primary only stay on the stream, as they
// were.
func TestRecoverAfterDivergedFailover(t *testing.T) {
	t.Parallel()
	f, standby, env := newFailoverFixture(t, 16)
	r := f.startRelay(t, env...)
	f.write(t, 5, "shared")
	f.waitStream(t, 5, 30*time.Second)
	standby.CatchUp(t)

	standby.PauseWAL(t)
	var lost []string
	for i := range 10 {
		lost = append(lost, f.write(t, 5, tagf("lost-%d", i))...)
	}
	f.waitStream(t, 55, 30*time.Second)
	r.Kill()
	f.pg.Stop(t, "immediate")
	standby.Promote(t)
	for i := range 3 {
		writeAgain(t, f, 2, tagf("promoted-%d", i))
	}

	code, out := runCommand(t, f.bin, f.env(env...), "recover")
	require.Equal(t, 1, code, out)
	require.Contains(t, out, "diverged")
	require.Contains(t, out, "--recover-previous-slot=outbox_relay")

	renamed := append(append([]string{}, env...), "RELAY_SLOT", "relay2", "RELAY_RECOVER_PREVIOUS_SLOT", "outbox_relay")
	code, out = runCommand(t, f.bin, f.env(renamed...), "recover")
	require.Equal(t, 0, code, out)
	require.Contains(t, out, "warning: timeline: the server's WAL diverged")
	require.Contains(t, out, "to publish: 6")
	f.startRelay(t, renamed...)
	for i := range 3 {
		writeAgain(t, f, 2, tagf("after-%d", i))
	}

	expected := f.writer.Committed(t)
	require.Eventually(t, func() bool { return e2e.StreamCount(f.nc, "OUTBOX") >= len(expected)+len(lost) }, time.Minute, 100*time.Millisecond)
	stored := e2e.IDs(e2e.ReadStream(t, f.nc, "OUTBOX"))
	require.Equal(t, lost, stored[5:55], "what was published from the old primary stays as it was")
	kept := append(append([]string{}, stored[:5]...), stored[55:]...)
	v := e2e.Compare(expected, kept)
	require.True(t, v.OK(), "stream vs the promoted server's commit log: %s", v)
}
