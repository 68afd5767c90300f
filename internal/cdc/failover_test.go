package cdc

import (
	"testing"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/stretchr/testify/require"
)

func TestSplitSlotList(t *testing.T) {
	t.Parallel()
	tests := []struct {
		setting string
		want    []string
	}{
		{"", nil},
		{"standby1", []string{"standby1"}},
		{" standby1 , standby2", []string{"standby1", "standby2"}},
		{`"Standby ""1""",s2,`, []string{`Standby "1"`, "s2"}},
	}
	for _, tt := range tests {
		require.Equal(t, tt.want, splitSlotList(tt.setting), tt.setting)
	}
}

// TestFailoverProblems: what a failover lacks, as the primary shows it, and
// why the walsender waits.
func TestFailoverProblems(t *testing.T) {
	t.Parallel()
	ready := StandbySlot{Name: "standby1", Exists: true, Physical: true, Active: true}
	tests := []struct {
		name     string
		reading  FailoverReading
		problems []string // substrings, one per problem
		wait     string
	}{
		{name: "before PostgreSQL 17", reading: FailoverReading{}},
		{name: "a standby", reading: FailoverReading{Supported: true, InRecovery: true, SlotExists: true, Failover: true, Synced: true}},
		{
			name: "ready", reading: FailoverReading{Supported: true, SlotExists: true, Failover: true, StandbySlots: []StandbySlot{ready}},
			wait: "a standby named in synchronized_standby_slots has not confirmed the WAL yet",
		},
		{
			name:     "not a failover slot, no standby slots",
			reading:  FailoverReading{Supported: true, SlotExists: true},
			problems: []string{`slot "outbox_relay" is not a failover slot`, "synchronized_standby_slots is empty"},
		},
		{
			name: "every kind of standby slot problem",
			reading: FailoverReading{Supported: true, SlotExists: true, Failover: true, StandbySlots: []StandbySlot{
				{Name: "gone", Behind: -1},
				{Name: "logical", Exists: true},
				{Name: "lost", Exists: true, Physical: true, Invalidated: true},
				{Name: "down", Exists: true, Physical: true},
				ready,
			}},
			problems: []string{
				`slot "gone" named in synchronized_standby_slots does not exist`, `"logical" named in synchronized_standby_slots is not a physical slot`,
				`"lost" named in synchronized_standby_slots is invalidated`, `no standby streams from slot "down"`,
			},
			wait: `slot "gone" named`,
		},
		{
			name: "behind",
			reading: FailoverReading{Supported: true, SlotExists: true, Failover: true, Waiting: true, StandbySlots: []StandbySlot{
				{Name: "standby1", Exists: true, Physical: true, Active: true, Behind: 4096},
			}},
			wait: `the standby of slot "standby1" has not confirmed the last 4096 bytes of WAL`,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			got := tt.reading.Problems("outbox_relay")
			require.Len(t, got, len(tt.problems), "%q", got)
			for i, p := range tt.problems {
				require.Contains(t, got[i], p)
			}
			if tt.wait != "" {
				require.Contains(t, tt.reading.WaitReason(), tt.wait)
			}
		})
	}
}

// TestHeldBackNotice: PostgreSQL 17's warning to a walsender's client that
// it waits for a standby (its wording, as TestFailoverSlotFollowsThePromotedStandby
// sees it from a real server), and notices that are something else.
func TestHeldBackNotice(t *testing.T) {
	t.Parallel()
	require.True(t, heldBackNotice(&pgconn.PgError{
		Severity: "WARNING", Code: "55000",
		Message: `replication slot "standby1" specified in parameter "synchronized_standby_slots" does not have active_pid`,
		Detail:  `Logical replication is waiting on the standby associated with replication slot "standby1".`,
	}))
	require.True(t, heldBackNotice(&pgconn.PgError{Message: `replication slot "x" specified in parameter "synchronized_standby_slots" does not exist`}))
	require.False(t, heldBackNotice(&pgconn.PgError{Message: `skipped loading publication "outbox_relay"`}))
}

// TestRowEvent: a row read from the table is the event the decoder makes of
// the same row from the stream, NULLs in required columns included.
func TestRowEvent(t *testing.T) {
	t.Parallel()
	str := func(s string) *string { return &s }
	names := [numColumns]string{"id", "aggregate_type", "aggregate_id", "event_type", "payload", "headers", "created_at"}
	ev := rowEvent([numColumns]*string{str("e1"), str("order"), str("42"), str("paid"), str(`{"a": 1}`), nil, str("2026-11-30 12:00:00+00")}, names)
	require.Equal(t, Event{ID: "e1", RowID: "e1", AggregateType: "order", AggregateID: "42", EventType: "paid", Payload: []byte(`{"a": 1}`), CreatedAt: "2026-11-30 12:00:00+00"}, ev)
	ev = rowEvent([numColumns]*string{str("e2"), nil, str("42"), str("paid"), str(`{}`), nil, nil}, names)
	require.Equal(t, `column "aggregate_type" is NULL`, ev.Defect)
	names[colHeaders], names[colCreatedAt] = "", ""
	ev = rowEvent([numColumns]*string{str("e3"), str("order"), str("42"), str("paid"), str(`{}`), nil, nil}, names)
	require.Empty(t, ev.Defect, "unconfigured columns are no defect")
}
