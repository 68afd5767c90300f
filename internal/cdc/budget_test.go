package cdc

import (
	"testing"

	"github.com/stretchr/testify/require"
	"go.uber.org/zap/zaptest"

	"github.com/outbox-relay/outbox-relay/internal/metrics"
)

func TestByteBudget(t *testing.T) {
	t.Parallel()
	b := newByteBudget(100)
	require.True(t, b.take(60))
	require.True(t, b.take(40), "up to the limit")
	require.False(t, b.take(1), "over the limit")
	b.release(60)
	select {
	case <-b.freed:
	default:
		t.Fatal("release signals")
	}
	require.True(t, b.take(50))
	require.False(t, b.take(20))
	b.release(40)
	b.release(50)
	require.Zero(t, b.inUse())
	require.True(t, b.take(1000), "an event larger than the budget passes when nothing is held")
	require.False(t, b.take(1), "and holds it alone")
	b.release(1000)
	require.True(t, b.take(1))
}

func TestEventSize(t *testing.T) {
	t.Parallel()
	ev := outboxEvent()
	want := len(ev.Payload) + len(ev.Headers) + len(ev.ID) + len(ev.AggregateType) + len(ev.AggregateID) + len(ev.EventType) + len(ev.CreatedAt)
	require.Equal(t, int64(want+eventOverhead), eventSize(&ev))
}

// TestReaderAckTwiceStopsTheReader: a second Ack of an event is an error
// naming the event that Run returns (fatal), not a panic, and gives no
// bytes back twice.
func TestReaderAckTwiceStopsTheReader(t *testing.T) {
	t.Parallel()
	r := NewReader(validConfig(), zaptest.NewLogger(t), metrics.New("test", "test"))
	txn := r.tracker.Begin(t0)
	r.tracker.Track(txn)
	ev := outboxEvent()
	ev.txn, ev.size, ev.Position = txn, 1000, Position{CommitLSN: 0x16_B374D848, Index: 3}
	require.True(t, r.budget.take(ev.size))
	r.Ack(ev)
	require.Zero(t, r.budget.inUse())
	r.Ack(ev)
	require.Zero(t, r.budget.inUse(), "nothing given back twice")
	select {
	case err := <-r.fatal:
		require.ErrorIs(t, err, ErrAck)
		require.ErrorContains(t, err, "event 0b7a8f4e-5a42-4c38-9f0e-7d0f6f1d2c11 at 16/B374D848#3")
	default:
		t.Fatal("the reader is told to stop")
	}
}
