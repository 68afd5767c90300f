package main

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/outbox-relay/outbox-relay/internal/e2e"
	"github.com/outbox-relay/outbox-relay/internal/testenv"
)

// day returns midnight UTC, days from today, as a timestamptz literal.
func day(days int) string {
	return time.Now().UTC().Truncate(24*time.Hour).AddDate(0, 0, days).Format("2006-01-02 15:04:05+00")
}

// partitionOutbox replaces the fixture's events table in db with one
// partitioned by created_at, as users partition outboxes: events_old holds
// everything before yesterday, events_cur yesterday to the day after
// tomorrow (so now() lands there).
func partitionOutbox(t *testing.T, pg *testenv.Postgres, db string) {
	t.Helper()
	pg.Exec(t, db, fmt.Sprintf(`DROP TABLE events;
		CREATE TABLE events (
			id             uuid        NOT NULL DEFAULT gen_random_uuid(),
			aggregate_type text        NOT NULL,
			aggregate_id   text        NOT NULL,
			event_type     text        NOT NULL,
			payload        jsonb       NOT NULL,
			headers        jsonb,
			created_at     timestamptz NOT NULL DEFAULT now(),
			PRIMARY KEY (id, created_at)
		) PARTITION BY RANGE (created_at);
		CREATE TABLE events_old PARTITION OF events FOR VALUES FROM ('2000-01-01') TO ('%s');
		CREATE TABLE events_cur PARTITION OF events FOR VALUES FROM ('%s') TO ('%s');`,
		day(-1), day(-1), day(2)))
}

// stopRelay stops the relay with SIGTERM and expects a clean exit.
func stopRelay(t *testing.T, r *e2e.Relay) {
	t.Helper()
	code, err := r.Stop(30 * time.Second)
	require.NoError(t, err)
	require.Equal(t, 0, code, "SIGTERM exits 0")
}

// writeAt commits one transaction of n events created at createdAt.
func (f *fixture) writeAt(t *testing.T, n int, tag, createdAt string) []string {
	t.Helper()
	events := e2e.SampleEvents(n, 64, tag)
	for i := range events {
		events[i].CreatedAt = createdAt
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	ids, err := f.writer.Write(ctx, events, false)
	require.NoError(t, err)
	return ids
}

// TestPartitionedOutboxPublishesEveryEvent (trial W26): on an outbox
// partitioned by created_at, the publication the relay creates publishes
// every partition's inserts under the outbox's name. Partitions created
// later are covered, and detaching and dropping partitions, while the relay
// runs or while it is down with their rows still unread, loses nothing.
func TestPartitionedOutboxPublishesEveryEvent(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	partitionOutbox(t, f.pg, f.db)
	relay := f.startRelay(t)

	f.write(t, 3, "cur")
	f.writeAt(t, 2, "old", "2020-01-01 00:00:00+00")
	f.waitStream(t, 5, 30*time.Second)

	// A partition created while the relay runs.
	f.pg.Exec(t, f.db, fmt.Sprintf(`CREATE TABLE events_next PARTITION OF events FOR VALUES FROM ('%s') TO ('%s')`, day(2), day(40)))
	f.writeAt(t, 3, "next", day(3))
	// An old partition detached and dropped while the relay runs.
	f.pg.Exec(t, f.db, `ALTER TABLE events DETACH PARTITION events_old; DROP TABLE events_old`)
	f.write(t, 2, "after-drop")
	f.waitStream(t, 10, 30*time.Second)

	// Rows still unread when their partition is detached and dropped: the
	// relay reads them from the WAL, not from the table.
	stopRelay(t, relay)
	f.writeAt(t, 2, "next-unread", day(4))
	f.pg.Exec(t, f.db, `ALTER TABLE events DETACH PARTITION events_next; DROP TABLE events_next`)
	f.write(t, 1, "cur-after")
	f.startRelay(t)
	f.waitStream(t, 13, 30*time.Second)
	f.verify(t)
}

// TestPartitionDeliveredUnderItsOwnNameStopsTheRelay (trial W27): when a
// partition's inserts reach the relay under the partition's name, the relay
// stops naming the fix instead of ignoring them, and the slot is never
// confirmed past them.
func TestPartitionDeliveredUnderItsOwnNameStopsTheRelay(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	partitionOutbox(t, f.pg, f.db)
	relay := f.startRelay(t)
	f.write(t, 2, "before")
	f.waitStream(t, 2, 30*time.Second)

	f.pg.Exec(t, f.db, `ALTER PUBLICATION outbox_relay SET (publish_via_partition_root = false)`)
	before := f.currentWAL(t)
	f.write(t, 1, "under-partition-name")
	code, err := relay.Wait(60 * time.Second)
	require.NoError(t, err, "the relay stops")
	require.Equal(t, 1, code)
	require.Contains(t, relay.Logs(), "publish_via_partition_root = true")
	require.LessOrEqual(t, uint64(f.confirmedLSN(t)), uint64(before), "the slot is not confirmed past the insert")
	require.Equal(t, 2, e2e.StreamCount(f.nc, "OUTBOX"))
}

// TestPublicationThatWouldHideEventsIsRefused: a publication that would
// deliver the outbox's inserts under other names, filter its rows, or leave
// out a mapped column is refused by `relay check` and `relay run`, each with
// the statement that fixes it.
func TestPublicationThatWouldHideEventsIsRefused(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	tests := []struct {
		name        string
		partitioned bool
		pg15        bool // row filters and column lists came with PostgreSQL 15
		setup       string
		env         []string
		want        []string
		notWant     string
	}{
		{
			name: "partitioned outbox without publish_via_partition_root (trial W25)", partitioned: true,
			setup:   `CREATE PUBLICATION outbox_relay FOR TABLE events WITH (publish = 'insert')`,
			want:    []string{`ALTER PUBLICATION "outbox_relay" SET (publish_via_partition_root = true)`},
			notWant: "ADD TABLE",
		},
		{
			name: "row filter", pg15: true,
			setup: `CREATE PUBLICATION outbox_relay FOR TABLE events WHERE (event_type <> 'internal') WITH (publish = 'insert')`,
			want:  []string{"row filter", "event_type"},
		},
		{
			name: "column list without a mapped column", pg15: true,
			setup: `CREATE PUBLICATION outbox_relay FOR TABLE events (id, aggregate_type, aggregate_id, event_type, payload, created_at) WITH (publish = 'insert')`,
			want:  []string{"column list", "headers"},
		},
		{
			name: "table is a partition of a table published via its root", partitioned: true,
			setup: `CREATE PUBLICATION outbox_relay FOR TABLE events WITH (publish = 'insert', publish_via_partition_root = true)`,
			env:   []string{"RELAY_TABLE", "events_cur"},
			want:  []string{"partition of", `"public"."events"`, "--table"},
		},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.pg15 && f.pg.Version(t) < 150000 {
				t.Logf("PostgreSQL %d has no such publications", f.pg.Version(t))
				return
			}
			db := fmt.Sprintf("refused%d", i)
			f.pg.CreateDatabase(t, db)
			e2e.SetupOutbox(t, f.pg, db)
			if tt.partitioned {
				partitionOutbox(t, f.pg, db)
			}
			f.pg.Exec(t, db, tt.setup)
			env := f.env(append([]string{"RELAY_POSTGRES_URL", f.pg.URL(db)}, tt.env...)...)
			for _, cmd := range []string{"check", "run"} {
				code, out := runCommand(t, f.bin, env, cmd)
				out = unescaped(out)
				require.Equal(t, 1, code, "%s: %s", cmd, out)
				for _, w := range tt.want {
					require.Contains(t, out, w, cmd)
				}
				if tt.notWant != "" {
					require.NotContains(t, out, tt.notWant, cmd)
				}
				require.False(t, strings.Contains(out, "retrying"), "%s: a publication problem is not retried: %s", cmd, out)
			}
		})
	}
}
