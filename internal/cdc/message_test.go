package cdc

import (
	"testing"

	"github.com/stretchr/testify/require"
)

// TestDecoderLogicalMessages: with a message prefix, a transactional
// message with that prefix is an event whose JSON content is mapped like a
// row of the same columns; other prefixes and non-transactional messages are
// ignored, each with its reason; bad content is a defect of the event.
func TestDecoderLogicalMessages(t *testing.T) {
	t.Parallel()
	const good = `{"id": "0b7a8f4e-5a42-4c38-9f0e-7d0f6f1d2c11", "aggregate_type": "order", "aggregate_id": "o-17",
		"event_type": "created", "payload": {"total": 42}, "headers": {"trace": "abc"}, "created_at": "2026-11-26 04:13:53.123456+00", "extra": [1]}`
	tests := []struct {
		name          string
		columns       Columns
		transactional bool
		prefix        string
		content       string
		want          *Event // nil: ignored
		ignored       string
		defect        string
	}{
		{
			name: "an event", transactional: true, prefix: "outbox", content: good,
			want: &Event{
				ID: "0b7a8f4e-5a42-4c38-9f0e-7d0f6f1d2c11", AggregateType: "order", AggregateID: "o-17", EventType: "created",
				Payload: []byte(`{"total": 42}`), Headers: []byte(`{"trace": "abc"}`), CreatedAt: "2026-11-26 04:13:53.123456+00",
			},
		},
		{
			name: "numbers as their text, a string payload as JSON, optional fields left out", transactional: true, prefix: "outbox",
			content: `{"id": 12, "aggregate_type": "order", "aggregate_id": 1.5e3, "event_type": "created", "payload": "plain"}`,
			want:    &Event{ID: "12", AggregateType: "order", AggregateID: "1.5e3", EventType: "created", Payload: []byte(`"plain"`)},
		},
		{
			name: "null headers and created_at", transactional: true, prefix: "outbox",
			content: `{"id": "a", "aggregate_type": "t", "aggregate_id": "1", "event_type": "e", "payload": {}, "headers": null, "created_at": null}`,
			want:    &Event{ID: "a", AggregateType: "t", AggregateID: "1", EventType: "e", Payload: []byte(`{}`)},
		},
		{
			name:          "renamed fields, as column alternatives",
			columns:       Columns{ID: "id", AggregateType: "aggregate_type", AggregateID: "aggregate_id", EventType: "event_type,kind", Payload: "payload,body"},
			transactional: true, prefix: "outbox",
			content: `{"id": "a", "aggregate_type": "t", "aggregate_id": "1", "kind": "e", "body": [1, 2]}`,
			want:    &Event{ID: "a", AggregateType: "t", AggregateID: "1", EventType: "e", Payload: []byte(`[1, 2]`)},
		},
		{name: "another prefix", transactional: true, prefix: "other", content: good, ignored: ignoredOtherPrefix},
		{name: "a prefix that only starts the same", transactional: true, prefix: "outbox.x", content: good, ignored: ignoredOtherPrefix},
		{name: "non-transactional", prefix: "outbox", content: good, ignored: ignoredNonTransactional},
		{name: "not JSON", transactional: true, prefix: "outbox", content: `id=1`, defect: "content is not a JSON object"},
		{name: "an array", transactional: true, prefix: "outbox", content: `[1]`, defect: "content is not a JSON object"},
		{name: "null", transactional: true, prefix: "outbox", content: `null`, defect: "content is not a JSON object"},
		{name: "two objects", transactional: true, prefix: "outbox", content: `{} {}`, defect: "data after the JSON object"},
		{
			name: "a missing required field", transactional: true, prefix: "outbox",
			content: `{"id": "a", "aggregate_type": "t", "aggregate_id": "1", "payload": {}}`, defect: `column "event_type" is NULL`,
		},
		{
			name: "an object where a string goes", transactional: true, prefix: "outbox",
			content: `{"id": {"a": 1}, "aggregate_type": "t", "aggregate_id": "1", "event_type": "e", "payload": {}}`, defect: `field "id" must be a string or a number`,
		},
		{
			name: "a null payload", transactional: true, prefix: "outbox",
			content: `{"id": "a", "aggregate_type": "t", "aggregate_id": "1", "event_type": "e", "payload": null}`, defect: `column "payload" is NULL`,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			columns := testColumns
			if tt.columns != (Columns{}) {
				columns = tt.columns
			}
			d := newDecoder(Config{Schema: "public", Table: "outbox", Columns: columns})
			d.messagePrefix = "outbox"
			ch, err := d.decode(encLogicalMessage(tt.transactional, 0x1234, tt.prefix, []byte(tt.content)))
			require.NoError(t, err)
			if tt.ignored != "" {
				require.Equal(t, change{kind: changeIgnoredMessage, ignored: tt.ignored}, ch)
				return
			}
			require.Equal(t, changeEvent, ch.kind)
			if tt.defect != "" {
				require.Contains(t, ch.event.Defect, tt.defect)
				require.Contains(t, ch.event.Defect, "logical decoding message: ")
				require.Equal(t, tt.content, string(ch.event.Payload), "the whole content, for a dead letter")
				return
			}
			require.Empty(t, ch.event.Defect)
			want := *tt.want
			want.RowID = want.ID
			require.Equal(t, want, ch.event)
		})
	}
}

// TestDecoderMessagesOff: without a prefix, messages are not the relay's,
// whatever they hold.
func TestDecoderMessagesOff(t *testing.T) {
	t.Parallel()
	d := outboxDecoder(t)
	for _, transactional := range []bool{true, false} {
		ch, err := d.decode(encLogicalMessage(transactional, 1, "", []byte(`{}`)))
		require.NoError(t, err)
		require.Equal(t, change{}, ch)
	}
}

// TestDecodeMessageTruncated: a message shorter than its own length field
// is an error of the stream, never a panic.
func TestDecodeMessageTruncated(t *testing.T) {
	t.Parallel()
	d := outboxDecoder(t)
	d.messagePrefix = "p"
	msg := encLogicalMessage(true, 1, "p", []byte(`{"id": "a"}`))
	for n := 1; n < len(msg); n++ {
		_, err := d.decode(msg[:n])
		require.Error(t, err, "cut at %d", n)
	}
	_, err := d.decode(append(msg, 'x'))
	require.ErrorContains(t, err, "trailing bytes")
}
