package cdc

import (
	"fmt"
	"testing"
	"time"

	"github.com/jackc/pglogrepl"
)

// BenchmarkTrackerTrackAck is the tracker's work per event for transactions
// of rows events: Begin, Track each event, Commit, then Ack each event as
// the pump does once JetStream stored it. ns/op is per event.
func BenchmarkTrackerTrackAck(b *testing.B) {
	for _, rows := range []int{1, 10, 1000} {
		b.Run(fmt.Sprintf("rows=%d", rows), func(b *testing.B) {
			tr := NewTracker(0)
			ts := time.Now()
			lsn := pglogrepl.LSN(1)
			b.ReportAllocs()
			b.ResetTimer()
			for done := 0; done < b.N; {
				n := min(rows, b.N-done)
				e := tr.Begin(ts)
				for range n {
					tr.Track(e)
				}
				lsn += 100
				tr.Commit(e, lsn)
				for range n {
					_ = tr.Ack(e)
				}
				done += n
			}
			b.StopTimer()
			if tr.Confirmed() != lsn || tr.Pending() != 0 {
				b.Fatalf("confirmed %s, pending %d", tr.Confirmed(), tr.Pending())
			}
		})
	}
}

// BenchmarkTrackerWindow keeps a publish window of 1024 events in flight:
// each event is tracked when read and acknowledged 1024 events later, in
// one-row transactions, so the queue holds a window's worth of entries.
func BenchmarkTrackerWindow(b *testing.B) {
	const window = 1024
	tr := NewTracker(0)
	ts := time.Now()
	ring := make([]*txnEntry, window)
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		if e := ring[i%window]; e != nil {
			_ = tr.Ack(e)
		}
		e := tr.Begin(ts)
		tr.Track(e)
		tr.Commit(e, pglogrepl.LSN(i+1)*100)
		ring[i%window] = e
	}
}
