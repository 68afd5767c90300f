package relay

import (
	"errors"
	"fmt"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/outbox-relay/outbox-relay/internal/sink"
)

// resolveBatches is resolve for the atomic mode (Config.Atomic): the window
// is a run of atomic batches, each ending with its commit message (result.
// commit), the last perhaps still open. It is the one place that says what a
// batch's acknowledgement proves:
//
//   - a batch is stored whole or not at all, so its commit's PubAck proves
//     every message of the batch stored, at consecutive sequences ending at
//     the PubAck's; a staged message's own reply proves nothing;
//   - an error reply to the commit (JetStream answers before it stores
//     anything) proves that none of the batch is stored, and so does a
//     commit that was never sent, or no commit at all: the server never
//     stores a batch without one;
//   - no reply to the commit (a timeout, a lost connection) proves nothing
//     of the batch.
//
// Under orderSequence each batch's first message expects the stream's last
// sequence, the end of the batch before: a batch stored after one that was
// not means that another writer's messages took the refused batch's place
// (broken), as for single messages on a replicated stream. A batch stored
// elsewhere than it expected is a violation.
func resolveBatches(results []result, order ordering) resolution {
	r := resolution{fates: make([]fate, len(results))}
	start := 0
	refusedBefore := false
	for i, res := range results {
		if !res.commit {
			continue
		}
		f := commitFate(res)
		switch f {
		case fateStored:
			if res.expect != 0 && res.ack.Seq != res.expect {
				r.violation = fmt.Errorf("JetStream stored an atomic batch ending at sequence %d although it expected %d: %w", res.ack.Seq, res.expect, errOrderViolation)
			}
			if refusedBefore && order == orderSequence {
				r.broken = true
			}
		case fateNotStored:
			refusedBefore = true
		}
		for j := start; j <= i; j++ {
			r.fates[j] = f
		}
		start = i + 1
	}
	// A batch without its commit is never stored.
	for j := start; j < len(results); j++ {
		r.fates[j] = fateNotStored
	}
	return r
}

// commitFate is what the reply to a batch's commit proves of the batch.
func commitFate(res result) fate {
	switch {
	case !res.sent:
		return fateNotStored
	case !res.replied:
		return fateUnknown
	case res.err == nil:
		return fateStored
	case refusal(res.err):
		return fateNotStored
	}
	return fateUnknown
}

// refusal reports whether err is JetStream's answer that it did not store a
// message (or a batch), as opposed to no answer at all.
func refusal(err error) bool {
	var apiErr *jetstream.APIError
	return errors.Is(err, sink.ErrWrongSequence) || errors.Is(err, sink.ErrPermanent) ||
		errors.Is(err, sink.ErrBatchDuplicate) || errors.Is(err, sink.ErrBatchTooLarge) ||
		errors.Is(err, sink.ErrBatchUnsupported) || errors.As(err, &apiErr)
}

// landedBatches returns where each stored message of a settled window of
// batches is: a stored batch's messages sit right before its commit's
// sequence, the commit's own message last.
func landedBatches(results []result, fates []fate) []uint64 {
	seqs := make([]uint64, len(results))
	var next uint64 // the sequence of the next stored message, going back
	for i := len(results) - 1; i >= 0; i-- {
		switch {
		case fates[i] != fateStored:
			continue
		case results[i].commit:
			next = results[i].ack.Seq
		}
		seqs[i] = next
		next--
	}
	return seqs
}
