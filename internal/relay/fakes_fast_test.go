package relay_test

import (
	"fmt"
	"strings"
	"sync"
	"testing"

	"github.com/outbox-relay/outbox-relay/internal/sink"
)

// fakeFastBatch is one fast batch of the sink's (sink.Config.FastBatch), as
// the fake stream models it after the rules TestJetStreamFastBatchRules
// checks against real servers (gaps set to fail):
//   - the messages of a burst sent without a reply make up a batch, and the
//     burst's message that asks for a reply commits it; a message asking for
//     a reply without an expected last sequence goes on its own;
//   - each message is stored as it arrives, as a single publish;
//   - a refused message ends the batch: the batch's later messages are
//     dropped unstored, and the commit fails with ErrWrongSequence (unless
//     the commit itself was refused: its own error). (A wrong last message
//     id does not end the batch on the server, but the sink takes its reply
//     as the end, and the relay's later messages, each expecting its
//     predecessor, could not be stored anyway.)
//   - a duplicate is dropped unreported; at the commit the PubAck is the
//     batch's last stored message's (an invalid PubAck when none was).
type fakeFastBatch struct {
	ended      bool
	lastStored uint64
}

// joinFastBatchLocked puts p into the open fast batch, starts one, or
// leaves p on its own, as the sink does.
func (s *fakeStream) joinFastBatchLocked(p *fakePending) {
	m := p.msg
	if !s.fast || m.BatchID != "" {
		return
	}
	switch {
	case m.NoReply:
		if !m.CheckLastSeq && s.t != nil {
			s.t.Errorf("message %s sent without a reply in a fast batch expects no last sequence: the sink refuses it", m.ID)
		}
		if s.fastOpen == nil {
			s.fastOpen = &fakeFastBatch{}
		}
		p.fastBatch = s.fastOpen
	case m.CheckLastSeq && s.fastOpen != nil:
		p.fastBatch, p.fastCommit = s.fastOpen, true
		s.fastOpen = nil
	default:
		s.fastOpen = nil
	}
}

// applyFastLocked is applyLocked for a message of a fast batch.
func (s *fakeStream) applyFastLocked(p *fakePending) (sink.Ack, error) {
	b := p.fastBatch
	if b == nil {
		return s.applyLocked(p)
	}
	if b.ended {
		if p.fastCommit {
			return sink.Ack{}, fmt.Errorf("fast batch ended before its commit: %w", sink.ErrWrongSequence)
		}
		return sink.Ack{}, nil
	}
	ack, err := s.applyLocked(p)
	if p.fastCommit {
		s.fastCommits++
	}
	switch {
	case err != nil:
		b.ended = true
		s.fastEnded++
	case ack.Duplicate && p.fastCommit && b.lastStored == 0:
		return sink.Ack{}, fmt.Errorf("invalid PubAck %q", `{"stream":"OUTBOX","seq":0}`)
	case ack.Duplicate && p.fastCommit:
		return sink.Ack{Stream: ack.Stream, Seq: b.lastStored}, nil
	case !ack.Duplicate:
		b.lastStored = ack.Seq
	}
	return ack, err
}

// FastCommits returns how many fast batches were committed (stored whole
// or ended at their commit), FastEnded how many ended at a refusal.
func (s *fakeStream) FastCommits() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.fastCommits
}

func (s *fakeStream) FastEnded() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.fastEnded
}

// fastBatchTests names the tests run in the batch mode (see forEachMode):
// their pumps publish to fake streams that model fast batches.
var fastBatchTests sync.Map

// inBatchMode reports whether t, or a test it runs under, is in the batch
// mode.
func inBatchMode(t testing.TB) bool {
	name := t.Name()
	for {
		if _, ok := fastBatchTests.Load(name); ok {
			return true
		}
		i := strings.LastIndex(name, "/")
		if i < 0 {
			return false
		}
		name = name[:i]
	}
}
