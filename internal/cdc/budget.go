package cdc

import "sync"

// eventOverhead approximates what an event costs besides its bytes: the
// Event struct, its tracker share, channel and window slots.
const eventOverhead = 256

// eventSize is what ev holds in memory until it is acknowledged: payload,
// headers and strings, plus the overhead.
func eventSize(ev *Event) int64 {
	return int64(len(ev.Payload) + len(ev.Headers) + len(ev.ID) + len(ev.AggregateType) + len(ev.AggregateID) +
		len(ev.EventType) + len(ev.CreatedAt) + len(ev.Defect) + eventOverhead)
}

// byteBudget bounds the bytes of events read and not yet acknowledged,
// wherever they wait: the reader's channel, the publisher's window, a retry.
// The reader takes an event's size before handing it on; Ack gives it back.
// An event larger than the whole budget is let through when nothing else is
// held, so progress never stops. Safe for concurrent use.
type byteBudget struct {
	mu    sync.Mutex
	limit int64
	held  int64
	// freed is signalled (without blocking) whenever bytes are given back.
	freed chan struct{}
}

func newByteBudget(limit int64) *byteBudget {
	return &byteBudget{limit: limit, freed: make(chan struct{}, 1)}
}

// take takes n bytes when they fit, or when nothing is held, and reports
// whether it did.
func (b *byteBudget) take(n int64) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.held > 0 && b.held+n > b.limit {
		return false
	}
	b.held += n
	return true
}

// release gives n bytes back.
func (b *byteBudget) release(n int64) {
	b.mu.Lock()
	b.held -= n
	b.mu.Unlock()
	select {
	case b.freed <- struct{}{}:
	default:
	}
}

// inUse returns the bytes held.
func (b *byteBudget) inUse() int64 {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.held
}

// Bytes is what ev holds in memory until it is acknowledged, as the
// reader's byte budget counts it.
func (ev *Event) Bytes() int64 { return eventSize(ev) }
