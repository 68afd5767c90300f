// Package relay is the pump between the replication slot and JetStream: it
// maps events to messages, publishes them pipelined in commit order, retries
// what failed without reordering, and acknowledges to the source only what
// JetStream stored.
package relay

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"github.com/outbox-relay/outbox-relay/internal/backoff"
	"github.com/outbox-relay/outbox-relay/internal/cdc"
	"github.com/outbox-relay/outbox-relay/internal/metrics"
	"github.com/outbox-relay/outbox-relay/internal/sink"
)

// Source delivers events and takes acknowledgements.
type Source interface {
	// Events delivers events in commit order and is closed when the source
	// stops.
	Events() <-chan cdc.Event
	// Ack records that ev is durably stored. It is safe for concurrent use
	// and acks may come in any order, each event once.
	Ack(ev cdc.Event)
}

// Publisher stores messages in the stream.
type Publisher interface {
	// Publish hands m to the broker without waiting for it to be stored;
	// the returned Pending resolves with the acknowledgement or an error.
	// Calls are made from one goroutine, in commit order, at most Window
	// outstanding; messages reach the stream in the order published.
	Publish(ctx context.Context, m sink.Message) (sink.Pending, error)
}

// Tailer reads the end of the stream. It blocks for at most its request
// timeout.
type Tailer interface {
	Tail(ctx context.Context) (sink.Tail, error)
}

// Poison policies.
const (
	OnPoisonStop       = "stop"
	OnPoisonDeadLetter = "dead-letter"
)

// ErrPoison marks an event that JetStream can never accept, under the stop
// policy.
var ErrPoison = errors.New("poison event")

// Config configures the pump.
type Config struct {
	// Window is how many publishes may be in flight at once.
	Window int
	// AckEvery asks JetStream to acknowledge only every AckEvery-th message
	// of a burst, and the last one; 0 or 1 asks for every message. See
	// Run for why an acknowledged message vouches for those before it.
	AckEvery int
	// ShutdownTimeout bounds the wait for in-flight publishes on shutdown.
	ShutdownTimeout time.Duration
	// RetryMin and RetryMax bound the jittered backoff after a failed publish.
	RetryMin, RetryMax time.Duration
	// OnPoison is OnPoisonStop or OnPoisonDeadLetter.
	OnPoison string
	// DeadLetterSubject receives poison events under OnPoisonDeadLetter.
	DeadLetterSubject string
	// MaxPayload is the server's max payload, for dead-letter messages.
	MaxPayload int64
}

// Validate reports every problem of c at once, each naming the setting.
func (c Config) Validate() error {
	var errs []error
	if c.Window < 1 {
		errs = append(errs, fmt.Errorf("publish-window: %d, must be at least 1", c.Window))
	}
	if c.AckEvery < 0 {
		errs = append(errs, fmt.Errorf("ack-every: %d, must be at least 1 (1: acknowledge every message)", c.AckEvery))
	}
	if c.ShutdownTimeout <= 0 {
		errs = append(errs, fmt.Errorf("shutdown-timeout: %s, must be positive", c.ShutdownTimeout))
	}
	if c.RetryMin <= 0 || c.RetryMax < c.RetryMin {
		errs = append(errs, fmt.Errorf("retry-min, retry-max: %s, %s: must be positive, min at most max", c.RetryMin, c.RetryMax))
	}
	switch c.OnPoison {
	case OnPoisonStop:
	case OnPoisonDeadLetter:
		if !sink.ValidSubject(c.DeadLetterSubject, false) {
			errs = append(errs, fmt.Errorf("dead-letter-subject: %q is not a valid subject (needed by --on-poison=dead-letter)", c.DeadLetterSubject))
		}
	default:
		errs = append(errs, fmt.Errorf("on-poison: %q, must be stop or dead-letter", c.OnPoison))
	}
	return errors.Join(errs...)
}

// inflight is one publish awaiting its PubAck.
type inflight struct {
	ev      cdc.Event
	pending sink.Pending // nil once it failed, when it was never sent, or when covered
	err     error        // why it failed
	// expect is the stream sequence the message must land at.
	expect uint64
	// covered is set for a message sent without asking for a PubAck: the
	// next message in the window that asked for one vouches for it.
	covered bool
}

// storedAsExpected reports whether ack shows the message stored at the
// sequence it expected, which vouches for every message before it.
func (f *inflight) storedAsExpected(ack sink.Ack) bool {
	return !ack.Duplicate && ack.Seq == f.expect
}

// unexpected is the failure of a message stored elsewhere than expected.
func (f *inflight) unexpected(ack sink.Ack) error {
	return fmt.Errorf("event %s stored at %d (duplicate %t), expected %d: %w", f.ev.ID, ack.Seq, ack.Duplicate, f.expect, sink.ErrWrongSequence)
}

// errUnconfirmed marks messages sent without a PubAck of their own that no
// acknowledged message vouches for (the pump stopped publishing before the
// next one that asked for an acknowledgement). Whether the stream holds them
// is read back from the stream, at once: nothing failed.
var errUnconfirmed = fmt.Errorf("sent without an acknowledgement and none vouches for it: %w", sink.ErrWrongSequence)

// failure is an event whose publish failed, and why.
type failure struct {
	ev  cdc.Event
	err error
}

// Pump moves events from a Source to a Publisher.
type Pump struct {
	src    Source
	pub    Publisher
	tail   Tailer
	mapper *Mapper
	cfg    Config
	log    *zap.Logger
	m      *metrics.Metrics

	window window
	replay []cdc.Event // events to publish again, ahead of new ones
	closed bool        // the source's channel is closed
	// sinceAck counts the messages sent without a PubAck since the last
	// one that asked for it.
	sinceAck int
	// careful, set after every read of the stream's end, asks for a PubAck
	// for every message until what was replayed is confirmed, so a failure
	// among the replayed messages is reported for the very message.
	careful bool

	// lastSeq is the stream sequence the next publish expects to follow.
	lastSeq uint64
	// stored is the position of the last event the stream is known to
	// hold; events at or before it are not published again.
	stored    cdc.Position
	hasStored bool
	retry     backoff.Backoff

	// progress (Unix nanoseconds) is when an event was last acknowledged.
	progress atomic.Int64
}

// New builds a Pump.
func New(src Source, pub Publisher, tail Tailer, mapper *Mapper, cfg Config, log *zap.Logger, m *metrics.Metrics) *Pump {
	return &Pump{
		src: src, pub: pub, tail: tail, mapper: mapper, cfg: cfg, log: log, m: m,
		retry:  backoff.Backoff{Min: cfg.RetryMin, Max: cfg.RetryMax},
		window: newWindow(cfg.Window),
	}
}

// Run publishes events until ctx is done or the source closes, then waits
// up to ShutdownTimeout for publishes in flight and acknowledges those
// stored. It returns nil on shutdown and an error wrapping ErrPoison when a
// poison event stops it.
//
// Order: every message carries the stream sequence it must follow
// (Nats-Expected-Last-Sequence), so JetStream refuses any message whose
// predecessor failed; after a failure the pump reads back what the stream
// holds and resumes right after it. The stream thus always holds a prefix of
// the commit order, with each event once, even when a replay comes after the
// duplicate window.
//
// The same check lets a PubAck vouch for the messages before it: a message
// stored at the sequence it expected proves that every message published
// before it was stored, in order, at the sequence it expected, since each
// expects its predecessor's. So in a burst only every AckEvery-th message
// (and the last of the burst, and the last that fits the window) asks for a
// PubAck; the others are sent without a reply subject, which saves the
// server a reply and the relay its handling for most messages. When a
// vouching message fails, the messages it covers are replayed with a PubAck
// each, after the stream's end has been read back.
func (p *Pump) Run(ctx context.Context) error {
	if err := p.resync(ctx); err != nil {
		return p.stop(ctx, err)
	}
	// With sparse acknowledgements the window is refilled only once a
	// whole group fits: refilled one slot at a time, every message would
	// be the last that fits, and ask for a PubAck.
	refill := min(max(p.cfg.AckEvery, 1), p.cfg.Window)
	for {
		if free := p.cfg.Window - p.window.Len(); free == p.cfg.Window || free >= refill {
			for p.window.Len() < p.cfg.Window {
				ev, ok := p.next(ctx, p.window.Len() == 0)
				if !ok {
					break
				}
				if err := p.publish(ctx, ev); err != nil {
					return p.stop(ctx, err)
				}
			}
		}
		if ctx.Err() != nil {
			return p.stop(ctx, nil)
		}
		if p.window.Len() == 0 {
			if p.closed && len(p.replay) == 0 {
				return nil
			}
			continue
		}
		if err := p.settleHead(ctx); err != nil {
			// A ctx error leaves what is unresolved to stop's shutdown
			// budget.
			return p.stop(ctx, err)
		}
	}
}

// settleHead waits for what settles the head of the window: its own PubAck,
// or, for messages sent without one, the PubAck of the first later message
// that asked (see Run). Stored where expected, the whole group is
// acknowledged; anything else is recovered from.
func (p *Pump) settleHead(ctx context.Context) error {
	k := 0
	for k < p.window.Len() && p.window.At(k).covered {
		k++
	}
	if k == p.window.Len() || p.window.At(k).pending == nil {
		return p.recover(ctx)
	}
	vouch := p.window.At(k)
	ack, err := vouch.pending.Wait(ctx)
	if err != nil && ctx.Err() != nil {
		return ctx.Err()
	}
	if err == nil && vouch.storedAsExpected(ack) {
		for i := 0; i <= k; i++ {
			p.acked(p.window.At(i).ev)
		}
		p.stored, p.hasStored = vouch.ev.Position, true
		p.window.Drop(k + 1)
		if len(p.replay) == 0 {
			p.careful = false
		}
		return nil
	}
	if err == nil && k == 0 {
		// Stored, but not where expected: a duplicate or another
		// writer. Later expectations are off; read the stream again.
		err = vouch.unexpected(ack)
		p.acked(vouch.ev)
		p.window.Drop(1)
		return p.retryAfter(ctx, p.settle(ctx), err)
	}
	if err == nil {
		// The messages it covers may be anywhere: replay them all.
		err = vouch.unexpected(ack)
	}
	vouch.pending, vouch.err = nil, err
	return p.recover(ctx)
}

// needsAck reports whether the message about to be published should ask
// for a PubAck: always while careful (which replayed events always are),
// else every AckEvery-th message, the last that fits the window, and the last
// of a burst (nothing more is ready to publish), so that no message waits for
// a later one that may not come.
func (p *Pump) needsAck() bool {
	return p.careful || p.sinceAck+1 >= p.cfg.AckEvery || p.window.Len()+1 >= p.cfg.Window ||
		len(p.src.Events()) == 0
}

// next returns the next event to publish, waiting for one only if block.
func (p *Pump) next(ctx context.Context, block bool) (cdc.Event, bool) {
	if len(p.replay) > 0 {
		ev := p.replay[0]
		p.replay = p.replay[1:]
		return ev, true
	}
	if p.closed {
		return cdc.Event{}, false
	}
	if block {
		select {
		case ev, ok := <-p.src.Events():
			p.closed = !ok
			return ev, ok
		case <-ctx.Done():
			return cdc.Event{}, false
		}
	}
	select {
	case ev, ok := <-p.src.Events():
		p.closed = !ok
		return ev, ok
	default:
		return cdc.Event{}, false
	}
}

// publish sends ev, or skips it when the stream already holds it. A poison
// event is handled by policy right away; an error returned ends the pump.
func (p *Pump) publish(ctx context.Context, ev cdc.Event) error {
	if p.hasStored && !p.stored.Less(ev.Position) {
		p.m.PumpSkipped.Inc()
		if ce := p.log.Check(zap.DebugLevel, "event already on the stream, skipped"); ce != nil {
			ce.Write(zap.String("event_id", ev.ID), zap.Stringer("lsn", ev.Position.CommitLSN))
		}
		p.src.Ack(ev)
		return nil
	}
	msg, err := p.mapper.Message(&ev)
	if err != nil {
		var poison *PoisonError
		if errors.As(err, &poison) {
			return p.poison(ctx, ev, poison)
		}
		return err
	}
	expect := p.lastSeq + 1
	msg.CheckLastSeq, msg.ExpectLastSeq = true, p.lastSeq
	covered := !p.needsAck()
	msg.NoReply = covered
	pending, err := p.pub.Publish(ctx, msg)
	if err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		// Not sent: queue it behind the window and recover as for a
		// failed PubAck.
		p.window.Push(inflight{ev: ev, err: err})
		return p.recover(ctx)
	}
	p.lastSeq = expect
	p.window.Push(inflight{ev: ev, pending: pending, expect: expect, covered: covered})
	if covered {
		p.sinceAck++
	} else {
		p.sinceAck = 0
	}
	// Check first: building the fields of a disabled log line costs
	// allocations on the hottest path.
	if ce := p.log.Check(zap.DebugLevel, "event published"); ce != nil {
		ce.Write(zap.String("event_id", ev.ID), zap.String("subject", msg.Subject))
	}
	return nil
}

// acked passes a stored event's acknowledgement on to the source.
func (p *Pump) acked(ev cdc.Event) {
	p.src.Ack(ev)
	p.retry.Reset()
	now := time.Now()
	p.progress.Store(now.UnixNano())
	p.m.PumpCommitToAck.Observe(now.Sub(ev.CommitTime).Seconds())
	p.m.PumpLastProgress.Set(float64(now.UnixNano()) / 1e9)
}

// LastProgress returns when an event was last acknowledged (the zero time
// if none was). Safe for concurrent use.
func (p *Pump) LastProgress() time.Time {
	n := p.progress.Load()
	if n == 0 {
		return time.Time{}
	}
	return time.Unix(0, n)
}

// settle waits for every publish still in the window, acknowledges the ones
// stored and returns the others, in order, with why they failed. A message
// sent without a PubAck counts as stored only when the message vouching for
// it was stored where expected; else it fails with errUnconfirmed, and is
// published again (with a PubAck) unless the stream turns out to hold it. When ctx ends first, the unresolved
// publishes stay in the window for stop to wait on.
func (p *Pump) settle(ctx context.Context) []failure {
	var failed []failure
	start := 0 // the first message the next voucher vouches for
	for i := range p.window.Len() {
		f := p.window.At(i)
		if f.covered {
			continue
		}
		err := f.err
		stored := false
		if f.pending != nil {
			ack, werr := f.pending.Wait(ctx)
			if werr != nil && ctx.Err() != nil {
				p.window.Drop(start)
				return failed
			}
			err = werr
			// Alone, a stored message counts whatever its sequence (a
			// duplicate is stored); vouching needs the expected one.
			stored = werr == nil && (i == start || f.storedAsExpected(ack))
			if werr == nil && !stored {
				err = f.unexpected(ack)
			}
		}
		for j := start; j <= i; j++ {
			switch {
			case stored:
				p.acked(p.window.At(j).ev)
			case j < i:
				// Maybe stored before its voucher failed: the stream
				// says, once read back.
				failed = append(failed, failure{ev: p.window.At(j).ev, err: errUnconfirmed})
			default:
				failed = append(failed, failure{ev: f.ev, err: err})
			}
		}
		start = i + 1
	}
	for j := start; j < p.window.Len(); j++ {
		failed = append(failed, failure{ev: p.window.At(j).ev, err: errUnconfirmed})
	}
	p.window.Clear()
	return failed
}

// recover handles a failed publish in the window: it settles the window and
// deals with what failed.
func (p *Pump) recover(ctx context.Context) error {
	return p.retryAfter(ctx, p.settle(ctx), nil)
}

// retryAfter queues failed events for publishing again in order, ahead of
// everything else. The first failure decides what happens: a permanent one
// makes its event poison; any other is retried after a backoff (none for an
// ordering conflict, which has nothing to wait for), once the stream's end
// has been read back. cause, when set, is a failure of an event already
// handled (stored where not expected).
func (p *Pump) retryAfter(ctx context.Context, failed []failure, cause error) error {
	if ctx.Err() != nil {
		return ctx.Err()
	}
	if len(failed) > 0 {
		cause = failed[0].err
		if errors.Is(cause, sink.ErrPermanent) {
			p.replay = append(events(failed[1:]), p.replay...)
			if err := p.resync(ctx); err != nil {
				return err
			}
			return p.poison(ctx, failed[0].ev, &PoisonError{Reason: "too_large", Detail: cause.Error()})
		}
		p.replay = append(events(failed), p.replay...)
	}
	if cause != nil && !errors.Is(cause, sink.ErrWrongSequence) {
		delay := p.retry.Next()
		p.m.PumpRetries.Inc()
		p.log.Warn("publish failed, retrying", zap.Int("attempt", p.retry.Attempt()),
			zap.Duration("backoff", delay), zap.Error(cause))
		if !backoff.Sleep(ctx, delay) {
			return ctx.Err()
		}
	}
	return p.resync(ctx)
}

func events(failed []failure) []cdc.Event {
	evs := make([]cdc.Event, len(failed))
	for i, f := range failed {
		evs[i] = f.ev
	}
	return evs
}

// resync reads the stream's last sequence and last stored position, retrying
// until it succeeds or ctx is done.
func (p *Pump) resync(ctx context.Context) error {
	p.m.PumpResyncs.Inc()
	for {
		tail, err := p.tail.Tail(ctx)
		if err == nil {
			p.careful, p.sinceAck = true, 0
			p.lastSeq = tail.LastSeq
			if pos, ok := PositionFromHeader(tail.Header, p.mapper.Origin()); ok {
				p.stored, p.hasStored = pos, true
			}
			return nil
		}
		delay := p.retry.Next()
		p.m.PumpRetries.Inc()
		p.log.Warn("read stream tail failed, retrying", zap.Int("attempt", p.retry.Attempt()), zap.Duration("backoff", delay), zap.Error(err))
		if !backoff.Sleep(ctx, delay) {
			return ctx.Err()
		}
	}
}

// poison applies the poison policy to ev. Everything before ev is settled
// first, so a stop leaves every earlier event acknowledged.
func (p *Pump) poison(ctx context.Context, ev cdc.Event, reason *PoisonError) error {
	if p.window.Len() > 0 {
		failed := p.settle(ctx)
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if len(failed) > 0 {
			// An earlier event failed: deal with it first; ev comes
			// back in its turn.
			p.replay = append([]cdc.Event{ev}, p.replay...)
			return p.retryAfter(ctx, failed, nil)
		}
	}
	p.m.PumpPoisonEvents.WithLabelValues(reason.Reason).Inc()
	if p.cfg.OnPoison != OnPoisonDeadLetter {
		return fmt.Errorf("event %s at %s: %w: %w", ev.ID, ev.Position, ErrPoison, reason)
	}
	return p.deadLetter(ctx, ev, reason)
}

// deadLetter publishes ev to the dead-letter subject and waits for the
// acknowledgement, retrying transient failures.
func (p *Pump) deadLetter(ctx context.Context, ev cdc.Event, reason *PoisonError) error {
	msg := p.mapper.DeadLetter(&ev, p.cfg.DeadLetterSubject, reason, p.cfg.MaxPayload)
	// A dead-letter subject in the relay's own stream takes its place in
	// the sequence; one in another stream has sequences of its own.
	sameStream := p.mapper.Captured(p.cfg.DeadLetterSubject)
	for {
		expect := p.lastSeq + 1
		msg.CheckLastSeq, msg.ExpectLastSeq = sameStream, p.lastSeq
		pending, err := p.pub.Publish(ctx, msg)
		var ack sink.Ack
		if err == nil {
			ack, err = pending.Wait(ctx)
		}
		if err == nil {
			p.m.PumpDeadLettered.Inc()
			p.log.Warn("poison event dead-lettered", zap.String("event_id", ev.ID), zap.String("subject", p.cfg.DeadLetterSubject), zap.Error(reason))
			p.acked(ev)
			if !sameStream {
				return nil
			}
			if ack.Seq != expect || ack.Duplicate {
				return p.resync(ctx)
			}
			p.lastSeq = expect
			p.stored, p.hasStored = ev.Position, true
			return nil
		}
		if errors.Is(err, sink.ErrPermanent) {
			return fmt.Errorf("dead-letter event %s: %w: %w", ev.ID, ErrPoison, err)
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if !errors.Is(err, sink.ErrWrongSequence) {
			delay := p.retry.Next()
			p.m.PumpRetries.Inc()
			p.log.Warn("dead-letter publish failed, retrying", zap.String("event_id", ev.ID), zap.Int("attempt", p.retry.Attempt()), zap.Duration("backoff", delay), zap.Error(err))
			if !backoff.Sleep(ctx, delay) {
				return ctx.Err()
			}
		}
		if err := p.resync(ctx); err != nil {
			return err
		}
		if p.hasStored && !p.stored.Less(ev.Position) {
			// Stored although its acknowledgement was lost.
			p.m.PumpDeadLettered.Inc()
			p.log.Warn("poison event dead-lettered", zap.String("event_id", ev.ID), zap.String("subject", p.cfg.DeadLetterSubject), zap.Error(reason))
			p.acked(ev)
			return nil
		}
	}
}

// stop lets the publishes in flight finish within ShutdownTimeout,
// acknowledges the stored ones and returns err; an error caused by ctx
// ending is a shutdown, not a failure, and becomes nil.
func (p *Pump) stop(ctx context.Context, err error) error {
	if ctx.Err() != nil && err != nil && errors.Is(err, ctx.Err()) {
		err = nil
	}
	if p.window.Len() > 0 {
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), p.cfg.ShutdownTimeout)
		defer cancel()
		// What is stored is acknowledged; the rest the next run replays.
		_ = p.settle(sctx)
		p.window.Clear()
	}
	return err
}
