// Package sink publishes messages to NATS JetStream and reports what the
// server stored. It knows nothing of PostgreSQL positions, retries or the
// outbox table.
package sink

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"

	"github.com/outbox-relay/outbox-relay/internal/metrics"
)

// Message is one message to store. ExpectLastSeq, when CheckLastSeq is set,
// makes JetStream refuse the message unless the stream's last sequence is
// exactly that value, so no message can be stored out of order.
type Message struct {
	Subject       string
	ID            string
	Data          []byte
	Header        nats.Header
	CheckLastSeq  bool
	ExpectLastSeq uint64
}

// Ack is JetStream's acknowledgement: the message is stored in Stream at Seq,
// or was already stored (Duplicate), in which case Seq is the stored copy's.
type Ack struct {
	Stream    string
	Seq       uint64
	Duplicate bool
}

// jetStream is the one thing the sink needs from the NATS client.
type jetStream interface {
	PublishMsgAsync(msg *nats.Msg, opts ...jetstream.PublishOpt) (jetstream.PubAckFuture, error)
}

// Sink publishes messages asynchronously. Publish is called from one
// goroutine; the Pendings it returns may be waited on from that goroutine.
type Sink struct {
	js  jetStream
	cfg Config
	log *zap.Logger
	m   *metrics.Metrics
}

// New builds a Sink that publishes through js.
func New(js jetStream, cfg Config, log *zap.Logger, m *metrics.Metrics) *Sink {
	return &Sink{js: js, cfg: cfg, log: log, m: m}
}

// Pending is a publish in flight.
type Pending interface {
	// Wait blocks until the message is acknowledged or fails, or ctx is
	// done. A failure wraps ErrPermanent when no retry can succeed,
	// ErrWrongSequence when the stream's last sequence was not the expected
	// one, and is transient otherwise. A duplicate is a success. Call it
	// from the goroutine that published; after a ctx error it may be
	// called again.
	Wait(ctx context.Context) (Ack, error)
}

// pending is a publish in flight through the client.
type pending struct {
	sink    *Sink
	future  jetstream.PubAckFuture
	started time.Time
	size    int
}

// Publish hands m to the client without waiting for it to be stored. It
// blocks only when the client's own outstanding-publish limit is reached.
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
		header[jetstream.MsgIDHeader] = []string{m.ID}
	}
	if m.CheckLastSeq {
		header[jetstream.ExpectedLastSeqHeader] = []string{strconv.FormatUint(m.ExpectLastSeq, 10)}
	}
	msg := &nats.Msg{Subject: m.Subject, Data: m.Data, Header: header}
	started := time.Now()
	future, err := s.js.PublishMsgAsync(msg)
	if err != nil {
		return nil, s.fail(fmt.Errorf("publish to %q: %w", m.Subject, err))
	}
	s.m.SinkInflight.Inc()
	return &pending{sink: s, future: future, started: started, size: len(m.Data)}, nil
}

// Wait implements Pending.
func (p *pending) Wait(ctx context.Context) (Ack, error) {
	s := p.sink
	select {
	case pa := <-p.future.Ok():
		s.m.SinkInflight.Dec()
		s.m.SinkPublishDuration.Observe(time.Since(p.started).Seconds())
		if pa.Duplicate {
			s.m.SinkDuplicates.Inc()
		} else {
			s.m.SinkPublished.Inc()
			s.m.SinkPublishedBytes.Add(float64(p.size))
		}
		return Ack{Stream: pa.Stream, Seq: pa.Sequence, Duplicate: pa.Duplicate}, nil
	case err := <-p.future.Err():
		s.m.SinkInflight.Dec()
		return Ack{}, s.fail(fmt.Errorf("publish to %q: %w", p.future.Msg().Subject, err))
	case <-ctx.Done():
		// Still in flight: Wait may be called again, for example with the
		// shutdown budget.
		return Ack{}, ctx.Err()
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

// ErrWrongSequence marks a publish refused because the stream's last
// sequence was not the one expected: an earlier message failed, or someone
// else wrote to the stream.
var ErrWrongSequence = errors.New("stream last sequence not as expected")

// Classify names the kind of a publish error (a label of
// outbox_relay_sink_publish_errors_total) and returns ErrPermanent,
// ErrWrongSequence or nil for a transient failure.
func Classify(err error) (kind string, class error) {
	var apiErr *jetstream.APIError
	switch {
	case errors.Is(err, nats.ErrMaxPayload):
		return "too_large", ErrPermanent
	case errors.As(err, &apiErr):
		switch apiErr.ErrorCode {
		case jetstream.JSErrCodeStreamWrongLastSequence, jetstream.JSErrCodeStreamWrongLastSequenceConstant:
			return "wrong_sequence", ErrWrongSequence
		case errCodeMessageSizeExceedsMaximum:
			return "too_large", ErrPermanent
		}
		return "server", nil
	case errors.Is(err, jetstream.ErrAsyncPublishTimeout), errors.Is(err, nats.ErrTimeout), errors.Is(err, context.DeadlineExceeded):
		return "timeout", nil
	case errors.Is(err, jetstream.ErrNoStreamResponse), errors.Is(err, nats.ErrNoResponders):
		return "no_responders", nil
	case errors.Is(err, nats.ErrDisconnected), errors.Is(err, nats.ErrConnectionClosed),
		errors.Is(err, nats.ErrConnectionDraining), errors.Is(err, nats.ErrConnectionReconnecting),
		errors.Is(err, jetstream.ErrTooManyStalledMsgs):
		return "connection", nil
	}
	return "other", nil
}

// errCodeMessageSizeExceedsMaximum is JetStream's JSStreamMessageExceedsMaximumErr.
const errCodeMessageSizeExceedsMaximum jetstream.ErrorCode = 10054
