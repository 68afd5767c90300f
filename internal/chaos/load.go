package chaos

import (
	"context"
	"fmt"
	"math/rand/v2"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/outbox-relay/outbox-relay/internal/e2e"
)

// LoadOptions shape the writers' traffic.
type LoadOptions struct {
	// Writers is how many goroutines write concurrently.
	Writers int
	// Rate is the events per second aimed at, over all writers, counting
	// rolled-back ones. Writers pace themselves with random pauses around it.
	Rate float64
	// Seed and Name derive each writer's random stream.
	Seed uint64
	Name string
}

// LoadStats counts what the writers did. Events and Transactions count the
// commits the writers saw succeed; a commit whose outcome was lost with the
// connection (a server crash at that moment) is in Failed, and whether it
// committed is for the commit log to say.
type LoadStats struct {
	Transactions     int64 `json:"transactions"`
	Events           int64 `json:"events"`
	RolledBack       int64 `json:"rolled_back"`
	RolledBackEvents int64 `json:"rolled_back_events"`
	OtherWrites      int64 `json:"other_writes"`
	OtherRows        int64 `json:"other_rows"`
	Failed           int64 `json:"failed"`
}

// Load is writers committing outbox transactions of 1, 10 and 100 rows,
// rolling some back, and writing to a table outside the outbox, until
// stopped.
type Load struct {
	stop     chan struct{}
	stopOnce sync.Once
	wg       sync.WaitGroup

	transactions, events         atomic.Int64
	rolledBack, rolledBackEvents atomic.Int64
	otherWrites, otherRows       atomic.Int64
	failed                       atomic.Int64
}

// sizes are the transaction sizes, drawn with the weights in sizeWeights.
var (
	sizes       = []int{1, 10, 100}
	sizeWeights = []float64{0.5, 0.35, 0.15}
)

const (
	rollbackShare = 0.1  // of outbox transactions
	otherShare    = 0.08 // of all writes: a transaction on other_table only
)

// StartLoad starts opts.Writers writers on w.
func StartLoad(w *e2e.Writer, opts LoadOptions) *Load {
	l := &Load{stop: make(chan struct{})}
	perWriter := opts.Rate / float64(max(1, opts.Writers))
	for i := range max(1, opts.Writers) {
		rng := RNG(opts.Seed, fmt.Sprintf("%s/writer-%d", opts.Name, i))
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			l.write(w, rng, i, perWriter)
		}()
	}
	return l
}

// write commits transactions until the load is stopped. A stop is noticed
// only between transactions: a transaction cancelled while its COMMIT is on
// the way may still commit on the server after the client gave up on it,
// and so after the commit log was read for the final comparison.
func (l *Load) write(w *e2e.Writer, rng *rand.Rand, writer int, rate float64) {
	filler := strings.Repeat("f", 200)
	for n := 0; ; n++ {
		select {
		case <-l.stop:
			return
		default:
		}
		wctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
		var err error
		written := 1
		if rng.Float64() < otherShare {
			rows := 1 + rng.IntN(50)
			if err = w.WriteOther(wctx, rows, filler); err == nil {
				l.otherWrites.Add(1)
				l.otherRows.Add(int64(rows))
			}
		} else {
			size := pick(rng)
			written = size
			rollback := rng.Float64() < rollbackShare
			events := e2e.SampleEvents(size, 64+rng.IntN(400), fmt.Sprintf("w%d-%d", writer, n))
			if _, err = w.Write(wctx, events, rollback); err == nil {
				if rollback {
					l.rolledBack.Add(1)
					l.rolledBackEvents.Add(int64(size))
				} else {
					l.transactions.Add(1)
					l.events.Add(int64(size))
				}
			}
		}
		cancel()
		pause := time.Duration(float64(written) / rate * float64(time.Second) * (0.5 + rng.Float64()))
		if err != nil {
			// A server is down or restarting: try again a little later.
			l.failed.Add(1)
			pause = Between(rng, 50*time.Millisecond, 300*time.Millisecond)
		}
		select {
		case <-l.stop:
			return
		case <-time.After(pause):
		}
	}
}

func pick(rng *rand.Rand) int {
	r := rng.Float64()
	for i, w := range sizeWeights {
		if r < w {
			return sizes[i]
		}
		r -= w
	}
	return sizes[len(sizes)-1]
}

// Stats returns the counts so far.
func (l *Load) Stats() LoadStats {
	return LoadStats{
		Transactions:     l.transactions.Load(),
		Events:           l.events.Load(),
		RolledBack:       l.rolledBack.Load(),
		RolledBackEvents: l.rolledBackEvents.Load(),
		OtherWrites:      l.otherWrites.Load(),
		OtherRows:        l.otherRows.Load(),
		Failed:           l.failed.Load(),
	}
}

// Stop lets every writer finish the transaction it is in, waits for them
// and returns the final counts: once it returns, whatever committed is in
// the commit log. Calling it again is harmless.
func (l *Load) Stop() LoadStats {
	l.stopOnce.Do(func() { close(l.stop) })
	l.wg.Wait()
	return l.Stats()
}
