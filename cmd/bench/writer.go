package main

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// payloadPad is the pad length that makes payload::text about size bytes:
// jsonb renders {"n": 123456, "pad": "xx…"} with 24 bytes besides the pad.
func payloadPad(size int) int { return max(0, size-24) }

// insertTxn is one transaction inserting rows first..last of tag's backlog,
// each with a payload padded by pad bytes.
func insertTxn(b *strings.Builder, tag string, first, last, pad int) {
	fmt.Fprintf(b, `BEGIN; INSERT INTO events (aggregate_type, aggregate_id, event_type, payload)
SELECT 'order', '%s-' || g, 'created', jsonb_build_object('n', g, 'pad', repeat('x', %d)) FROM generate_series(%d, %d) g; COMMIT;
`, tag, pad, first, last)
}

// backlogWrite describes how a backlog was written.
type backlogWrite struct {
	Seconds      float64 `json:"seconds"`
	EventsPerSec float64 `json:"events_per_sec"`
	Transactions int     `json:"transactions"`
	PayloadBytes float64 `json:"avg_payload_bytes"`
}

// writeBacklog commits n rows in transactions of shape rows each (the last
// may be smaller) over conns connections. Each round trip carries several
// transactions as one simple-protocol query with explicit BEGIN and COMMIT,
// so every transaction still commits on its own.
func writeBacklog(ctx context.Context, url string, n, shape, payload, conns int, tag string) (backlogWrite, error) {
	txns := (n + shape - 1) / shape
	perTrip := max(1, min(100, 1000/shape))
	pad := payloadPad(payload)
	var next atomic.Int64
	started := time.Now()
	var wg sync.WaitGroup
	errs := make(chan error, conns)
	for range min(conns, txns) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			conn, err := pgconn.Connect(ctx, url)
			if err != nil {
				errs <- err
				return
			}
			defer func() { _ = conn.Close(context.Background()) }() // done writing either way
			var b strings.Builder
			for ctx.Err() == nil {
				first := int(next.Add(int64(perTrip))) - perTrip
				if first >= txns {
					return
				}
				b.Reset()
				for t := first; t < min(first+perTrip, txns); t++ {
					insertTxn(&b, tag, t*shape+1, min((t+1)*shape, n), pad)
				}
				if _, err := conn.Exec(ctx, b.String()).ReadAll(); err != nil {
					errs <- fmt.Errorf("write backlog: %w", err)
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	if err := <-errs; err != nil {
		return backlogWrite{}, err
	}
	if err := ctx.Err(); err != nil {
		return backlogWrite{}, err
	}
	elapsed := time.Since(started)
	w := backlogWrite{Seconds: elapsed.Seconds(), EventsPerSec: float64(n) / elapsed.Seconds(), Transactions: txns}
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		return w, err
	}
	defer conn.Close(context.Background())
	var count int
	if err := conn.QueryRow(ctx, `SELECT count(*), avg(length(payload::text)) FROM events`).Scan(&count, &w.PayloadBytes); err != nil {
		return w, err
	}
	if count != n {
		return w, fmt.Errorf("write backlog: table holds %d rows, want %d", count, n)
	}
	return w, nil
}

// commitRecord is one event a producer committed: its number, and when the
// INSERT was sent and its commit returned (Unix nanoseconds).
type commitRecord struct {
	seq             int
	sent, committed int64
}

// production is what a live producer wrote.
type production struct {
	records []commitRecord
	elapsed time.Duration
}

// produce commits one-row transactions over conns connections for d: at
// rate per second (open loop, paced every millisecond), or as fast as the
// connections go when rate is 0. Aggregate ids are tag-<seq>.
func produce(ctx context.Context, url string, rate int, d time.Duration, conns, payload int, tag string) (production, error) {
	pad := strings.Repeat("x", payloadPad(payload))
	workers := make([]*pgx.Conn, conns)
	for i := range workers {
		c, err := pgx.Connect(ctx, url)
		if err != nil {
			return production{}, err
		}
		defer c.Close(context.Background())
		workers[i] = c
	}
	const stmt = `INSERT INTO events (aggregate_type, aggregate_id, event_type, payload) VALUES ('order', $1, 'created', $2::jsonb)`

	jobs := make(chan int, 1<<14)
	results := make([][]commitRecord, conns)
	errs := make(chan error, conns)
	// failed is closed when a worker gives up, so the pacer stops too.
	failed := make(chan struct{})
	var failOnce sync.Once
	var wg sync.WaitGroup
	started := time.Now()
	deadline := started.Add(d)
	var seq atomic.Int64
	for i, c := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			take := func() (int, bool) {
				if rate > 0 {
					s, ok := <-jobs
					return s, ok
				}
				if time.Now().After(deadline) || ctx.Err() != nil {
					return 0, false
				}
				return int(seq.Add(1) - 1), true
			}
			for {
				s, ok := take()
				if !ok {
					return
				}
				sent := time.Now().UnixNano()
				_, err := c.Exec(ctx, stmt, fmt.Sprintf("%s-%d", tag, s), fmt.Sprintf(`{"n": %d, "pad": "%s"}`, s, pad))
				if err != nil {
					errs <- fmt.Errorf("produce: %w", err)
					failOnce.Do(func() { close(failed) })
					return
				}
				results[i] = append(results[i], commitRecord{seq: s, sent: sent, committed: time.Now().UnixNano()})
			}
		}()
	}
	if rate > 0 {
		total := int(float64(rate) * d.Seconds())
		sent := 0
	pace:
		for sent < total {
			due := min(total, int(float64(rate)*time.Since(started).Seconds()))
			for ; sent < due; sent++ {
				select {
				case jobs <- sent:
				case <-failed:
					break pace
				case <-ctx.Done():
					break pace
				}
			}
			time.Sleep(time.Millisecond)
		}
		close(jobs)
	}
	wg.Wait()
	close(errs)
	p := production{elapsed: time.Since(started)}
	for _, r := range results {
		p.records = append(p.records, r...)
	}
	if err := <-errs; err != nil {
		return p, err
	}
	return p, ctx.Err()
}
