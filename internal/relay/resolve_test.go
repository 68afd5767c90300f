package relay

import (
	"fmt"
	"strings"
	"testing"

	"github.com/nats-io/nats.go"
	"github.com/stretchr/testify/assert"

	"github.com/outbox-relay/outbox-relay/internal/sink"
)

// TestResolve lists what an acknowledgement proves, window by window. Each
// window is written as one token per publish:
//
//	S   stored where it expected        D  stored as a duplicate
//	X   stored elsewhere than expected  R  refused (wrong last sequence or id)
//	P   refused for good (too large)    T  no PubAck in time
//	c   sent without a PubAck           u  never sent
//
// and the fates as s (stored), n (not stored), ? (unknown).
func TestResolve(t *testing.T) {
	tests := []struct {
		name   string
		order  ordering
		window string
		fates  string
		broken bool
		// violation is set when the window is impossible under the order.
		violation bool
	}{
		{name: "all acknowledged", order: orderChain, window: "S S S", fates: "s s s"},
		{name: "a voucher proves the messages before it", order: orderChain, window: "c c S", fates: "s s s"},
		{name: "groups", order: orderChain, window: "c S c c S c", fates: "s s s s s ?"},
		{name: "no voucher after them", order: orderChain, window: "S c c", fates: "s ? ?"},
		{name: "lost PubAck proven by a later message", order: orderChain, window: "S T S", fates: "s s s"},
		{name: "lost PubAcks and covered ones proven", order: orderChain, window: "c T c S", fates: "s s s s"},
		{name: "lost PubAck, nothing after", order: orderChain, window: "S S T", fates: "s s ?"},
		{name: "refused voucher leaves its group unknown", order: orderChain, window: "c c R", fates: "? ? n"},
		{name: "a foreign message mid-burst: everything after refused", order: orderChain, window: "S c R c R R", fates: "s ? n ? n n"},
		{name: "stored after a refusal: a late copy of the refused event took its place", order: orderChain, window: "R S", fates: "s s"},
		{name: "refusals up to a late copy's end, then the chain goes on", order: orderChain, window: "c R R S c", fates: "s s s s ?"},
		{name: "stored elsewhere than expected is impossible", order: orderChain, window: "S X", fates: "s s", violation: true},
		{name: "a duplicate proves only itself", order: orderChain, window: "c D", fates: "? s"},
		{name: "a voucher after a duplicate proves back to it", order: orderChain, window: "c D c S", fates: "? s s s"},
		{name: "a refusal then a duplicate then a voucher", order: orderChain, window: "R D S", fates: "n s s"},
		{name: "a refusal, a duplicate, a refusal, a voucher", order: orderChain, window: "R D R S", fates: "n s s s"},
		{name: "too large", order: orderChain, window: "S P R R", fates: "s n n n"},
		{name: "never sent", order: orderChain, window: "S S u", fates: "s s n"},
		{name: "timeout then refusals", order: orderChain, window: "S T R R", fates: "s ? n n"},

		{name: "replicated: each proves itself", order: orderSequence, window: "S S S", fates: "s s s"},
		{name: "replicated: lost PubAck stays unknown", order: orderSequence, window: "S T S", fates: "s ? s"},
		{name: "replicated: a foreign message took a refused one's place", order: orderSequence, window: "S R S S", fates: "s n s s", broken: true},
		{name: "replicated: refusals to the end are no hole", order: orderSequence, window: "S R R R", fates: "s n n n"},
		{name: "replicated: a duplicate after a refusal", order: orderSequence, window: "R D R", fates: "n s n"},

		{name: "serial", order: orderSerial, window: "S", fates: "s"},
		{name: "serial, refused", order: orderSerial, window: "T", fates: "?"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			toks := strings.Fields(tt.window)
			results := make([]result, len(toks))
			for i, tok := range toks {
				expect := uint64(i + 1)
				if tt.order == orderSerial {
					expect = 0
				}
				res := result{sent: true, replied: true, expect: expect, ack: sink.Ack{Stream: "S", Seq: uint64(i + 1)}}
				switch tok {
				case "S":
				case "D":
					res.ack = sink.Ack{Stream: "S", Seq: 99, Duplicate: true}
				case "X":
					res.ack.Seq = 77
				case "R":
					res.err = fmt.Errorf("refused: %w", sink.ErrWrongSequence)
				case "P":
					res.err = fmt.Errorf("too large: %w", sink.ErrPermanent)
				case "T":
					res.err = fmt.Errorf("no PubAck: %w", nats.ErrTimeout)
				case "c":
					res = result{covered: true, sent: true, expect: expect}
				case "u":
					res = result{err: nats.ErrReconnectBufExceeded}
				default:
					t.Fatalf("unknown token %q", tok)
				}
				results[i] = res
			}
			got := resolve(results, tt.order)
			assert.Equal(t, tt.fates, fateString(got.fates), "fates")
			assert.Equal(t, tt.broken, got.broken, "broken")
			assert.Equal(t, tt.violation, got.violation != nil, "violation: %v", got.violation)
		})
	}
}

// fateString writes fates as the tables do: s (stored), n (not stored), ?
// (unknown).
func fateString(fates []fate) string {
	var out []string
	for _, f := range fates {
		out = append(out, map[fate]string{fateStored: "s", fateNotStored: "n", fateUnknown: "?"}[f])
	}
	return strings.Join(out, " ")
}
