package relay

import (
	"errors"
	"fmt"

	"github.com/outbox-relay/outbox-relay/internal/sink"
)

// ordering is how the pump keeps its events in commit order on the stream;
// it decides what an acknowledgement proves.
type ordering uint8

const (
	// orderChain: every message expects its predecessor's stream sequence
	// and message id (Nats-Expected-Last-Msg-Id). JetStream then stores a
	// message only right after the relay's previous one, so a message
	// stored where it expected proves that every message before it is
	// stored, in order, and is the relay's own. One-replica streams only.
	orderChain ordering = iota
	// orderSequence: every message expects its predecessor's stream
	// sequence only (a replicated stream, where the message id check would
	// stop the stream on a mismatch). A message of another writer can take
	// the place of a refused message, letting the next one be stored: every
	// message asks for a PubAck, so that is seen at once.
	orderSequence
	// orderSerial: one message at a time, each published only once the one
	// before is acknowledged; no expectations. For a replicated stream
	// others write to.
	orderSerial
)

func (o ordering) String() string {
	return [...]string{"chain", "sequence", "serial"}[o]
}

// fate is what is known of one publish of the window.
type fate uint8

const (
	fateUnknown   fate = iota // maybe stored: no reply, or a lost one
	fateStored                // on the stream
	fateNotStored             // refused, or never sent
)

// result is one publish of the window as the pump saw it settle.
type result struct {
	// covered: sent without asking for a PubAck.
	covered bool
	// sent is false for a message the client refused to send.
	sent bool
	// replied is set when the PubAck or an error reply arrived.
	replied bool
	ack     sink.Ack
	// expect is the sequence the message had to land at (0: none).
	expect uint64
	err    error
	// commit marks an atomic batch's commit message (see resolveBatches).
	commit bool
}

// resolution is what a settled window proves.
type resolution struct {
	fates []fate
	// broken is set when a message was stored after one that was not
	// (orderSequence: another writer's message took a refused one's place).
	broken bool
	// violation is set when the stream did something the ordering rules out.
	violation error
}

// resolve decides, from the results of a settled window in publish order,
// which of the window's events are on the stream. It is the one place that
// says what an acknowledgement proves:
//
//   - a message stored where it expected proves its event stored; under
//     orderChain also every event before it back to the last duplicate:
//     each message expected its predecessor's id, so the stream's last
//     message was the predecessor's when it was stored. That holds for the
//     events of messages sent without a PubAck, of lost PubAcks, and even of
//     refused messages: an earlier copy of the same event (a publish that
//     timed out and was stored late, say) may have taken the place the
//     refused one expected;
//   - a duplicate proves only its own event: its copy was stored earlier,
//     and says nothing of the messages around it;
//   - a refusal (the stream's last message was not the expected one, or the
//     message can never be stored) proves this publish stored nothing;
//   - anything else (no reply in time, a lost connection) proves nothing.
//
// Under orderSequence a message stored after one that was refused means
// that another writer's message, or a late copy of the refused event, took
// its place (broken): the caller finds out which.
//
// Atomic batches have rules of their own: resolveBatches.
func resolve(results []result, order ordering) resolution {
	r := resolution{fates: make([]fate, len(results))}
	segment := 0           // under orderChain, the chain since the last duplicate
	refusedBefore := false // orderSequence: a message before was refused
	for i, res := range results {
		if res.covered {
			continue
		}
		switch {
		case !res.sent:
			r.fates[i] = fateNotStored
		case !res.replied:
			r.fates[i] = fateUnknown
		case res.err != nil && (errors.Is(res.err, sink.ErrWrongSequence) || errors.Is(res.err, sink.ErrPermanent)):
			r.fates[i] = fateNotStored
			refusedBefore = true
		case res.err != nil:
			r.fates[i] = fateUnknown
		case res.ack.Duplicate:
			r.fates[i] = fateStored
			segment = i + 1
		default:
			r.fates[i] = fateStored
			if res.expect != 0 && res.ack.Seq != res.expect {
				r.violation = fmt.Errorf("JetStream stored a message at sequence %d although it expected %d: %w", res.ack.Seq, res.expect, errOrderViolation)
			}
			switch order {
			case orderChain:
				for j := segment; j < i; j++ {
					r.fates[j] = fateStored
				}
			case orderSequence:
				if refusedBefore {
					r.broken = true
				}
			}
		}
	}
	// Messages sent without a PubAck and not vouched for stay unknown.
	return r
}

// errOrderViolation marks a stream that broke a rule the ordering rests on.
var errOrderViolation = errors.New("order guarantee violated")
