package relay

import (
	"fmt"
	"math"
	"strings"
	"testing"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/assert"

	"github.com/outbox-relay/outbox-relay/internal/cdc"
	"github.com/outbox-relay/outbox-relay/internal/sink"
)

// TestResolveBatches lists what an atomic batch's acknowledgement proves,
// window by window. Each window is a run of batches written as one token per
// message: a message before its batch's commit is
//
//	m   sent without a reply     s  staged (its empty reply arrived)
//	e   refused on arrival (too large)
//
// and a commit one of
//
//	S   stored where it expected   X  stored elsewhere than expected
//	R   refused (wrong sequence)   D  refused for an id already stored
//	I   refused as incomplete      T  no reply in time
//	u   never sent
//
// with the fates s (stored), n (not stored), ? (unknown) per message.
func TestResolveBatches(t *testing.T) {
	tests := []struct {
		name      string
		order     ordering
		window    string
		fates     string
		broken    bool
		violation bool
	}{
		{name: "one batch", order: orderSequence, window: "m m S", fates: "s s s"},
		{name: "batches", order: orderSequence, window: "m S S m m S", fates: "s s s s s s"},
		{name: "staged replies prove nothing", order: orderSequence, window: "s s T", fates: "? ? ?"},
		{name: "refused whole", order: orderSequence, window: "m m R m S", fates: "n n n s s", broken: true},
		{name: "refused to the end is no hole", order: orderSequence, window: "m S m R m R", fates: "s s n n n n"},
		{name: "a duplicate refuses the whole batch", order: orderSequence, window: "m D S", fates: "n n s", broken: true},
		{name: "a message refused on arrival leaves the batch incomplete", order: orderSequence, window: "s e I m S", fates: "n n n s s", broken: true},
		{name: "no reply: the batch is unknown, the next one stands", order: orderSequence, window: "m T m S", fates: "? ? s s"},
		{name: "commit never sent", order: orderSequence, window: "m m u", fates: "n n n"},
		{name: "no commit at all", order: orderSequence, window: "m S m m", fates: "s s n n"},
		{name: "stored elsewhere than expected", order: orderSequence, window: "m X", fates: "s s", violation: true},
		{name: "serial: each batch on its own", order: orderSerial, window: "m m S", fates: "s s s"},
		{name: "serial: refused then stored is no hole", order: orderSerial, window: "R S", fates: "n s"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			toks := strings.Fields(tt.window)
			results := make([]result, len(toks))
			var seq uint64
			for i, tok := range toks {
				seq++
				res := result{sent: true, replied: true, commit: true, ack: sink.Ack{Stream: "S", Seq: seq}}
				if tt.order == orderSequence {
					res.expect = seq
				}
				switch tok {
				case "m":
					res = result{sent: true, covered: true}
				case "s":
					res = result{sent: true}
				case "e":
					res = result{sent: true, replied: true, err: fmt.Errorf("too large: %w", sink.ErrPermanent)}
				case "S":
				case "X":
					res.ack.Seq = 77
				case "R":
					res.err = fmt.Errorf("refused: %w", sink.ErrWrongSequence)
				case "D":
					res.err = fmt.Errorf("%w: %w", sink.ErrBatchDuplicate, &jetstream.APIError{ErrorCode: 10201})
				case "I":
					res.err = &jetstream.APIError{ErrorCode: 10176, Description: "atomic publish batch is incomplete"}
				case "T":
					res.err = fmt.Errorf("no PubAck: %w", nats.ErrTimeout)
				case "u":
					res = result{commit: true, err: nats.ErrReconnectBufExceeded}
				default:
					t.Fatalf("unknown token %q", tok)
				}
				results[i] = res
			}
			got := resolveBatches(results, tt.order)
			assert.Equal(t, tt.fates, fateString(got.fates), "fates")
			assert.Equal(t, tt.broken, got.broken, "broken")
			assert.Equal(t, tt.violation, got.violation != nil, "violation: %v", got.violation)
		})
	}
}

// TestLandedBatches: a stored batch's messages sit right before its
// commit's sequence.
func TestLandedBatches(t *testing.T) {
	results := []result{
		{sent: true, covered: true},
		{sent: true, covered: true},
		{sent: true, replied: true, commit: true, ack: sink.Ack{Seq: 12}},
		{sent: true, covered: true},
		{sent: true, replied: true, commit: true, err: fmt.Errorf("refused: %w", sink.ErrWrongSequence)},
		{sent: true, replied: true, commit: true, ack: sink.Ack{Seq: 20}},
	}
	v := resolveBatches(results, orderSerial)
	assert.Equal(t, []uint64{10, 11, 12, 0, 0, 20}, landedBatches(results, v.fates))
	causes := batchCauses(results)
	assert.NoError(t, causes[0])
	assert.ErrorIs(t, causes[3], sink.ErrWrongSequence)
	open := batchCauses([]result{{sent: true, covered: true}, {sent: true, covered: true}})
	assert.ErrorIs(t, open[1], errBatchOpen)
}

// TestBatchID: a batch's id starts with its first event's place in commit
// order (and a hash of the origin), deterministically; the process and the
// attempt tell copies apart; it fits JetStream's 64 characters.
func TestBatchID(t *testing.T) {
	pos := cdc.Position{CommitLSN: 0x16B374D848, Index: 3}
	a := batchID("sys/app/slot", pos, 0xbeef, 1)
	assert.Equal(t, a, batchID("sys/app/slot", pos, 0xbeef, 1))
	assert.True(t, strings.HasPrefix(a, strings.SplitN(a, "-", 2)[0]+"-16b374d848-3-"), a)
	assert.NotEqual(t, a, batchID("sys/app/slot", pos, 0xbeef, 2))
	assert.NotEqual(t, a, batchID("sys/app/slot", pos, 0xbeee, 1))
	assert.NotEqual(t, a, batchID("sys/other/slot", pos, 0xbeef, 1))
	longest := batchID("x", cdc.Position{CommitLSN: math.MaxUint64, Index: math.MaxUint32}, math.MaxUint32, 1<<50)
	assert.LessOrEqual(t, len(longest), sink.MaxBatchID, longest)
}
