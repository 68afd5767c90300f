package main

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/outbox-relay/outbox-relay/internal/e2e"
)

// TestLogicalDecodingMessagesArePublishedInCommitOrder: with
// --message-prefix, events written with pg_logical_emit_message(true, ...)
// are published like rows, and rows and messages, in one transaction and
// across concurrent transactions, land once each in commit order. A message
// with another prefix and a non-transactional one are not published (the
// latter counted and logged); a message whose content is not an event is
// poison (here dead-lettered) and the relay goes on.
func TestLogicalDecodingMessagesArePublishedInCommitOrder(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	r := f.startRelay(t, "RELAY_MESSAGE_PREFIX", "outbox", "RELAY_ON_POISON", "dead-letter")

	// Transactions of rows only, messages only, and both interleaved.
	shapes := [][]bool{{false}, {true}, {false, true, false, true, true}, {true, false}, {true, true, true}}
	// Among them, messages the relay must not publish as events.
	notEvents := []string{
		`SELECT pg_logical_emit_message(false, 'outbox', '{"id": "non-transactional", "aggregate_type": "a", "aggregate_id": "1", "event_type": "e", "payload": {}}')`,
		`SELECT pg_logical_emit_message(true, 'other', '{"id": "other-prefix", "aggregate_type": "a", "aggregate_id": "1", "event_type": "e", "payload": {}}')`,
		`SELECT pg_logical_emit_message(true, 'outbox', 'not an event')`,
	}
	writeConcurrently(t, 4, 20, func(ctx context.Context, w, i int) error {
		if w == 0 && i >= 5 && i-5 < len(notEvents) {
			if err := f.pg.ExecContext(ctx, f.db, notEvents[i-5]); err != nil {
				return err
			}
		}
		shape := shapes[(w+i)%len(shapes)]
		events := e2e.SampleEvents(len(shape), 64, fmt.Sprintf("w%d-%d", w, i))
		for j, asMessage := range shape {
			if asMessage {
				events[j].Message = "outbox"
				events[j].Headers = `{"kind": "message"}`
			}
		}
		_, err := f.writer.Write(ctx, events, i%7 == 3) // some roll back
		return err
	})

	committed := f.writer.Committed(t)
	f.waitStream(t, len(committed)+1, time.Minute) // and the dead letter
	var events []e2e.StoredMessage
	var deadLetters []e2e.StoredMessage
	for _, m := range e2e.ReadStream(t, f.nc, "OUTBOX") {
		if strings.HasPrefix(m.Subject, "outbox_dead_letter.") {
			deadLetters = append(deadLetters, m)
		} else {
			events = append(events, m)
		}
	}
	v := e2e.Compare(committed, e2e.IDs(events))
	require.True(t, v.OK(), "stream vs commit log: %s", v)
	messages := 0
	for _, m := range events {
		if m.Header.Get("kind") == "message" {
			messages++
			require.Equal(t, "order", m.Header.Get("Outbox-Aggregate-Type"))
			require.NotEmpty(t, m.Header.Get("Outbox-Created-At"))
			require.Regexp(t, `^\{"n": \d+, "pad": "[a-z]+"\}$`, string(m.Data), "the payload as JSON")
		}
	}
	require.Greater(t, messages, 50, "messages were published")
	require.Less(t, messages, len(events), "rows were published")
	require.Len(t, deadLetters, 1)
	require.True(t, strings.HasPrefix(deadLetters[0].Header.Get("Outbox-Poison-Reason"), "bad_row: logical decoding message: content is not a JSON object"),
		deadLetters[0].Header.Get("Outbox-Poison-Reason"))
	require.Equal(t, "not an event", string(deadLetters[0].Data), "the dead letter carries the whole content")

	require.Eventually(t, func() bool {
		m := r.Metrics()
		return m[`outbox_relay_cdc_messages_ignored_total{reason="non_transactional"}`] == 1 &&
			m[`outbox_relay_cdc_messages_ignored_total{reason="other_prefix"}`] == 1 &&
			m[`outbox_relay_pump_poison_events_total{reason="bad_row"}`] == 1
	}, 10*time.Second, 100*time.Millisecond)
	require.Contains(t, r.Logs(), "non-transactional message ignored")

	// After a restart the slot resumes past the messages; nothing is
	// published twice.
	stopRelay(t, r)
	f.write(t, 2, "after-restart")
	f.startRelay(t, "RELAY_MESSAGE_PREFIX", "outbox", "RELAY_ON_POISON", "dead-letter")
	f.waitStream(t, len(committed)+3, time.Minute)
	require.Never(t, func() bool { return e2e.StreamCount(f.nc, "OUTBOX") > len(committed)+3 }, 2*time.Second, 200*time.Millisecond)
}

// TestLogicalDecodingMessagesOffByDefault: without --message-prefix the
// relay asks for no messages and publishes none.
func TestLogicalDecodingMessagesOffByDefault(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	r := f.startRelay(t)
	f.pg.Exec(t, f.db, `SELECT pg_logical_emit_message(true, 'outbox', '{"id": "m", "aggregate_type": "a", "aggregate_id": "1", "event_type": "e", "payload": {}}')`)
	f.write(t, 2, "rows")
	f.waitStream(t, 2, 30*time.Second)
	f.verify(t)
	require.Zero(t, r.Metrics()[`outbox_relay_cdc_messages_ignored_total{reason="other_prefix"}`])
}
