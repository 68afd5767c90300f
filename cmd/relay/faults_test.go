package main

import (
	"context"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/outbox-relay/outbox-relay/internal/e2e"
)

// TestRestartsAndCrashesLoseAndDuplicateNothing stops (SIGTERM) and kills
// (SIGKILL) the relay while events flow and checks the stream afterwards.
func TestRestartsAndCrashesLoseAndDuplicateNothing(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		sig  syscall.Signal
	}{
		{"sigterm", syscall.SIGTERM},
		{"sigkill", syscall.SIGKILL},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			f := newFixture(t)
			relay := f.startRelay(t)
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer cancel()
			done := f.produce(ctx, 3000, tt.name)
			for round := range 3 {
				f.waitStream(t, 300*(round+1), time.Minute)
				relay.Signal(tt.sig)
				code, err := relay.Wait(30 * time.Second)
				require.NoError(t, err)
				if tt.sig == syscall.SIGTERM {
					require.Equal(t, 0, code, "SIGTERM exits 0")
					require.Contains(t, relay.Logs(), "final status sent")
				}
				relay = f.startRelay(t)
			}
			<-done
			f.waitStream(t, len(f.writer.Committed(t)), time.Minute)
			f.verify(t)
		})
	}
}

// TestOutagesAreRiddenOut restarts PostgreSQL (fast and immediate) and NATS
// while events flow; the relay must reconnect by itself and end up with a
// complete, ordered stream.
func TestOutagesAreRiddenOut(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name   string
		outage func(t *testing.T, f *fixture)
	}{
		{"postgres-fast-restart", func(t *testing.T, f *fixture) { f.pg.Restart(t, "fast") }},
		{"postgres-crash-restart", func(t *testing.T, f *fixture) { f.pg.Restart(t, "immediate") }},
		{"nats-restart", func(t *testing.T, f *fixture) {
			f.nats.Stop(t)
			time.Sleep(1500 * time.Millisecond) // an outage, not a blip
			f.nats.Start(t)
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			f := newFixture(t)
			relay := f.startRelay(t)
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer cancel()
			done := f.produce(ctx, 2500, tt.name)
			for round := range 2 {
				f.waitStream(t, 400*(round+1), time.Minute)
				tt.outage(t, f)
			}
			<-done
			f.waitStream(t, len(f.writer.Committed(t)), 90*time.Second)
			f.verify(t)
			require.False(t, relay.Exited(), "the relay never exits because a dependency is down")
			// A PostgreSQL restart ends the leader's lock session too: the
			// relay steps down and leads again, saying so.
			require.Regexp(t, "reconnect|leadership lost", relay.Logs(), "the relay says what it is doing")
		})
	}
}

// TestSlotMovesOnlyPastAcknowledgedEvents stops NATS, commits events, and
// checks that the confirmed position stays before them until JetStream has
// stored them.
func TestSlotMovesOnlyPastAcknowledgedEvents(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	f.startRelay(t)
	f.write(t, 5, "before")
	f.waitStream(t, 5, 30*time.Second)

	f.nats.Stop(t)
	beforeWrite := f.currentWAL(t)
	f.write(t, 20, "during")
	afterWrite := f.currentWAL(t)
	// Several status intervals (500ms): the relay keeps reporting, but
	// never past the unacknowledged transaction.
	deadline := time.Now().Add(4 * time.Second)
	for time.Now().Before(deadline) {
		confirmed := f.confirmedLSN(t)
		require.LessOrEqual(t, uint64(confirmed), uint64(beforeWrite), "slot confirmed %s past the unacknowledged transaction (begins after %s)", confirmed, beforeWrite)
		time.Sleep(200 * time.Millisecond)
	}
	f.nats.Start(t)
	f.waitStream(t, 25, time.Minute)
	f.verify(t)
	require.Eventually(t, func() bool { return f.confirmedLSN(t) >= afterWrite }, 30*time.Second, 100*time.Millisecond,
		"once stored, the slot moves past the transaction")
}

// TestIdleOutboxDoesNotPinWAL writes heavily to another table and checks
// that the slot's confirmed position follows the WAL.
func TestIdleOutboxDoesNotPinWAL(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	relay := f.startRelay(t)
	f.write(t, 1, "one")
	f.waitStream(t, 1, 30*time.Second)
	start := f.confirmedLSN(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	filler := string(make([]byte, 0, 1)) + "................................................................................................................................................................................................................................................................"
	for range 40 {
		require.NoError(t, f.writer.WriteOther(ctx, 500, filler))
	}
	written := f.currentWAL(t)
	require.Greater(t, uint64(written-start), uint64(4<<20), "the test writes several MB of WAL")
	require.Eventually(t, func() bool { return f.confirmedLSN(t) >= written }, 30*time.Second, 100*time.Millisecond,
		"confirmed_flush_lsn %s should reach %s", f.confirmedLSN(t), written)
	require.Equal(t, 1, e2e.StreamCount(f.nc, "OUTBOX"), "writes to other tables are not published")
	require.False(t, relay.Exited())
}
