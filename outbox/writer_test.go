package outbox_test

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	_ "github.com/jackc/pgx/v5/stdlib" // the database/sql driver "pgx"
	"github.com/stretchr/testify/require"

	"github.com/outbox-relay/outbox-relay/internal/e2e"
	"github.com/outbox-relay/outbox-relay/outbox"
)

// storedRow is an outbox row as PostgreSQL holds it.
type storedRow struct {
	id, aggregateType, aggregateID, eventType, payload string
	headers                                            map[string]string
	createdAt                                          time.Time
}

// readRows returns the rows of table in insertion order (a fresh heap table
// without deletes keeps it in ctid order).
func readRows(t testing.TB, conn *pgx.Conn, table string) []storedRow {
	t.Helper()
	rows, err := conn.Query(context.Background(), `SELECT id::text, aggregate_type, aggregate_id, event_type, payload::text, headers, created_at FROM `+table+` ORDER BY ctid`)
	require.NoError(t, err)
	out, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (storedRow, error) {
		var s storedRow
		var headers []byte
		err := r.Scan(&s.id, &s.aggregateType, &s.aggregateID, &s.eventType, &s.payload, &headers, &s.createdAt)
		if err == nil && headers != nil {
			err = json.Unmarshal(headers, &s.headers)
		}
		return s, err
	})
	require.NoError(t, err)
	return out
}

func migrate(t testing.TB, conn *pgx.Conn, layout outbox.Layout) {
	t.Helper()
	require.NoError(t, outbox.Migrate(context.Background(), outbox.Pgx(conn), layout, true))
}

// TestWriteFillsIDsTimesAndTraceContext checks what the writer adds to the
// events it is given, on a real table: UUIDv7 ids in order, created_at from
// its clock, the W3C trace context and baggage of the context in headers
// (the event's own headers winning), rows in the order given.
func TestWriteFillsIDsTimesAndTraceContext(t *testing.T) {
	conn, _ := newDatabase(t, "fills")
	migrate(t, conn, outbox.Plain)
	ctx, sc := e2e.TracedContext()
	w, err := outbox.New()
	require.NoError(t, err)

	before := time.Now()
	tx, err := conn.Begin(ctx)
	require.NoError(t, err)
	events := []outbox.Event{
		{AggregateType: "order", AggregateID: "42", EventType: "created", Payload: json.RawMessage(`{"total": 70}`)},
		{
			AggregateType: "order", AggregateID: "42", EventType: "paid", Payload: json.RawMessage(`null`),
			Headers: map[string]string{"Traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01", "x-request-id": "r1"},
		},
		{
			AggregateType: "payment", AggregateID: "p-9", EventType: "captured", Payload: json.RawMessage(`{"amount":"70.00"}`),
			ID: "0190f6a4-0000-7000-8000-000000000001", CreatedAt: time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC),
		},
	}
	ids, err := w.Write(ctx, outbox.Pgx(tx), events...)
	require.NoError(t, err)
	require.NoError(t, tx.Commit(ctx))
	after := time.Now()

	rows := readRows(t, conn, "events")
	require.Len(t, rows, 3)
	for i, r := range rows {
		require.Equal(t, ids[i], r.id, "rows in the order given")
		require.Equal(t, events[i].AggregateType, r.aggregateType)
		require.Equal(t, events[i].EventType, r.eventType)
	}
	for _, id := range ids[:2] {
		u, err := uuid.Parse(id)
		require.NoError(t, err)
		require.Equal(t, uuid.Version(7), u.Version(), "a new id is a UUIDv7")
	}
	require.Less(t, ids[0], ids[1], "UUIDv7s made later sort later")
	require.Equal(t, events[2].ID, ids[2], "a given id is kept")
	require.WithinRange(t, rows[0].createdAt, before.Add(-time.Millisecond), after.Add(time.Millisecond))
	require.Equal(t, rows[0].createdAt, rows[1].createdAt, "one clock reading per Write")
	require.True(t, rows[2].createdAt.Equal(events[2].CreatedAt), "a given created_at is kept")

	require.Equal(t, "00-"+sc.TraceID().String()+"-"+sc.SpanID().String()+"-01", e2e.Traceparent)
	require.Equal(t, map[string]string{"traceparent": e2e.Traceparent, "tracestate": e2e.Tracestate, "baggage": e2e.Baggage}, rows[0].headers)
	require.Equal(t, map[string]string{
		"Traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01", "tracestate": "vendor=opaque,other=1",
		"baggage": "tenant=acme", "x-request-id": "r1",
	}, rows[1].headers, "the event's own header replaces the carried one, whatever its case")
	require.Equal(t, "null", rows[1].payload)

	// Without trace context nothing is added; with no propagator neither.
	_, err = w.Write(context.Background(), outbox.Pgx(conn), outbox.Event{AggregateType: "order", AggregateID: "43", EventType: "created", Payload: json.RawMessage(`{}`)})
	require.NoError(t, err)
	quiet, err := outbox.New(outbox.WithPropagator(nil))
	require.NoError(t, err)
	_, err = quiet.Write(ctx, outbox.Pgx(conn), outbox.Event{AggregateType: "order", AggregateID: "44", EventType: "created", Payload: json.RawMessage(`{}`)})
	require.NoError(t, err)
	rows = readRows(t, conn, "events")
	require.Nil(t, rows[3].headers, "no trace context: headers NULL")
	require.Nil(t, rows[4].headers, "no propagator: headers NULL")
}

// TestWriteThroughEveryDriver writes through each kind of handle a service
// may hold, inside a transaction that commits or rolls back, and outside
// one (committing on its own).
func TestWriteThroughEveryDriver(t *testing.T) {
	conn, url := newDatabase(t, "drivers")
	migrate(t, conn, outbox.Plain)
	ctx := context.Background()
	w, err := outbox.New()
	require.NoError(t, err)
	pool, err := pgxpool.New(ctx, url)
	require.NoError(t, err)
	t.Cleanup(pool.Close)
	db, err := sql.Open("pgx", url)
	require.NoError(t, err)
	t.Cleanup(func() { _ = db.Close() })

	// A small batch and one larger than the writer writes with VALUES,
	// so that both of its statements go through every driver.
	write := func(ex outbox.Execer, tag string) []string {
		var all []string
		for _, n := range []int{2, 40} {
			events := make([]outbox.Event, n)
			for i := range events {
				events[i] = outbox.Event{
					AggregateType: "order", AggregateID: tag, EventType: "created", Payload: json.RawMessage(`{"n":1}`),
					Headers: map[string]string{"n": strconv.Itoa(i)},
				}
			}
			ids, err := w.Write(ctx, ex, events...)
			require.NoError(t, err, tag)
			all = append(all, ids...)
		}
		return all
	}
	tests := []struct {
		name     string
		write    func(t *testing.T) []string
		survives bool
	}{
		{"pgx.Tx committed", func(t *testing.T) []string {
			tx, err := pool.Begin(ctx)
			require.NoError(t, err)
			ids := write(outbox.Pgx(tx), "pgx-tx")
			require.NoError(t, tx.Commit(ctx))
			return ids
		}, true},
		{"pgx.Tx rolled back", func(t *testing.T) []string {
			tx, err := conn.Begin(ctx)
			require.NoError(t, err)
			ids := write(outbox.Pgx(tx), "pgx-rollback")
			require.NoError(t, tx.Rollback(ctx))
			return ids
		}, false},
		{"*pgx.Conn", func(*testing.T) []string { return write(outbox.Pgx(conn), "pgx-conn") }, true},
		{"*pgxpool.Pool", func(*testing.T) []string { return write(outbox.Pgx(pool), "pgx-pool") }, true},
		{"*sql.Tx committed", func(t *testing.T) []string {
			tx, err := db.BeginTx(ctx, nil)
			require.NoError(t, err)
			ids := write(outbox.SQL(tx), "sql-tx")
			require.NoError(t, tx.Commit())
			return ids
		}, true},
		{"*sql.Tx rolled back", func(t *testing.T) []string {
			tx, err := db.BeginTx(ctx, nil)
			require.NoError(t, err)
			ids := write(outbox.SQL(tx), "sql-rollback")
			require.NoError(t, tx.Rollback())
			return ids
		}, false},
		{"*sql.DB", func(*testing.T) []string { return write(outbox.SQL(db), "sql-db") }, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ids := tt.write(t)
			rows, err := conn.Query(ctx, `SELECT id::text FROM events WHERE id::text = ANY($1) ORDER BY ctid`, ids)
			require.NoError(t, err)
			stored, err := pgx.CollectRows(rows, pgx.RowTo[string])
			require.NoError(t, err)
			if tt.survives {
				require.Equal(t, ids, stored, "every row, in the order given")
			} else {
				require.Empty(t, stored)
			}
		})
	}
}

// TestLargeBatchesKeepEveryCharacter writes a batch large enough for the
// writer's jsonb statement, with text that JSON must escape, and reads it
// back unchanged.
func TestLargeBatchesKeepEveryCharacter(t *testing.T) {
	conn, _ := newDatabase(t, "escapes")
	migrate(t, conn, outbox.Plain)
	w, err := outbox.New()
	require.NoError(t, err)
	odd := []string{`"quoted"`, `back\slash`, "tab\there", "line\nbreak", "\x01\x1f control", "ünïcødé ✓", "{\"json\": [1]}", ""}
	events := make([]outbox.Event, 40)
	for i := range events {
		events[i] = outbox.Event{
			AggregateType: "order", AggregateID: odd[i%len(odd)], EventType: "created",
			Payload: json.RawMessage(`{"s": "` + strconv.Itoa(i) + `\u00e9", "n": [1, 2.5e3, null, true]}`), Headers: map[string]string{"note": strings.ReplaceAll(odd[i%len(odd)], "\n", " ")},
		}
	}
	events[3].Headers = nil
	ids, err := w.Write(context.Background(), outbox.Pgx(conn), events...)
	require.NoError(t, err)
	rows := readRows(t, conn, "events")
	require.Len(t, rows, 40)
	for i, r := range rows {
		require.Equal(t, ids[i], r.id)
		require.Equal(t, odd[i%len(odd)], r.aggregateID)
		require.JSONEq(t, string(events[i].Payload), r.payload)
		if i == 3 {
			require.Nil(t, r.headers)
		} else {
			require.Equal(t, events[i].Headers, r.headers)
		}
	}
}

// fakeDB is the kind of fake a service's unit tests pass to the writer: it
// records the statements instead of running them. (Its one assumption, that
// a Write is one statement with one JSON argument, is checked against the
// real server by the other tests, which run the same statements.)
type fakeDB struct {
	calls []string
	args  [][]any
	err   error
}

func (f *fakeDB) Exec(_ context.Context, sql string, args ...any) error {
	f.calls = append(f.calls, sql)
	f.args = append(f.args, args)
	return f.err
}

// TestWriteRefusesWhatTheRelayCouldNotPublish checks that an event the
// relay would stop on (or dead-letter) is refused before anything is
// written, naming the event.
func TestWriteRefusesWhatTheRelayCouldNotPublish(t *testing.T) {
	good := outbox.Event{AggregateType: "order", AggregateID: "1", EventType: "created", Payload: json.RawMessage(`{}`)}
	with := func(f func(*outbox.Event)) outbox.Event {
		ev := good
		f(&ev)
		return ev
	}
	tests := []struct {
		name string
		ev   outbox.Event
		want string
	}{
		{"no aggregate type", with(func(e *outbox.Event) { e.AggregateType = "" }), "aggregate type and the event type are required"},
		{"no event type", with(func(e *outbox.Event) { e.EventType = "" }), "aggregate type and the event type are required"},
		{"no payload", with(func(e *outbox.Event) { e.Payload = nil }), "payload is empty"},
		{"payload not JSON", with(func(e *outbox.Event) { e.Payload = json.RawMessage(`{"a":`) }), "payload is not JSON"},
		{"id not a UUID", with(func(e *outbox.Event) { e.ID = "order-1" }), `id "order-1" is not a UUID`},
		{"reserved header", with(func(e *outbox.Event) { e.Headers = map[string]string{"Nats-Msg-Id": "x"} }), "reserved for the relay and NATS"},
		{"relay's header", with(func(e *outbox.Event) { e.Headers = map[string]string{"outbox-origin": "x"} }), "reserved for the relay and NATS"},
		{"invalid header name", with(func(e *outbox.Event) { e.Headers = map[string]string{"a b": "x"} }), "not a valid header name"},
		{"line break in a value", with(func(e *outbox.Event) { e.Headers = map[string]string{"note": "a\nb"} }), "contains a line break"},
	}
	w, err := outbox.New()
	require.NoError(t, err)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			db := &fakeDB{}
			_, err := w.Write(context.Background(), db, good, tt.ev)
			require.ErrorContains(t, err, tt.want)
			require.ErrorContains(t, err, "event 1 (")
			require.Empty(t, db.calls, "nothing written")
		})
	}
}

// TestWriteIsOneStatement shows a service's unit test with a fake: one
// statement per Write, whatever the number of events, and two with
// ModeInsertDelete; a database error comes back wrapped.
func TestWriteIsOneStatement(t *testing.T) {
	events := make([]outbox.Event, 50)
	for i := range events {
		events[i] = outbox.Event{AggregateType: "order", AggregateID: "1", EventType: "created", Payload: json.RawMessage(`{}`)}
	}
	w, err := outbox.New()
	require.NoError(t, err)
	db := &fakeDB{}
	ids, err := w.Write(context.Background(), db, events...)
	require.NoError(t, err)
	require.Len(t, ids, 50)
	require.Len(t, db.calls, 1)
	require.True(t, strings.HasPrefix(db.calls[0], `INSERT INTO "events"`), db.calls[0])
	var rows []map[string]any
	require.NoError(t, json.Unmarshal([]byte(db.args[0][0].(string)), &rows))
	require.Len(t, rows, 50)

	deleting, err := outbox.New(outbox.WithMode(outbox.ModeInsertDelete), outbox.WithTable("billing.events"))
	require.NoError(t, err)
	db = &fakeDB{}
	_, err = deleting.Write(context.Background(), db, events[0])
	require.NoError(t, err)
	require.Len(t, db.calls, 2)
	require.True(t, strings.HasPrefix(db.calls[0], `INSERT INTO "billing"."events"`), db.calls[0])
	require.True(t, strings.HasPrefix(db.calls[1], `DELETE FROM "billing"."events"`), db.calls[1])

	boom := errors.New("connection reset")
	_, err = w.Write(context.Background(), &fakeDB{err: boom}, events[0])
	require.ErrorIs(t, err, boom)

	messages, err := outbox.New(outbox.WithMode(outbox.ModeMessage), outbox.WithMessagePrefix("billing"))
	require.NoError(t, err)
	db = &fakeDB{}
	_, err = messages.Write(context.Background(), db, events...)
	require.NoError(t, err)
	require.Len(t, db.calls, 1, "one statement for all the events")
	require.True(t, strings.HasPrefix(db.calls[0], `SELECT pg_logical_emit_message(true, $1,`), db.calls[0])
	_, err = outbox.New(outbox.WithMode(outbox.ModeMessage), outbox.WithMessagePrefix(""))
	require.ErrorContains(t, err, "prefix is empty")
}

// TestInsertDeleteLeavesNothing checks that ModeInsertDelete leaves neither
// table nor partitions any rows, and that rows written without it stay.
// That the relay still publishes such events is proven end to end in
// cmd/relay (TestWriterPackageEndToEnd).
func TestInsertDeleteLeavesNothing(t *testing.T) {
	for _, layout := range []outbox.Layout{outbox.Plain, outbox.Partitioned} {
		t.Run(map[outbox.Layout]string{outbox.Plain: "plain", outbox.Partitioned: "partitioned"}[layout], func(t *testing.T) {
			conn, _ := newDatabase(t, "insdel"+map[outbox.Layout]string{outbox.Plain: "plain", outbox.Partitioned: "part"}[layout])
			migrate(t, conn, layout)
			ctx := context.Background()
			w, err := outbox.New(outbox.WithMode(outbox.ModeInsertDelete))
			require.NoError(t, err)
			tx, err := conn.Begin(ctx)
			require.NoError(t, err)
			_, err = w.Write(ctx, outbox.Pgx(tx),
				outbox.Event{AggregateType: "order", AggregateID: "1", EventType: "created", Payload: json.RawMessage(`{}`)},
				outbox.Event{AggregateType: "order", AggregateID: "1", EventType: "paid", Payload: json.RawMessage(`{}`), CreatedAt: time.Date(2020, 1, 1, 0, 0, 0, 123456789, time.UTC)})
			require.NoError(t, err)
			many := make([]outbox.Event, 50)
			for i := range many {
				many[i] = outbox.Event{AggregateType: "order", AggregateID: "2", EventType: "created", Payload: json.RawMessage(`{}`)}
			}
			_, err = w.Write(ctx, outbox.Pgx(tx), many...)
			require.NoError(t, err)
			require.NoError(t, tx.Commit(ctx))
			require.Empty(t, readRows(t, conn, "events"))

			keeping, err := outbox.New()
			require.NoError(t, err)
			_, err = keeping.Write(ctx, outbox.Pgx(conn), outbox.Event{AggregateType: "order", AggregateID: "2", EventType: "created", Payload: json.RawMessage(`{}`)})
			require.NoError(t, err)
			require.Len(t, readRows(t, conn, "events"), 1)
		})
	}
}

// TestMigrateCreatesWhatTheRelayExpects applies each layout twice (it is
// idempotent) and checks the catalog: the columns, the primary key (with the
// partition key when partitioned), and a publication of inserts only that
// publishes partitions under the parent's name. That the relay accepts it
// is proven in cmd/relay (TestWriterPackageEndToEnd runs it with
// --create-publication=false).
func TestMigrateCreatesWhatTheRelayExpects(t *testing.T) {
	tests := []struct {
		name        string
		layout      outbox.Layout
		primaryKey  string
		partitioned bool
	}{
		{"plain", outbox.Plain, "PRIMARY KEY (id)", false},
		{"partitioned", outbox.Partitioned, "PRIMARY KEY (id, created_at)", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			conn, _ := newDatabase(t, "migrate"+tt.name)
			ctx := context.Background()
			migrate(t, conn, tt.layout)
			migrate(t, conn, tt.layout)

			var pk string
			require.NoError(t, conn.QueryRow(ctx, `SELECT pg_get_constraintdef(oid) FROM pg_constraint WHERE conrelid = 'events'::regclass AND contype = 'p'`).Scan(&pk))
			require.Equal(t, tt.primaryKey, pk)
			var kind string
			require.NoError(t, conn.QueryRow(ctx, `SELECT relkind::text FROM pg_class WHERE oid = 'events'::regclass`).Scan(&kind))
			require.Equal(t, tt.partitioned, kind == "p")
			var columns []string
			rows, err := conn.Query(ctx, `SELECT attname || ' ' || format_type(atttypid, atttypmod) || CASE WHEN attnotnull THEN ' not null' ELSE '' END
				FROM pg_attribute WHERE attrelid = 'events'::regclass AND attnum > 0 AND NOT attisdropped ORDER BY attnum`)
			require.NoError(t, err)
			columns, err = pgx.CollectRows(rows, pgx.RowTo[string])
			require.NoError(t, err)
			require.Equal(t, []string{
				"id uuid not null", "aggregate_type text not null", "aggregate_id text not null", "event_type text not null",
				"payload jsonb not null", "headers jsonb", "created_at timestamp with time zone not null",
			}, columns)

			var insert, update, del, truncate, viaRoot bool
			var tables []string
			require.NoError(t, conn.QueryRow(ctx, `SELECT pubinsert, pubupdate, pubdelete, pubtruncate, pubviaroot,
				ARRAY(SELECT tablename::text FROM pg_publication_tables WHERE pubname = 'outbox_relay')
				FROM pg_publication WHERE pubname = 'outbox_relay'`).Scan(&insert, &update, &del, &truncate, &viaRoot, &tables))
			require.True(t, insert)
			require.False(t, update || del || truncate, "inserts only")
			require.True(t, viaRoot, "publish_via_partition_root")
			require.Equal(t, []string{"events"}, tables, "the parent's name, never a partition's")
		})
	}
	ddl, err := outbox.Schema(outbox.Partitioned, false)
	require.NoError(t, err)
	require.NotContains(t, ddl, "PUBLICATION")
}
