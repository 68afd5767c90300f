package cdc

import (
	"context"
	"testing"

	"github.com/stretchr/testify/require"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/outbox-relay/outbox-relay/internal/testenv"
)

// TestPreflightMakesAFailoverSlot: on PostgreSQL 17, with --failover-slot,
// preflight turns an existing slot into a failover slot and warns that
// synchronized_standby_slots is empty, without refusing to start.
func TestPreflightMakesAFailoverSlot(t *testing.T) {
	t.Parallel()
	pg := testenv.StartPostgres(t, testenv.WithPostgresBin(testenv.PostgresBinFor(t, 17)))
	pg.CreateDatabase(t, "app")
	pg.Exec(t, "app", `CREATE TABLE outbox (id uuid, aggregate_type text, aggregate_id text, event_type text,
			payload jsonb, headers jsonb, created_at timestamptz);
		CREATE PUBLICATION outbox_pub FOR TABLE outbox WITH (publish = 'insert', publish_via_partition_root = true)`)
	pg.Exec(t, "app", `SELECT pg_create_logical_replication_slot('outbox_slot', 'pgoutput')`)
	cfg := validConfig()
	cfg.PostgresURL = pg.URL("app")
	cfg.FailoverSlot = true
	cfg.ReplicationTimeout = 0
	core, logs := observer.New(zap.InfoLevel)
	_, err := Preflight(context.Background(), cfg, zap.New(core), func(string, string) error { return nil })
	require.NoError(t, err)

	conn := pg.Connect(t, "app")
	var failover bool
	require.NoError(t, conn.QueryRow(context.Background(), `SELECT failover FROM pg_replication_slots WHERE slot_name = 'outbox_slot'`).Scan(&failover))
	require.True(t, failover, "the slot was made a failover slot")
	require.Equal(t, 1, logs.FilterMessage("slot made a failover slot").Len())
	warnings := logs.FilterMessage("the slot is not ready for a failover").All()
	require.Len(t, warnings, 1)
	require.Contains(t, warnings[0].ContextMap()["error"], "synchronized_standby_slots is empty")
}
