// Package orders is a small service built on outbox-relay, end to end: an
// HTTP API that creates orders and, in the same transaction, writes an
// "order created" event with the outbox package (its trace context
// included), and a consumer that processes those events from JetStream
// idempotently: it records each message id in its own database in the
// transaction that applies the event, skips an id it has seen, and
// acknowledges only after that transaction committed.
//
// cmd/orders is the deployable program (orders serve, orders consume; see
// helm/examples/sidecar-app/values-orders.yaml for the relay as its
// sidecar), and `make demo-orders` runs it all on throwaway servers.
package orders

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgxpool"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"

	"github.com/outbox-relay/outbox-relay/outbox"
)

// Schema creates the service's own table; the outbox comes from
// outbox.Migrate.
const Schema = `CREATE TABLE IF NOT EXISTS orders (
  id          uuid        PRIMARY KEY,
  customer    text        NOT NULL,
  total_cents bigint      NOT NULL CHECK (total_cents >= 0),
  created_at  timestamptz NOT NULL DEFAULT now()
);`

// Propagator is how trace context travels: W3C trace context and baggage,
// in HTTP headers and in the outbox's headers alike.
func Propagator() propagation.TextMapPropagator {
	return propagation.NewCompositeTextMapPropagator(propagation.TraceContext{}, propagation.Baggage{})
}

// OrderCreated is the payload of an order's "created" event.
type OrderCreated struct {
	Order      string `json:"order"`
	Customer   string `json:"customer"`
	TotalCents int64  `json:"total_cents"`
}

// Created is the answer to POST /orders.
type Created struct {
	Order   string `json:"order"`
	EventID string `json:"event_id"`
	TraceID string `json:"trace_id"`
}

// Service is the HTTP API. Its fields are its dependencies.
type Service struct {
	DB     *pgxpool.Pool
	Outbox *outbox.Writer
	// Tracer makes the request's server span; the outbox writer puts its
	// context into the event's headers.
	Tracer trace.Tracer
}

// Handler serves POST /orders and GET /healthz.
func (s *Service) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("POST /orders", s.createOrder)
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(http.StatusNoContent) })
	return mux
}

// createOrder stores the order and its event in one transaction: both
// commit, or neither.
func (s *Service) createOrder(w http.ResponseWriter, r *http.Request) {
	ctx := Propagator().Extract(r.Context(), propagation.HeaderCarrier(r.Header))
	ctx, span := s.Tracer.Start(ctx, "POST /orders", trace.WithSpanKind(trace.SpanKindServer))
	defer span.End()

	var req struct {
		Customer   string `json:"customer"`
		TotalCents int64  `json:"total_cents"`
	}
	if err := json.NewDecoder(r.Body).Decode(&req); err != nil || req.Customer == "" || req.TotalCents < 0 {
		http.Error(w, `want {"customer": "...", "total_cents": 7000}`, http.StatusBadRequest)
		return
	}
	order := uuid.NewString()
	eventID, err := s.create(ctx, order, req.Customer, req.TotalCents)
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusCreated)
	_ = json.NewEncoder(w).Encode(Created{Order: order, EventID: eventID, TraceID: span.SpanContext().TraceID().String()}) // the client may have gone
}

func (s *Service) create(ctx context.Context, order, customer string, totalCents int64) (string, error) {
	tx, err := s.DB.Begin(ctx)
	if err != nil {
		return "", fmt.Errorf("begin: %w", err)
	}
	defer func() { _ = tx.Rollback(context.WithoutCancel(ctx)) }() // a no-op after Commit
	if _, err := tx.Exec(ctx, `INSERT INTO orders (id, customer, total_cents) VALUES ($1, $2, $3)`, order, customer, totalCents); err != nil {
		return "", fmt.Errorf("insert order: %w", err)
	}
	payload, err := json.Marshal(OrderCreated{Order: order, Customer: customer, TotalCents: totalCents})
	if err != nil {
		return "", err
	}
	ids, err := s.Outbox.Write(ctx, outbox.Pgx(tx), outbox.Event{
		AggregateType: "order", AggregateID: order, EventType: "created", Payload: payload,
	})
	if err != nil {
		return "", err
	}
	if err := tx.Commit(ctx); err != nil {
		return "", fmt.Errorf("commit: %w", err)
	}
	return ids[0], nil
}

// FormatCents renders an amount of cents as 70.00.
func FormatCents(c int64) string {
	return strconv.FormatInt(c/100, 10) + "." + fmt.Sprintf("%02d", c%100)
}

// errDuplicate marks a message whose id was processed before.
var errDuplicate = errors.New("already processed")
