package cdc

import (
	"fmt"
	"time"

	"github.com/jackc/pglogrepl"
)

// Position identifies an event in commit order: the commit LSN of its
// transaction and its index among the transaction's outbox rows. Unlike a
// row's own WAL position it is unique (rows of one multi-row INSERT can share
// an LSN) and it orders events exactly as they must appear on the stream.
type Position struct {
	CommitLSN pglogrepl.LSN
	Index     uint32
}

// Less reports whether p comes before q in commit order.
func (p Position) Less(q Position) bool {
	if p.CommitLSN != q.CommitLSN {
		return p.CommitLSN < q.CommitLSN
	}
	return p.Index < q.Index
}

// IsZero reports whether p is the zero Position, which precedes every event.
func (p Position) IsZero() bool { return p == Position{} }

// String renders p as "16/B374D848#3".
func (p Position) String() string { return fmt.Sprintf("%s#%d", p.CommitLSN, p.Index) }

// Event is one committed outbox row. Its byte slices are owned by the event
// and never reused by the reader.
type Event struct {
	// ID identifies the event on the stream (its Nats-Msg-Id): the id
	// column's value, or with Config.QualifiedIDs "<schema>.<table>/<id>".
	ID string
	// RowID is the id column's value.
	RowID string
	// Schema and Table name the outbox table the row was inserted into (the
	// partitioned table for a partition's row); for a logical decoding
	// message, both are empty.
	Schema, Table string
	AggregateType string
	AggregateID   string
	EventType     string
	// Payload is the payload column exactly as PostgreSQL renders it as text.
	Payload []byte
	// Headers is the headers column as text (a JSON object), nil when NULL.
	Headers []byte
	// CreatedAt is the created_at column as PostgreSQL renders it; empty when
	// the column is not configured.
	CreatedAt string
	// Defect says why the row can never become a valid message (a NULL in a
	// required column, say); empty for a good row.
	Defect string
	// PayloadOmitted and HeadersOmitted, when not 0, are the sizes of the
	// payload and headers columns, left out when the row was read (Payload
	// or Headers is nil then): each was larger than any message the server
	// takes (Config.MaxRowBytes), so the row can never be published, and
	// holding it would only cost memory.
	PayloadOmitted, HeadersOmitted int

	CommitTime time.Time
	XID        uint32
	// LSN is the WAL position of the row's change.
	LSN      pglogrepl.LSN
	Position Position
	// TxnEnd is set on the last outbox row of its transaction when
	// Config.MarkTxnEnd asks for it (the reader then hands a row on only
	// once the next row or the transaction's commit arrived), so that a
	// consumer grouping rows by transaction (an atomic batch per
	// transaction) knows when one is complete.
	TxnEnd bool

	txn *txnEntry
	// size is what the event took from the reader's byte budget.
	size int64
}

// eventID is the ID of the event with id column value rowID from
// schema.table, or from a logical decoding message when both are empty
// (QualifiedIDs).
func (c Config) eventID(schema, table, rowID string) string {
	switch {
	case !c.QualifiedIDs:
		return rowID
	case schema == "" && table == "":
		return "message/" + rowID
	default:
		return schema + "." + table + "/" + rowID
	}
}
