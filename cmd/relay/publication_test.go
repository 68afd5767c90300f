package main

import (
	"context"
	"fmt"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/outbox-relay/outbox-relay/internal/e2e"
	"github.com/outbox-relay/outbox-relay/internal/testenv"
)

// majors returns the fixture options of each PostgreSQL major a test runs on:
// the harness default (15, or PG_BIN's under make test-matrix) and 18, from
// scripts/install-postgres.sh, each once.
func majors(t *testing.T) map[string][]testenv.PostgresOption {
	m := map[string][]testenv.PostgresOption{fmt.Sprintf("pg%d", testenv.DefaultPostgresMajor(t)): nil}
	if _, ok := m["pg18"]; !ok {
		m["pg18"] = []testenv.PostgresOption{testenv.WithPostgresBin(testenv.PostgresBinFor(t, 18))}
	}
	return m
}

// TestPublicationNamesKeepTheirCase: the relay creates and streams from a
// publication whose name has upper-case letters, quotes, a comma and spaces;
// pgoutput must look up exactly that name.
func TestPublicationNamesKeepTheirCase(t *testing.T) {
	t.Parallel()
	for _, name := range []string{"OutboxPub", `Out'box "Pub", x\y`} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			f := newFixture(t)
			relay := f.startRelay(t, "RELAY_PUBLICATION", name)
			f.write(t, 3, "named")
			f.waitStream(t, 3, 30*time.Second)
			f.verify(t)
			require.NotContains(t, relay.Logs(), "reconnecting")
		})
	}
}

// TestPublicationMissingAtAWALPositionStopsTheRelay: a publication dropped
// and created again while the slot lags is missing at the WAL positions in
// between. PostgreSQL 15-17 answer with an error on every reconnect,
// PostgreSQL 18 only warns and decodes nothing; either way the relay stops
// with an error that says what happened and what to do, the slot stays
// before the gap, and the documented recovery (README, "A publication
// missing at a WAL position") republishes every skipped row once, without
// superuser rights.
func TestPublicationMissingAtAWALPositionStopsTheRelay(t *testing.T) {
	t.Parallel()
	for major, opts := range majors(t) {
		t.Run(major, func(t *testing.T) {
			t.Parallel()
			f := newFixture(t, opts...)
			relay := f.startRelay(t)
			f.write(t, 2, "before")
			f.waitStream(t, 2, 30*time.Second)
			stopRelay(t, relay)

			// A migration while the relay is down: the publication is
			// dropped and created again, with rows written in between.
			f.write(t, 1, "pre-drop")
			f.pg.Exec(t, f.db, `DROP PUBLICATION outbox_relay`)
			gapStart := f.currentWAL(t)
			f.write(t, 1, "gap-1")
			f.write(t, 1, "gap-2")
			f.pg.Exec(t, f.db, `CREATE PUBLICATION outbox_relay FOR TABLE events WITH (publish = 'insert', publish_via_partition_root = true)`)
			f.write(t, 1, "after")

			// The start notices first that the publication is not the one
			// the last start validated; once the operator accepts it, the
			// reader finds where it was missing.
			refused := e2e.StartRelay(t, f.bin, f.env())
			code, err := refused.Wait(60 * time.Second)
			require.NoError(t, err, "the relay refuses to start on a publication changed while it was down")
			require.Equal(t, 1, code)
			digest := regexp.MustCompile(`--accept-publication=([0-9a-f]+)`).FindStringSubmatch(refused.Logs())
			require.NotNil(t, digest, "the error names how to accept the change")
			stopped := e2e.StartRelay(t, f.bin, f.env("RELAY_ACCEPT_PUBLICATION", digest[1]))
			code, err = stopped.Wait(60 * time.Second)
			require.NoError(t, err, "the relay stops instead of retrying or skipping")
			require.Equal(t, 1, code)
			logs := stopped.LogText()
			for _, want := range []string{`"outbox_relay" did not exist at WAL position`, "README", "pg_replication_slot_advance"} {
				require.Contains(t, logs, want)
			}
			require.LessOrEqual(t, uint64(f.confirmedLSN(t)), uint64(gapStart), "the slot stays before the gap")
			require.Equal(t, 3, e2e.StreamCount(f.nc, "OUTBOX"), "the events before the drop are published")

			recoverMissingPublication(t, f)
			f.startRelay(t)
			f.write(t, 1, "recovered")
			f.waitStream(t, 7, 30*time.Second)
			f.verify(t)
		})
	}
}

// recoverMissingPublication follows the README's recovery for a publication
// missing at a WAL position, with the relay stopped: while the table owner
// holds writers off the outbox, a role with only REPLICATION moves the slot
// to the current WAL position, and the rows that are not on the stream are
// written again with their ids.
func recoverMissingPublication(t *testing.T, f *fixture) {
	t.Helper()
	ctx := context.Background()
	f.pg.Exec(t, f.db, `CREATE ROLE relay_op LOGIN REPLICATION`)
	op, err := pgx.Connect(ctx, strings.Replace(f.pg.URL(f.db), "postgres@", "relay_op@", 1))
	require.NoError(t, err)
	defer op.Close(ctx)

	owner := f.pg.Connect(t, f.db)
	tx, err := owner.Begin(ctx)
	require.NoError(t, err)
	defer func() { _ = tx.Rollback(ctx) }()
	// 1. Hold writers off the outbox: every row committed before the lock
	// is visible from here, and none commits until the end.
	_, err = tx.Exec(ctx, `LOCK TABLE events IN SHARE MODE`)
	require.NoError(t, err)
	// 2. The rows not on the stream.
	rows, err := tx.Query(ctx, `SELECT id::text FROM events`)
	require.NoError(t, err)
	inTable, err := pgx.CollectRows(rows, pgx.RowTo[string])
	require.NoError(t, err)
	onStream := e2e.IDs(e2e.ReadStream(t, f.nc, "OUTBOX"))
	var missing []string
	for _, id := range inTable {
		if !slices.Contains(onStream, id) {
			missing = append(missing, id)
		}
	}
	require.Len(t, missing, 3, "the two rows of the gap and the one after it")
	// 3. Move the slot past the gap, as the relay's role.
	var moved string
	require.NoError(t, op.QueryRow(ctx, `SELECT end_lsn::text FROM pg_replication_slot_advance('outbox_relay', pg_current_wal_lsn())`).Scan(&moved))
	// 4. Write the missing rows again, same ids, oldest first.
	tag, err := tx.Exec(ctx, `WITH moved AS (DELETE FROM events WHERE id = ANY($1::uuid[]) RETURNING *)
		INSERT INTO events SELECT * FROM moved ORDER BY created_at`, missing)
	require.NoError(t, err)
	require.EqualValues(t, len(missing), tag.RowsAffected())
	require.NoError(t, tx.Commit(ctx))
	t.Logf("slot moved to %s, %d rows written again", moved, len(missing))
}

// TestPublicationChangedWhileRunningStopsTheRelay (trial W28, W27): the
// outbox table dropped from the publication and added again, or a
// partitioned outbox's publish_via_partition_root turned off and on, while
// the relay runs: the insert made in between is never sent to the relay.
// The relay stops with an error naming the change, and the slot is never
// confirmed past that insert.
func TestPublicationChangedWhileRunningStopsTheRelay(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name        string
		partitioned bool
		off, on     string
		want        []string
	}{
		{
			"drop and add the table (W28)", false,
			`ALTER PUBLICATION outbox_relay DROP TABLE events`, `ALTER PUBLICATION outbox_relay ADD TABLE events`,
			[]string{"changed while the relay ran", "member"},
		},
		{
			"publish_via_partition_root off and on (W27)", true,
			`ALTER PUBLICATION outbox_relay SET (publish_via_partition_root = false)`, `ALTER PUBLICATION outbox_relay SET (publish_via_partition_root = true)`,
			// The insert under the partition's name or the watch: whichever
			// comes first stops the relay.
			[]string{"publish_via_partition_root"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			f := newFixture(t)
			if tt.partitioned {
				partitionOutbox(t, f.pg, f.db)
			}
			relay := f.startRelay(t)
			published := f.write(t, 2, "before")
			f.waitStream(t, 2, 30*time.Second)

			// As a migration would: off, one insert, on again, at once.
			conn := f.pg.Connect(t, f.db)
			ctx := context.Background()
			_, err := conn.Exec(ctx, tt.off)
			require.NoError(t, err)
			before := f.currentWAL(t)
			skipped := f.write(t, 1, "while-off")
			_, err = conn.Exec(ctx, tt.on)
			require.NoError(t, err)
			f.write(t, 1, "after")

			code, err := relay.Wait(60 * time.Second)
			require.NoError(t, err, "the relay stops")
			require.Equal(t, 1, code)
			for _, w := range tt.want {
				require.Contains(t, relay.Logs(), w)
			}
			require.LessOrEqual(t, uint64(f.confirmedLSN(t)), uint64(before), "the slot is not confirmed past the insert made in between")
			// The insert after the change may have been published before
			// the relay stopped; the one in between never reached it.
			onStream := e2e.IDs(e2e.ReadStream(t, f.nc, "OUTBOX"))
			require.Equal(t, published, onStream[:2])
			require.NotContains(t, onStream, skipped[0])
		})
	}
}

// TestPublicationChangedWhileStopped: the outbox table is dropped from the
// publication and added back while no relay runs, with an insert in between
// that PostgreSQL never sends to the slot. The next start compares the
// publication with the one the last start validated (kept in the state
// bucket) and refuses, naming the change and how to acknowledge it; with
// --accept-publication=<digest> it goes on.
func TestPublicationChangedWhileStopped(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	r := f.startRelay(t)
	f.write(t, 2, "before")
	f.waitStream(t, 2, 30*time.Second)
	code, err := r.Stop(30 * time.Second)
	require.NoError(t, err)
	require.Zero(t, code)

	conn := f.pg.Connect(t, f.db)
	ctx := context.Background()
	_, err = conn.Exec(ctx, `ALTER PUBLICATION outbox_relay DROP TABLE events`)
	require.NoError(t, err)
	f.write(t, 1, "while-off")
	_, err = conn.Exec(ctx, `ALTER PUBLICATION outbox_relay ADD TABLE events`)
	require.NoError(t, err)

	again := e2e.StartRelay(t, f.bin, f.env())
	code, err = again.Wait(time.Minute)
	require.NoError(t, err, "the relay must refuse to start")
	require.Equal(t, 1, code)
	require.Contains(t, again.Logs(), "changed since the relay last started")
	digest := regexp.MustCompile(`--accept-publication=([0-9a-f]+)`).FindStringSubmatch(again.Logs())
	require.NotNil(t, digest, "the error says how to acknowledge the change")

	f.write(t, 1, "after")
	accepted := f.startRelay(t, "RELAY_ACCEPT_PUBLICATION", digest[1])
	f.waitStream(t, 3, time.Minute)
	require.False(t, accepted.Exited())
}
