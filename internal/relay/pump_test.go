package relay_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest"

	"github.com/outbox-relay/outbox-relay/internal/cdc"
	"github.com/outbox-relay/outbox-relay/internal/metrics"
	"github.com/outbox-relay/outbox-relay/internal/relay"
	"github.com/outbox-relay/outbox-relay/internal/sink"
)

const (
	testOrigin    = "origin-1"
	foreignOrigin = "origin-0"
	// runDeadline bounds every Run: not returning by then is a deadlock.
	runDeadline = 30 * time.Second
)

var testCommitTime = time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)

// pumpID is the ID of the ith event (1-based).
func pumpID(i int) string { return fmt.Sprintf("evt-%04d", i) }

// pumpIDs returns the IDs of events from..to, inclusive.
func pumpIDs(from, to int) []string {
	var ids []string
	for i := from; i <= to; i++ {
		ids = append(ids, pumpID(i))
	}
	return ids
}

// pumpEvent builds the ith event (1-based); perTxn events share a
// transaction, so the (i-1)/perTxn-th transaction commits at
// 1000+10*txn and the event's index is (i-1)%perTxn.
func pumpEvent(i, perTxn int) cdc.Event {
	txn := (i - 1) / perTxn
	return cdc.Event{
		ID:            pumpID(i),
		AggregateType: "order",
		AggregateID:   fmt.Sprintf("order-%d", i%7),
		EventType:     "created",
		Payload:       []byte(fmt.Sprintf(`{"n":%d}`, i)),
		CommitTime:    testCommitTime.Add(time.Duration(txn) * time.Millisecond),
		Position:      cdc.Position{CommitLSN: pglogrepl.LSN(1000 + txn*10), Index: uint32((i - 1) % perTxn)},
	}
}

// pumpEvents returns events 1..n, the last of each transaction (and the
// nth) marked as such (cdc.Event.TxnEnd).
func pumpEvents(n, perTxn int) []cdc.Event {
	evs := make([]cdc.Event, 0, n)
	for i := 1; i <= n; i++ {
		ev := pumpEvent(i, perTxn)
		ev.TxnEnd = i%perTxn == 0 || i == n
		evs = append(evs, ev)
	}
	return evs
}

// poisoned makes the ith event (1-based) of evs unmappable.
func poisoned(evs []cdc.Event, i int, reason string) []cdc.Event {
	switch reason {
	case "invalid_subject":
		evs[i-1].AggregateType = "bad.type"
	case "bad_row":
		evs[i-1].Defect = "column aggregate_id is NULL"
	default:
		panic("no way to poison an event with " + reason)
	}
	return evs
}

func testMapper(t testing.TB, origin string) *relay.Mapper {
	t.Helper()
	tmpl, err := relay.ParseTemplate("outbox.{aggregate_type}.{event_type}")
	require.NoError(t, err)
	return relay.NewMapper(tmpl, origin, []string{"outbox.>"})
}

func pumpConfig(window int) relay.Config {
	return relay.Config{
		Window:          window,
		ShutdownTimeout: 2 * time.Second,
		RetryMin:        time.Millisecond,
		RetryMax:        5 * time.Millisecond,
		OnPoison:        relay.OnPoisonStop,
	}
}

func deadLetterConfig(window int, subject string) relay.Config {
	cfg := pumpConfig(window)
	cfg.OnPoison = relay.OnPoisonDeadLetter
	cfg.DeadLetterSubject = subject
	return cfg
}

func newTestPump(t *testing.T, cfg relay.Config, src relay.Source, stream *fakeStream) (*relay.Pump, *metrics.Metrics) {
	t.Helper()
	require.NoError(t, cfg.Validate())
	if inBatchMode(t) {
		stream.mu.Lock()
		stream.fast = true
		stream.mu.Unlock()
	}
	m := metrics.New("test", "test")
	log := zaptest.NewLogger(t, zaptest.Level(zapcore.InfoLevel))
	marks := relay.NewWatermark(stream, stream.marks, "OUTBOX", testOrigin, log)
	return relay.New(src, stream, marks, testMapper(t, testOrigin), cfg, log, m), m
}

// startRun runs p in a goroutine; its result arrives on the channel.
func startRun(ctx context.Context, p *relay.Pump) <-chan error {
	done := make(chan error, 1)
	go func() { done <- p.Run(ctx) }()
	return done
}

func waitRun(t *testing.T, done <-chan error, within time.Duration) error {
	t.Helper()
	select {
	case err := <-done:
		return err
	case <-time.After(within):
		t.Fatalf("Run did not return within %s: deadlock?", within)
		return nil
	}
}

// runPump runs a pump over src and stream until Run returns.
func runPump(t *testing.T, cfg relay.Config, src relay.Source, stream *fakeStream) (error, *metrics.Metrics) {
	t.Helper()
	p, m := newTestPump(t, cfg, src, stream)
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	return waitRun(t, startRun(ctx, p), runDeadline), m
}

// metricValue reads a counter or gauge from m's registry by its full name
// and label pairs.
func metricValue(t *testing.T, m *metrics.Metrics, name string, labels ...string) float64 {
	t.Helper()
	require.Zero(t, len(labels)%2, "labels come in name, value pairs")
	families, err := m.Registry().Gather()
	require.NoError(t, err)
	for _, mf := range families {
		if mf.GetName() != name {
			continue
		}
	metric:
		for _, mt := range mf.GetMetric() {
			for i := 0; i < len(labels); i += 2 {
				found := false
				for _, lp := range mt.GetLabel() {
					if lp.GetName() == labels[i] && lp.GetValue() == labels[i+1] {
						found = true
					}
				}
				if !found {
					continue metric
				}
			}
			if c := mt.GetCounter(); c != nil {
				return c.GetValue()
			}
			if g := mt.GetGauge(); g != nil {
				return g.GetValue()
			}
		}
	}
	t.Fatalf("metric %s %v not found", name, labels)
	return 0
}

func retries(t *testing.T, m *metrics.Metrics) float64 {
	return metricValue(t, m, "outbox_relay_pump_retries_total")
}

func skipped(t *testing.T, m *metrics.Metrics) float64 {
	return metricValue(t, m, "outbox_relay_pump_skipped_total")
}

func deadLettered(t *testing.T, m *metrics.Metrics) float64 {
	return metricValue(t, m, "outbox_relay_pump_dead_lettered_total")
}

func poisonEvents(t *testing.T, m *metrics.Metrics, reason string) float64 {
	return metricValue(t, m, "outbox_relay_pump_poison_events_total", "reason", reason)
}

// assertPoisonCounts checks outbox_relay_pump_poison_events_total for every
// reason: want gives the non-zero ones.
func assertPoisonCounts(t *testing.T, m *metrics.Metrics, want map[string]float64) {
	t.Helper()
	for _, r := range metrics.PoisonReasons {
		assert.Equal(t, want[r], poisonEvents(t, m, r), "poison_events_total{reason=%q}", r)
	}
}

func messageIDs(msgs []storedMsg) []string {
	var ids []string
	for _, m := range msgs {
		ids = append(ids, m.ID)
	}
	return ids
}

// assertStream checks the stream holds exactly the messages want (IDs), in
// order, each once, at consecutive sequences; and that the relay's own
// messages carry strictly increasing positions (commit order, no event
// twice) and were published with an expected last sequence (on a one-replica
// stream also the expected last message id, after the first of a chain).
func assertStream(t *testing.T, stream *fakeStream, want []string) {
	t.Helper()
	assertOwnOrder(t, stream, testOrigin)
	msgs := stream.Messages()
	assert.Equal(t, want, messageIDs(msgs), "stream content")
}

// assertOwnOrder checks origin's messages on the stream are in commit order,
// each event once, each stored where it expected.
func assertOwnOrder(t *testing.T, stream *fakeStream, origin string) {
	t.Helper()
	var last cdc.Position
	has := false
	for i, m := range stream.Messages() {
		require.Equal(t, uint64(i+1), m.Seq, "stream sequences")
		pos, ours := relay.PositionFromHeader(m.Header, origin)
		if !ours {
			continue
		}
		if m.CheckLastSeq {
			assert.Equal(t, m.Seq-1, m.ExpectLastSeq, "message %s", m.ID)
		}
		if has {
			assert.True(t, last.Less(pos), "message %s at %s after %s: not in commit order", m.ID, pos, last)
		}
		last, has = pos, true
	}
}

// assertAcked checks src received exactly one ack for each of want, and for
// nothing else, with the event's position.
func assertAcked(t *testing.T, src *fakeSource, want []string, perTxn int) {
	t.Helper()
	acks := src.Acks()
	seen := map[string]int{}
	for _, a := range acks {
		seen[a.ID]++
		var i int
		if _, err := fmt.Sscanf(a.ID, "evt-%d", &i); err == nil {
			assert.Equal(t, pumpEvent(i, perTxn).Position, a.Position, "ack of %s", a.ID)
		}
	}
	for id, n := range seen {
		assert.Equal(t, 1, n, "event %s acked %d times", id, n)
	}
	got := slices.Sorted(func(yield func(string) bool) {
		for id := range seen {
			if !yield(id) {
				return
			}
		}
	})
	assert.Equal(t, slices.Sorted(slices.Values(want)), got, "acked events")
}

// assertStoredAcked checks every relay message in the stream (or the other
// stream) was acknowledged to src, except those in except.
func assertStoredAcked(t *testing.T, stream *fakeStream, src *fakeSource, except ...string) {
	t.Helper()
	acked := map[string]bool{}
	for _, id := range src.AckedIDs() {
		acked[id] = true
	}
	for _, m := range append(stream.Messages(), stream.OtherMessages()...) {
		if _, ours := relay.PositionFromHeader(m.Header, testOrigin); !ours || slices.Contains(except, m.ID) {
			continue
		}
		assert.True(t, acked[m.ID], "event %s is stored at %d but was not acked", m.ID, m.Seq)
	}
}

// without returns ids without drop.
func without(ids []string, drop ...string) []string {
	return slices.DeleteFunc(slices.Clone(ids), func(id string) bool { return slices.Contains(drop, id) })
}

// concat joins ID lists.
func concat(lists ...[]string) []string {
	var out []string
	for _, l := range lists {
		out = append(out, l...)
	}
	return out
}

// eventSubject matches the subjects of relayed (not dead-lettered) events.
func eventSubject(subject string) bool { return strings.HasPrefix(subject, "outbox.order.") }

// once applies f to the first publish sc faults, and no other.
func once(sc script) script {
	done := false
	return func(n int, m sink.Message) fault {
		if done {
			return fault{}
		}
		f := sc(n, m)
		if f.any() {
			done = true
		}
		return f
	}
}

// 1. Every event is stored once, in order, pipelined, and acked.
func TestPumpDeliversInOrder(t *testing.T) {
	t.Parallel()
	forEachMode(t, func(t *testing.T, mode publishMode) {
		for _, tc := range []struct {
			name              string
			n, window, perTxn int
		}{
			{"1000 events, window 16", 1000, 16, 1},
			{"1000 events, window 16, 5 per transaction", 1000, 16, 5},
			{"200 events, window 1", 200, 1, 1},
			{"window larger than the backlog", 10, 64, 3},
		} {
			t.Run(tc.name, func(t *testing.T) {
				t.Parallel()
				src := newFilledSource(pumpEvents(tc.n, tc.perTxn), true)
				stream := newFakeStream(t, true, false)

				err, m := runPump(t, mode.apply(pumpConfig(tc.window)), src, stream)
				require.NoError(t, err)

				assertStream(t, stream, pumpIDs(1, tc.n))
				assertAcked(t, src, pumpIDs(1, tc.n), tc.perTxn)
				assertStoredAcked(t, stream, src)
				assert.Equal(t, tc.n, stream.Publishes(), "each event published once")
				// The first message waits for its PubAck (it starts the chain);
				// then the window fills.
				if mode.atomic {
					assert.LessOrEqual(t, stream.MaxOutstanding(), mode.maxInFlight(tc.window, tc.perTxn), "publishes in flight")
				} else {
					assert.Equal(t, min(tc.window, max(tc.n-1, 1)), stream.MaxOutstanding(), "publishes in flight")
				}
				assert.Zero(t, stream.RejectedWrongSequence())
				assert.Zero(t, retries(t, m))
				assert.Zero(t, skipped(t, m))
				first := stream.Messages()[0]
				assert.Equal(t, "outbox.order.created", first.Subject)
				assert.Equal(t, `{"n":1}`, string(first.Data))
			})
		}
	})
}

// 2. A transient failure in the middle of a full window: the publishes
// behind it are refused for their expected sequence, the pump retries them
// in order, and nothing is stored twice.
func TestPumpRetriesTransientFailures(t *testing.T) {
	t.Parallel()
	forEachMode(t, func(t *testing.T, mode publishMode) {
		const n, window = 200, 16
		for _, tc := range []struct {
			name          string
			perTxn        int
			dedupFirst    bool
			script        script
			wantRejected  bool // later publishes were refused for the sequence
			minRetries    float64
			atomicRetries float64 // minRetries in the atomic mode, when not the same
		}{
			{name: "publish 37 times out", perTxn: 1, script: atPublish(37, fault{kind: faultTransient}), wantRejected: true, minRetries: 1},
			{name: "publish 37 times out, clustered stream", perTxn: 1, dedupFirst: true, script: atPublish(37, fault{kind: faultTransient}), wantRejected: true, minRetries: 1},
			{name: "publish 37 times out, 4 events per transaction", perTxn: 4, script: atPublish(37, fault{kind: faultTransient}), wantRejected: true, minRetries: 1},
			{name: "publish 37 fails synchronously", perTxn: 1, script: atPublish(37, fault{kind: faultSync}), minRetries: 1},
			{name: "publishes 37 and 60 time out", perTxn: 1, script: firstOf(atPublish(37, fault{kind: faultTransient}), atPublish(60, fault{kind: faultTransient})), wantRejected: true, minRetries: 2},
			{name: "retried publish fails again", perTxn: 1, script: firstOf(atPublish(37, fault{kind: faultTransient}), once(onEvent(pumpID(37), nil, fault{kind: faultTransient}))), wantRejected: true, minRetries: 2},
			// In the atomic mode the failed commit's place is read back
			// first (orderSequence), which takes one of the failing reads.
			{name: "tail reads fail during recovery", perTxn: 1, script: atPublish(37, fault{kind: faultTransient, failReads: 3}), wantRejected: true, minRetries: 4, atomicRetries: 3},
		} {
			t.Run(tc.name, func(t *testing.T) {
				t.Parallel()
				src := newFilledSource(pumpEvents(n, tc.perTxn), true)
				stream := newFakeStream(t, true, tc.dedupFirst)
				stream.SetScript(tc.script)

				err, m := runPump(t, mode.apply(pumpConfig(window)), src, stream)
				require.NoError(t, err)

				assertStream(t, stream, pumpIDs(1, n))
				assertAcked(t, src, pumpIDs(1, n), tc.perTxn)
				assertStoredAcked(t, stream, src)
				if tc.wantRejected {
					assert.Positive(t, stream.RejectedWrongSequence(), "publishes behind the failure were refused")
				}
				minRetries := tc.minRetries
				if mode.atomic && tc.atomicRetries > 0 {
					minRetries = tc.atomicRetries
				}
				assert.GreaterOrEqual(t, retries(t, m), minRetries, "pump_retries_total")
				assert.Zero(t, skipped(t, m))
				assert.LessOrEqual(t, stream.MaxOutstanding(), mode.maxInFlight(window, tc.perTxn))
			})
		}
	})
}

// 3. A message stored whose PubAck was lost is not stored again. A later
// message stored where it expected proves it stored (one replica: by the
// message id chain; replicated: the pump reads its place back); when no
// later message does, the pump reads the stream back and skips it, even
// after the duplicate window.
func TestPumpLostAckDoesNotDuplicate(t *testing.T) {
	t.Parallel()
	forEachMode(t, func(t *testing.T, mode publishMode) {
		lost := fault{kind: faultAckLost}
		for _, tc := range []struct {
			name              string
			n, window, perTxn int
			dedup, replicated bool
			script            script
			wantSkipped       float64
		}{
			{name: "ack of 37 lost", n: 200, window: 16, perTxn: 1, dedup: true, script: atPublish(37, lost)},
			{name: "ack of 37 lost, duplicate window expired", n: 200, window: 16, perTxn: 1, script: atPublish(37, lost)},
			{name: "ack of 37 lost, replicated stream", n: 200, window: 16, perTxn: 1, dedup: true, replicated: true, script: atPublish(37, lost)},
			{name: "ack of 37 lost, 3 per transaction", n: 200, window: 16, perTxn: 3, script: atPublish(37, lost)},
			{name: "acks of 37 and 38 lost", n: 200, window: 16, perTxn: 1, script: firstOf(atPublish(37, lost), atPublish(38, lost))},
			{name: "ack of 37 lost, 40 times out", n: 200, window: 16, perTxn: 1, script: firstOf(atPublish(37, lost), atPublish(40, fault{kind: faultTransient}))},
			{name: "ack of the last event lost", n: 100, window: 16, perTxn: 1, script: atPublish(100, lost), wantSkipped: 1},
			{name: "ack of the last event lost, replicated stream", n: 100, window: 16, perTxn: 1, replicated: true, script: atPublish(100, lost)},
			{name: "ack of 37 lost, window 1", n: 100, window: 1, perTxn: 1, script: atPublish(37, lost), wantSkipped: 1},
		} {
			t.Run(tc.name, func(t *testing.T) {
				t.Parallel()
				src := newFilledSource(pumpEvents(tc.n, tc.perTxn), true)
				stream := newFakeStream(t, tc.dedup, tc.replicated)
				stream.SetScript(tc.script)

				err, m := runPump(t, mode.apply(pumpConfig(tc.window)), src, stream)
				require.NoError(t, err)

				assertStream(t, stream, pumpIDs(1, tc.n))
				assertAcked(t, src, pumpIDs(1, tc.n), tc.perTxn)
				assertStoredAcked(t, stream, src)
				wantSkipped := tc.wantSkipped
				if mode.atomic {
					// The lost commit's place is read back (orderSequence):
					// nothing is published again to be skipped.
					wantSkipped = 0
				}
				assert.Equal(t, wantSkipped, skipped(t, m), "pump_skipped_total")
				assert.Zero(t, stream.Duplicates(), "the pump never relied on deduplication")
			})
		}
	})
}

// 4. A restarted relay gets the source's events again: those the stream
// holds are skipped by position, even when the duplicate window is over.
func TestPumpReplayAfterRestart(t *testing.T) {
	t.Parallel()
	forEachMode(t, func(t *testing.T, mode publishMode) {
		for _, tc := range []struct {
			name   string
			perTxn int
			dedup  bool
		}{
			{"duplicate window expired", 1, false},
			{"duplicate window expired, restart inside a transaction", 3, false},
			{"duplicate window open", 1, true},
		} {
			t.Run(tc.name, func(t *testing.T) {
				t.Parallel()
				stream := newFakeStream(t, tc.dedup, false)

				first := newFilledSource(pumpEvents(50, tc.perTxn), true)
				err, _ := runPump(t, mode.apply(pumpConfig(16)), first, stream)
				require.NoError(t, err)
				assertStream(t, stream, pumpIDs(1, 50))
				assertAcked(t, first, pumpIDs(1, 50), tc.perTxn)

				second := newFilledSource(pumpEvents(100, tc.perTxn), true)
				before := stream.Publishes()
				err, m := runPump(t, mode.apply(pumpConfig(16)), second, stream)
				require.NoError(t, err)

				assertStream(t, stream, pumpIDs(1, 100))
				assertAcked(t, second, pumpIDs(1, 100), tc.perTxn)
				assertStoredAcked(t, stream, second)
				assert.Equal(t, 50.0, skipped(t, m), "pump_skipped_total")
				assert.Equal(t, 50, stream.Publishes()-before, "only new events published")
				assert.Zero(t, stream.Duplicates())
			})
		}
	})
}

// foreignMessages maps events with another relay's mapper.
func foreignMessages(t *testing.T, evs ...cdc.Event) []sink.Message {
	t.Helper()
	mp := testMapper(t, foreignOrigin)
	var msgs []sink.Message
	for i := range evs {
		msg, err := mp.Message(&evs[i])
		require.NoError(t, err)
		msgs = append(msgs, msg)
	}
	return msgs
}

// 5. A tail written by another origin says nothing about this relay's
// events: none is skipped, and deduplication decides.
func TestPumpTailFromAnotherOrigin(t *testing.T) {
	t.Parallel()
	forEachMode(t, func(t *testing.T, mode publishMode) {
		t.Run("positions of another origin are ignored", func(t *testing.T) {
			t.Parallel()
			stream := newFakeStream(t, false, false)
			// Positions far beyond this relay's: trusted, they would make the
			// pump skip every event.
			var foreign []string
			for i := 1; i <= 3; i++ {
				ev := pumpEvent(i, 1)
				ev.ID = fmt.Sprintf("foreign-%d", i)
				ev.Position = cdc.Position{CommitLSN: pglogrepl.LSN(1 << 40), Index: uint32(i)}
				stream.Append(foreignMessages(t, ev)[0])
				foreign = append(foreign, ev.ID)
			}
			src := newFilledSource(pumpEvents(30, 1), true)

			err, m := runPump(t, mode.apply(pumpConfig(16)), src, stream)
			require.NoError(t, err)

			assertStream(t, stream, concat(foreign, pumpIDs(1, 30)))
			assertAcked(t, src, pumpIDs(1, 30), 1)
			assertStoredAcked(t, stream, src)
			assert.Zero(t, skipped(t, m))
		})

		for _, tc := range []struct {
			name        string
			replicated  bool
			forgetMarks bool
		}{
			{name: "one replica"},
			{name: "replicated", replicated: true},
			{name: "one replica, high-water mark lost", forgetMarks: true},
			{name: "replicated, high-water mark lost", replicated: true, forgetMarks: true},
		} {
			t.Run("restart behind another origin's message: "+tc.name, func(t *testing.T) {
				t.Parallel()
				stream := newFakeStream(t, false, tc.replicated)
				first := newFilledSource(pumpEvents(20, 1), true)
				err, _ := runPump(t, mode.apply(pumpConfig(8)), first, stream)
				require.NoError(t, err)
				ev := pumpEvent(999, 1)
				ev.ID = "foreign-1"
				stream.Append(foreignMessages(t, ev)[0])
				if tc.forgetMarks {
					stream.marks.Clear()
				}

				second := newFilledSource(pumpEvents(30, 1), true)
				err, m := runPump(t, mode.apply(pumpConfig(8)), second, stream)
				require.NoError(t, err)

				assertStream(t, stream, concat(pumpIDs(1, 20), []string{"foreign-1"}, pumpIDs(21, 30)))
				assertAcked(t, second, pumpIDs(1, 30), 1)
				assertStoredAcked(t, stream, second)
				assert.Equal(t, 20.0, skipped(t, m), "what the first run stored is skipped")
			})
		}
	})
}

// 6. A poison event under the stop policy: Run fails naming it, after every
// earlier event was stored and acked (in the atomic mode every event of the
// transactions before its own: none of its own transaction is stored);
// nothing after it is published.
func TestPumpPoisonStop(t *testing.T) {
	t.Parallel()
	forEachMode(t, func(t *testing.T, mode publishMode) {
		for _, tc := range []struct {
			name   string
			n, at  int
			perTxn int
			reason string
			script script
		}{
			{name: "invalid subject", n: 100, at: 40, perTxn: 1, reason: "invalid_subject"},
			{name: "invalid subject, inside a transaction", n: 100, at: 41, perTxn: 3, reason: "invalid_subject"},
			{name: "bad row", n: 100, at: 40, perTxn: 1, reason: "bad_row"},
			{name: "first event", n: 100, at: 1, perTxn: 1, reason: "invalid_subject"},
			{
				name: "after a failed publish in the window", n: 100, at: 40, perTxn: 1, reason: "invalid_subject",
				script: atPublish(30, fault{kind: faultTransient}),
			},
			{
				name: "after a lost ack in the window", n: 100, at: 40, perTxn: 1, reason: "invalid_subject",
				script: atPublish(30, fault{kind: faultAckLost}),
			},
		} {
			t.Run(tc.name, func(t *testing.T) {
				t.Parallel()
				src := newFilledSource(poisoned(pumpEvents(tc.n, tc.perTxn), tc.at, tc.reason), true)
				stream := newFakeStream(t, true, false)
				stream.SetScript(tc.script)

				err, m := runPump(t, mode.apply(pumpConfig(16)), src, stream)
				require.ErrorIs(t, err, relay.ErrPoison)
				assert.Contains(t, err.Error(), pumpID(tc.at))
				var pe *relay.PoisonError
				require.ErrorAs(t, err, &pe)
				assert.Equal(t, tc.reason, pe.Reason)

				stored := mode.storedBefore(tc.at, tc.perTxn)
				assertStream(t, stream, pumpIDs(1, stored))
				assertAcked(t, src, pumpIDs(1, stored), tc.perTxn)
				assertStoredAcked(t, stream, src)
				assertPoisonCounts(t, m, map[string]float64{tc.reason: 1})
				assert.Zero(t, deadLettered(t, m))
			})
		}
	})
}

// assertDeadLetter checks msg is the dead letter of event i.
func assertDeadLetter(t *testing.T, msg storedMsg, subject string, i, perTxn int, reason string) {
	t.Helper()
	ev := pumpEvent(i, perTxn)
	assert.Equal(t, subject, msg.Subject)
	assert.Equal(t, ev.ID, msg.ID)
	assert.Equal(t, string(ev.Payload), string(msg.Data))
	assert.True(t, strings.HasPrefix(msg.Header.Get(relay.HeaderPoisonReason), reason+": "),
		"%s = %q", relay.HeaderPoisonReason, msg.Header.Get(relay.HeaderPoisonReason))
	pos, ok := relay.PositionFromHeader(msg.Header, testOrigin)
	assert.True(t, ok, "dead letter carries the relay's position headers")
	assert.Equal(t, ev.Position, pos)
}

// 7. A poison event under the dead-letter policy goes to the dead-letter
// subject, with its reason, and the rest continue in order.
func TestPumpPoisonDeadLetter(t *testing.T) {
	t.Parallel()
	forEachMode(t, func(t *testing.T, mode publishMode) {
		const n = 100
		inStream, elsewhere := "outbox.dlq.x", "dlq.outbox"
		dlq := func(subject string) func(string) bool { return func(s string) bool { return s == subject } }
		for _, tc := range []struct {
			name    string
			subject string
			at      []int
			perTxn  int
			reason  string
			dedup   bool
			script  script
		}{
			{name: "dead-letter subject in the stream", subject: inStream, at: []int{40}, perTxn: 1, reason: "invalid_subject"},
			{name: "dead-letter subject in another stream", subject: elsewhere, at: []int{40}, perTxn: 1, reason: "invalid_subject"},
			{name: "bad row, in the stream, 3 per transaction", subject: inStream, at: []int{41}, perTxn: 3, reason: "bad_row"},
			{name: "two poison events in one window", subject: inStream, at: []int{40, 45}, perTxn: 1, reason: "invalid_subject"},
			{
				name: "in the stream, dead letter times out once", subject: inStream, at: []int{40}, perTxn: 1, reason: "invalid_subject",
				script: once(onEvent(pumpID(40), dlq(inStream), fault{kind: faultTransient})),
			},
			{
				name: "in the stream, ack of the dead letter lost, duplicate window expired", subject: inStream, at: []int{40}, perTxn: 1, reason: "invalid_subject",
				script: once(onEvent(pumpID(40), dlq(inStream), fault{kind: faultAckLost})),
			},
			{
				name: "in another stream, dead letter times out once", subject: elsewhere, at: []int{40}, perTxn: 1, reason: "invalid_subject",
				script: once(onEvent(pumpID(40), dlq(elsewhere), fault{kind: faultTransient})),
			},
			{
				name: "in another stream, ack of the dead letter lost", subject: elsewhere, at: []int{40}, perTxn: 1, reason: "invalid_subject", dedup: true,
				script: once(onEvent(pumpID(40), dlq(elsewhere), fault{kind: faultAckLost})),
			},
			{
				name: "in the stream, after a failed publish in the window", subject: inStream, at: []int{40}, perTxn: 1, reason: "invalid_subject",
				script: atPublish(30, fault{kind: faultTransient}),
			},
		} {
			t.Run(tc.name, func(t *testing.T) {
				t.Parallel()
				evs := pumpEvents(n, tc.perTxn)
				var poisonIDs []string
				for _, i := range tc.at {
					evs = poisoned(evs, i, tc.reason)
					poisonIDs = append(poisonIDs, pumpID(i))
				}
				src := newFilledSource(evs, true)
				stream := newFakeStream(t, tc.dedup, false)
				stream.SetScript(tc.script)

				err, m := runPump(t, mode.apply(deadLetterConfig(16, tc.subject)), src, stream)
				if mode.atomic && tc.subject == elsewhere {
					assertDeadLetterElsewhereRefused(t, err, stream, src, tc.at[0], tc.perTxn)
					return
				}
				require.NoError(t, err)

				assertAcked(t, src, pumpIDs(1, n), tc.perTxn)
				assertStoredAcked(t, stream, src)
				assert.Equal(t, float64(len(tc.at)), deadLettered(t, m), "dead_lettered_total")
				assertPoisonCounts(t, m, map[string]float64{tc.reason: float64(len(tc.at))})

				var letters []storedMsg
				if tc.subject == inStream {
					// Each dead letter takes its event's place in the stream.
					assertStream(t, stream, pumpIDs(1, n))
					for _, msg := range stream.Messages() {
						if slices.Contains(poisonIDs, msg.ID) {
							letters = append(letters, msg)
						}
					}
					assert.Empty(t, stream.OtherMessages())
				} else {
					assertStream(t, stream, without(pumpIDs(1, n), poisonIDs...))
					letters = stream.OtherMessages()
					for _, l := range letters {
						assert.False(t, l.CheckLastSeq, "a dead letter to another stream has no expected sequence")
					}
				}
				require.Equal(t, poisonIDs, messageIDs(letters), "dead letters, each once")
				for k, i := range tc.at {
					assertDeadLetter(t, letters[k], tc.subject, i, tc.perTxn, tc.reason)
				}
			})
		}
	})
}

// 8. A publish that fails permanently (too large) is poison.
func TestPumpPermanentPublishError(t *testing.T) {
	t.Parallel()
	forEachMode(t, func(t *testing.T, mode publishMode) {
		const n, at = 100, 40
		for _, tc := range []struct {
			name       string
			kind       faultKind
			deadLetter string // empty: stop policy
			dlqRefused bool   // the dead letter is refused as too large too
		}{
			{name: "refused by the client, stop", kind: faultPermanentSync},
			{name: "refused by the server, stop", kind: faultPermanentAsync},
			{name: "refused by the client, dead letter in the stream", kind: faultPermanentSync, deadLetter: "outbox.dlq.x"},
			{name: "refused by the server, dead letter in the stream", kind: faultPermanentAsync, deadLetter: "outbox.dlq.x"},
			{name: "refused by the server, dead letter in another stream", kind: faultPermanentAsync, deadLetter: "dlq.outbox"},
			{name: "refused by the server, dead letter refused too", kind: faultPermanentAsync, deadLetter: "outbox.dlq.x", dlqRefused: true},
		} {
			t.Run(tc.name, func(t *testing.T) {
				t.Parallel()
				src := newFilledSource(pumpEvents(n, 1), true)
				stream := newFakeStream(t, true, false)
				match := eventSubject
				if tc.dlqRefused {
					match = nil
				}
				stream.SetScript(onEvent(pumpID(at), match, fault{kind: tc.kind}))
				cfg := mode.apply(pumpConfig(16))
				if tc.deadLetter != "" {
					cfg = mode.apply(deadLetterConfig(16, tc.deadLetter))
				}

				err, m := runPump(t, cfg, src, stream)
				assertPoisonCounts(t, m, map[string]float64{"too_large": 1})
				if mode.atomic && tc.deadLetter == "dlq.outbox" {
					assertDeadLetterElsewhereRefused(t, err, stream, src, at, 1)
					return
				}

				if tc.deadLetter == "" {
					require.ErrorIs(t, err, relay.ErrPoison)
					var pe *relay.PoisonError
					require.ErrorAs(t, err, &pe)
					assert.Equal(t, "too_large", pe.Reason)
					assert.Contains(t, err.Error(), pumpID(at))
					assertStream(t, stream, pumpIDs(1, at-1))
					assertAcked(t, src, pumpIDs(1, at-1), 1)
					assertStoredAcked(t, stream, src)
					assert.Zero(t, deadLettered(t, m))
					return
				}
				if tc.dlqRefused {
					require.ErrorIs(t, err, relay.ErrPoison)
					assert.ErrorIs(t, err, sink.ErrPermanent)
					assert.Contains(t, err.Error(), "dead-letter event "+pumpID(at))
					assertStream(t, stream, pumpIDs(1, at-1))
					assertAcked(t, src, pumpIDs(1, at-1), 1)
					assertStoredAcked(t, stream, src)
					assert.Zero(t, deadLettered(t, m))
					return
				}
				require.NoError(t, err)
				assertAcked(t, src, pumpIDs(1, n), 1)
				assertStoredAcked(t, stream, src)
				assert.Equal(t, 1.0, deadLettered(t, m))
				var letter storedMsg
				if tc.deadLetter == "outbox.dlq.x" {
					assertStream(t, stream, pumpIDs(1, n))
					letter = stream.Messages()[at-1]
				} else {
					assertStream(t, stream, without(pumpIDs(1, n), pumpID(at)))
					require.Len(t, stream.OtherMessages(), 1)
					letter = stream.OtherMessages()[0]
				}
				assertDeadLetter(t, letter, tc.deadLetter, at, 1, "too_large")
				assert.Equal(t, "outbox.order.created", letter.Header.Get(relay.HeaderOriginalSubject))
			})
		}
	})
}

// 9. Shutdown with publishes in flight: Run waits for their acks (within
// ShutdownTimeout), acknowledges them and returns nil.
func TestPumpShutdownWaitsForInflight(t *testing.T) {
	t.Parallel()
	const n = 10

	// The first event starts the chain: the pump waits for its PubAck
	// before it publishes the rest, which is what shutdown finds in flight.
	// Every event is in the source before Run starts, so the pump publishes
	// the rest in one burst: fed one by one, the pump could publish the
	// second event before the third arrived and wait for the second's
	// PubAck (the last of its burst) with the rest still in the source.
	// pauseAfterFirst pauses the stream once the first PubAck is taken, so
	// the rest queues unprocessed.
	startFirst := func(t *testing.T, stream *fakeStream, cfg relay.Config) (*fakeSource, context.CancelFunc, <-chan error) {
		t.Helper()
		src := newFilledSource(pumpEvents(n, 1), false)
		p, _ := newTestPump(t, cfg, src, stream)
		ctx, cancel := context.WithCancel(t.Context())
		return src, cancel, startRun(ctx, p)
	}
	pauseAfterFirst := func(stream *fakeStream) {
		stream.SetScript(atPublish(1, fault{onResult: stream.Pause}))
	}
	// waitOldest waits until Run waits for the PubAck of the oldest publish
	// in flight (the second), so that cancelling ends that wait and stop
	// waits for it again. Cancelled earlier, Run can see ctx done before it
	// waits at all, and stop is then the only one to wait.
	waitOldest := func(t *testing.T, stream *fakeStream) {
		t.Helper()
		require.Eventually(t, func() bool { return stream.Pending(2).Waits() >= 1 }, 5*time.Second, time.Millisecond)
	}

	t.Run("publishes not yet processed", func(t *testing.T) {
		t.Parallel()
		stream := newFakeStream(t, true, false)
		cfg := pumpConfig(16)
		pauseAfterFirst(stream)
		src, cancel, done := startFirst(t, stream, cfg)

		require.Eventually(t, func() bool { return stream.Queued() == n-1 }, 5*time.Second, time.Millisecond)
		waitOldest(t, stream)
		cancel()
		cancelled := time.Now()
		// Run's wait on the oldest publish ends with ctx; stop waits again.
		require.Eventually(t, func() bool { return stream.Pending(2).Waits() >= 2 }, 5*time.Second, time.Millisecond)
		stream.Resume()

		require.NoError(t, waitRun(t, done, runDeadline))
		assert.Less(t, time.Since(cancelled), cfg.ShutdownTimeout)
		assertStream(t, stream, pumpIDs(1, n))
		assertAcked(t, src, pumpIDs(1, n), 1)
		assertStoredAcked(t, stream, src)
	})

	t.Run("stored, acks delayed", func(t *testing.T) {
		t.Parallel()
		stream := newFakeStream(t, true, false)
		hold := make(chan struct{})
		stream.SetScript(func(i int, _ sink.Message) fault {
			if i == 1 {
				return fault{}
			}
			return fault{hold: hold}
		})
		cfg := pumpConfig(16)
		src, cancel, done := startFirst(t, stream, cfg)

		require.Eventually(t, func() bool { return stream.Publishes() == n }, 5*time.Second, time.Millisecond)
		waitOldest(t, stream)
		cancel()
		cancelled := time.Now()
		require.Eventually(t, func() bool { return stream.Pending(2).Waits() >= 2 }, 5*time.Second, time.Millisecond)
		close(hold)

		require.NoError(t, waitRun(t, done, runDeadline))
		assert.Less(t, time.Since(cancelled), cfg.ShutdownTimeout)
		stream.WaitHolds()
		assertStream(t, stream, pumpIDs(1, n))
		assertAcked(t, src, pumpIDs(1, n), 1)
		assertStoredAcked(t, stream, src)
	})

	t.Run("acks later than the shutdown timeout", func(t *testing.T) {
		t.Parallel()
		stream := newFakeStream(t, true, false)
		cfg := pumpConfig(16)
		cfg.ShutdownTimeout = 100 * time.Millisecond
		pauseAfterFirst(stream)
		src, cancel, done := startFirst(t, stream, cfg)

		require.Eventually(t, func() bool { return stream.Queued() == n-1 }, 5*time.Second, time.Millisecond)
		cancel()
		require.NoError(t, waitRun(t, done, runDeadline))
		// Nothing more was stored when Run gave up, and nothing more acked.
		assertStream(t, stream, pumpIDs(1, 1))
		assertAcked(t, src, pumpIDs(1, 1), 1)
		stream.Resume()
	})

	t.Run("idle", func(t *testing.T) {
		t.Parallel()
		src := newFakeSource(1)
		stream := newFakeStream(t, true, false)
		p, _ := newTestPump(t, pumpConfig(16), src, stream)
		ctx, cancel := context.WithCancel(t.Context())
		done := startRun(ctx, p)
		require.Eventually(t, func() bool { return stream.Reads() == 1 }, 5*time.Second, time.Millisecond)
		cancel()
		require.NoError(t, waitRun(t, done, runDeadline))
		assertStream(t, stream, nil)
		assertAcked(t, src, nil, 1)
	})
}

// 10. When the source closes, Run finishes what is in flight (retries
// included) and returns nil.
func TestPumpSourceClosed(t *testing.T) {
	t.Parallel()
	forEachMode(t, func(t *testing.T, mode publishMode) {
		for _, tc := range []struct {
			name   string
			n      int
			script script
		}{
			{name: "no events", n: 0},
			{name: "fewer events than the window", n: 10},
			{name: "last publish times out", n: 10, script: atPublish(10, fault{kind: faultTransient})},
			{name: "last publish fails synchronously", n: 10, script: atPublish(10, fault{kind: faultSync})},
			{name: "ack of the last publish lost", n: 10, script: atPublish(10, fault{kind: faultAckLost})},
			{name: "ack of an earlier publish lost", n: 10, script: atPublish(4, fault{kind: faultAckLost})},
		} {
			t.Run(tc.name, func(t *testing.T) {
				t.Parallel()
				src := newFilledSource(pumpEvents(tc.n, 1), true)
				stream := newFakeStream(t, false, false)
				stream.SetScript(tc.script)

				err, _ := runPump(t, mode.apply(pumpConfig(16)), src, stream)
				require.NoError(t, err)

				assertStream(t, stream, pumpIDs(1, tc.n))
				assertAcked(t, src, pumpIDs(1, tc.n), 1)
				assertStoredAcked(t, stream, src)
			})
		}
	})
}

// 11. A duplicate ack for a message another origin stored with the same ID:
// the event is not on the stream, and nothing the relay can do gets it there
// under that id. The pump stops, naming both, rather than counting the event
// as stored.
func TestPumpDuplicateOfForeignMessage(t *testing.T) {
	t.Parallel()
	forEachMode(t, func(t *testing.T, mode publishMode) {
		for _, tc := range []struct {
			name       string
			n, window  int
			dup        int
			replicated bool
		}{
			{name: "mid-window", n: 100, window: 16, dup: 30},
			{name: "mid-window, replicated stream", n: 100, window: 16, dup: 30, replicated: true},
			{name: "window 1", n: 50, window: 1, dup: 30},
			{name: "last event", n: 100, window: 16, dup: 100},
			{name: "last event, replicated stream", n: 100, window: 16, dup: 100, replicated: true},
			{name: "first event", n: 100, window: 16, dup: 1},
		} {
			t.Run(tc.name, func(t *testing.T) {
				t.Parallel()
				stream := newFakeStream(t, true, tc.replicated)
				// Another relay stored a message with the same ID, at a
				// position beyond all of this relay's.
				ev := pumpEvent(tc.dup, 1)
				ev.Position = cdc.Position{CommitLSN: pglogrepl.LSN(1 << 40)}
				stream.Append(foreignMessages(t, ev)[0])
				src := newFilledSource(pumpEvents(tc.n, 1), true)

				err, _ := runPump(t, mode.apply(pumpConfig(tc.window)), src, stream)
				require.Error(t, err)
				assert.Contains(t, err.Error(), pumpID(tc.dup))
				assert.Contains(t, err.Error(), foreignOrigin)
				assert.Contains(t, err.Error(), "share the id")

				msgs := stream.Messages()
				assertOwnOrder(t, stream, testOrigin)
				assert.Equal(t, pumpIDs(1, tc.dup-1), messageIDs(msgs[1:]), "every event before it is stored, none after")
				assertAcked(t, src, pumpIDs(1, tc.dup-1), 1)
			})
		}
	})
}

// randomSeeds is how many seeds the random tests try: 8, or
// OUTBOX_RELAY_SEEDS.
func randomSeeds(t *testing.T) uint64 {
	if v := os.Getenv("OUTBOX_RELAY_SEEDS"); v != "" {
		n, err := strconv.ParseUint(v, 10, 64)
		require.NoError(t, err, "OUTBOX_RELAY_SEEDS")
		return n
	}
	return 8
}

// randomPublishFaults draws the faults of publishes 1 to n: transient
// failures (some with failing stream reads after them), lost acks and
// synchronous errors, about one publish in eleven.
func randomPublishFaults(rng *rand.Rand, n int) map[int]fault {
	faults := map[int]fault{}
	for i := 1; i <= n; i++ {
		switch r := rng.Float64(); {
		case r < 0.03:
			faults[i] = fault{kind: faultTransient}
		case r < 0.06:
			faults[i] = fault{kind: faultAckLost}
		case r < 0.08:
			faults[i] = fault{kind: faultSync}
		case r < 0.09:
			faults[i] = fault{kind: faultTransient, failReads: 1 + rng.IntN(2)}
		}
	}
	return faults
}

// Random transient faults, lost acks, synchronous failures and failing tail
// reads: the stream always ends with every event once, in order, and every
// event acked once.
func TestPumpRandomFaults(t *testing.T) {
	t.Parallel()
	forEachMode(t, func(t *testing.T, mode publishMode) {
		for seed := uint64(1); seed <= randomSeeds(t); seed++ {
			for _, dedup := range []bool{false, true} {
				dedupFirst := seed%2 == 0
				t.Run(fmt.Sprintf("seed %d dedup %t dedup first %t", seed, dedup, dedupFirst), func(t *testing.T) {
					t.Parallel()
					rng := rand.New(rand.NewPCG(seed, 42))
					n := 300 + rng.IntN(300)
					window := []int{1, 4, 16, 64}[rng.IntN(4)]
					perTxn := 1 + rng.IntN(4)
					faults := randomPublishFaults(rng, 4*n)
					// Acknowledging every message, or only some, each
					// vouching for those before it.
					ackEvery := []int{1, 4, 32}[seed%3]
					t.Logf("n %d, window %d, ack every %d, %d per transaction, %d faults", n, window, ackEvery, perTxn, len(faults))
					src := newFilledSource(pumpEvents(n, perTxn), true)
					stream := newFakeStream(t, dedup, dedupFirst)
					stream.SetScript(func(i int, _ sink.Message) fault { return faults[i] })
					cfg := mode.apply(pumpConfig(window))
					cfg.AckEvery = ackEvery

					err, _ := runPump(t, cfg, src, stream)
					require.NoError(t, err)

					assertStream(t, stream, pumpIDs(1, n))
					assertAcked(t, src, pumpIDs(1, n), perTxn)
					assertStoredAcked(t, stream, src)
					assert.LessOrEqual(t, stream.MaxOutstanding(), mode.maxInFlight(window, perTxn))
					if mode.atomic {
						assertTransactionsWhole(t, stream, perTxn, 0)
					}
				})
			}
		}
	})
}

// Random faults as above, with poison events (unmappable, or refused as too
// large) under the dead-letter policy, the dead-letter subject in the stream
// or in another one: every event ends up once, in order, as itself or as its
// dead letter, and is acked once.
func TestPumpRandomFaultsDeadLetter(t *testing.T) {
	t.Parallel()
	forEachMode(t, func(t *testing.T, mode publishMode) {
		for seed := uint64(1); seed <= randomSeeds(t); seed++ {
			for _, subject := range []string{"outbox.dlq.x", "dlq.outbox"} {
				inStream := subject == "outbox.dlq.x"
				if mode.atomic && !inStream {
					// Refused: TestPumpPoisonDeadLetter.
					continue
				}
				// A dead letter to another stream is kept once only by
				// deduplication; one in the stream by its position.
				dedup := !inStream || seed%3 == 0
				dedupFirst := seed%2 == 0
				t.Run(fmt.Sprintf("seed %d %s", seed, subject), func(t *testing.T) {
					t.Parallel()
					rng := rand.New(rand.NewPCG(seed, 7))
					n := 200 + rng.IntN(200)
					window := []int{1, 4, 16, 64}[rng.IntN(4)]
					perTxn := 1 + rng.IntN(4)
					evs := pumpEvents(n, perTxn)
					var poison []string
					tooLarge := map[string]faultKind{}
					for i := 1; i <= n; i++ {
						switch r := rng.Float64(); {
						case r < 0.02:
							evs = poisoned(evs, i, "invalid_subject")
							poison = append(poison, pumpID(i))
						case r < 0.03:
							evs = poisoned(evs, i, "bad_row")
							poison = append(poison, pumpID(i))
						case r < 0.04:
							tooLarge[pumpID(i)] = faultPermanentSync
							poison = append(poison, pumpID(i))
						case r < 0.05:
							// Left out unless known bugs are tested: an
							// event refused by the server followed within
							// the window by another poison event livelocks
							// the pump (TestPumpServerRefusalThenPoison).
							tooLarge[pumpID(i)] = faultPermanentAsync
							poison = append(poison, pumpID(i))
						}
					}
					faults := randomPublishFaults(rng, 4*n)
					ackEvery := []int{1, 4, 32}[seed%3]
					t.Logf("n %d, window %d, ack every %d, %d per transaction, %d poison, %d faults, dedup %t, dedup first %t",
						n, window, ackEvery, perTxn, len(poison), len(faults), dedup, dedupFirst)
					src := newFilledSource(evs, true)
					stream := newFakeStream(t, dedup, dedupFirst)
					stream.SetScript(func(i int, m sink.Message) fault {
						if k, ok := tooLarge[m.ID]; ok && eventSubject(m.Subject) {
							return fault{kind: k}
						}
						return faults[i]
					})

					cfg := mode.apply(deadLetterConfig(window, subject))
					cfg.AckEvery = ackEvery
					err, m := runPump(t, cfg, src, stream)
					require.NoError(t, err)

					assertAcked(t, src, pumpIDs(1, n), perTxn)
					assertStoredAcked(t, stream, src)
					assert.LessOrEqual(t, stream.MaxOutstanding(), mode.maxInFlight(window, perTxn))
					var poisonTotal float64
					for _, r := range metrics.PoisonReasons {
						poisonTotal += poisonEvents(t, m, r)
					}
					assert.Equal(t, float64(len(poison)), poisonTotal, "poison_events_total")
					if inStream {
						assertStream(t, stream, pumpIDs(1, n))
						for _, msg := range stream.Messages() {
							assert.Equal(t, slices.Contains(poison, msg.ID), msg.Subject == subject, "message %s on %s", msg.ID, msg.Subject)
						}
						return
					}
					assertStream(t, stream, without(pumpIDs(1, n), poison...))
					assert.Equal(t, poison, messageIDs(stream.OtherMessages()), "dead letters")
				})
			}
		}
	})
}

func TestConfigValidate(t *testing.T) {
	t.Parallel()
	ok := pumpConfig(16)
	require.NoError(t, ok.Validate())
	require.NoError(t, deadLetterConfig(16, "outbox.dlq.x").Validate())
	for _, tc := range []struct {
		name   string
		mutate func(*relay.Config)
		want   []string
	}{
		{"window", func(c *relay.Config) { c.Window = 0 }, []string{"publish-window"}},
		{"shutdown timeout", func(c *relay.Config) { c.ShutdownTimeout = 0 }, []string{"shutdown-timeout"}},
		{"retry min above max", func(c *relay.Config) { c.RetryMin = time.Second }, []string{"retry-min"}},
		{"retry min zero", func(c *relay.Config) { c.RetryMin = 0 }, []string{"retry-min"}},
		{"on-poison", func(c *relay.Config) { c.OnPoison = "ignore" }, []string{"on-poison"}},
		{"dead-letter subject", func(c *relay.Config) { c.OnPoison = relay.OnPoisonDeadLetter; c.DeadLetterSubject = "dlq.>" }, []string{"dead-letter-subject"}},
		{"everything at once", func(c *relay.Config) { *c = relay.Config{} }, []string{"publish-window", "shutdown-timeout", "retry-min", "on-poison"}},
		{"atomic batch size", func(c *relay.Config) { c.Atomic, c.OnLargeTransaction = true, relay.LargeTransactionSplit }, []string{"atomic-batch-max"}},
		{"large transaction policy", func(c *relay.Config) { c.Atomic, c.BatchMaxMessages, c.OnLargeTransaction = true, 10, "ignore" }, []string{"on-large-transaction"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			cfg := pumpConfig(16)
			tc.mutate(&cfg)
			err := cfg.Validate()
			require.Error(t, err)
			for _, w := range tc.want {
				assert.Contains(t, err.Error(), w)
			}
		})
	}
}

// Shutdown when the oldest publish's ack and the cancellation arrive
// together: Run takes the ack, sees ctx done and hands the head, already
// waited on, to stop, which waits on it again.
func TestPumpShutdownWhenAckAndCancelCoincide(t *testing.T) {
	t.Parallel()
	forEachMode(t, func(t *testing.T, mode publishMode) {
		const n = 10
		src := newFilledSource(pumpEvents(n, 1), false)
		stream := newFakeStream(t, true, false)
		ctx, cancel := context.WithCancel(t.Context())
		// The ack of publish 3 arrives just as the relay is told to stop.
		sc := atPublish(3, fault{onResult: cancel})
		if mode.joined {
			// Of the third commit: the messages before it ask for none.
			sc, _ = onReplies(sc)
		}
		stream.SetScript(sc)
		cfg := mode.apply(pumpConfig(16))
		cfg.ShutdownTimeout = 500 * time.Millisecond
		p, _ := newTestPump(t, cfg, src, stream)
		done := startRun(ctx, p)
		require.Eventually(t, func() bool { return ctx.Err() != nil }, 5*time.Second, time.Millisecond)
		cancelled := time.Now()

		require.NoError(t, waitRun(t, done, runDeadline))
		assert.Less(t, time.Since(cancelled), cfg.ShutdownTimeout, "shutdown waited for an ack already received")
		assertStream(t, stream, pumpIDs(1, n))
		assertStoredAcked(t, stream, src)
	})
}

// Shutdown while the pump settles the window after a failure: the
// publishes still in flight are dropped from the window without waiting for
// them, so those stored are not acked.
func TestPumpShutdownDuringRecovery(t *testing.T) {
	t.Parallel()
	forEachMode(t, func(t *testing.T, mode publishMode) {
		const n = 10
		src := newFilledSource(pumpEvents(n, 1), false)
		stream := newFakeStream(t, true, false)
		hold := make(chan struct{})
		// Publish 3's ack is lost, those after it are held.
		lost, lostID := 3, pumpID(3)
		var sc script = func(i int, _ sink.Message) fault {
			switch {
			case i == lost:
				return fault{kind: faultAckLost}
			case i > lost:
				return fault{hold: hold}
			}
			return fault{}
		}
		next := func() *fakePending { return stream.Pending(lost + 1) }
		if mode.joined {
			// Counting the commits: the first two batches go one
			// transaction each (the stream was just read back), the
			// third takes the rest (joinNext), the one batch in flight
			// behind the second.
			var publishOf func(int) int
			lost, lostID = 2, pumpID(2)
			sc, publishOf = onReplies(sc)
			next = func() *fakePending { return stream.Pending(publishOf(lost + 1)) }
		}
		stream.SetScript(sc)
		cfg := mode.apply(pumpConfig(16))
		p, _ := newTestPump(t, cfg, src, stream)
		ctx, cancel := context.WithCancel(t.Context())
		done := startRun(ctx, p)

		// The pump is settling: waiting for the publish after the lost
		// ack, whose ack is held.
		require.Eventually(t, func() bool { return next() != nil && next().Waits() >= 1 }, 5*time.Second, time.Millisecond)
		cancel()
		var err error
		returned := false
		require.Eventually(t, func() bool {
			select {
			case err = <-done:
				returned = true
				return true
			default:
				return next().Waits() >= 2
			}
		}, 5*time.Second, time.Millisecond)
		close(hold) // the acks arrive shortly after the shutdown began
		if !returned {
			err = waitRun(t, done, runDeadline)
		}
		require.NoError(t, err)
		stream.WaitHolds()
		assertStream(t, stream, pumpIDs(1, n))
		// The lost ack's event cannot be acked without a tail read.
		assertStoredAcked(t, stream, src, lostID)
	})
}

// Shutdown while the pump fills its window: the next Publish fails with the
// cancelled ctx, the pump takes that for a publish failure and settles the
// window with the cancelled ctx, abandoning the publishes in flight instead
// of giving them ShutdownTimeout.
func TestPumpShutdownWhileFillingWindow(t *testing.T) {
	t.Parallel()
	forEachMode(t, func(t *testing.T, mode publishMode) {
		const n = 40
		src := newFilledSource(pumpEvents(n, 1), false)
		stream := newFakeStream(t, true, false)
		hold := make(chan struct{})
		// Publishes 4 to 16 are stored at once but their acks come late.
		var sc script = func(i int, _ sink.Message) fault {
			if i >= 4 {
				return fault{hold: hold}
			}
			return fault{}
		}
		fourth := func() *fakePending { return stream.Pending(4) }
		if mode.joined {
			// Counting the commits: the messages before them ask for no
			// reply.
			var publishOf func(int) int
			sc, publishOf = onReplies(sc)
			fourth = func() *fakePending { return stream.Pending(publishOf(4)) }
		}
		stream.SetScript(sc)
		cfg := mode.apply(pumpConfig(16))
		p, m := newTestPump(t, cfg, src, stream)
		ctx, cancel := context.WithCancel(t.Context())
		// The stop signal arrives as event 3 is acknowledged; the source still
		// has events buffered.
		src.OnAck(func(ev cdc.Event) {
			if ev.ID == pumpID(3) {
				cancel()
			}
		})
		done := startRun(ctx, p)
		var err error
		returned := false
		require.Eventually(t, func() bool {
			select {
			case err = <-done:
				returned = true
				return true
			default:
				return fourth() != nil && fourth().Waits() >= 1
			}
		}, 5*time.Second, time.Millisecond)
		close(hold) // the acks arrive shortly after the shutdown began
		if !returned {
			err = waitRun(t, done, runDeadline)
		}
		require.NoError(t, err)
		stream.WaitHolds()
		stored := len(stream.Messages())
		require.Greater(t, stored, 3)
		assertStream(t, stream, pumpIDs(1, stored))
		assertStoredAcked(t, stream, src)
		assert.Zero(t, retries(t, m), "a shutdown is not a failed publish")
	})
}

// Shutdown before the first tail read succeeded (NATS unreachable at
// start): Run must return nil like any other shutdown.
func TestPumpShutdownBeforeFirstTail(t *testing.T) {
	t.Parallel()
	forEachMode(t, func(t *testing.T, mode publishMode) {
		src := newFilledSource(pumpEvents(10, 1), false)
		stream := newFakeStream(t, true, false)
		stream.FailReads(1 << 30)
		p, _ := newTestPump(t, mode.apply(pumpConfig(16)), src, stream)
		ctx, cancel := context.WithCancel(t.Context())
		done := startRun(ctx, p)
		require.Eventually(t, func() bool { return stream.Reads() >= 2 }, 5*time.Second, time.Millisecond)
		cancel()
		require.NoError(t, waitRun(t, done, runDeadline))
		assertStream(t, stream, nil)
		assertAcked(t, src, nil, 1)
	})
}

// An event the server refuses as too large (the error comes with the PubAck)
// followed, within the window, by another poison event: the second one's
// poison handling settles the window, takes the first one's permanent
// failure for a transient one and retries it, forever.
func TestPumpServerRefusalThenPoison(t *testing.T) {
	t.Parallel()
	forEachMode(t, func(t *testing.T, mode publishMode) {
		const n = 100
		for _, tc := range []struct {
			name, deadLetter string
			second           faultKind // the second poison: refused by the client, or unmappable (faultNone)
		}{
			{name: "stop, then unmappable"},
			{name: "stop, then refused by the client", second: faultPermanentSync},
			{name: "dead letter, then unmappable", deadLetter: "outbox.dlq.x"},
		} {
			t.Run(tc.name, func(t *testing.T) {
				t.Parallel()
				evs := pumpEvents(n, 1)
				if tc.second == faultNone {
					evs = poisoned(evs, 41, "invalid_subject")
				}
				src := newFilledSource(evs, true)
				stream := newFakeStream(t, true, false)
				stream.SetScript(firstOf(
					onEvent(pumpID(40), eventSubject, fault{kind: faultPermanentAsync}),
					onEvent(pumpID(41), eventSubject, fault{kind: tc.second}),
				))
				cfg := mode.apply(pumpConfig(16))
				if tc.deadLetter != "" {
					cfg = mode.apply(deadLetterConfig(16, tc.deadLetter))
				}
				p, m := newTestPump(t, cfg, src, stream)
				ctx, cancel := context.WithCancel(t.Context())
				defer cancel()
				done := startRun(ctx, p)
				var err error
				select {
				case err = <-done:
				case <-time.After(5 * time.Second):
					cancel()
					<-done
					t.Fatalf("livelock: Run still going after 5s, %d publishes, %v retries, stream holds %d messages",
						stream.Publishes(), retries(t, m), len(stream.Messages()))
				}
				if tc.deadLetter == "" {
					require.ErrorIs(t, err, relay.ErrPoison)
					assert.Contains(t, err.Error(), pumpID(40))
					assertStream(t, stream, pumpIDs(1, 39))
					assertAcked(t, src, pumpIDs(1, 39), 1)
					return
				}
				require.NoError(t, err)
				assertStream(t, stream, pumpIDs(1, n))
				assertAcked(t, src, pumpIDs(1, n), 1)
				assert.Equal(t, 2.0, deadLettered(t, m))
			})
		}
	})
}
