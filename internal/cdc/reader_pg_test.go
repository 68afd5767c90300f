package cdc

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/stretchr/testify/require"
	"go.uber.org/zap/zaptest"

	"github.com/outbox-relay/outbox-relay/internal/metrics"
	"github.com/outbox-relay/outbox-relay/internal/testenv"
)

// TestReaderStopsOnPublicationProblems runs the Reader against PostgreSQL 15
// and 18: a publication missing at a WAL position and a publication changed
// while it runs each end Run with a PublicationError of their kind, counted
// in outbox_relay_cdc_publication_problems_total, after the events before
// them were handed on.
func TestReaderStopsOnPublicationProblems(t *testing.T) {
	t.Parallel()
	const create = `CREATE PUBLICATION outbox_pub FOR TABLE outbox WITH (publish = 'insert', publish_via_partition_root = true)`
	const insert = `INSERT INTO outbox VALUES (gen_random_uuid(), 'order', '1', 'created', '{}', NULL, now())`
	tests := []struct {
		name    string
		kind    string
		before  string // with the reader stopped
		running string // while it runs
	}{
		{name: "missing", kind: PublicationMissing, before: insert + `; DROP PUBLICATION outbox_pub; ` + insert + `; ` + create},
		{name: "changed", kind: PublicationChanged, before: insert, running: `ALTER PUBLICATION outbox_pub DROP TABLE outbox`},
	}
	for _, major := range []int{15, 18} {
		for _, tt := range tests {
			t.Run(tt.name+"/pg"+string(rune('0'+major/10))+string(rune('0'+major%10)), func(t *testing.T) {
				t.Parallel()
				var opts []testenv.PostgresOption
				if major != 15 {
					opts = append(opts, testenv.WithPostgresBin(testenv.PostgresBinFor(t, major)))
				}
				pg := testenv.StartPostgres(t, opts...)
				pg.CreateDatabase(t, "app")
				pg.Exec(t, "app", `CREATE TABLE outbox (id uuid, aggregate_type text, aggregate_id text, event_type text,
					payload jsonb, headers jsonb, created_at timestamptz); `+create)
				pg.Exec(t, "app", `SELECT pg_create_logical_replication_slot('outbox_slot', 'pgoutput')`)
				pg.Exec(t, "app", tt.before)

				cfg := validConfig()
				cfg.PostgresURL = pg.URL("app")
				cfg.StatusInterval = 200 * time.Millisecond
				cfg.ReplicationTimeout = 0 // derived from wal_sender_timeout
				cfg.PublicationCheckInterval = 200 * time.Millisecond
				m := metrics.New("test", "test")
				r := NewReader(cfg, zaptest.NewLogger(t), m)
				// As the relay does: the baseline is what preflight validated.
				state, err := Preflight(context.Background(), cfg, zaptest.NewLogger(t), func(string, string) error { return nil })
				require.NoError(t, err)
				r.SetPublicationBaseline(state.Publication)
				var read atomic.Int32
				go func() {
					for ev := range r.Events() {
						read.Add(1)
						r.Ack(ev)
					}
				}()
				ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
				defer cancel()
				done := make(chan error, 1)
				go func() { done <- r.Run(ctx) }()
				require.Eventually(t, func() bool { return read.Load() == 1 }, 30*time.Second, 20*time.Millisecond, "the event before the problem")
				if tt.running != "" {
					pg.Exec(t, "app", tt.running)
					pg.Exec(t, "app", insert)
				}
				select {
				case err = <-done:
				case <-ctx.Done():
					t.Fatal("Run did not stop")
				}
				var pubErr *PublicationError
				require.True(t, errors.As(err, &pubErr), "%v", err)
				require.Equal(t, tt.kind, pubErr.Kind)
				require.ErrorIs(t, err, ErrConfig)
				require.Equal(t, 1.0, testutil.ToFloat64(m.CDCPublicationProblems.WithLabelValues(tt.kind)))
				require.EqualValues(t, 1, read.Load(), "nothing after the problem")
			})
		}
	}
}
