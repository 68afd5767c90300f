package main

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"

	"github.com/outbox-relay/outbox-relay/internal/e2e"
	"github.com/outbox-relay/outbox-relay/internal/relay"
)

// TestStreamNoLongerCapturesTheSubject: the stream's subjects are narrowed
// while the relay runs, and an event's subject is no longer captured. No
// retry can store it: it is poison (no_stream), handled by the policy, with
// every event before it stored.
func TestStreamNoLongerCapturesTheSubject(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	r := f.startRelay(t)
	before := writeRows(t, f, goodEvent(1), goodEvent(2))
	f.waitStream(t, len(before), time.Minute)

	js, err := jetstream.New(f.nc)
	require.NoError(t, err)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	s, err := js.Stream(ctx, "OUTBOX")
	require.NoError(t, err)
	cfg := s.CachedInfo().Config
	cfg.Subjects = []string{"outbox.invoice.*"}
	_, err = js.UpdateStream(ctx, cfg)
	require.NoError(t, err)

	ids := writeRows(t, f, goodEvent(3))
	code, err := r.Wait(time.Minute)
	require.NoError(t, err, "the relay must stop on the event, not retry it forever")
	require.Equal(t, 1, code)
	require.Contains(t, r.Logs(), ids[0])
	require.Contains(t, r.Logs(), "no_stream")
	require.Equal(t, before, e2e.IDs(e2e.ReadStream(t, f.nc, "OUTBOX")))
}

// TestStreamDeletedWhileRunning: the stream disappears while the relay runs.
// Publishing waits, counted in outbox_relay_pump_blocked{reason="stream_missing"}
// (alert OutboxRelayBlocked), and goes on by itself once the stream is back.
func TestStreamDeletedWhileRunning(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	r := f.startRelay(t, "RELAY_CREATE_STREAM", "true")
	f.write(t, 5, "before")
	f.waitStream(t, 5, time.Minute)
	js, err := jetstream.New(f.nc)
	require.NoError(t, err)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	s, err := js.Stream(ctx, "OUTBOX")
	require.NoError(t, err)
	cfg := s.CachedInfo().Config
	require.NoError(t, js.DeleteStream(ctx, "OUTBOX"))

	after := f.write(t, 3, "after")
	const blocked = `outbox_relay_pump_blocked{reason="stream_missing"}`
	require.Eventually(t, func() bool { return r.Metrics()[blocked] == 1 }, time.Minute, 100*time.Millisecond,
		"the relay reports that it cannot publish")
	require.False(t, r.Exited())

	_, err = js.CreateStream(ctx, cfg)
	require.NoError(t, err)
	require.Eventually(t, func() bool { return e2e.StreamCount(f.nc, "OUTBOX") >= len(after) }, time.Minute, 100*time.Millisecond,
		"the events written meanwhile reach the new stream")
	require.Eventually(t, func() bool { return r.Metrics()[blocked] == 0 }, 30*time.Second, 100*time.Millisecond)
	require.Equal(t, after, e2e.IDs(e2e.ReadStream(t, f.nc, "OUTBOX")), "the new stream holds what was written since, once")
}

// TestSubjectsNearNATSLimits: a subject just under the relay's bound is
// published; one over it (which would make the NATS server close the
// connection at every retry: max_control_line) is poison, and the relay
// stops on it, every event before it stored.
func TestSubjectsNearNATSLimits(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	r := f.startRelay(t)
	// outbox.<type>.created: 15 bytes besides the aggregate type.
	long := e2e.Event{AggregateType: strings.Repeat("a", relay.MaxSubjectLength-15), AggregateID: "x", EventType: "created", Payload: `{}`}
	tooLong := e2e.Event{AggregateType: strings.Repeat("b", relay.MaxSubjectLength), AggregateID: "y", EventType: "created", Payload: `{}`}
	ids := writeRows(t, f, goodEvent(1), long, tooLong, goodEvent(4))
	code, err := r.Wait(time.Minute)
	require.NoError(t, err, "the relay stops on the event, not in a reconnect loop")
	require.Equal(t, 1, code)
	require.Contains(t, r.Logs(), ids[2])
	require.Contains(t, r.Logs(), "invalid_subject")
	require.Equal(t, ids[:2], e2e.IDs(e2e.ReadStream(t, f.nc, "OUTBOX")))
}
