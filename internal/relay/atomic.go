package relay

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"strconv"

	"go.uber.org/zap"

	"github.com/outbox-relay/outbox-relay/internal/backoff"
	"github.com/outbox-relay/outbox-relay/internal/cdc"
	"github.com/outbox-relay/outbox-relay/internal/sink"
)

// Policies for a transaction larger than one atomic batch may be.
const (
	LargeTransactionStop  = "stop"
	LargeTransactionSplit = "split"
)

// ErrLargeTransaction marks a transaction with more events than one atomic
// batch may hold, under LargeTransactionStop.
var ErrLargeTransaction = errors.New("transaction larger than an atomic batch")

// validateAtomic reports the problems of the atomic mode's settings.
func (c Config) validateAtomic() []error {
	var errs []error
	if c.BatchMaxMessages < 1 {
		errs = append(errs, fmt.Errorf("atomic-batch-max: %d, must be at least 1", c.BatchMaxMessages))
	}
	if c.BatchMaxBytes < 0 {
		errs = append(errs, fmt.Errorf("atomic batch bytes: %d, must not be negative", c.BatchMaxBytes))
	}
	if c.OnLargeTransaction != LargeTransactionStop && c.OnLargeTransaction != LargeTransactionSplit {
		errs = append(errs, fmt.Errorf("on-large-transaction: %q, must be stop or split", c.OnLargeTransaction))
	}
	return errs
}

// openBatch is the atomic batch being sent: its messages so far, without
// their commit.
type openBatch struct {
	open bool
	id   string
	// n counts its messages, bytes their size.
	n     uint64
	bytes int64
	// expects is set when its first message expected base as the stream's
	// last sequence (orderSequence).
	expects bool
	base    uint64
}

// batchID names the atomic batch that starts with the event at pos, for the
// relay of origin: the event's place in commit order, then what tells this
// copy of the batch from another: the process (nonce) and its attempt (the
// reads of the stream so far). A copy left without its commit (the relay
// stopped or gave up on it) stays with the server until its batch timeout,
// and one sent again under its id would be refused once as incomplete.
// Consumers can group a transaction's messages by their Nats-Batch-Id; the
// id is at most 8+1+16+1+10+1+8+20 = 65 characters only after 10^18 reads
// of the stream.
func batchID(origin string, pos cdc.Position, nonce uint32, attempt uint64) string {
	h := fnv.New32a()
	_, _ = h.Write([]byte(origin))
	var b []byte
	b = appendHex(b, uint64(h.Sum32()), 8)
	b = append(b, '-')
	b = strconv.AppendUint(b, uint64(pos.CommitLSN), 16)
	b = append(b, '-')
	b = strconv.AppendUint(b, uint64(pos.Index), 10)
	b = append(b, '-')
	b = appendHex(b, uint64(nonce), 8)
	b = strconv.AppendUint(b, attempt, 10)
	return string(b)
}

// appendHex appends v in lower-case hex, zero-padded to width digits.
func appendHex(b []byte, v uint64, width int) []byte {
	s := strconv.FormatUint(v, 16)
	for i := len(s); i < width; i++ {
		b = append(b, '0')
	}
	return append(b, s...)
}

// batchHeadersSize is the most the atomic batch headers add to a message's
// header block.
const batchHeadersSize = len("Nats-Batch-Id") + sink.MaxBatchID + 4 + len("Nats-Batch-Sequence") + 20 + 4 + len("Nats-Batch-Commit") + 3 + 4

// fitsBatch reports whether msg, whose header map takes headerBytes (see
// headerSize), is a message the server takes once the sink adds its headers,
// as Fits does, with the batch headers. In a batch a message refused on
// arrival is only seen as a gap at the commit, which names no message: the
// pump checks first.
func fitsBatch(msg sink.Message, headerBytes, maxPayload int64) bool {
	size := headerBytes + int64(sinkHeadersSize+batchHeadersSize)
	if msg.ID != "" {
		size += int64(len("Nats-Msg-Id") + len(msg.ID) + 4)
	}
	return size <= maxHeaderBlock && (maxPayload <= 0 || size+int64(len(msg.Data)) <= maxPayload)
}

// awaitingBatch reports whether the pump can only wait for the rest of the
// transaction being sent: nothing else in the window to settle.
func (p *Pump) awaitingBatch() bool {
	return p.batch.open && uint64(p.window.Len()) == p.batch.n
}

// publishAtomic sends ev as the next message of its transaction's atomic
// batch (Config.Atomic), starting a batch at a transaction's first event and
// committing it with its last (cdc.Event.TxnEnd), so that JetStream stores
// the transaction whole or not at all. When the next transactions are
// already at hand, whole, the batch takes them too (joinNext).
//
// Order and identity. Only a batch's first message may expect a last
// sequence, and no message of a batch its predecessor's id, so a batch is
// identified by sequence arithmetic only, as single messages on a replicated
// stream are (orderSequence): every batch's commit asks for a PubAck, a
// batch stored after a refused one is seen at once (another writer's
// messages took its place; see resolveBatches), and from then on, as once
// another writer is seen after the relay's messages, batches go one at a
// time (orderSerial: each sent once the one before is stored, expecting
// nothing).
//
// A poison event takes its dead letter's place in its batch (the dead-letter
// subject must be in the stream), or stops the pump before its transaction:
// the events of the transaction before it are not stored.
func (p *Pump) publishAtomic(ctx context.Context, ev cdc.Event) error {
	msg, headerBytes, reason, err := p.atomicMessage(&ev)
	if err != nil {
		return err
	}
	var dl *PoisonError
	if reason != nil {
		p.notePoison(ev, reason)
		if p.cfg.OnPoison != OnPoisonDeadLetter {
			return p.stopBeforeBatch(ctx, ev, fmt.Errorf("event %s at %s: %w: %w", ev.ID, ev.Position, ErrPoison, reason))
		}
		if !p.mapper.Captured(p.cfg.DeadLetterSubject) {
			return fmt.Errorf("dead-letter-subject: %q is not in stream %q: with atomic batches a dead letter takes its event's place in the transaction's batch: %w",
				p.cfg.DeadLetterSubject, p.marks.stream, ErrPoison)
		}
		msg, dl = p.mapper.DeadLetter(&ev, p.cfg.DeadLetterSubject, reason, p.cfg.MaxPayload), reason
		headerBytes = headerSize(msg.Header)
	}
	if !p.batch.open {
		p.batch = openBatch{open: true, id: batchID(p.mapper.Origin(), ev.Position, p.nonce, p.attempt)}
		if p.order == orderSequence {
			p.batch.expects, p.batch.base = true, p.lastSeq
		}
	}
	b := &p.batch
	b.n++
	b.bytes += int64(len(msg.Data)) + headerBytes
	commit, split := ev.TxnEnd, false
	if commit && dl == nil {
		join, mapped := p.joinNext()
		if mapped {
			// The mapper built the next events' messages in the one
			// header map msg uses: build ev's again.
			if msg, _, _, err = p.atomicMessage(&ev); err != nil {
				return err
			}
		}
		commit = !join
	}
	if !commit && (b.n >= uint64(p.batchMax) || (p.cfg.BatchMaxBytes > 0 && b.bytes >= p.cfg.BatchMaxBytes)) {
		if p.cfg.OnLargeTransaction != LargeTransactionSplit {
			b.n--
			return p.stopBeforeBatch(ctx, ev, fmt.Errorf(
				"event %s at %s: its transaction (xid %d) has more than %d events or %d bytes, more than one atomic batch may hold (--atomic-batch-max, the server's max_batch_size, half of --event-buffer-bytes); "+
					"with --on-large-transaction=split it is published in consecutive batches, each atomic: %w",
				ev.ID, ev.Position, ev.XID, p.batchMax, p.cfg.BatchMaxBytes, ErrLargeTransaction))
		}
		commit = true
		split = true
	}
	msg.CheckLastSeq, msg.ExpectLastMsgID = false, ""
	if b.n == 1 && b.expects {
		msg.CheckLastSeq, msg.ExpectLastSeq = true, b.base
	}
	msg.BatchID, msg.BatchSeq, msg.BatchCommit = b.id, b.n, commit
	// A message before the commit asks for a reply only while careful: a
	// refusal names it then (too large, say), where the commit would only
	// report the batch incomplete.
	msg.NoReply = !commit && !p.careful
	var expect uint64
	if commit && b.expects {
		expect = b.base + b.n
	}
	f := inflight{ev: ev, expect: expect, covered: msg.NoReply, batchSeq: b.n, commit: commit, split: split, deadLetter: dl}
	pending, err := p.pub.Publish(ctx, msg)
	if err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		f.err = err
		p.window.Push(f)
		return p.recover(ctx)
	}
	f.pending, f.sent = pending, true
	p.window.Push(f)
	if commit {
		if b.expects {
			p.lastSeq = expect
		}
		p.batch = openBatch{}
	}
	if ce := p.log.Check(zap.DebugLevel, "event published"); ce != nil {
		ce.Write(zap.String("event_id", ev.ID), zap.String("subject", msg.Subject))
	}
	return nil
}

// atomicBatchesInFlight is the most atomic batches the pump has committed and
// awaits the PubAck of: no new batch starts while that many are in flight.
//
// JetStream takes any number of atomic batches in flight on a stream (up to
// 50 open, that is staged but not committed; the server's
// max_batch_inflight_per_stream) and stores them in the order their commits
// arrive, which on one connection is the order sent: each batch's first
// message expects the stream's last sequence there, at the commit
// (TestJetStreamAtomicBatchRules). But the server handles a stream's
// batches one after the other, and most of what a batch costs it does not
// depend on its size: on a one-replica file stream it stages every batch in
// a store of its own, created, synced to disk at the commit and deleted
// (nats-server 2.15.2, newBatchStore), some milliseconds each. Sending each
// transaction as soon as it arrives, however many batches are in flight,
// caps the relay at the server's batches per second, about 100 to 400 on a
// small machine, whatever the transactions' sizes; a queue of batches at
// the server only adds latency. With two in flight, the server always has
// the next batch at hand, while the transactions that arrive in the
// meantime wait at the relay and go as one batch (joinNext): the more the
// server lags, the larger the batches.
const atomicBatchesInFlight = 2

// joinNext reports, at the last event of a transaction in the open batch,
// whether the next transaction joins the batch rather than the batch being
// committed now: when the whole transaction can be had without waiting
// (read ahead from the source, see peek), has no event the stream holds
// already or that is poison, and fits in what the batch may still hold, in
// messages and bytes, and in its share of the publish window (half of it;
// all of it when batches go one at a time, orderSerial). mapped reports that it mapped events, with the
// mapper's one header map. While careful (after any read of the stream)
// nothing joins: the events replayed go one transaction per batch, as
// refusals and replays are recognised for them (resolveDuplicates).
//
// A batch of several transactions is still stored whole or not at all, so
// no consumer sees part of a transaction; its id is that of its first
// event's place in commit order (batchID), as a batch of one.
func (p *Pump) joinNext() (join, mapped bool) {
	if p.careful || p.cfg.oneTxnPerBatch {
		return false, false
	}
	// What the batch may still hold, and its share of the window, which
	// the batches in flight split evenly (a batch taking what the one
	// before left would alternate large and small batches). The
	// configured window: one batch at a time (orderSerial) takes it all.
	inFlight := atomicBatchesInFlight
	if p.order == orderSerial {
		inFlight = 1
	}
	limit := uint64(min(p.batchMax, max(p.cfg.Window/inFlight, 1)))
	room := limit - min(p.batch.n, limit)
	room = min(room, uint64(max(p.cfg.Window-p.window.Len()-1, 0)))
	bytes := p.batch.bytes
	for i := 0; uint64(i) < room; i++ {
		ev, ok := p.peek(i)
		if !ok || p.mark.Stored(ev.Position) {
			return false, mapped
		}
		msg, headerBytes, reason, err := p.atomicMessage(&ev)
		mapped = true
		if err != nil || reason != nil {
			return false, mapped
		}
		bytes += int64(len(msg.Data)) + headerBytes
		if p.cfg.BatchMaxBytes > 0 && bytes >= p.cfg.BatchMaxBytes {
			return false, mapped
		}
		if ev.TxnEnd {
			return true, mapped
		}
	}
	return false, mapped
}

// peek returns the i-th (from 0) event next returns from now on, without
// taking it: from replay, from ahead, or read from the source into ahead,
// without waiting.
func (p *Pump) peek(i int) (cdc.Event, bool) {
	if i < len(p.replay) {
		return p.replay[i], true
	}
	i -= len(p.replay)
	for i >= len(p.ahead) {
		if p.closed {
			return cdc.Event{}, false
		}
		select {
		case ev, ok := <-p.src.Events():
			if !ok {
				p.closed = true
				return cdc.Event{}, false
			}
			p.ahead = append(p.ahead, ev)
		default:
			return cdc.Event{}, false
		}
	}
	return p.ahead[i], true
}

// atomicMessage maps ev, with the size of its header map, or returns why
// it is poison: known to be, or found now (unmappable, or too large for the
// server).
func (p *Pump) atomicMessage(ev *cdc.Event) (sink.Message, int64, *PoisonError, error) {
	if reason, ok := p.poisoned[ev.Position]; ok {
		return sink.Message{}, 0, reason, nil
	}
	msg, err := p.mapper.Message(ev)
	if err != nil {
		var poison *PoisonError
		if errors.As(err, &poison) {
			return sink.Message{}, 0, poison, nil
		}
		return sink.Message{}, 0, nil, err
	}
	headerBytes := headerSize(msg.Header)
	if !fitsBatch(msg, headerBytes, p.cfg.MaxPayload) {
		return sink.Message{}, 0, &PoisonError{
			Reason: "too_large", Detail: fmt.Sprintf(
				"%d bytes of payload and %d of headers exceed the server's max payload (%d bytes) or JetStream's 64 KiB header limit", len(msg.Data), headerBytes, p.cfg.MaxPayload),
			ID: ev.ID, Position: ev.Position,
		}, nil
	}
	return msg, headerBytes, nil, nil
}

// notePoison counts ev as poison once, however often its batch is sent.
func (p *Pump) notePoison(ev cdc.Event, reason *PoisonError) {
	if _, ok := p.poisoned[ev.Position]; ok {
		return
	}
	p.poisoned[ev.Position] = reason
	p.m.PumpPoisonEvents.WithLabelValues(reason.Reason).Inc()
}

// stopBeforeBatch stops the pump with stop at ev, which belongs to the open
// batch (or starts one): the batch is left without its commit, so none of
// its transaction is stored, and every earlier batch is settled first. When
// one of those failed, that is dealt with first, and ev comes back in its
// turn.
func (p *Pump) stopBeforeBatch(ctx context.Context, ev cdc.Event, stop error) error {
	left := p.abandonBatch()
	if p.window.Len() > 0 {
		failed, err := p.collect(ctx)
		if err != nil {
			return err
		}
		if len(failed) > 0 {
			p.replay = append(append(left, ev), p.replay...)
			return p.retryAfter(ctx, failed)
		}
	}
	return stop
}

// abandonBatch takes the open batch's messages out of the window, never to
// be committed (the server drops them after its batch timeout), and returns
// their events.
func (p *Pump) abandonBatch() []cdc.Event {
	if !p.batch.open {
		return nil
	}
	n := int(p.batch.n)
	evs := make([]cdc.Event, 0, n)
	for i := p.window.Len() - n; i < p.window.Len(); i++ {
		evs = append(evs, p.window.At(i).ev)
	}
	p.window.DropLast(n)
	p.batch = openBatch{}
	return evs
}

// settleBatch waits for the commit of the oldest batch in the window: stored,
// the batch is acknowledged; anything else settles the whole window and
// recovers. With only the open batch in the window it returns at once (the
// rest of its transaction is on its way), unless the source has ended, when
// the batch can never be completed: it is dropped, unacknowledged, for the
// next run to publish.
func (p *Pump) settleBatch(ctx context.Context) error {
	k := -1
	for i := 0; i < p.window.Len(); i++ {
		if p.window.At(i).commit {
			k = i
			break
		}
	}
	if k < 0 {
		if p.batch.open && !p.closed {
			return nil
		}
		p.abandonBatch()
		if p.window.Len() > 0 {
			return p.recover(ctx)
		}
		return nil
	}
	c := p.window.At(k)
	if !c.sent {
		return p.recover(ctx)
	}
	ack, err := c.pending.Wait(ctx)
	if err != nil && ctx.Err() != nil {
		return ctx.Err()
	}
	c.waited, c.ack, c.werr = true, ack, err
	if err != nil || (c.expect != 0 && ack.Seq != c.expect) {
		return p.recover(ctx)
	}
	// Stored whole, at consecutive sequences ending at the commit's.
	for i := 0; i <= k; i++ {
		f := p.window.At(i)
		if i < k && f.sent && !f.covered && !f.waited {
			// A staged reply: taken, so that its slot is free again.
			_, _ = f.pending.Wait(ctx)
			f.waited = true
		}
		p.storedInBatch(f, ack.Seq-uint64(k-i))
	}
	p.saver.set(&p.mark)
	p.window.Drop(k + 1)
	if len(p.replay) == 0 {
		p.careful = false
	}
	return nil
}

// storedInBatch records that f's event is on the stream at seq, as itself or
// as its dead letter.
func (p *Pump) storedInBatch(f *inflight, seq uint64) {
	p.stored(f.ev, seq)
	if f.split {
		p.m.PumpSplitTransactions.Inc()
		p.log.Warn("transaction larger than an atomic batch: split, consumers may see its first part before the rest",
			zap.String("event_id", f.ev.ID), zap.Stringer("lsn", f.ev.Position.CommitLSN), zap.Uint32("xid", f.ev.XID))
	}
	if f.deadLetter != nil {
		p.m.PumpDeadLettered.Inc()
		p.log.Warn("poison event dead-lettered", zap.String("event_id", f.ev.ID), zap.String("subject", p.cfg.DeadLetterSubject), zap.Error(f.deadLetter))
	}
}

// batchCauses returns, for each message of a settled window of batches, the
// error of its batch: its commit's, or for messages after the last commit
// (a batch that never got one) the first error among them.
func batchCauses(results []result) []error {
	causes := make([]error, len(results))
	var cause error
	for i := len(results) - 1; i >= 0; i-- {
		if results[i].commit {
			cause = results[i].err
		}
		causes[i] = cause
	}
	var tail error
	for i := len(results) - 1; i >= 0 && !results[i].commit; i-- {
		if results[i].err != nil {
			tail = results[i].err
		}
	}
	for i := len(results) - 1; i >= 0 && !results[i].commit; i-- {
		causes[i] = tail
		if tail == nil {
			causes[i] = errBatchOpen
		}
	}
	return causes
}

// errBatchOpen marks the events of a batch whose commit was never sent.
var errBatchOpen = errors.New("atomic batch left without its commit")

// retryAtomic deals with what only atomic batches fail with; handled reports
// that it did, else the caller retries as usual. A message refused for good
// makes its event poison (its dead letter then takes its place, or the pump
// stops before its transaction, in publishAtomic); a batch refused for an id
// already stored is resolved by resolveDuplicates; a batch over the server's
// limit lowers the limit.
func (p *Pump) retryAtomic(ctx context.Context, failed []failure) (handled bool, err error) {
	requeue := func() { p.replay = append(events(failed), p.replay...) }
	for _, f := range failed {
		if !f.own {
			continue
		}
		switch {
		case errors.Is(f.err, sink.ErrPermanent) && f.deadLetter:
			return true, fmt.Errorf("dead-letter event %s: %w: %w", f.ev.ID, ErrPoison, f.err)
		case errors.Is(f.err, sink.ErrPermanent):
			p.notePoison(f.ev, &PoisonError{Reason: "too_large", Detail: f.err.Error(), ID: f.ev.ID, Position: f.ev.Position})
			requeue()
			return true, p.resync(ctx, true)
		case isNoStream(f.err):
			requeue()
			if handled, err := p.checkCapture(ctx, f.ev); handled || err != nil {
				return true, err
			}
			p.replay = p.replay[len(failed):]
			return false, nil
		}
	}
	cause := failed[0].err
	switch {
	case errors.Is(cause, sink.ErrBatchUnsupported):
		return true, fmt.Errorf("stream %q refused the atomic batch of event %s at %s: %w", p.marks.stream, failed[0].ev.ID, failed[0].ev.Position, cause)
	case errors.Is(cause, sink.ErrPermanent):
		return true, fmt.Errorf("event %s at %s: JetStream refused its transaction's atomic batch for good, and none of its messages alone (%w): %w",
			failed[0].ev.ID, failed[0].ev.Position, cause, ErrPoison)
	case errors.Is(cause, sink.ErrBatchTooLarge):
		if n, ok := sink.BatchLimit(cause); ok && n < p.batchMax {
			p.log.Warn("the server takes smaller atomic batches than --atomic-batch-max; using its limit",
				zap.Int("batch_max", n), zap.Int("atomic_batch_max", p.batchMax))
			p.batchMax = n
		}
		requeue()
		return true, p.resync(ctx, true)
	case errors.Is(cause, sink.ErrBatchDuplicate):
		var batch []cdc.Event
		joined := false
		for _, f := range failed {
			batch = append(batch, f.ev)
			if f.commit {
				break
			}
			joined = joined || f.ev.TxnEnd
		}
		requeue()
		if err := p.resync(ctx, true); err != nil {
			return true, err
		}
		if joined {
			// A batch of several transactions (joinNext): sent again
			// one transaction per batch (careful), where a refusal
			// is resolved as for any transaction's.
			return true, nil
		}
		return true, p.resolveDuplicates(ctx, batch)
	}
	return false, nil
}

// resolveDuplicates finds out which events of a batch JetStream refused for
// an id in its duplicate window (it does not say which) are stored: those
// the stream read back holds are skipped anyway; for the others it asks the
// stream, without storing anything, whether their ids are in the window,
// and checks that each message found is this relay's for that very event.
// Those form a prefix of the batch (a replay: its first events were stored
// by an earlier batch, or all of them): the mark moves past them, so that
// they are skipped when they come up again; the rest is published again. Two events of the batch with one id, or an id of another
// event, stop the pump: the batch could never be stored.
func (p *Pump) resolveDuplicates(ctx context.Context, batch []cdc.Event) error {
	seen := map[string]cdc.Position{}
	for _, ev := range batch {
		if first, ok := seen[ev.ID]; ok && ev.ID != "" {
			return fmt.Errorf("events at %s and %s of one transaction share the id %s, so JetStream refuses their atomic batch; ids must be unique across everything that writes to the stream: %w",
				first, ev.Position, ev.ID, errOrderViolation)
		}
		seen[ev.ID] = ev.Position
	}
	type found struct {
		ev  cdc.Event
		seq uint64
	}
	var stored []found
	gap := false
	for _, ev := range batch {
		if p.mark.Stored(ev.Position) {
			continue
		}
		seq, dup, err := p.storedCopy(ctx, ev)
		if err != nil {
			return err
		}
		if !dup {
			gap = true
			continue
		}
		if gap {
			return fmt.Errorf("event %s at %s is on the stream at sequence %d while an earlier event of its transaction is not: %w", ev.ID, ev.Position, seq, errOrderViolation)
		}
		stored = append(stored, found{ev, seq})
	}
	// Marked stored; acknowledged when they come up again (skip).
	for _, s := range stored {
		p.markStored(s.ev, s.seq)
	}
	if len(stored) > 0 {
		p.log.Info("atomic batch refused for ids already stored: its first events are on the stream",
			zap.String("event_id", stored[0].ev.ID), zap.Int("events", len(stored)))
		return p.flushMark(ctx)
	}
	return nil
}

// storedCopy asks the stream whether a message with ev's id is in its
// duplicate window (storing nothing), retrying until it answers or ctx ends,
// and, if so, checks that it is this relay's for this very event (see
// checkDuplicate): ok reports that ev is stored, at seq. The message may have
// been removed since (retention): JetStream's word stands then.
func (p *Pump) storedCopy(ctx context.Context, ev cdc.Event) (uint64, bool, error) {
	subject, ok := probeSubject(p.info.Subjects)
	if !ok {
		return 0, false, nil
	}
	for {
		seq, dup, err := p.marks.log.DuplicateOf(ctx, subject, ev.ID, p.info.Replicas > 1)
		if err == nil && !dup {
			return 0, false, nil
		}
		if err == nil {
			if err := p.checkDuplicate(ctx, ev, sink.Ack{Seq: seq}); err != nil {
				return 0, false, err
			}
			return seq, true, nil
		}
		if ctx.Err() != nil {
			return 0, false, ctx.Err()
		}
		delay := p.retry.Next()
		p.log.Warn("read stream failed, retrying", zap.Int("attempt", p.retry.Attempt()), zap.Duration("backoff", delay), zap.Error(err))
		if !backoff.Sleep(ctx, delay) {
			return 0, false, ctx.Err()
		}
	}
}
