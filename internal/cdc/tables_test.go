package cdc

import (
	"testing"

	"github.com/stretchr/testify/require"
)

func TestParseTables(t *testing.T) {
	cols := Columns{ID: "id", AggregateType: "at", AggregateID: "aid", EventType: "et", Payload: "p"}
	tables, err := ParseTables(" events, billing.outbox ,tenant_*.outbox", cols)
	require.NoError(t, err)
	require.Equal(t, []Table{
		{Schema: "public", Name: "events", Columns: cols},
		{Schema: "billing", Name: "outbox", Columns: cols},
		{Schema: "tenant_*", Name: "outbox", Columns: cols},
	}, tables)
	require.False(t, tables[1].IsPattern())
	require.True(t, tables[2].IsPattern())

	for setting, want := range map[string]string{
		"":                     "table: must not be empty",
		"a.b.c":                `table: "a.b.c" has more than one dot`,
		".events":              `table: ".events" needs a schema and a table name`,
		"events,public.events": `table: "public.events" is listed twice`,
	} {
		_, err := ParseTables(setting, cols)
		require.ErrorContains(t, err, want, setting)
	}
}

func TestTableMatches(t *testing.T) {
	for _, tt := range []struct {
		table, schema, name string
		want                bool
	}{
		{"public.events", "public", "events", true},
		{"public.events", "public", "events2", false},
		{"*.outbox", "tenant_1", "outbox", true},
		{"*.outbox", "tenant_1", "outbox_old", false},
		{"tenant_*.outbox", "tenant_", "outbox", true},
		{"tenant_*.outbox", "tenants", "outbox", false},
		{"t*_x*.o*", "t1_x2", "outbox", true},
		{"t*_x*.o*", "t1_y2", "outbox", false},
		{"*.*", "a", "b", true},
		{"a?.b", "a?", "b", true}, // only '*' is special
		{"a?.b", "ab", "b", false},
	} {
		tables, err := ParseTables(tt.table, Columns{})
		require.NoError(t, err)
		require.Equal(t, tt.want, tables[0].Matches(tt.schema, tt.name), "%s vs %s.%s", tt.table, tt.schema, tt.name)
	}
}

// TestTableFor: a table listed by name takes its own mapping even when a
// pattern listed before it matches too.
func TestTableFor(t *testing.T) {
	tables, err := ParseTables("*.outbox, billing.outbox", Columns{ID: "id"})
	require.NoError(t, err)
	require.NoError(t, ApplyTableColumns(tables, "billing.outbox: id=invoice_id"))
	cfg := Config{Tables: tables}
	got, ok := cfg.tableFor("billing", "outbox")
	require.True(t, ok)
	require.Equal(t, "invoice_id", got.Columns.ID)
	got, ok = cfg.tableFor("shop", "outbox")
	require.True(t, ok)
	require.Equal(t, "id", got.Columns.ID)
	_, ok = cfg.tableFor("shop", "events")
	require.False(t, ok)
	require.True(t, cfg.Several())
	require.True(t, Config{Tables: tables[:1]}.Several(), "a pattern may name several")
	require.False(t, Config{Tables: tables[1:]}.Several())
}

func TestApplyTableColumns(t *testing.T) {
	cols := Columns{ID: "id", AggregateType: "aggregate_type", AggregateID: "aggregate_id", EventType: "event_type", Payload: "payload", Headers: "headers", CreatedAt: "created_at"}
	tables, err := ParseTables("public.events,shop.events,*.outbox", cols)
	require.NoError(t, err)
	require.NoError(t, ApplyTableColumns(tables, "shop.events: id=event_id, payload=body event-type=kind|type headers= ; *.outbox: created-at=ts"))
	require.Equal(t, cols, tables[0].Columns, "untouched")
	require.Equal(t, Columns{ID: "event_id", AggregateType: "aggregate_type", AggregateID: "aggregate_id", EventType: "kind,type", Payload: "body", CreatedAt: "created_at"}, tables[1].Columns)
	require.Equal(t, "ts", tables[2].Columns.CreatedAt)

	for setting, want := range map[string]string{
		"shop.events id=x":     `is not <table>: <column>=<name>`,
		"other.events: id=x":   `"other.events" is not one of the tables of --table`,
		"events: ident=x":      `"ident=x" in the entry for public.events is not <column>=<name>`,
		"shop.events: payload": `"payload" in the entry for shop.events`,
	} {
		require.ErrorContains(t, ApplyTableColumns(tables, setting), want, setting)
	}
}

func TestEventIDs(t *testing.T) {
	require.Equal(t, "7", Config{}.eventID("shop", "events", "7"))
	qualified := Config{QualifiedIDs: true}
	require.Equal(t, "shop.events/7", qualified.eventID("shop", "events", "7"))
	require.Equal(t, "message/7", qualified.eventID("", "", "7"))
}

// TestDecoderSeveralTables: rows of every configured table are events, each
// mapped by its table's columns and named by its table; with QualifiedIDs
// their ids are qualified; other tables are not events.
func TestDecoderSeveralTables(t *testing.T) {
	tables, err := ParseTables("shop.events,tenant_*.outbox", testColumns)
	require.NoError(t, err)
	require.NoError(t, ApplyTableColumns(tables, "shop.events: id=event_id"))
	d := newDecoder(Config{Tables: tables, Columns: testColumns, QualifiedIDs: true})
	shopColumns := []string{"event_id", "aggregate_type", "aggregate_id", "event_type", "payload", "headers", "created_at"}
	outboxColumns := []string{"id", "aggregate_type", "aggregate_id", "event_type", "payload", "headers", "created_at"}
	for id, rel := range map[uint32]struct {
		schema, name string
		columns      []string
	}{
		1: {"shop", "events", shopColumns},
		2: {"tenant_7", "outbox", outboxColumns},
		3: {"public", "outbox", outboxColumns},
	} {
		_, err := d.decode(encRelation(id, rel.schema, rel.name, 'd', relCols(rel.columns...)))
		require.NoError(t, err)
	}
	values := []tupleCol{txt("42"), txt("order"), txt("o-1"), txt("created"), txt(`{}`), txt(`{}`), txt("2026-12-01 00:00:00+00")}
	ch, err := d.decode(encInsert(1, values...))
	require.NoError(t, err)
	require.Equal(t, changeEvent, ch.kind)
	require.Equal(t, "shop.events/42", ch.event.ID)
	require.Equal(t, "42", ch.event.RowID)
	require.Equal(t, "shop", ch.event.Schema)
	ch, err = d.decode(encInsert(2, values...))
	require.NoError(t, err)
	require.Equal(t, "tenant_7.outbox/42", ch.event.ID)
	require.Equal(t, "outbox", ch.event.Table)
	ch, err = d.decode(encInsert(3, values...))
	require.NoError(t, err)
	require.Equal(t, changeForeignInsert, ch.kind, "public.outbox matches no table setting")

	// A table a pattern matches that lacks a mapped column is refused.
	_, err = d.decode(encRelation(4, "tenant_8", "outbox", 'd', relCols("id", "payload")))
	require.ErrorIs(t, err, ErrConfig)
	require.ErrorContains(t, err, "outbox table tenant_8.outbox has no column")
	require.ErrorContains(t, err, "--table-columns")
}

// relCols are text columns of a Relation message with these names.
func relCols(names ...string) []relCol {
	cols := make([]relCol, len(names))
	for i, name := range names {
		cols[i] = relCol{name: name, oid: 25, typmod: -1}
	}
	return cols
}

// TestIdsOf: a qualified id selects a row of its table only; a plain id is
// looked up in each table whose id type can hold it.
func TestIdsOf(t *testing.T) {
	tables, err := ParseTables("tenant_a.outbox,tenant_u.outbox,shop.events", Columns{})
	require.NoError(t, err)
	uuid := "0b7a8f4e-5a42-4c38-9f0e-7d0f6f1d2c11"
	requested := []string{"42", uuid, "tenant_a.outbox/7", "tenant_u.outbox/" + uuid, "shop.events/x", "not-a-number"}
	ids, wanted := idsOf(tables[0], "bigint", tables, requested)
	require.Equal(t, []string{"42", "7"}, ids)
	require.Equal(t, []string{"42", "tenant_a.outbox/7"}, wanted)
	ids, _ = idsOf(tables[1], "uuid", tables, requested)
	require.Equal(t, []string{uuid, uuid}, ids)
	ids, _ = idsOf(tables[2], "text", tables, requested)
	require.Equal(t, []string{"42", uuid, "x", "not-a-number"}, ids)
	require.True(t, idFits("numeric(20,0)", "12"))
	require.False(t, idFits("integer", "1.5"))
	require.True(t, idFits("uuid", "{0B7A8F4E5A424C389F0E7D0F6F1D2C11}"))
}
