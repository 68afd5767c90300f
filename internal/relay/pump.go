// Package relay is the pump between the replication slot and JetStream: it
// maps events to messages, publishes them pipelined in commit order, retries
// what failed without reordering, and acknowledges to the source only what
// JetStream stored.
package relay

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
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

// Poison policies.
const (
	OnPoisonStop       = "stop"
	OnPoisonDeadLetter = "dead-letter"
)

// Contention on a one-replica stream: when read-backs that find another
// writer's message after the relay's own come contentionBreaks times within
// contentionWindow, or with fewer events stored across them than one
// publish window (on a loaded machine a break takes long, and breaks come
// seldom by the clock but still after every few events), the other writers
// break the relay's chains of messages faster than they store events (each
// break costs the refused rest of a burst, a read-back and a round trip), so
// the pump publishes one message at a time, which no other writer can break,
// for contentionSerial, then tries chains again.
const (
	contentionBreaks = 3
	contentionWindow = 2 * time.Second
	contentionSerial = 10 * time.Second
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
	// SharedStream publishes one message at a time from the start on a
	// replicated stream (see orderSerial); otherwise that happens only once
	// another writer is seen.
	SharedStream bool
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
	// MarkSaveInterval is the least time between two writes of the
	// high-water mark while events flow.
	MarkSaveInterval time.Duration
	// UncertainWait bounds how long the pump waits for events to arrive
	// when it must look at the next ones to decide which are stored.
	UncertainWait time.Duration
	// Atomic publishes each transaction as one atomic batch, stored whole
	// or not at all (see publishAtomic); the source must mark the last
	// event of each transaction (cdc.Event.TxnEnd).
	Atomic bool
	// BatchMaxMessages and BatchMaxBytes bound an atomic batch: the
	// server's max_batch_size, and a share of what the source holds of
	// events not yet acknowledged (0: no limit on bytes). A transaction
	// over them follows OnLargeTransaction.
	BatchMaxMessages int
	BatchMaxBytes    int64
	// OnLargeTransaction is LargeTransactionStop or LargeTransactionSplit.
	OnLargeTransaction string

	// serialSpell replaces contentionSerial in tests.
	serialSpell time.Duration
	// oneTxnPerBatch, in tests, keeps every transaction in an atomic
	// batch of its own (see joinNext).
	oneTxnPerBatch bool
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
	if c.Atomic {
		errs = append(errs, c.validateAtomic()...)
	}
	return errors.Join(errs...)
}

// inflight is one publish awaiting its PubAck.
type inflight struct {
	ev      cdc.Event
	pending sink.Pending // nil when covered or never sent
	sent    bool
	err     error // why it could not be sent
	// expect is the stream sequence the message must land at (0: no
	// expectation, orderSerial).
	expect uint64
	// covered is set for a message sent without asking for a PubAck: the
	// next message in the window that asked for one vouches for it.
	covered bool
	// settled holds the PubAck or failure once waited for.
	waited bool
	ack    sink.Ack
	werr   error
	// An atomic batch's message (Config.Atomic): its place in the batch,
	// whether it commits the batch, and the poison reason when it is the
	// event's dead letter.
	batchSeq   uint64
	commit     bool
	split      bool // commits a batch of a transaction too large for one
	deadLetter *PoisonError
}

// Pump moves events from a Source to a Publisher.
type Pump struct {
	src    Source
	pub    Publisher
	marks  *Watermark
	mapper *Mapper
	cfg    Config
	log    *zap.Logger
	m      *metrics.Metrics

	window window
	replay []cdc.Event // events to publish again, ahead of new ones
	// ahead are events read from the source to see whether the next
	// transaction joins the open atomic batch (joinNext), published
	// after replay and before the source's next.
	ahead  []cdc.Event
	closed bool // the source's channel is closed
	// sinceAck counts the messages sent without a PubAck since the last
	// one that asked for it.
	sinceAck int
	// careful, set after every read of the stream, asks for a PubAck for
	// every message until what was replayed is confirmed, so a failure
	// among the replayed messages is reported for the very message.
	careful bool

	// order is how messages are kept in order (see ordering); window and
	// ackEvery are the effective settings for it.
	order      ordering
	windowSize int
	ackEvery   int
	// lastSeq is the stream sequence the next publish expects to follow,
	// lastID the message id of the relay's message there ("" right after
	// reading the stream: the next message starts a new chain).
	lastSeq uint64
	lastID  string
	// mark is what the stream is known to hold of the relay's events;
	// chainBase is the stream's last sequence when the current chain of
	// messages started (its first message expected it).
	mark      Mark
	chainBase uint64
	// breaks are the recent read-backs that found another writer's message
	// after the relay's own on a one-replica stream; until serialUntil the
	// pump publishes one message at a time there (see contentionBreaks).
	breaks      []contentionBreak
	serialUntil time.Time
	// storedCount counts the events stored, for contentionBreak.
	storedCount uint64
	saver       *markSaver
	// uncertain counts events after mark the stream may hold although it
	// removed their messages; lastMsgID is its last stored message's id.
	uncertain int
	lastMsgID string
	info      sink.StreamInfo
	retry     backoff.Backoff
	// batch is the atomic batch being sent (Config.Atomic); batchMax the
	// most messages one may hold, lowered when the server says less;
	// poisoned the events known to be poison, counted once, whose dead
	// letters take their place in their batches.
	batch    openBatch
	batchMax int
	poisoned map[cdc.Position]*PoisonError
	// nonce and attempt (the reads of the stream so far) tell a batch sent
	// again from its earlier copies (see batchID).
	nonce   uint32
	attempt uint64

	// progress (Unix nanoseconds) is when an event was last acknowledged.
	progress atomic.Int64

	// onStored, when set, learns each event found stored (see OnStored).
	onStored func(ev cdc.Event, seq uint64)
}

// OnStored makes the pump call f with every event it finds stored on the
// stream and the stream sequence it is at (0 when unknown), right after
// acknowledging it to the source. f runs on the pump's goroutine and must
// not block. Call it before Run.
func (p *Pump) OnStored(f func(ev cdc.Event, seq uint64)) { p.onStored = f }

// New builds a Pump. marks reads and keeps the relay's high-water mark in
// the stream.
func New(src Source, pub Publisher, marks *Watermark, mapper *Mapper, cfg Config, log *zap.Logger, m *metrics.Metrics) *Pump {
	if cfg.MarkSaveInterval <= 0 {
		cfg.MarkSaveInterval = 250 * time.Millisecond
	}
	if cfg.UncertainWait <= 0 {
		cfg.UncertainWait = 5 * time.Second
	}
	return &Pump{
		src: src, pub: pub, marks: marks, mapper: mapper, cfg: cfg, log: log, m: m,
		retry:      backoff.Backoff{Min: cfg.RetryMin, Max: cfg.RetryMax},
		window:     newWindow(cfg.Window),
		windowSize: cfg.Window,
		ackEvery:   cfg.AckEvery,
		batchMax:   cfg.BatchMaxMessages,
		poisoned:   map[cdc.Position]*PoisonError{},
		nonce:      rand.Uint32(),
	}
}

// Run publishes events until ctx is done or the source closes, then waits
// up to ShutdownTimeout for publishes in flight and acknowledges those
// stored. It returns nil on shutdown and an error wrapping ErrPoison when a
// poison event stops it.
//
// Order and identity. The relay's events on the stream always form a prefix
// of commit order, each once, whoever else writes to the stream. On a stream
// with one replica every message expects both its predecessor's stream
// sequence and its message id (orderChain), so JetStream stores it only right
// after the relay's previous message: a message of another writer in between
// makes every later message of the burst be refused, and an acknowledged
// message proves that every message before it is stored, in order, and is
// the relay's own. So in a burst only every AckEvery-th message (and the last
// of the burst, and the last that fits the window) asks for a PubAck; the
// others are sent without a reply subject. On a replicated stream JetStream
// can check only the sequence before storing (see orderSequence and
// orderSerial).
//
// After any failure the pump reads back what the stream holds (the
// Watermark) and resumes right after the relay's last stored event; events at
// or before it are skipped, so a replay after the duplicate window is not
// stored again either.
func (p *Pump) Run(ctx context.Context) error {
	p.saver = newMarkSaver(p.marks, p.cfg.MarkSaveInterval, p.log, p.m)
	saverDone := make(chan struct{})
	saverCtx, stopSaver := context.WithCancel(context.WithoutCancel(ctx))
	go func() {
		defer close(saverDone)
		p.saver.run(saverCtx)
	}()
	defer func() {
		stopSaver()
		<-saverDone
	}()
	if err := p.resync(ctx, false); err != nil {
		return p.stop(ctx, err)
	}
	for {
		if err := p.resolveUncertain(ctx); err != nil {
			return p.stop(ctx, err)
		}
		// With sparse acknowledgements the window is refilled only once
		// a whole group fits: refilled one slot at a time, every message
		// would be the last that fits, and ask for a PubAck.
		refill := min(max(p.ackEvery, 1), p.windowSize)
		// An atomic batch being sent is finished whatever the window: its
		// messages are stored only with its commit. A new one waits while
		// atomicBatchesInFlight commits are in flight (see joinNext).
		if free := p.windowSize - p.window.Len(); free == p.windowSize || free >= refill || p.batch.open {
			for (p.window.Len() < p.windowSize || p.batch.open) && p.uncertain == 0 &&
				(p.batch.open || !p.cfg.Atomic || p.cfg.oneTxnPerBatch || p.window.Commits() < atomicBatchesInFlight) {
				ev, ok := p.next(ctx, p.window.Len() == 0 || p.awaitingBatch())
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
			if p.closed && len(p.replay) == 0 && len(p.ahead) == 0 && p.uncertain == 0 {
				return p.stop(ctx, nil)
			}
			continue
		}
		if p.cfg.Atomic {
			if err := p.settleBatch(ctx); err != nil {
				return p.stop(ctx, err)
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
// that asked. Stored where expected, the whole group is acknowledged; anything
// else settles the whole window and recovers.
func (p *Pump) settleHead(ctx context.Context) error {
	k := 0
	for k < p.window.Len() && p.window.At(k).covered {
		k++
	}
	if k == p.window.Len() || !p.window.At(k).sent {
		return p.recover(ctx)
	}
	vouch := p.window.At(k)
	ack, err := vouch.pending.Wait(ctx)
	if err != nil && ctx.Err() != nil {
		return ctx.Err()
	}
	vouch.waited, vouch.ack, vouch.werr = true, ack, err
	if err == nil && !ack.Duplicate && (vouch.expect == 0 || ack.Seq == vouch.expect) {
		// Proven: the voucher and, by the chain, every message before it,
		// right before it on the stream.
		for i := 0; i < k; i++ {
			p.stored(p.window.At(i).ev, ack.Seq-uint64(k-i))
		}
		p.stored(vouch.ev, ack.Seq)
		p.saver.set(&p.mark)
		p.window.Drop(k + 1)
		if len(p.replay) == 0 {
			p.careful = false
		}
		return nil
	}
	return p.recover(ctx)
}

// settleChainStart waits for the PubAck of the message that starts a chain
// (the only one in the window): stored, the chain goes on right behind it;
// anything else is recovered from, and the next message starts a chain
// again.
func (p *Pump) settleChainStart(ctx context.Context) error {
	f := p.window.At(p.window.Len() - 1)
	ack, err := f.pending.Wait(ctx)
	if err != nil && ctx.Err() != nil {
		return ctx.Err()
	}
	f.waited, f.ack, f.werr = true, ack, err
	if err != nil || ack.Duplicate {
		p.lastID = ""
		return p.recover(ctx)
	}
	p.stored(f.ev, ack.Seq)
	p.saver.set(&p.mark)
	p.lastSeq = ack.Seq
	p.window.Drop(1)
	return nil
}

// stored records that ev is on the stream, at seq: acknowledged to the
// source, and the mark moved to it.
func (p *Pump) stored(ev cdc.Event, seq uint64) {
	p.storedCount++
	p.acked(ev)
	if p.onStored != nil {
		p.onStored(ev, seq)
	}
	if len(p.poisoned) > 0 {
		delete(p.poisoned, ev.Position)
	}
	p.markStored(ev, seq)
}

// markStored moves the mark to ev, on the stream at seq.
func (p *Pump) markStored(ev cdc.Event, seq uint64) {
	if p.mark.IsHole(ev.Position) {
		p.mark.Holes = removePosition(p.mark.Holes, ev.Position)
	}
	if p.mark.Position.Less(ev.Position) {
		p.mark.Position, p.mark.Seq, p.mark.MsgID = ev.Position, seq, ev.ID
	}
}

// needsAck reports whether the message about to be published should ask
// for a PubAck: always while careful (which replayed events always are),
// else every ackEvery-th message, the last that fits the window, and the last
// of a burst (nothing more is ready to publish), so that no message waits for
// a later one that may not come.
func (p *Pump) needsAck() bool {
	return p.careful || p.sinceAck+1 >= p.ackEvery || p.window.Len()+1 >= p.windowSize ||
		(len(p.replay) == 0 && len(p.src.Events()) == 0)
}

// next returns the next event to publish, waiting for one only if block.
func (p *Pump) next(ctx context.Context, block bool) (cdc.Event, bool) {
	if len(p.replay) > 0 {
		ev := p.replay[0]
		p.replay = p.replay[1:]
		return ev, true
	}
	if len(p.ahead) > 0 {
		ev := p.ahead[0]
		p.ahead[0] = cdc.Event{} // let its buffers go once published
		p.ahead = p.ahead[1:]
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

// skip acknowledges ev without publishing it when the stream holds it.
func (p *Pump) skip(ev cdc.Event) bool {
	if !p.mark.Stored(ev.Position) {
		return false
	}
	if len(p.poisoned) > 0 {
		delete(p.poisoned, ev.Position)
	}
	p.m.PumpSkipped.Inc()
	if ce := p.log.Check(zap.DebugLevel, "event already on the stream, skipped"); ce != nil {
		ce.Write(zap.String("event_id", ev.ID), zap.Stringer("lsn", ev.Position.CommitLSN))
	}
	p.src.Ack(ev)
	return true
}

// publish sends ev, or skips it when the stream already holds it. A poison
// event is handled by policy right away; an error returned ends the pump.
func (p *Pump) publish(ctx context.Context, ev cdc.Event) error {
	if p.skip(ev) {
		return nil
	}
	if p.cfg.Atomic {
		return p.publishAtomic(ctx, ev)
	}
	msg, err := p.mapper.Message(&ev)
	if err != nil {
		var poison *PoisonError
		if errors.As(err, &poison) {
			return p.poison(ctx, ev, poison)
		}
		return err
	}
	if !p.serialUntil.IsZero() {
		// Off the per-event path unless the pump is in a serial spell.
		p.endContention(time.Now())
	}
	chainStart := p.order == orderChain && p.lastID == ""
	expect := p.expect(&msg)
	covered := !chainStart && !p.needsAck()
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
	p.lastSeq, p.lastID = expect, ev.ID
	p.window.Push(inflight{ev: ev, pending: pending, sent: true, expect: expect, covered: covered})
	if chainStart {
		// The messages after it expect its sequence: learn it first.
		return p.settleChainStart(ctx)
	}
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

// expect sets what msg expects of the stream, as the ordering asks, and
// returns the sequence it must then land at (0: any).
//
// orderChain: a message expects its predecessor's stream sequence and id,
// except the first after the stream was read back (lastID empty), which
// expects nothing at all. The pump knows then that every event before it is
// stored and none of its messages is in flight, so it may land anywhere, and
// the pump waits for its PubAck before sending more (see publish). A message
// of another writer in between makes the rest of a burst be refused, never a
// read-back's first message: with another writer publishing all the time,
// the relay still stores at least one event per read-back, and whole bursts
// between the other's messages. (With an expectation on the first message
// too, a steady other writer could refuse every one and starve the relay.)
//
// orderSequence: the stream sequence of the predecessor.
func (p *Pump) expect(msg *sink.Message) uint64 {
	switch {
	case p.order == orderChain && p.lastID == "":
		return 0
	case p.order == orderChain:
		msg.CheckLastSeq, msg.ExpectLastSeq, msg.ExpectLastMsgID = true, p.lastSeq, p.lastID
		return p.lastSeq + 1
	case p.order == orderSequence:
		msg.CheckLastSeq, msg.ExpectLastSeq = true, p.lastSeq
		return p.lastSeq + 1
	}
	return 0
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

// settle waits for every publish in the window that asked for a PubAck. It
// returns false when ctx ended first; the unresolved publishes stay in the
// window for stop to wait on.
func (p *Pump) settle(ctx context.Context) bool {
	for i := range p.window.Len() {
		f := p.window.At(i)
		if f.covered || !f.sent || f.waited {
			continue
		}
		ack, err := f.pending.Wait(ctx)
		if err != nil && ctx.Err() != nil {
			return false
		}
		f.waited, f.ack, f.werr = true, ack, err
	}
	return true
}

// failure is an event the stream does not (provably) hold, and why. In the
// atomic mode own says that err is the event's own message's (a refusal of
// that message) rather than its batch's, commit marks the last event of its
// batch, and deadLetter that the message was the event's dead letter.
type failure struct {
	ev         cdc.Event
	err        error
	own        bool
	commit     bool
	deadLetter bool
}

// errUnconfirmed marks a message sent without a PubAck of its own that no
// acknowledged message vouches for, or whose PubAck was lost. Whether the
// stream holds it is read back from the stream, at once: nothing failed.
var errUnconfirmed = fmt.Errorf("no acknowledgement proves it stored: %w", sink.ErrWrongSequence)

// collect settles the window, applies resolve's verdict (acknowledging what
// is stored) and empties the window, returning what is not known to be
// stored, in order. On a replicated stream where another writer's message
// took a refused one's place, it records the holes and turns to publishing
// one message at a time.
func (p *Pump) collect(ctx context.Context) ([]failure, error) {
	if !p.settle(ctx) {
		return nil, ctx.Err()
	}
	results := make([]result, p.window.Len())
	for i := range results {
		f := p.window.At(i)
		// A staged message's reply (atomic batches) proves nothing stored.
		results[i] = result{
			covered: f.covered, sent: f.sent, replied: f.waited && !f.ack.Staged, ack: f.ack, expect: f.expect, err: f.werr,
			commit: f.commit,
		}
		if !f.sent {
			results[i].err = f.err
		}
	}
	if p.order == orderSequence {
		p.verifyUnknown(ctx, results)
	}
	var verdict resolution
	if p.cfg.Atomic {
		verdict = resolveBatches(results, p.order)
		p.batch = openBatch{}
	} else {
		verdict = resolve(results, p.order)
	}
	if verdict.violation != nil {
		p.window.Clear()
		return nil, verdict.violation
	}
	var failed []failure
	lastStored := -1
	for i, fate := range verdict.fates {
		if fate == fateStored {
			lastStored = i
		}
	}
	var seqs []uint64
	var causes []error
	if p.cfg.Atomic {
		seqs, causes = landedBatches(results, verdict.fates), batchCauses(results)
	} else {
		seqs = landed(results, verdict.fates)
	}
	for i, fate := range verdict.fates {
		f := p.window.At(i)
		switch {
		case fate == fateStored && p.cfg.Atomic:
			p.storedInBatch(f, seqs[i])
		case fate == fateStored:
			seq := seqs[i]
			if f.waited && f.ack.Duplicate {
				if err := p.checkDuplicate(ctx, f.ev, f.ack); err != nil {
					p.window.Clear()
					return nil, err
				}
			}
			p.stored(f.ev, seq)
		default:
			err := f.werr
			if !f.sent {
				err = f.err
			}
			own := err != nil
			if causes != nil && err == nil {
				err = causes[i]
			}
			if fate == fateUnknown && (err == nil || f.covered) {
				err = errUnconfirmed
			}
			failed = append(failed, failure{ev: f.ev, err: err, own: own, commit: f.commit, deadLetter: f.deadLetter != nil})
		}
	}
	if verdict.broken {
		var err error
		if failed, err = p.recordHoles(ctx, failed, lastStored); err != nil {
			p.window.Clear()
			return nil, err
		}
	}
	p.window.Clear()
	p.saver.set(&p.mark)
	return failed, nil
}

// verifyUnknown reads back, on a replicated stream, the place each message
// whose PubAck was lost had to land at: there, the relay's message for the
// event proves it stored, anything else proves it not stored. Sequence
// arithmetic alone cannot tell, so without this a lost PubAck before a stored
// message would look like a broken order.
func (p *Pump) verifyUnknown(ctx context.Context, results []result) {
	for i := range results {
		res := &results[i]
		if !res.sent || res.expect == 0 || (res.replied && (res.err == nil || errors.Is(res.err, sink.ErrWrongSequence) || errors.Is(res.err, sink.ErrPermanent) ||
			(res.commit && refusal(res.err)))) {
			continue
		}
		h, found, err := p.marks.log.Header(ctx, res.expect)
		if err != nil || !found {
			continue
		}
		if pos, ok := PositionFromHeader(h, p.marks.Origin()); ok && pos == p.window.At(i).ev.Position {
			res.replied, res.ack, res.err = true, sink.Ack{Seq: res.expect}, nil
			continue
		}
		res.replied, res.err = true, fmt.Errorf("another message is at sequence %d: %w", res.expect, sink.ErrWrongSequence)
	}
}

// landed returns where each stored message of a settled window is: its
// PubAck's sequence, else the place it expected, else (a message proven by a
// later one of its chain) right before the next one.
func landed(results []result, fates []fate) []uint64 {
	seqs := make([]uint64, len(results))
	var next uint64 // where the next stored message is, 0: unknown
	for i := len(results) - 1; i >= 0; i-- {
		res := results[i]
		switch {
		case fates[i] != fateStored:
			next = 0
			continue
		case res.replied && res.err == nil:
			seqs[i] = res.ack.Seq
		case res.expect != 0:
			seqs[i] = res.expect
		case next > 1:
			seqs[i] = next - 1
		}
		next = seqs[i]
		if res.replied && res.err == nil && res.ack.Duplicate {
			next = 0 // its copy is elsewhere
		}
	}
	return seqs
}

// checkDuplicate makes sure a message JetStream reports as a duplicate was
// stored by this relay, for this event: another writer's message with the
// same Nats-Msg-Id would otherwise swallow the event.
func (p *Pump) checkDuplicate(ctx context.Context, ev cdc.Event, ack sink.Ack) error {
	h, found, err := p.marks.log.Header(ctx, ack.Seq)
	if err != nil || !found {
		// Removed since (retention), or unreadable now: JetStream's word
		// that a message with this id is stored stands.
		return nil
	}
	pos, ok := PositionFromHeader(h, p.marks.Origin())
	if ok && pos == ev.Position {
		return nil
	}
	return fmt.Errorf("event %s at %s: JetStream dropped it as a duplicate of the message at sequence %d, which is another event (origin %q, position %s): two events share the id; ids must be unique across everything that writes to the stream: %w",
		ev.ID, ev.Position, ack.Seq, h.Get(HeaderOrigin), h.Get(HeaderCommitLSN)+"#"+h.Get(HeaderCommitIndex), errOrderViolation)
}

// recordHoles handles a broken order on a replicated stream: failed events
// before the last stored one are holes when the stream does not hold them
// (a message of another writer took the place of one, and the burst after
// it was stored; a late copy of the event itself is no hole). Their order
// on the stream is lost; they are published again, ahead of everything
// else, and recorded first so that a crash cannot make them look stored.
// It returns the failed events still to publish.
func (p *Pump) recordHoles(ctx context.Context, failed []failure, lastStored int) ([]failure, error) {
	var stored map[cdc.Position]uint64
	for {
		var err error
		if stored, err = p.marks.OwnSince(ctx, p.chainBase); err == nil {
			break
		}
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		delay := p.retry.Next()
		p.log.Warn("read stream failed, retrying", zap.Int("attempt", p.retry.Attempt()), zap.Duration("backoff", delay), zap.Error(err))
		if !backoff.Sleep(ctx, delay) {
			return nil, ctx.Err()
		}
	}
	holes := 0
	rest := failed[:0]
	for _, f := range failed {
		if seq, ok := stored[f.ev.Position]; ok {
			p.stored(f.ev, seq)
			continue
		}
		if p.cfg.Atomic && errors.Is(f.err, sink.ErrBatchDuplicate) {
			// Its batch was refused for a copy of it the stream may have
			// removed since (retention): a late copy is no hole.
			seq, ok, err := p.storedCopy(ctx, f.ev)
			if err != nil {
				return nil, err
			}
			if ok {
				p.stored(f.ev, seq)
				continue
			}
		}
		rest = append(rest, f)
		if f.ev.Position.Less(p.mark.Position) {
			p.mark.Holes = append(p.mark.Holes, f.ev.Position)
			holes++
		}
	}
	if holes == 0 {
		return rest, nil
	}
	p.mark.Shared = true
	p.m.PumpReordered.Add(float64(holes))
	p.m.PumpStreamShared.Set(1)
	p.log.Error("another writer's message took the place of a refused event on the replicated stream; the events after it were stored first, so the refused events are published out of commit order; from now on the relay publishes one message at a time on this stream",
		zap.String("stream", p.marks.stream), zap.Int("events", holes), zap.Int("stored_after", lastStored+1))
	p.setOrder(orderSerial)
	return rest, p.flushMark(ctx)
}

// flushMark writes the mark now, retrying until it is durable or ctx ends.
func (p *Pump) flushMark(ctx context.Context) error {
	for {
		err := p.saver.flush(ctx, p.mark)
		if err == nil {
			return nil
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		delay := p.retry.Next()
		p.log.Warn("write high-water mark failed, retrying", zap.Int("attempt", p.retry.Attempt()), zap.Duration("backoff", delay), zap.Error(err))
		if !backoff.Sleep(ctx, delay) {
			return ctx.Err()
		}
	}
}

// recover handles a failed publish in the window: it settles the window and
// deals with what failed.
func (p *Pump) recover(ctx context.Context) error {
	failed, err := p.collect(ctx)
	if err != nil {
		return err
	}
	return p.retryAfter(ctx, failed)
}

// retryAfter queues failed events for publishing again in order, ahead of
// everything else. The first failure decides what happens: a permanent one
// makes its event poison; any other is retried after a backoff (none for an
// ordering conflict, which has nothing to wait for), once the stream has
// been read back.
func (p *Pump) retryAfter(ctx context.Context, failed []failure) error {
	if ctx.Err() != nil {
		return ctx.Err()
	}
	if len(failed) == 0 {
		return p.resync(ctx, true)
	}
	if p.cfg.Atomic {
		if handled, err := p.retryAtomic(ctx, failed); handled || err != nil {
			return err
		}
	}
	cause := failed[0].err
	if errors.Is(cause, sink.ErrPermanent) {
		p.replay = append(events(failed[1:]), p.replay...)
		if err := p.resync(ctx, true); err != nil {
			return err
		}
		ev := failed[0].ev
		return p.poison(ctx, ev, &PoisonError{Reason: "too_large", Detail: cause.Error(), ID: ev.ID, Position: ev.Position})
	}
	p.replay = append(events(failed), p.replay...)
	if isNoStream(cause) {
		handled, err := p.checkCapture(ctx, failed[0].ev)
		if handled || err != nil {
			return err
		}
	}
	if !errors.Is(cause, sink.ErrWrongSequence) {
		delay := p.retry.Next()
		p.m.PumpRetries.Inc()
		p.log.Warn("publish failed, retrying", zap.Int("attempt", p.retry.Attempt()),
			zap.Duration("backoff", delay), zap.Error(cause))
		if !backoff.Sleep(ctx, delay) {
			return ctx.Err()
		}
	}
	return p.resync(ctx, true)
}

func isNoStream(err error) bool {
	return errors.Is(err, jetstream.ErrNoStreamResponse) || errors.Is(err, nats.ErrNoResponders)
}

// checkCapture finds out why no stream answered a publish of ev. When the
// stream exists but no longer captures ev's subject, the event is poison
// (no_stream) and handled by policy; when the stream is gone, publishing is
// blocked until it is back (counted in outbox_relay_pump_blocked), as no
// retry can help. handled reports that the caller must not retry as usual.
func (p *Pump) checkCapture(ctx context.Context, ev cdc.Event) (handled bool, err error) {
	info, err := p.marks.log.Info(ctx)
	if errors.Is(err, sink.ErrStreamMissing) {
		p.m.PumpBlocked.WithLabelValues("stream_missing").Set(1)
		delay := p.retry.Next()
		p.m.PumpRetries.Inc()
		p.log.Error("the stream does not exist; publishing waits until it is created again", zap.String("stream", p.marks.stream),
			zap.Int("attempt", p.retry.Attempt()), zap.Duration("backoff", delay))
		if !backoff.Sleep(ctx, delay) {
			return true, ctx.Err()
		}
		return true, p.resync(ctx, true)
	}
	if err != nil {
		return false, nil // the usual retry reads the stream again
	}
	p.mapper.SetCaptures(info.Subjects)
	subject, serr := p.mapper.template.Subject(&ev)
	if serr != nil || sink.Captures(info.Subjects, subject) {
		return false, nil
	}
	reason := &PoisonError{
		Reason: "no_stream", Detail: fmt.Sprintf("no subject of stream %q captures %q (subjects %v)", p.marks.stream, subject, info.Subjects),
		ID: ev.ID, Position: ev.Position,
	}
	if p.cfg.Atomic {
		// Dealt with when its batch is sent again (publishAtomic).
		p.notePoison(ev, reason)
		return true, p.resync(ctx, true)
	}
	// The replay queue starts with ev: take it off, it is poison.
	p.replay = p.replay[1:]
	if err := p.resync(ctx, true); err != nil {
		return true, err
	}
	return true, p.poison(ctx, ev, reason)
}

func events(failed []failure) []cdc.Event {
	evs := make([]cdc.Event, len(failed))
	for i, f := range failed {
		evs[i] = f.ev
	}
	return evs
}

func removePosition(list []cdc.Position, pos cdc.Position) []cdc.Position {
	out := list[:0]
	for _, p := range list {
		if p != pos {
			out = append(out, p)
		}
	}
	return out
}

// resync reads back what the stream holds of the relay's events, retrying
// until it succeeds or ctx is done, and sets the pump up to continue right
// after it. untilForeign: the pump knows its mark, so its chain of messages
// cannot continue past another writer's message.
func (p *Pump) resync(ctx context.Context, untilForeign bool) error {
	p.m.PumpResyncs.Inc()
	p.attempt++
	for {
		// Only a chain of messages each expecting its predecessor's id
		// cannot go on past another writer's message.
		r, err := p.marks.Read(ctx, p.mark, p.chainBase, untilForeign && p.order == orderChain)
		if err == nil {
			p.afterRead(r)
			return nil
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		delay := p.retry.Next()
		p.m.PumpRetries.Inc()
		if errors.Is(err, sink.ErrStreamMissing) {
			p.m.PumpBlocked.WithLabelValues("stream_missing").Set(1)
			p.log.Error("the stream does not exist; publishing waits until it is created again", zap.String("stream", p.marks.stream),
				zap.Int("attempt", p.retry.Attempt()), zap.Duration("backoff", delay))
		} else {
			p.log.Warn("read stream failed, retrying", zap.Int("attempt", p.retry.Attempt()), zap.Duration("backoff", delay), zap.Error(err))
		}
		if !backoff.Sleep(ctx, delay) {
			return ctx.Err()
		}
	}
}

// afterRead adopts what Read found.
func (p *Pump) afterRead(r Reading) {
	p.m.PumpBlocked.WithLabelValues("stream_missing").Set(0)
	p.info = r.Info
	p.mark = r.Mark
	p.careful, p.sinceAck = true, 0
	p.lastSeq, p.lastID = r.Info.LastSeq, ""
	p.chainBase = r.Info.LastSeq
	p.uncertain, p.lastMsgID = r.Uncertain, r.LastMsgID
	if r.Foreign {
		p.m.PumpStreamShared.Set(1)
		// Atomic batches are ordered by sequence arithmetic on any stream.
		if (r.Info.Replicas > 1 || p.cfg.Atomic) && !p.mark.Shared {
			p.mark.Shared = true
			p.log.Warn("the replicated stream holds messages of other writers after the relay's own; publishing one message at a time so none can take an event's place",
				zap.String("stream", p.marks.stream))
		}
	}
	switch {
	case r.Info.Replicas <= 1 && !p.cfg.Atomic && r.Foreign && p.contended(time.Now()):
		p.setOrder(orderSerial)
	case r.Info.Replicas <= 1 && !p.cfg.Atomic:
		p.setOrder(orderChain)
	case p.mark.Shared || p.cfg.SharedStream:
		p.setOrder(orderSerial)
	default:
		p.setOrder(orderSequence)
	}
	p.saver.set(&p.mark)
}

// contentionBreak is a read-back that found another writer's message after
// the relay's own: when, and how many events the pump had stored by then.
type contentionBreak struct {
	at     time.Time
	stored uint64
}

// contended records a read-back that found another writer's message after
// the relay's own on a one-replica stream, and reports whether the pump
// should publish one message at a time for now (see contentionBreaks).
func (p *Pump) contended(now time.Time) bool {
	if now.Before(p.serialUntil) {
		return true
	}
	p.breaks = append(p.breaks, contentionBreak{at: now, stored: p.storedCount})
	if len(p.breaks) > contentionBreaks {
		p.breaks = p.breaks[1:]
	}
	first := p.breaks[0]
	if len(p.breaks) < contentionBreaks ||
		now.Sub(first.at) > contentionWindow && p.storedCount-first.stored >= uint64(p.cfg.Window) {
		return false
	}
	spell := cmp.Or(p.cfg.serialSpell, contentionSerial)
	p.breaks, p.serialUntil = nil, now.Add(spell)
	p.log.Info("other writers break the relay's bursts on the stream; publishing one message at a time for a while",
		zap.String("stream", p.marks.stream), zap.Duration("for", spell))
	return true
}

// endContention goes back to chains of messages on a one-replica stream
// once the serial spell of contention is over and nothing is in flight: the
// next message starts a chain.
func (p *Pump) endContention(now time.Time) {
	if now.Before(p.serialUntil) || p.order != orderSerial || p.window.Len() > 0 {
		return
	}
	p.serialUntil = time.Time{}
	p.lastID = ""
	p.setOrder(orderChain)
}

// setOrder switches to order, with the window and acknowledgement cadence
// it allows.
func (p *Pump) setOrder(order ordering) {
	if order != p.order {
		p.log.Info("publishing order", zap.String("stream", p.marks.stream), zap.Stringer("order", order))
	}
	p.order = order
	p.windowSize, p.ackEvery = p.cfg.Window, p.cfg.AckEvery
	switch {
	case order == orderSerial:
		p.windowSize, p.ackEvery = 1, 1
	case order == orderSequence, p.info.Retention != "limits" && p.info.Retention != "":
		// Every message asks for a PubAck: on a replicated stream that
		// shows at once when another writer broke a burst; on a stream
		// whose consumers remove messages it spares reading back messages
		// that may be gone.
		p.ackEvery = 1
	}
}

// resolveUncertain decides, for events after the mark whose messages the
// stream may have removed, which are stored. When the stream's last stored
// message id is one of them, it and those before it are stored and none
// after. Otherwise they are published again: JetStream drops those it still
// remembers within its duplicate window; the others may be stored twice, and
// are counted.
func (p *Pump) resolveUncertain(ctx context.Context) error {
	if p.uncertain == 0 {
		return nil
	}
	want := p.uncertain
	p.uncertain = 0
	var next []cdc.Event
	deadline := time.Now().Add(p.cfg.UncertainWait)
	for len(next) < want {
		ev, ok := p.nextWithin(ctx, deadline)
		if !ok {
			break
		}
		if p.skip(ev) {
			continue
		}
		next = append(next, ev)
	}
	if ctx.Err() != nil {
		p.replay = append(next, p.replay...)
		return ctx.Err()
	}
	match := -1
	if p.lastMsgID != "" {
		for i, ev := range next {
			if ev.ID == p.lastMsgID {
				match = i
				break
			}
		}
	}
	if match >= 0 {
		for _, ev := range next[:match+1] {
			p.stored(ev, p.info.LastSeq)
		}
		p.mark.Seq = p.info.LastSeq
		p.lastSeq, p.lastID = p.info.LastSeq, p.lastMsgID
		p.saver.set(&p.mark)
		next = next[match+1:]
	} else if len(next) > 0 {
		p.m.PumpUnverifiedReplays.Add(float64(len(next)))
		p.log.Warn("the stream removed messages where the relay's next events may be (retention) before it could read them back; publishing them again: JetStream drops those it still remembers, others may be stored twice",
			zap.String("stream", p.marks.stream), zap.Int("events", len(next)), zap.String("event_id", next[0].ID))
	}
	p.replay = append(next, p.replay...)
	return nil
}

// nextWithin returns the next event, waiting until deadline at most.
func (p *Pump) nextWithin(ctx context.Context, deadline time.Time) (cdc.Event, bool) {
	if len(p.replay) > 0 || len(p.ahead) > 0 || p.closed {
		return p.next(ctx, false)
	}
	t := time.NewTimer(time.Until(deadline))
	defer t.Stop()
	select {
	case ev, ok := <-p.src.Events():
		p.closed = !ok
		return ev, ok
	case <-t.C:
		return cdc.Event{}, false
	case <-ctx.Done():
		return cdc.Event{}, false
	}
}

// poison applies the poison policy to ev. Everything before ev is settled
// first, so a stop leaves every earlier event acknowledged.
func (p *Pump) poison(ctx context.Context, ev cdc.Event, reason *PoisonError) error {
	if p.window.Len() > 0 {
		failed, err := p.collect(ctx)
		if err != nil {
			return err
		}
		if len(failed) > 0 {
			// An earlier event failed: deal with it first; ev comes
			// back in its turn.
			p.replay = append([]cdc.Event{ev}, p.replay...)
			return p.retryAfter(ctx, failed)
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
	// the chain; one in another stream has sequences of its own.
	sameStream := p.mapper.Captured(p.cfg.DeadLetterSubject)
	for {
		var expect uint64
		msg.CheckLastSeq, msg.ExpectLastMsgID = false, ""
		if sameStream {
			expect = p.expect(&msg)
		}
		pending, err := p.pub.Publish(ctx, msg)
		var ack sink.Ack
		if err == nil {
			ack, err = pending.Wait(ctx)
		}
		if err == nil {
			p.m.PumpDeadLettered.Inc()
			p.log.Warn("poison event dead-lettered", zap.String("event_id", ev.ID), zap.String("subject", p.cfg.DeadLetterSubject), zap.Error(reason))
			if !sameStream {
				p.acked(ev)
				return nil
			}
			if ack.Duplicate || (expect != 0 && ack.Seq != expect) {
				p.acked(ev)
				return p.resync(ctx, true)
			}
			p.stored(ev, ack.Seq)
			p.saver.set(&p.mark)
			p.lastSeq, p.lastID = ack.Seq, ev.ID
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
		if !sameStream {
			continue
		}
		if err := p.resync(ctx, true); err != nil {
			return err
		}
		if p.mark.Stored(ev.Position) {
			// Stored although its acknowledgement was lost.
			p.m.PumpDeadLettered.Inc()
			p.log.Warn("poison event dead-lettered", zap.String("event_id", ev.ID), zap.String("subject", p.cfg.DeadLetterSubject), zap.Error(reason))
			p.acked(ev)
			return nil
		}
	}
}

// stop lets the publishes in flight finish within ShutdownTimeout,
// acknowledges the stored ones, writes the mark, and returns err; an error
// caused by ctx ending is a shutdown, not a failure, and becomes nil.
func (p *Pump) stop(ctx context.Context, err error) error {
	if ctx.Err() != nil && err != nil && errors.Is(err, ctx.Err()) {
		err = nil
	}
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), p.cfg.ShutdownTimeout)
	defer cancel()
	if p.window.Len() > 0 {
		// What is stored is acknowledged; the rest the next run replays.
		if _, cerr := p.collect(sctx); cerr != nil && err == nil && sctx.Err() == nil {
			err = cerr
		}
		p.window.Clear()
	}
	if p.saver != nil && !p.mark.Position.IsZero() {
		// Spares the next run reading the stream back; correctness never
		// depends on it.
		if serr := p.saver.flush(sctx, p.mark); serr != nil {
			p.log.Warn("write high-water mark failed", zap.Error(serr))
		}
	}
	return err
}
