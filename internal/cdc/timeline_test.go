package cdc

import (
	"testing"

	"github.com/jackc/pglogrepl"
	"github.com/stretchr/testify/require"
)

// TestCheckHistory is the rule's table: which servers hold what the relay
// published, and which diverged from it.
func TestCheckHistory(t *testing.T) {
	t.Parallel()
	tl3 := map[int32]pglogrepl.LSN{1: 0x3000000, 2: 0x5000000} // timeline 1 ended at 0/3000000, 2 at 0/5000000
	tests := []struct {
		name string
		pub  Published
		wal  ServerWAL
		why  string // "" when it holds
	}{
		{name: "nothing published", pub: Published{}, wal: ServerWAL{Timeline: 2, Flush: 0x100, Ended: map[int32]pglogrepl.LSN{1: 0x80}}},
		{name: "same timeline, behind the WAL end", pub: Published{CommitLSN: 0x2000, Timeline: 1}, wal: ServerWAL{Timeline: 1, Flush: 0x3000}},
		{name: "timeline unknown (recorded by no earlier version), behind the WAL end", pub: Published{CommitLSN: 0x2000}, wal: ServerWAL{Timeline: 3, Flush: 0x6000000, Ended: tl3}},
		{
			name: "same timeline, the WAL ends before it (a restored copy)", pub: Published{CommitLSN: 0x3000, Timeline: 1},
			wal: ServerWAL{Timeline: 1, Flush: 0x3000}, why: "the server's WAL (timeline 1) ends at 0/3000, before that transaction",
		},
		{
			name: "timeline unknown, the WAL ends before it", pub: Published{CommitLSN: 0x6000001},
			wal: ServerWAL{Timeline: 3, Flush: 0x6000000, Ended: tl3}, why: "ends at 0/6000000",
		},
		{name: "an ancestor timeline, before its end", pub: Published{CommitLSN: 0x2FFFF00, Timeline: 1}, wal: ServerWAL{Timeline: 3, Flush: 0x6000000, Ended: tl3}},
		{name: "the parent timeline, before its end", pub: Published{CommitLSN: 0x4FFFF00, Timeline: 2}, wal: ServerWAL{Timeline: 3, Flush: 0x6000000, Ended: tl3}},
		{
			name: "the parent timeline, at its end", pub: Published{CommitLSN: 0x5000000, Timeline: 2},
			wal: ServerWAL{Timeline: 3, Flush: 0x6000000, Ended: tl3}, why: "the server's history left timeline 2 at 0/5000000",
		},
		{
			name: "an ancestor timeline, past its end although behind the WAL end", pub: Published{CommitLSN: 0x4000000, Timeline: 1},
			wal: ServerWAL{Timeline: 3, Flush: 0x6000000, Ended: tl3}, why: "the server's history left timeline 1 at 0/3000000",
		},
		{
			name: "a timeline not in the history", pub: Published{CommitLSN: 0x100, Timeline: 4},
			wal: ServerWAL{Timeline: 5, Flush: 0x6000000, Ended: map[int32]pglogrepl.LSN{1: 0x3000000, 2: 0x5000000, 3: 0x5800000}},
			why: "timeline 4 the relay read it from is not in the history of the server's timeline 5",
		},
		{
			name: "an older timeline than the relay read from (the old primary)", pub: Published{CommitLSN: 0x100, Timeline: 2},
			wal: ServerWAL{Timeline: 1, Flush: 0x6000000}, why: "the server is on timeline 1, older than timeline 2",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			err := CheckHistory(tt.pub, tt.wal)
			if tt.why == "" {
				require.NoError(t, err)
				return
			}
			require.Error(t, err)
			require.ErrorIs(t, err, ErrDiverged)
			require.ErrorIs(t, err, ErrSlot, "the reader stops on it")
			require.Contains(t, err.Error(), tt.why)
			require.Contains(t, err.Error(), tt.pub.CommitLSN.String(), "it names the last position published")
		})
	}
}

func TestParseHistory(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		content string
		want    map[int32]pglogrepl.LSN
		wantErr bool
	}{
		{name: "empty", content: "", want: map[int32]pglogrepl.LSN{}},
		{
			name:    "as PostgreSQL writes it",
			content: "1\t0/3000FA0\tno recovery target specified\n\n2\t0/5000000\tat restore point \"x\"\n",
			want:    map[int32]pglogrepl.LSN{1: 0x3000FA0, 2: 0x5000000},
		},
		{name: "comments", content: "# a comment\n1\t0/10\tx\n", want: map[int32]pglogrepl.LSN{1: 0x10}},
		{name: "no switch point", content: "1\n", wantErr: true},
		{name: "a bad timeline", content: "x\t0/10\n", wantErr: true},
		{name: "a bad position", content: "1\tnowhere\n", wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			got, err := parseHistory([]byte(tt.content))
			if tt.wantErr {
				require.Error(t, err)
				return
			}
			require.NoError(t, err)
			require.Equal(t, tt.want, got)
		})
	}
}

// TestTimelineSwitchState: what the reader does to its state when it follows
// a failover to a server on a new timeline that holds everything it read.
func TestTimelineSwitchState(t *testing.T) {
	t.Parallel()
	t.Run("the transaction open at the cut is abandoned and confirms nothing", func(t *testing.T) {
		t.Parallel()
		tr := NewTracker(100)
		var f replayFilter
		_, err := f.Begin(beginMessage{finalLSN: 500, xid: 7}, func() *txnEntry { return tr.Begin(t0) })
		require.NoError(t, err)
		_, txn, _, err := f.Row(450)
		require.NoError(t, err)
		tr.Track(txn.entry)
		f.Forwarded()
		require.Equal(t, pglogrepl.LSN(500), f.HighWater(), "a row of the open transaction was handed on")

		open := f.Reset("timeline switch")
		require.NotNil(t, open)
		tr.abandon(open.entry)
		require.Zero(t, f.HighWater())
		require.Equal(t, 1, tr.Pending(), "its row is still in flight")
		require.NoError(t, tr.Ack(open.entry))
		require.Equal(t, 0, tr.Pending())
		require.Equal(t, pglogrepl.LSN(100), tr.Confirmed(), "abandoned, it confirms nothing")

		// The transaction sent again by the new server is a new one.
		verdict, err := f.Begin(beginMessage{finalLSN: 500, xid: 7}, func() *txnEntry { return tr.Begin(t0) })
		require.NoError(t, err)
		require.Equal(t, replayEmit, verdict)
	})
	t.Run("a later transaction folds into the abandoned one", func(t *testing.T) {
		t.Parallel()
		tr := NewTracker(100)
		a := tr.Begin(t0)
		tr.Track(a)
		tr.abandon(a)
		b := tr.Begin(t0)
		tr.Commit(b, 300)
		require.Equal(t, pglogrepl.LSN(100), tr.Confirmed(), "the abandoned transaction's row is in flight")
		require.NoError(t, tr.Ack(a))
		require.Equal(t, pglogrepl.LSN(300), tr.Confirmed())
	})
	t.Run("a position confirmed on the old timeline is taken back", func(t *testing.T) {
		t.Parallel()
		tr := NewTracker(100)
		tr.Gate()
		tr.Verified(900)
		require.True(t, tr.Idle(900), "an idle outbox confirmed the old server's WAL end")
		tr.rebase(400) // the new server's slot
		tr.resume(400)
		require.Equal(t, pglogrepl.LSN(400), tr.Confirmed())
		e := tr.Begin(t0)
		tr.Track(e)
		tr.Commit(e, 600)
		require.Equal(t, pglogrepl.LSN(400), tr.Confirmed(), "not past an event of the new timeline still in flight")
		require.NoError(t, tr.Ack(e))
		require.Equal(t, pglogrepl.LSN(400), tr.Confirmed(), "not past what the publication watch verified on the new server")
		tr.Verified(700)
		require.Equal(t, pglogrepl.LSN(600), tr.Confirmed())
	})
	t.Run("rows count once handed on", func(t *testing.T) {
		t.Parallel()
		var f replayFilter
		_, err := f.Begin(beginMessage{finalLSN: 200}, func() *txnEntry { return &txnEntry{} })
		require.NoError(t, err)
		_, _, _, err = f.Row(150)
		require.NoError(t, err)
		f.Forwarded()
		_, _, err = f.Commit(250)
		require.NoError(t, err)
		_, err = f.Begin(beginMessage{finalLSN: 300}, func() *txnEntry { return &txnEntry{} })
		require.NoError(t, err)
		_, _, err = f.Commit(350)
		require.NoError(t, err)
		require.Equal(t, pglogrepl.LSN(200), f.HighWater(), "a transaction without outbox rows does not count")
		_, err = f.Begin(beginMessage{finalLSN: 500}, func() *txnEntry { return &txnEntry{} })
		require.NoError(t, err)
		require.Equal(t, pglogrepl.LSN(200), f.HighWater(), "nothing of the open transaction was handed on")
	})
}
