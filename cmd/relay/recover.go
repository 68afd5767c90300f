package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"go.uber.org/zap"

	"github.com/outbox-relay/outbox-relay/internal/cdc"
	"github.com/outbox-relay/outbox-relay/internal/leader"
	"github.com/outbox-relay/outbox-relay/internal/metrics"
	"github.com/outbox-relay/outbox-relay/internal/relay"
	"github.com/outbox-relay/outbox-relay/internal/sink"
)

// `relay recover`: after a failover to a server without the relay's slot
// (PostgreSQL 16 and older, or no failover slot), create the slot again and
// publish, from the outbox table, the rows the stream lacks, before the
// relay streams from the new slot. The seam is the new slot's consistent
// point: the slot decodes every transaction committed after it, and the
// snapshot it exports sees every row committed before it, so nothing falls
// between the two and nothing is in both. The rows the stream lacks are those
// of that snapshot created since the last event published (less
// --recover-max-transaction-age, for transactions that began earlier and
// committed later) whose ids the stream does not hold. They are published in
// created_at order, as one transaction just before the consistent point, so
// the high-water mark passes them and the new slot's events come after.

// recoveryKey is the state bucket key that marks a recovery of origin's
// slot under way: it has created (or may have created) the slot and not yet
// published what the stream lacks.
func recoveryKey(stream, origin string) string { return "recovering." + relay.MarkKey(stream, origin) }

// recoveryRecord is what the marker says.
type recoveryRecord struct {
	Slot    string    `json:"slot"`
	Since   time.Time `json:"since"`
	Started time.Time `json:"started"`
}

// recoveryFinished refuses to relay origin's events while a `relay recover`
// that created the slot has not finished: the rows it was to publish are not
// on the stream, and the slot would go on past them.
func recoveryFinished(ctx context.Context, store *sink.StateStore, stream, origin string) error {
	data, ok, err := store.Load(ctx, recoveryKey(stream, origin))
	if err != nil || !ok {
		return err
	}
	var rec recoveryRecord
	_ = json.Unmarshal(data, &rec) // the message needs no more than the marker's presence
	return fmt.Errorf("slot: relay recover created slot %q (started %s) and did not finish publishing the rows the stream lacks; streaming from the slot now would skip them. Run relay recover again: it drops that slot and starts over: %w",
		rec.Slot, rec.Started.Format(time.RFC3339), cdc.ErrSlot)
}

// runRecover creates the slot lost in a failover and publishes the rows the
// stream lacks; see the README's slot recovery.
func runRecover(ctx context.Context, cfg *config, out, logOut io.Writer) error {
	log := newLogger(cfg, logOut)
	defer func() { _ = log.Sync() }() // stderr may not support sync
	nc, err := connectNATS(cfg)
	if err != nil {
		return err
	}
	defer nc.Close()
	dry := cfg.sink
	dry.CreateStream = false
	stream, err := nc.EnsureStream(ctx, dry, []string{cfg.template.Wildcard()}, log.Named("sink"))
	if err != nil {
		return err
	}
	store, err := sink.OpenStateStore(ctx, nc, cfg.sink.StateBucket, stream.Replicas, cfg.sink.RequestTimeout)
	if err != nil {
		return err
	}
	conn, err := cdc.Connect(ctx, cfg.cdc)
	if err != nil {
		return err
	}
	var database string
	err = conn.QueryRow(ctx, `SELECT current_database()`).Scan(&database)
	_ = conn.Close(context.WithoutCancel(ctx))
	if err != nil {
		return fmt.Errorf("read current database: %w", err)
	}
	systemID, err := cdc.SystemID(ctx, cfg.cdc)
	if err != nil {
		return err
	}
	previous, current := origin(systemID, database, cfg.recoverPreviousSlot), origin(systemID, database, cfg.cdc.Slot)

	// No relay of the slot may stream or publish meanwhile.
	if cfg.leaderElection {
		election := cfg.election
		election.Key = cfg.cdc.Slot
		lctx, cancel := context.WithTimeout(ctx, 2*election.LeaseTimeout+election.ConnectTimeout)
		lease, err := leader.New(election, log.Named("leader")).Acquire(lctx, func(bool) {})
		cancel()
		if err != nil {
			return fmt.Errorf("take the leader lock of slot %q (a relay of the slot leads: stop it first): %w", cfg.cdc.Slot, err)
		}
		defer lease.Release()
		var stop context.CancelFunc
		ctx, stop = context.WithCancel(ctx)
		defer stop()
		go func() {
			select {
			case <-lease.Lost():
				stop()
			case <-ctx.Done():
			}
		}()
	}

	streamLog := sink.NewStreamReader(nc.Conn, nc.JetStream, cfg.sink.Stream, cfg.sink.RequestTimeout)
	marks := relay.NewWatermark(streamLog, store, cfg.sink.Stream, current, log.Named("pump"))
	key := recoveryKey(cfg.sink.Stream, current)
	_, unfinished, err := store.Load(ctx, key)
	if err != nil {
		return err
	}
	exists, err := cdc.SlotExists(ctx, cfg.cdc)
	if err != nil {
		return err
	}
	switch {
	case exists && unfinished:
		if err := cdc.DropSlot(ctx, cfg.cdc); err != nil {
			return err
		}
		fmt.Fprintf(out, "slot %s: dropped, created by a recovery that did not finish\n", cfg.cdc.Slot)
	case exists:
		return fmt.Errorf("slot: %q exists, so there is nothing to recover (relay run uses it); to recover anyway, drop it first", cfg.cdc.Slot)
	}

	prev := marks
	if previous != current {
		prev = relay.NewWatermark(streamLog, store, cfg.sink.Stream, previous, log.Named("pump"))
		if _, used, err := marks.Existed(ctx); err != nil || used {
			return errors.Join(err, fmt.Errorf("slot: %q was used before (its high-water mark or events exist); give the new slot a name never used", cfg.cdc.Slot))
		}
	}
	reading, err := prev.Read(ctx, relay.Mark{}, 0, false)
	if err != nil {
		return err
	}
	mark := reading.Mark
	if mark.Position.IsZero() {
		return fmt.Errorf("the stream holds no event of slot %q (origin %s), so there is no position to recover from; if it never published anything, start the relay, which creates the slot", cfg.recoverPreviousSlot, previous)
	}
	fmt.Fprintf(out, "last event on the stream: %s at sequence %d (commit %s)\n", mark.MsgID, mark.Seq, mark.Position)

	wal, err := cdc.ServerHistory(ctx, cfg.cdc)
	if err != nil {
		return err
	}
	timeline, _, err := timelineStore{store: store, key: timelineKey(cfg.sink.Stream, previous)}.Load(ctx)
	if err != nil {
		return err
	}
	if err := cdc.CheckHistory(cdc.Published{CommitLSN: mark.Position.CommitLSN, Timeline: timeline}, wal); err != nil {
		if previous == current {
			return fmt.Errorf("%w. To recover, create the slot under a new name: relay recover --slot=<new name> --recover-previous-slot=%s, then run the relay with --slot=<new name>",
				err, cfg.cdc.Slot)
		}
		fmt.Fprintf(out, "warning: %v\n", err)
	}

	anchor, err := createdAt(ctx, streamLog, mark.Seq)
	if err != nil {
		return err
	}
	since := anchor.Add(-cfg.recoverMaxTxnAge)
	record, _ := json.Marshal(recoveryRecord{Slot: cfg.cdc.Slot, Since: since, Started: time.Now().UTC()})
	if err := store.Save(ctx, key, record); err != nil {
		return err
	}
	slot, err := cdc.CreateRecoverySlot(ctx, cfg.cdc)
	if err != nil {
		return errors.Join(err, store.Delete(context.WithoutCancel(ctx), key))
	}
	done := false
	defer func() {
		if !done {
			// Nothing streams from the slot without the rows before it: a
			// new recovery starts over with a new one.
			cctx := context.WithoutCancel(ctx)
			if err := errors.Join(cdc.DropSlot(cctx, cfg.cdc), store.Delete(cctx, key)); err != nil {
				fmt.Fprintf(out, "warning: could not clean up after the failed recovery (run relay recover again): %v\n", err)
			}
		}
	}()
	seam := slot.ConsistentPoint - 1
	fmt.Fprintf(out, "slot %s: created at %s (timeline %d)\n", cfg.cdc.Slot, slot.ConsistentPoint, wal.Timeline)
	if previous == current && seam <= mark.Position.CommitLSN {
		slot.Close()
		return fmt.Errorf("slot %q starts at %s, not after the last position published %s: %w", cfg.cdc.Slot, slot.ConsistentPoint, mark.Position, cdc.ErrDiverged)
	}
	rows, err := slot.Rows(ctx, since)
	slot.Close()
	if err != nil {
		return err
	}
	onStream, removed, err := streamIDs(ctx, streamLog, []string{previous, current}, since.Add(-cfg.recoverMaxTxnAge))
	if err != nil {
		return err
	}
	var gap []cdc.Event
	for _, ev := range rows {
		if !onStream[ev.ID] {
			ev.Position = cdc.Position{CommitLSN: seam, Index: uint32(len(gap))}
			ev.CommitTime = time.Now()
			gap = append(gap, ev)
		}
	}
	fmt.Fprintf(out, "outbox rows created since %s and committed before the slot: %d, on the stream: %d, to publish: %d\n",
		since.Format(time.RFC3339Nano), len(rows), len(rows)-len(gap), len(gap))
	if removed > 0 {
		fmt.Fprintf(out, "warning: the stream's retention removed %d messages the comparison needed; a row among them published again is dropped by JetStream within its duplicate window, and stored twice outside it\n", removed)
	}
	if err := publishGap(ctx, cfg, nc, stream, marks, log, gap); err != nil {
		return err
	}
	if err := registerSlot(ctx, marks); err != nil {
		return err
	}
	if err := (timelineStore{store: store, key: timelineKey(cfg.sink.Stream, current)}).Save(ctx, wal.Timeline); err != nil {
		return err
	}
	if err := store.Delete(ctx, key); err != nil {
		return err
	}
	done = true
	if len(gap) > 0 {
		fmt.Fprintf(out, "published: %d events, %s to %s\n", len(gap), gap[0].ID, gap[len(gap)-1].ID)
	}
	fmt.Fprintf(out, "recovery done: start the relay (slot %s)\n", cfg.cdc.Slot)
	return nil
}

// createdAt returns the Outbox-Created-At of the message at seq.
func createdAt(ctx context.Context, log *sink.StreamReader, seq uint64) (time.Time, error) {
	h, found, err := log.Header(ctx, seq)
	if err != nil {
		return time.Time{}, err
	}
	text := h.Get(relay.HeaderCreatedAt)
	if !found || text == "" {
		return time.Time{}, fmt.Errorf("the stream no longer holds the last event published (sequence %d) or it has no %s: the recovery finds the rows the stream lacks from the creation time of that event, and needs the created_at column and a stream that keeps the last messages",
			seq, relay.HeaderCreatedAt)
	}
	t, err := time.Parse(time.RFC3339Nano, text)
	if err != nil {
		return time.Time{}, fmt.Errorf("read %s of the message at sequence %d: %w", relay.HeaderCreatedAt, seq, err)
	}
	return t, nil
}

// streamIDs reads the stream from its end back and returns the message ids
// it holds, down to the first message of one of origins created before
// stopBefore (every event of theirs before it was committed earlier, so
// none is a row to compare), and how many messages in that stretch the
// stream's retention removed.
func streamIDs(ctx context.Context, log *sink.StreamReader, origins []string, stopBefore time.Time) (map[string]bool, int, error) {
	info, err := log.Info(ctx)
	if err != nil {
		return nil, 0, err
	}
	ids := map[string]bool{}
	removed := 0
	seq := info.LastSeq
	for ; seq >= info.FirstSeq && seq > 0; seq-- {
		h, found, err := log.Header(ctx, seq)
		if err != nil {
			return nil, 0, err
		}
		if !found {
			removed++
			continue
		}
		ids[h.Get(nats.MsgIdHdr)] = true
		if slices.Contains(origins, h.Get(relay.HeaderOrigin)) {
			if created, err := time.Parse(time.RFC3339Nano, h.Get(relay.HeaderCreatedAt)); err == nil && created.Before(stopBefore) {
				return ids, removed, nil
			}
		}
	}
	if info.FirstSeq > 1 {
		// Removed from the stream's start: they may have been rows to
		// compare.
		removed += int(info.FirstSeq - 1)
	}
	return ids, removed, nil
}

// gapSource hands the pump the rows to publish.
type gapSource struct {
	events chan cdc.Event
	acked  atomic.Int64
}

func (s *gapSource) Events() <-chan cdc.Event { return s.events }

func (s *gapSource) Ack(cdc.Event) { s.acked.Add(1) }

// publishGap publishes events with the relay's pump, into origin's chain of
// messages, and returns once each is stored.
func publishGap(ctx context.Context, cfg *config, nc *sink.Connection, stream sink.StreamState, marks *relay.Watermark, log *zap.Logger, gap []cdc.Event) error {
	if len(gap) == 0 {
		return nil
	}
	src := &gapSource{events: make(chan cdc.Event, len(gap))}
	for _, ev := range gap {
		src.events <- ev
	}
	close(src.events)
	m := metrics.New(version, commit)
	publisher, err := sink.New(nc.Conn, cfg.sink, m)
	if err != nil {
		return err
	}
	defer func() { _ = publisher.Close() }() // nothing is in flight once Run returned
	publisher.FailOnDisconnect(nc.Disconnected)
	mapper := relay.NewMapper(cfg.template, marks.Origin(), stream.Subjects)
	pump := relay.New(src, publisher, marks, mapper, pumpConfig(cfg, nc, stream), log.Named("pump"), m)
	if err := pump.Run(ctx); err != nil {
		return err
	}
	if n := src.acked.Load(); n != int64(len(gap)) {
		return fmt.Errorf("published %d of the %d rows the stream lacks before stopping: %w", n, len(gap), errors.Join(ctx.Err(), errors.New("interrupted")))
	}
	return nil
}
