package cdc_test

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.uber.org/zap/zaptest"

	"github.com/outbox-relay/outbox-relay/internal/cdc"
	"github.com/outbox-relay/outbox-relay/internal/e2e"
	"github.com/outbox-relay/outbox-relay/internal/metrics"
	"github.com/outbox-relay/outbox-relay/internal/testenv"
)

// TestRetiredReaderLetsGoOfTheSlot: a retired reader keeps the session it
// has, and when a new leader's reader takes the slot over it returns
// without reconnecting, so it never ends the new leader's session.
func TestRetiredReaderLetsGoOfTheSlot(t *testing.T) {
	t.Parallel()
	pg := testenv.StartPostgres(t)
	pg.CreateDatabase(t, "app")
	e2e.SetupOutbox(t, pg, "app")
	cfg := cdc.Config{
		PostgresURL: pg.URL("app"), Schema: "public", Table: "events",
		Columns: cdc.Columns{
			ID: "id", AggregateType: "aggregate_type", AggregateID: "aggregate_id", EventType: "event_type",
			Payload: "payload", Headers: "headers", CreatedAt: "created_at",
		},
		Publication: "outbox_relay", Slot: "outbox_relay", CreatePublication: true, CreateSlot: true,
		StatusInterval: 200 * time.Millisecond, ReplicationTimeout: 2 * time.Minute, ConnectTimeout: 5 * time.Second,
		QueryTimeout: 5 * time.Second, SlotPollInterval: time.Second, ReconnectMin: 50 * time.Millisecond,
		ReconnectMax: 200 * time.Millisecond, TakeOverActiveSlot: true, EventBuffer: 16,
		EventBufferBytes: 1 << 20, PublicationCheckInterval: 200 * time.Millisecond,
	}
	require.NoError(t, cfg.Validate())
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	_, err := cdc.Preflight(ctx, cfg, zaptest.NewLogger(t), func(string, string) error { return nil })
	require.NoError(t, err)

	admin := pg.Connect(t, "app")
	activePID := func() int32 {
		var pid *int32
		if err := admin.QueryRow(ctx, `SELECT active_pid FROM pg_replication_slots WHERE slot_name = 'outbox_relay'`).Scan(&pid); err != nil || pid == nil {
			return 0
		}
		return *pid
	}
	start := func(name string) (*cdc.Reader, <-chan error) {
		r := cdc.NewReader(cfg, zaptest.NewLogger(t).Named(name), metrics.New("test", "test"))
		done := make(chan error, 1)
		go func() { done <- r.Run(ctx) }()
		require.Eventually(t, r.Streaming, 10*time.Second, 10*time.Millisecond, "%s streams", name)
		return r, done
	}

	old, oldDone := start("old")
	oldPID := activePID()
	require.NotZero(t, oldPID)
	old.Retire()
	require.Never(t, func() bool { return !old.Streaming() }, time.Second, 50*time.Millisecond, "the retired reader keeps its session")

	_, newDone := start("new")
	select {
	case err := <-oldDone:
		require.NoError(t, err, "the retired reader returns once its session was taken over")
	case <-time.After(10 * time.Second):
		t.Fatal("the retired reader did not return after its session was taken over")
	}
	newPID := activePID()
	require.NotZero(t, newPID)
	require.NotEqual(t, oldPID, newPID)
	// Polled here, not with require.Never, whose condition may still run
	// in its own goroutine on admin after Never returned.
	for deadline := time.Now().Add(2 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		require.Equal(t, newPID, activePID(), "the slot stays with the new reader's session")
	}
	cancel()
	require.NoError(t, <-newDone)
}
