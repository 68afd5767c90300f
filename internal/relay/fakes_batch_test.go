package relay_test

import (
	"context"
	"fmt"
	"strconv"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/outbox-relay/outbox-relay/internal/sink"
)

// fakeBatch is an atomic batch the fake stream has staged: its messages so
// far, without their commit.
type fakeBatch struct {
	msgs []sink.Message
}

// The fake stream's atomic batches follow the rules
// TestJetStreamAtomicBatchRules and TestJetStreamAtomicBatchLimits
// (internal/sink) check against real servers, with one and three replicas:
//
//   - a message before the commit is staged, answered with an empty reply
//     (Ack.Staged), and nothing is stored until the commit, which stores the
//     batch whole at consecutive sequences, answered with the last one's;
//   - a message missing (lost, or refused on arrival) leaves a gap: the
//     batch is dropped and its later messages, commit included, are refused
//     as incomplete; a batch sent again under the id of one left without
//     its commit is refused once the same way;
//   - a batch over the server's max_batch_size is refused at its commit
//     with the limit in the description;
//   - at the commit, message by message: an expected last message id is
//     refused (unsupported in a batch); an id in the duplicate window or
//     earlier in the batch refuses the batch whole (not saying which); a
//     message expecting a last sequence must be the batch's first and
//     expect the stream's last sequence then;
//   - the duplicate probe (DuplicateOf) stores nothing.
func (s *fakeStream) applyBatchLocked(p *fakePending) (sink.Ack, error) {
	m := p.msg
	st := s.storeFor(m.Subject)
	b := s.batches[m.BatchID]
	switch {
	case b != nil && m.BatchSeq == 1, b != nil && m.BatchSeq != uint64(len(b.msgs))+1:
		delete(s.batches, m.BatchID)
		return sink.Ack{}, batchRefusal(nil, 10176, "atomic publish batch is incomplete", m.Subject)
	case b == nil && m.BatchSeq != 1:
		if m.BatchSeq > uint64(s.maxBatch) {
			return sink.Ack{}, batchRefusal(sink.ErrBatchTooLarge, 10199, "atomic publish batch is too large: "+strconv.Itoa(s.maxBatch), m.Subject)
		}
		return sink.Ack{}, batchRefusal(nil, 10176, "atomic publish batch is incomplete", m.Subject)
	}
	if b == nil {
		b = &fakeBatch{}
		s.batches[m.BatchID] = b
	}
	if m.BatchSeq > uint64(s.maxBatch) {
		delete(s.batches, m.BatchID)
		return sink.Ack{}, batchRefusal(sink.ErrBatchTooLarge, 10199, "atomic publish batch is too large: "+strconv.Itoa(s.maxBatch), m.Subject)
	}
	b.msgs = append(b.msgs, m)
	if !m.BatchCommit {
		return sink.Ack{Stream: st.name, Staged: true}, nil
	}
	delete(s.batches, m.BatchID)
	seen := map[string]bool{}
	for k, bm := range b.msgs {
		if bm.ExpectLastMsgID != "" {
			return sink.Ack{}, batchRefusal(sink.ErrBatchUnsupported, 10177, "atomic publish unsupported header used: Nats-Expected-Last-Msg-Id", m.Subject)
		}
		if bm.ID != "" {
			_, stored := st.ids[bm.ID]
			if seen[bm.ID] || (s.dedup && stored) {
				return sink.Ack{}, batchRefusal(sink.ErrBatchDuplicate, 10201, "atomic publish batch contains duplicate message id", m.Subject)
			}
			seen[bm.ID] = true
		}
		if bm.CheckLastSeq {
			if bm.ExpectLastSeq != st.lastSeq+uint64(k) {
				s.rejectedSeq++
				return sink.Ack{}, batchRefusal(sink.ErrWrongSequence, 10071, fmt.Sprintf("wrong last sequence: %d", st.lastSeq), m.Subject)
			}
			if k > 0 {
				return sink.Ack{}, batchRefusal(sink.ErrWrongSequence, 10164, "wrong last sequence", m.Subject)
			}
		}
	}
	for _, bm := range b.msgs {
		h := cloneHeader(bm.Header)
		if h == nil {
			h = nats.Header{}
		}
		h.Set("Nats-Batch-Id", bm.BatchID)
		h.Set("Nats-Batch-Sequence", strconv.FormatUint(bm.BatchSeq, 10))
		bm.Header = h
		s.appendLocked(bm)
		last := &st.msgs[len(st.msgs)-1]
		last.CheckLastSeq, last.ExpectLastSeq = bm.CheckLastSeq, bm.ExpectLastSeq
	}
	s.commits++
	p.storedSeq = st.lastSeq
	return sink.Ack{Stream: st.name, Seq: st.lastSeq, Count: uint64(len(b.msgs))}, nil
}

// batchRefusal is JetStream's error reply to a batch message, classified
// as the sink does (class nil: a transient failure).
func batchRefusal(class error, code int, desc, subject string) error {
	apiErr := &jetstream.APIError{Code: 400, ErrorCode: jetstream.ErrorCode(code), Description: desc}
	if class == nil {
		return fmt.Errorf("publish to %q: %w", subject, apiErr)
	}
	return fmt.Errorf("%w: publish to %q: %w", class, subject, apiErr)
}

// DuplicateOf implements relay.StreamLog: whether id is in the duplicate
// window, storing nothing. replicated must match the stream: a last message
// id expectation would stop a replicated stream.
func (s *fakeStream) DuplicateOf(ctx context.Context, subject, id string, replicated bool) (uint64, bool, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.readLocked(ctx); err != nil {
		return 0, false, err
	}
	if replicated != s.replicated && s.t != nil {
		s.t.Errorf("duplicate probe for a stream with replicated %t on one with %t", replicated, s.replicated)
	}
	if !sink.Captures(s.captures, subject) {
		return 0, false, fmt.Errorf("probe subject %q not captured", subject)
	}
	s.probes++
	if !s.dedup {
		return 0, false, nil
	}
	seq, ok := s.main.ids[id]
	return seq, ok, nil
}

// SetMaxBatch sets the server's max_batch_size.
func (s *fakeStream) SetMaxBatch(n int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.maxBatch = n
}

// Commits returns how many atomic batches were stored.
func (s *fakeStream) Commits() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.commits
}
