package main

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
)

const (
	// produceInterval is the average pause between transactions: slow
	// enough to read along, fast enough to look busy.
	produceInterval = 700 * time.Millisecond

	// rollbackOneIn makes about one transaction in this many roll back.
	rollbackOneIn = 6

	// txTimeout bounds one transaction; a local server answers in
	// milliseconds.
	txTimeout = 10 * time.Second
)

// event is one outbox row.
type event struct {
	aggregateType, aggregateID, eventType string
	payload                               string // JSON
	headers                               string // JSON object, or "" for NULL
}

// order is an order on its way through the demo's little business process:
// created, then paid, then shipped, one transaction per step.
type order struct {
	n      int
	amount int // cents
	step   int
}

// producer writes outbox transactions the way an application would: each
// business step inserts its events in the same transaction as the change
// they describe (here there is no other change, only the events).
type producer struct {
	conn *pgx.Conn
	out  *console
	rng  *rand.Rand

	nextOrder int
	open      []*order // orders not yet shipped
	txs       int

	mu         sync.Mutex // guards the results, read after run returns
	committed  []string   // event ids in commit order
	rolledBack int        // transactions
	closed     bool
}

// newProducer connects to the database over TCP, like an application.
func newProducer(ctx context.Context, dbURL string, out *console) (*producer, error) {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, dbURL)
	if err != nil {
		return nil, fmt.Errorf("producer: connect: %w", err)
	}
	return &producer{
		conn:      conn,
		out:       out,
		rng:       rand.New(rand.NewPCG(rand.Uint64(), rand.Uint64())),
		nextOrder: 1001,
	}, nil
}

// run writes a transaction about every produceInterval until ctx is done,
// which is not an error. A failed transaction is: with a local server it
// means something is broken, and a commit that failed may have happened
// anyway, which would make the delivery check meaningless.
func (p *producer) run(ctx context.Context) error {
	for {
		// ±15% jitter so the stream does not tick like a metronome.
		pause := produceInterval + time.Duration(p.rng.Int64N(int64(produceInterval)*3/10)) - produceInterval*15/100
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(pause):
		}
		// Not ctx: a stop request must not cut a commit in half and
		// leave its outcome unknown.
		txCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), txTimeout)
		err := p.step(txCtx)
		cancel()
		if err != nil {
			return err
		}
	}
}

// step writes the next transaction: a new order, or the next step of an
// open one; now and then it rolls back instead of committing.
func (p *producer) step(ctx context.Context) error {
	o := p.pick()
	events := p.eventsFor(o)
	rollback := p.rng.IntN(rollbackOneIn) == 0
	p.txs++

	tx, ids, err := p.insert(ctx, events)
	if err != nil {
		return fmt.Errorf("transaction %d: %w", p.txs, err)
	}
	defer func() { _ = tx.Rollback(ctx) }() // no-op after commit
	desc := describe(events)
	if rollback {
		if err := tx.Rollback(ctx); err != nil {
			return fmt.Errorf("transaction %d: rollback: %w", p.txs, err)
		}
		p.mu.Lock()
		p.rolledBack++
		p.mu.Unlock()
		p.out.printf("producer | tx %d ROLLED BACK: %s (must never reach the stream)", p.txs, desc)
		return nil // the order retries this step later
	}
	// Committed while holding the console: the relay publishes within
	// milliseconds, and the consumer's lines must not come before the one
	// saying the transaction committed.
	p.out.locked(func(printf func(string, ...any)) {
		if err = tx.Commit(ctx); err == nil {
			printf("producer | tx %d committed: %s", p.txs, desc)
		}
	})
	if err != nil {
		return fmt.Errorf("transaction %d: commit (its outcome is unknown): %w", p.txs, err)
	}
	p.mu.Lock()
	p.committed = append(p.committed, ids...)
	p.mu.Unlock()
	o.step++
	if o.step == 3 {
		p.open = removeOrder(p.open, o)
	}
	return nil
}

// pick returns the order the next transaction is about, opening a new one
// when few are open, so that the steps of a few orders interleave.
func (p *producer) pick() *order {
	if len(p.open) == 0 || (len(p.open) < 4 && p.rng.IntN(3) == 0) {
		o := &order{n: p.nextOrder, amount: 500 + p.rng.IntN(20000)}
		p.nextOrder++
		p.open = append(p.open, o)
		return o
	}
	return p.open[p.rng.IntN(len(p.open))]
}

func removeOrder(open []*order, o *order) []*order {
	for i, x := range open {
		if x == o {
			return append(open[:i], open[i+1:]...)
		}
	}
	return open
}

// eventsFor returns the 1-3 events of o's next step. Some transactions
// carry a W3C traceparent, which the relay turns into a message header, as
// a traced request would.
func (p *producer) eventsFor(o *order) []event {
	orderID := fmt.Sprintf("o-%d", o.n)
	amount := fmt.Sprintf("%d.%02d", o.amount/100, o.amount%100)
	var events []event
	add := func(aggType, aggID, evType string, payload map[string]any) {
		data, _ := json.Marshal(payload) // maps of strings and ints always marshal
		events = append(events, event{aggregateType: aggType, aggregateID: aggID, eventType: evType, payload: string(data)})
	}
	switch o.step {
	case 0:
		add("order", orderID, "created", map[string]any{"order": orderID, "items": 1 + p.rng.IntN(4), "total": amount, "currency": "EUR"})
	case 1:
		paymentID := fmt.Sprintf("p-%d", o.n)
		add("payment", paymentID, "created", map[string]any{"payment": paymentID, "order": orderID, "amount": amount})
		add("payment", paymentID, "paid", map[string]any{"payment": paymentID, "order": orderID, "amount": amount})
		if p.rng.IntN(2) == 0 {
			add("order", orderID, "paid", map[string]any{"order": orderID, "payment": paymentID})
		}
	default:
		shipmentID := fmt.Sprintf("s-%d", o.n)
		carrier := []string{"dhl", "ups", "postnl"}[p.rng.IntN(3)]
		add("shipment", shipmentID, "created", map[string]any{"shipment": shipmentID, "order": orderID, "carrier": carrier})
		add("shipment", shipmentID, "shipped", map[string]any{"shipment": shipmentID, "order": orderID, "carrier": carrier})
		add("order", orderID, "shipped", map[string]any{"order": orderID, "shipment": shipmentID})
	}
	if p.rng.IntN(3) == 0 {
		traceparent := fmt.Sprintf("00-%016x%016x-%016x-01", p.rng.Uint64(), p.rng.Uint64(), p.rng.Uint64())
		headers, _ := json.Marshal(map[string]string{"traceparent": traceparent})
		for i := range events {
			events[i].headers = string(headers)
		}
	}
	return events
}

// insert begins a transaction and inserts events in order. It returns the
// open transaction and the ids PostgreSQL assigned.
func (p *producer) insert(ctx context.Context, events []event) (pgx.Tx, []string, error) {
	tx, err := p.conn.Begin(ctx)
	if err != nil {
		return nil, nil, fmt.Errorf("begin: %w", err)
	}
	ids := make([]string, 0, len(events))
	for _, e := range events {
		var headers *string
		if e.headers != "" {
			headers = &e.headers
		}
		var id string
		err := tx.QueryRow(ctx, `INSERT INTO events (aggregate_type, aggregate_id, event_type, payload, headers)
			VALUES ($1, $2, $3, $4::jsonb, $5::jsonb) RETURNING id::text`,
			e.aggregateType, e.aggregateID, e.eventType, e.payload, headers).Scan(&id)
		if err != nil {
			_ = tx.Rollback(ctx) // the error that matters is the insert's
			return nil, nil, fmt.Errorf("insert: %w", err)
		}
		ids = append(ids, id)
	}
	return tx, ids, nil
}

// describe lists events as aggregate_type/aggregate_id event_type.
func describe(events []event) string {
	parts := make([]string, len(events))
	for i, e := range events {
		parts[i] = e.aggregateType + "/" + e.aggregateID + " " + e.eventType
	}
	s := strings.Join(parts, ", ")
	if events[0].headers != "" {
		s += " [traceparent]"
	}
	return s
}

// close ends the connection; calling it again is a no-op.
func (p *producer) close() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return
	}
	p.closed = true
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_ = p.conn.Close(ctx) // nothing left to lose: every commit has returned
}

// results returns the ids of committed events in commit order and the
// number of rolled-back transactions.
func (p *producer) results() ([]string, int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]string(nil), p.committed...), p.rolledBack
}
