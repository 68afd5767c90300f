// Package outbox is the service side of outbox-relay: it writes events into
// the outbox table inside the caller's own transaction, so that an event
// exists exactly when the business change it describes commits. The relay
// (cmd/relay) then publishes every committed row to NATS JetStream, once,
// in commit order, with Nats-Msg-Id = the row's id.
//
//	w, _ := outbox.New()
//	tx, _ := pool.Begin(ctx)
//	tx.Exec(ctx, `UPDATE orders SET status = 'paid' WHERE id = $1`, id)
//	w.Write(ctx, outbox.Pgx(tx), outbox.Event{
//		AggregateType: "order", AggregateID: id, EventType: "paid",
//		Payload: json.RawMessage(`{"amount": 70}`),
//	})
//	tx.Commit(ctx)
//
// # One small interface
//
// A Writer needs one method of a database, Execer.Exec. Pgx adapts a pgx v5
// transaction, connection or pool; SQL adapts a database/sql transaction
// (any driver: the writer passes strings and times only). A service's unit
// tests can pass a fake Execer that records the statements.
//
// # What the writer fills in
//
//   - id: a UUIDv7 (its first 48 bits are the time in milliseconds, so ids
//     made later sort later), unless the event has one.
//   - created_at: the writer's clock, once per Write, unless the event has
//     one. The relay sends it as Outbox-Created-At.
//   - headers: the W3C trace context (traceparent, tracestate) and W3C
//     baggage of the Write's context, through the OpenTelemetry propagation
//     API (no SDK needed), plus the event's own headers, which win. The
//     relay puts every entry on the message as a header of the same name;
//     see the README's "Trace context" section for what happens on the way.
//
// Write refuses an event the relay could never publish (a reserved or
// invalid header name, a line break in a header value, a payload that is
// not JSON, no aggregate or event type), naming it, before anything is
// written.
//
// # One round trip per Write
//
// However many events a Write holds, it runs one statement. Which one was
// measured (BenchmarkWrite: begin, write, commit, over TCP to a local
// PostgreSQL 15, median µs per write on a shared 2-CPU machine, events of
// about 200 bytes with trace headers):
//
//	events   COPY   INSERT VALUES   INSERT unnest   INSERT jsonb   writer
//	     1    459             269             339            318      287
//	    10    866             698             744            737      716
//	   100   3627            3741            3438           3235     3391
//	  1000  31921           43645           39938          35206    36330
//
// COPY (pgx's CopyFrom) costs a round trip more before the rows flow and is
// the slowest for the batches outboxes write most (1 to 10 events: 60% and
// 20% slower); it wins only from about a thousand events (10%). So the
// writer inserts: INSERT ... VALUES with seven parameters per row up to 32
// events (each size is a statement drivers prepare once per connection),
// and INSERT ... SELECT from jsonb_to_recordset of one argument above (one
// statement whatever the size, no parameter limit). The "writer" column is
// the writer as shipped, its checks and id generation included.
//
// # Modes
//
// ModeInsert (the default) leaves the rows in the table; clean them up on
// your own schedule (see the README). ModeInsertDelete deletes them in the
// same transaction, one more statement per Write: the table never grows,
// and the relay, which reads inserts from the WAL, still publishes every
// event (TestWriterPackageEndToEnd in cmd/relay proves it with the real
// relay). ModeMessage writes each event as a transactional logical decoding
// message (pg_logical_emit_message) and no row at all, for a relay run with
// --message-prefix (TestWriterPackageEndToEnd again).
//
// # The table
//
// Migrate creates the outbox table the relay expects, plain or partitioned
// by created_at, and optionally the publication the relay reads it through
// (inserts only, publish_via_partition_root on). Schema returns the same
// SQL, which is also in outbox/sql/ for migration tools.
package outbox
