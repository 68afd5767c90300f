package cdc

import (
	"fmt"
	"time"

	"github.com/jackc/pglogrepl"
)

// replayVerdict says what to do with a message the stream sent.
type replayVerdict int

const (
	// replayEmit: new to the relay; hand it on.
	replayEmit replayVerdict = iota
	// replaySkip: sent again after a reconnect and already handed on; drop it.
	replaySkip
)

func (v replayVerdict) String() string {
	if v == replayEmit {
		return "emit"
	}
	return "skip"
}

// openTxn is a transaction whose Begin has been read and whose Commit has not.
type openTxn struct {
	entry      *txnEntry
	commitLSN  pglogrepl.LSN
	commitTime time.Time
	xid        uint32
	next       uint32 // index of the next row in this session's copy
	forwarded  uint32 // rows handed on so far, over all sessions
}

// replayFilter decides, across reconnects, which transactions and rows the
// stream sends again were already handed on. After a reconnect PostgreSQL
// resumes from the slot's confirmed position, which lags what the relay has
// read: it sends again whole transactions that were handed on in full
// (their commit LSN is at most the last one committed here: skip them), and
// the transaction that was open when the session ended, from its Begin
// (skip its rows up to those already handed on). It is the one place that
// rule lives; the reader calls it for every Begin, row and Commit, in stream
// order, from one goroutine.
type replayFilter struct {
	// open is the transaction begun and not committed; it survives
	// reconnects.
	open *openTxn
	// lastCommit is the commit LSN of the last transaction handed on in
	// full.
	lastCommit pglogrepl.LSN
	// skipping is set inside a transaction sent again and already handed on
	// in full; it ends with its Commit or the session.
	skipping bool
	// lastForwarded is the commit LSN of the last transaction committed
	// with rows handed on.
	lastForwarded pglogrepl.LSN
}

// Begin reads a transaction's Begin. For a transaction not seen before it
// calls open to get its tracker entry. It fails when another transaction is
// still open: the stream is not what the filter knows.
func (f *replayFilter) Begin(b beginMessage, open func() *txnEntry) (replayVerdict, error) {
	if b.finalLSN <= f.lastCommit {
		f.skipping = true
		return replaySkip, nil
	}
	f.skipping = false
	if f.open != nil {
		if f.open.commitLSN != b.finalLSN {
			return replaySkip, fmt.Errorf("replication stream: transaction %d committing at %s began while %d committing at %s was still open",
				b.xid, b.finalLSN, f.open.xid, f.open.commitLSN)
		}
		// The transaction cut short by the reconnect, from its start.
		f.open.next = 0
		return replayEmit, nil
	}
	f.open = &openTxn{entry: open(), commitLSN: b.finalLSN, commitTime: b.commitTime, xid: b.xid}
	return replayEmit, nil
}

// Row reads a row of the open transaction and returns its index there. A
// row to emit must be confirmed with Forwarded once it was handed on; if
// handing it on failed, the next session sends it again.
func (f *replayFilter) Row(lsn pglogrepl.LSN) (replayVerdict, *openTxn, uint32, error) {
	if f.skipping {
		return replaySkip, nil, 0, nil
	}
	txn := f.open
	if txn == nil {
		return replaySkip, nil, 0, fmt.Errorf("replication stream: insert at %s outside a transaction", lsn)
	}
	index := txn.next
	txn.next++
	if index < txn.forwarded {
		return replaySkip, txn, index, nil
	}
	return replayEmit, txn, index, nil
}

// Forwarded records that the row Row last returned to emit was handed on.
func (f *replayFilter) Forwarded() { f.open.forwarded++ }

// Commit reads the open transaction's Commit. A transaction to emit is
// returned for the caller to commit in the tracker; it is closed here.
func (f *replayFilter) Commit(lsn pglogrepl.LSN) (replayVerdict, *openTxn, error) {
	if f.skipping {
		f.skipping = false
		return replaySkip, nil, nil
	}
	txn := f.open
	if txn == nil {
		return replaySkip, nil, fmt.Errorf("replication stream: commit at %s outside a transaction", lsn)
	}
	f.lastCommit = txn.commitLSN
	if txn.forwarded > 0 {
		f.lastForwarded = txn.commitLSN
	}
	f.open = nil
	return replayEmit, txn, nil
}

// SessionStarted is called when a replication session starts: a
// transaction being skipped ended with the last session; an open one is
// sent again from its Begin.
func (f *replayFilter) SessionStarted() { f.skipping = false }

// HighWater returns the commit LSN of the last transaction whose rows were
// handed on, in full or in part (0: none). Transactions without outbox rows
// do not count: nothing of them reaches the stream.
func (f *replayFilter) HighWater() pglogrepl.LSN {
	if f.open != nil && f.open.forwarded > 0 {
		return max(f.lastForwarded, f.open.commitLSN)
	}
	return f.lastForwarded
}

// Idle reports whether no transaction is open or being skipped: only then
// does the server's WAL end hide no unsent event.
func (f *replayFilter) Idle() bool { return f.open == nil && !f.skipping }

// Reset forgets everything, for a stream whose positions no longer mean
// what they meant (a timeline change after a failover, say): every
// transaction sent from now on is new. It returns the transaction that was
// open, whose tracker entry the caller must deal with, or nil.
func (f *replayFilter) Reset(reason string) *openTxn {
	_ = reason // the caller logs it; kept in the signature so every reset says why
	open := f.open
	*f = replayFilter{}
	return open
}
