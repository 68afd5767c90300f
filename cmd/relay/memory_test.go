package main

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/outbox-relay/outbox-relay/internal/e2e"
)

// peakRSS returns the process's peak resident set size (VmHWM) in bytes.
func peakRSS(t *testing.T, pid int) int64 {
	t.Helper()
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	require.NoError(t, err)
	for _, line := range strings.Split(string(data), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(rest), "kB")), 10, 64)
			require.NoError(t, err)
			return kb << 10
		}
	}
	t.Fatalf("no VmHWM in /proc/%d/status", pid)
	return 0
}

// TestMemoryIsBoundedInBytes: a backlog of 64 KiB rows, written while NATS
// is down and drained once it is back, keeps the relay's peak RSS far below
// the chart's 256 MiB limit with the default --event-buffer-bytes; with a
// count-bounded buffer the events read ahead alone took 320 MiB.
func TestMemoryIsBoundedInBytes(t *testing.T) {
	t.Parallel()
	const (
		rows    = 6000
		perTxn  = 50
		size    = 64 << 10
		maxPeak = 200 << 20
	)
	f := newFixture(t)
	relay := f.startRelay(t)
	f.write(t, 1, "first")
	f.waitStream(t, 1, 30*time.Second)

	f.nats.Stop(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	for i := range rows / perTxn {
		_, err := f.writer.Write(ctx, e2e.SampleEvents(perTxn, size, tagf("big-%d", i)), false)
		require.NoError(t, err)
	}
	// Let the reader read ahead as far as it will.
	read := func() float64 { return relay.Metrics()["outbox_relay_cdc_events_total"] }
	last, still := read(), 0
	for still < 10 && last < rows+1 {
		time.Sleep(500 * time.Millisecond)
		if now := read(); now == last {
			still++
		} else {
			last, still = now, 0
		}
	}
	whileDown := peakRSS(t, relay.Pid())
	t.Logf("NATS down: %v events read, peak RSS %d MiB", last, whileDown>>20)

	f.nats.Start(t)
	f.waitStream(t, rows+1, 4*time.Minute)
	f.verify(t)
	peak := peakRSS(t, relay.Pid())
	t.Logf("drained: peak RSS %d MiB", peak>>20)
	require.Less(t, peak, int64(maxPeak), "peak RSS %d MiB", peak>>20)
}
