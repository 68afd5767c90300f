package cdc

import (
	"fmt"
	"strings"
	"testing"

	"github.com/jackc/pglogrepl"
	"github.com/stretchr/testify/require"
)

// TestReplayFilter runs scripts of stream messages through the filter. Each
// step is one of
//
//	B<lsn>  a Begin of the transaction committing at lsn
//	R       a row; F after it records that it was handed on
//	C       the open transaction's Commit
//	S       a new session (reconnect)
//	X       Reset
//
// and the script's expectations list, per step, the verdict ("emit",
// "skip", "emit#<index>" for rows, "error", "-" for S, F and X), and finally
// whether the filter is idle and how many tracker entries were opened.
func TestReplayFilter(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name   string
		script string
		want   string
		idle   bool
		opened int
	}{
		{"a new transaction", "B100 R F R F C", "emit emit#0 - emit#1 - emit", true, 1},
		{"a transaction without rows", "B100 C", "emit emit", true, 1},
		{"two in a row", "B100 R F C B200 R F C", "emit emit#0 - emit emit emit#0 - emit", true, 2},
		{"open while rows are read", "B100 R F", "emit emit#0 -", false, 1},
		{
			"sent again in full after a reconnect", "B100 R F C S B100 R R C",
			"emit emit#0 - emit - skip skip skip skip", true, 1,
		},
		{
			"an earlier transaction sent again", "B100 C B200 C S B100 C B200 C",
			"emit emit emit emit - skip skip skip skip", true, 2,
		},
		{"skipping is not idle", "B100 C S B100", "emit emit - skip", false, 1},
		{"a reconnect ends skipping", "B100 C S B100 S", "emit emit - skip -", true, 1},
		{
			"a skipped transaction, then a new one", "B100 C S B100 R C B200 R F C",
			"emit emit - skip skip skip emit emit#0 - emit", true, 2,
		},
		{
			"cut short by a reconnect: rows handed on are skipped", "B100 R F R F S B100 R R R F C",
			"emit emit#0 - emit#1 - - emit skip#0 skip#1 emit#2 - emit", true, 1,
		},
		{
			"a row whose hand-on failed is sent again", "B100 R F R S B100 R R F C",
			"emit emit#0 - emit#1 - emit skip#0 emit#1 - emit", true, 1,
		},
		{
			"cut short twice", "B100 R F S B100 R R F S B100 R R R F C",
			"emit emit#0 - - emit skip#0 emit#1 - - emit skip#0 skip#1 emit#2 - emit", true, 1,
		},
		{"another transaction begins while one is open", "B100 R F S B200", "emit emit#0 - - error", false, 1},
		{"another transaction begins without a commit", "B100 B200", "emit error", false, 1},
		{"a row outside a transaction", "R", "error", true, 0},
		{"a commit outside a transaction", "C", "error", true, 0},
		{"a row after the commit", "B100 C R", "emit emit error", true, 1},
		{"reset forgets what was handed on", "B100 R F C X B100 R F C", "emit emit#0 - emit - emit emit#0 - emit", true, 2},
		{"reset drops the open transaction", "B100 R F X B100 R F C", "emit emit#0 - - emit emit#0 - emit", true, 2},
		{"reset while skipping", "B100 C S B100 X", "emit emit - skip -", true, 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			var f replayFilter
			opened := 0
			open := func() *txnEntry { opened++; return &txnEntry{} }
			var got []string
			for _, step := range strings.Fields(tt.script) {
				switch step[0] {
				case 'B':
					var lsn uint64
					_, err := fmt.Sscanf(step[1:], "%d", &lsn)
					require.NoError(t, err)
					v, err := f.Begin(beginMessage{finalLSN: pglogrepl.LSN(lsn), xid: uint32(lsn)}, open)
					got = append(got, verdict(v, err, ""))
				case 'R':
					v, txn, index, err := f.Row(1)
					suffix := fmt.Sprintf("#%d", index)
					if txn == nil {
						suffix = "" // a whole transaction skipped
					}
					got = append(got, verdict(v, err, suffix))
				case 'F':
					f.Forwarded()
					got = append(got, "-")
				case 'C':
					v, txn, err := f.Commit(1)
					if v == replayEmit {
						require.NotNil(t, txn)
					}
					got = append(got, verdict(v, err, ""))
				case 'S':
					f.SessionStarted()
					got = append(got, "-")
				case 'X':
					f.Reset("test")
					got = append(got, "-")
				}
			}
			require.Equal(t, tt.want, strings.Join(got, " "), tt.script)
			require.Equal(t, tt.idle, f.Idle(), "idle")
			require.Equal(t, tt.opened, opened, "tracker entries opened")
		})
	}
}

func verdict(v replayVerdict, err error, suffix string) string {
	if err != nil {
		return "error"
	}
	return v.String() + suffix
}
