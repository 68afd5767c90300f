package main

import (
	"context"
	"io"
	"regexp"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/outbox-relay/outbox-relay/internal/e2e"
	"github.com/outbox-relay/outbox-relay/internal/relay"
)

// TestInitialSnapshotPublishesRowsBeforeTheSlot: a table adopted with rows
// already in it (some created three hours ago, some already sent by a
// polling outbox, some recent and unsent). On the relay's first start,
// --initial-snapshot publishes the rows its selection picks (all, those
// created in the last hour, those not sent yet), in creation order, then the
// events committed later, each once. Without the setting (and before it
// existed) the rows already in the table never reach the stream.
func TestInitialSnapshotPublishesRowsBeforeTheSlot(t *testing.T) {
	t.Parallel()
	tests := []struct {
		setting string
		skip    []string // tags of the rows the selection leaves out
	}{
		{setting: "all"},
		{setting: "since:1h", skip: []string{"old"}},
		{setting: "where:sent_at IS NULL", skip: []string{"sent"}},
	}
	for _, tt := range tests {
		t.Run(tt.setting, func(t *testing.T) {
			t.Parallel()
			f := newFixture(t)
			f.pg.Exec(t, f.db, `ALTER TABLE events ADD COLUMN sent_at timestamptz`)
			tagged := map[string][]string{}
			start := time.Now().Add(-3 * time.Hour)
			for i := range 5 {
				events := e2e.SampleEvents(3, 64, tagf("old-%d", i))
				for j := range events {
					events[j].CreatedAt = start.Add(time.Duration(i) * time.Second).Format(time.RFC3339Nano)
				}
				ids, err := f.writer.Write(context.Background(), events, false)
				require.NoError(t, err)
				tagged["old"] = append(tagged["old"], ids...)
			}
			for i := range 5 {
				tagged["sent"] = append(tagged["sent"], f.write(t, 2, tagf("sent-%d", i))...)
				tagged["unsent"] = append(tagged["unsent"], f.write(t, 2, tagf("unsent-%d", i))...)
			}
			f.pg.Exec(t, f.db, `UPDATE events SET sent_at = now() WHERE aggregate_id LIKE 'sent-%'`)

			r := f.startRelay(t, "RELAY_INITIAL_SNAPSHOT", tt.setting)
			for i := range 3 {
				f.write(t, 2, tagf("after-%d", i))
			}
			var skipped []string
			for _, tag := range tt.skip {
				skipped = append(skipped, tagged[tag]...)
			}
			expected := slices.DeleteFunc(f.writer.Committed(t), func(id string) bool { return slices.Contains(skipped, id) })
			require.Eventually(t, func() bool { return e2e.StreamCount(f.nc, "OUTBOX") >= len(expected) }, 30*time.Second, 50*time.Millisecond,
				"the stream should hold the %d rows selected and the 6 written after, has %d", len(expected)-6, e2e.StreamCount(f.nc, "OUTBOX"))
			msgs := e2e.ReadStream(t, f.nc, "OUTBOX")
			v := e2e.Compare(expected, e2e.IDs(msgs))
			require.True(t, v.OK(), "stream vs the selected rows, then the commit log: %s", v)
			require.Equal(t, float64(len(expected)-6), r.Metrics()["outbox_relay_snapshot_selected_rows"])
			require.Equal(t, float64(len(expected)-6), r.Metrics()["outbox_relay_snapshot_done_rows"])
			require.Contains(t, r.Logs(), "initial snapshot done")

			code, out := runCommand(t, f.bin, f.env(), "status")
			require.Equal(t, 0, code, out)
			require.Contains(t, out, "initial snapshot:    done ("+tt.setting+")")
		})
	}
}

// snapshotPart splits msgs into the initial snapshot's (the first messages,
// numbered as one transaction at the seam) and the slot's.
func snapshotPart(msgs []e2e.StoredMessage) int {
	k := 0
	for k < len(msgs) && msgs[k].Header.Get(relay.HeaderCommitLSN) == msgs[0].Header.Get(relay.HeaderCommitLSN) {
		k++
	}
	return k
}

// TestInitialSnapshotSeamWithWritersRunning: two writers commit throughout,
// before the relay starts, while it creates its slot and publishes the
// initial snapshot, and after. The rows committed before the slot's
// consistent point are the snapshot's (a prefix of commit order, published
// in creation order), the rest come from the slot in commit order: every
// committed row once, none missed at the seam.
func TestInitialSnapshotSeamWithWritersRunning(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	for i := range 20 {
		f.write(t, 50, tagf("before-%d", i))
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	one, two := f.produce(ctx, 1_000_000, "one"), f.produce(ctx, 1_000_000, "two")
	require.Eventually(t, func() bool { return len(f.writer.Committed(t)) > 1200 }, 30*time.Second, 20*time.Millisecond)
	f.startRelay(t, "RELAY_INITIAL_SNAPSHOT", "all")
	committed := len(f.writer.Committed(t))
	require.Eventually(t, func() bool { return len(f.writer.Committed(t)) > committed+300 }, time.Minute, 50*time.Millisecond)
	cancel()
	<-one
	<-two
	expected := f.writer.Committed(t)
	require.Eventually(t, func() bool { return e2e.StreamCount(f.nc, "OUTBOX") >= len(expected) }, time.Minute, 100*time.Millisecond)
	msgs := e2e.ReadStream(t, f.nc, "OUTBOX")
	ids := e2e.IDs(msgs)
	k := snapshotPart(msgs)
	t.Logf("%d rows committed, %d from the snapshot, %d from the slot", len(expected), k, len(ids)-k)
	require.Greater(t, k, 1000, "the rows before the relay started are the snapshot's")
	require.Less(t, k, len(expected), "rows committed after the slot come from the slot")
	require.ElementsMatch(t, expected[:k], ids[:k], "the snapshot holds exactly the rows committed before the slot's consistent point")
	v := e2e.Compare(expected[k:], ids[k:])
	require.True(t, v.OK(), "after the snapshot, the slot's events in commit order: %s", v)
	require.Len(t, ids, len(expected))
	for i := 1; i < k; i++ {
		prev, err := time.Parse(time.RFC3339Nano, msgs[i-1].Header.Get(relay.HeaderCreatedAt))
		require.NoError(t, err)
		cur, err := time.Parse(time.RFC3339Nano, msgs[i].Header.Get(relay.HeaderCreatedAt))
		require.NoError(t, err)
		require.False(t, cur.Before(prev), "the snapshot is in creation order (message %d)", msgs[i].Seq)
	}
}

// TestInitialSnapshotKilledMidwayStartsOver: the relay is killed (SIGKILL)
// halfway through the initial snapshot of 30000 rows, and kept down past the
// stream's duplicate window while more rows are committed. relay status
// shows the snapshot in progress; a relay without the setting refuses the
// slot; restarted with it, the relay drops the unfinished slot and starts
// over without storing again what the first attempt published: every row
// once, in creation order, then the new events.
func TestInitialSnapshotKilledMidwayStartsOver(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	const rows = 30000
	f.pg.Exec(t, f.db, `WITH ins AS (
		INSERT INTO events (aggregate_type, aggregate_id, event_type, payload, created_at)
		SELECT 'order', 'seed-' || i, 'created', jsonb_build_object('i', i, 'pad', repeat('x', 200)),
			now() - interval '1 minute' + i * interval '1 millisecond'
		FROM generate_series(1, 30000) AS i RETURNING id, created_at)
		INSERT INTO commit_log SELECT nextval('commit_ticket'), array_agg(id ORDER BY created_at) FROM ins`)

	// One message in flight at a time, so that the kill finds the snapshot
	// halfway; a duplicate window JetStream forgets before the restart.
	slow := []string{"RELAY_INITIAL_SNAPSHOT", "all", "RELAY_PUBLISH_WINDOW", "1", "RELAY_ACK_EVERY", "1", "RELAY_DUPLICATE_WINDOW", "1s"}
	r := e2e.StartRelay(t, f.bin, f.env(slow...))
	// Killed once it reported its progress (every 5 seconds).
	progress := regexp.MustCompile(`"msg":"initial snapshot progress",("slot":"outbox_relay",)?"done":[1-9][0-9]*,"selected":30000,"skipped":0,"eta":`)
	require.Eventually(t, func() bool {
		return (e2e.StreamCount(f.nc, "OUTBOX") >= 2000 && progress.MatchString(r.Logs())) || r.Exited()
	}, time.Minute, 10*time.Millisecond)
	r.Kill()
	published := e2e.StreamCount(f.nc, "OUTBOX")
	t.Logf("killed after %d of %d rows", published, rows)
	require.Less(t, published, rows, "killed halfway through the snapshot")
	require.Contains(t, r.Logs(), `"selected":30000`)

	code, out := runCommand(t, f.bin, f.env(), "status")
	m := regexp.MustCompile(`initial snapshot: +in progress \(all\), ([0-9]+) of 30000 rows on the stream`).FindStringSubmatch(out)
	require.NotNil(t, m, "exit %d: %s", code, out)
	done, _ := strconv.Atoi(m[1])
	require.Positive(t, done, "status shows the progress recorded before the kill")
	require.LessOrEqual(t, done, published)
	none := e2e.StartRelay(t, f.bin, f.env())
	code, err := none.Wait(time.Minute)
	require.NoError(t, err)
	require.Equal(t, 1, code, "without the setting, the relay refuses the unfinished snapshot's slot")
	require.Contains(t, none.LogText(), "did not finish")

	for i := range 3 {
		f.write(t, 2, tagf("between-%d", i))
	}
	time.Sleep(2 * time.Second) // past the duplicate window: JetStream no longer drops repeated ids
	again := f.startRelay(t, "RELAY_INITIAL_SNAPSHOT", "all")
	for i := range 3 {
		f.write(t, 2, tagf("after-%d", i))
	}
	expected := f.writer.Committed(t)
	require.Eventually(t, func() bool { return e2e.StreamCount(f.nc, "OUTBOX") >= len(expected) }, time.Minute, 100*time.Millisecond)
	require.Eventually(t, func() bool {
		return e2e.StreamCount(f.nc, "OUTBOX") == len(expected)
	}, 5*time.Second, 100*time.Millisecond, "nothing stored twice")
	f.verify(t)
	logs := again.Logs()
	require.Contains(t, logs, "initial snapshot did not finish: starting it over with a new slot")
	require.Contains(t, logs, "initial snapshot resumes after the last event published")
	require.Contains(t, logs, "initial snapshot done")
}

// TestInitialSnapshotRefusesABadCondition: a where: condition that is not
// one boolean expression over the outbox's columns stops the relay before it
// creates its slot, naming the setting; relay check reports it too.
func TestInitialSnapshotRefusesABadCondition(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	r := e2e.StartRelay(t, f.bin, f.env("RELAY_INITIAL_SNAPSHOT", "where:sent_at IS NULL"))
	code, err := r.Wait(time.Minute)
	require.NoError(t, err)
	require.Equal(t, 1, code)
	require.Contains(t, r.LogText(), `initial-snapshot: "sent_at IS NULL" is not one boolean expression over the columns of "public"."events"`)
	require.Contains(t, r.LogText(), `column "sent_at" does not exist`)
	require.Empty(t, f.slotConfirmed(t), "no slot was created")

	code, out := runCommand(t, f.bin, f.env("RELAY_INITIAL_SNAPSHOT", "where:sent_at IS NULL"), "check")
	require.Equal(t, 1, code, out)
	require.Contains(t, unescaped(out), `initial-snapshot: "sent_at IS NULL" is not one boolean expression`)
	f.pg.Exec(t, f.db, `ALTER TABLE events ADD COLUMN sent_at timestamptz`)
	code, out = runCommand(t, f.bin, f.env("RELAY_INITIAL_SNAPSHOT", "where:sent_at IS NULL"), "check")
	require.Equal(t, 0, code, out)
	require.Contains(t, out, "initial snapshot: the rows where:sent_at IS NULL selects are published when relay run creates the slot")
}

// TestInitialSnapshotSetting: --initial-snapshot parses into the selection
// it names, and a bad value is a configuration error naming the setting.
func TestInitialSnapshotSetting(t *testing.T) {
	t.Parallel()
	now := time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)
	tests := []struct {
		value   string
		enabled bool
		since   time.Time
		where   string
		problem string
	}{
		{value: "none"},
		{value: "all", enabled: true},
		{value: "since:2026-11-01T00:00:00Z", enabled: true, since: time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC)},
		{value: "since:168h", enabled: true, since: now.Add(-168 * time.Hour)},
		{value: "where:sent_at IS NULL", enabled: true, where: "sent_at IS NULL"},
		{value: "where:a = 'b:c'", enabled: true, where: "a = 'b:c'"},
		{value: "everything", problem: "must be none, all, since:<time or duration> or where:<SQL condition>"},
		{value: "all:1", problem: "all takes no argument"},
		{value: "since:yesterday", problem: "since: takes an RFC 3339 time"},
		{value: "since:-1h", problem: "since: takes an RFC 3339 time"},
		{value: "where: ", problem: "where: takes an SQL condition"},
	}
	for _, tt := range tests {
		env := map[string]string{"RELAY_POSTGRES_URL": "postgres://relay@db/app", "RELAY_NATS_URL": "nats://nats:4222", "RELAY_INITIAL_SNAPSHOT": tt.value}
		cfg, err := parseConfig("run", nil, func(k string) (string, bool) { v, ok := env[k]; return v, ok }, io.Discard)
		if tt.problem != "" {
			require.ErrorContains(t, err, "initial-snapshot: "+strconv.Quote(tt.value)+", "+tt.problem, tt.value)
			continue
		}
		require.NoError(t, err, tt.value)
		require.Equal(t, tt.enabled, cfg.snapshot.enabled(), tt.value)
		sel := cfg.snapshot.selection(now)
		require.True(t, tt.since.Equal(sel.Since), "%s: since %s", tt.value, sel.Since)
		require.Equal(t, tt.where, sel.Where, tt.value)
	}
}
