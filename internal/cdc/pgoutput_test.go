package cdc

import (
	"encoding/binary"
	"errors"
	"math"
	"testing"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/stretchr/testify/require"
)

// The helpers below encode pgoutput (protocol version 1) messages by hand, as
// PostgreSQL's logicalrep_write_* functions do. Each returns the whole message,
// kind byte included, as decoder.decode receives it.

// wbuf appends big-endian pgoutput fields.
type wbuf []byte

func (w wbuf) u8(v byte) wbuf      { return append(w, v) }
func (w wbuf) u16(v uint16) wbuf   { return binary.BigEndian.AppendUint16(w, v) }
func (w wbuf) u32(v uint32) wbuf   { return binary.BigEndian.AppendUint32(w, v) }
func (w wbuf) u64(v uint64) wbuf   { return binary.BigEndian.AppendUint64(w, v) }
func (w wbuf) i32(v int32) wbuf    { return w.u32(uint32(v)) }
func (w wbuf) i64(v int64) wbuf    { return w.u64(uint64(v)) }
func (w wbuf) cstr(s string) wbuf  { return append(append(w, s...), 0) }
func (w wbuf) bytes(b []byte) wbuf { return append(w, b...) }

// pgMicros is t as pgoutput sends it: microseconds since 2000-01-01 UTC.
func pgMicros(t time.Time) int64 { return t.Sub(pgEpoch).Microseconds() }

func encBegin(finalLSN pglogrepl.LSN, commitTime time.Time, xid uint32) []byte {
	return wbuf{'B'}.u64(uint64(finalLSN)).i64(pgMicros(commitTime)).u32(xid)
}

func encCommit(flags byte, commitLSN, endLSN pglogrepl.LSN, commitTime time.Time) []byte {
	return wbuf{'C'}.u8(flags).u64(uint64(commitLSN)).u64(uint64(endLSN)).i64(pgMicros(commitTime))
}

// relCol is one column of a Relation message.
type relCol struct {
	flags  byte // 1 = part of the replica identity key
	name   string
	oid    uint32
	typmod int32
}

func encRelation(relid uint32, namespace, name string, replicaIdentity byte, cols []relCol) []byte {
	w := wbuf{'R'}.u32(relid).cstr(namespace).cstr(name).u8(replicaIdentity).u16(uint16(len(cols)))
	for _, c := range cols {
		w = w.u8(c.flags).cstr(c.name).u32(c.oid).i32(c.typmod)
	}
	return w
}

// tupleCol is one column of a TupleData: kind 'n', 'u', 't' or 'b'.
type tupleCol struct {
	kind  byte
	value string
}

func txt(s string) tupleCol { return tupleCol{kind: 't', value: s} }
func bin(s string) tupleCol { return tupleCol{kind: 'b', value: s} }

var (
	null      = tupleCol{kind: 'n'}
	unchanged = tupleCol{kind: 'u'}
)

func encTuple(w wbuf, cols []tupleCol) wbuf {
	w = w.u16(uint16(len(cols)))
	for _, c := range cols {
		w = w.u8(c.kind)
		if c.kind == 't' || c.kind == 'b' {
			w = w.u32(uint32(len(c.value))).bytes([]byte(c.value))
		}
	}
	return w
}

func encInsert(relid uint32, cols ...tupleCol) []byte {
	return encTuple(wbuf{'I'}.u32(relid).u8('N'), cols)
}

func encUpdate(relid uint32, cols ...tupleCol) []byte {
	return encTuple(wbuf{'U'}.u32(relid).u8('N'), cols)
}

func encDelete(relid uint32, key ...tupleCol) []byte {
	return encTuple(wbuf{'D'}.u32(relid).u8('K'), key)
}

func encTruncate(options byte, relids ...uint32) []byte {
	w := wbuf{'T'}.u32(uint32(len(relids))).u8(options)
	for _, id := range relids {
		w = w.u32(id)
	}
	return w
}

func encType(oid uint32, namespace, name string) []byte {
	return wbuf{'Y'}.u32(oid).cstr(namespace).cstr(name)
}

func encOrigin(lsn pglogrepl.LSN, name string) []byte {
	return wbuf{'O'}.u64(uint64(lsn)).cstr(name)
}

func encLogicalMessage(transactional bool, lsn pglogrepl.LSN, prefix string, content []byte) []byte {
	var flags byte
	if transactional {
		flags = 1
	}
	return wbuf{'M'}.u8(flags).u64(uint64(lsn)).cstr(prefix).u32(uint32(len(content))).bytes(content)
}

// Type OIDs used in test relations.
const (
	oidText        = 25
	oidUUID        = 2950
	oidJSONB       = 3802
	oidTimestamptz = 1184
	oidInt8        = 20
)

func TestDecodeBegin(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name       string
		finalLSN   pglogrepl.LSN
		commitTime time.Time
		xid        uint32
	}{
		{"typical", 0x16_B374D848, time.Date(2026, 11, 26, 4, 13, 53, 123456000, time.UTC), 7771},
		{"epoch", 1, pgEpoch, 0},
		{"before epoch", 0x1000, time.Date(1999, 12, 31, 23, 59, 59, 999999000, time.UTC), 1},
		{"max values", pglogrepl.LSN(math.MaxUint64), time.Date(2200, 1, 1, 0, 0, 0, 1000, time.UTC), math.MaxUint32},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			msg := encBegin(tt.finalLSN, tt.commitTime, tt.xid)
			b, err := decodeBegin(msg[1:])
			require.NoError(t, err)
			require.Equal(t, tt.finalLSN, b.finalLSN)
			require.True(t, tt.commitTime.Equal(b.commitTime), "commit time %s, want %s", b.commitTime, tt.commitTime)
			require.Equal(t, time.UTC, b.commitTime.Location())
			require.Equal(t, tt.xid, b.xid)
		})
	}
}

func TestDecodeCommit(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name              string
		flags             byte
		commitLSN, endLSN pglogrepl.LSN
		commitTime        time.Time
	}{
		{"typical", 0, 0x16_B374D848, 0x16_B374D878, time.Date(2026, 11, 26, 4, 13, 53, 123456000, time.UTC)},
		{"flags ignored", 0xff, 100, 200, pgEpoch.Add(time.Microsecond)},
		{"before epoch", 0, 1, 2, time.Date(1970, 1, 1, 0, 0, 0, 0, time.UTC)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			msg := encCommit(tt.flags, tt.commitLSN, tt.endLSN, tt.commitTime)
			c, err := decodeCommit(msg[1:])
			require.NoError(t, err)
			require.Equal(t, tt.commitLSN, c.commitLSN)
			require.Equal(t, tt.endLSN, c.endLSN)
			require.True(t, tt.commitTime.Equal(c.commitTime), "commit time %s, want %s", c.commitTime, tt.commitTime)
		})
	}
}

func TestDecodeRelation(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name      string
		relid     uint32
		namespace string
		table     string
		cols      []relCol
	}{
		{"no columns", 1, "public", "empty", nil},
		{"outbox", 16384, "public", "outbox", outboxCols},
		{"empty names", 7, "", "", []relCol{{name: "", oid: oidText, typmod: -1}}},
		{"utf-8 names", 9, "schéma", "tablé", []relCol{{flags: 1, name: "colönne", oid: oidInt8, typmod: 42}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			msg := encRelation(tt.relid, tt.namespace, tt.table, 'd', tt.cols)
			r, err := decodeRelation(msg[1:])
			require.NoError(t, err)
			require.Equal(t, tt.relid, r.id)
			require.Equal(t, tt.namespace, r.namespace)
			require.Equal(t, tt.table, r.name)
			require.Len(t, r.columns, len(tt.cols))
			for i, c := range tt.cols {
				require.Equal(t, c.name, r.columns[i].name)
				require.Equal(t, c.oid, r.columns[i].typeOID)
			}
		})
	}
}

func TestDecodeRelationHugeColumnCount(t *testing.T) {
	t.Parallel()
	// A count of 65535 columns with only a few bytes behind it must be
	// refused as truncated before anything is allocated for it.
	msg := wbuf{}.u32(1).cstr("public").cstr("outbox").u8('d').u16(math.MaxUint16).u8(0).cstr("id").u32(oidText).i32(-1)
	_, err := decodeRelation(msg)
	require.ErrorIs(t, err, errTruncated)
}

func TestDecodeInsert(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		cols []tupleCol
	}{
		{"no columns", nil},
		{"text", []tupleCol{txt("a"), txt("bc")}},
		{"empty text", []tupleCol{txt("")}},
		{"all kinds", []tupleCol{null, unchanged, txt("x"), bin("\x00\x01")}},
		{"binary zero bytes", []tupleCol{txt("\x00\x00\x00")}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			msg := encInsert(42, tt.cols...)
			var m insertMessage
			require.NoError(t, decodeInsert(msg[1:], &m))
			require.Equal(t, uint32(42), m.relationID)
			require.Len(t, m.values, len(tt.cols))
			for i, c := range tt.cols {
				require.Equal(t, c.kind, m.values[i].kind, "column %d", i)
				if c.kind == 't' || c.kind == 'b' {
					require.NotNil(t, m.values[i].value, "column %d", i)
					require.Equal(t, c.value, string(m.values[i].value), "column %d", i)
				} else {
					require.Nil(t, m.values[i].value, "column %d", i)
				}
			}
		})
	}
}

func TestDecodeInsertReusesStorage(t *testing.T) {
	t.Parallel()
	var m insertMessage
	require.NoError(t, decodeInsert(encInsert(1, txt("a"), txt("b"), txt("c"))[1:], &m))
	require.Len(t, m.values, 3)
	require.NoError(t, decodeInsert(encInsert(2, null)[1:], &m))
	require.Equal(t, uint32(2), m.relationID)
	require.Equal(t, []tupleValue{{kind: 'n'}}, m.values)
}

func TestDecodeInsertErrors(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name      string
		body      []byte // without the kind byte
		truncated bool
		contains  string
	}{
		{"tuple tag K", wbuf{}.u32(1).u8('K').u16(0), false, "tuple tag"},
		{"tuple tag O", wbuf{}.u32(1).u8('O').u16(0), false, "tuple tag"},
		{"unknown column kind", wbuf{}.u32(1).u8('N').u16(1).u8('x'), false, "unknown kind"},
		{"column count beyond buffer", wbuf{}.u32(1).u8('N').u16(math.MaxUint16).u8('n'), true, ""},
		{"value length beyond buffer", wbuf{}.u32(1).u8('N').u16(1).u8('t').u32(math.MaxUint32).bytes([]byte("abc")), true, ""},
		{"value length one too many", wbuf{}.u32(1).u8('N').u16(1).u8('t').u32(4).bytes([]byte("abc")), true, ""},
		{"binary length beyond buffer", wbuf{}.u32(1).u8('N').u16(1).u8('b').u32(1 << 31), true, ""},
		{"trailing byte", wbuf{}.u32(1).u8('N').u16(1).u8('n').u8(0), false, "trailing"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			var m insertMessage
			err := decodeInsert(tt.body, &m)
			require.Error(t, err)
			if tt.truncated {
				require.ErrorIs(t, err, errTruncated)
			}
			if tt.contains != "" {
				require.ErrorContains(t, err, tt.contains)
			}
		})
	}
}

func TestParserCString(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		buf  []byte
		want []string
		err  error
	}{
		{"empty string", []byte{0}, []string{""}, nil},
		{"two strings", []byte("ab\x00c\x00"), []string{"ab", "c"}, nil},
		{"no terminator", []byte("abc"), []string{""}, errTruncated},
		{"empty buffer", nil, []string{""}, errTruncated},
		{"second unterminated", []byte("a\x00b"), []string{"a", ""}, errTruncated},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			p := parser{buf: tt.buf}
			var got []string
			for range tt.want {
				got = append(got, p.cstring())
			}
			require.Equal(t, tt.want, got)
			require.Equal(t, tt.err, p.err)
		})
	}
}

func TestParserStopsAtFirstError(t *testing.T) {
	t.Parallel()
	p := parser{buf: []byte{1, 2, 3}}
	require.Equal(t, uint32(0), p.uint32())
	require.ErrorIs(t, p.err, errTruncated)
	// Later reads fail too, even ones that would fit.
	require.Equal(t, byte(0), p.uint8())
	require.Nil(t, p.take(0))
	require.Equal(t, "", p.cstring())
	require.ErrorIs(t, p.done("x"), errTruncated)
	require.Nil(t, parserTake(-1))
}

func parserTake(n int) []byte {
	p := parser{buf: []byte{1}}
	return p.take(n)
}

// TestDecodeTrailingBytes: every parsed kind refuses bytes beyond its fields.
func TestDecodeTrailingBytes(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name   string
		decode func([]byte) error
		msg    []byte
	}{
		{"begin", func(b []byte) error { _, err := decodeBegin(b); return err }, encBegin(1, pgEpoch, 1)},
		{"commit", func(b []byte) error { _, err := decodeCommit(b); return err }, encCommit(0, 1, 2, pgEpoch)},
		{"relation", func(b []byte) error { _, err := decodeRelation(b); return err }, encRelation(1, "public", "outbox", 'd', outboxCols)},
		{"relation without columns", func(b []byte) error { _, err := decodeRelation(b); return err }, encRelation(1, "public", "outbox", 'd', nil)},
		{"insert", func(b []byte) error { var m insertMessage; return decodeInsert(b, &m) }, encInsert(1, txt("x"), null)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			require.NoError(t, tt.decode(tt.msg[1:]))
			for _, extra := range [][]byte{{0}, {0xff}, []byte("more bytes\x00")} {
				err := tt.decode(append(append([]byte(nil), tt.msg[1:]...), extra...))
				require.ErrorContains(t, err, "trailing bytes")
				require.False(t, errors.Is(err, errTruncated))
			}
		})
	}
}
