package relay_test

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/outbox-relay/outbox-relay/internal/sink"
)

// TestPumpAsksForFewerAcks drains a backlog with AckEvery 16: few publishes
// ask for a PubAck, and every event is stored once, in order,
// and acknowledged to the source.
func TestPumpAsksForFewerAcks(t *testing.T) {
	t.Parallel()
	forEachBurstMode(t, func(t *testing.T, mode publishMode) {
		const n, perTxn = 1000, 10
		src := newFilledSource(pumpEvents(n, perTxn), true)
		stream := newFakeStream(t, true, false)
		cfg := pumpConfig(64)
		cfg.AckEvery = 16
		err, m := runPump(t, cfg, src, stream)
		require.NoError(t, err)
		assertStream(t, stream, pumpIDs(1, n))
		assertAcked(t, src, pumpIDs(1, n), perTxn)
		assertStoredAcked(t, stream, src)
		assert.Equal(t, n, stream.Publishes(), "each event published once")
		// One per group of up to 16, plus the window's first fill, which
		// asks for one each (the pump starts careful).
		assert.Less(t, stream.AckRequests(), n/4)
		assert.GreaterOrEqual(t, stream.AckRequests(), n/16)
		assert.Zero(t, metricValue(t, m, "outbox_relay_pump_retries_total"))
		if mode.batch {
			// The groups after the first window's fill are fast batches.
			assert.Greater(t, stream.FastCommits(), n/32)
		}
	})
}

// TestPumpLastOfABurstAsksForAnAck: events that arrive in small bursts
// each end with a message that asks for a PubAck, so none waits for the next
// burst to be acknowledged.
func TestPumpLastOfABurstAsksForAnAck(t *testing.T) {
	src := newFakeSource(16)
	stream := newFakeStream(t, true, false)
	cfg := pumpConfig(64)
	cfg.AckEvery = 32
	p, m := newTestPump(t, cfg, src, stream)
	ctx, cancel := context.WithCancel(t.Context())
	done := startRun(ctx, p)
	evs := pumpEvents(9, 3)
	for burst := range 3 {
		// Sent at once, so the pump may find more than one ready.
		for _, ev := range evs[3*burst : 3*burst+3] {
			src.ch <- ev
		}
		want := pumpIDs(1, 3*burst+3)
		require.Eventually(t, func() bool { return len(src.Acks()) == len(want) }, 5*time.Second, time.Millisecond,
			"burst %d acknowledged while no further event comes", burst+1)
	}
	// Acknowledged by the last message of each burst, not recovered by
	// reading the stream back (which would acknowledge them too).
	assert.Equal(t, 1.0, metricValue(t, m, "outbox_relay_pump_resyncs_total"), "only the start reads the stream's end")
	cancel()
	require.NoError(t, waitRun(t, done, runDeadline))
	assertStream(t, stream, pumpIDs(1, 9))
}

// TestPumpCoveredMessageLost: a message sent without a PubAck never reaches
// the stream; the message vouching for it is refused for the wrong last
// sequence, and the pump reads the stream back and publishes again from the
// lost one, each with a PubAck, without waiting out a backoff.
func TestPumpCoveredMessageLost(t *testing.T) {
	t.Parallel()
	forEachBurstMode(t, func(t *testing.T, mode publishMode) {
		const n = 100
		src := newFilledSource(pumpEvents(n, 1), true)
		stream := newFakeStream(t, true, false)
		lost := 0
		stream.SetScript(func(i int, m sink.Message) fault {
			if m.NoReply && lost == 0 && i > 10 {
				lost = i
				return fault{kind: faultTransient}
			}
			return fault{}
		})
		cfg := pumpConfig(64)
		cfg.AckEvery = 8
		cfg.RetryMin, cfg.RetryMax = time.Hour, time.Hour // a backoff would hang the test
		err, m := runPump(t, cfg, src, stream)
		require.NoError(t, err)
		require.NotZero(t, lost, "a message without a PubAck was lost")
		assertStream(t, stream, pumpIDs(1, n))
		assertAcked(t, src, pumpIDs(1, n), 1)
		assertStoredAcked(t, stream, src)
		assert.Greater(t, metricValue(t, m, "outbox_relay_pump_resyncs_total"), 1.0)
		assert.Zero(t, metricValue(t, m, "outbox_relay_pump_retries_total"), "no backoff: nothing failed but one lost message")
		if mode.batch {
			// And the batches sent after it end at their first message.
			assert.GreaterOrEqual(t, stream.FastEnded(), 1, "the lost message ended its batch")
		}
	})
}
