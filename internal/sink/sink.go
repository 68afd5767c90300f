// Package sink publishes messages to NATS JetStream and reports what the
// server stored. It knows nothing of PostgreSQL positions, retries or the
// outbox table.
package sink

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/outbox-relay/outbox-relay/internal/metrics"
)

// Message is one message to store. ExpectLastSeq, when CheckLastSeq is set,
// makes JetStream refuse the message unless the stream's last sequence is
// exactly that value, so no message can be stored out of order.
type Message struct {
	Subject string
	ID      string
	Data    []byte
	// Header is encoded before Publish returns and not kept, so a caller
	// may reuse one map for every message. Publish sets Nats-Msg-Id,
	// Nats-Expected-Last-Sequence and Nats-Expected-Last-Msg-Id in it.
	Header        nats.Header
	CheckLastSeq  bool
	ExpectLastSeq uint64
	// ExpectLastMsgID, when set, makes JetStream refuse the message unless
	// the last message the stream stored carries that Nats-Msg-Id: proof
	// of identity that sequence arithmetic cannot give when others write
	// to the stream too. Only for streams with one replica (see
	// StreamReader.LastMsgID).
	ExpectLastMsgID string
	// NoReply sends the message without asking for a PubAck: Publish
	// returns a nil Pending, and the next message that asks for one
	// accounts for it in the metrics when it is stored.
	NoReply bool
	// BatchID, when set, makes the message the BatchSeq-th (from 1) of an
	// atomic batch (Nats-Batch-Id, Nats-Batch-Sequence): JetStream stages
	// it and stores the batch whole, or none of it, when the message with
	// BatchCommit (Nats-Batch-Commit) arrives. A staged message asking for a
	// reply gets an Ack with Staged set; the commit's Ack is the last
	// message's, with Count the batch's size. Only the batch's first message
	// may carry an expected last sequence, which JetStream checks at the
	// commit; an expected last message id is refused in a batch.
	BatchID     string
	BatchSeq    uint64
	BatchCommit bool
	// BatchEOB, with BatchCommit, commits the batch with a message that is
	// not stored itself (Nats-Batch-Commit: eob): the batch is the messages
	// before it.
	BatchEOB bool
}

// Ack is JetStream's acknowledgement: the message is stored in Stream at Seq,
// or was already stored (Duplicate), in which case Seq is the stored copy's.
// For an atomic batch's message before its commit, Staged says that it was
// accepted into the batch, nothing stored yet; the commit's Ack is its own
// message's, the batch's last, and Count the batch's size.
type Ack struct {
	Stream    string
	Seq       uint64
	Duplicate bool
	Staged    bool
	Count     uint64
}

// Pending is a publish in flight.
type Pending interface {
	// Wait blocks until the message is acknowledged or fails, or ctx is
	// done. A failure wraps ErrPermanent when no retry can succeed,
	// ErrWrongSequence when the stream's last sequence was not the expected
	// one, and is transient otherwise (no PubAck within the publish timeout
	// included). A duplicate is a success. Call it from the goroutine that
	// published; after a ctx error it may be called again, after any other
	// outcome never.
	Wait(ctx context.Context) (Ack, error)
}

// Sink publishes messages to JetStream asynchronously over one NATS
// connection and matches the PubAcks to them itself. Publish and Wait are
// called from one goroutine.
//
// The client's own asynchronous publish (jetstream.PublishMsgAsync) makes a
// future with two channels, a map entry and a timer for every message and
// decodes every PubAck with encoding/json: at tens of thousands of messages a
// second that was a third of the relay's CPU. Here a publish takes a slot from
// a pool that lives as long as the Sink, each slot with a reply subject of its
// own; a PubAck is decoded by a small parser (decodePubAck); one timer serves
// the publish timeout of whichever publish is being waited for.
type Sink struct {
	nc    *nats.Conn
	cfg   Config
	m     *metrics.Metrics
	sub   *nats.Subscription
	inbox string // reply subjects are <inbox>.<slot index>.<slot generation>

	mu    sync.Mutex
	slots []*slot // by index, for the reply handler
	// resolved is signalled, without blocking, whenever a slot resolves.
	resolved chan struct{}

	// Used only by the publishing goroutine.
	free        []*slot
	msg         nats.Msg
	idValue     [1]string
	seqValue    [1]string
	lastIDValue [1]string
	batchID     [1]string
	batchSeq    [1]string
	timer       *time.Timer
	// disconnects, when set, gives a channel closed at the connection's
	// next disconnect; discGen counts the disconnects seen. A publish made
	// before a disconnect fails at once instead of waiting out
	// PublishTimeout for a PubAck that cannot come.
	disconnects  func() <-chan struct{}
	disconnected <-chan struct{}
	discGen      uint64
	// unacked and unackedBytes count the messages sent without a reply
	// since the last that asked for one.
	unacked      int
	unackedBytes int
	// batchBytes sums the payloads of the open atomic batch's messages,
	// counted as published with its commit; batchNoReply is set while
	// unacked counts messages of a batch (dropped, never stored, when the
	// batch is left without a commit).
	batchBytes   int
	batchNoReply bool

	// Fast batches (Config.FastBatch; see fastbatch.go): replies come to
	// fastInbox, batch ids start with fastPrefix and end with fastSeq;
	// fastOpen is the batch being sent, dropped at a disconnect (counted
	// by fastDiscGen). fastBatches, guarded by mu, are the batches whose
	// end is awaited.
	fast        bool
	fastInbox   string
	fastPrefix  string
	fastSeq     uint64
	fastSub     *nats.Subscription
	fastOpen    *fastBatch
	fastDiscGen uint64
	fastBatches map[string]*fastBatch
}

// slotState is where a slot is in its life; slots are reused.
type slotState uint8

const (
	slotFree     slotState = iota // in the free list
	slotInFlight                  // published, no reply yet
	slotResolved                  // reply decoded into ack and err, not yet taken by Wait
)

// slot is one publish in flight; it implements Pending.
type slot struct {
	sink  *Sink
	index int

	// Guarded by sink.mu. gen changes when a publish times out, so that a
	// late reply cannot resolve the slot's next publish.
	gen   uint64
	reply string
	state slotState
	ack   Ack
	err   error

	// Used only by the publishing goroutine.
	started time.Time
	size    int
	subject string
	discGen uint64
	// covers and coversBytes are the messages sent without a reply just
	// before this one: stored when this one is stored where expected.
	covers      int
	coversBytes int
	// staged marks an atomic batch's message before its commit, which the
	// server answers with an empty reply; batchMsgs and batchBytes are a
	// commit's batch, stored with it.
	staged     bool
	batchMsgs  uint64
	batchBytes int
	// fast is the fast batch this slot commits, until resolved (guarded
	// by sink.mu); fastMsgs its size.
	fast     *fastBatch
	fastMsgs uint64
}

// New builds a Sink publishing over nc. It subscribes to the sink's reply
// subjects; Close ends that.
func New(nc *nats.Conn, cfg Config, m *metrics.Metrics) (*Sink, error) {
	s := &Sink{
		nc: nc, cfg: cfg, m: m,
		inbox:    nc.NewRespInbox(),
		resolved: make(chan struct{}, 1),
		timer:    time.NewTimer(time.Hour),
	}
	s.timer.Stop()
	sub, err := nc.Subscribe(s.inbox+".*.*", s.onReply)
	if err != nil {
		return nil, fmt.Errorf("subscribe to publish replies: %w", err)
	}
	// The pump bounds what is in flight; a reply dropped for a slow
	// consumer would only turn into a timeout.
	if err := sub.SetPendingLimits(-1, -1); err != nil {
		_ = sub.Unsubscribe()
		return nil, fmt.Errorf("subscribe to publish replies: %w", err)
	}
	s.sub = sub
	if cfg.FastBatch {
		s.fast = true
		if err := s.startFastBatches(); err != nil {
			_ = sub.Unsubscribe()
			return nil, err
		}
	}
	return s, nil
}

// FailOnDisconnect makes publishes in flight fail as soon as the connection
// drops, rather than after PublishTimeout; disconnects returns a channel
// closed at the next disconnect (Connection.Disconnected). Call it before the
// first Publish.
func (s *Sink) FailOnDisconnect(disconnects func() <-chan struct{}) {
	s.disconnects = disconnects
	s.disconnected = disconnects()
}

// noteDisconnects counts a disconnect that happened since the last look.
func (s *Sink) noteDisconnects() {
	if s.disconnected == nil {
		return
	}
	select {
	case <-s.disconnected:
		s.discGen++
		s.disconnected = s.disconnects()
	default:
	}
}

// Close stops receiving replies. Publishes still in flight stay unresolved
// until their timeout. Call it from the publishing goroutine, or after it.
func (s *Sink) Close() error {
	// Sent without a reply and never followed by one that asked: nothing
	// will settle them now.
	s.m.SinkInflight.Sub(float64(s.unacked))
	s.unacked, s.unackedBytes = 0, 0
	if s.sub == nil {
		return nil
	}
	if s.fastSub != nil {
		if err := s.fastSub.Unsubscribe(); err != nil && !errors.Is(err, nats.ErrConnectionClosed) && !errors.Is(err, nats.ErrBadSubscription) {
			return err
		}
	}
	err := s.sub.Unsubscribe()
	if errors.Is(err, nats.ErrConnectionClosed) || errors.Is(err, nats.ErrBadSubscription) {
		err = nil
	}
	return err
}

// Publish hands m to the client without waiting for it to be stored.
// Messages published in sequence over the one connection reach the stream in
// that sequence. Errors are classified as in Wait.
func (s *Sink) Publish(ctx context.Context, m Message) (Pending, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	header := m.Header
	if header == nil {
		header = nats.Header{}
	}
	if m.ID != "" {
		s.idValue[0] = m.ID
		header[jetstream.MsgIDHeader] = s.idValue[:]
	} else {
		delete(header, jetstream.MsgIDHeader)
	}
	if m.CheckLastSeq {
		s.seqValue[0] = strconv.FormatUint(m.ExpectLastSeq, 10)
		header[jetstream.ExpectedLastSeqHeader] = s.seqValue[:]
	} else {
		delete(header, jetstream.ExpectedLastSeqHeader)
	}
	if m.ExpectLastMsgID != "" {
		s.lastIDValue[0] = m.ExpectLastMsgID
		header[jetstream.ExpectedLastMsgIDHeader] = s.lastIDValue[:]
	} else {
		delete(header, jetstream.ExpectedLastMsgIDHeader)
	}
	s.setBatchHeaders(m, header)
	s.noteDisconnects()
	if s.fast {
		return s.publishFast(m, header)
	}
	return s.publishOne(m, header)
}

// publishOne sends m, with header, as a single publish.
func (s *Sink) publishOne(m Message, header nats.Header) (Pending, error) {
	if m.NoReply {
		if err := s.send(m, header, ""); err != nil {
			return nil, err
		}
		s.unacked++
		s.unackedBytes += len(m.Data)
		s.m.SinkInflight.Inc()
		return nil, nil
	}
	p := s.take()
	p.started, p.size, p.subject, p.discGen = time.Now(), len(m.Data), m.Subject, s.discGen
	p.staged = m.BatchID != "" && !m.BatchCommit
	if m.BatchCommit {
		p.batchMsgs, p.batchBytes = m.BatchSeq, s.batchBytes
		if m.BatchEOB {
			p.batchMsgs--
		}
		s.batchBytes = 0
	}
	// The messages sent without a reply are settled with this one, or,
	// should it not be sent, published again by the caller. A staged
	// message settles none: its batch's commit does.
	p.covers, p.coversBytes = 0, 0
	if !p.staged {
		p.covers, p.coversBytes = s.unacked, s.unackedBytes
		s.unacked, s.unackedBytes, s.batchNoReply = 0, 0, false
	}
	s.mu.Lock()
	p.state = slotInFlight // before sending: the reply may come at once
	reply := p.reply
	s.mu.Unlock()
	if err := s.send(m, header, reply); err != nil {
		s.m.SinkInflight.Sub(float64(p.covers))
		s.release(p)
		return nil, err
	}
	s.m.SinkInflight.Inc()
	return p, nil
}

// setBatchHeaders sets or clears the atomic batch headers of m, and keeps
// the open batch's accounting: a batch started while messages of an earlier
// one wait for a commit that will never come drops them from the in-flight
// count.
func (s *Sink) setBatchHeaders(m Message, header nats.Header) {
	if m.BatchID == "" {
		delete(header, headerBatchID)
		delete(header, headerBatchSeq)
		delete(header, headerBatchCommit)
		return
	}
	if m.BatchSeq <= 1 {
		if s.batchNoReply {
			s.m.SinkInflight.Sub(float64(s.unacked))
			s.unacked, s.unackedBytes, s.batchNoReply = 0, 0, false
		}
		s.batchBytes = 0
	}
	s.batchBytes += len(m.Data)
	if m.NoReply {
		s.batchNoReply = true
	}
	s.batchID[0] = m.BatchID
	s.batchSeq[0] = strconv.FormatUint(m.BatchSeq, 10)
	header[headerBatchID] = s.batchID[:]
	header[headerBatchSeq] = s.batchSeq[:]
	switch {
	case m.BatchEOB:
		header[headerBatchCommit] = eobValue
	case m.BatchCommit:
		header[headerBatchCommit] = commitValue
	default:
		delete(header, headerBatchCommit)
	}
}

// Atomic batch headers (ADR-50).
const (
	headerBatchID     = "Nats-Batch-Id"
	headerBatchSeq    = "Nats-Batch-Sequence"
	headerBatchCommit = "Nats-Batch-Commit"
)

// commitValue and eobValue are Nats-Batch-Commit's values for a commit that
// stores its own message too and for one that does not. Never written to.
var (
	commitValue = []string{"1"}
	eobValue    = []string{"eob"}
)

// send writes m to the connection with header and reply (none when empty).
// The message struct is reused: the client encodes it before returning.
func (s *Sink) send(m Message, header nats.Header, reply string) error {
	s.msg = nats.Msg{Subject: m.Subject, Reply: reply, Header: header, Data: m.Data}
	err := s.nc.PublishMsg(&s.msg)
	s.msg = nats.Msg{}
	if err != nil {
		return s.fail(fmt.Errorf("publish to %q: %w", m.Subject, err))
	}
	return nil
}

// take returns a free slot, making one when none is free.
func (s *Sink) take() *slot {
	if n := len(s.free); n > 0 {
		p := s.free[n-1]
		s.free = s.free[:n-1]
		return p
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	p := &slot{sink: s, index: len(s.slots)}
	p.reply = s.replySubject(p)
	s.slots = append(s.slots, p)
	return p
}

func (s *Sink) replySubject(p *slot) string {
	return s.inbox + "." + strconv.Itoa(p.index) + "." + strconv.FormatUint(p.gen, 10)
}

// release puts p back in the free list.
func (s *Sink) release(p *slot) {
	s.mu.Lock()
	p.state, p.ack, p.err = slotFree, Ack{}, nil
	p.fast = nil
	s.mu.Unlock()
	p.subject = ""
	p.staged, p.batchMsgs, p.batchBytes, p.fastMsgs = false, 0, 0, 0
	s.free = append(s.free, p)
}

// onReply resolves the slot a reply is addressed to. It runs on the
// subscription's goroutine.
func (s *Sink) onReply(msg *nats.Msg) {
	index, gen, ok := parseReplySubject(msg.Subject, len(s.inbox))
	if !ok {
		return
	}
	s.mu.Lock()
	if index < len(s.slots) {
		if p := s.slots[index]; p.gen == gen && p.state == slotInFlight {
			var ack Ack
			var err error
			if p.staged && len(msg.Data) == 0 && msg.Header.Get("Status") == "" {
				// Taken into its batch; stored with the commit.
				ack = Ack{Stream: s.cfg.Stream, Staged: true}
			} else {
				ack, err = decodeReply(msg, s.cfg.Stream)
			}
			p.ack, p.err, p.state = ack, err, slotResolved
			select {
			case s.resolved <- struct{}{}:
			default:
			}
		}
	}
	s.mu.Unlock()
}

// parseReplySubject reads the slot index and generation from a reply
// subject: the inbox (inboxLen bytes), then ".<index>.<gen>".
func parseReplySubject(subject string, inboxLen int) (index int, gen uint64, ok bool) {
	if len(subject) <= inboxLen+1 {
		return 0, 0, false
	}
	indexText, genText, ok := strings.Cut(subject[inboxLen+1:], ".")
	// Slots number no more than the publishes ever in flight at once; a
	// longer index is no reply to this sink.
	if !ok || len(indexText) > 9 {
		return 0, 0, false
	}
	index, err := strconv.Atoi(indexText)
	if err != nil || index < 0 {
		return 0, 0, false
	}
	gen, err = strconv.ParseUint(genText, 10, 64)
	return index, gen, err == nil
}

// decodeReply turns a reply into an Ack or the error it reports.
func decodeReply(msg *nats.Msg, stream string) (Ack, error) {
	if len(msg.Data) == 0 && msg.Header != nil {
		// A status message: 503 when no stream captures the subject.
		if status := msg.Header.Get("Status"); status == "503" {
			return Ack{}, jetstream.ErrNoStreamResponse
		} else if status != "" {
			return Ack{}, fmt.Errorf("publish reply with status %s %s", status, msg.Header.Get("Description"))
		}
	}
	return decodePubAck(msg.Data, stream)
}

// Wait implements Pending.
func (p *slot) Wait(ctx context.Context) (Ack, error) {
	s := p.sink
	deadline := p.started.Add(s.cfg.PublishTimeout)
	for {
		now := time.Now()
		s.mu.Lock()
		if p.state == slotResolved {
			ack, err := p.ack, p.err
			s.mu.Unlock()
			subject, started, size, covers, coversBytes := p.subject, p.started, p.size, p.covers, p.coversBytes
			batchMsgs, batchBytes, fastMsgs := p.batchMsgs, p.batchBytes, p.fastMsgs
			s.release(p)
			s.m.SinkInflight.Sub(float64(1 + covers))
			if err != nil {
				return Ack{}, s.fail(fmt.Errorf("publish to %q: %w", subject, err))
			}
			s.m.SinkPublishDuration.Observe(now.Sub(started).Seconds())
			if fastMsgs > 1 {
				s.m.SinkFastBatches.Inc()
			}
			switch {
			case ack.Staged:
			case batchMsgs > 0:
				// The whole batch is stored with its commit.
				s.m.SinkPublished.Add(float64(batchMsgs))
				s.m.SinkPublishedBytes.Add(float64(batchBytes))
			case ack.Duplicate:
				s.m.SinkDuplicates.Inc()
			default:
				// Those sent without a reply before it are counted with
				// it; should it not be where they expected it, they are
				// published again and counted then as well.
				s.m.SinkPublished.Add(float64(1 + covers))
				s.m.SinkPublishedBytes.Add(float64(size + coversBytes))
			}
			return ack, nil
		}
		if p.state != slotInFlight {
			s.mu.Unlock()
			return Ack{}, errors.New("sink: Wait on a publish already resolved")
		}
		left := deadline.Sub(now)
		if left <= 0 || p.discGen < s.discGen {
			// Retire this generation: a reply still on its way must
			// not resolve the slot's next publish.
			p.gen++
			p.reply = s.replySubject(p)
			if p.fast != nil {
				delete(s.fastBatches, p.fast.id)
			}
			s.mu.Unlock()
			subject, covers := p.subject, p.covers
			s.release(p)
			s.m.SinkInflight.Sub(float64(1 + covers))
			if left > 0 {
				return Ack{}, s.fail(fmt.Errorf("publish to %q: connection lost before the PubAck: %w", subject, nats.ErrDisconnected))
			}
			return Ack{}, s.fail(fmt.Errorf("publish to %q: no PubAck within %s: %w", subject, s.cfg.PublishTimeout, nats.ErrTimeout))
		}
		s.mu.Unlock()
		s.timer.Reset(left)
		select {
		case <-s.resolved:
			s.timer.Stop()
		case <-s.timer.C:
		case <-s.disconnected: // nil (never ready) without FailOnDisconnect
			s.timer.Stop()
			s.noteDisconnects()
		case <-ctx.Done():
			s.timer.Stop()
			// Still in flight: Wait may be called again, for example with
			// the shutdown budget.
			return Ack{}, ctx.Err()
		}
	}
}

// fail classifies err, counts it by kind and wraps it accordingly.
func (s *Sink) fail(err error) error {
	kind, class := Classify(err)
	s.m.SinkPublishErrors.WithLabelValues(kind).Inc()
	if class != nil {
		return fmt.Errorf("%w: %w", class, err)
	}
	return err
}

// ErrPermanent marks a publish that can never succeed as it is: the message
// is too large for the server or the stream.
var ErrPermanent = errors.New("permanent publish failure")

// ErrWrongSequence marks a publish refused because the stream's last message
// was not the one expected (by sequence or by message id): an earlier message
// failed, or someone else wrote to the stream.
var ErrWrongSequence = errors.New("stream last sequence not as expected")

// ErrBatchDuplicate marks an atomic batch JetStream refused whole because a
// message id in it is in the stream's duplicate window, or twice in the
// batch. The server does not say which.
var ErrBatchDuplicate = errors.New("atomic batch holds a message id already stored")

// ErrBatchTooLarge marks an atomic batch with more messages than the
// server's max_batch_size; BatchLimit reads the limit from the error.
var ErrBatchTooLarge = errors.New("atomic batch larger than the server allows")

// ErrBatchUnsupported marks an atomic batch the stream will not take as the
// relay sends it (atomic publishing turned off on the stream, say): no retry
// helps.
var ErrBatchUnsupported = errors.New("atomic batch refused by the stream")

// BatchLimit returns the server's largest atomic batch named by an error
// wrapping ErrBatchTooLarge ("atomic publish batch is too large: 1000").
func BatchLimit(err error) (int, bool) {
	var apiErr *jetstream.APIError
	if !errors.As(err, &apiErr) || apiErr.ErrorCode != errCodeBatchTooLarge {
		return 0, false
	}
	_, text, ok := strings.Cut(apiErr.Description, ": ")
	if !ok {
		return 0, false
	}
	n, err := strconv.Atoi(strings.TrimSpace(text))
	return n, err == nil && n > 0
}

// Classify names the kind of a publish error (a label of
// outbox_relay_sink_publish_errors_total) and returns ErrPermanent,
// ErrWrongSequence or nil for a transient failure.
func Classify(err error) (kind string, class error) {
	var apiErr *jetstream.APIError
	switch {
	case errors.Is(err, nats.ErrMaxPayload):
		return "too_large", ErrPermanent
	case errors.Is(err, errBatchEnded):
		return "wrong_sequence", ErrWrongSequence
	case errors.As(err, &apiErr):
		switch apiErr.ErrorCode {
		case jetstream.JSErrCodeStreamWrongLastSequence, jetstream.JSErrCodeStreamWrongLastSequenceConstant, errCodeWrongLastMsgID:
			return "wrong_sequence", ErrWrongSequence
		case errCodeMessageSizeExceedsMaximum, errCodeHeaderSizeExceedsMaximum:
			return "too_large", ErrPermanent
		case errCodeBatchDuplicate:
			return "server", ErrBatchDuplicate
		case errCodeBatchTooLarge:
			return "server", ErrBatchTooLarge
		case errCodeAtomicDisabled, errCodeBatchUnsupportedHeader, errCodeBatchInvalidID, errCodeBatchInvalidCommit:
			return "server", ErrBatchUnsupported
		}
		return "server", nil
	case errors.Is(err, nats.ErrTimeout), errors.Is(err, context.DeadlineExceeded):
		return "timeout", nil
	case errors.Is(err, jetstream.ErrNoStreamResponse), errors.Is(err, nats.ErrNoResponders):
		return "no_responders", nil
	case errors.Is(err, nats.ErrDisconnected), errors.Is(err, nats.ErrConnectionClosed),
		errors.Is(err, nats.ErrConnectionDraining), errors.Is(err, nats.ErrConnectionReconnecting),
		errors.Is(err, nats.ErrReconnectBufExceeded):
		return "connection", nil
	}
	return "other", nil
}

// JetStream's error codes for a message it will never store as it is.
const (
	// errCodeMessageSizeExceedsMaximum is JSStreamMessageExceedsMaximumErr:
	// over the stream's max_msg_size.
	errCodeMessageSizeExceedsMaximum jetstream.ErrorCode = 10054
	// errCodeHeaderSizeExceedsMaximum is JSStreamHeaderExceedsMaximumErr:
	// a header block over 64 KiB, whatever max_payload allows.
	errCodeHeaderSizeExceedsMaximum jetstream.ErrorCode = 10097
)

// JetStream's error codes for atomic batches (nats-server 2.12+).
const (
	// errCodeAtomicDisabled is JSAtomicPublishDisabledErr: the stream does
	// not allow atomic publishing.
	errCodeAtomicDisabled jetstream.ErrorCode = 10174
	// errCodeBatchUnsupportedHeader is
	// JSAtomicPublishUnsupportedHeaderBatchErr (Nats-Expected-Last-Msg-Id).
	errCodeBatchUnsupportedHeader jetstream.ErrorCode = 10177
	// errCodeBatchInvalidID is JSAtomicPublishInvalidBatchIDErr: over 64
	// characters.
	errCodeBatchInvalidID jetstream.ErrorCode = 10179
	// errCodeBatchTooLarge is JSAtomicPublishTooLargeBatchErrF.
	errCodeBatchTooLarge jetstream.ErrorCode = 10199
	// errCodeBatchInvalidCommit is JSAtomicPublishInvalidBatchCommitErr.
	errCodeBatchInvalidCommit jetstream.ErrorCode = 10200
	// errCodeBatchDuplicate is JSAtomicPublishContainsDuplicateMessageErr.
	errCodeBatchDuplicate jetstream.ErrorCode = 10201
)
