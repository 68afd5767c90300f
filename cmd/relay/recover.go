package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	"github.com/jackc/pglogrepl"
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
	// Kind is empty for relay recover, snapshotKind for an initial
	// snapshot.
	Kind    string    `json:"kind,omitempty"`
	Slot    string    `json:"slot"`
	Since   time.Time `json:"since"`
	Started time.Time `json:"started"`
	// An initial snapshot's setting and progress.
	Selection string    `json:"selection,omitempty"`
	Selected  int64     `json:"selected,omitempty"`
	Done      int64     `json:"done,omitempty"`
	Updated   time.Time `json:"updated,omitempty"`
}

// loadRecovery reads the marker at key, if any.
func loadRecovery(ctx context.Context, store *sink.StateStore, key string) (recoveryRecord, bool, error) {
	var rec recoveryRecord
	data, ok, err := store.Load(ctx, key)
	if err != nil || !ok {
		return rec, false, err
	}
	_ = json.Unmarshal(data, &rec) // what matters most is the marker's presence
	return rec, true, nil
}

// recoveryFinished refuses to relay origin's events while a `relay recover`
// or an initial snapshot that created the slot has not finished: the rows it
// was to publish are not on the stream, and the slot would go on past them.
func recoveryFinished(ctx context.Context, store *sink.StateStore, stream, origin string) error {
	rec, ok, err := loadRecovery(ctx, store, recoveryKey(stream, origin))
	if err != nil || !ok {
		return err
	}
	if rec.Kind == snapshotKind {
		return fmt.Errorf("initial-snapshot: the initial snapshot (%s) of slot %q, started %s, did not finish; streaming from the slot now would skip the rows it was to publish. Run the relay with --initial-snapshot=%s: it drops that slot and starts over: %w",
			rec.Selection, rec.Slot, rec.Started.Format(time.RFC3339), rec.Selection, cdc.ErrSlot)
	}
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
	database, err := currentDatabase(ctx, cfg)
	if err != nil {
		return err
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
	rec, unfinished, err := loadRecovery(ctx, store, key)
	if err != nil {
		return err
	}
	if unfinished && rec.Kind == snapshotKind {
		return recoveryFinished(ctx, store, cfg.sink.Stream, current)
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
	// The snapshot is imported first: the exporting connection must not
	// wait long.
	scan, err := slot.Scan(ctx, cdc.Selection{Since: since})
	slot.Close()
	if err != nil {
		return err
	}
	defer scan.Close()
	onStream, removed, err := streamIDs(ctx, streamLog, []string{previous, current}, since.Add(-cfg.recoverMaxTxnAge))
	if err != nil {
		return err
	}
	if removed > 0 {
		fmt.Fprintf(out, "warning: the stream's retention removed %d messages the comparison needed; a row among them published again is dropped by JetStream within its duplicate window, and stored twice outside it\n", removed)
	}
	if n := otherIDForm(cfg.cdc, onStream); n > 0 {
		fmt.Fprintf(out, "warning: %d of the relay's messages the comparison reads have ids that name no outbox table, published before --message-id=table-id: the rows published under them are not recognised and are published again (under their new ids)\n", n)
	}
	src, err := publishScan(ctx, cfg, nc, stream, marks, database, log, metrics.New(version, commit), scan, seam, onStream, nil)
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "outbox rows created since %s and committed before the slot: %d, on the stream: %d, to publish: %d\n",
		since.Format(time.RFC3339Nano), scan.Total(), src.skipped.Load(), src.handed)
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
	if src.handed > 0 {
		fmt.Fprintf(out, "published: %d events, %s to %s\n", src.handed, src.first, src.last)
	}
	fmt.Fprintf(out, "recovery done: start the relay (slot %s)\n", cfg.cdc.Slot)
	return nil
}

// currentDatabase returns the name of the database the relay connects to.
func currentDatabase(ctx context.Context, cfg *config) (string, error) {
	conn, err := cdc.Connect(ctx, cfg.cdc)
	if err != nil {
		return "", err
	}
	var database string
	err = conn.QueryRow(ctx, `SELECT current_database()`).Scan(&database)
	_ = conn.Close(context.WithoutCancel(ctx))
	if err != nil {
		return "", fmt.Errorf("read current database: %w", err)
	}
	return database, nil
}

// createdAt returns the Outbox-Created-At of the message at seq.
func createdAt(ctx context.Context, log *sink.StreamReader, seq uint64) (time.Time, error) {
	t, found, err := messageCreatedAt(ctx, log, seq)
	if err != nil {
		return time.Time{}, err
	}
	if !found {
		return time.Time{}, fmt.Errorf("the stream no longer holds the last event published (sequence %d) or it has no %s: the recovery finds the rows the stream lacks from the creation time of that event, and needs the created_at column and a stream that keeps the last messages",
			seq, relay.HeaderCreatedAt)
	}
	return t, nil
}

// messageCreatedAt returns the Outbox-Created-At of the message at seq;
// found is false when the stream holds no message there, or one without
// that header.
func messageCreatedAt(ctx context.Context, log *sink.StreamReader, seq uint64) (t time.Time, found bool, err error) {
	h, found, err := log.Header(ctx, seq)
	if err != nil {
		return time.Time{}, false, err
	}
	text := h.Get(relay.HeaderCreatedAt)
	if !found || text == "" {
		return time.Time{}, false, nil
	}
	t, err = time.Parse(time.RFC3339Nano, text)
	if err != nil {
		return time.Time{}, false, fmt.Errorf("read %s of the message at sequence %d: %w", relay.HeaderCreatedAt, seq, err)
	}
	return t, true, nil
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

// scanSource hands the pump the rows of a snapshot scan as it reads them,
// chunk by chunk: it reads the next chunk only once the rows read and not
// yet acknowledged take no more than half of --event-buffer-bytes, so memory
// stays bounded whatever the table's size. Rows whose ids the stream holds
// are skipped; the others are numbered as one transaction at the seam, just
// before the slot's consistent point.
type scanSource struct {
	scan     *cdc.Scan
	seam     pglogrepl.LSN
	onStream map[string]bool
	limit    int64
	events   chan cdc.Event
	freed    chan struct{}

	held    atomic.Int64
	acked   atomic.Int64
	skipped atomic.Int64
	// handed, first and last are the feed's own until it returns.
	handed      int64
	first, last string
}

func newScanSource(scan *cdc.Scan, seam pglogrepl.LSN, onStream map[string]bool, bufferBytes int64) *scanSource {
	return &scanSource{
		scan: scan, seam: seam, onStream: onStream, limit: max(1, bufferBytes/2),
		events: make(chan cdc.Event, 64), freed: make(chan struct{}, 1),
	}
}

func (s *scanSource) Events() <-chan cdc.Event { return s.events }

func (s *scanSource) Ack(ev cdc.Event) {
	s.acked.Add(1)
	s.held.Add(-ev.Bytes())
	select {
	case s.freed <- struct{}{}:
	default:
	}
}

// done is how many rows of the scan are on the stream: acknowledged, or
// skipped as already there.
func (s *scanSource) done() int64 { return s.acked.Load() + s.skipped.Load() }

// feed reads the scan and hands its rows on until the end, then closes the
// events channel.
func (s *scanSource) feed(ctx context.Context) error {
	defer close(s.events)
	for {
		for s.held.Load() > s.limit {
			select {
			case <-s.freed:
			case <-ctx.Done():
				return ctx.Err()
			}
		}
		rows, err := s.scan.Next(ctx)
		if err != nil || len(rows) == 0 {
			return err
		}
		for _, ev := range rows {
			if s.onStream[ev.ID] {
				s.skipped.Add(1)
				continue
			}
			ev.Position = cdc.Position{CommitLSN: s.seam, Index: uint32(s.handed)}
			ev.CommitTime = time.Now()
			s.held.Add(ev.Bytes())
			select {
			case s.events <- ev:
			case <-ctx.Done():
				return ctx.Err()
			}
			if s.handed == 0 {
				s.first = ev.ID
			}
			s.handed++
			s.last = ev.ID
		}
	}
}

// publishScan publishes the rows of scan whose ids are not in onStream with
// the relay's pump, into marks' chain of messages, numbered as one
// transaction at seam, and returns once each is stored. progress, unless
// nil, is called now and then while it runs.
func publishScan(ctx context.Context, cfg *config, nc *sink.Connection, stream sink.StreamState, marks *relay.Watermark, database string, log *zap.Logger, m *metrics.Metrics,
	scan *cdc.Scan, seam pglogrepl.LSN, onStream map[string]bool, progress func(src *scanSource),
) (*scanSource, error) {
	mapper, err := newMapper(cfg, marks.Origin(), database, stream.Subjects)
	if err != nil {
		return nil, err
	}
	// Rows read from the table carry no transaction boundaries: each is
	// published on its own, never as part of an atomic batch.
	pumpCfg := pumpConfig(cfg, nc, stream)
	pumpCfg.Atomic = false
	src := newScanSource(scan, seam, onStream, cfg.cdc.EventBufferBytes)
	publisher, err := sink.New(nc.Conn, cfg.sink, m)
	if err != nil {
		return src, err
	}
	defer func() { _ = publisher.Close() }() // nothing is in flight once Run returned
	publisher.FailOnDisconnect(nc.Disconnected)
	pump := relay.New(src, publisher, marks, mapper, pumpCfg, log.Named("pump"), m)

	fctx, stop := context.WithCancel(ctx)
	defer stop()
	feedErr := make(chan error, 1)
	go func() { feedErr <- src.feed(fctx) }()
	pumpDone := make(chan error, 1)
	go func() { pumpDone <- pump.Run(ctx) }()
	var ticks <-chan time.Time
	if progress != nil {
		ticker := time.NewTicker(snapshotProgressInterval)
		defer ticker.Stop()
		ticks = ticker.C
	}
wait:
	for {
		select {
		case <-ticks:
			progress(src)
		case err = <-pumpDone:
			break wait
		}
	}
	stop()
	if ferr := <-feedErr; ferr != nil && !errors.Is(ferr, context.Canceled) {
		err = errors.Join(err, ferr)
	}
	if err != nil {
		return src, err
	}
	if n := src.acked.Load(); n != src.handed || ctx.Err() != nil {
		return src, fmt.Errorf("published %d of the %d rows read before stopping: %w", n, src.handed, errors.Join(ctx.Err(), errors.New("interrupted")))
	}
	return src, nil
}

// otherIDForm counts the message ids in ids that --message-id=table-id
// cannot have produced (none names a configured table): published before
// the setting changed, their rows are not recognised by id. 0 without
// table-id, where any text is an id.
func otherIDForm(cfg cdc.Config, ids map[string]bool) int {
	if !cfg.QualifiedIDs {
		return 0
	}
	n := 0
	for id := range ids {
		table, _, ok := strings.Cut(id, "/")
		if ok && table == "message" { // a logical decoding message's
			continue
		}
		schema, name, dotted := strings.Cut(table, ".")
		if !ok || !dotted || !cfg.Names(schema, name) {
			n++
		}
	}
	return n
}
