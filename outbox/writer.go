package outbox

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"go.opentelemetry.io/otel/propagation"

	"github.com/outbox-relay/outbox-relay/internal/rowheader"
)

// Execer runs one SQL statement in the caller's transaction. It is the one
// thing a Writer needs of a database: wrap a pgx transaction, connection or
// pool with Pgx, a *sql.Tx with SQL, or pass a fake of your own in unit
// tests.
type Execer interface {
	// Exec runs sql with args bound to $1, $2, ... and returns its error.
	// It blocks until the server answered.
	Exec(ctx context.Context, sql string, args ...any) error
}

// PgxExecer is what pgx.Tx, *pgx.Conn, *pgxpool.Pool and *pgxpool.Conn have
// in common.
type PgxExecer interface {
	Exec(ctx context.Context, sql string, arguments ...any) (pgconn.CommandTag, error)
}

// Pgx adapts a pgx v5 transaction (pgx.Tx), connection or pool to Execer.
// Through a pool or a connection outside a transaction, each Write commits
// on its own: use a transaction to commit events with the business change.
func Pgx(q PgxExecer) Execer { return pgxExecer{q} }

type pgxExecer struct{ q PgxExecer }

func (e pgxExecer) Exec(ctx context.Context, sql string, args ...any) error {
	_, err := e.q.Exec(ctx, sql, args...)
	return err
}

// SQLExecer is what *sql.Tx, *sql.DB and *sql.Conn have in common.
type SQLExecer interface {
	ExecContext(ctx context.Context, query string, args ...any) (sql.Result, error)
}

// SQL adapts a database/sql transaction (*sql.Tx), or a *sql.DB or
// *sql.Conn, to Execer. Any PostgreSQL driver works: the writer passes one
// text argument per statement.
func SQL(q SQLExecer) Execer { return sqlExecer{q} }

type sqlExecer struct{ q SQLExecer }

func (e sqlExecer) Exec(ctx context.Context, query string, args ...any) error {
	_, err := e.q.ExecContext(ctx, query, args...)
	return err
}

// Event is one event to write.
type Event struct {
	// ID becomes the message's Nats-Msg-Id, by which JetStream and
	// consumers deduplicate. Empty: a new UUIDv7, so that ids sort by the
	// time they were made. Otherwise it must be a UUID.
	ID string
	// AggregateType and EventType name what happened to what; with the
	// relay's default subject template they become the subject
	// outbox.<aggregate_type>.<event_type>, so each must be a valid NATS
	// subject token (no '.', '*', '>' or white space). Both are required.
	AggregateType string
	AggregateID   string
	EventType     string
	// Payload is the message body: JSON (the column is jsonb). Required; a
	// JSON null is written as null.
	Payload json.RawMessage
	// Headers become message headers. They win over the trace context the
	// writer takes from the context (traceparent, tracestate, baggage).
	// Names must be RFC 7230 tokens not starting with Nats- or Outbox-, and
	// values must have no line break: the relay stops on (or dead-letters)
	// a row that breaks this, so Write refuses it.
	Headers map[string]string
	// CreatedAt is the created_at column. Zero: now, by the writer's clock
	// (see WithClock).
	CreatedAt time.Time
}

// Mode is how a Writer stores events.
type Mode int

const (
	// ModeInsert inserts a row per event into the outbox table (the
	// default). Clean the table up on your own schedule.
	ModeInsert Mode = iota
	// ModeInsertDelete inserts the rows and deletes them again in the same
	// transaction, so the table never grows: the relay reads the insert
	// from the WAL and ignores the delete. It costs a second statement
	// (one more round trip) per Write, and leaves nothing in the table to
	// investigate or republish from.
	ModeInsertDelete
	// ModeMessage writes each event as a transactional logical decoding
	// message, pg_logical_emit_message(true, prefix, content), instead of a
	// row: nothing in any table, nothing to clean up. Run the relay with
	// --message-prefix set to the writer's prefix (WithMessagePrefix,
	// default "outbox"); without it the relay ignores the messages. The
	// events cannot be read back from the table (relay recover, replays).
	ModeMessage
)

func (m Mode) String() string {
	switch m {
	case ModeInsert:
		return "insert"
	case ModeInsertDelete:
		return "insert-delete"
	case ModeMessage:
		return "message"
	}
	return fmt.Sprintf("Mode(%d)", int(m))
}

// Option configures a Writer.
type Option func(*config)

type config struct {
	table      string
	mode       Mode
	propagator propagation.TextMapPropagator
	newID      func() (string, error)
	clock      func() time.Time
	prefix     string
}

// WithTable writes to table (optionally schema-qualified, "billing.events")
// instead of "events". It must have the columns of the shipped schema.
func WithTable(table string) Option { return func(c *config) { c.table = table } }

// WithMode sets how events are stored (default ModeInsert).
func WithMode(m Mode) Option { return func(c *config) { c.mode = m } }

// WithMessagePrefix sets the prefix of the messages ModeMessage writes
// (default "outbox"): the relay's --message-prefix.
func WithMessagePrefix(prefix string) Option { return func(c *config) { c.prefix = prefix } }

// WithPropagator sets what the writer takes from a Write's context into
// each event's headers. The default is the W3C trace context (traceparent,
// tracestate) and W3C baggage; nil takes nothing. Pass
// otel.GetTextMapPropagator() to use the one your service installed.
func WithPropagator(p propagation.TextMapPropagator) Option {
	return func(c *config) { c.propagator = p }
}

// WithNewID makes the writer take ids for events without one from f (the
// default makes UUIDv7s). The ids must be UUIDs.
func WithNewID(f func() (string, error)) Option { return func(c *config) { c.newID = f } }

// WithClock makes the writer take created_at for events without one from
// now (default time.Now).
func WithClock(now func() time.Time) Option { return func(c *config) { c.clock = now } }

// Writer writes events into the outbox table, in the caller's transaction.
// It holds no connection and no state that changes: one Writer serves a
// whole service, safe for concurrent use.
type Writer struct {
	cfg config
	// valuesSQL[n-1] inserts n rows from seven parameters each; larger
	// batches go through recordsetSQL, from one jsonb argument.
	valuesSQL    []string
	recordsetSQL string
	deleteSQL    string
	messageSQL   string
}

// valuesMax is the largest batch written as INSERT ... VALUES. It is the
// faster statement for small batches (see the package documentation), but
// each size is a statement of its own, which drivers prepare and cache
// once per connection: up to valuesMax statements, not one per size.
const valuesMax = 32

// columns lists the outbox's columns in the order of every statement.
const columns = `(id, aggregate_type, aggregate_id, event_type, payload, headers, created_at)`

// New builds a Writer.
func New(opts ...Option) (*Writer, error) {
	cfg := config{
		table:      "events",
		propagator: propagation.NewCompositeTextMapPropagator(propagation.TraceContext{}, propagation.Baggage{}),
		newID:      newUUIDv7,
		clock:      time.Now,
		prefix:     "outbox",
	}
	for _, o := range opts {
		o(&cfg)
	}
	switch cfg.mode {
	case ModeInsert, ModeInsertDelete:
	case ModeMessage:
		if cfg.prefix == "" {
			return nil, errors.New("outbox: the message prefix is empty")
		}
	default:
		return nil, fmt.Errorf("outbox: unknown mode %s", cfg.mode)
	}
	if cfg.table == "" {
		return nil, errors.New("outbox: the table name is empty")
	}
	table := pgx.Identifier(strings.Split(cfg.table, ".")).Sanitize()
	w := &Writer{
		cfg: cfg,
		// One statement whatever the number of events, and one text
		// argument, which every driver passes as it is. Rows are inserted
		// in the order of the array: their order in the transaction is
		// their order on the stream.
		recordsetSQL: `INSERT INTO ` + table + ` ` + columns + `
SELECT id, t, a, e, p, h, c FROM ROWS FROM (jsonb_to_recordset($1::jsonb)
  AS (id uuid, t text, a text, e text, p jsonb, h jsonb, c timestamptz)) WITH ORDINALITY AS x(id, t, a, e, p, h, c, n) ORDER BY n`,
		// created_at too, so that a partitioned outbox looks only in the
		// partition that has the row.
		deleteSQL: `DELETE FROM ` + table + ` WHERE (id, created_at) IN (
SELECT id, c FROM jsonb_to_recordset($1::jsonb) AS x(id uuid, c timestamptz))`,
		// One message per element, in the order of the array (the volatile
		// function is evaluated after the sort), with the keys the relay
		// maps: the outbox's column names. A missing "h" is JSON null,
		// which the relay takes as NULL headers.
		messageSQL: `SELECT pg_logical_emit_message(true, $1, jsonb_build_object(
  'id', x->'id', 'aggregate_type', x->'t', 'aggregate_id', x->'a', 'event_type', x->'e',
  'payload', x->'p', 'headers', x->'h', 'created_at', x->'c')::text)
FROM jsonb_array_elements($2::jsonb) WITH ORDINALITY AS r(x, n) ORDER BY n`,
	}
	var b strings.Builder
	for n := 1; n <= valuesMax; n++ {
		b.Reset()
		b.WriteString(`INSERT INTO ` + table + ` ` + columns + ` VALUES `)
		for i := range n {
			if i > 0 {
				b.WriteString(", ")
			}
			for j := range 7 {
				b.WriteString([]string{"($", ", $"}[min(j, 1)])
				b.WriteString(strconv.Itoa(7*i + j + 1))
			}
			b.WriteString(")")
		}
		w.valuesSQL = append(w.valuesSQL, b.String())
	}
	return w, nil
}

// row is an event as the statements read it.
type row struct {
	ID, AggregateType, AggregateID, EventType string
	Payload                                   json.RawMessage
	Headers                                   json.RawMessage // nil: NULL
	CreatedAt                                 time.Time
}

// deleted is a row as the delete statement reads it.
type deleted struct {
	ID        string    `json:"id"`
	CreatedAt time.Time `json:"c"`
}

// Write stores events in one statement through db, which should be the
// transaction of the business change they describe, and returns their ids
// in order. Each event's headers get the trace context and baggage of ctx
// (see WithPropagator). The events reach the stream in the order given,
// once the transaction commits; if it rolls back, none of them ever does.
// Write checks every event before it writes any: an event the relay could
// never publish is refused here, naming it, rather than stopping the relay
// later.
func (w *Writer) Write(ctx context.Context, db Execer, events ...Event) ([]string, error) {
	if len(events) == 0 {
		return nil, nil
	}
	carried := w.carry(ctx)
	rows := make([]row, len(events))
	ids := make([]string, len(events))
	var now time.Time
	for i, ev := range events {
		r, err := w.row(ev, carried, &now)
		if err != nil {
			return nil, fmt.Errorf("outbox: event %d (%s/%s %s): %w", i, ev.AggregateType, ev.AggregateID, ev.EventType, err)
		}
		rows[i], ids[i] = r, r.ID
	}
	if w.cfg.mode == ModeMessage {
		if err := db.Exec(ctx, w.messageSQL, w.cfg.prefix, recordset(rows)); err != nil {
			return nil, fmt.Errorf("outbox: emit %d events as logical decoding messages: %w", len(events), err)
		}
		return ids, nil
	}
	if err := w.insert(ctx, db, rows); err != nil {
		return nil, fmt.Errorf("outbox: insert %d events: %w", len(events), err)
	}
	if w.cfg.mode == ModeInsertDelete {
		keys := make([]deleted, len(rows))
		for i, r := range rows {
			keys[i] = deleted{ID: r.ID, CreatedAt: r.CreatedAt}
		}
		doc, err := json.Marshal(keys)
		if err == nil {
			err = db.Exec(ctx, w.deleteSQL, string(doc))
		}
		if err != nil {
			return nil, fmt.Errorf("outbox: delete %d events after inserting them: %w", len(events), err)
		}
	}
	return ids, nil
}

// insert runs the statement for len(rows) rows. Arguments are strings and
// times only, which every driver passes as they are.
func (w *Writer) insert(ctx context.Context, db Execer, rows []row) error {
	if len(rows) > len(w.valuesSQL) {
		return db.Exec(ctx, w.recordsetSQL, recordset(rows))
	}
	args := make([]any, 0, 7*len(rows))
	for _, r := range rows {
		var headers any // NULL
		if r.Headers != nil {
			headers = string(r.Headers)
		}
		args = append(args, r.ID, r.AggregateType, r.AggregateID, r.EventType, string(r.Payload), headers, r.CreatedAt)
	}
	return db.Exec(ctx, w.valuesSQL[len(rows)-1], args...)
}

// recordset encodes rows as the JSON array recordsetSQL reads. It is built
// by hand: encoding/json would check every payload and headers object
// again, which row did, and that was most of a large Write's time.
func recordset(rows []row) string {
	size := 2
	for _, r := range rows {
		size += len(r.ID) + len(r.AggregateType) + len(r.AggregateID) + len(r.EventType) + len(r.Payload) + len(r.Headers) + 96
	}
	b := make([]byte, 0, size)
	b = append(b, '[')
	for i, r := range rows {
		if i > 0 {
			b = append(b, ',')
		}
		b = append(b, `{"id":"`...)
		b = append(b, r.ID...) // a UUID: nothing to escape
		b = append(b, `","t":`...)
		b = appendJSONString(b, r.AggregateType)
		b = append(b, `,"a":`...)
		b = appendJSONString(b, r.AggregateID)
		b = append(b, `,"e":`...)
		b = appendJSONString(b, r.EventType)
		b = append(b, `,"p":`...)
		b = append(b, r.Payload...)
		if r.Headers != nil {
			b = append(b, `,"h":`...)
			b = append(b, r.Headers...)
		}
		b = append(b, `,"c":"`...)
		b = r.CreatedAt.AppendFormat(b, time.RFC3339Nano)
		b = append(b, `"}`...)
	}
	return string(append(b, ']'))
}

// appendJSONString appends s as a JSON string. Invalid UTF-8 is kept as it
// is, for PostgreSQL to refuse, as it would in any text column.
func appendJSONString(b []byte, s string) []byte {
	const hex = "0123456789abcdef"
	b = append(b, '"')
	for i := 0; i < len(s); i++ {
		switch c := s[i]; {
		case c == '"' || c == '\\':
			b = append(b, '\\', c)
		case c < 0x20:
			b = append(b, '\\', 'u', '0', '0', hex[c>>4], hex[c&0xf])
		default:
			b = append(b, c)
		}
	}
	return append(b, '"')
}

// row checks ev and fills in what it leaves to the writer. now is read from
// the clock once per Write, when first needed.
func (w *Writer) row(ev Event, carried carriedHeaders, now *time.Time) (row, error) {
	if ev.AggregateType == "" || ev.EventType == "" {
		return row{}, errors.New("the aggregate type and the event type are required")
	}
	if len(ev.Payload) == 0 {
		return row{}, errors.New("the payload is empty (write null or {} for an event without data)")
	}
	if !json.Valid(ev.Payload) {
		return row{}, errors.New("the payload is not JSON")
	}
	id := ev.ID
	if id == "" {
		var err error
		if id, err = w.cfg.newID(); err != nil {
			return row{}, fmt.Errorf("make an id: %w", err)
		}
	}
	if _, err := uuid.Parse(id); err != nil {
		return row{}, fmt.Errorf("id %q is not a UUID", id)
	}
	created := ev.CreatedAt
	if created.IsZero() {
		if now.IsZero() {
			*now = w.cfg.clock()
		}
		created = *now
	}
	r := row{
		ID: id, AggregateType: ev.AggregateType, AggregateID: ev.AggregateID, EventType: ev.EventType,
		// PostgreSQL keeps microseconds; cut here, the statements cannot
		// round differently (the delete finds the row by it).
		Payload: ev.Payload, CreatedAt: created.UTC().Truncate(time.Microsecond),
	}
	if len(ev.Headers) == 0 {
		// What the context carries, the same for every event of a Write.
		r.Headers = carried.encoded
		return r, carried.err
	}
	headers, err := mergeHeaders(carried.headers, ev.Headers)
	if err != nil {
		return row{}, err
	}
	if r.Headers, err = json.Marshal(headers); err != nil {
		return row{}, fmt.Errorf("encode headers: %w", err)
	}
	return r, nil
}

// carriedHeaders are the headers a Write takes from its context, checked and
// encoded once.
type carriedHeaders struct {
	headers map[string]string
	encoded json.RawMessage // nil when there are none
	err     error           // why they cannot be headers
}

// carry takes the propagator's headers from ctx.
func (w *Writer) carry(ctx context.Context) carriedHeaders {
	if w.cfg.propagator == nil {
		return carriedHeaders{}
	}
	c := carriedHeaders{headers: propagation.MapCarrier{}}
	w.cfg.propagator.Inject(ctx, propagation.MapCarrier(c.headers))
	if len(c.headers) == 0 {
		return c
	}
	for k, v := range c.headers {
		if err := rowheader.Check(k, v); err != nil {
			c.err = err
			return c
		}
	}
	c.encoded, c.err = json.Marshal(c.headers)
	return c
}

// mergeHeaders returns the event's own headers over what was carried from
// the context, each checked as the relay will.
func mergeHeaders(carried, own map[string]string) (map[string]string, error) {
	if len(carried) == 0 && len(own) == 0 {
		return nil, nil
	}
	merged := make(map[string]string, len(carried)+len(own))
	for k, v := range carried {
		merged[k] = v
	}
	for k, v := range own {
		// Header names are matched case-insensitively by most readers:
		// the event's own Traceparent replaces the carried traceparent.
		for c := range carried {
			if strings.EqualFold(c, k) {
				delete(merged, c)
			}
		}
		merged[k] = v
	}
	for k, v := range merged {
		if err := rowheader.Check(k, v); err != nil {
			return nil, err
		}
	}
	return merged, nil
}

// newUUIDv7 makes a version 7 UUID: its first 48 bits are the Unix time in
// milliseconds, so ids made later sort after earlier ones.
func newUUIDv7() (string, error) {
	id, err := uuid.NewV7()
	if err != nil {
		return "", err
	}
	return id.String(), nil
}
