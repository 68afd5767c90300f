package sink

import (
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nuid"
)

// Publish modes (Config.PublishMode).
const (
	// PublishAuto publishes in fast batches when the stream allows them
	// (allow_batched), one message at a time otherwise.
	PublishAuto = "auto"
	// PublishAsync publishes one message at a time, asynchronously.
	PublishAsync = "async"
	// PublishBatch publishes in fast batches, and preflight refuses a
	// stream that does not allow them.
	PublishBatch = "batch"
)

// UsesFastBatch reports whether mode publishes in fast batches to a stream
// in state.
func UsesFastBatch(mode string, state StreamState) bool {
	return mode == PublishBatch || ((mode == PublishAuto || mode == "") && state.AllowBatched)
}

// checkFastBatch refuses, for PublishBatch, a stream that does not allow
// fast batches.
func checkFastBatch(stream string, sc jetstream.StreamConfig) error {
	if !sc.AllowBatchPublish {
		return fmt.Errorf("publish-mode: batch, but stream %q does not allow fast batches; set allow_batched: true in its configuration (nats-server 2.14 or later), or use --publish-mode=auto: %w",
			stream, ErrConfig)
	}
	return nil
}

// Fast batch publishing (nats-server 2.14+, stream setting allow_batched).
//
// A fast batch is a run of messages whose reply subjects carry the batch:
// <inbox>.<batch id>.<flow>.<gap mode>.<batch sequence>.<operation>.$FI.
// The server stores each message as it arrives, exactly as a single
// publish, and answers the batch rather than each message: the first
// message with its flow settings ({"type":"ack","seq":0}), every flow-many
// stored messages with a flow ack, a refused message with a flow error
// ({"type":"err"}), and the commit with a PubAck carrying the stream
// sequence of the batch's last stored message and how many of the batch's
// messages it took ("count"). With the gap mode "fail" a refused or missing
// message ends the batch at once: the PubAck then counts only the messages
// before it, and later messages of the batch are dropped unstored (the
// server answers them "unknown batch id", 10208). TestJetStreamFastBatchRules
// checks all of this against real servers.
//
// The sink maps the pump's bursts onto fast batches: messages sent without
// a reply (NoReply) make up the open batch, and the next message that asks
// for one commits it. The commit's Ack is the PubAck: its Seq is the commit
// message's stream sequence when the whole batch was stored, so the pump's
// check that it landed where it expected proves the burst, as with single
// messages; a batch that ended early fails the commit with ErrWrongSequence
// (what was stored is read back from the stream). A duplicate is never
// reported in a batch of several messages: it only shows as a commit that
// did not land where it expected (its expected last sequence held, but the
// stream did not grow). So every message of a batch must expect the last
// sequence: Publish refuses one that does not, and a message asking for a
// reply without an expectation (the first after reading the stream back, a
// dead letter) is published on its own, outside any batch. Flow acks are
// not needed: the pump's window bounds what is in flight.
//
// orbit.go's jetstreamext.FastPublisher (v0.3.2) speaks the same protocol
// but does not fit the pump: it is one long batch whose Add blocks for the
// first message's reply and whenever flow acks are outstanding, reports
// progress only as batch sequences (the stream sequence comes with the
// commit alone), and takes messages without the sink's reused headers or
// its reply slots; the pump needs a Pending per message that asks, resolved
// with a stream sequence it can check, and bursts that end where it says.

// fastFlow is the flow the sink offers the server: it asks for a flow ack
// every fastFlow stored messages at most (the server caps it at 500).
const fastFlow = 500

// errBatchEnded marks a fast batch that ended before its commit.
var errBatchEnded = errors.New("fast batch ended before its commit")

// fastBatch is one fast batch: its id and messages sent (used by the
// publishing goroutine), and, guarded by Sink.mu, the reply that ended it,
// the first refusal reported, and its commit's slot.
type fastBatch struct {
	id   string
	sent uint64

	ended     bool
	end       Ack
	endErr    error
	refused   uint64 // the batch sequence of the first message refused (0: none)
	refusal   error
	commit    *slot
	commitGen uint64
	commitSeq uint64
}

// fastReplyPrefix is the reply subject of every message of b up to its
// batch sequence.
func (s *Sink) fastReply(b *fastBatch, seq uint64, op int) string {
	return s.fastInbox + "." + b.id + "." + strconv.Itoa(fastFlow) + ".fail." + strconv.FormatUint(seq, 10) + "." + strconv.Itoa(op) + ".$FI"
}

// Fast batch operations, the reply subject's second last token.
const (
	fastOpStart  = 0
	fastOpAppend = 1
	fastOpCommit = 2
)

// startFastBatches subscribes to the fast batches' replies.
func (s *Sink) startFastBatches() error {
	s.fastInbox = s.nc.NewInbox()
	s.fastPrefix = nuid.Next()
	s.fastBatches = map[string]*fastBatch{}
	sub, err := s.nc.Subscribe(s.fastInbox+".>", s.onFastReply)
	if err != nil {
		return fmt.Errorf("subscribe to fast batch replies: %w", err)
	}
	if err := sub.SetPendingLimits(-1, -1); err != nil {
		_ = sub.Unsubscribe()
		return fmt.Errorf("subscribe to fast batch replies: %w", err)
	}
	s.fastSub = sub
	return nil
}

// publishFast is Publish for fast batches: m joins the open batch (NoReply),
// commits it, or goes on its own.
func (s *Sink) publishFast(m Message, header nats.Header) (Pending, error) {
	if m.BatchID != "" {
		return nil, errors.New("sink: an atomic batch's message in a fast batch")
	}
	if s.fastDiscGen != s.discGen {
		// Messages of the open batch may be lost: the server ends it at
		// the gap, and the pump learns that from the commit, or reads the
		// stream back. A new batch starts clean.
		if s.fastOpen != nil {
			s.dropFast(s.fastOpen)
		}
		s.fastDiscGen = s.discGen
	}
	if m.NoReply {
		if !m.CheckLastSeq {
			return nil, errors.New("sink: a message sent without a reply in a fast batch must expect the last sequence")
		}
		b := s.fastOpen
		if b == nil {
			s.fastSeq++
			b = &fastBatch{id: s.fastPrefix + strconv.FormatUint(s.fastSeq, 36)}
			s.mu.Lock()
			s.fastBatches[b.id] = b
			s.mu.Unlock()
			s.fastOpen = b
		}
		op := fastOpAppend
		if b.sent == 0 {
			op = fastOpStart
		}
		if err := s.send(m, header, s.fastReply(b, b.sent+1, op)); err != nil {
			s.dropFast(b)
			return nil, err
		}
		b.sent++
		s.unacked++
		s.unackedBytes += len(m.Data)
		s.m.SinkInflight.Inc()
		return nil, nil
	}
	b := s.fastOpen
	if b == nil || !m.CheckLastSeq {
		// On its own: a batch of one is a single publish.
		if b != nil {
			s.dropFast(b)
		}
		return s.publishOne(m, header)
	}
	s.fastOpen = nil
	p := s.take()
	p.started, p.size, p.subject, p.discGen = time.Now(), len(m.Data), m.Subject, s.discGen
	p.covers, p.coversBytes = s.unacked, s.unackedBytes
	s.unacked, s.unackedBytes = 0, 0
	p.fastMsgs = b.sent + 1
	s.mu.Lock()
	p.state = slotInFlight
	p.fast = b
	b.commit, b.commitGen, b.commitSeq = p, p.gen, b.sent+1
	if b.ended {
		s.resolveFastLocked(b)
	}
	s.mu.Unlock()
	if err := s.send(m, header, s.fastReply(b, b.sent+1, fastOpCommit)); err != nil {
		s.mu.Lock()
		b.commit = nil
		p.fast = nil
		delete(s.fastBatches, b.id)
		s.mu.Unlock()
		s.m.SinkInflight.Sub(float64(p.covers))
		s.release(p)
		return nil, err
	}
	b.sent++
	s.m.SinkInflight.Inc()
	return p, nil
}

// dropFast forgets b, left without a commit: the server drops it after its
// batch timeout; what it stored stays stored.
func (s *Sink) dropFast(b *fastBatch) {
	if s.fastOpen == b {
		s.fastOpen = nil
	}
	s.mu.Lock()
	delete(s.fastBatches, b.id)
	s.mu.Unlock()
}

// onFastReply records a reply to a fast batch and resolves its commit when
// it ends the batch. It runs on the subscription's goroutine.
func (s *Sink) onFastReply(msg *nats.Msg) {
	// <inbox>.<batch id>.<flow>.<gap>.<seq>.<op>.$FI
	if len(msg.Subject) <= len(s.fastInbox)+1 {
		return
	}
	id, _, ok := strings.Cut(msg.Subject[len(s.fastInbox)+1:], ".")
	if !ok {
		return
	}
	var flow struct {
		Type  string              `json:"type"`
		Seq   uint64              `json:"seq"`
		Error *jetstream.APIError `json:"error"`
	}
	isFlow := len(msg.Data) > 8 && strings.HasPrefix(string(msg.Data[:9]), `{"type":"`)
	if isFlow {
		if err := json.Unmarshal(msg.Data, &flow); err != nil {
			return
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	b, ok := s.fastBatches[id]
	if !ok || b.ended {
		return
	}
	switch {
	case isFlow && flow.Type == "err":
		if b.refused == 0 && flow.Error != nil {
			b.refused, b.refusal = flow.Seq, flow.Error
		}
		return
	case isFlow:
		// Flow acks and gap reports: the commit's PubAck says it all.
		return
	}
	b.ended = true
	b.end, b.endErr = decodeReply(msg, s.cfg.Stream)
	if b.commit != nil {
		s.resolveFastLocked(b)
	}
}

// resolveFastLocked resolves b's commit with how b ended; s.mu is held.
func (s *Sink) resolveFastLocked(b *fastBatch) {
	p := b.commit
	delete(s.fastBatches, b.id)
	b.commit = nil
	if p.gen != b.commitGen || p.state != slotInFlight {
		return
	}
	p.fast = nil
	switch {
	case b.endErr == nil && b.end.Count >= b.commitSeq:
		p.ack = b.end
		// A duplicate is reported only for a batch's first message.
		p.ack.Duplicate = b.end.Duplicate && b.commitSeq == 1
	case b.endErr != nil && b.commitSeq == 1:
		p.err = b.endErr
	default:
		var stored uint64
		if b.endErr == nil {
			stored = b.end.Count
		}
		cause := b.endErr
		if cause == nil {
			cause = b.refusal
		}
		if b.refused != 0 && b.refused == b.commitSeq {
			// The commit itself was refused.
			p.err = b.refusal
			break
		}
		// The cause is another message's: named, not wrapped, so that it
		// is not taken for the commit's own (too large, say).
		why := "no reason given"
		if cause != nil {
			why = cause.Error()
		}
		p.err = fmt.Errorf("%w after %d of its %d messages (%s): %w", errBatchEnded, stored, b.commitSeq, why, ErrWrongSequence)
	}
	p.state = slotResolved
	select {
	case s.resolved <- struct{}{}:
	default:
	}
}
