package main

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"

	"github.com/outbox-relay/outbox-relay/internal/e2e"
	"github.com/outbox-relay/outbox-relay/internal/relay"
	"github.com/outbox-relay/outbox-relay/internal/testenv"
)

// service is one service of a shared-stream test: its database, its outbox
// writer and its relay's settings.
type service struct {
	db     string
	slot   string
	writer *e2e.Writer
	env    map[string]string
	relay  *e2e.Relay
}

func newService(t *testing.T, pg *testenv.Postgres, natsURL, db string, extra ...string) *service {
	t.Helper()
	pg.CreateDatabase(t, db)
	e2e.SetupOutbox(t, pg, db)
	s := &service{db: db, slot: "relay_" + db, writer: e2e.NewWriter(t, pg.AdminURL(db), 4)}
	s.env = map[string]string{
		"RELAY_POSTGRES_URL":    pg.URL(db),
		"RELAY_NATS_URL":        natsURL,
		"RELAY_SLOT":            s.slot,
		"RELAY_PUBLICATION":     "pub_" + db,
		"RELAY_CREATE_STREAM":   "true",
		"RELAY_STATUS_INTERVAL": "500ms",
		"RELAY_RECONNECT_MAX":   "2s",
		"RELAY_RETRY_MAX":       "1s",
	}
	for k, v := range publishModeEnv() {
		s.env[k] = v
	}
	if atomicMode() {
		// Atomic batches are ordered by sequence arithmetic, as single
		// messages on a replicated stream: with other writers on the
		// stream, one batch at a time from the start keeps commit order
		// (without, the first displaced batch is published out of order).
		s.env["RELAY_SHARED_STREAM"] = "true"
	}
	for i := 0; i+1 < len(extra); i += 2 {
		s.env[extra[i]] = extra[i+1]
	}
	return s
}

func (s *service) start(t *testing.T, bin string) {
	t.Helper()
	s.relay = e2e.StartRelay(t, bin, s.env)
	waitReady(t, s.relay)
}

// produce commits transactions of mixed sizes until total events committed
// or ctx is done.
func (s *service) produce(ctx context.Context, total int) <-chan struct{} {
	done := make(chan struct{})
	go func() {
		defer close(done)
		sizes := []int{1, 10, 1, 50, 3, 200}
		written := 0
		for i := 0; written < total && ctx.Err() == nil; i++ {
			n := min(sizes[i%len(sizes)], total-written)
			wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			_, err := s.writer.Write(wctx, e2e.SampleEvents(n, 128, fmt.Sprintf("%s-%d", s.db, i)), i%13 == 7)
			cancel()
			if err == nil {
				written += n
			}
		}
	}()
	return done
}

// plainPublisher publishes messages without ids or headers to subject until
// stopped, as an application writing to the stream's subjects would.
func plainPublisher(t *testing.T, nc *nats.Conn, subject string, every time.Duration) (stop func() int) {
	t.Helper()
	var n atomic.Int64
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		tick := time.NewTicker(every)
		defer tick.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
				if nc.Publish(subject, []byte("plain")) == nil {
					n.Add(1)
				}
			}
		}
	}()
	return func() int {
		cancel()
		wg.Wait()
		return int(n.Load())
	}
}

// verifyOrigin checks that the messages of one origin hold every event the
// service committed, once, in commit order.
func verifyOrigin(t *testing.T, msgs []e2e.StoredMessage, s *service) {
	t.Helper()
	expected := s.writer.Committed(t)
	want := map[string]bool{}
	for _, id := range expected {
		want[id] = true
	}
	var stored []string
	for _, m := range msgs {
		if id := m.Header.Get(jetstream.MsgIDHeader); want[id] {
			stored = append(stored, id)
		}
	}
	v := e2e.Compare(expected, stored)
	require.True(t, v.OK(), "service %s: %s", s.db, v)
}

// TestRelaysShareAStreamWithOtherWriters: two services, each with its own
// database and relay, share one NATS and one stream (the default OUTBOX
// created by the first relay), while an application publishes plain messages
// to the same subjects; both relays are killed and restarted while events
// flow. Each service's events are on the stream once, in commit order.
func TestRelaysShareAStreamWithOtherWriters(t *testing.T) {
	t.Parallel()
	bin := e2e.BuildRelay(t)
	pg := testenv.StartPostgres(t)
	ns := testenv.StartNATS(t)
	nc := ns.Connect(t)
	a := newService(t, pg, ns.URL(), "app_a")
	b := newService(t, pg, ns.URL(), "app_b")
	a.start(t, bin)
	b.start(t, bin)
	stopPlain := plainPublisher(t, nc, "outbox.plain.message", 2*time.Millisecond)

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	const perService = 6000
	doneA, doneB := a.produce(ctx, perService), b.produce(ctx, perService)
	for round := range 2 {
		time.Sleep(3 * time.Second)
		a.relay.Kill()
		a.start(t, bin)
		time.Sleep(2 * time.Second)
		_, _ = b.relay.Stop(30 * time.Second)
		b.start(t, bin)
		t.Logf("round %d: restarted both relays", round)
	}
	<-doneA
	<-doneB
	plain := stopPlain()
	total := func() int { return len(a.writer.Committed(t)) + len(b.writer.Committed(t)) + plain }
	want := total()
	require.Eventually(t, func() bool { return e2e.StreamCount(nc, "OUTBOX") >= want }, 3*time.Minute, 200*time.Millisecond,
		"the stream should reach %d messages, has %d", want, e2e.StreamCount(nc, "OUTBOX"))
	msgs := e2e.ReadStream(t, nc, "OUTBOX")
	verifyOrigin(t, msgs, a)
	verifyOrigin(t, msgs, b)
	require.Len(t, msgs, want, "nothing else on the stream")
	t.Logf("%d messages: %d plain, %d and %d events", len(msgs), plain, len(a.writer.Committed(t)), len(b.writer.Committed(t)))
}

// TestRetentionRemovesTheRelaysMessages: streams whose consumers remove
// messages (work queue, interest) or whose limits do (max age), with a 1s
// duplicate window; the relay is killed twice while events flow and stays
// down longer than the window. The consumer receives every event once, in
// commit order.
func TestRetentionRemovesTheRelaysMessages(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		cfg  jetstream.StreamConfig
	}{
		{"work queue", jetstream.StreamConfig{Retention: jetstream.WorkQueuePolicy}},
		{"interest", jetstream.StreamConfig{Retention: jetstream.InterestPolicy}},
		{"limits, max age 3s", jetstream.StreamConfig{MaxAge: 3 * time.Second}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			f := newFixture(t)
			js, err := jetstream.New(f.nc)
			require.NoError(t, err)
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
			defer cancel()
			sc := tc.cfg
			sc.Name, sc.Subjects, sc.Storage, sc.Duplicates = "OUTBOX", []string{"outbox.*.*"}, jetstream.FileStorage, time.Second
			sc.AllowAtomicPublish, sc.AllowBatchPublish = atomicMode(), batchMode()
			stream, err := js.CreateStream(ctx, sc)
			require.NoError(t, err)
			cons, err := stream.CreateOrUpdateConsumer(ctx, jetstream.ConsumerConfig{Durable: "worker", AckPolicy: jetstream.AckExplicitPolicy})
			require.NoError(t, err)
			var mu sync.Mutex
			var received []string
			cc, err := cons.Consume(func(m jetstream.Msg) {
				mu.Lock()
				received = append(received, m.Headers().Get(jetstream.MsgIDHeader))
				mu.Unlock()
				_ = m.Ack()
			})
			require.NoError(t, err)
			defer cc.Stop()

			relayEnv := []string{"RELAY_CREATE_STREAM", "false"}
			r := f.startRelay(t, relayEnv...)
			done := f.produce(ctx, 5000, "retention")
			for range 2 {
				time.Sleep(1500 * time.Millisecond)
				r.Kill()
				time.Sleep(2 * time.Second) // past the duplicate window
				r = f.startRelay(t, relayEnv...)
			}
			<-done
			want := f.writer.Committed(t)
			require.Eventually(t, func() bool {
				mu.Lock()
				defer mu.Unlock()
				return len(received) >= len(want)
			}, 2*time.Minute, 100*time.Millisecond, "the consumer should receive %d events", len(want))
			time.Sleep(time.Second) // anything more would be a duplicate
			mu.Lock()
			got := append([]string(nil), received...)
			mu.Unlock()
			v := e2e.Compare(want, got)
			require.True(t, v.OK(), "consumer vs commit log: %s; unverified replays %v", v, r.Metrics()["outbox_relay_pump_unverified_replays_total"])
		})
	}
}

// TestDroppedSlotIsDetectedWhenTheStreamKeepsNothing: a work-queue stream
// whose consumer removed every message, and the slot dropped while the relay
// was stopped: the relay refuses to create a new slot (which would skip the
// events written in between), because its high-water mark is recorded
// outside the stream.
func TestDroppedSlotIsDetectedWhenTheStreamKeepsNothing(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	js, err := jetstream.New(f.nc)
	require.NoError(t, err)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	stream, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: "OUTBOX", Subjects: []string{"outbox.*.*"}, Retention: jetstream.WorkQueuePolicy})
	require.NoError(t, err)
	cons, err := stream.CreateOrUpdateConsumer(ctx, jetstream.ConsumerConfig{Durable: "worker", AckPolicy: jetstream.AckExplicitPolicy})
	require.NoError(t, err)
	cc, err := cons.Consume(func(m jetstream.Msg) { _ = m.Ack() })
	require.NoError(t, err)
	defer cc.Stop()

	r := f.startRelay(t, "RELAY_CREATE_STREAM", "false")
	f.write(t, 20, "before")
	require.Eventually(t, func() bool {
		info, err := stream.Info(ctx)
		return err == nil && info.State.LastSeq >= 20 && info.State.Msgs == 0
	}, time.Minute, 100*time.Millisecond, "the consumer removes every message")
	code, err := r.Stop(30 * time.Second)
	require.NoError(t, err)
	require.Zero(t, code)
	f.pg.Exec(t, f.db, `SELECT pg_drop_replication_slot('outbox_relay')`)
	f.write(t, 5, "while-dropped")

	again := e2e.StartRelay(t, f.bin, f.env("RELAY_CREATE_STREAM", "false"))
	code, err = again.Wait(time.Minute)
	require.NoError(t, err)
	require.Equal(t, 1, code, "the relay must stop instead of creating a new slot")
	require.Contains(t, again.Logs(), "existed and was dropped")
	require.Empty(t, f.slotConfirmed(t), "no slot was created")
}

// TestSharedReplicatedStream: on a stream with three replicas, where
// JetStream can check only the sequence before storing, another writer's
// messages land in the relay's bursts. With --shared-stream the relay
// publishes one message at a time and keeps commit order; without it, it
// notices the first broken burst, publishes the displaced events again
// (counted), and goes on one at a time. Nothing is lost or stored twice in
// either case.
func TestSharedReplicatedStream(t *testing.T) {
	t.Parallel()
	for _, shared := range []bool{true, false} {
		t.Run(fmt.Sprintf("shared-stream %t", shared), func(t *testing.T) {
			t.Parallel()
			bin := e2e.BuildRelay(t)
			pg := testenv.StartPostgres(t)
			cluster := testenv.StartNATSCluster(t, 3)
			cluster.WaitForMetaLeader(t)
			nc := cluster.Connect(t)
			createR3Stream(t, nc)
			s := newService(t, pg, cluster.URLs(), "app", "RELAY_STREAM", chaosStream, "RELAY_CREATE_STREAM", "false",
				"RELAY_SHARED_STREAM", fmt.Sprint(shared), "RELAY_PUBLISH_TIMEOUT", "5s")
			s.start(t, bin)
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
			defer cancel()
			done := s.produce(ctx, 3000)
			// The other writer starts once the relay publishes in bursts.
			require.Eventually(t, func() bool { return e2e.StreamCount(nc, chaosStream) >= 300 }, time.Minute, 20*time.Millisecond)
			stopPlain := plainPublisher(t, nc, "outbox.plain.message", time.Millisecond)
			<-done
			plain := stopPlain()
			want := len(s.writer.Committed(t)) + plain
			require.Eventually(t, func() bool { return e2e.StreamCount(nc, chaosStream) >= want }, 3*time.Minute, 200*time.Millisecond,
				"the stream should reach %d messages, has %d", want, e2e.StreamCount(nc, chaosStream))
			msgs := e2e.ReadStream(t, nc, chaosStream)
			require.Len(t, msgs, want)
			reordered := s.relay.Metrics()["outbox_relay_pump_reordered_total"]
			expected := s.writer.Committed(t)
			var stored []string
			for _, m := range msgs {
				if m.Header.Get(relay.HeaderOrigin) != "" {
					stored = append(stored, m.Header.Get(jetstream.MsgIDHeader))
				}
			}
			v := e2e.Compare(expected, stored)
			require.Zero(t, v.Lost, "%s", v)
			require.Zero(t, v.Duplicated, "%s", v)
			require.Zero(t, v.Unexpected, "%s", v)
			if shared {
				require.Zero(t, v.Reordered, "%s", v)
				require.Zero(t, reordered)
			} else {
				require.LessOrEqual(t, float64(v.Reordered), reordered, "every reordered event is counted: %s", v)
			}
			t.Logf("%s; reordered_total %v", v, reordered)
		})
	}
}
