package main

import (
	"context"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"

	"github.com/outbox-relay/outbox-relay/internal/e2e"
)

// TestPublishModes: --publish-mode=batch creates a stream that allows fast
// batches and publishes bursts as fast batches, every event once, in
// commit order; auto uses fast batches on a stream that allows them and
// single publishes on one that does not; batch refuses a stream without
// allow_batched, naming the setting, and --atomic-transactions.
func TestPublishModes(t *testing.T) {
	t.Parallel()
	// Whatever mode the suite runs in, these set their own.
	noAtomic := []string{"RELAY_ATOMIC_TRANSACTIONS", "false"}
	t.Run("batch", func(t *testing.T) {
		t.Parallel()
		f := newFixture(t)
		r := drainBacklog(t, f, append(noAtomic, "RELAY_PUBLISH_MODE", "batch")...)
		require.Contains(t, unescaped(r.Logs()), `"publish_mode":"batch"`)
		require.Positive(t, r.Metrics()["outbox_relay_sink_fast_batches_total"], "bursts went as fast batches")
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		s, err := f.js(t).Stream(ctx, "OUTBOX")
		require.NoError(t, err)
		require.True(t, s.CachedInfo().Config.AllowBatchPublish, "the stream the relay created allows fast batches")
	})
	for _, allow := range []bool{true, false} {
		name := map[bool]string{true: "auto, stream allows fast batches", false: "auto, stream does not"}[allow]
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			f := newFixture(t)
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			_, err := f.js(t).CreateStream(ctx, jetstream.StreamConfig{Name: "OUTBOX", Subjects: []string{"outbox.>"}, Storage: jetstream.FileStorage, AllowBatchPublish: allow})
			require.NoError(t, err)
			r := drainBacklog(t, f, append(noAtomic, "RELAY_PUBLISH_MODE", "auto", "RELAY_CREATE_STREAM", "false")...)
			want := map[bool]string{true: "batch", false: "async"}[allow]
			require.Contains(t, unescaped(r.Logs()), `"publish_mode":"`+want+`"`)
			if allow {
				require.Positive(t, r.Metrics()["outbox_relay_sink_fast_batches_total"])
			} else {
				require.Zero(t, r.Metrics()["outbox_relay_sink_fast_batches_total"])
			}
		})
	}
	t.Run("batch refuses a stream without allow_batched", func(t *testing.T) {
		t.Parallel()
		f := newFixture(t)
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		_, err := f.js(t).CreateStream(ctx, jetstream.StreamConfig{Name: "OUTBOX", Subjects: []string{"outbox.>"}, Storage: jetstream.FileStorage})
		require.NoError(t, err)
		r := e2e.StartRelay(t, f.bin, f.env(append(noAtomic, "RELAY_PUBLISH_MODE", "batch", "RELAY_CREATE_STREAM", "false")...))
		code, err := r.Wait(time.Minute)
		require.NoError(t, err)
		require.Equal(t, 1, code)
		require.Contains(t, unescaped(r.Logs()), "allow_batched")
	})
	t.Run("batch and atomic transactions", func(t *testing.T) {
		t.Parallel()
		f := newFixture(t)
		code, out := runCommand(t, f.bin, f.env("RELAY_PUBLISH_MODE", "batch", "RELAY_ATOMIC_TRANSACTIONS", "true"), "check")
		require.NotZero(t, code, out)
		require.Contains(t, out, "publish-mode")
	})
}

// drainBacklog starts the relay with env once to make its slot, stops it,
// writes a backlog of 2,000 events (so that the relay finds bursts to
// publish), starts it again, and returns it once the stream holds every
// event once, in commit order.
func drainBacklog(t *testing.T, f *fixture, env ...string) *e2e.Relay {
	t.Helper()
	r := f.startRelay(t, env...)
	_, err := r.Stop(30 * time.Second)
	require.NoError(t, err)
	for i := range 5 {
		f.write(t, 400, tagf("backlog-%d", i))
	}
	r = f.startRelay(t, env...)
	f.waitStream(t, 2000, 2*time.Minute)
	f.verify(t)
	return r
}

// js returns a JetStream context on the fixture's connection.
func (f *fixture) js(t *testing.T) jetstream.JetStream {
	t.Helper()
	js, err := jetstream.New(f.nc)
	require.NoError(t, err)
	return js
}
