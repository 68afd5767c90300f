package cdc

import (
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

const (
	outboxRelID = 16384
	otherRelID  = 16400
)

// testColumns is the outbox configuration the decoder tests use.
var testColumns = Columns{
	ID:            "id",
	AggregateType: "aggregate_type",
	AggregateID:   "aggregate_id",
	EventType:     "event_type",
	Payload:       "payload",
	Headers:       "headers",
	CreatedAt:     "created_at",
}

// outboxCols is the outbox table in the order of testColumns.
var outboxCols = []relCol{
	{flags: 1, name: "id", oid: oidUUID, typmod: -1},
	{name: "aggregate_type", oid: oidText, typmod: -1},
	{name: "aggregate_id", oid: oidText, typmod: -1},
	{name: "event_type", oid: oidText, typmod: -1},
	{name: "payload", oid: oidJSONB, typmod: -1},
	{name: "headers", oid: oidJSONB, typmod: -1},
	{name: "created_at", oid: oidTimestamptz, typmod: -1},
}

// outboxRow is a good row for outboxCols.
func outboxRow() []tupleCol {
	return []tupleCol{
		txt("0b7a8f4e-5a42-4c38-9f0e-7d0f6f1d2c11"),
		txt("order"),
		txt("o-17"),
		txt("created"),
		txt(`{"total": 42}`),
		txt(`{"trace": "abc"}`),
		txt("2026-11-26 04:13:53.123456+00"),
	}
}

func outboxEvent() Event {
	return Event{
		ID:            "0b7a8f4e-5a42-4c38-9f0e-7d0f6f1d2c11",
		RowID:         "0b7a8f4e-5a42-4c38-9f0e-7d0f6f1d2c11",
		Schema:        "public",
		Table:         "outbox",
		AggregateType: "order",
		AggregateID:   "o-17",
		EventType:     "created",
		Payload:       []byte(`{"total": 42}`),
		Headers:       []byte(`{"trace": "abc"}`),
		CreatedAt:     "2026-11-26 04:13:53.123456+00",
	}
}

// outboxDecoder returns a decoder for public.outbox that has already read
// the outbox table's Relation message.
func outboxDecoder(t testing.TB) *decoder {
	t.Helper()
	d := newDecoder(Config{Schema: "public", Table: "outbox", Columns: testColumns})
	ch, err := d.decode(encRelation(outboxRelID, "public", "outbox", 'd', outboxCols))
	require.NoError(t, err)
	require.Equal(t, changeIgnored, ch.kind)
	return d
}

func TestDecoderBeginCommit(t *testing.T) {
	t.Parallel()
	d := newDecoder(Config{Schema: "public", Table: "outbox", Columns: testColumns})
	ts := time.Date(2026, 11, 26, 4, 13, 53, 123456000, time.UTC)

	ch, err := d.decode(encBegin(0x16_B374D848, ts, 991))
	require.NoError(t, err)
	require.Equal(t, changeBegin, ch.kind)
	require.Equal(t, beginMessage{finalLSN: 0x16_B374D848, commitTime: ts, xid: 991}, ch.begin)

	ch, err = d.decode(encCommit(0, 0x16_B374D848, 0x16_B374D878, ts))
	require.NoError(t, err)
	require.Equal(t, changeCommit, ch.kind)
	require.Equal(t, commitMessage{commitLSN: 0x16_B374D848, endLSN: 0x16_B374D878, commitTime: ts}, ch.commit)
}

func TestDecoderOutboxColumnMapping(t *testing.T) {
	t.Parallel()
	byName := map[string]tupleCol{}
	for i, c := range outboxRow() {
		byName[outboxCols[i].name] = c
	}
	extra := map[string]tupleCol{
		"tenant_id": txt("t-1"),
		"seq":       txt("77"),
		"blob":      bin("\x00\x01"), // a binary value in a column we do not read is fine
		"gone":      null,
	}
	for k, v := range extra {
		byName[k] = v
	}
	tests := []struct {
		name  string
		order []string
	}{
		{"configured order", []string{"id", "aggregate_type", "aggregate_id", "event_type", "payload", "headers", "created_at"}},
		{"reversed", []string{"created_at", "headers", "payload", "event_type", "aggregate_id", "aggregate_type", "id"}},
		{"shuffled with extra columns", []string{"tenant_id", "payload", "seq", "id", "event_type", "blob", "created_at", "aggregate_id", "headers", "gone", "aggregate_type"}},
		{"extra columns last", []string{"id", "aggregate_type", "aggregate_id", "event_type", "payload", "headers", "created_at", "tenant_id", "gone"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			cols := make([]relCol, len(tt.order))
			row := make([]tupleCol, len(tt.order))
			for i, name := range tt.order {
				cols[i] = relCol{name: name, oid: oidText, typmod: -1}
				row[i] = byName[name]
			}
			d := newDecoder(Config{Schema: "public", Table: "outbox", Columns: testColumns})
			_, err := d.decode(encRelation(outboxRelID, "public", "outbox", 'f', cols))
			require.NoError(t, err)
			ch, err := d.decode(encInsert(outboxRelID, row...))
			require.NoError(t, err)
			require.Equal(t, changeEvent, ch.kind)
			require.Equal(t, outboxEvent(), ch.event)
		})
	}
}

func TestDecoderCustomColumnNames(t *testing.T) {
	t.Parallel()
	cols := Columns{ID: "event_id", AggregateType: "agg_t", AggregateID: "agg_id", EventType: "kind", Payload: "body"}
	d := newDecoder(Config{Schema: "app", Table: "events", Columns: cols})
	_, err := d.decode(encRelation(5, "app", "events", 'd', []relCol{
		{name: "body"},
		{name: "kind"},
		{name: "agg_id"},
		{name: "agg_t"},
		{name: "event_id"},
		// Columns with the default names are not ours under this configuration.
		{name: "headers"},
		{name: "created_at"},
	}))
	require.NoError(t, err)
	ch, err := d.decode(encInsert(5, txt("payload"), txt("et"), txt("aid"), txt("at"), txt("id-1"), txt(`{"x":"y"}`), txt("2026-01-01 00:00:00+00")))
	require.NoError(t, err)
	require.Equal(t, changeEvent, ch.kind)
	require.Equal(t, Event{ID: "id-1", RowID: "id-1", Schema: "app", Table: "events", AggregateType: "at", AggregateID: "aid", EventType: "et", Payload: []byte("payload")}, ch.event)
}

func TestDecoderRelationMissingColumn(t *testing.T) {
	t.Parallel()
	without := func(names ...string) []relCol {
		var cols []relCol
	next:
		for _, c := range outboxCols {
			for _, n := range names {
				if c.name == n {
					continue next
				}
			}
			cols = append(cols, c)
		}
		return cols
	}
	tests := []struct {
		name    string
		columns Columns
		cols    []relCol
		missing []string
	}{
		{"id", testColumns, without("id"), []string{"id"}},
		{"aggregate_type", testColumns, without("aggregate_type"), []string{"aggregate_type"}},
		{"aggregate_id", testColumns, without("aggregate_id"), []string{"aggregate_id"}},
		{"event_type", testColumns, without("event_type"), []string{"event_type"}},
		{"payload", testColumns, without("payload"), []string{"payload"}},
		{"configured headers", testColumns, without("headers"), []string{"headers"}},
		{"configured created_at", testColumns, without("created_at"), []string{"created_at"}},
		{"several", testColumns, without("payload", "event_type"), []string{"payload", "event_type"}},
		{"no columns at all", testColumns, nil, []string{"id", "aggregate_type", "aggregate_id", "event_type", "payload", "headers", "created_at"}},
		{"case matters", testColumns, append(without("id"), relCol{name: "ID"}), []string{"id"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			d := newDecoder(Config{Schema: "public", Table: "outbox", Columns: tt.columns})
			_, err := d.decode(encRelation(outboxRelID, "public", "outbox", 'd', tt.cols))
			require.ErrorIs(t, err, ErrConfig)
			require.ErrorContains(t, err, "public.outbox")
			for _, m := range tt.missing {
				require.ErrorContains(t, err, `"`+m+`"`)
			}
			// The relation is not usable: an insert for it is an error,
			// never an event decoded with a wrong column layout.
			_, err = d.decode(encInsert(outboxRelID, outboxRow()...))
			require.Error(t, err)
		})
	}
}

func TestDecoderOptionalColumnsNotConfigured(t *testing.T) {
	t.Parallel()
	cols := testColumns
	cols.Headers = ""
	cols.CreatedAt = ""
	d := newDecoder(Config{Schema: "public", Table: "outbox", Columns: cols})
	_, err := d.decode(encRelation(outboxRelID, "public", "outbox", 'd', outboxCols[:5]))
	require.NoError(t, err)
	ch, err := d.decode(encInsert(outboxRelID, outboxRow()[:5]...))
	require.NoError(t, err)
	want := outboxEvent()
	want.Headers = nil
	want.CreatedAt = ""
	require.Equal(t, want, ch.event)
}

func TestDecoderOtherRelationsIgnored(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name      string
		namespace string
		table     string
	}{
		{"other table", "public", "orders"},
		{"same table other schema", "audit", "outbox"},
		{"schema and table swapped", "outbox", "public"},
		{"prefix", "public", "outbox2"},
		{"case differs", "public", "Outbox"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			d := outboxDecoder(t)
			// Other tables may lack every outbox column: no error.
			ch, err := d.decode(encRelation(otherRelID, tt.namespace, tt.table, 'd', []relCol{{name: "n", oid: oidInt8}}))
			require.NoError(t, err)
			other := relationName{id: otherRelID, namespace: tt.namespace, name: tt.table}
			require.Equal(t, changeRelation, ch.kind)
			require.Equal(t, other, ch.relation)
			// The reader checks whether it is a partition of the outbox.
			ch, err = d.decode(encInsert(otherRelID, txt("1")))
			require.NoError(t, err)
			require.Equal(t, changeForeignInsert, ch.kind)
			require.Equal(t, other, ch.relation)
			require.Equal(t, Event{}, ch.event)
			// The outbox relation is still known.
			ch, err = d.decode(encInsert(outboxRelID, outboxRow()...))
			require.NoError(t, err)
			require.Equal(t, changeEvent, ch.kind)
		})
	}
}

func TestDecoderRelationRedescribed(t *testing.T) {
	t.Parallel()
	d := outboxDecoder(t)
	// After ALTER TABLE ... ADD COLUMN PostgreSQL sends the relation
	// again; the new layout applies to later inserts.
	cols := append([]relCol{{name: "tenant"}}, outboxCols...)
	_, err := d.decode(encRelation(outboxRelID, "public", "outbox", 'd', cols))
	require.NoError(t, err)
	ch, err := d.decode(encInsert(outboxRelID, append([]tupleCol{txt("t")}, outboxRow()...)...))
	require.NoError(t, err)
	require.Equal(t, outboxEvent(), ch.event)
	// The old width is now wrong.
	_, err = d.decode(encInsert(outboxRelID, outboxRow()...))
	require.ErrorContains(t, err, "columns")

	// The outbox's relation id under another name later in the session is
	// the outbox renamed (the session saw it as the outbox, even when
	// preflight did not know its OID): its rows would be skipped.
	_, err = d.decode(encRelation(outboxRelID, "public", "renamed", 'd', outboxCols))
	require.ErrorIs(t, err, ErrConfig)
	require.ErrorContains(t, err, "it was renamed")
}

func TestDecoderRowDefects(t *testing.T) {
	t.Parallel()
	with := func(slot int, v tupleCol) []tupleCol {
		row := outboxRow()
		row[slot] = v
		return row
	}
	// with2 sets two columns NULL: the first in slot order is named.
	with2 := func(a, b int) []tupleCol {
		row := with(a, null)
		row[b] = null
		return row
	}
	tests := []struct {
		name   string
		row    []tupleCol
		defect string // substring; empty means no defect
		check  func(t *testing.T, ev Event)
	}{
		{name: "good row", row: outboxRow()},
		{name: "NULL id", row: with(colID, null), defect: `"id" is NULL`},
		{name: "NULL aggregate_type", row: with(colAggregateType, null), defect: `"aggregate_type" is NULL`},
		{name: "NULL aggregate_id", row: with(colAggregateID, null), defect: `"aggregate_id" is NULL`},
		{name: "NULL event_type", row: with(colEventType, null), defect: `"event_type" is NULL`},
		{
			name: "NULL payload", row: with(colPayload, null), defect: `"payload" is NULL`,
			check: func(t *testing.T, ev Event) { require.Nil(t, ev.Payload) },
		},
		{name: "binary payload", row: with(colPayload, bin("\x01")), defect: `"payload" has no text value`},
		{name: "unchanged TOAST payload", row: with(colPayload, unchanged), defect: `"payload" has no text value`},
		{name: "binary headers", row: with(colHeaders, bin("{}")), defect: `"headers" has no text value`},
		{
			name: "NULL headers", row: with(colHeaders, null),
			check: func(t *testing.T, ev Event) { require.Nil(t, ev.Headers) },
		},
		{
			name: "empty headers", row: with(colHeaders, txt("")),
			check: func(t *testing.T, ev Event) {
				require.NotNil(t, ev.Headers, "an empty value must stay distinguishable from NULL")
				require.Empty(t, ev.Headers)
			},
		},
		{
			name: "empty payload", row: with(colPayload, txt("")),
			check: func(t *testing.T, ev Event) {
				require.NotNil(t, ev.Payload)
				require.Empty(t, ev.Payload)
			},
		},
		{
			name: "NULL created_at", row: with(colCreatedAt, null),
			check: func(t *testing.T, ev Event) { require.Empty(t, ev.CreatedAt) },
		},
		{
			name: "first defect reported", row: with2(colAggregateID, colPayload), defect: `"aggregate_id" is NULL`,
			check: func(t *testing.T, ev Event) { require.NotContains(t, ev.Defect, "payload") },
		},
	}

	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			d := outboxDecoder(t)
			ch, err := d.decode(encInsert(outboxRelID, tt.row...))
			require.NoError(t, err, "a bad row is a defect of the row, not of the stream")
			require.Equal(t, changeEvent, ch.kind)
			if tt.defect == "" {
				require.Empty(t, ch.event.Defect)
			} else {
				require.Contains(t, ch.event.Defect, tt.defect)
			}
			if tt.check != nil {
				tt.check(t, ch.event)
			}
		})
	}
}

func TestDecoderEventDoesNotAliasBuffer(t *testing.T) {
	t.Parallel()
	d := outboxDecoder(t)
	msg := encInsert(outboxRelID, outboxRow()...)
	ch, err := d.decode(msg)
	require.NoError(t, err)
	for i := range msg {
		msg[i] = 'X'
	}
	require.Equal(t, outboxEvent(), ch.event)

	// Decoding the next row (which reuses the decoder's storage) does not
	// change the first event either.
	row := outboxRow()
	row[colPayload] = txt(`{"total": 43, "longer": true}`)
	row[colHeaders] = txt(`{"trace": "def"}`)
	ch2, err := d.decode(encInsert(outboxRelID, row...))
	require.NoError(t, err)
	require.Equal(t, outboxEvent(), ch.event)
	require.Equal(t, `{"total": 43, "longer": true}`, string(ch2.event.Payload))
}

func TestDecoderIgnoredKinds(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		msg  []byte
	}{
		{"update", encUpdate(outboxRelID, outboxRow()...)},
		{"delete", encDelete(outboxRelID, txt("0b7a8f4e-5a42-4c38-9f0e-7d0f6f1d2c11"))},
		{"truncate", encTruncate(0, outboxRelID, otherRelID)},
		{"type", encType(70000, "public", "mood")},
		{"origin", encOrigin(0x1234, "upstream")},
		{"logical message", encLogicalMessage(true, 0x1234, "prefix", []byte("content"))},
		{"update of undescribed relation", encUpdate(999, txt("x"))},
		{"bare kind bytes", []byte{'U'}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			d := outboxDecoder(t)
			ch, err := d.decode(tt.msg)
			require.NoError(t, err)
			require.Equal(t, change{}, ch)
		})
	}
}

func TestDecoderErrors(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name     string
		msg      []byte
		contains string
	}{
		{"empty message", nil, "empty message"},
		{"empty non-nil message", []byte{}, "empty message"},
		{"unknown type", []byte{'Z', 1, 2, 3}, "unknown message type"},
		{"stream start (protocol 2)", []byte{'S', 0, 0, 0, 1, 1}, "unknown message type"},
		{"lower-case kind", append([]byte{'i'}, encInsert(outboxRelID, outboxRow()...)[1:]...), "unknown message type"},
		{"insert of undescribed relation", encInsert(999, outboxRow()...), "never described"},
		{"insert with too few columns", encInsert(outboxRelID, outboxRow()[:6]...), "7"},
		{"insert with too many columns", encInsert(outboxRelID, append(outboxRow(), txt("extra"))...), "8 columns"},
		{"insert with unknown column kind", encInsert(outboxRelID, tupleCol{kind: 'x'}), "unknown kind"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			d := outboxDecoder(t)
			ch, err := d.decode(tt.msg)
			require.ErrorContains(t, err, tt.contains)
			require.False(t, errors.Is(err, ErrConfig), "a protocol error is not a configuration error")
			require.NotEqual(t, changeEvent, ch.kind)
		})
	}
}

// validMessages are well-formed messages of every kind the decoder parses,
// each valid for outboxDecoder.
func validMessages() map[string][]byte {
	ts := time.Date(2026, 11, 26, 4, 13, 53, 123456000, time.UTC)
	nullRow := outboxRow()
	nullRow[colHeaders] = null
	nullRow[colPayload] = txt("")
	return map[string][]byte{
		"begin":            encBegin(0x16_B374D848, ts, 991),
		"commit":           encCommit(0, 0x16_B374D848, 0x16_B374D878, ts),
		"outbox relation":  encRelation(outboxRelID, "public", "outbox", 'd', outboxCols),
		"other relation":   encRelation(otherRelID, "public", "orders", 'd', []relCol{{name: "n", oid: oidInt8}}),
		"empty relation":   encRelation(otherRelID, "public", "nothing", 'n', nil),
		"insert":           encInsert(outboxRelID, outboxRow()...),
		"insert with null": encInsert(outboxRelID, nullRow...),
	}
}

// TestDecoderTruncated cuts valid messages at every length: each prefix must
// give an error, never a panic nor an event.
func TestDecoderTruncated(t *testing.T) {
	t.Parallel()
	for name, msg := range validMessages() {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			_, err := outboxDecoder(t).decode(msg)
			require.NoError(t, err, "the whole message is valid")
			for n := range len(msg) {
				d := outboxDecoder(t)
				prefix := append([]byte(nil), msg[:n]...) // exact capacity
				var (
					ch  change
					err error
				)
				require.NotPanics(t, func() { ch, err = d.decode(prefix) }, "prefix of %d bytes", n)
				require.Error(t, err, "prefix of %d bytes", n)
				if n > 0 {
					require.ErrorIs(t, err, errTruncated, "prefix of %d bytes", n)
				}
				require.NotEqual(t, changeEvent, ch.kind, "prefix of %d bytes", n)
			}
		})
	}
}

func TestDecoderTrailingBytes(t *testing.T) {
	t.Parallel()
	for name, msg := range validMessages() {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			long := append(append([]byte(nil), msg...), 0)
			_, err := outboxDecoder(t).decode(long)
			require.ErrorContains(t, err, "trailing bytes")
			require.True(t, strings.HasPrefix(err.Error(), "decode "), err.Error())
		})
	}
}

// TestDecoderOutboxRenamed: the outbox's relation arriving under another
// name (renamed, or moved to another schema) is an error, not a foreign
// table whose rows are ignored.
func TestDecoderOutboxRenamed(t *testing.T) {
	t.Parallel()
	for _, name := range [][2]string{{"public", "outbox_old"}, {"archive", "outbox"}} {
		d := newDecoder(Config{Schema: "public", Table: "outbox", Columns: testColumns})
		d.outboxOIDs = map[uint32]string{outboxRelID: "public.outbox"}
		_, err := d.decode(encRelation(outboxRelID, name[0], name[1], 'd', outboxCols))
		require.ErrorIs(t, err, ErrConfig)
		require.ErrorContains(t, err, "renamed")
	}
	// Another relation under the outbox's name (the table recreated) is the outbox.
	d := newDecoder(Config{Schema: "public", Table: "outbox", Columns: testColumns})
	d.outboxOIDs = map[uint32]string{outboxRelID: "public.outbox"}
	_, err := d.decode(encRelation(outboxRelID+1, "public", "outbox", 'd', outboxCols))
	require.NoError(t, err)
	ch, err := d.decode(encInsert(outboxRelID+1, outboxRow()...))
	require.NoError(t, err)
	require.Equal(t, changeEvent, ch.kind)
}

// TestDecoderColumnAlternatives: a column configured as "old,new" is read
// from whichever name the relation has, so rows written before and after a
// rename decode alike; a relation with neither is an error naming both.
func TestDecoderColumnAlternatives(t *testing.T) {
	t.Parallel()
	cols := testColumns
	cols.EventType = "event_type, kind"
	d := newDecoder(Config{Schema: "public", Table: "outbox", Columns: cols})
	_, err := d.decode(encRelation(outboxRelID, "public", "outbox", 'd', outboxCols))
	require.NoError(t, err)
	ch, err := d.decode(encInsert(outboxRelID, outboxRow()...))
	require.NoError(t, err)
	require.Equal(t, outboxEvent(), ch.event)

	renamed := slices.Clone(outboxCols)
	renamed[3].name = "kind"
	_, err = d.decode(encRelation(outboxRelID, "public", "outbox", 'd', renamed))
	require.NoError(t, err)
	ch, err = d.decode(encInsert(outboxRelID, outboxRow()...))
	require.NoError(t, err)
	require.Equal(t, outboxEvent(), ch.event)
	// A defect names the column as the relation has it.
	row := outboxRow()
	row[3] = tupleCol{kind: 'n'}
	ch, err = d.decode(encInsert(outboxRelID, row...))
	require.NoError(t, err)
	require.Equal(t, `column "kind" is NULL`, ch.event.Defect)

	neither := slices.Clone(outboxCols)
	neither[3].name = "type"
	_, err = d.decode(encRelation(outboxRelID, "public", "outbox", 'd', neither))
	require.ErrorIs(t, err, ErrConfig)
	require.ErrorContains(t, err, `"event_type or kind"`)
}

func TestColumnsAlternatives(t *testing.T) {
	t.Parallel()
	c := Columns{ID: "id", EventType: " kind , event_kind ,", Headers: ""}
	alts := c.alternatives()
	require.Equal(t, []string{"kind", "event_kind"}, alts[colEventType])
	require.Nil(t, alts[colHeaders])
	require.Equal(t, []string{"kind or event_kind"}, c.missingFrom([]string{"id", "payload"}))
	require.Equal(t, []string{"aggregate_type"}, Columns{AggregateType: "aggregate_type", EventType: "kind,event_kind"}.missingFrom([]string{"event_kind"}))
}

// A row whose payload and headers no message can carry is read without
// them: the event says how large they were, and holds none of it.
func TestDecoderLeavesOutRowsNoMessageCanCarry(t *testing.T) {
	t.Parallel()
	d := outboxDecoder(t)
	d.maxRow = 40
	ch, err := d.decode(encInsert(outboxRelID, outboxRow()...))
	require.NoError(t, err, "payload and headers are 29 bytes: kept")
	require.Equal(t, outboxEvent(), ch.event)

	row := outboxRow()
	row[4] = txt(`{"blob": "` + strings.Repeat("x", 100) + `"}`)
	ch, err = d.decode(encInsert(outboxRelID, row...))
	require.NoError(t, err)
	want := outboxEvent()
	want.Payload, want.PayloadOmitted = nil, 112
	require.Equal(t, want, ch.event, "the headers fit and are kept")
	require.Less(t, eventSize(&ch.event), int64(eventOverhead+100), "nothing large is held")
}
