package outbox_test

import (
	"encoding/json"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/outbox-relay/outbox-relay/internal/e2e"
	"github.com/outbox-relay/outbox-relay/outbox"
)

// BenchmarkWrite compares ways of writing a batch of events in one round
// trip, each in a transaction that commits, over TCP to a local PostgreSQL:
// the writer as shipped (INSERT ... VALUES with seven parameters per row up
// to 32 events, INSERT ... SELECT from jsonb_to_recordset of one argument
// above), the writer with the recordset statement at every size, a
// multi-row INSERT ... VALUES at every size, a multi-row INSERT from
// unnest() of typed arrays (pgx only), and COPY (pgx's CopyFrom). Every
// variant makes ids and created_at and encodes trace headers. The variants
// take turns, so that they share whatever else the machine does; each
// reports the median time of a write (begin, write, commit) in µs. The
// package documentation quotes the results:
//
//	go test -run '^$' -bench BenchmarkWrite -benchtime 200x ./outbox/
func BenchmarkWrite(b *testing.B) {
	conn, _ := newDatabase(b, "bench")
	migrate(b, conn, outbox.Plain)
	ctx, _ := e2e.TracedContext()
	w, err := outbox.New()
	if err != nil {
		b.Fatal(err)
	}
	recordset := w.AlwaysRecordset()
	payload := json.RawMessage(`{"order": "o-1001", "items": 3, "total": "70.00", "currency": "EUR", "note": "` + strings.Repeat("x", 120) + `"}`)
	variants := []struct {
		name  string
		write func(tx pgx.Tx, events []outbox.Event) error
	}{
		{"writer", func(tx pgx.Tx, events []outbox.Event) error {
			_, err := w.Write(ctx, outbox.Pgx(tx), events...)
			return err
		}},
		{"writer-recordset", func(tx pgx.Tx, events []outbox.Event) error {
			_, err := recordset.Write(ctx, outbox.Pgx(tx), events...)
			return err
		}},
		{"insert-unnest", func(tx pgx.Tx, events []outbox.Event) error {
			c := columnsOf(events)
			_, err := tx.Exec(ctx, `INSERT INTO events (id, aggregate_type, aggregate_id, event_type, payload, headers, created_at)
				SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::jsonb[], $6::jsonb[], $7::timestamptz[])`,
				c.ids, c.types, c.aggIDs, c.evTypes, c.payloads, c.headers, c.created)
			return err
		}},
		{"insert-values", func(tx pgx.Tx, events []outbox.Event) error {
			c := columnsOf(events)
			var sql strings.Builder
			sql.WriteString(`INSERT INTO events (id, aggregate_type, aggregate_id, event_type, payload, headers, created_at) VALUES `)
			args := make([]any, 0, 7*len(events))
			for i := range events {
				if i > 0 {
					sql.WriteString(", ")
				}
				sql.WriteString("(")
				for j := range 7 {
					if j > 0 {
						sql.WriteString(", ")
					}
					sql.WriteString("$" + strconv.Itoa(7*i+j+1))
				}
				sql.WriteString(")")
				args = append(args, c.ids[i], c.types[i], c.aggIDs[i], c.evTypes[i], c.payloads[i], c.headers[i], c.created[i])
			}
			_, err := tx.Exec(ctx, sql.String(), args...)
			return err
		}},
		{"copy", func(tx pgx.Tx, events []outbox.Event) error {
			c := columnsOf(events)
			rows := make([][]any, len(events))
			for i := range events {
				rows[i] = []any{c.ids[i], c.types[i], c.aggIDs[i], c.evTypes[i], c.payloads[i], c.headers[i], c.created[i]}
			}
			_, err := tx.CopyFrom(ctx, pgx.Identifier{"events"},
				[]string{"id", "aggregate_type", "aggregate_id", "event_type", "payload", "headers", "created_at"}, pgx.CopyFromRows(rows))
			return err
		}},
	}
	for _, n := range []int{1, 10, 100, 1000} {
		events := make([]outbox.Event, n)
		for i := range events {
			events[i] = outbox.Event{AggregateType: "order", AggregateID: "o-" + strconv.Itoa(i), EventType: "created", Payload: payload}
		}
		b.Run(strconv.Itoa(n), func(b *testing.B) {
			took := make([][]time.Duration, len(variants))
			round := 0
			for b.Loop() {
				for k := range variants {
					v := (k + round) % len(variants)
					start := time.Now()
					tx, err := conn.Begin(ctx)
					if err != nil {
						b.Fatal(err)
					}
					if err := variants[v].write(tx, events); err != nil {
						b.Fatal(err)
					}
					if err := tx.Commit(ctx); err != nil {
						b.Fatal(err)
					}
					took[v] = append(took[v], time.Since(start))
				}
				round++
				if round%50 == 0 {
					if _, err := conn.Exec(ctx, `TRUNCATE events`); err != nil {
						b.Fatal(err)
					}
				}
			}
			for v, samples := range took {
				slices.Sort(samples)
				b.ReportMetric(float64(samples[len(samples)/2].Microseconds()), "µs/"+variants[v].name)
			}
		})
	}
}

// columns are events as typed columns, with what the writer would add.
type columns struct {
	ids, types, aggIDs, evTypes []string
	payloads                    []json.RawMessage
	headers                     []map[string]string
	created                     []time.Time
}

func columnsOf(events []outbox.Event) columns {
	now := time.Now()
	c := columns{}
	for _, ev := range events {
		id, err := uuid.NewV7()
		if err != nil {
			panic(err)
		}
		c.ids = append(c.ids, id.String())
		c.types = append(c.types, ev.AggregateType)
		c.aggIDs = append(c.aggIDs, ev.AggregateID)
		c.evTypes = append(c.evTypes, ev.EventType)
		c.payloads = append(c.payloads, ev.Payload)
		c.headers = append(c.headers, map[string]string{"traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", "baggage": "tenant=acme"})
		c.created = append(c.created, now)
	}
	return c
}
