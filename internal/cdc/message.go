package cdc

import (
	"bytes"
	"encoding/json"
	"fmt"
)

// An outbox without a table: services write events with
// pg_logical_emit_message(true, <prefix>, <content>), and the relay, asking
// pgoutput for messages (PostgreSQL 14+), publishes those with the
// configured prefix. The content is a JSON object whose keys are the outbox
// columns of the mapping (any of a column's alternatives), mapped exactly
// like a row: the decoder turns it into the tuple a row with those columns
// would have, and the rest of the relay cannot tell the two apart.

// decodeMessage turns a Message into an event, or says why it is ignored.
// Content that is not a JSON object of the mapping's fields is a defect of
// the event (the poison policy decides), not of the stream.
func (d *decoder) decodeMessage(body []byte) (change, error) {
	m, err := decodeMessage(body)
	if err != nil {
		return change{}, err
	}
	if m.prefix != d.messagePrefix {
		return change{kind: changeIgnoredMessage, ignored: ignoredOtherPrefix}, nil
	}
	if !m.transactional {
		return change{kind: changeIgnoredMessage, ignored: ignoredNonTransactional}, nil
	}
	rel, defect := d.messageTuple(m.content)
	ev, rowDefect := d.event(rel)
	if defect == "" {
		defect = rowDefect
	}
	if defect != "" {
		ev.Defect = "logical decoding message: " + defect
		// The content is the message's only record: a dead letter carries
		// all of it as its body.
		ev.Payload, ev.PayloadOmitted = nil, 0
		if d.maxRow > 0 && int64(len(m.content)) > d.maxRow {
			ev.PayloadOmitted = len(m.content)
		} else {
			ev.Payload = bytes.Clone(m.content)
		}
	}
	return change{kind: changeEvent, event: ev}, nil
}

// messageTuple fills d.insert with the tuple a row of content's fields would
// have, and returns the relation that maps it: a string as its text, a
// number or any value of payload and headers as its JSON text, null as
// NULL. A missing required field is NULL too, so the row's rules apply.
func (d *decoder) messageTuple(content []byte) (relation, string) {
	rel := relation{outbox: true, name: relationName{name: "message"}}
	d.insert.values = d.insert.values[:0]
	var fields map[string]json.RawMessage
	dec := json.NewDecoder(bytes.NewReader(content))
	dec.UseNumber()
	err := dec.Decode(&fields)
	if err == nil && dec.More() {
		err = fmt.Errorf("data after the JSON object")
	}
	if err != nil || fields == nil {
		for slot := range rel.index {
			rel.index[slot] = -1
		}
		if err == nil {
			err = fmt.Errorf("null")
		}
		return rel, fmt.Sprintf("content is not a JSON object: %v", err)
	}
	keys := make([]string, 0, len(fields))
	for k := range fields {
		keys = append(keys, k)
	}
	rel.index, _ = d.cfg.Columns.find(keys)
	var defect string
	for slot := range numColumns {
		i := rel.index[slot]
		if i < 0 {
			if alts := d.cfg.Columns.alternatives()[slot]; len(alts) > 0 {
				// A configured field the content lacks reads as NULL.
				rel.columns[slot] = alts[0]
				rel.index[slot] = len(d.insert.values)
				d.insert.values = append(d.insert.values, tupleValue{kind: 'n'})
			}
			continue
		}
		name := keys[i]
		rel.columns[slot] = name
		rel.index[slot] = len(d.insert.values)
		v, bad := messageValue(slot, fields[name])
		if bad != "" && defect == "" {
			defect = fmt.Sprintf("field %q %s", name, bad)
		}
		d.insert.values = append(d.insert.values, v)
	}
	rel.width = len(d.insert.values)
	return rel, defect
}

// messageValue is the column value of a JSON field, and what is wrong with
// it, if anything.
func messageValue(slot int, raw json.RawMessage) (tupleValue, string) {
	raw = bytes.TrimSpace(raw)
	if bytes.Equal(raw, []byte("null")) {
		return tupleValue{kind: 'n'}, ""
	}
	if slot == colPayload || slot == colHeaders {
		return tupleValue{kind: 't', value: raw}, ""
	}
	switch raw[0] {
	case '"':
		var s string
		if err := json.Unmarshal(raw, &s); err != nil {
			return tupleValue{kind: 'n'}, fmt.Sprintf("is not a valid JSON string: %v", err)
		}
		return tupleValue{kind: 't', value: []byte(s)}, ""
	case '{', '[', 't', 'f':
		return tupleValue{kind: 'n'}, "must be a string or a number"
	default: // a number, as its text
		return tupleValue{kind: 't', value: raw}, ""
	}
}
