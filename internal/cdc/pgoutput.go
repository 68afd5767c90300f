package cdc

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pglogrepl"
)

// errTruncated marks a pgoutput message shorter than its own fields say.
var errTruncated = errors.New("truncated message")

// messageKind is the first byte of a pgoutput message.
type messageKind byte

const (
	kindBegin    messageKind = 'B'
	kindCommit   messageKind = 'C'
	kindOrigin   messageKind = 'O'
	kindRelation messageKind = 'R'
	kindType     messageKind = 'Y'
	kindInsert   messageKind = 'I'
	kindUpdate   messageKind = 'U'
	kindDelete   messageKind = 'D'
	kindTruncate messageKind = 'T'
	kindMessage  messageKind = 'M'
)

// pgEpoch is where pgoutput timestamps (microseconds) count from.
var pgEpoch = time.Date(2000, 1, 1, 0, 0, 0, 0, time.UTC)

// beginMessage is pgoutput's Begin.
type beginMessage struct {
	finalLSN   pglogrepl.LSN // the commit LSN of the transaction
	commitTime time.Time
	xid        uint32
}

// commitMessage is pgoutput's Commit.
type commitMessage struct {
	commitLSN  pglogrepl.LSN
	endLSN     pglogrepl.LSN
	commitTime time.Time
}

// relationColumn is one column of a Relation message.
type relationColumn struct {
	name    string
	typeOID uint32
}

// relationMessage is pgoutput's Relation.
type relationMessage struct {
	id        uint32
	namespace string
	name      string
	columns   []relationColumn
}

// tupleValue is one column of a tuple. value aliases the message buffer.
type tupleValue struct {
	kind  byte // 'n' null, 'u' unchanged TOAST, 't' text, 'b' binary
	value []byte
}

// insertMessage is pgoutput's Insert. values alias the message buffer and are
// valid only until the next message is received.
type insertMessage struct {
	relationID uint32
	values     []tupleValue
}

// logicalMessage is pgoutput's Message: what pg_logical_emit_message wrote,
// sent with the messages option (PostgreSQL 14+). content aliases the
// message buffer.
type logicalMessage struct {
	transactional bool
	lsn           pglogrepl.LSN
	prefix        string
	content       []byte
}

// parser reads pgoutput fields with bounds checks: pgoutput messages come off
// the network, and a short or corrupt one must give an error, never a panic.
type parser struct {
	buf []byte
	err error
}

func (p *parser) take(n int) []byte {
	if p.err != nil {
		return nil
	}
	if n < 0 || len(p.buf) < n {
		p.err = errTruncated
		return nil
	}
	b := p.buf[:n]
	p.buf = p.buf[n:]
	return b
}

func (p *parser) uint8() byte {
	b := p.take(1)
	if b == nil {
		return 0
	}
	return b[0]
}

func (p *parser) uint16() uint16 {
	b := p.take(2)
	if b == nil {
		return 0
	}
	return binary.BigEndian.Uint16(b)
}

func (p *parser) uint32() uint32 {
	b := p.take(4)
	if b == nil {
		return 0
	}
	return binary.BigEndian.Uint32(b)
}

func (p *parser) uint64() uint64 {
	b := p.take(8)
	if b == nil {
		return 0
	}
	return binary.BigEndian.Uint64(b)
}

func (p *parser) lsn() pglogrepl.LSN { return pglogrepl.LSN(p.uint64()) }

func (p *parser) time() time.Time {
	return pgEpoch.Add(time.Duration(int64(p.uint64())) * time.Microsecond)
}

// cstring reads a NUL-terminated string.
func (p *parser) cstring() string {
	if p.err != nil {
		return ""
	}
	i := bytes.IndexByte(p.buf, 0)
	if i < 0 {
		p.err = errTruncated
		return ""
	}
	s := string(p.buf[:i])
	p.buf = p.buf[i+1:]
	return s
}

func decodeBegin(data []byte) (beginMessage, error) {
	p := parser{buf: data}
	m := beginMessage{finalLSN: p.lsn(), commitTime: p.time(), xid: p.uint32()}
	return m, p.done("begin")
}

func decodeCommit(data []byte) (commitMessage, error) {
	p := parser{buf: data}
	p.uint8() // flags, unused
	m := commitMessage{commitLSN: p.lsn(), endLSN: p.lsn(), commitTime: p.time()}
	return m, p.done("commit")
}

func decodeRelation(data []byte) (relationMessage, error) {
	p := parser{buf: data}
	m := relationMessage{id: p.uint32(), namespace: p.cstring(), name: p.cstring()}
	p.uint8() // replica identity
	n := int(p.uint16())
	if p.err == nil && n > len(p.buf)/10 {
		// Each column takes at least 10 bytes; refusing early keeps a
		// corrupt count from allocating a huge slice.
		p.err = errTruncated
	}
	if p.err == nil {
		m.columns = make([]relationColumn, n)
	}
	for i := 0; i < n && p.err == nil; i++ {
		p.uint8() // flags
		m.columns[i].name = p.cstring()
		m.columns[i].typeOID = p.uint32()
		p.uint32() // type modifier
	}
	return m, p.done("relation")
}

// decodeInsert decodes an Insert into m, reusing m.values' storage.
func decodeInsert(data []byte, m *insertMessage) error {
	p := parser{buf: data}
	m.relationID = p.uint32()
	if tag := p.uint8(); p.err == nil && tag != 'N' {
		return fmt.Errorf("decode insert: tuple tag %q, want 'N'", tag)
	}
	n := int(p.uint16())
	if p.err == nil && n > len(p.buf) {
		p.err = errTruncated // each column takes at least one byte
	}
	m.values = m.values[:0]
	for i := 0; i < n && p.err == nil; i++ {
		v := tupleValue{kind: p.uint8()}
		switch v.kind {
		case 'n', 'u':
		case 't', 'b':
			size := p.uint32()
			if size > uint32(len(p.buf)) {
				p.err = errTruncated
				break
			}
			v.value = p.take(int(size))
		default:
			if p.err == nil {
				return fmt.Errorf("decode insert: column %d has unknown kind %q", i, v.kind)
			}
		}
		m.values = append(m.values, v)
	}
	return p.done("insert")
}

// decodeMessage decodes a Message of protocol 1: no transaction id, which
// only streamed transactions (protocol 2 with streaming) carry.
func decodeMessage(data []byte) (logicalMessage, error) {
	p := parser{buf: data}
	m := logicalMessage{transactional: p.uint8()&1 != 0, lsn: p.lsn(), prefix: p.cstring()}
	size := p.uint32()
	if p.err == nil && size > uint32(len(p.buf)) {
		p.err = errTruncated
	}
	m.content = p.take(int(size))
	return m, p.done("message")
}

// done reports a decoding error, naming the message, and rejects trailing
// bytes, which would mean the message was not what we think it is.
func (p *parser) done(what string) error {
	if p.err != nil {
		return fmt.Errorf("decode %s: %w", what, p.err)
	}
	if len(p.buf) != 0 {
		return fmt.Errorf("decode %s: %d unexpected trailing bytes", what, len(p.buf))
	}
	return nil
}
