package main

import (
	"context"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"

	"github.com/outbox-relay/outbox-relay/internal/e2e"
	"github.com/outbox-relay/outbox-relay/internal/relay"
)

// TestReplaySelection: relay replay takes exactly one selection (a time
// range, an id list, or a stream position) and refuses none or several,
// naming the settings; the target is the relay's template, a prefix before
// it, or a template of its own, never both; a replay id is generated unless
// given, and must fit in a message id.
func TestReplaySelection(t *testing.T) {
	t.Parallel()
	idsFile := filepath.Join(t.TempDir(), "ids")
	require.NoError(t, os.WriteFile(idsFile, []byte("c\nd, e\n"), 0o600))
	tests := []struct {
		name    string
		args    []string
		wantErr string
		ids     []string
		target  string
	}{
		{name: "none", wantErr: "replay: no selection; choose exactly one of --replay-since/--replay-until (a time range), --replay-ids/--replay-ids-from (an id list) or --replay-after-seq (a stream position)"},
		{name: "time range and ids", args: []string{"--replay-since=2026-11-01T00:00:00Z", "--replay-ids=a"}, wantErr: "replay: several selections (--replay-since/--replay-until, --replay-ids/--replay-ids-from); choose exactly one"},
		{name: "ids and position", args: []string{"--replay-ids-from=" + idsFile, "--replay-after-seq=3"}, wantErr: "replay: several selections (--replay-ids/--replay-ids-from, --replay-after-seq)"},
		{name: "since", args: []string{"--replay-since=2026-11-01T00:00:00Z"}, target: "outbox.{aggregate_type}.{event_type}"},
		{name: "until only", args: []string{"--replay-until=2026-11-01T00:00:00+01:00"}},
		{name: "not a time", args: []string{"--replay-since=yesterday"}, wantErr: `replay-since: "yesterday", must be an RFC 3339 time`},
		{name: "empty range", args: []string{"--replay-since=2026-11-02T00:00:00Z", "--replay-until=2026-11-01T00:00:00Z"}, wantErr: "replay-until: 2026-11-01T00:00:00Z is not after --replay-since"},
		{name: "ids from the flag and a file", args: []string{"--replay-ids=a,b", "--replay-ids-from=" + idsFile}, ids: []string{"a", "b", "c", "d", "e"}},
		{name: "empty id list", args: []string{"--replay-ids=,"}, wantErr: "replay-ids: the list is empty"},
		{name: "prefix", args: []string{"--replay-after-seq=3", "--replay-subject-prefix=replay.v1"}, target: "replay.v1.outbox.{aggregate_type}.{event_type}"},
		{name: "template", args: []string{"--replay-after-seq=3", "--replay-subject-template=backfill.{event_type}"}, target: "backfill.{event_type}"},
		{name: "bad template", args: []string{"--replay-after-seq=3", "--replay-subject-template=backfill.{nope}"}, wantErr: "replay-subject-template: "},
		{name: "prefix and template", args: []string{"--replay-after-seq=3", "--replay-subject-prefix=r", "--replay-subject-template=r.{id}"}, wantErr: "replay-subject-prefix: set together with --replay-subject-template"},
		{name: "bad replay id", args: []string{"--replay-after-seq=3", "--replay-id=a b"}, wantErr: `replay-id: "a b", must be 1 to 64`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			env := map[string]string{"RELAY_POSTGRES_URL": "postgres://relay@db/app", "RELAY_NATS_URL": "nats://127.0.0.1:4222"}
			cfg, err := parseConfig("replay", tt.args, func(k string) (string, bool) { v, ok := env[k]; return v, ok }, io.Discard)
			if tt.wantErr != "" {
				require.ErrorContains(t, err, tt.wantErr)
				return
			}
			require.NoError(t, err)
			require.Regexp(t, `^\d{8}T\d{6}Z-[0-9a-f]{6}$`, cfg.replay.id, "a generated replay id")
			if tt.ids != nil {
				require.Equal(t, tt.ids, cfg.replay.idList)
			}
			if tt.target != "" {
				require.Equal(t, tt.target, cfg.replay.target.String())
			}
		})
	}
	// Other commands ignore the replay settings.
	env := map[string]string{"RELAY_POSTGRES_URL": "postgres://relay@db/app", "RELAY_NATS_URL": "nats://127.0.0.1:4222"}
	_, err := parseConfig("run", nil, func(k string) (string, bool) { v, ok := env[k]; return v, ok }, io.Discard)
	require.NoError(t, err)
}

// writeCreated commits one transaction of n events created at created and
// returns their ids.
func writeCreated(t *testing.T, f *fixture, n int, tag string, created time.Time) []string {
	t.Helper()
	events := e2e.SampleEvents(n, 64, tag)
	for i := range events {
		events[i].CreatedAt = created.Format(time.RFC3339Nano)
	}
	ids, err := f.writer.Write(context.Background(), events, false)
	require.NoError(t, err)
	return ids
}

// replayed returns the messages of msgs that relay replay published, and
// the others.
func replayed(msgs []e2e.StoredMessage) (replays, others []e2e.StoredMessage) {
	for _, m := range msgs {
		if m.Header.Get(relay.HeaderReplay) != "" {
			replays = append(replays, m)
		} else {
			others = append(others, m)
		}
	}
	return replays, others
}

// replayedOf returns the original ids of replayed messages, in stream order.
func replayedOf(msgs []e2e.StoredMessage) []string {
	ids := make([]string, len(msgs))
	for i, m := range msgs {
		ids[i] = m.Header.Get(relay.HeaderReplayOf)
	}
	return ids
}

// TestReplayToAnotherStream: relay replay republishes the rows created in a
// time range to another subject, captured by a second stream: every selected
// row once, in creation order (a transaction committed first but created
// later comes after), each with its own message id and the replay headers,
// the body and headers of the original, and no commit position or origin.
// Run again with the same replay id it stores nothing twice; with another it
// stores the rows again. --replay-after-seq selects the rows created after
// the relay's message at that sequence (not the messages after it); a dry
// run publishes nothing; a target no stream captures, and bad selections,
// are refused naming the settings.
func TestReplayToAnotherStream(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	js, err := jetstream.New(f.nc)
	require.NoError(t, err)
	_, err = js.CreateStream(context.Background(), jetstream.StreamConfig{Name: "REPLAY", Subjects: []string{"replay.>"}, Storage: jetstream.FileStorage, MaxMsgSize: 2048})
	require.NoError(t, err)
	f.startRelay(t)

	base := time.Now().Add(-time.Hour).UTC().Truncate(time.Second)
	early := writeCreated(t, f, 3, "early", base.Add(-10*time.Minute))
	later := writeCreated(t, f, 3, "later", base.Add(2*time.Second)) // committed first, created after "sooner"
	sooner := writeCreated(t, f, 3, "sooner", base.Add(time.Second))
	late := writeCreated(t, f, 2, "late", base.Add(30*time.Minute))
	small := writeCreated(t, f, 1, "small", base.Add(-20*time.Minute))
	big := e2e.SampleEvents(1, 4000, "big") // more than REPLAY's max_msg_size, not OUTBOX's
	big[0].CreatedAt = base.Add(-19 * time.Minute).Format(time.RFC3339Nano)
	bigID, err := f.writer.Write(context.Background(), big, false)
	require.NoError(t, err)
	f.waitStream(t, 13, 30*time.Second)
	originals := map[string]e2e.StoredMessage{}
	for _, m := range f.verify(t) {
		originals[m.Header.Get(nats.MsgIdHdr)] = m
	}
	_ = early

	env := f.env()
	rangeArgs := []string{"replay", "--replay-since=" + base.Format(time.RFC3339), "--replay-until=" + base.Add(10*time.Minute).Format(time.RFC3339), "--replay-subject-prefix=replay"}
	code, out := runCommand(t, f.bin, env, append(rangeArgs, "--replay-id=r1")...)
	require.Equal(t, 0, code, out)
	require.Contains(t, out, "stored by stream REPLAY")
	require.Contains(t, out, "replay r1: 6 rows selected, 6 published, 0 duplicates, 0 poison")
	msgs := e2e.ReadStream(t, f.nc, "REPLAY")
	want := slices.Concat(sooner, later)
	require.Equal(t, want, replayedOf(msgs), "the rows created in the range, once each, in creation order")
	for _, m := range msgs {
		id := m.Header.Get(relay.HeaderReplayOf)
		orig := originals[id]
		require.Equal(t, "replay."+orig.Subject, m.Subject)
		require.Equal(t, id+"/replay/r1", m.Header.Get(nats.MsgIdHdr))
		require.Equal(t, "r1", m.Header.Get(relay.HeaderReplay))
		require.Equal(t, orig.Data, m.Data)
		for _, h := range []string{relay.HeaderAggregateType, relay.HeaderAggregateID, relay.HeaderEventType, relay.HeaderCreatedAt} {
			require.Equal(t, orig.Header.Get(h), m.Header.Get(h), h)
		}
		for _, h := range []string{relay.HeaderCommitLSN, relay.HeaderCommitIndex, relay.HeaderOrigin} {
			require.Empty(t, m.Header.Get(h), "a replayed message is not part of the relay's chain: no %s", h)
		}
	}

	// The same replay id again: JetStream drops every message as a
	// duplicate within the window.
	code, out = runCommand(t, f.bin, env, append(rangeArgs, "--replay-id=r1")...)
	require.Equal(t, 0, code, out)
	require.Contains(t, out, "replay r1: 6 rows selected, 0 published, 6 duplicates, 0 poison")
	require.Equal(t, 6, e2e.StreamCount(f.nc, "REPLAY"))
	// Another replay id, generated: stored again.
	code, out = runCommand(t, f.bin, env, rangeArgs...)
	require.Equal(t, 0, code, out)
	require.Contains(t, out, "6 rows selected, 6 published, 0 duplicates, 0 poison")
	require.Equal(t, 12, e2e.StreamCount(f.nc, "REPLAY"))

	// A dry run publishes nothing.
	code, out = runCommand(t, f.bin, env, append(rangeArgs, "--replay-dry-run", "--replay-id=dry")...)
	require.Equal(t, 0, code, out)
	require.Contains(t, out, "dry run, nothing published: 6 rows selected, 6 would be published, 0 poison")
	require.Contains(t, out, "would publish: replay.outbox.order.created id "+sooner[0]+"/replay/dry")
	require.Equal(t, 12, e2e.StreamCount(f.nc, "REPLAY"))

	// After the relay's message at the sequence of "later"'s first event
	// (the 4th message): the rows created after it, not the messages after
	// it ("sooner" was committed after "later" but created before).
	seq := originals[later[0]].Seq
	code, out = runCommand(t, f.bin, env, "replay", "--replay-after-seq="+strconv.FormatUint(seq, 10), "--replay-subject-template=replay.after.{aggregate_type}.{event_type}", "--replay-id=after")
	require.Equal(t, 0, code, out)
	require.Contains(t, out, "replay after: 2 rows selected, 2 published, 0 duplicates, 0 poison")
	msgs = e2e.ReadStream(t, f.nc, "REPLAY")
	require.Equal(t, late, replayedOf(msgs[12:]))
	require.Equal(t, "replay.after.order.created", msgs[12].Subject)

	// Refused.
	for _, tt := range []struct {
		args []string
		want string
	}{
		{args: []string{"replay"}, want: "replay: no selection; choose exactly one of --replay-since/--replay-until"},
		{args: []string{"replay", "--replay-ids=" + late[0], "--replay-after-seq=2"}, want: "replay: several selections (--replay-ids/--replay-ids-from, --replay-after-seq)"},
		{args: []string{"replay", "--replay-ids=" + late[0], "--replay-subject-prefix=nowhere"}, want: `replay: no stream captures nowhere.outbox.*.*`},
		{args: []string{"replay", "--replay-after-seq=1000"}, want: `replay-after-seq: stream "OUTBOX" holds no message of the relay at sequence 1000`},
	} {
		code, out := runCommand(t, f.bin, env, tt.args...)
		require.Equal(t, 1, code, out)
		require.Contains(t, unescaped(out), tt.want)
	}
	require.Equal(t, 14, e2e.StreamCount(f.nc, "REPLAY"))

	// A row too large for the target stream: by default the replay stops
	// there, after publishing the rows before it; with
	// --on-poison=dead-letter it is skipped, and counted either way.
	poisonArgs := []string{
		"replay", "--replay-since=" + base.Add(-25*time.Minute).Format(time.RFC3339), "--replay-until=" + base.Add(-15*time.Minute).Format(time.RFC3339),
		"--replay-subject-prefix=replay", "--replay-id=poison",
	}
	code, out = runCommand(t, f.bin, env, poisonArgs...)
	require.Equal(t, 1, code, out)
	require.Contains(t, out, "replay poison: 2 rows selected, 1 published, 0 duplicates, 1 poison")
	require.Contains(t, out, "event "+bigID[0]+" is poison (--on-poison=stop; --on-poison=dead-letter skips it): too_large")
	require.Contains(t, out, "run it again with --replay-id=poison")
	code, out = runCommand(t, f.bin, env, append(poisonArgs, "--on-poison=dead-letter")...)
	require.Equal(t, 0, code, out)
	require.Contains(t, out, "poison: event "+bigID[0]+" skipped: too_large")
	require.Contains(t, out, "replay poison: 2 rows selected, 0 published, 1 duplicates, 1 poison")
	msgs = e2e.ReadStream(t, f.nc, "REPLAY")
	require.Equal(t, small, replayedOf(msgs[14:]))
}

// TestReplayIntoTheRelaysOwnStreamWhileItRuns: relay replay republishes a
// list of ids (from the flag and a file) into the relay's own stream, under
// their usual subjects, while the relay publishes a steady flow of new
// events. The relay keeps going; the replayed messages are there once each,
// in creation order, with message ids of their own; the relay's own events
// are on the stream once each and in commit order. An id no row has is
// reported.
func TestReplayIntoTheRelaysOwnStreamWhileItRuns(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	r := f.startRelay(t)
	var written []string
	for i := range 10 {
		written = append(written, f.write(t, 3, tagf("first-%d", i))...)
	}
	f.waitStream(t, 30, 30*time.Second)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	producing := f.produce(ctx, 1_000_000, "live")
	require.Eventually(t, func() bool { return len(f.writer.Committed(t)) > 100 }, 30*time.Second, 20*time.Millisecond)

	picked := []string{written[1], written[4], written[7], written[12], written[20], written[29]}
	idsFile := filepath.Join(t.TempDir(), "ids")
	require.NoError(t, os.WriteFile(idsFile, []byte(strings.Join(picked[3:], "\n")+"\n"), 0o600))
	missing := "00000000-0000-0000-0000-000000000000"
	code, out := runCommand(t, f.bin, f.env(), "replay", "--replay-ids="+strings.Join(picked[:3], ",")+","+missing, "--replay-ids-from="+idsFile, "--replay-id=own")
	require.Equal(t, 0, code, out)
	require.Contains(t, out, "note: replaying into the relay's own stream OUTBOX")
	require.Contains(t, out, "warning: 1 of the ids given are in no row of the table: "+missing)
	require.Contains(t, out, "replay own: 6 rows selected, 6 published, 0 duplicates, 0 poison")

	committed := len(f.writer.Committed(t))
	require.Eventually(t, func() bool { return len(f.writer.Committed(t)) > committed+100 }, 30*time.Second, 20*time.Millisecond,
		"the relay keeps publishing after the replay")
	cancel()
	<-producing
	expected := f.writer.Committed(t)
	f.waitStream(t, len(expected)+len(picked), time.Minute)
	require.False(t, r.Exited(), "the relay runs on: %s", r.LogText())
	replays, own := replayed(e2e.ReadStream(t, f.nc, "OUTBOX"))
	v := e2e.Compare(expected, e2e.IDs(own))
	require.True(t, v.OK(), "the relay's own events, once each in commit order: %s", v)
	require.Equal(t, picked, replayedOf(replays), "the rows of the ids given, once each, in creation order")
	for _, m := range replays {
		require.Equal(t, m.Header.Get(relay.HeaderReplayOf)+"/replay/own", m.Header.Get(nats.MsgIdHdr))
		require.Empty(t, m.Header.Get(relay.HeaderOrigin))
	}

	// Replayed again, under another replay id, at the stream's end: relay
	// status counts them as another writer's, and the relay's next events
	// follow them.
	code, out = runCommand(t, f.bin, f.env(), "replay", "--replay-ids="+strings.Join(picked, ","), "--replay-id=again")
	require.Equal(t, 0, code, out)
	require.Contains(t, out, "replay again: 6 rows selected, 6 published, 0 duplicates, 0 poison")
	code, out = runCommand(t, f.bin, f.env(), "status")
	require.Equal(t, 0, code, out)
	require.Contains(t, out, "6 without Outbox-Origin")
	require.Contains(t, out, "consistency:         shared")
	for i := range 3 {
		f.write(t, 2, tagf("after-%d", i))
	}
	expected = f.writer.Committed(t)
	f.waitStream(t, len(expected)+2*len(picked), time.Minute)
	replays, own = replayed(e2e.ReadStream(t, f.nc, "OUTBOX"))
	v = e2e.Compare(expected, e2e.IDs(own))
	require.True(t, v.OK(), "the relay's own events, once each in commit order: %s", v)
	require.Equal(t, slices.Concat(picked, picked), replayedOf(replays))
	require.False(t, r.Exited(), "the relay runs on: %s", r.LogText())
}

// TestReplayRidesOutANATSRestart: NATS restarts while relay replay
// publishes; the publishes that failed are published again once it is back,
// and the replay ends with every selected row on the target stream once.
func TestReplayRidesOutANATSRestart(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	js, err := jetstream.New(f.nc)
	require.NoError(t, err)
	_, err = js.CreateStream(context.Background(), jetstream.StreamConfig{Name: "REPLAY", Subjects: []string{"replay.>"}, Storage: jetstream.FileStorage})
	require.NoError(t, err)
	const rows = 20000
	f.pg.Exec(t, f.db, `INSERT INTO events (aggregate_type, aggregate_id, event_type, payload, created_at)
		SELECT 'order', i::text, 'created', jsonb_build_object('i', i), '2026-01-01T00:00:00Z'::timestamptz + i * interval '1 millisecond'
		FROM generate_series(1, `+strconv.Itoa(rows)+`) AS i`)

	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	var out e2e.SyncBuffer
	cmd := relayCommand(ctx, t, f.bin, f.env("RELAY_PUBLISH_WINDOW", "64", "RELAY_RETRY_MIN", "50ms", "RELAY_RETRY_MAX", "500ms"),
		"replay", "--replay-since=2026-01-01T00:00:00Z", "--replay-subject-prefix=replay", "--replay-id=restart")
	cmd.Stdout, cmd.Stderr = &out, &out
	require.NoError(t, cmd.Start())
	require.Eventually(t, func() bool { return e2e.StreamCount(f.nc, "REPLAY") > 1000 }, time.Minute, 5*time.Millisecond, "the replay publishes: %s", out.String())
	f.nats.Stop(t)
	time.Sleep(time.Second) // down for a while: publishes in flight fail
	f.nats.Start(t)
	require.NoError(t, cmd.Wait(), out.String())
	require.Contains(t, out.String(), "retry: publishes fail", "publishes failed while NATS was down")
	t.Logf("replay output:\n%s", out.String())
	require.Contains(t, out.String(), "replay restart: 20000 rows selected")

	msgs := e2e.ReadStream(t, f.nc, "REPLAY")
	of := replayedOf(msgs)
	seen := map[string]bool{}
	for _, id := range of {
		require.False(t, seen[id], "event %s replayed twice", id)
		seen[id] = true
	}
	require.Len(t, of, rows, "every selected row once")
}
