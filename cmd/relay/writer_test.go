package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"

	"github.com/outbox-relay/outbox-relay/internal/e2e"
	"github.com/outbox-relay/outbox-relay/outbox"
)

// TestWriterPackageEndToEnd runs the service side as a service would: the
// outbox package creates a partitioned outbox and its publication, and
// writes events in transactions (some rolled back, some large enough to be
// TOASTed), a third of them with ModeInsertDelete, so that their rows are
// deleted in the transaction that wrote them, a third with ModeMessage, as
// logical decoding messages (some in the same transaction as rows). The relay runs with
// --create-publication=false, so it must accept the publication Migrate
// made as it is. Every committed event reaches the stream once, in commit
// order, inserted-and-deleted ones and messages included; the table keeps
// only the rows written with ModeInsert.
func TestWriterPackageEndToEnd(t *testing.T) {
	f := newFixture(t)
	const db = "svc"
	f.pg.CreateDatabase(t, db)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	conn := f.pg.Connect(t, db)
	require.NoError(t, outbox.Migrate(ctx, outbox.Pgx(conn), outbox.Partitioned, true))
	// Rows of today go to a range partition, the rest to the default one.
	_, err := conn.Exec(ctx, `CREATE TABLE events_today PARTITION OF events FOR VALUES FROM (now() - interval '1 day') TO (now() + interval '1 day')`)
	require.NoError(t, err)
	relay := f.startRelay(t, "RELAY_POSTGRES_URL", f.pg.URL(db), "RELAY_CREATE_PUBLICATION", "false", "RELAY_MESSAGE_PREFIX", "outbox")

	keeping, err := outbox.New()
	require.NoError(t, err)
	deleting, err := outbox.New(outbox.WithMode(outbox.ModeInsertDelete))
	require.NoError(t, err)
	emitting, err := outbox.New(outbox.WithMode(outbox.ModeMessage))
	require.NoError(t, err)
	traced, _ := e2e.TracedContext()

	var committed, kept []string
	for i := range 24 {
		w := []*outbox.Writer{keeping, deleting, emitting}[i%3]
		events := make([]outbox.Event, 1+i%4)
		for j := range events {
			events[j] = outbox.Event{AggregateType: "order", AggregateID: tagf("o-%d", i), EventType: "created", Payload: json.RawMessage(tagf(`{"i": %d, "j": %d}`, i, j))}
		}
		if i%5 == 3 {
			// Larger than TOAST's threshold, and incompressible: stored
			// out of line, and deleted with its row in ModeInsertDelete.
			big := make([]byte, 64<<10)
			_, _ = rand.Read(big)
			events[0].Payload = json.RawMessage(`{"blob": "` + hex.EncodeToString(big) + `"}`)
		}
		if i%7 == 4 {
			events[0].CreatedAt = time.Date(2020, 1, 1, 0, 0, 0, 0, time.UTC) // the default partition
		}
		tx, err := conn.Begin(ctx)
		require.NoError(t, err)
		ids, err := w.Write(traced, outbox.Pgx(tx), events...)
		require.NoError(t, err)
		var rowIDs []string
		rowsKept := false
		if i%4 == 2 {
			// Rows and messages in one transaction: commit order holds
			// across both.
			other := []*outbox.Writer{emitting, keeping}[(i/4)%2]
			rowIDs, err = other.Write(traced, outbox.Pgx(tx), outbox.Event{AggregateType: "order", AggregateID: tagf("o-%d", i), EventType: "created", Payload: json.RawMessage(`{"mixed": true}`)})
			require.NoError(t, err)
			rowsKept = other == keeping
		}
		if i%6 == 5 {
			require.NoError(t, tx.Rollback(ctx))
			continue
		}
		require.NoError(t, tx.Commit(ctx))
		committed = append(append(committed, ids...), rowIDs...)
		if w == keeping {
			kept = append(kept, ids...)
		}
		if rowsKept {
			kept = append(kept, rowIDs...)
		}
	}

	f.waitStream(t, len(committed), time.Minute)
	msgs := e2e.ReadStream(t, f.nc, "OUTBOX")
	v := e2e.Compare(committed, e2e.IDs(msgs))
	require.True(t, v.OK(), "stream vs commits: %s", v)
	for _, m := range msgs {
		require.Equal(t, "outbox.order.created", m.Subject)
		require.Equal(t, "tenant=acme", m.Header.Get("baggage"), m.Header.Get(jetstream.MsgIDHeader))
	}

	rows, err := conn.Query(ctx, `SELECT id::text FROM events ORDER BY created_at, id`)
	require.NoError(t, err)
	left, err := pgx.CollectRows(rows, pgx.RowTo[string])
	require.NoError(t, err)
	require.ElementsMatch(t, kept, left, "only the rows written without ModeInsertDelete stay")

	code, err := relay.Stop(30 * time.Second)
	require.NoError(t, err)
	require.Equal(t, 0, code)
}
