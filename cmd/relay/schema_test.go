package main

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/outbox-relay/outbox-relay/internal/e2e"
)

// TestRenamingAMappedColumn (trial W23, W24) follows the README's procedure
// for renaming a mapped column while events under the old name are still in
// the slot: with the relay down, events under the old name, the rename,
// events under the new name; started with both names, the relay publishes
// them all once, in order.
func TestRenamingAMappedColumn(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	relay := f.startRelay(t)
	f.write(t, 2, "published")
	f.waitStream(t, 2, 30*time.Second)
	stopRelay(t, relay)

	f.write(t, 2, "old-name")
	f.pg.Exec(t, f.db, `ALTER TABLE events RENAME COLUMN event_type TO kind`)
	f.writer.SetEventTypeColumn("kind")
	f.write(t, 2, "new-name")

	// With only the new name, the relay stops on the rows under the old
	// one, and says where and what to do.
	stuck := e2e.StartRelay(t, f.bin, f.env("RELAY_COLUMN_EVENT_TYPE", "kind"))
	code, err := stuck.Wait(60 * time.Second)
	require.NoError(t, err)
	require.Equal(t, 1, code)
	require.Contains(t, stuck.Logs(), "committing at")
	require.NotContains(t, stuck.Logs(), "at 0/0")
	require.Contains(t, stuck.Logs(), "--column-event-type=old,new")

	f.startRelay(t, "RELAY_COLUMN_EVENT_TYPE", "event_type,kind")
	f.write(t, 1, "after")
	f.waitStream(t, 7, 30*time.Second)
	msgs := f.verify(t)
	for _, m := range msgs {
		require.Equal(t, "outbox.order.created", m.Subject)
		require.Equal(t, "created", m.Header.Get("Outbox-Event-Type"))
	}
}
