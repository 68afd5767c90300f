package cdc

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.uber.org/zap/zaptest"

	"github.com/outbox-relay/outbox-relay/internal/metrics"
	"github.com/outbox-relay/outbox-relay/internal/testenv"
)

// TestReaderMarksTheLastRowOfEachTransaction: TxnEnd is set on exactly the
// last outbox row of each transaction, also when other tables' rows follow
// it in the transaction, so that the pump can close an atomic batch per
// transaction without waiting for the next one.
func TestReaderMarksTheLastRowOfEachTransaction(t *testing.T) {
	t.Parallel()
	pg := testenv.StartPostgres(t)
	pg.CreateDatabase(t, "app")
	pg.Exec(t, "app", `CREATE TABLE outbox (id uuid, aggregate_type text, aggregate_id text, event_type text,
		payload jsonb, headers jsonb, created_at timestamptz);
		CREATE TABLE other (n int);
		CREATE PUBLICATION outbox_pub FOR TABLE outbox, other WITH (publish = 'insert', publish_via_partition_root = true)`)
	pg.Exec(t, "app", `SELECT pg_create_logical_replication_slot('outbox_slot', 'pgoutput')`)
	insert := func(n int) string {
		return fmt.Sprintf(`INSERT INTO outbox SELECT gen_random_uuid(), 'order', g::text, 'created', '{}', NULL, now() FROM generate_series(1, %d) g;`, n)
	}
	sizes := []int{1, 3, 5, 2}
	for i, n := range sizes {
		sql := "BEGIN; " + insert(n)
		if i == 2 {
			// Rows of another table after the last outbox row.
			sql += ` INSERT INTO other VALUES (1), (2);`
		}
		pg.Exec(t, "app", sql+" COMMIT;")
	}
	// A transaction without outbox rows in between changes nothing.
	pg.Exec(t, "app", `INSERT INTO other VALUES (3)`)

	cfg := validConfig()
	cfg.PostgresURL = pg.URL("app")
	cfg.StatusInterval = 200 * time.Millisecond
	cfg.ReplicationTimeout = 0
	cfg.MarkTxnEnd = true
	r := NewReader(cfg, zaptest.NewLogger(t), metrics.New("test", "test"))
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()

	total := 0
	for _, n := range sizes {
		total += n
	}
	var got []Event
	for len(got) < total {
		select {
		case ev := <-r.Events():
			got = append(got, ev)
			r.Ack(ev)
		case err := <-done:
			t.Fatalf("Run ended: %v", err)
		case <-ctx.Done():
			t.Fatalf("read %d of %d events", len(got), total)
		}
	}
	cancel()
	<-done

	i := 0
	for txn, n := range sizes {
		for k := range n {
			ev := got[i]
			require.Equal(t, uint32(k), ev.Position.Index, "transaction %d row %d", txn, k)
			require.Equal(t, k == n-1, ev.TxnEnd, "transaction %d row %d of %d: TxnEnd only on the last", txn, k, n)
			require.Equal(t, got[i-k].Position.CommitLSN, ev.Position.CommitLSN)
			i++
		}
	}
}
