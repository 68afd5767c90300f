package cdc

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/stretchr/testify/require"
	"go.uber.org/zap/zaptest"

	"github.com/outbox-relay/outbox-relay/internal/metrics"
	"github.com/outbox-relay/outbox-relay/internal/testenv"
)

// TestReaderStopsOnAnIdleTimedOutSlot runs the Reader against PostgreSQL 18
// with idle_replication_slot_timeout = 1s: the replication session ends,
// and before the reader reconnects the slot has been unused for longer than
// the timeout and a checkpoint invalidates it (invalidation_reason =
// idle_timeout, wal_status = lost). Run ends with ErrSlot naming the
// setting and the recovery, counted in outbox_relay_cdc_slot_problems_total,
// and the slot's wal_status gauge shows lost.
func TestReaderStopsOnAnIdleTimedOutSlot(t *testing.T) {
	t.Parallel()
	pg := testenv.StartPostgres(t, testenv.WithPostgresBin(testenv.PostgresBinFor(t, 18)),
		testenv.WithPostgresConfig("idle_replication_slot_timeout", "1s"))
	pg.CreateDatabase(t, "app")
	pg.Exec(t, "app", `CREATE TABLE outbox (id uuid, aggregate_type text, aggregate_id text, event_type text,
		payload jsonb, headers jsonb, created_at timestamptz);
		CREATE PUBLICATION outbox_pub FOR TABLE outbox WITH (publish = 'insert', publish_via_partition_root = true)`)
	pg.Exec(t, "app", `SELECT pg_create_logical_replication_slot('outbox_slot', 'pgoutput')`)
	pg.Exec(t, "app", `INSERT INTO outbox VALUES (gen_random_uuid(), 'order', '1', 'created', '{}', NULL, now())`)

	cfg := validConfig()
	cfg.PostgresURL = pg.URL("app")
	cfg.StatusInterval = 200 * time.Millisecond
	cfg.ReplicationTimeout = 0
	// The reconnect waits 6 to 12 s: time for the slot to be idle past
	// the timeout and for a checkpoint to invalidate it.
	cfg.ReconnectMin, cfg.ReconnectMax = 12*time.Second, 12*time.Second
	m := metrics.New("test", "test")
	r := NewReader(cfg, zaptest.NewLogger(t), m)
	go func() {
		for ev := range r.Events() {
			r.Ack(ev)
		}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()

	conn := pg.Connect(t, "app")
	require.Eventually(t, func() bool { return r.Streaming() }, 30*time.Second, 20*time.Millisecond)
	pg.Exec(t, "app", `SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots WHERE slot_name = 'outbox_slot'`)
	require.Eventually(t, func() bool {
		pg.Exec(t, "app", `CHECKPOINT`)
		var reason *string
		require.NoError(t, conn.QueryRow(ctx, `SELECT invalidation_reason FROM pg_replication_slots WHERE slot_name = 'outbox_slot'`).Scan(&reason))
		return reason != nil && *reason == "idle_timeout"
	}, 30*time.Second, 200*time.Millisecond, "the idle slot is invalidated at a checkpoint")

	var err error
	select {
	case err = <-done:
	case <-ctx.Done():
		t.Fatal("Run did not stop")
	}
	require.ErrorIs(t, err, ErrSlot)
	require.ErrorContains(t, err, `slot: "outbox_slot" is lost (wal_status = lost, invalidation_reason = idle_timeout)`)
	require.ErrorContains(t, err, "idle_replication_slot_timeout")
	require.ErrorContains(t, err, "recovery section of the README")
	require.Equal(t, 1.0, testutil.ToFloat64(m.CDCSlotProblems))
	require.Equal(t, 1.0, testutil.ToFloat64(m.CDCSlotWALStatus.WithLabelValues("lost")))
	require.False(t, errors.Is(err, ErrConfig))
}

// TestSlotUsable is the rule for an existing slot: a logical pgoutput slot of
// the database, not lost; a lost or invalidated one is refused with the
// cause PostgreSQL gave, on every major (PostgreSQL 14 and 15 have no
// invalidation_reason, 16 only conflicting).
func TestSlotUsable(t *testing.T) {
	t.Parallel()
	valid := slotRow{plugin: "pgoutput", slotType: "logical", database: "app", walStatus: "reserved"}
	tests := []struct {
		name  string
		edit  func(*slotRow)
		wants []string // substrings of the error; none: usable
	}{
		{name: "valid", edit: func(*slotRow) {}},
		{name: "unreserved is still usable", edit: func(r *slotRow) { r.walStatus = "unreserved" }},
		{name: "physical", edit: func(r *slotRow) { r.slotType, r.plugin = "physical", "" }, wants: []string{"want a logical pgoutput slot"}},
		{name: "other database", edit: func(r *slotRow) { r.database = "other" }, wants: []string{`decodes database "other"`}},
		{
			name: "lost, 14 and 15", edit: func(r *slotRow) { r.walStatus = "lost" },
			wants: []string{`"s" is lost (wal_status = lost): PostgreSQL removed WAL it still needed (max_slot_wal_keep_size)`, "recovery section"},
		},
		{
			name: "wal removed, 17+", edit: func(r *slotRow) { r.walStatus, r.invalidation = "lost", "wal_removed" },
			wants: []string{"(wal_status = lost, invalidation_reason = wal_removed): PostgreSQL removed WAL"},
		},
		{
			name: "idle timeout, 18+", edit: func(r *slotRow) { r.walStatus, r.invalidation = "lost", "idle_timeout" },
			wants: []string{"(wal_status = lost, invalidation_reason = idle_timeout): no relay streamed from it for longer than idle_replication_slot_timeout", "recovery section"},
		},
		{
			name: "invalidated, wal_status not lost", edit: func(r *slotRow) { r.invalidation = "idle_timeout" },
			wants: []string{"(wal_status = reserved, invalidation_reason = idle_timeout)"},
		},
		{
			name: "conflict on a standby, 16", edit: func(r *slotRow) { r.walStatus, r.invalidation = "lost", "conflicting" },
			wants: []string{"hot_standby_feedback"},
		},
		{
			name: "rows removed, 17+", edit: func(r *slotRow) { r.walStatus, r.invalidation = "lost", "rows_removed" },
			wants: []string{"hot_standby_feedback"},
		},
		{
			name: "wal level", edit: func(r *slotRow) { r.walStatus, r.invalidation = "lost", "wal_level_insufficient" },
			wants: []string{"wal_level is no longer logical"},
		},
		{
			name: "a future reason", edit: func(r *slotRow) { r.walStatus, r.invalidation = "lost", "something_new" },
			wants: []string{"invalidation_reason = something_new): PostgreSQL invalidated it"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			r := valid
			tt.edit(&r)
			err := r.usable("s", "app")
			if len(tt.wants) == 0 {
				require.NoError(t, err)
				require.Empty(t, SlotReading{Exists: true, WALStatus: r.walStatus, InvalidationReason: r.invalidation}.LostCause())
				return
			}
			require.ErrorIs(t, err, ErrSlot)
			for _, want := range tt.wants {
				require.ErrorContains(t, err, want)
			}
		})
	}
}
