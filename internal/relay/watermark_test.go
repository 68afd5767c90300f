package relay_test

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/zap/zaptest"

	"github.com/outbox-relay/outbox-relay/internal/cdc"
	"github.com/outbox-relay/outbox-relay/internal/relay"
	"github.com/outbox-relay/outbox-relay/internal/sink"
)

// own stores the relay's message for event i directly.
func own(t *testing.T, stream *fakeStream, i int) {
	t.Helper()
	ev := pumpEvent(i, 1)
	msg, err := testMapper(t, testOrigin).Message(&ev)
	require.NoError(t, err)
	stream.Append(msg)
}

func TestWatermarkRead(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	plain := sink.Message{Subject: "outbox.other.plain", Data: []byte("x")}
	tests := []struct {
		name         string
		build        func(t *testing.T, s *fakeStream)
		known        relay.Mark
		after        uint64
		untilForeign bool
		want         cdc.Position // zero: none
		wantSeq      uint64
		uncertain    int
		lastMsgID    string
		foreign      bool
	}{
		{name: "empty stream", build: func(*testing.T, *fakeStream) {}},
		{name: "the last message is own", build: func(t *testing.T, s *fakeStream) {
			own(t, s, 1)
			own(t, s, 2)
		}, want: pumpEvent(2, 1).Position, wantSeq: 2},
		{name: "own messages behind others', found looking back", build: func(t *testing.T, s *fakeStream) {
			own(t, s, 1)
			own(t, s, 2)
			s.Append(plain)
			s.Append(plain)
		}, want: pumpEvent(2, 1).Position, wantSeq: 2, foreign: true},
		{name: "from the mark, past others' messages", build: func(t *testing.T, s *fakeStream) {
			own(t, s, 1)
			s.Append(plain)
			own(t, s, 2)
			own(t, s, 3)
			s.Append(plain)
		}, known: relay.Mark{Position: pumpEvent(1, 1).Position, Seq: 1}, want: pumpEvent(3, 1).Position, wantSeq: 4, foreign: true},
		{name: "until the first other message: the chain ends there", build: func(t *testing.T, s *fakeStream) {
			own(t, s, 1)
			own(t, s, 2)
			s.Append(plain)
			own(t, s, 3)
			s.Append(plain)
		}, known: relay.Mark{Position: pumpEvent(1, 1).Position, Seq: 1}, untilForeign: true, want: pumpEvent(2, 1).Position, wantSeq: 2, foreign: true},
		{name: "after the chain's start, not the mark", build: func(t *testing.T, s *fakeStream) {
			own(t, s, 1)
			s.Append(plain)
			s.Append(plain)
			own(t, s, 2)
			s.Append(plain)
		}, known: relay.Mark{Position: pumpEvent(1, 1).Position, Seq: 1}, after: 3, untilForeign: true, want: pumpEvent(2, 1).Position, wantSeq: 4, foreign: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			stream := newFakeStream(t, true, false)
			tt.build(t, stream)
			w := relay.NewWatermark(stream, stream.marks, "OUTBOX", testOrigin, zaptest.NewLogger(t))
			r, err := w.Read(ctx, tt.known, tt.after, tt.untilForeign)
			require.NoError(t, err)
			assert.Equal(t, tt.want, r.Mark.Position, "mark")
			assert.Equal(t, tt.wantSeq, r.Mark.Seq, "mark's sequence")
			assert.Equal(t, tt.uncertain, r.Uncertain, "uncertain")
			assert.Equal(t, tt.lastMsgID, r.LastMsgID, "last message id")
			assert.Equal(t, tt.foreign, r.Foreign, "foreign")
		})
	}
}

// Messages removed by retention after the mark are uncertain; the stream's
// last message id, read with a probe, tells which.
func TestWatermarkReadRemovedMessages(t *testing.T) {
	t.Parallel()
	stream := newFakeStream(t, true, false)
	own(t, stream, 1)
	stream.WorkQueue()
	own(t, stream, 2)
	own(t, stream, 3)
	w := relay.NewWatermark(stream, stream.marks, "OUTBOX", testOrigin, zaptest.NewLogger(t))
	r, err := w.Read(context.Background(), relay.Mark{Position: pumpEvent(1, 1).Position, Seq: 1}, 0, false)
	require.NoError(t, err)
	assert.Equal(t, pumpEvent(1, 1).Position, r.Mark.Position)
	assert.Equal(t, 2, r.Uncertain)
	assert.Equal(t, pumpID(3), r.LastMsgID)

	replicated := newFakeStream(t, true, true)
	own(t, replicated, 1)
	replicated.WorkQueue()
	own(t, replicated, 2)
	w = relay.NewWatermark(replicated, replicated.marks, "OUTBOX", testOrigin, zaptest.NewLogger(t))
	r, err = w.Read(context.Background(), relay.Mark{Position: pumpEvent(1, 1).Position, Seq: 1}, 0, false)
	require.NoError(t, err)
	assert.Equal(t, 1, r.Uncertain)
	assert.Empty(t, r.LastMsgID, "no probe on a replicated stream")
}

// The record in the store: its position wins when further than the
// stream's; a recreated stream keeps the position but not the sequence.
func TestWatermarkRecord(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	stream := newFakeStream(t, true, false)
	own(t, stream, 1)
	w := relay.NewWatermark(stream, stream.marks, "OUTBOX", testOrigin, zaptest.NewLogger(t))
	saved := relay.Mark{
		Position: pumpEvent(5, 1).Position, Seq: 1, MsgID: pumpID(5), StreamCreated: stream.created,
		Shared: true, Holes: []cdc.Position{pumpEvent(2, 1).Position},
	}
	require.NoError(t, w.Save(ctx, saved))
	loaded, ok, err := w.Load(ctx)
	require.NoError(t, err)
	require.True(t, ok)
	assert.Equal(t, saved.Position, loaded.Position)
	assert.Equal(t, saved.Holes, loaded.Holes)
	assert.True(t, loaded.Shared)
	assert.True(t, loaded.Stored(pumpEvent(4, 1).Position))
	assert.False(t, loaded.Stored(pumpEvent(2, 1).Position), "a hole is not stored")
	assert.False(t, loaded.Stored(pumpEvent(6, 1).Position))

	r, err := w.Read(ctx, relay.Mark{}, 0, false)
	require.NoError(t, err)
	assert.Equal(t, saved.Position, r.Mark.Position, "the record is further than the stream")
	assert.True(t, r.Recorded)
	assert.Equal(t, saved.Holes, r.Mark.Holes, "a process without a mark of its own takes the record's holes")

	r, err = w.Read(ctx, relay.Mark{Position: pumpEvent(6, 1).Position, Seq: 1, StreamCreated: stream.created}, 0, false)
	require.NoError(t, err)
	assert.Empty(t, r.Mark.Holes, "a process with a mark of its own keeps its holes")

	stream.created = stream.created.Add(time.Hour) // deleted and created again
	r, err = w.Read(ctx, relay.Mark{}, 0, false)
	require.NoError(t, err)
	assert.Equal(t, saved.Position, r.Mark.Position)
	assert.Zero(t, r.Mark.Seq, "the old stream's sequence means nothing in the new one")
}

func TestMarkKey(t *testing.T) {
	t.Parallel()
	assert.Equal(t, "OUTBOX.7714059297398348463/app/outbox_relay", relay.MarkKey("OUTBOX", "7714059297398348463/app/outbox_relay"))
	assert.Equal(t, "S.1/my=20db=2E=C3=A9/slot", relay.MarkKey("S", "1/my db.é/slot"))
}

// A long run of other writers' messages after the mark: reading back stops at
// the scan limit instead of failing, and the mark stays where it was.
func TestWatermarkScanLimit(t *testing.T) {
	t.Parallel()
	stream := newFakeStream(t, true, false)
	own(t, stream, 1)
	for range 20 {
		stream.Append(sink.Message{Subject: "outbox.other.plain", Data: []byte("x")})
	}
	w := relay.NewWatermark(stream, stream.marks, "OUTBOX", testOrigin, zaptest.NewLogger(t))
	w.ScanLimit = 5
	r, err := w.Read(context.Background(), relay.Mark{Position: pumpEvent(1, 1).Position, Seq: 1}, 0, false)
	require.NoError(t, err)
	assert.Equal(t, pumpEvent(1, 1).Position, r.Mark.Position)
	assert.True(t, r.Foreign)
}
