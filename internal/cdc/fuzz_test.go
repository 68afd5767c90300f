package cdc

import (
	"bytes"
	"testing"
	"time"
)

// FuzzDecode feeds arbitrary messages to a decoder that knows the outbox
// relation. Decoding must never panic, and an event must own its bytes: the
// replication connection reuses its buffer for the next message.
func FuzzDecode(f *testing.F) {
	for _, msg := range validMessages() {
		f.Add(msg)
	}
	ts := time.Date(2026, 11, 26, 4, 13, 53, 0, time.UTC)
	nullRow := outboxRow()
	for i := range nullRow {
		nullRow[i] = null
	}
	binRow := outboxRow()
	binRow[colPayload] = bin("\x00\x01\x02")
	for _, msg := range [][]byte{
		nil,
		{'B'},
		{'Z'},
		encBegin(0, pgEpoch, 0),
		encCommit(1, 2, 3, ts),
		encInsert(outboxRelID, nullRow...),
		encInsert(outboxRelID, binRow...),
		encInsert(outboxRelID, unchanged, unchanged, unchanged, unchanged, unchanged, unchanged, unchanged),
		encInsert(otherRelID, txt("x")),
		encInsert(999, txt("x")),
		encUpdate(outboxRelID, outboxRow()...),
		encDelete(outboxRelID, txt("k")),
		encTruncate(1, outboxRelID),
		encType(70000, "public", "mood"),
		encOrigin(0x1234, "upstream"),
		encLogicalMessage(false, 0x1234, "prefix", []byte("content")),
		encLogicalMessage(true, 0x1234, "prefix", []byte(`{"id": "a", "aggregate_type": "t", "aggregate_id": 7, "event_type": "e", "payload": {"x": [1]}, "headers": null}`)),
		encLogicalMessage(true, 0x1234, "prefix", []byte(`["not", "an", "object"]`)),
		encRelation(outboxRelID, "public", "outbox", 'd', outboxCols[:3]),
		encRelation(outboxRelID, "public", "outbox", 'd', append([]relCol{{name: "extra"}}, outboxCols...)),
	} {
		f.Add(msg)
	}

	f.Fuzz(func(t *testing.T, data []byte) {
		d := outboxDecoder(t)
		d.messagePrefix = "prefix" // logical decoding messages are events too
		// Decode a copy with no spare capacity, so a read past the end
		// cannot hide in the slack of the fuzzer's buffer.
		in := append(make([]byte, 0, len(data)), data...)
		ch, err := d.decode(in)
		if err != nil || ch.kind != changeEvent {
			return
		}
		ev := ch.event
		want := Event{
			ID:            ev.ID,
			AggregateType: ev.AggregateType,
			AggregateID:   ev.AggregateID,
			EventType:     ev.EventType,
			Payload:       bytes.Clone(ev.Payload),
			Headers:       bytes.Clone(ev.Headers),
			CreatedAt:     ev.CreatedAt,
			Defect:        ev.Defect,
		}
		for i := range in {
			in[i] ^= 0xff
		}
		if !bytes.Equal(ev.Payload, want.Payload) {
			t.Fatalf("payload aliases the message buffer: %q became %q", want.Payload, ev.Payload)
		}
		if !bytes.Equal(ev.Headers, want.Headers) {
			t.Fatalf("headers alias the message buffer: %q became %q", want.Headers, ev.Headers)
		}
		if ev.ID != want.ID || ev.AggregateType != want.AggregateType || ev.AggregateID != want.AggregateID ||
			ev.EventType != want.EventType || ev.CreatedAt != want.CreatedAt || ev.Defect != want.Defect {
			t.Fatalf("event changed with the message buffer: %+v, want %+v", ev, want)
		}
		// Decoding another message reuses the decoder's storage; the event
		// must not change either.
		if _, err := d.decode(encInsert(outboxRelID, outboxRow()...)); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(ev.Payload, want.Payload) || !bytes.Equal(ev.Headers, want.Headers) {
			t.Fatal("event changed when the decoder read the next message")
		}
		// A well-formed event has every required column.
		if ev.Defect == "" && (ev.Payload == nil) {
			t.Fatalf("event without defect has a NULL payload: %+v", ev)
		}
	})
}
