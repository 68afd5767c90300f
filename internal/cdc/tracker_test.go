package cdc

import (
	"fmt"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/stretchr/testify/require"
)

var t0 = time.Date(2026, 11, 26, 4, 0, 0, 0, time.UTC)

func TestTrackerScript(t *testing.T) {
	t.Parallel()
	tr := NewTracker(100)
	require.Equal(t, pglogrepl.LSN(100), tr.Confirmed())
	require.Equal(t, 0, tr.Pending())

	// Transaction A: three events, acked out of order.
	a := tr.Begin(t0)
	tr.Track(a)
	tr.Track(a)
	tr.Track(a)
	require.NoError(t, tr.Ack(a)) // acks may come before the commit is read
	tr.Commit(a, 200)
	require.Equal(t, pglogrepl.LSN(100), tr.Confirmed(), "two events of A still pending")

	// Transaction B: one event, acked before A's last ones.
	b := tr.Begin(t0.Add(time.Second))
	tr.Track(b)
	tr.Commit(b, 300)
	require.NoError(t, tr.Ack(b))
	require.Equal(t, pglogrepl.LSN(100), tr.Confirmed(), "B is done but A before it is not")
	require.Equal(t, 2, tr.Pending())

	require.NoError(t, tr.Ack(a))
	require.Equal(t, pglogrepl.LSN(100), tr.Confirmed())
	require.NoError(t, tr.Ack(a))
	require.Equal(t, pglogrepl.LSN(300), tr.Confirmed(), "A and B are done: confirm the end of B")
	require.Equal(t, 0, tr.Pending())

	// Transaction C is open: nothing moves until its commit is read, even
	// with every event acknowledged.
	c := tr.Begin(t0.Add(2 * time.Second))
	tr.Track(c)
	require.NoError(t, tr.Ack(c))
	require.Equal(t, pglogrepl.LSN(300), tr.Confirmed())
	tr.Commit(c, 400)
	require.Equal(t, pglogrepl.LSN(400), tr.Confirmed())
}

func TestTrackerEmptyTransactions(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		run  func(t *testing.T, tr *Tracker)
	}{
		{"alone confirms at once", func(t *testing.T, tr *Tracker) {
			e := tr.Begin(t0)
			require.Equal(t, pglogrepl.LSN(10), tr.Confirmed(), "open, not yet confirmed")
			tr.Commit(e, 50)
			require.Equal(t, pglogrepl.LSN(50), tr.Confirmed())
			require.Equal(t, 0, tr.Pending())
		}},
		{"waits behind a pending transaction", func(t *testing.T, tr *Tracker) {
			a := tr.Begin(t0)
			tr.Track(a)
			tr.Commit(a, 50)
			b := tr.Begin(t0)
			tr.Commit(b, 60)
			require.Equal(t, pglogrepl.LSN(10), tr.Confirmed(), "the empty B must not pass A")
			require.Equal(t, 1, tr.Pending(), "B is folded into A")
			require.NoError(t, tr.Ack(a))
			require.Equal(t, pglogrepl.LSN(60), tr.Confirmed())
		}},
		{"waits behind an open transaction", func(t *testing.T, tr *Tracker) {
			// Not a pgoutput order (protocol 1 sends transactions
			// whole), but the tracker must still keep commit order.
			a := tr.Begin(t0)
			b := tr.Begin(t0)
			tr.Commit(b, 60)
			require.Equal(t, pglogrepl.LSN(10), tr.Confirmed())
			tr.Commit(a, 50)
			require.Equal(t, pglogrepl.LSN(60), tr.Confirmed())
		}},
		{"several in a row", func(t *testing.T, tr *Tracker) {
			for i := range 5 {
				e := tr.Begin(t0)
				tr.Commit(e, pglogrepl.LSN(20+i))
				require.Equal(t, pglogrepl.LSN(20+i), tr.Confirmed())
			}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			tt.run(t, NewTracker(10))
		})
	}
}

func TestTrackerIdle(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name      string
		run       func(tr *Tracker) bool // returns Idle's result
		want      bool
		confirmed pglogrepl.LSN
	}{
		{"empty queue confirms wal end", func(tr *Tracker) bool { return tr.Idle(500) }, true, 500},
		{"never backwards", func(tr *Tracker) bool { return tr.Idle(50) }, true, 100},
		{"equal", func(tr *Tracker) bool { return tr.Idle(100) }, true, 100},
		{"open transaction", func(tr *Tracker) bool {
			tr.Begin(t0)
			return tr.Idle(500)
		}, false, 100},
		{"pending event", func(tr *Tracker) bool {
			e := tr.Begin(t0)
			tr.Track(e)
			tr.Commit(e, 200)
			return tr.Idle(500)
		}, false, 100},
		{"after everything is acked", func(tr *Tracker) bool {
			e := tr.Begin(t0)
			tr.Track(e)
			tr.Commit(e, 200)
			require.NoError(t, tr.Ack(e))
			return tr.Idle(500)
		}, true, 500},
		{"after everything is acked, older wal end", func(tr *Tracker) bool {
			e := tr.Begin(t0)
			tr.Track(e)
			tr.Commit(e, 200)
			require.NoError(t, tr.Ack(e))
			return tr.Idle(150)
		}, true, 200},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			tr := NewTracker(100)
			require.Equal(t, tt.want, tt.run(tr))
			require.Equal(t, tt.confirmed, tr.Confirmed())
		})
	}
}

func TestTrackerOldestPending(t *testing.T) {
	t.Parallel()
	tr := NewTracker(0)
	_, ok := tr.OldestPending()
	require.False(t, ok)

	a := tr.Begin(t0)
	_, ok = tr.OldestPending()
	require.False(t, ok, "an open transaction without events has nothing pending")

	tr.Track(a)
	oldest, ok := tr.OldestPending()
	require.True(t, ok, "an event of an open transaction is pending")
	require.Equal(t, t0, oldest)
	tr.Commit(a, 10)

	b := tr.Begin(t0.Add(time.Minute))
	tr.Track(b)
	tr.Commit(b, 20)
	oldest, ok = tr.OldestPending()
	require.True(t, ok)
	require.Equal(t, t0, oldest)

	require.NoError(t, tr.Ack(a))
	oldest, ok = tr.OldestPending()
	require.True(t, ok)
	require.Equal(t, t0.Add(time.Minute), oldest)

	// B acked while an earlier transaction is still queued: nothing pending.
	c := tr.Begin(t0.Add(2 * time.Minute))
	d := tr.Begin(t0.Add(3 * time.Minute))
	tr.Track(d)
	require.NoError(t, tr.Ack(b))
	oldest, ok = tr.OldestPending()
	require.True(t, ok)
	require.Equal(t, t0.Add(3*time.Minute), oldest, "c is queued but has nothing pending")
	require.NoError(t, tr.Ack(d))
	_, ok = tr.OldestPending()
	require.False(t, ok)
	tr.Commit(c, 30)
	tr.Commit(d, 40)
	require.Equal(t, pglogrepl.LSN(40), tr.Confirmed())
}

func TestTrackerLastAdvance(t *testing.T) {
	t.Parallel()
	tr := NewTracker(100)
	start := tr.LastAdvance()
	require.False(t, start.IsZero())

	tr.Idle(50) // not an advance
	require.Equal(t, start, tr.LastAdvance())

	time.Sleep(2 * time.Millisecond)
	e := tr.Begin(t0)
	tr.Commit(e, 200)
	require.True(t, tr.LastAdvance().After(start))
}

func TestTrackerResume(t *testing.T) {
	t.Parallel()
	tr := NewTracker(0)
	tr.resume(500)
	require.Equal(t, pglogrepl.LSN(500), tr.Confirmed())
	tr.resume(300)
	require.Equal(t, pglogrepl.LSN(500), tr.Confirmed(), "resume never moves backwards")
	// A commit ending before the resumed position does not move it back.
	e := tr.Begin(t0)
	tr.Commit(e, 400)
	require.Equal(t, pglogrepl.LSN(500), tr.Confirmed())
}

func TestTrackerAckNotPendingFails(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name  string
		setup func(tr *Tracker) *txnEntry
	}{
		{"never tracked", func(tr *Tracker) *txnEntry { return tr.Begin(t0) }},
		{"never tracked, committed", func(tr *Tracker) *txnEntry {
			e := tr.Begin(t0)
			tr.Commit(e, 10)
			return e
		}},
		{"acked twice", func(tr *Tracker) *txnEntry {
			e := tr.Begin(t0)
			tr.Track(e)
			require.NoError(t, tr.Ack(e))
			return e
		}},
		{"acked twice after confirm", func(tr *Tracker) *txnEntry {
			e := tr.Begin(t0)
			tr.Track(e)
			tr.Commit(e, 10)
			require.NoError(t, tr.Ack(e))
			return e
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			tr := NewTracker(1)
			e := tt.setup(tr)
			before := tr.Confirmed()
			require.ErrorIs(t, tr.Ack(e), ErrAck)
			// Nothing changed, and the mutex was released.
			require.Equal(t, before, tr.Confirmed())
		})
	}
}

func TestTrackerConcurrentAcks(t *testing.T) {
	t.Parallel()
	tr := NewTracker(0)
	const txns, perTxn = 50, 20
	var entries []*txnEntry
	for i := range txns {
		e := tr.Begin(t0)
		for range perTxn {
			tr.Track(e)
		}
		tr.Commit(e, pglogrepl.LSN(100*(i+1)))
		entries = append(entries, e)
	}
	var wg sync.WaitGroup
	for _, e := range entries {
		for range perTxn {
			wg.Go(func() { _ = tr.Ack(e) }) // checked by the confirmed position below
		}
	}
	wg.Wait()
	require.Equal(t, pglogrepl.LSN(100*txns), tr.Confirmed())
	require.Equal(t, 0, tr.Pending())
}

// TestTrackerRandomSchedules drives the tracker the way the reader and the
// publisher do — transactions read whole and in commit order, acks arriving
// in any order in between — and checks after every step that the confirmed
// position never passes a transaction with an unacknowledged event or an
// unread commit, and that it reaches the end once everything is acked.
func TestTrackerRandomSchedules(t *testing.T) {
	t.Parallel()
	for seed := range uint64(300) {
		t.Run(fmt.Sprint(seed), func(t *testing.T) {
			t.Parallel()
			runTrackerSchedule(t, rand.New(rand.NewPCG(seed, 0x5eed)))
		})
	}
}

// modelTxn is the test's own view of a transaction.
type modelTxn struct {
	entry     *txnEntry
	endLSN    pglogrepl.LSN
	events    int // in the transaction
	read      int // events read (tracked) so far
	acked     int
	committed bool // commit read
}

func (m *modelTxn) done() bool { return m.committed && m.acked == m.events }

func runTrackerSchedule(t *testing.T, rng *rand.Rand) {
	const start = pglogrepl.LSN(1000)
	tr := NewTracker(start)
	numTxns := 1 + rng.IntN(40)

	// Plan the stream: strictly increasing end LSNs, 0..5 events each.
	txns := make([]*modelTxn, numTxns)
	lsn := start
	for i := range txns {
		lsn += pglogrepl.LSN(1 + rng.IntN(100))
		txns[i] = &modelTxn{endLSN: lsn, events: rng.IntN(6)}
	}

	var (
		next     int // transaction being read or to be read
		unacked  []*modelTxn
		idleHigh = start // highest position Idle was allowed to confirm
		steps    []string
	)
	check := func() {
		t.Helper()
		c := tr.Confirmed()
		// Safety: never at or past the end of a transaction not done.
		for i, m := range txns {
			if m.entry != nil && !m.done() && c >= m.endLSN {
				t.Fatalf("confirmed %s, but transaction %d ending at %s is not done (%d/%d acked, committed %v)\nsteps: %v",
					c, i, m.endLSN, m.acked, m.events, m.committed, steps)
			}
		}
		// Exactness: the end of the longest done prefix, or what Idle set.
		want := start
		for _, m := range txns {
			if m.entry == nil || !m.done() {
				break
			}
			want = m.endLSN
		}
		want = max(want, idleHigh)
		if c != want {
			t.Fatalf("confirmed %s, want %s\nsteps: %v", c, want, steps)
		}
		// OldestPending agrees with the model.
		var oldest *modelTxn
		for _, m := range txns {
			if m.entry != nil && m.read > m.acked {
				oldest = m
				break
			}
		}
		got, ok := tr.OldestPending()
		if ok != (oldest != nil) {
			t.Fatalf("OldestPending ok=%v, model says %v\nsteps: %v", ok, oldest != nil, steps)
		}
		if ok && !got.Equal(commitTimeOf(oldest)) {
			t.Fatalf("OldestPending %s, want %s", got, commitTimeOf(oldest))
		}
	}

	for next < len(txns) || len(unacked) > 0 {
		switch r := rng.IntN(10); {
		case r < 5 && next < len(txns):
			// Read the next message of the stream.
			m := txns[next]
			switch {
			case m.entry == nil:
				m.entry = tr.Begin(commitTimeOf(m))
				steps = append(steps, fmt.Sprintf("B%d", next))
			case m.read < m.events:
				tr.Track(m.entry)
				m.read++
				unacked = append(unacked, m)
				steps = append(steps, fmt.Sprintf("E%d", next))
			default:
				tr.Commit(m.entry, m.endLSN)
				m.committed = true
				steps = append(steps, fmt.Sprintf("C%d", next))
				next++
			}
		case r < 9 && len(unacked) > 0:
			// Ack a random event in flight.
			i := rng.IntN(len(unacked))
			m := unacked[i]
			unacked[i] = unacked[len(unacked)-1]
			unacked = unacked[:len(unacked)-1]
			require.NoError(t, tr.Ack(m.entry))
			m.acked++
			steps = append(steps, fmt.Sprintf("A%d", indexOf(txns, m)))
		case r == 9:
			// A keepalive, only between transactions as the reader does.
			if next < len(txns) && txns[next].entry != nil {
				continue
			}
			walEnd := lsn + pglogrepl.LSN(rng.IntN(50)) // at most a little beyond the stream
			if next < len(txns) {
				walEnd = txns[next].endLSN - 1 - pglogrepl.LSN(rng.IntN(2))
			}
			empty := true // every transaction begun is done
			for _, m := range txns {
				if m.entry != nil && !m.done() {
					empty = false
				}
			}
			ok := tr.Idle(walEnd)
			if ok != empty {
				t.Fatalf("Idle returned %v with an empty queue %v\nsteps: %v", ok, empty, steps)
			}
			if ok {
				idleHigh = max(idleHigh, walEnd)
			}
			steps = append(steps, fmt.Sprintf("K%s=%v", walEnd, ok))
		}
		check()
	}
	require.GreaterOrEqual(t, tr.Confirmed(), txns[len(txns)-1].endLSN, "everything acked: all confirmed")
	require.Equal(t, 0, tr.Pending())
	_, ok := tr.OldestPending()
	require.False(t, ok)
}

func commitTimeOf(m *modelTxn) time.Time { return t0.Add(time.Duration(m.endLSN) * time.Millisecond) }

func indexOf(txns []*modelTxn, m *modelTxn) int {
	for i, x := range txns {
		if x == m {
			return i
		}
	}
	return -1
}

// TestTrackerManyEmptyTransactionsBehindAPendingOne: PostgreSQL 14 and older
// send BEGIN/COMMIT for every write transaction; a million of them behind
// one pending event (NATS down) keep the queue at one entry, and the ack
// confirms past all of them.
func TestTrackerManyEmptyTransactionsBehindAPendingOne(t *testing.T) {
	t.Parallel()
	tr := NewTracker(10)
	a := tr.Begin(t0)
	tr.Track(a)
	tr.Commit(a, 20)
	for i := range 1_000_000 {
		e := tr.Begin(t0)
		tr.Commit(e, pglogrepl.LSN(30+i))
	}
	require.Equal(t, 1, tr.Pending())
	require.Equal(t, pglogrepl.LSN(10), tr.Confirmed())
	// One more with an event, then empty ones behind both.
	b := tr.Begin(t0)
	tr.Track(b)
	tr.Commit(b, 2_000_000)
	for i := range 1000 {
		e := tr.Begin(t0)
		tr.Commit(e, pglogrepl.LSN(2_000_001+i))
	}
	require.Equal(t, 2, tr.Pending())
	require.NoError(t, tr.Ack(b))
	require.Equal(t, pglogrepl.LSN(10), tr.Confirmed(), "A still holds everything")
	require.NoError(t, tr.Ack(a))
	require.Equal(t, pglogrepl.LSN(2_001_000), tr.Confirmed())
	require.Equal(t, 0, tr.Pending())
}

// TestTrackerUntrack: an event tracked but never handed on (the session
// ended while it waited) is taken back, so it does not hold the position.
func TestTrackerUntrack(t *testing.T) {
	t.Parallel()
	tr := NewTracker(10)
	a := tr.Begin(t0)
	tr.Track(a)
	tr.Track(a)
	require.NoError(t, tr.Ack(a))
	tr.Untrack(a)
	require.Equal(t, pglogrepl.LSN(10), tr.Confirmed(), "not committed yet")
	tr.Commit(a, 40)
	require.Equal(t, pglogrepl.LSN(40), tr.Confirmed())
}
