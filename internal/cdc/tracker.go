package cdc

import (
	"errors"
	"sync"
	"time"

	"github.com/jackc/pglogrepl"
)

// Tracker decides which WAL position may be confirmed to PostgreSQL: the end
// of the last transaction whose every event JetStream has acknowledged, and
// nothing beyond it. Transactions are tracked in commit order; acks may arrive
// in any order. It is safe for concurrent use.
type Tracker struct {
	mu        sync.Mutex
	queue     []*txnEntry // open or unacknowledged transactions, commit order
	confirmed pglogrepl.LSN
	advanced  time.Time
	// With gated set, Confirmed never reports past verified: the WAL
	// position up to which the publication is known to have covered the
	// outbox (see publicationWatch).
	gated    bool
	verified pglogrepl.LSN
}

// txnEntry is one transaction in flight: pending counts its events read but
// not acknowledged, and endLSN is known once its commit has been read.
type txnEntry struct {
	commitTime time.Time
	endLSN     pglogrepl.LSN
	pending    int
	committed  bool
}

// NewTracker starts with start confirmed: the slot's confirmed_flush_lsn.
func NewTracker(start pglogrepl.LSN) *Tracker {
	return &Tracker{confirmed: start, advanced: time.Now()}
}

// Begin opens a transaction; events of it are added with Track and it is
// closed with Commit.
func (t *Tracker) Begin(commitTime time.Time) *txnEntry {
	t.mu.Lock()
	defer t.mu.Unlock()
	e := &txnEntry{commitTime: commitTime}
	t.queue = append(t.queue, e)
	return e
}

// Track marks one more event of txn as pending.
func (t *Tracker) Track(txn *txnEntry) {
	t.mu.Lock()
	txn.pending++
	t.mu.Unlock()
}

// Untrack takes back a Track of an event that was never handed on.
func (t *Tracker) Untrack(txn *txnEntry) {
	t.mu.Lock()
	defer t.mu.Unlock()
	txn.pending--
	t.advanceLocked()
}

// Commit records that txn ends at endLSN; once all its events (and those of
// every earlier transaction) are acknowledged, endLSN becomes confirmed.
//
// A transaction with nothing pending behind another one is folded into it:
// the earlier one's end moves to endLSN, which it may confirm once its own
// events are acknowledged, since nothing in between waits. So the queue
// holds at most one entry per transaction with events in flight, however
// many transactions without outbox rows (PostgreSQL 14 and older send
// every write transaction) pass behind a pending one.
func (t *Tracker) Commit(txn *txnEntry, endLSN pglogrepl.LSN) {
	t.mu.Lock()
	defer t.mu.Unlock()
	txn.endLSN = endLSN
	txn.committed = true
	if n := len(t.queue); n >= 2 && t.queue[n-1] == txn && txn.pending == 0 && t.queue[n-2].committed {
		t.queue[n-2].endLSN = endLSN
		t.queue[n-1] = nil
		t.queue = t.queue[:n-1]
	}
	t.advanceLocked()
}

// ErrAck marks an acknowledgement of an event that is not pending: a bug
// that would let the slot move past events not yet stored. The relay stops.
var ErrAck = errors.New("acknowledgement of an event that is not pending")

// Ack marks one event of txn as stored by JetStream. Calls may come in any
// order and from any goroutine. Acknowledging an event that is not pending
// (twice, say) changes nothing and returns an error wrapping ErrAck.
func (t *Tracker) Ack(txn *txnEntry) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if txn.pending <= 0 {
		return ErrAck
	}
	txn.pending--
	t.advanceLocked()
	return nil
}

// Idle confirms walEnd, the server's WAL end from a keepalive, when nothing is
// open or pending: then no committed outbox event can lie before walEnd
// unread, and confirming it stops an idle outbox from pinning WAL. It reports
// whether it did.
func (t *Tracker) Idle(walEnd pglogrepl.LSN) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	if len(t.queue) > 0 {
		return false
	}
	t.setConfirmedLocked(walEnd)
	return true
}

// Confirmed returns the position that may be reported to PostgreSQL as
// written, flushed and applied: the acknowledged prefix, and once Gate was
// called never past the last position passed to Verified.
func (t *Tracker) Confirmed() pglogrepl.LSN {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.outputLocked()
}

func (t *Tracker) outputLocked() pglogrepl.LSN {
	if t.gated {
		return min(t.confirmed, t.verified)
	}
	return t.confirmed
}

// Gate makes Confirmed stop at the positions passed to Verified from now on.
func (t *Tracker) Gate() {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.gated = true
}

// Verified records that WAL up to lsn was decoded with a publication that
// covers the outbox; it never moves back.
func (t *Tracker) Verified(lsn pglogrepl.LSN) {
	t.mu.Lock()
	defer t.mu.Unlock()
	before := t.outputLocked()
	t.verified = max(t.verified, lsn)
	if t.outputLocked() > before {
		t.advanced = time.Now()
	}
}

// LastAdvance returns when the position Confirmed reports last moved forward.
func (t *Tracker) LastAdvance() time.Time {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.advanced
}

// OldestPending returns the commit time of the oldest transaction with an
// event not yet acknowledged, and false when nothing is pending.
func (t *Tracker) OldestPending() (time.Time, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, e := range t.queue {
		if e.pending > 0 {
			return e.commitTime, true
		}
	}
	return time.Time{}, false
}

// Pending returns how many transactions are open or not fully acknowledged.
func (t *Tracker) Pending() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return len(t.queue)
}

func (t *Tracker) advanceLocked() {
	n := 0
	for n < len(t.queue) && t.queue[n].committed && t.queue[n].pending == 0 {
		t.setConfirmedLocked(t.queue[n].endLSN)
		n++
	}
	if n == 0 {
		return
	}
	for i := range n {
		t.queue[i] = nil
	}
	// Reslicing is O(1); append reallocates once the front is used up, so
	// memory stays proportional to what is in flight.
	t.queue = t.queue[n:]
}

func (t *Tracker) setConfirmedLocked(lsn pglogrepl.LSN) {
	if lsn > t.confirmed {
		before := t.outputLocked()
		t.confirmed = lsn
		if t.outputLocked() > before {
			t.advanced = time.Now()
		}
	}
}

// rebase sets the confirmed position to lsn, the slot's confirmed_flush_lsn
// on a server that switched timelines: positions confirmed before the switch
// may lie past where the new timeline began, and mean other WAL there. The
// publication is verified again from lsn on.
func (t *Tracker) rebase(lsn pglogrepl.LSN) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.confirmed = lsn
	t.verified = min(t.verified, lsn)
}

// abandon closes txn, a transaction that will never commit in the stream
// (the replay filter forgot it): it confirms nothing, and leaves the queue
// once its events handed on are acknowledged.
func (t *Tracker) abandon(txn *txnEntry) {
	t.mu.Lock()
	defer t.mu.Unlock()
	txn.committed = true
	txn.endLSN = 0
	t.advanceLocked()
}

// resume moves the confirmed position up to lsn, the slot's
// confirmed_flush_lsn read at the start of a session.
func (t *Tracker) resume(lsn pglogrepl.LSN) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if lsn > t.confirmed {
		t.confirmed = lsn
	}
	// The slot's own position was confirmed, so verified, before.
	t.verified = max(t.verified, lsn)
}
