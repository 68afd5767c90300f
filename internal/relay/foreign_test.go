package relay_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/zap/zaptest"

	"github.com/outbox-relay/outbox-relay/internal/cdc"
	"github.com/outbox-relay/outbox-relay/internal/relay"
	"github.com/outbox-relay/outbox-relay/internal/sink"
)

// foreignAt returns a fault storing another writer's message just before the
// publish is processed.
func foreignAt(t *testing.T, i int) fault {
	ev := pumpEvent(9000+i, 1)
	ev.ID = fmt.Sprintf("foreign-%d", i)
	ev.Position = cdc.Position{CommitLSN: pglogrepl.LSN(1 << 40), Index: uint32(i)}
	msg := foreignMessages(t, ev)[0]
	return fault{foreign: &msg}
}

// plainAt returns a fault storing a plain message (no id, no headers) just
// before the publish is processed.
func plainAt(i int) fault {
	return fault{foreign: &sink.Message{Subject: "outbox.other.plain", Data: fmt.Appendf(nil, "plain %d", i)}}
}

// ownIDs returns the relay's own messages on the stream, in stream order.
func ownIDs(stream *fakeStream) []string {
	var ids []string
	for _, m := range stream.Messages() {
		if _, ok := relay.PositionFromHeader(m.Header, testOrigin); ok {
			ids = append(ids, m.ID)
		}
	}
	return ids
}

// Another writer's message landing mid-burst on a one-replica stream (the
// review's probe: 100 events, window 16, a foreign message at publish 11,
// with any acknowledgement cadence): every event is stored once, in commit
// order, around the foreign message; none is skipped as "already stored".
func TestPumpForeignMessageMidBurst(t *testing.T) {
	t.Parallel()
	for _, ackEvery := range []int{1, 4, 32} {
		for _, tc := range []struct {
			name   string
			script func(t *testing.T) script
		}{
			{"another relay's message at publish 11", func(t *testing.T) script { return atPublish(11, foreignAt(t, 11)) }},
			{"a plain message at publish 11", func(*testing.T) script { return atPublish(11, plainAt(11)) }},
			{"plain messages at publishes 5, 6, 40 and 77", func(*testing.T) script {
				return firstOf(atPublish(5, plainAt(5)), atPublish(6, plainAt(6)), atPublish(40, plainAt(40)), atPublish(77, plainAt(77)))
			}},
		} {
			t.Run(fmt.Sprintf("%s, ack every %d", tc.name, ackEvery), func(t *testing.T) {
				t.Parallel()
				const n = 100
				src := newFilledSource(pumpEvents(n, 1), true)
				stream := newFakeStream(t, true, false)
				stream.SetScript(tc.script(t))
				cfg := pumpConfig(16)
				cfg.AckEvery = ackEvery

				err, m := runPump(t, cfg, src, stream)
				require.NoError(t, err)

				assertOwnOrder(t, stream, testOrigin)
				assert.Equal(t, pumpIDs(1, n), ownIDs(stream), "every event once, in commit order")
				assertAcked(t, src, pumpIDs(1, n), 1)
				assertStoredAcked(t, stream, src)
				assert.Zero(t, stream.Duplicates(), "no event published again once stored")
				assert.Positive(t, stream.RejectedWrongSequence(), "the burst after the foreign message was refused")
				assert.Zero(t, metricValue(t, m, "outbox_relay_pump_reordered_total"))
			})
		}
	}
}

// On a replicated stream the message id expectation is not usable, so a
// foreign message can take a refused event's place while the rest of the
// burst is stored. The pump sees it (every message asks for a PubAck there),
// publishes the refused events again (out of order: counted and logged), and
// from then on publishes one message at a time, remembered across restarts.
// Nothing is lost or stored twice. Atomic batches are ordered the same way
// on a stream with one replica too (only a batch's first message may expect
// a sequence, none a message id).
func TestPumpForeignMessageOnReplicatedStream(t *testing.T) {
	t.Parallel()
	forEachMode(t, func(t *testing.T, mode publishMode) {
		for _, replicated := range []bool{true, false} {
			if !replicated && !mode.atomic {
				continue // TestPumpForeignMessageMidBurst
			}
			t.Run(fmt.Sprintf("replicated %t", replicated), func(t *testing.T) {
				foreignOnSequenceOrder(t, mode, replicated)
			})
		}
	})
}

func foreignOnSequenceOrder(t *testing.T, mode publishMode, replicated bool) {
	t.Helper()
	const n = 100
	src := newFilledSource(pumpEvents(n, 1), true)
	stream := newFakeStream(t, true, replicated)
	stream.SetScript(firstOf(atPublish(11, plainAt(11)), atPublish(60, plainAt(60))))
	cfg := mode.apply(pumpConfig(16))
	cfg.AckEvery = 32

	err, m := runPump(t, cfg, src, stream)
	require.NoError(t, err)

	got := ownIDs(stream)
	assert.ElementsMatch(t, pumpIDs(1, n), got, "every event once")
	if mode.joined {
		// The refused event's batch had taken the rest of the burst
		// (joinNext), and the one batch after it expected its end:
		// nothing was stored past the refusal.
		assert.Equal(t, pumpIDs(1, n), got, "in commit order")
		assert.Zero(t, metricValue(t, m, "outbox_relay_pump_reordered_total"), "no event published out of order")
	} else {
		assert.Equal(t, pumpID(11), got[n-1-(n-11-15)], "the refused event follows the rest of its burst")
		assert.Equal(t, 1.0, metricValue(t, m, "outbox_relay_pump_reordered_total"), "one event published out of order")
	}
	assertAcked(t, src, pumpIDs(1, n), 1)
	assertStoredAcked(t, stream, src)
	assert.Equal(t, 1.0, metricValue(t, m, "outbox_relay_pump_stream_shared"))

	// The second foreign message came after the switch: no further
	// reordering, messages without expectations.
	for _, msg := range stream.Messages() {
		if msg.Seq > uint64(n-10) {
			assert.False(t, msg.CheckLastSeq, "message %s after the switch expects no sequence", msg.ID)
		}
	}

	// A restart keeps publishing one message at a time.
	before := len(stream.Messages())
	more := newFilledSource(pumpEvents(n+20, 1), true)
	err, m2 := runPump(t, cfg, more, stream)
	require.NoError(t, err)
	assert.Equal(t, float64(n), skipped(t, m2))
	assert.ElementsMatch(t, pumpIDs(1, n+20), ownIDs(stream))
	for _, msg := range stream.Messages()[before:] {
		assert.False(t, msg.CheckLastSeq, "message %s after the restart expects no sequence: published one at a time", msg.ID)
	}
}

// A relay that crashed after it saw a hole but before publishing the refused
// event again: the hole is in the high-water mark, so the next run publishes
// the event although later ones are stored.
func TestPumpHoleSurvivesARestart(t *testing.T) {
	t.Parallel()
	forEachMode(t, func(t *testing.T, mode publishMode) {
		// No duplicate window: the hole's event is stored again whatever the
		// stream held.
		stream := newFakeStream(t, false, true)
		first := newFilledSource(pumpEvents(20, 1), true)
		err, _ := runPump(t, mode.apply(pumpConfig(8)), first, stream)
		require.NoError(t, err)
		// Make event 7 a hole: stored later than it should, as if refused.
		log := zaptest.NewLogger(t)
		w := relay.NewWatermark(stream, stream.marks, "OUTBOX", testOrigin, log)
		mark, ok, err := w.Load(context.Background())
		require.NoError(t, err)
		require.True(t, ok)
		mark.Holes = []cdc.Position{pumpEvent(7, 1).Position}
		require.NoError(t, w.Save(context.Background(), mark))

		second := newFilledSource(pumpEvents(25, 1), true)
		err, m := runPump(t, mode.apply(pumpConfig(8)), second, stream)
		require.NoError(t, err)
		assert.Equal(t, 19.0, skipped(t, m), "every stored event but the hole is skipped")
		assert.Equal(t, concat(pumpIDs(1, 20), []string{pumpID(7)}, pumpIDs(21, 25)), ownIDs(stream))
		mark, _, err = w.Load(context.Background())
		require.NoError(t, err)
		assert.Empty(t, mark.Holes, "the hole is filled")
	})
}

// Random transient faults, lost acks, failing reads and other writers'
// messages: on one replica every event once in order; on a replicated stream
// every event once, reordering counted.
func TestPumpRandomFaultsWithOtherWriters(t *testing.T) {
	t.Parallel()
	forEachMode(t, func(t *testing.T, mode publishMode) {
		for seed := uint64(1); seed <= randomSeeds(t); seed++ {
			for _, replicated := range []bool{false, true} {
				t.Run(fmt.Sprintf("seed %d replicated %t", seed, replicated), func(t *testing.T) {
					t.Parallel()
					rng := rand.New(rand.NewPCG(seed, 99))
					n := 300 + rng.IntN(300)
					window := []int{1, 4, 16, 64}[rng.IntN(4)]
					perTxn := 1 + rng.IntN(4)
					faults := map[int]fault{}
					for i := 1; i <= 4*n; i++ {
						switch r := rng.Float64(); {
						case r < 0.02:
							faults[i] = fault{kind: faultTransient}
						case r < 0.04:
							faults[i] = fault{kind: faultAckLost}
						case r < 0.05:
							faults[i] = fault{kind: faultTransient, failReads: 1 + rng.IntN(2)}
						case r < 0.08:
							faults[i] = plainAt(i)
						case r < 0.09:
							faults[i] = foreignAt(t, i)
						}
					}
					cfg := mode.apply(pumpConfig(window))
					cfg.AckEvery = []int{1, 4, 32}[seed%3]
					src := newFilledSource(pumpEvents(n, perTxn), true)
					stream := newFakeStream(t, true, replicated)
					stream.SetScript(func(i int, _ sink.Message) fault { return faults[i] })

					err, m := runPump(t, cfg, src, stream)
					require.NoError(t, err)

					got := ownIDs(stream)
					assert.ElementsMatch(t, pumpIDs(1, n), got, "every event once")
					// Atomic batches are ordered by sequence arithmetic on
					// any stream, as single messages on a replicated one.
					inOrder := !replicated && !mode.atomic
					if mode.atomic {
						assertTransactionsWhole(t, stream, perTxn, 0)
					}
					if inOrder {
						assert.Equal(t, pumpIDs(1, n), got, "in commit order")
						assertOwnOrder(t, stream, testOrigin)
					}
					assertAcked(t, src, pumpIDs(1, n), perTxn)
					assertStoredAcked(t, stream, src)
					reordered := metricValue(t, m, "outbox_relay_pump_reordered_total")
					if inOrder {
						assert.Zero(t, reordered)
					}
					t.Logf("n %d window %d ack every %d, reordered %v", n, window, cfg.AckEvery, reordered)
				})
			}
		}
	})
}

// A work-queue stream removes what its consumer acknowledged, so a restarted
// relay cannot read back the messages stored after its last saved mark.
func TestPumpRestartOnAWorkQueueStream(t *testing.T) {
	t.Parallel()
	forEachMode(t, func(t *testing.T, mode publishMode) {
		for _, tc := range []struct {
			name string
			// forget: the server restarted too, losing the last message id
			// and the duplicate entries of removed messages.
			forget, dedup bool
			wantDups      int
			wantUnverfied float64
		}{
			{name: "the last stored id tells exactly which are stored", dedup: false},
			{name: "the last stored id, duplicate window open", dedup: true},
			// A restarted server rebuilds its duplicate window from the
			// messages it holds: removed ones are not in it
			// (TestJetStreamLastMsgIDRules).
			{name: "server restarted", forget: true, dedup: true, wantDups: 20, wantUnverfied: 20},
		} {
			t.Run(tc.name, func(t *testing.T) {
				t.Parallel()
				stream := newFakeStream(t, tc.dedup, false)
				stream.WorkQueue()
				first := newFilledSource(pumpEvents(50, 2), true)
				err, _ := runPump(t, mode.apply(pumpConfig(8)), first, stream)
				require.NoError(t, err)
				// The mark was last saved at event 30 (the relay was killed).
				log := zaptest.NewLogger(t)
				w := relay.NewWatermark(stream, stream.marks, "OUTBOX", testOrigin, log)
				mark, _, err := w.Load(context.Background())
				require.NoError(t, err)
				mark.Position, mark.Seq, mark.MsgID = pumpEvent(30, 2).Position, 30, pumpID(30)
				require.NoError(t, w.Save(context.Background(), mark))
				if tc.forget {
					stream.Forget()
				}

				second := newFilledSource(pumpEvents(80, 2), true)
				cfg := mode.apply(pumpConfig(8))
				cfg.UncertainWait = time.Second
				err, m := runPump(t, cfg, second, stream)
				require.NoError(t, err)

				got := ownIDs(stream)
				counts := map[string]int{}
				dups := 0
				for _, id := range got {
					counts[id]++
					if counts[id] == 2 {
						dups++
					}
				}
				assert.Equal(t, pumpIDs(1, 80), slices.Compact(slices.Sorted(slices.Values(got))), "every event stored")
				assert.Equal(t, tc.wantDups, dups, "events stored twice")
				assert.Equal(t, tc.wantUnverfied, metricValue(t, m, "outbox_relay_pump_unverified_replays_total"))
				assertAcked(t, second, pumpIDs(1, 80), 2)
			})
		}
	})
}

// A publish the relay gave up on (no PubAck in time) is stored later, after
// the relay published the event again: the late copy takes the place the
// new one expected, and the new ones after it are stored right behind it.
// Each event is on the stream once, in order, on one replica and on three.
func TestPumpLateCopy(t *testing.T) {
	t.Parallel()
	for _, replicated := range []bool{false, true} {
		for _, ackEvery := range []int{1, 32} {
			t.Run(fmt.Sprintf("replicated %t, ack every %d", replicated, ackEvery), func(t *testing.T) {
				t.Parallel()
				const n = 120
				src := newFilledSource(pumpEvents(n, 1), true)
				stream := newFakeStream(t, true, replicated)
				// The first publish of event 37 times out and is
				// stored just before its second copy arrives.
				stream.SetScript(once(onEvent(pumpID(37), nil, fault{late: true})))
				cfg := pumpConfig(16)
				cfg.AckEvery = ackEvery
				err, m := runPump(t, cfg, src, stream)
				require.NoError(t, err)
				assert.Equal(t, pumpIDs(1, n), ownIDs(stream), "every event once, in order")
				assertAcked(t, src, pumpIDs(1, n), 1)
				assert.Zero(t, metricValue(t, m, "outbox_relay_pump_reordered_total"))
			})
		}
	}
}

// Another writer publishing all the time between the relay's messages on a
// one-replica stream breaks every burst: each break costs the refused rest
// of the burst, a read-back and a round trip, and the relay fell far behind
// (the chaos suite's shared-stream scene: two relays and an application on
// one stream, a backlog after a NATS restart, 20 events/s). After a few
// breaks in quick succession the pump publishes one message at a time for a
// while, which no other writer can break: every event once, in order, and
// few refused publishes.
func TestPumpContendedStreamPublishesOneAtATime(t *testing.T) {
	t.Parallel()
	const n = 600
	src := newFilledSource(pumpEvents(n, 1), true)
	stream := newFakeStream(t, true, false)
	stream.SetScript(func(i int, _ sink.Message) fault {
		if i%3 == 0 {
			return plainAt(i)
		}
		return fault{}
	})
	cfg := pumpConfig(16)
	cfg.AckEvery = 4

	err, _ := runPump(t, cfg, src, stream)
	require.NoError(t, err)

	assertOwnOrder(t, stream, testOrigin)
	assert.Equal(t, pumpIDs(1, n), ownIDs(stream), "every event once, in commit order")
	assertAcked(t, src, pumpIDs(1, n), 1)
	assertStoredAcked(t, stream, src)
	assert.Zero(t, stream.Duplicates(), "no event published again once stored")
	assert.Less(t, stream.RejectedWrongSequence(), 100, "publishes refused because another writer broke the burst")
}

// A serial spell ends: once the other writer is quiet and the spell is over,
// the pump publishes bursts again, asking a PubAck only every AckEvery-th
// message, instead of one message at a time for good.
func TestPumpContentionSpellEnds(t *testing.T) {
	t.Parallel()
	const n = 600
	src := newFilledSource(pumpEvents(n, 1), true)
	stream := newFakeStream(t, true, false)
	stream.SetScript(func(i int, _ sink.Message) fault {
		if i <= 60 && i%3 == 0 {
			return plainAt(i)
		}
		return fault{}
	})
	cfg := relay.WithSerialSpell(pumpConfig(16), time.Millisecond)
	cfg.AckEvery = 4

	err, _ := runPump(t, cfg, src, stream)
	require.NoError(t, err)

	assertOwnOrder(t, stream, testOrigin)
	assert.Equal(t, pumpIDs(1, n), ownIDs(stream), "every event once, in commit order")
	assertStoredAcked(t, stream, src)
	assert.Less(t, stream.AckRequests(), n/2, "bursts again after the spell: not a PubAck per message")
}
