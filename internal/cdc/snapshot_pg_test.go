package cdc

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/outbox-relay/outbox-relay/internal/testenv"
)

// TestScanReadsTheSlotsSnapshotInChunks: against PostgreSQL, a Scan of a
// slot's exported snapshot returns exactly the rows committed before the
// slot that the selection picks (every row, rows created since a time, rows
// matching a condition, rows not published by an earlier attempt), none
// committed after it, in created_at order (rows of a transaction in
// insertion order, rows without created_at last), in chunks of at most 1000 rows, and
// smaller ones when the rows are large for --event-buffer-bytes (the first
// chunk, read before any row's size is known, is small).
func TestScanReadsTheSlotsSnapshotInChunks(t *testing.T) {
	t.Parallel()
	pg := testenv.StartPostgres(t)
	pg.CreateDatabase(t, "app")
	pg.Exec(t, "app", `CREATE TABLE outbox (id uuid PRIMARY KEY, aggregate_type text, aggregate_id text, event_type text,
		payload jsonb, headers jsonb, created_at timestamptz, sent_at timestamptz);
		CREATE PUBLICATION outbox_pub FOR TABLE outbox WITH (publish = 'insert', publish_via_partition_root = true)`)
	// 2500 rows a millisecond apart, inserted in reverse of their creation
	// order; every tenth one sent; one transaction of three rows sharing
	// created_at; five rows from 2020; two without created_at.
	pg.Exec(t, "app", `INSERT INTO outbox SELECT gen_random_uuid(), 'order', i::text, 'created', jsonb_build_object('i', i), NULL,
		'2026-01-01T00:00:00Z'::timestamptz + i * interval '1 millisecond', CASE WHEN i % 10 = 0 THEN now() END
		FROM generate_series(2500, 1, -1) AS i`)
	pg.Exec(t, "app", `INSERT INTO outbox SELECT gen_random_uuid(), 'order', 'tx-' || i, 'created', '{}', NULL, '2026-01-01T00:00:01.2345Z', NULL
		FROM generate_series(1, 3) AS i`)
	pg.Exec(t, "app", `INSERT INTO outbox SELECT gen_random_uuid(), 'order', 'old-' || i, 'created', '{}', NULL, '2020-01-01T00:00:00Z'::timestamptz + i * interval '1 second', NULL
		FROM generate_series(1, 5) AS i`)
	pg.Exec(t, "app", `INSERT INTO outbox SELECT gen_random_uuid(), 'order', 'null-' || i, 'created', '{}', NULL, NULL, NULL
		FROM generate_series(1, 2) AS i`)
	expected := func(where string) []string {
		conn := pg.Connect(t, "app")
		rows, err := conn.Query(context.Background(), `SELECT aggregate_id FROM outbox `+where+` ORDER BY created_at, xmin::text::bigint, ctid`)
		require.NoError(t, err)
		var ids []string
		for rows.Next() {
			var id string
			require.NoError(t, rows.Scan(&id))
			ids = append(ids, id)
		}
		require.NoError(t, rows.Err())
		return ids
	}

	tests := []struct {
		name        string
		sel         Selection
		where       string // the same selection in SQL
		bufferBytes int64
		chunks      []int
	}{
		{name: "all", where: ``, chunks: []int{16, 1000, 1000, 494}},
		{name: "since", sel: Selection{Since: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}, where: `WHERE created_at >= '2026-01-01T00:00:00Z'`, chunks: []int{16, 1000, 1000, 487}},
		{name: "where", sel: Selection{Where: "sent_at IS NULL"}, where: `WHERE sent_at IS NULL`, chunks: []int{16, 1000, 1000, 244}},
		{
			name: "published before", sel: Selection{PublishedBefore: time.Date(2026, 1, 1, 0, 0, 2, 0, time.UTC)},
			where: `WHERE created_at IS NULL OR created_at >= '2026-01-01T00:00:02Z'`, chunks: []int{16, 487},
		},
		{
			name: "since and where", sel: Selection{Since: time.Date(2026, 1, 1, 0, 0, 2, 0, time.UTC), Where: "sent_at IS NULL"},
			where: `WHERE created_at >= '2026-01-01T00:00:02Z' AND sent_at IS NULL`, chunks: []int{16, 434},
		},
		// About 290 bytes a row: a quarter of 29000 bytes is 25 rows.
		{name: "large rows", where: ``, bufferBytes: 29000},
	}
	for i, tt := range tests {
		cfg := validConfig()
		cfg.PostgresURL = pg.URL("app")
		cfg.Slot = fmt.Sprintf("scan_%d", i)
		if tt.bufferBytes > 0 {
			cfg.EventBufferBytes = tt.bufferBytes
		}
		ctx := context.Background()
		slot, err := CreateRecoverySlot(ctx, cfg)
		require.NoError(t, err, tt.name)
		// Committed after the slot: decoded by the slot, never scanned.
		pg.Exec(t, "app", `INSERT INTO outbox VALUES (gen_random_uuid(), 'order', 'after-`+tt.name+`', 'created', '{}', NULL, '2026-01-01T00:00:01Z', NULL)`)
		scan, err := slot.Scan(ctx, tt.sel)
		require.NoError(t, err, tt.name)
		want := expected(tt.where)
		want = slices.DeleteFunc(want, func(id string) bool { return strings.HasPrefix(id, "after-") })
		require.Equal(t, int64(len(want)), scan.Total(), tt.name)
		var got []string
		var chunks []int
		for {
			rows, err := scan.Next(ctx)
			require.NoError(t, err, tt.name)
			if len(rows) == 0 {
				break
			}
			chunks = append(chunks, len(rows))
			for _, ev := range rows {
				require.Empty(t, ev.Defect)
				got = append(got, ev.AggregateID)
			}
		}
		scan.Close()
		pg.Exec(t, "app", `DELETE FROM outbox WHERE aggregate_id LIKE 'after-%'`)
		require.Equal(t, want, got, "%s: the rows committed before the slot that the selection picks, in created_at order", tt.name)
		if tt.chunks != nil {
			require.Equal(t, tt.chunks, chunks, tt.name)
		} else {
			require.Greater(t, len(chunks), 50, "%s: chunks are cut to a quarter of the byte budget", tt.name)
			require.LessOrEqual(t, chunks[len(chunks)-2], 30, tt.name)
		}
	}
}

// TestCheckSelectionRefusesWhatIsNotOneCondition: a where: condition must
// be one boolean expression over the outbox's columns; it is only prepared,
// never run, and the error names the setting.
func TestCheckSelectionRefusesWhatIsNotOneCondition(t *testing.T) {
	t.Parallel()
	pg := testenv.StartPostgres(t)
	pg.CreateDatabase(t, "app")
	pg.Exec(t, "app", `CREATE TABLE outbox (id uuid PRIMARY KEY, aggregate_type text, aggregate_id text, event_type text,
		payload jsonb, headers jsonb, created_at timestamptz, sent_at timestamptz)`)
	cfg := validConfig()
	cfg.PostgresURL = pg.URL("app")
	tests := []struct {
		where   string
		problem string // "" for a valid condition
	}{
		{where: "sent_at IS NULL"},
		{where: "sent_at IS NULL AND created_at > now() - interval '1 day'"},
		{where: "sent_at IS NULL; DROP TABLE outbox", problem: "syntax error"},
		{where: "sent_at IS NULL); DROP TABLE outbox; SELECT (true", problem: "multiple commands"},
		{where: "aggregate_id", problem: "must be type boolean"},
		{where: "published = false", problem: `column "published" does not exist`},
	}
	for _, tt := range tests {
		err := CheckSelection(context.Background(), cfg, Selection{Where: tt.where}, "initial-snapshot")
		if tt.problem == "" {
			require.NoError(t, err, tt.where)
			continue
		}
		require.ErrorIs(t, err, ErrConfig, tt.where)
		require.ErrorContains(t, err, "initial-snapshot: ", tt.where)
		require.ErrorContains(t, err, tt.problem, tt.where)
	}
	var n int
	require.NoError(t, pg.Connect(t, "app").QueryRow(context.Background(), `SELECT count(*) FROM outbox`).Scan(&n), "the table is still there")
}

// TestScanTableSelectsByTimeAndIDs: against PostgreSQL, ScanTable reads the
// table as it is, without a slot: rows created in a half-open time range,
// rows created strictly after a time, or rows with given ids (compared as
// values of the id column's type, so a uuid written without hyphens finds its row, and
// the ids no row has are listed), in created_at order, then transaction and
// insertion order. An id that is no value of the column's type is an error.
func TestScanTableSelectsByTimeAndIDs(t *testing.T) {
	t.Parallel()
	pg := testenv.StartPostgres(t)
	pg.CreateDatabase(t, "app")
	pg.Exec(t, "app", `CREATE TABLE outbox (id uuid PRIMARY KEY, aggregate_type text, aggregate_id text, event_type text,
		payload jsonb, headers jsonb, created_at timestamptz)`)
	// Inserted in reverse of their creation order, a second apart; three
	// rows of one transaction share a time.
	pg.Exec(t, "app", `INSERT INTO outbox SELECT ('00000000-0000-0000-0000-' || lpad(i::text, 12, '0'))::uuid, 'order', i::text, 'created', '{}', NULL,
		'2026-01-01T00:00:00Z'::timestamptz + i * interval '1 second' FROM generate_series(10, 1, -1) AS i`)
	pg.Exec(t, "app", `INSERT INTO outbox SELECT ('00000000-0000-0000-0001-' || lpad(i::text, 12, '0'))::uuid, 'order', 'tx-' || i, 'created', '{}', NULL,
		'2026-01-01T00:00:05Z' FROM generate_series(1, 3) AS i`)
	at := func(s int) time.Time { return time.Date(2026, 1, 1, 0, 0, s, 0, time.UTC) }
	tests := []struct {
		name    string
		sel     Selection
		want    []string
		missing []string
	}{
		{name: "range", sel: Selection{Since: at(4), Until: at(7)}, want: []string{"4", "5", "tx-1", "tx-2", "tx-3", "6"}},
		{name: "after", sel: Selection{After: at(8)}, want: []string{"9", "10"}},
		{
			name: "ids", sel: Selection{IDs: []string{"00000000-0000-0000-0000-000000000009", "{00000000000000000000000000000010}", "00000000-0000-0000-0001-000000000002", "00000000-0000-0000-0000-000000000099"}},
			want: []string{"tx-2", "9", "10"}, missing: []string{"00000000-0000-0000-0000-000000000099"},
		},
	}
	for _, tt := range tests {
		cfg := validConfig()
		cfg.PostgresURL = pg.URL("app")
		ctx := context.Background()
		scan, err := ScanTable(ctx, cfg, tt.sel)
		require.NoError(t, err, tt.name)
		require.Equal(t, int64(len(tt.want)), scan.Total(), tt.name)
		require.Equal(t, tt.missing, scan.Missing(), tt.name)
		var got []string
		for {
			rows, err := scan.Next(ctx)
			require.NoError(t, err, tt.name)
			if len(rows) == 0 {
				break
			}
			for _, ev := range rows {
				got = append(got, ev.AggregateID)
			}
		}
		scan.Close()
		require.Equal(t, tt.want, got, tt.name)
	}
	cfg := validConfig()
	cfg.PostgresURL = pg.URL("app")
	_, err := ScanTable(context.Background(), cfg, Selection{IDs: []string{"not-a-uuid"}})
	require.ErrorContains(t, err, "invalid input syntax for type uuid")
}
