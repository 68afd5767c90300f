package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	mrand "math/rand/v2"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"

	"github.com/outbox-relay/outbox-relay/examples/orders"
	"github.com/outbox-relay/outbox-relay/internal/e2e"
	"github.com/outbox-relay/outbox-relay/internal/testenv"
	"github.com/outbox-relay/outbox-relay/outbox"
)

const (
	// requestInterval is the average pause between two orders.
	requestInterval = 400 * time.Millisecond
	// forgetAckOneIn makes the consumer leave about one message in this
	// many unacknowledged after processing it, as if it crashed right
	// then: JetStream delivers it again after ordersAckWait, and the
	// consumer skips it by its id.
	forgetAckOneIn = 4
	ordersAckWait  = time.Second
	// consumerDB is the consumer's own database.
	consumerDB = "consumer"
)

// request is one POST /orders the demo's client made, and what came of it.
type request struct {
	n        int
	traceID  string // of the traceparent the client sent
	customer string
	created  orders.Created
}

// ordersRun is the example service's part of the demo.
type ordersRun struct {
	out *console

	mu        sync.Mutex
	requests  []request
	applied   []orders.Processed // first processing of each message, in order
	dupes     int                // deliveries skipped as duplicates
	forgotten int                // acknowledgements left out on purpose
}

// runOrders runs examples/orders against the relay runDemo started: the
// HTTP service writing orders and their events with the outbox package, a
// client sending it traced requests, and the idempotent consumer. It stops
// what it started, the relay included, and checks that every request's
// event was processed once, carrying the request's trace context, and
// that the relay exported a span linked to each request's trace.
func runOrders(ctx context.Context, opts options, out *console, pg *testenv.Postgres, dbURL, natsURL string, relay *relayProcess, spans *e2e.OTLPReceiver) (result, error) {
	run := &ordersRun{out: out}
	setupCtx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if err := pg.ExecContext(setupCtx, demoDB, orders.Schema); err != nil {
		return result{}, err
	}
	if err := pg.ExecContext(setupCtx, "postgres", "CREATE DATABASE "+consumerDB); err != nil {
		return result{}, err
	}
	if err := pg.ExecContext(setupCtx, consumerDB, orders.ConsumerSchema); err != nil {
		return result{}, err
	}
	svcPool, err := pgxpool.New(setupCtx, dbURL)
	if err != nil {
		return result{}, fmt.Errorf("service: connect: %w", err)
	}
	defer svcPool.Close()
	consPool, err := pgxpool.New(setupCtx, pg.URL(consumerDB))
	if err != nil {
		return result{}, fmt.Errorf("consumer: connect: %w", err)
	}
	defer consPool.Close()

	// The service: what cmd/orders serve runs, in-process.
	w, err := outbox.New()
	if err != nil {
		return result{}, err
	}
	tp := sdktrace.NewTracerProvider() // spans for their context; not exported
	svc := &orders.Service{DB: svcPool, Outbox: w, Tracer: tp.Tracer("orders")}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return result{}, err
	}
	srv := &http.Server{Handler: svc.Handler(), ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = srv.Serve(ln) }() // ends with Shutdown
	defer func() { _ = srv.Close() }()
	serviceURL := "http://" + ln.Addr().String()

	// The consumer: what cmd/orders consume runs, in-process.
	nc, err := nats.Connect(natsURL, nats.Name("orders-demo-consumer"))
	if err != nil {
		return result{}, fmt.Errorf("consumer: connect to %s: %w", natsURL, err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return result{}, err
	}
	consCtx, stopConsumer := context.WithCancel(context.WithoutCancel(ctx))
	defer stopConsumer()
	rng := mrand.New(mrand.NewPCG(mrand.Uint64(), mrand.Uint64()))
	cons := &orders.Consumer{
		DB: consPool, JS: js, Stream: streamName, Durable: "orders-consumer", AckWait: ordersAckWait, Tracer: tp.Tracer("orders-consumer"),
		Report: run.processed,
		SkipAck: func(p orders.Processed) bool {
			if rng.IntN(forgetAckOneIn) != 0 {
				return false
			}
			run.forgot(p)
			return true
		},
	}
	consDone := make(chan error, 1)
	go func() { consDone <- cons.Run(consCtx) }()

	out.printf("demo: orders service on %s; a client sends it an order every ~%s, each request traced (W3C traceparent)", serviceURL, requestInterval)
	clientCtx, stopClient := context.WithCancel(ctx)
	defer stopClient()
	clientDone := make(chan error, 1)
	go func() { clientDone <- run.client(clientCtx, serviceURL) }()

	var elapsed <-chan time.Time
	if opts.duration > 0 {
		timer := time.NewTimer(opts.duration)
		defer timer.Stop()
		elapsed = timer.C
	}
	var failure error
	select {
	case <-ctx.Done():
		out.printf("demo: interrupted")
	case <-elapsed:
		out.printf("demo: %s elapsed", opts.duration)
	case err := <-clientDone:
		failure = fmt.Errorf("client: %w", err)
		clientDone = nil // received
	case <-relay.done:
		failure = relay.unexpectedExit()
	case err := <-consDone:
		failure = fmt.Errorf("consumer stopped unexpectedly: %w", err)
		consDone = nil // received
	}
	out.printf("demo: stopping the client")
	stopClient()
	if clientDone != nil {
		if err := <-clientDone; err != nil && failure == nil {
			failure = fmt.Errorf("client: %w", err)
		}
	}
	if failure == nil {
		// Every order processed, and every message left unacknowledged
		// delivered again and skipped.
		if err := run.waitDrained(drainTimeout); err != nil {
			out.printf("demo: %v", err) // the summary tells what is missing
		}
	}
	out.printf("demo: stopping relay (SIGTERM)")
	if err := relay.stop(relayStopTimeout); err != nil {
		failure = errors.Join(failure, err)
	}
	out.printf("demo: stopping consumer")
	stopConsumer()
	if consDone != nil {
		if err := <-consDone; err != nil && failure == nil {
			failure = fmt.Errorf("consumer: %w", err)
		}
	}

	res, traceProblem := run.check(spans)
	if failure == nil && traceProblem != nil {
		out.printf("demo: %v", traceProblem)
		if opts.duration > 0 {
			failure = errReported
		}
	}
	return res, failure
}

// client sends POST /orders about every requestInterval until ctx is done,
// each with a new sampled W3C traceparent, as a traced caller would.
func (r *ordersRun) client(ctx context.Context, serviceURL string) error {
	customers := []string{"acme", "globex", "initech", "umbrella"}
	rng := mrand.New(mrand.NewPCG(mrand.Uint64(), mrand.Uint64()))
	for n := 1; ; n++ {
		pause := requestInterval + time.Duration(rng.Int64N(int64(requestInterval)/2)) - requestInterval/4
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(pause):
		}
		var ids [24]byte
		_, _ = rand.Read(ids[:]) // never fails
		traceID, spanID := hex.EncodeToString(ids[:16]), hex.EncodeToString(ids[16:])
		req := request{n: n, traceID: traceID, customer: customers[rng.IntN(len(customers))]}
		body, _ := json.Marshal(map[string]any{"customer": req.customer, "total_cents": 500 + rng.IntN(20000)}) // always marshals
		// Not ctx: a stop must not leave an order's outcome unknown.
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
		hreq, err := http.NewRequestWithContext(rctx, http.MethodPost, serviceURL+"/orders", bytes.NewReader(body))
		if err != nil {
			cancel()
			return err
		}
		hreq.Header.Set("traceparent", "00-"+traceID+"-"+spanID+"-01")
		hreq.Header.Set("baggage", fmt.Sprintf("demo.request=%d", n))
		resp, err := http.DefaultClient.Do(hreq)
		if err == nil {
			if resp.StatusCode != http.StatusCreated {
				err = fmt.Errorf("POST /orders: %s", resp.Status)
			} else {
				err = json.NewDecoder(resp.Body).Decode(&req.created)
			}
			resp.Body.Close()
		}
		cancel()
		if err != nil {
			return fmt.Errorf("request %d: %w", n, err)
		}
		r.mu.Lock()
		r.requests = append(r.requests, req)
		r.mu.Unlock()
		r.out.printf("client   | request %d: POST /orders -> 201, order %s of %s, trace %s", n, short(req.created.Order), req.customer, traceID)
	}
}

// processed records and prints what the consumer did with a delivery.
func (r *ordersRun) processed(p orders.Processed) {
	r.mu.Lock()
	defer r.mu.Unlock()
	switch {
	case p.Err != nil:
		r.out.printf("consumer | message %s (seq %d): %v; delivered again later", short(p.MessageID), p.Seq, p.Err)
	case p.Duplicate:
		r.dupes++
		r.out.printf("consumer | message %s (seq %d) delivered again (delivery %d): already processed, skipped and acknowledged", short(p.MessageID), p.Seq, p.Delivery)
	default:
		r.applied = append(r.applied, p)
		r.out.printf("consumer | order %s of %s, %s: processed in one transaction with its message id %s; trace %s arrived",
			short(p.Event.Order), p.Event.Customer, orders.FormatCents(p.Event.TotalCents), short(p.MessageID), p.TraceID)
	}
}

// forgot counts, and says, that the consumer left a processed message
// unacknowledged on purpose.
func (r *ordersRun) forgot(p orders.Processed) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.forgotten++
	r.out.printf("consumer | (leaving message %s unacknowledged, as a consumer crashing after its commit would)", short(p.MessageID))
}

// waitDrained waits until every request's event was processed and every
// message left unacknowledged was delivered again.
func (r *ordersRun) waitDrained(timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		r.mu.Lock()
		done := len(r.applied) >= len(r.requests) && r.dupes >= r.forgotten
		applied, requests := len(r.applied), len(r.requests)
		r.mu.Unlock()
		if done {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("the consumer processed %d of %d orders within %s", applied, requests, timeout)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// check compares what the consumer processed with what the client
// requested: each request's event once, in order (the result), carrying the
// request's trace (the error), and the relay's spans linked to the
// requests' traces.
func (r *ordersRun) check(spans *e2e.OTLPReceiver) (result, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	var res result
	traceOf := map[string]string{}
	for _, req := range r.requests {
		res.committed = append(res.committed, req.created.EventID)
		traceOf[req.created.EventID] = req.traceID
	}
	var problems []string
	for _, p := range r.applied {
		res.received = append(res.received, p.MessageID)
		if want, ok := traceOf[p.MessageID]; ok && p.TraceID != want {
			problems = append(problems, fmt.Sprintf("event %s arrived with trace %q, its request had %s", p.MessageID, p.TraceID, want))
		}
	}
	requested := map[string]bool{}
	for _, id := range traceOf {
		requested[id] = true
	}
	linked := 0
	for _, s := range spans.Spans() {
		for _, l := range s.GetLinks() {
			if requested[hex.EncodeToString(l.GetTraceId())] {
				linked++
			}
		}
	}
	if linked != len(r.requests) {
		problems = append(problems, fmt.Sprintf("the relay exported %d spans linked to a request's trace, want %d", linked, len(r.requests)))
	}
	if len(problems) > 0 {
		return res, fmt.Errorf("trace context NOT as expected: %s", strings.Join(problems, "; "))
	}
	if len(r.requests) > 0 {
		r.out.printf("demo: %d orders, each event processed once with its request's trace context; %d deliveries skipped as duplicates; the relay exported %d spans, each linked to its request's trace",
			len(r.requests), r.dupes, linked)
	}
	return res, nil
}

// short abbreviates an id for the console: its last 8 characters, the
// random end of a UUIDv7 (its start is the time, alike in a demo's ids).
func short(id string) string {
	if len(id) > 8 {
		return id[len(id)-8:]
	}
	return id
}
