// Package backoff computes capped, jittered exponential delays between
// retries, so that many relays retrying at once do not hammer a recovering
// server in lockstep.
package backoff

import (
	"context"
	"math/rand/v2"
	"time"
)

// Backoff yields delays growing from Min to Max. The zero value is not
// usable; a Backoff is used by one goroutine.
type Backoff struct {
	Min, Max time.Duration
	attempt  int
}

// Next returns the delay before the next attempt: a random duration between
// half and all of min(Max, Min·2^attempt) ("equal jitter"), so it never
// collapses to zero and never exceeds Max.
func (b *Backoff) Next() time.Duration {
	ceiling := min(b.Min, b.Max)
	for i := 0; i < b.attempt && ceiling < b.Max; i++ {
		if ceiling > b.Max/2 {
			// Doubling would pass Max, or overflow for a huge Max.
			ceiling = b.Max
			break
		}
		ceiling *= 2
	}
	b.attempt++
	if ceiling <= 0 {
		return 0
	}
	half := ceiling / 2
	return half + rand.N(ceiling-half+1)
}

// Attempt returns how many delays have been handed out since the last Reset.
func (b *Backoff) Attempt() int { return b.attempt }

// Reset starts again from Min, after an attempt that succeeded.
func (b *Backoff) Reset() { b.attempt = 0 }

// Sleep waits for d or until ctx is done, and reports whether d passed.
func Sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}
