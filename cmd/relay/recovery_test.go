package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"

	"github.com/outbox-relay/outbox-relay/internal/e2e"
)

// recoveryHeading starts the README section TestSlotRecoveryAsDocumented
// follows.
const recoveryHeading = "### The slot is the relay's memory: recovery"

// readmeRecoverySQL returns the SQL blocks of the README's slot recovery
// section, in order.
func readmeRecoverySQL(t *testing.T) []string {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(e2e.RepoRoot(), "README.md"))
	require.NoError(t, err)
	_, section, ok := strings.Cut(string(data), recoveryHeading)
	require.True(t, ok, "README has the section %q", recoveryHeading)
	var blocks []string
	var block []string
	in := false
	for _, line := range strings.Split(section, "\n") {
		trimmed := strings.TrimSpace(line)
		switch {
		case !in && strings.HasPrefix(line, "#"):
			return blocks // the next section
		case !in && trimmed == "```sql":
			in, block = true, nil
		case in && trimmed == "```":
			in = false
			blocks = append(blocks, strings.Join(block, "\n"))
		case in:
			block = append(block, trimmed)
		}
	}
	return blocks
}

// psqlVars replaces psql's :'name' variables in sql with quoted literals.
func psqlVars(sql string, vars map[string]string) string {
	for name, value := range vars {
		sql = strings.ReplaceAll(sql, ":'"+name+"'", "'"+strings.ReplaceAll(value, "'", "''")+"'")
	}
	return sql
}

// TestSlotRecoveryAsDocumented follows the README's slot recovery section
// step by step, running its SQL as written: the slot is dropped by hand
// while events are being written (one of them by a transaction that began
// before the last event published and committed after the drop), the relay
// says what happened and refuses to go on, and after the documented steps
// every committed event is on the stream, once. The steps used to say to
// republish before creating the slot, which loses what is republished
// (trial C17), and to find the gap by Outbox-Created-At alone, which misses
// the long transaction.
func TestSlotRecoveryAsDocumented(t *testing.T) {
	t.Parallel()
	steps := readmeRecoverySQL(t)
	require.Len(t, steps, 3, "the README's recovery section has the SQL of steps 1 (create the slot), 3 (find the gap) and 4 (republish)")
	require.Contains(t, steps[0], "pg_create_logical_replication_slot", "step 1 creates the slot, before anything is republished")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()

	f := newFixture(t)
	relay := f.startRelay(t)
	f.write(t, 5, "before")
	// A transaction that began before the last event published before the
	// drop and commits after it.
	conn := f.pg.Connect(t, f.db)
	long, err := conn.Begin(ctx)
	require.NoError(t, err)
	var longID string
	require.NoError(t, long.QueryRow(ctx, `INSERT INTO events (aggregate_type, aggregate_id, event_type, payload)
		VALUES ('order', 'long', 'created', '{}') RETURNING id::text`).Scan(&longID))
	time.Sleep(10 * time.Millisecond) // created_at (transaction start) strictly before the next events'
	last := f.write(t, 3, "last")
	f.waitStream(t, 8, time.Minute)

	// Drop the slot by hand while the relay runs: end its session, then
	// drop the slot before it reconnects.
	require.Eventually(t, func() bool {
		return f.pg.ExecContext(ctx, f.db, `SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots
			WHERE slot_name = 'outbox_relay' AND active_pid IS NOT NULL;
			SELECT pg_drop_replication_slot('outbox_relay')`) == nil
	}, time.Minute, 20*time.Millisecond, "drop the slot")
	require.NoError(t, long.Commit(ctx))
	gap := f.write(t, 4, "gap")
	gap = append(gap, longID)

	// What the relay says: it stops, and refuses to start again.
	code, err := relay.Wait(time.Minute)
	require.NoError(t, err, "the relay stops when its slot is dropped")
	require.Equal(t, 1, code)
	require.Contains(t, relay.Logs(), "recovery")
	again := e2e.StartRelay(t, f.bin, f.env())
	code, err = again.Wait(time.Minute)
	require.NoError(t, err)
	require.Equal(t, 1, code)
	require.Contains(t, again.Logs(), "so it existed and was dropped")
	code, out := runCommand(t, f.bin, f.env(), "status")
	require.Equal(t, 1, code, out)

	// Step 1: create the slot by hand.
	f.pg.Exec(t, f.db, steps[0])
	// Step 2: start the relay, and wait until it has caught up.
	f.startRelay(t)
	after := f.write(t, 3, "after")
	f.waitStream(t, 11, time.Minute)
	require.Eventually(t, func() bool {
		code, out := runCommand(t, f.bin, f.env(), "status")
		return code == 0 && strings.Contains(out, "consistency:         ok")
	}, time.Minute, 500*time.Millisecond, "relay status says ok once the relay runs on the new slot")

	// Step 3: find the gap.
	msgs := e2e.ReadStream(t, f.nc, "OUTBOX")
	lastBefore := msgs[7]
	require.Equal(t, last[2], lastBefore.Header.Get("Nats-Msg-Id"), "the last message from before the drop")
	created, err := time.Parse(time.RFC3339Nano, lastBefore.Header.Get("Outbox-Created-At"))
	require.NoError(t, err)
	since := created.Add(-time.Hour)
	js, err := jetstream.New(f.nc)
	require.NoError(t, err)
	cons, err := js.OrderedConsumer(ctx, "OUTBOX", jetstream.OrderedConsumerConfig{
		DeliverPolicy: jetstream.DeliverByStartTimePolicy, OptStartTime: &since,
	})
	require.NoError(t, err)
	batch, err := cons.Fetch(len(msgs), jetstream.FetchMaxWait(10*time.Second))
	require.NoError(t, err)
	var streamIDs []string
	for m := range batch.Messages() {
		streamIDs = append(streamIDs, m.Headers().Get("Nats-Msg-Id"))
	}
	require.NoError(t, batch.Error())
	require.Len(t, streamIDs, len(msgs), "every message was stored within the hour")
	rows, err := conn.Query(ctx, psqlVars(steps[1], map[string]string{
		"since":      since.Format(time.RFC3339Nano),
		"stream_ids": "{" + strings.Join(streamIDs, ",") + "}",
	}))
	require.NoError(t, err)
	found, err := pgx.CollectRows(rows, pgx.RowTo[string])
	require.NoError(t, err)
	require.ElementsMatch(t, gap, found, "the gap is exactly the rows committed while there was no slot, the long transaction's included")

	// Step 4: republish the gap.
	_, err = conn.Exec(ctx, psqlVars(steps[2], map[string]string{"gap": "{" + strings.Join(found, ",") + "}"}))
	require.NoError(t, err)

	// Every committed event is on the stream, once; the gap after the
	// events published since step 1.
	committed := append(f.writer.Committed(t), longID)
	f.waitStream(t, len(committed), time.Minute)
	msgs = e2e.ReadStream(t, f.nc, "OUTBOX")
	ids := e2e.IDs(msgs)
	require.Len(t, ids, len(committed), "each event once")
	require.ElementsMatch(t, committed, ids, "every committed event is on the stream")
	require.Subset(t, ids[len(ids)-len(gap):], gap, "the gap comes last")
	for _, id := range after {
		require.True(t, slices.Index(ids, id) < len(ids)-len(gap), fmt.Sprintf("%s published before the gap", id))
	}
}
