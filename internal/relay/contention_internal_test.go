package relay

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.uber.org/zap"
)

// TestContendedCountsProgress: three breaks of the relay's chains within
// contentionWindow make it publish one message at a time; so do three
// breaks further apart by the clock when fewer events than one publish
// window were stored across them (a loaded machine, where each break takes
// long); three breaks with a window's worth of events stored between them,
// further apart than contentionWindow, do not.
func TestContendedCountsProgress(t *testing.T) {
	newPump := func() *Pump {
		return &Pump{cfg: Config{Window: 100}, log: zap.NewNop(), marks: &Watermark{stream: "OUTBOX"}}
	}
	start := time.Unix(1_700_000_000, 0)

	fast := newPump()
	require.False(t, fast.contended(start))
	require.False(t, fast.contended(start.Add(500*time.Millisecond)))
	require.True(t, fast.contended(start.Add(time.Second)), "three breaks within the window")

	slow := newPump()
	for i := range 3 {
		slow.storedCount += 10
		got := slow.contended(start.Add(time.Duration(i) * 3 * time.Second))
		require.Equal(t, i == 2, got, "break %d: 30 events stored over 6 s is no progress", i)
	}
	require.True(t, slow.contended(start.Add(7*time.Second)), "in the serial spell")

	healthy := newPump()
	for i := range 5 {
		healthy.storedCount += 1000
		require.False(t, healthy.contended(start.Add(time.Duration(i)*3*time.Second)), "break %d after a window's worth of events", i)
	}
}
