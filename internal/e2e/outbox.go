// Package e2e holds what end-to-end tests of the relay share: an outbox
// writer that records commit order, a reader of the stream, the relay binary
// run as a child process, and the verdict comparing stream and table.
package e2e

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/outbox-relay/outbox-relay/internal/testenv"
)

// RepoRoot returns the repository's root directory.
func RepoRoot() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Clean(filepath.Join(filepath.Dir(file), "..", ".."))
}

// testSchema adds, next to the shipped outbox DDL, what tests need: a commit
// log whose tickets are drawn under a lock held until commit, so ticket order
// is commit order, and an unrelated table.
const testSchema = `
CREATE SEQUENCE commit_ticket;
CREATE TABLE commit_log (ticket bigint PRIMARY KEY, ids uuid[] NOT NULL);
CREATE TABLE other_table (id bigserial PRIMARY KEY, note text, filler text);
`

// SetupOutbox creates the outbox table from sql/outbox.sql and the test
// tables in database db.
func SetupOutbox(t testing.TB, pg *testenv.Postgres, db string) {
	t.Helper()
	ddl, err := os.ReadFile(filepath.Join(RepoRoot(), "sql", "outbox.sql"))
	if err != nil {
		t.Fatalf("read outbox DDL: %v", err)
	}
	pg.Exec(t, db, string(ddl)+testSchema)
}

// Event is one row to write.
type Event struct {
	AggregateType string
	AggregateID   string
	EventType     string
	Payload       string
	Headers       string // JSON object or "" for NULL
	// CreatedAt is the created_at value (timestamptz text); "" for now().
	CreatedAt string
	// Message, when set, writes the event as a transactional logical
	// decoding message with this prefix instead of a row: its content is a
	// JSON object of the row's columns.
	Message string
}

// Writer writes outbox transactions and records their commit order.
type Writer struct {
	pool *pgxpool.Pool
	// eventType is the name of the event type column.
	eventType string
}

// SetEventTypeColumn makes later writes use name for the event type column
// (the outbox's column renamed). Call it while no write is running.
func (w *Writer) SetEventTypeColumn(name string) { w.eventType = name }

// NewWriter connects a pool of up to conns connections to url.
func NewWriter(t testing.TB, url string, conns int) *Writer {
	t.Helper()
	cfg, err := pgxpool.ParseConfig(url)
	if err != nil {
		t.Fatalf("parse writer url: %v", err)
	}
	cfg.MaxConns = int32(conns)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		t.Fatalf("connect writer: %v", err)
	}
	t.Cleanup(pool.Close)
	return &Writer{pool: pool, eventType: "event_type"}
}

// Write inserts events in one transaction and commits it, or rolls it back
// when rollback is set. Committed transactions are recorded in commit_log in
// commit order. It returns the ids of the rows.
func (w *Writer) Write(ctx context.Context, events []Event, rollback bool) ([]string, error) {
	return w.write(ctx, events, rollback, false)
}

// WriteDeleted inserts events and deletes them again in one transaction, the
// outbox pattern that keeps the table empty, and commits it; the commit is
// recorded as Write records it.
func (w *Writer) WriteDeleted(ctx context.Context, events []Event) ([]string, error) {
	return w.write(ctx, events, false, true)
}

func (w *Writer) write(ctx context.Context, events []Event, rollback, deleteAgain bool) ([]string, error) {
	tx, err := w.pool.Begin(ctx)
	if err != nil {
		return nil, err
	}
	defer func() { _ = tx.Rollback(context.WithoutCancel(ctx)) }() // no-op after commit
	ids, err := writeEvents(ctx, tx, events, w.eventType)
	if err != nil {
		return nil, err
	}
	if deleteAgain {
		if _, err := tx.Exec(ctx, `DELETE FROM events WHERE id = ANY ($1::uuid[])`, ids); err != nil {
			return nil, err
		}
	}
	if rollback {
		return ids, tx.Rollback(ctx)
	}
	// The lock is held until the commit record is written, so tickets are
	// drawn in commit order.
	if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock(727274)`); err != nil {
		return nil, err
	}
	if _, err := tx.Exec(ctx, `INSERT INTO commit_log (ticket, ids) VALUES (nextval('commit_ticket'), $1::uuid[])`, ids); err != nil {
		return nil, err
	}
	return ids, tx.Commit(ctx)
}

// writeEvents writes events in order: runs of rows with one INSERT each,
// messages one by one.
func writeEvents(ctx context.Context, tx pgx.Tx, events []Event, eventType string) ([]string, error) {
	var ids []string
	for len(events) > 0 {
		n := 1
		for n < len(events) && (events[n].Message == "") == (events[0].Message == "") {
			n++
		}
		var more []string
		var err error
		if events[0].Message == "" {
			more, err = insertEvents(ctx, tx, events[:n], eventType)
		} else {
			more, err = emitMessages(ctx, tx, events[:n])
		}
		if err != nil {
			return nil, err
		}
		ids, events = append(ids, more...), events[n:]
	}
	return ids, nil
}

// emitMessages writes each event as pg_logical_emit_message(true, prefix,
// content), content a JSON object with the outbox's default column names.
func emitMessages(ctx context.Context, tx pgx.Tx, events []Event) ([]string, error) {
	ids := make([]string, 0, len(events))
	for _, e := range events {
		var headers, created *string
		if e.Headers != "" {
			headers = &e.Headers
		}
		if e.CreatedAt != "" {
			created = &e.CreatedAt
		}
		var id string
		err := tx.QueryRow(ctx, `SELECT g.id::text FROM (SELECT gen_random_uuid() AS id) g,
			LATERAL pg_logical_emit_message(true, $1, jsonb_build_object('id', g.id, 'aggregate_type', $2::text, 'aggregate_id', $3::text,
				'event_type', $4::text, 'payload', $5::jsonb, 'headers', $6::jsonb, 'created_at', COALESCE($7::timestamptz, now()))::text)`,
			e.Message, e.AggregateType, e.AggregateID, e.EventType, e.Payload, headers, created).Scan(&id)
		if err != nil {
			return nil, err
		}
		ids = append(ids, id)
	}
	return ids, nil
}

func insertEvents(ctx context.Context, tx pgx.Tx, events []Event, eventType string) ([]string, error) {
	if len(events) == 0 {
		return nil, nil
	}
	types := make([]string, len(events))
	aggIDs := make([]string, len(events))
	evTypes := make([]string, len(events))
	payloads := make([]string, len(events))
	headers := make([]*string, len(events))
	created := make([]*string, len(events))
	for i, e := range events {
		types[i], aggIDs[i], evTypes[i], payloads[i] = e.AggregateType, e.AggregateID, e.EventType, e.Payload
		if e.Headers != "" {
			h := e.Headers
			headers[i] = &h
		}
		if e.CreatedAt != "" {
			c := e.CreatedAt
			created[i] = &c
		}
	}
	// One statement; WITH ORDINALITY keeps the rows in the order given, so
	// insertion order is the order of events.
	rows, err := tx.Query(ctx, `INSERT INTO events (aggregate_type, aggregate_id, `+pgx.Identifier{eventType}.Sanitize()+`, payload, headers, created_at)
		SELECT t, a, e, p::jsonb, h::jsonb, COALESCE(c::timestamptz, now())
			FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[])
			WITH ORDINALITY AS u(t, a, e, p, h, c, n) ORDER BY n
		RETURNING id::text`, types, aggIDs, evTypes, payloads, headers, created)
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, pgx.RowTo[string])
}

// WriteOther writes n rows to a table outside the outbox.
func (w *Writer) WriteOther(ctx context.Context, n int, filler string) error {
	_, err := w.pool.Exec(ctx, `INSERT INTO other_table (note, filler) SELECT 'x', $2 FROM generate_series(1, $1)`, n, filler)
	return err
}

// Committed returns the ids of every committed event in commit order,
// within a transaction in insertion order.
func (w *Writer) Committed(t testing.TB) []string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	for {
		// Connections of the pool may have died with a server restart;
		// the pool replaces them on the next attempt.
		rows, err := w.pool.Query(ctx, `SELECT id::text FROM commit_log, unnest(ids) WITH ORDINALITY AS u(id, n) ORDER BY ticket, n`)
		if err == nil {
			var ids []string
			ids, err = pgx.CollectRows(rows, pgx.RowTo[string])
			if err == nil {
				return ids
			}
		}
		if ctx.Err() != nil {
			t.Fatalf("read commit log: %v", err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// SampleEvents returns n events with payloads of about size bytes.
func SampleEvents(n, size int, tag string) []Event {
	events := make([]Event, n)
	pad := make([]byte, max(0, size-40))
	for i := range pad {
		pad[i] = 'a' + byte(i%26)
	}
	for i := range events {
		events[i] = Event{
			AggregateType: "order",
			AggregateID:   fmt.Sprintf("%s-%d", tag, i),
			EventType:     "created",
			Payload:       fmt.Sprintf(`{"n": %d, "pad": "%s"}`, i, pad),
		}
	}
	return events
}
