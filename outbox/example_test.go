package outbox_test

import (
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"log"
	"os"

	"github.com/jackc/pgx/v5/pgxpool"
	"go.opentelemetry.io/otel/baggage"
	"go.opentelemetry.io/otel/trace"

	"github.com/outbox-relay/outbox-relay/outbox"
)

// A service writes its business change and the event describing it in one
// transaction: both commit, or neither does.
func Example() {
	ctx := context.Background()
	pool, err := pgxpool.New(ctx, os.Getenv("DATABASE_URL"))
	if err != nil {
		log.Fatal(err)
	}
	defer pool.Close()
	// Once, with the service's migrations: the outbox table and the
	// publication the relay reads it through.
	if err := outbox.Migrate(ctx, outbox.Pgx(pool), outbox.Plain, true); err != nil {
		log.Fatal(err)
	}

	w, err := outbox.New()
	if err != nil {
		log.Fatal(err)
	}
	tx, err := pool.Begin(ctx)
	if err != nil {
		log.Fatal(err)
	}
	defer func() { _ = tx.Rollback(ctx) }() // a no-op after Commit
	if _, err := tx.Exec(ctx, `INSERT INTO orders (id, total) VALUES (1001, 70)`); err != nil {
		log.Fatal(err)
	}
	ids, err := w.Write(ctx, outbox.Pgx(tx), outbox.Event{
		AggregateType: "order", AggregateID: "1001", EventType: "created",
		Payload: json.RawMessage(`{"order": 1001, "total": 70}`),
	})
	if err != nil {
		log.Fatal(err)
	}
	if err := tx.Commit(ctx); err != nil {
		log.Fatal(err)
	}
	fmt.Println("events written:", len(ids))
	// Output: events written: 1
}

// With database/sql, wrap the *sql.Tx with SQL. Any PostgreSQL driver
// works; this one is pgx's ("github.com/jackc/pgx/v5/stdlib").
func ExampleSQL() {
	ctx := context.Background()
	db, err := sql.Open("pgx", os.Getenv("DATABASE_URL"))
	if err != nil {
		log.Fatal(err)
	}
	defer db.Close()
	w, err := outbox.New()
	if err != nil {
		log.Fatal(err)
	}
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		log.Fatal(err)
	}
	defer func() { _ = tx.Rollback() }() // a no-op after Commit
	if _, err := tx.ExecContext(ctx, `INSERT INTO orders (id, total) VALUES (1002, 15)`); err != nil {
		log.Fatal(err)
	}
	// Several events in one call are one statement, one round trip.
	ids, err := w.Write(ctx, outbox.SQL(tx),
		outbox.Event{AggregateType: "order", AggregateID: "1002", EventType: "created", Payload: json.RawMessage(`{"total": 15}`)},
		outbox.Event{AggregateType: "order", AggregateID: "1002", EventType: "paid", Payload: json.RawMessage(`{"amount": 15}`)},
	)
	if err != nil {
		log.Fatal(err)
	}
	if err := tx.Commit(); err != nil {
		log.Fatal(err)
	}
	fmt.Println("events written:", len(ids))
	// Output: events written: 2
}

// The writer takes the W3C trace context and baggage of the request's
// context into the event's headers, with the OpenTelemetry API alone; the
// relay puts them on the message, so the consumer continues the trace.
func ExampleWriter_Write_traceContext() {
	ctx := context.Background()
	pool, err := pgxpool.New(ctx, os.Getenv("DATABASE_URL"))
	if err != nil {
		log.Fatal(err)
	}
	defer pool.Close()

	// What a service's tracing middleware leaves in the request's context.
	traceID, _ := trace.TraceIDFromHex("4bf92f3577b34da6a3ce929d0e0e4736")
	spanID, _ := trace.SpanIDFromHex("00f067aa0ba902b7")
	ctx = trace.ContextWithSpanContext(ctx, trace.NewSpanContext(trace.SpanContextConfig{
		TraceID: traceID, SpanID: spanID, TraceFlags: trace.FlagsSampled,
	}))
	tenant, _ := baggage.NewMember("tenant", "acme")
	bag, _ := baggage.New(tenant)
	ctx = baggage.ContextWithBaggage(ctx, bag)

	w, err := outbox.New()
	if err != nil {
		log.Fatal(err)
	}
	ids, err := w.Write(ctx, outbox.Pgx(pool), outbox.Event{
		AggregateType: "order", AggregateID: "1003", EventType: "shipped", Payload: json.RawMessage(`{}`),
	})
	if err != nil {
		log.Fatal(err)
	}
	var headers string
	if err := pool.QueryRow(ctx, `SELECT headers::text FROM events WHERE id = $1`, ids[0]).Scan(&headers); err != nil {
		log.Fatal(err)
	}
	fmt.Println(headers)
	// Output: {"baggage": "tenant=acme", "traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"}
}

// With ModeInsertDelete the rows are deleted in the transaction that wrote
// them: the table never grows, and the relay still publishes every event,
// since it reads the inserts from the WAL.
func ExampleWithMode() {
	ctx := context.Background()
	pool, err := pgxpool.New(ctx, os.Getenv("DATABASE_URL"))
	if err != nil {
		log.Fatal(err)
	}
	defer pool.Close()
	w, err := outbox.New(outbox.WithMode(outbox.ModeInsertDelete))
	if err != nil {
		log.Fatal(err)
	}
	tx, err := pool.Begin(ctx)
	if err != nil {
		log.Fatal(err)
	}
	defer func() { _ = tx.Rollback(ctx) }() // a no-op after Commit
	ids, err := w.Write(ctx, outbox.Pgx(tx), outbox.Event{
		AggregateType: "order", AggregateID: "1004", EventType: "cancelled", Payload: json.RawMessage(`{}`),
	})
	if err != nil {
		log.Fatal(err)
	}
	if err := tx.Commit(ctx); err != nil {
		log.Fatal(err)
	}
	var left int
	if err := pool.QueryRow(ctx, `SELECT count(*) FROM events WHERE id = $1`, ids[0]).Scan(&left); err != nil {
		log.Fatal(err)
	}
	fmt.Println("rows left in the table:", left)
	// Output: rows left in the table: 0
}

// A partitioned outbox, in a schema of its own: Migrate creates the table in
// the first schema of the search path.
func ExampleMigrate() {
	ctx := context.Background()
	pool, err := pgxpool.New(ctx, os.Getenv("DATABASE_URL"))
	if err != nil {
		log.Fatal(err)
	}
	defer pool.Close()
	tx, err := pool.Begin(ctx)
	if err != nil {
		log.Fatal(err)
	}
	defer func() { _ = tx.Rollback(ctx) }() // a no-op after Commit
	if _, err := tx.Exec(ctx, `CREATE SCHEMA IF NOT EXISTS billing; SET LOCAL search_path TO billing`); err != nil {
		log.Fatal(err)
	}
	if err := outbox.Migrate(ctx, outbox.Pgx(tx), outbox.Partitioned, false); err != nil {
		log.Fatal(err)
	}
	if err := tx.Commit(ctx); err != nil {
		log.Fatal(err)
	}
	var key string
	if err := pool.QueryRow(ctx, `SELECT pg_get_partkeydef('billing.events'::regclass)`).Scan(&key); err != nil {
		log.Fatal(err)
	}
	fmt.Println(key)
	// Output: RANGE (created_at)
}
