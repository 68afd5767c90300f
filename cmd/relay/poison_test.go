package main

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"

	"github.com/outbox-relay/outbox-relay/internal/e2e"
)

// bigHeaders is a headers column with one string entry of n bytes.
func bigHeaders(n int) string { return `{"x-big": "` + strings.Repeat("h", n) + `"}` }

// TestOversizedHeadersArePoison: JetStream refuses a header block over 64
// KiB whatever max_payload allows (err_code 10097). No retry can change
// that, so under the default policy the relay stops on the event, naming
// it, instead of retrying it forever (trial W20).
func TestOversizedHeadersArePoison(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	relay := f.startRelay(t)
	big := goodEvent(2)
	big.Headers = bigHeaders(100 << 10) // under the 1 MiB max_payload, over the 64 KiB header limit
	ids := writeRows(t, f, goodEvent(1), big, goodEvent(3))

	code, err := relay.Wait(45 * time.Second)
	require.NoError(t, err, "the relay stops on a header block JetStream refuses instead of retrying it")
	require.Equal(t, 1, code)
	require.Contains(t, relay.Logs(), ids[1], "the error names the event")
	require.Contains(t, relay.Logs(), "too_large")
	require.Equal(t, ids[:1], e2e.IDs(e2e.ReadStream(t, f.nc, "OUTBOX")))
}

// TestDeadLettersAlwaysFit: with --on-poison=dead-letter, the dead-letter
// copy of an event is built to fit the server's max payload and JetStream's
// 64 KiB header limit: the row's own headers and, if need be, the body are
// left out, and headers say so. Before, an event with a 2 MB header had a
// dead-letter copy just as large, and the relay exited on it at every start
// (trial W19); one with a 100 KiB header was retried forever (W20).
func TestDeadLettersAlwaysFit(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	relay := f.startRelay(t, "RELAY_ON_POISON", "dead-letter")
	overLimit := goodEvent(2)
	overLimit.Headers = bigHeaders(100 << 10) // refused by JetStream: err_code 10097
	overPayload := e2e.Event{AggregateType: "order", AggregateID: "4", EventType: "created", Payload: `{}`, Headers: bigHeaders(2_000_000)}
	both := e2e.Event{
		AggregateType: "order", AggregateID: "6", EventType: "created",
		Payload: `{"pad": "` + strings.Repeat("p", 1200<<10) + `"}`, Headers: bigHeaders(100 << 10),
	}
	ids := writeRows(t, f, goodEvent(1), overLimit, goodEvent(3), overPayload, goodEvent(5), both, goodEvent(7))

	f.waitStream(t, len(ids), time.Minute)
	msgs := f.verify(t)
	require.Equal(t, ids, e2e.IDs(msgs))
	deadLetter := msgs[1].Subject
	require.NotEqual(t, "outbox.order.created", deadLetter)
	for _, i := range []int{1, 3, 5} {
		m := msgs[i]
		require.Equal(t, deadLetter, m.Subject, "message %d is a dead letter", i)
		require.Contains(t, m.Header.Get("Outbox-Poison-Reason"), "too_large")
		require.Equal(t, "outbox.order.created", m.Header.Get("Outbox-Original-Subject"))
		require.Empty(t, m.Header.Get("x-big"), "the row's headers are left out")
		require.NotEmpty(t, m.Header.Get("Outbox-Headers-Omitted"), "and the message says so")
		require.Equal(t, "order", m.Header.Get("Outbox-Aggregate-Type"))
	}
	require.Equal(t, "{}", string(msgs[3].Data), "the body is kept when it fits")
	require.Empty(t, msgs[5].Data, "a body over max_payload is left out too")
	require.NotEmpty(t, msgs[5].Header.Get("Outbox-Payload-Omitted"))
	require.Equal(t, 3.0, relay.Metrics()[`outbox_relay_pump_poison_events_total{reason="too_large"}`])
	require.False(t, relay.Exited())
}

// TestDeadLetterSubjects covers where dead letters go: a subject no stream
// captures is a configuration error at startup, not an endless retry at the
// first poison event (trial W13); a stream the relay creates captures its
// dead-letter subject whatever --on-poison says (W29); two relays'
// default dead-letter subjects differ; and a stream that cannot be created
// because another claims its subjects is a configuration error naming the
// subject and that stream (W30).
func TestDeadLetterSubjects(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	js, err := jetstream.New(f.nc)
	require.NoError(t, err)
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	subjectsOf := func(stream string) []string {
		s, err := js.Stream(ctx, stream)
		require.NoError(t, err)
		return s.CachedInfo().Config.Subjects
	}

	t.Run("uncaptured dead-letter subject", func(t *testing.T) {
		_, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: "OUTBOX", Subjects: []string{"outbox.*.*"}, Storage: jetstream.FileStorage})
		require.NoError(t, err)
		env := f.env("RELAY_CREATE_STREAM", "false", "RELAY_ON_POISON", "dead-letter", "RELAY_DEAD_LETTER_SUBJECT", "dlq.outbox")
		code, out := runCommand(t, f.bin, env, "check")
		require.Equal(t, 1, code, out)
		require.Contains(t, out, `"dlq.outbox"`)
		code, _, stderr := runSplit(t, f.bin, env, "run")
		require.Equal(t, 1, code, stderr)
		require.Contains(t, exitError(t, stderr), `no stream captures the dead-letter subject "dlq.outbox"`)
		require.NoError(t, js.DeleteStream(ctx, "OUTBOX"))
	})

	t.Run("created streams capture distinct dead-letter subjects", func(t *testing.T) {
		a := f.startRelay(t, "RELAY_SLOT", "slot_a", "RELAY_STREAM", "A", "RELAY_SUBJECT_TEMPLATE", "a.{aggregate_type}.{event_type}")
		b := f.startRelay(t, "RELAY_SLOT", "slot_b", "RELAY_STREAM", "B", "RELAY_SUBJECT_TEMPLATE", "b.{aggregate_type}.{event_type}",
			"RELAY_ON_POISON", "dead-letter")
		require.Equal(t, []string{"a.*.*", "outbox_dead_letter.slot_a.a._._"}, subjectsOf("A"),
			"created in stop mode, the stream still captures the dead-letter subject")
		require.Equal(t, []string{"b.*.*", "outbox_dead_letter.slot_b.b._._"}, subjectsOf("B"))
		_, _ = a.Stop(30 * time.Second)
		_, _ = b.Stop(30 * time.Second)
	})

	t.Run("overlapping subjects name the stream", func(t *testing.T) {
		_, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: "DLQ", Subjects: []string{"dlq.>"}, Storage: jetstream.FileStorage})
		require.NoError(t, err)
		env := f.env("RELAY_SLOT", "slot_c", "RELAY_STREAM", "C", "RELAY_SUBJECT_TEMPLATE", "c.{aggregate_type}.{event_type}",
			"RELAY_ON_POISON", "dead-letter", "RELAY_DEAD_LETTER_SUBJECT", "dlq.c")
		relay := e2e.StartRelay(t, f.bin, env)
		code, err := relay.Wait(45 * time.Second)
		require.NoError(t, err, "a stream that cannot be created as configured stops the relay")
		require.Equal(t, 1, code)
		require.Contains(t, exitError(t, relay.Logs()), `"dlq.c" overlaps stream "DLQ" (subjects dlq.>)`)
	})
}

// TestAsyncPersistStreamsAreRefused: a stream with persist_mode async
// acknowledges writes before they are flushed, so a PubAck (on which the
// slot advances) proves nothing; check and run refuse it.
func TestAsyncPersistStreamsAreRefused(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	js, err := jetstream.New(f.nc)
	require.NoError(t, err)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	_, err = js.CreateStream(ctx, jetstream.StreamConfig{
		Name: "OUTBOX", Subjects: []string{"outbox.>"}, Storage: jetstream.FileStorage,
		PersistMode: jetstream.AsyncPersistMode,
	})
	require.NoError(t, err)
	code, out := runCommand(t, f.bin, f.env(), "check")
	require.Equal(t, 1, code, out)
	require.Contains(t, out, "persist_mode async")
	code, out = runCommand(t, f.bin, f.env(), "run")
	require.Equal(t, 1, code, out)
	require.Contains(t, out, "persist_mode async")
}

// TestRowsAreMappedOrRefusedNeverMerged covers what becomes of a row's
// values: Unicode spaces, zero-width and control characters in a subject
// token make the row poison like ASCII white space (trial W17); headers
// that are numbers, booleans, objects or arrays travel as their JSON text
// and JSON null is left out like SQL NULL (W7); an empty id, or one with
// white space at either end or a line break, is poison, since the NATS
// client trims and flattens header values and would store "a " and "a" as
// one message; created_at of type timestamp is rendered in RFC 3339 as UTC,
// a date as midnight UTC, and infinity makes the row poison.
func TestRowsAreMappedOrRefusedNeverMerged(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	f.pg.Exec(t, f.db, `CREATE TABLE rows_t (id text PRIMARY KEY, aggregate_type text NOT NULL, aggregate_id text NOT NULL,
		event_type text NOT NULL, payload jsonb NOT NULL, headers jsonb, created_at timestamp, created_on date)`)
	byTimestamp := f.startRelay(t, "RELAY_TABLE", "rows_t", "RELAY_PUBLICATION", "rows_t", "RELAY_SLOT", "rows_ts",
		"RELAY_STREAM", "ROWS_TS", "RELAY_SUBJECT_TEMPLATE", "rows.{aggregate_type}.{event_type}", "RELAY_ON_POISON", "dead-letter",
		"RELAY_DEAD_LETTER_SUBJECT", "dl.ts")
	byDate := f.startRelay(t, "RELAY_TABLE", "rows_t", "RELAY_PUBLICATION", "rows_t", "RELAY_SLOT", "rows_date",
		"RELAY_STREAM", "ROWS_DATE", "RELAY_SUBJECT_TEMPLATE", "dates.{aggregate_type}.{event_type}", "RELAY_ON_POISON", "dead-letter",
		"RELAY_DEAD_LETTER_SUBJECT", "dl.date",
		"RELAY_COLUMN_CREATED_AT", "created_on")
	rows := []struct{ id, eventType, headers, createdAt, createdOn string }{
		{"e1", "paid", "", "2026-01-02 03:04:05.5", "2026-01-02"},
		{"e2", "paid\u00a0now", "", "", ""},
		{"e3", "paid\u3000", "", "", ""},
		{"e4", "paid\u200b", "", "", ""},
		{"e5", "paid", `{"x-num": 5, "x-float": 1.50, "x-bool": true, "x-null": null, "x-obj": {"a": [1, "b"]}, "x-arr": [], "x-str": "ok"}`, "", ""},
		{"a ", "paid", "", "", ""},
		{"a", "paid", "", "", ""},
		{"", "paid", "", "", ""},
		{"e9", "paid", "", "infinity", "-infinity"},
		{"e10", "paid", "", "", ""},
	}
	nullable := func(s string) *string {
		if s == "" {
			return nil
		}
		return &s
	}
	for i, r := range rows {
		f.pg.Exec(t, f.db, `INSERT INTO rows_t VALUES ($1, 'order', $2, $3, '{}', $4::jsonb, $5::timestamp, $6::date)`,
			r.id, fmt.Sprint(i+1), r.eventType, nullable(r.headers), nullable(r.createdAt), nullable(r.createdOn))
	}
	// The last row reached both streams, published or dead-lettered.
	reached := func(stream string) bool {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		msgs, err := e2e.ReadStreamContext(ctx, f.nc, stream)
		return err == nil && len(msgs) > 0 && msgs[len(msgs)-1].Header.Get("Outbox-Aggregate-Id") == fmt.Sprint(len(rows))
	}
	require.Eventually(t, func() bool { return reached("ROWS_TS") && reached("ROWS_DATE") }, time.Minute, 200*time.Millisecond)
	msgs := e2e.ReadStream(t, f.nc, "ROWS_TS")
	require.Len(t, msgs, len(rows), "no row merged with another: %v", e2e.IDs(msgs))
	const deadLetter = "dl.ts"
	poison := func(i int, reason string) {
		t.Helper()
		require.Equal(t, deadLetter, msgs[i].Subject, "row %d is poison", i+1)
		require.Equal(t, fmt.Sprint(i+1), msgs[i].Header.Get("Outbox-Aggregate-Id"))
		require.Contains(t, msgs[i].Header.Get("Outbox-Poison-Reason"), reason)
	}
	require.Equal(t, "rows.order.paid", msgs[0].Subject)
	require.Equal(t, "2026-01-02T03:04:05.5Z", msgs[0].Header.Get("Outbox-Created-At"))
	poison(1, "invalid_subject")
	poison(2, "invalid_subject")
	poison(3, "invalid_subject")
	h := msgs[4].Header
	require.Equal(t, "rows.order.paid", msgs[4].Subject)
	require.Equal(t, "5", h.Get("x-num"))
	require.Equal(t, "1.50", h.Get("x-float"))
	require.Equal(t, "true", h.Get("x-bool"))
	require.Equal(t, `{"a":[1,"b"]}`, h.Get("x-obj"))
	require.Equal(t, "[]", h.Get("x-arr"))
	require.Equal(t, "ok", h.Get("x-str"))
	require.NotContains(t, h, "x-null")
	poison(5, "bad_row")
	require.Empty(t, msgs[5].Header.Get("Nats-Msg-Id"), "an unusable id is not sent as Nats-Msg-Id")
	require.Equal(t, "rows.order.paid", msgs[6].Subject)
	require.Equal(t, "a", msgs[6].Header.Get("Nats-Msg-Id"))
	poison(7, "bad_row")
	poison(8, "bad_row")
	require.Contains(t, msgs[8].Header.Get("Outbox-Poison-Reason"), "infinity")
	require.Equal(t, "rows.order.paid", msgs[9].Subject)

	dates := e2e.ReadStream(t, f.nc, "ROWS_DATE")
	require.Len(t, dates, len(rows))
	require.Equal(t, "2026-01-02T00:00:00Z", dates[0].Header.Get("Outbox-Created-At"))
	require.Contains(t, dates[8].Header.Get("Outbox-Poison-Reason"), "bad_row")
	require.False(t, byTimestamp.Exited())
	require.False(t, byDate.Exited())
}
