package orders

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.opentelemetry.io/otel/trace"
)

// ConsumerSchema creates the consumer's tables, in its own database: the
// ids of the messages it processed, and what it makes of them.
const ConsumerSchema = `CREATE TABLE IF NOT EXISTS processed_messages (
  message_id   text        PRIMARY KEY,   -- Nats-Msg-Id: the outbox row's id
  stream_seq   bigint      NOT NULL,
  traceparent  text,                      -- as it arrived
  processed_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS customer_totals (
  customer    text   PRIMARY KEY,
  orders      bigint NOT NULL,
  total_cents bigint NOT NULL
);`

// Processed is what the consumer did with one delivery of a message.
type Processed struct {
	MessageID string
	Seq       uint64 // stream sequence
	Delivery  uint64 // 1 for the first delivery, more for redeliveries
	// Traceparent is the header as it arrived; TraceID the trace of the
	// producer's context extracted from it ("" when none is valid).
	Traceparent string
	TraceID     string
	Event       OrderCreated
	// Duplicate is set for a message processed before: skipped, and
	// acknowledged.
	Duplicate bool
	// Err is why processing failed; the message is delivered again.
	Err error
}

// Consumer processes "order created" events idempotently: one transaction
// records the message id and applies the event, a message id seen before
// is skipped, and the message is acknowledged only after that transaction
// committed. A crash between commit and acknowledgement makes JetStream
// deliver the message again, and the id says it is done: every event
// counts once. Its fields are its dependencies and settings.
type Consumer struct {
	DB      *pgxpool.Pool // the consumer's own database (ConsumerSchema)
	JS      jetstream.JetStream
	Stream  string
	Durable string
	// AckWait is how long JetStream waits for an acknowledgement before
	// delivering a message again.
	AckWait time.Duration
	Tracer  trace.Tracer
	// Report, when set, is told of every delivery handled, from Run's
	// goroutine.
	Report func(Processed)
	// SkipAck, when set and true for a first delivery, leaves it
	// unacknowledged after its transaction committed, as a consumer
	// crashing right then would (the demo shows the deduplication with
	// it).
	SkipAck func(Processed) bool
}

// Run consumes until ctx is done, which is not an error.
func (c *Consumer) Run(ctx context.Context) error {
	cons, err := c.JS.CreateOrUpdateConsumer(ctx, c.Stream, jetstream.ConsumerConfig{
		Durable:       c.Durable,
		FilterSubject: "outbox.order.created",
		AckPolicy:     jetstream.AckExplicitPolicy,
		AckWait:       c.AckWait,
		DeliverPolicy: jetstream.DeliverAllPolicy,
	})
	if err != nil {
		return fmt.Errorf("create consumer %s on %s: %w", c.Durable, c.Stream, err)
	}
	it, err := cons.Messages()
	if err != nil {
		return fmt.Errorf("consume %s: %w", c.Stream, err)
	}
	stop := context.AfterFunc(ctx, it.Stop)
	defer stop()
	for {
		msg, err := it.Next()
		if errors.Is(err, jetstream.ErrMsgIteratorClosed) {
			return nil
		}
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			continue // a heartbeat missed or a reconnect; the iterator goes on
		}
		c.handle(ctx, msg)
	}
}

// handle processes one delivery and acknowledges it, or asks for it again.
func (c *Consumer) handle(ctx context.Context, msg jetstream.Msg) {
	p := Processed{MessageID: msg.Headers().Get(jetstream.MsgIDHeader), Traceparent: msg.Headers().Get("traceparent")}
	if md, err := msg.Metadata(); err == nil {
		p.Seq, p.Delivery = md.Sequence.Stream, md.NumDelivered
	}
	// The consumer's span continues the producer's trace: the request that
	// created the order, through the outbox, the relay and JetStream.
	ctx = Propagator().Extract(ctx, natsCarrier(msg.Headers()))
	if sc := trace.SpanContextFromContext(ctx); sc.IsValid() {
		p.TraceID = sc.TraceID().String()
	}
	ctx, span := c.Tracer.Start(ctx, "process order created", trace.WithSpanKind(trace.SpanKindConsumer))
	defer span.End()

	switch err := json.Unmarshal(msg.Data(), &p.Event); {
	case p.MessageID == "":
		p.Err = errors.New("no Nats-Msg-Id: cannot deduplicate")
	case err != nil:
		p.Err = fmt.Errorf("decode: %w", err)
	}
	if p.Err != nil {
		c.report(p)
		_ = msg.Term() // never processable; nothing more to do
		return
	}
	if err := c.apply(ctx, p); errors.Is(err, errDuplicate) {
		p.Duplicate = true
	} else if err != nil {
		p.Err = err
		c.report(p)
		_ = msg.NakWithDelay(time.Second) // if this fails too, AckWait redelivers
		return
	}
	c.report(p)
	if !p.Duplicate && c.SkipAck != nil && c.SkipAck(p) {
		return
	}
	// Only now, after the transaction committed. DoubleAck waits for the
	// server to confirm, so a lost acknowledgement shows as an error (and
	// the redelivery is a duplicate).
	_ = msg.DoubleAck(ctx)
}

// apply records the message id and applies the event in one transaction,
// or returns errDuplicate when the id was recorded before.
func (c *Consumer) apply(ctx context.Context, p Processed) error {
	tx, err := c.DB.Begin(ctx)
	if err != nil {
		return fmt.Errorf("begin: %w", err)
	}
	defer func() { _ = tx.Rollback(context.WithoutCancel(ctx)) }() // a no-op after Commit
	// Two consumers with the same message: the second waits on the first's
	// row and then inserts nothing.
	tag, err := tx.Exec(ctx, `INSERT INTO processed_messages (message_id, stream_seq, traceparent) VALUES ($1, $2, NULLIF($3, ''))
		ON CONFLICT (message_id) DO NOTHING`, p.MessageID, int64(p.Seq), p.Traceparent)
	if err != nil {
		return fmt.Errorf("record message: %w", err)
	}
	if tag.RowsAffected() == 0 {
		return errDuplicate
	}
	if _, err := tx.Exec(ctx, `INSERT INTO customer_totals (customer, orders, total_cents) VALUES ($1, 1, $2)
		ON CONFLICT (customer) DO UPDATE SET orders = customer_totals.orders + 1, total_cents = customer_totals.total_cents + EXCLUDED.total_cents`,
		p.Event.Customer, p.Event.TotalCents); err != nil {
		return fmt.Errorf("apply: %w", err)
	}
	if err := tx.Commit(ctx); err != nil {
		return fmt.Errorf("commit: %w", err)
	}
	return nil
}

func (c *Consumer) report(p Processed) {
	if c.Report != nil {
		c.Report(p)
	}
}

// natsCarrier lets a propagator read a message's headers. NATS header names
// are case-sensitive; the W3C ones are lower-case.
type natsCarrier nats.Header

func (c natsCarrier) Get(key string) string { return nats.Header(c).Get(key) }
func (c natsCarrier) Set(key, value string) { nats.Header(c).Set(key, value) }

func (c natsCarrier) Keys() []string {
	keys := make([]string, 0, len(c))
	for k := range c {
		keys = append(keys, k)
	}
	return keys
}
