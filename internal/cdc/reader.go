package cdc

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
	"go.uber.org/zap"

	"github.com/outbox-relay/outbox-relay/internal/backoff"
	"github.com/outbox-relay/outbox-relay/internal/metrics"
)

// stableSession is how long a replication session must stream before a
// later failure starts the backoff from its minimum again.
const stableSession = 30 * time.Second

// Reader streams committed outbox rows from the replication slot, in commit
// order, and reports to PostgreSQL only positions the Tracker confirms. It
// reconnects with backoff after any failure that a retry can fix.
type Reader struct {
	cfg     Config
	log     *zap.Logger
	m       *metrics.Metrics
	tracker *Tracker
	events  chan Event

	// filter says which transactions and rows a reconnected session sends
	// again were already handed on; it survives reconnects.
	filter replayFilter

	// baseline is the publication fingerprint preflight validated; ""
	// makes the watch take its first reading as the baseline.
	baseline PublicationFingerprint
	// published is the commit LSN of the last event on the stream when
	// the reader was built; timelines keeps the timeline that was read
	// from (nil: not kept); timeline is the one the last session streamed
	// from (0: none yet).
	published pglogrepl.LSN
	timelines TimelineStore
	timeline  int32
	// fatal and restart receive errors from other goroutines that end the
	// session: fatal ones (the publication changed, an event acknowledged
	// twice) end Run too; restart ones (the server shutting down) do not.
	fatal, restart chan error
	// budget bounds the bytes of events read and not yet acknowledged.
	budget *byteBudget

	// heartbeat (Unix nanoseconds) moves whenever the loop is alive:
	// reading, reporting status, or waiting to reconnect.
	heartbeat atomic.Int64
	streaming atomic.Bool
	retired   atomic.Bool // see Retire
}

// NewReader builds a Reader. Run it once.
func NewReader(cfg Config, log *zap.Logger, m *metrics.Metrics) *Reader {
	r := &Reader{
		cfg:     cfg,
		log:     log,
		m:       m,
		tracker: NewTracker(0),
		events:  make(chan Event, cfg.EventBuffer),

		fatal:   make(chan error, 1),
		restart: make(chan error, 1),
		budget:  newByteBudget(cfg.EventBufferBytes),
	}
	m.SetOldestPendingAge(func() float64 {
		oldest, ok := r.tracker.OldestPending()
		if !ok {
			return 0
		}
		return max(0, time.Since(oldest).Seconds())
	})
	return r
}

// Events delivers committed outbox rows in commit order, rows of a
// transaction in insertion order. After a reconnect no row is delivered twice.
// It is closed when Run returns.
func (r *Reader) Events() <-chan Event { return r.events }

// Ack records that JetStream stored ev, or that it was skipped. It is safe
// for concurrent use, and events may be acknowledged in any order; each
// event exactly once. An event acknowledged again stops the reader with an
// error naming it (ErrAck): the slot must not move on a miscount.
func (r *Reader) Ack(ev Event) {
	if err := r.tracker.Ack(ev.txn); err != nil {
		r.stop(fmt.Errorf("event %s at %s: %w", ev.ID, ev.Position, err))
		return
	}
	r.budget.release(ev.size)
}

// stop ends the session with err at the next opportunity, and Run too when
// err is fatal (ErrConfig, ErrAck); the first error of each kind wins.
func (r *Reader) stop(err error) {
	ch := r.restart
	if errors.Is(err, ErrConfig) || errors.Is(err, ErrAck) {
		ch = r.fatal
	}
	select {
	case ch <- err:
	default:
	}
}

// Tracker exposes the position tracker, for health checks and status.
func (r *Reader) Tracker() *Tracker { return r.tracker }

// Heartbeat returns when the reader's loop last showed it is alive. It moves
// at least every StatusInterval while streaming, and around every reconnect
// wait.
func (r *Reader) Heartbeat() time.Time { return time.Unix(0, r.heartbeat.Load()) }

// Streaming reports whether a replication session is streaming.
func (r *Reader) Streaming() bool { return r.streaming.Load() }

func (r *Reader) beat() { r.heartbeat.Store(time.Now().UnixNano()) }

// Retire makes Run start no further replication session and end no other
// consumer's session on the slot (a new leader's, once this instance has
// lost its lease); only a start already past its last check, the two
// queries that end the previous session and start streaming, completes.
// The session Run has goes on until ctx is done or it ends, so that it can
// still report what gets acknowledged; then Run returns. It is safe to call
// at any time, also concurrently with Run.
func (r *Reader) Retire() { r.retired.Store(true) }

// SetPublicationBaseline gives the fingerprint of the publication
// preflight validated (SlotState.Publication); the reader stops when the
// publication differs from it. Without it, the reader's first check sets the
// baseline. Call it before Run.
func (r *Reader) SetPublicationBaseline(fp PublicationFingerprint) { r.baseline = fp }

// SetHighWater gives the commit LSN of the last event the stream holds (the
// high-water mark's position, 0 for none) and the store of the timeline the
// relay last streamed from (nil: not kept). Every session then starts only
// on a server whose WAL holds that and whatever the reader handed on since
// (CheckHistory), and records the timeline it streams from before it reads.
// Call it before Run.
func (r *Reader) SetHighWater(published pglogrepl.LSN, timelines TimelineStore) {
	r.published, r.timelines = published, timelines
}

// Run reads the slot until ctx is done, reconnecting after failures. It
// returns nil when ctx is done (or, once retired, its session is over) and
// an error only for a failure that retrying cannot fix: a configuration
// mismatch (ErrConfig, and ErrPublication for a publication missing at a WAL
// position or changed) or an unusable slot (ErrSlot). It is the only user of
// the replication connection. While it runs it checks the publication every
// PublicationCheckInterval and confirms only WAL decoded while the
// publication was the one validated.
func (r *Reader) Run(ctx context.Context) error {
	defer close(r.events)
	r.tracker.Gate()
	watchCtx, stopWatch := context.WithCancel(ctx)
	watchDone := make(chan struct{})
	watch := &publicationWatch{cfg: r.cfg, log: r.log, tracker: r.tracker, baseline: r.baseline, stop: r.stop}
	go func() {
		defer close(watchDone)
		watch.run(watchCtx)
	}()
	defer func() {
		stopWatch()
		<-watchDone
	}()
	bo := backoff.Backoff{Min: r.cfg.ReconnectMin, Max: r.cfg.ReconnectMax}
	for {
		r.beat()
		started := time.Now()
		var err error
		select {
		case err = <-r.fatal:
		case err = <-r.restart:
		default:
			err = r.session(ctx)
		}
		r.streaming.Store(false)
		r.m.CDCConnected.Set(0)
		r.beat()
		if ctx.Err() != nil {
			return nil
		}
		if errors.Is(err, ErrConfig) || errors.Is(err, ErrSlot) || errors.Is(err, ErrAck) {
			if errors.Is(err, ErrSlot) {
				r.m.CDCSlotProblems.Inc()
			}
			var pubErr *PublicationError
			if errors.As(err, &pubErr) {
				r.m.CDCPublicationProblems.WithLabelValues(pubErr.Kind).Inc()
			}
			return err
		}
		if r.retired.Load() {
			return nil
		}
		if time.Since(started) > stableSession {
			bo.Reset()
		}
		delay := bo.Next()
		r.m.CDCReconnects.Inc()
		r.log.Warn("replication session ended, reconnecting",
			zap.String("slot", r.cfg.Slot), zap.Int("attempt", bo.Attempt()), zap.Duration("backoff", delay), zap.Error(err))
		if !backoff.Sleep(ctx, delay) {
			return nil
		}
	}
}

// session is one replication connection, from connect to failure or shutdown.
type session struct {
	r          *Reader
	conn       *pgconn.PgConn
	decoder    *decoder
	nextStatus time.Time
	walEnd     pglogrepl.LSN
	// statusTimer wakes emit to report status while it waits for the pump.
	statusTimer *time.Timer
	// partitions recognises partitions of the outbox among the other
	// relations the stream describes.
	partitions *partitionCheck
	// replicationTimeout is the configured or derived ReplicationTimeout.
	replicationTimeout time.Duration
	// held is the last row read of the open transaction (with
	// Config.MarkTxnEnd), handed on with the next row or, marked TxnEnd,
	// with the commit; a session that ends drops it unsent (the next session
	// reads it again).
	held    Event
	holding bool
}

func (r *Reader) session(ctx context.Context) error {
	conn, err := connect(ctx, r.cfg, true)
	if err != nil {
		return err
	}
	s := &session{r: r, conn: conn.PgConn(), decoder: newDecoder(r.cfg), partitions: newPartitionCheck(r.cfg)}
	s.decoder.maxRow = r.cfg.MaxRowBytes
	s.decoder.messagePrefix = r.cfg.MessagePrefix
	defer s.close()
	r.filter.SessionStarted()

	q := querier{conn: conn, timeout: r.cfg.QueryTimeout}
	var database string
	var senderTimeoutMS int64
	if err := q.row(ctx, `SELECT current_database(), (SELECT setting::bigint FROM pg_settings WHERE name = 'wal_sender_timeout')`).
		Scan(&database, &senderTimeoutMS); err != nil {
		return fmt.Errorf("read current database: %w", err)
	}
	if s.decoder.outboxOIDs, err = outboxOIDs(ctx, q, r.cfg); err != nil {
		return err
	}
	if s.replicationTimeout, err = replicationTimeout(r.cfg.ReplicationTimeout, time.Duration(senderTimeoutMS)*time.Millisecond); err != nil {
		return fmt.Errorf("%w: %w", err, ErrConfig)
	}
	slot, exists, err := readSlot(ctx, q, r.cfg.Slot)
	if err != nil {
		return err
	}
	if !exists {
		r.m.SetSlotWALStatus("missing")
		return fmt.Errorf("slot: %q does not exist (dropped while the relay ran?); recreating it would skip events, see the recovery section of the README: %w", r.cfg.Slot, ErrSlot)
	}
	if err := slot.usable(r.cfg.Slot, database); err != nil {
		r.m.SetSlotWALStatus(slot.walStatus)
		return err
	}
	if err := s.checkTimeline(ctx, slot.confirmedFlush); err != nil {
		return err
	}
	if r.retired.Load() {
		return nil // Run returns
	}
	if slot.activePID != nil && r.cfg.TakeOverActiveSlot {
		if err := q.exec(ctx, `SELECT pg_terminate_backend($1)`, *slot.activePID); err != nil {
			return fmt.Errorf("end the previous leader's session on slot %q: %w", r.cfg.Slot, err)
		}
		r.log.Warn("ended a lingering session of a previous leader on the slot", zap.String("slot", r.cfg.Slot))
	}
	// The slot's confirmed position is where PostgreSQL resumes; the
	// tracker only ever moves forward from it.
	r.tracker.resume(slot.confirmedFlush)

	startCtx, cancel := context.WithTimeout(ctx, r.cfg.QueryTimeout)
	defer cancel()
	// Start at 0: the server then resumes from the slot's
	// confirmed_flush_lsn, never from a position only this process knew.
	err = pglogrepl.StartReplication(startCtx, s.conn, r.cfg.Slot, 0, pglogrepl.StartReplicationOptions{
		PluginArgs: pluginArgs(r.cfg),
	})
	if err != nil {
		return fmt.Errorf("start replication on slot %q: %w", r.cfg.Slot, err)
	}
	r.m.CDCConnected.Set(1)
	r.streaming.Store(true)
	r.log.Info("replication started", zap.String("slot", r.cfg.Slot), zap.String("publication", r.cfg.Publication),
		zap.Stringer("confirmed_lsn", slot.confirmedFlush))
	return s.stream(ctx)
}

// pluginArgs are pgoutput's options: protocol 1, the publication, and the
// logical decoding messages when events come as messages too.
func pluginArgs(cfg Config) []string {
	// Protocol 1 sends a transaction only after it commits, so no row of a
	// transaction that may still abort ever reaches the relay.
	args := []string{"proto_version '1'", "publication_names " + publicationNamesOption(cfg.Publication)}
	if cfg.MessagePrefix != "" {
		args = append(args, "messages 'true'")
	}
	return args
}

// checkTimeline refuses a server whose WAL does not hold what the relay
// published or handed on (CheckHistory), and records the timeline it is on
// before anything is read from it. On a timeline switch within this process
// (a failover it followed) the replay state is reset: positions read before
// may mean other WAL now, so the stream's high-water mark, in the pump,
// decides alone what is published already; and the confirmed position
// starts again from the slot's.
func (s *session) checkTimeline(ctx context.Context, slotConfirmed pglogrepl.LSN) error {
	r := s.r
	qctx, cancel := context.WithTimeout(ctx, r.cfg.QueryTimeout)
	wal, err := ReadServerWAL(qctx, s.conn)
	cancel()
	if err != nil {
		return err
	}
	pub := Published{CommitLSN: max(r.published, r.filter.HighWater()), Timeline: r.timeline}
	recorded := int32(0)
	if r.timelines != nil && r.timeline == 0 {
		var found bool
		if recorded, found, err = r.timelines.Load(ctx); err != nil {
			return fmt.Errorf("read the timeline the relay last streamed from: %w", err)
		}
		if found {
			pub.Timeline = recorded
		}
	}
	if err := CheckHistory(pub, wal); err != nil {
		return err
	}
	if wal.Timeline == r.timeline {
		return nil
	}
	if r.timeline != 0 {
		if open := r.filter.Reset("timeline switch"); open != nil {
			r.tracker.abandon(open.entry)
		}
		r.tracker.rebase(slotConfirmed)
		r.log.Warn("the server switched timelines (a failover): what the relay read is in its history; replay state reset",
			zap.String("slot", r.cfg.Slot), zap.Int32("timeline", wal.Timeline), zap.Stringer("lsn", pub.CommitLSN),
			zap.Stringer("confirmed_lsn", slotConfirmed))
	}
	if r.timelines != nil && (r.timeline != 0 || recorded != wal.Timeline) {
		if err := r.timelines.Save(ctx, wal.Timeline); err != nil {
			return fmt.Errorf("record timeline %d: %w", wal.Timeline, err)
		}
	}
	r.timeline = wal.Timeline
	return nil
}

func (s *session) stream(ctx context.Context) error {
	s.nextStatus = time.Now().Add(s.r.cfg.StatusInterval)
	// Reads wake up at the next status time through a deadline on the
	// socket rather than a context per message: a context and timer for
	// every row would cost throughput. Shutdown is noticed within one
	// status interval.
	netConn := s.conn.Conn()
	var deadline time.Time
	// now is read once per message: the clock is a noticeable share of
	// the per-event cost.
	now := time.Now()
	lastReceived := now
	pinged := false
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		select {
		case err := <-s.r.fatal:
			return err
		case err := <-s.r.restart:
			return err
		default:
		}
		if !now.Before(s.nextStatus) {
			if err := s.sendStatus(); err != nil {
				return err
			}
		}
		if !deadline.Equal(s.nextStatus) {
			deadline = s.nextStatus
			if err := netConn.SetReadDeadline(deadline); err != nil {
				return fmt.Errorf("set read deadline: %w", err)
			}
		}
		msg, err := s.conn.ReceiveMessage(context.Background())
		now = time.Now()
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			if pgconn.Timeout(err) {
				s.r.beat()
				silent := now.Sub(lastReceived)
				if silent > s.replicationTimeout {
					return fmt.Errorf("replication stream: nothing received for %s", silent.Round(time.Second))
				}
				if silent > s.replicationTimeout/2 && !pinged {
					// Ask the server to answer, as PostgreSQL's own
					// walreceiver does, before giving the session up.
					pinged = true
					if err := s.requestReply(); err != nil {
						return err
					}
				}
				continue
			}
			return fmt.Errorf("receive replication message: %w", err)
		}
		lastReceived, pinged = now, false
		switch msg := msg.(type) {
		case *pgproto3.CopyData:
			if err := s.handleCopyData(ctx, msg.Data); err != nil {
				return err
			}
		case *pgproto3.ErrorResponse:
			pgErr := pgconn.ErrorResponseToPgError(msg)
			if missingPublication(pgErr) {
				return s.publicationMissing(pgErr)
			}
			return fmt.Errorf("replication stream: %w", pgErr)
		case *pgproto3.NoticeResponse:
			// PostgreSQL 18 only warns that the publication is missing
			// at this point in the WAL, then decodes nothing: stop here,
			// before a keepalive can confirm past what it skips.
			notice := pgconn.ErrorResponseToPgError((*pgproto3.ErrorResponse)(msg))
			if missingPublication(notice) {
				return s.publicationMissing(notice)
			}
			if heldBackNotice(notice) {
				// Said once per wait; the slot monitor sees it end.
				s.r.m.CDCWaitingForStandby.Set(1)
				s.r.log.Warn("the walsender holds changes back until a standby in synchronized_standby_slots confirms them",
					zap.String("slot", s.r.cfg.Slot), zap.Error(notice))
			}
		case *pgproto3.CopyDone:
			return errors.New("replication stream: server ended the stream")
		}
	}
}

func (s *session) handleCopyData(ctx context.Context, data []byte) error {
	if len(data) == 0 {
		return errors.New("replication stream: empty CopyData")
	}
	switch data[0] {
	case pglogrepl.PrimaryKeepaliveMessageByteID:
		ka, err := pglogrepl.ParsePrimaryKeepaliveMessage(data[1:])
		if err != nil {
			return fmt.Errorf("replication stream: %w", err)
		}
		s.observeWALEnd(ka.ServerWALEnd)
		// Only with no transaction open in the stream and nothing read
		// still unacknowledged does the WAL end hide no unsent event.
		if s.r.filter.Idle() {
			s.r.tracker.Idle(ka.ServerWALEnd)
		}
		if ka.ReplyRequested {
			return s.sendStatus()
		}
		return nil
	case pglogrepl.XLogDataByteID:
		xld, err := pglogrepl.ParseXLogData(data[1:])
		if err != nil {
			return fmt.Errorf("replication stream: %w", err)
		}
		s.observeWALEnd(xld.ServerWALEnd)
		ch, err := s.decoder.decode(xld.WALData)
		if err != nil {
			return fmt.Errorf("replication stream %s: %w", s.where(xld.WALStart), err)
		}
		return s.apply(ctx, ch, xld.WALStart)
	default:
		return nil
	}
}

// where names the position of a message for an error: the transaction it
// belongs to, since Relation messages carry no position of their own.
func (s *session) where(lsn pglogrepl.LSN) string {
	if open := s.r.filter.open; open != nil {
		return fmt.Sprintf("in transaction %d committing at %s", open.xid, open.commitLSN)
	}
	return fmt.Sprintf("at %s", lsn)
}

func (s *session) apply(ctx context.Context, ch change, lsn pglogrepl.LSN) error {
	r := s.r
	switch ch.kind {
	case changeRelation:
		// Described again: it may have been attached or detached since.
		s.partitions.forget(ch.relation.id)
		return nil
	case changeForeignInsert:
		return s.checkRelation(ctx, ch.relation, lsn)
	case changeIgnoredMessage:
		r.m.CDCMessagesIgnored.WithLabelValues(ch.ignored).Inc()
		if ch.ignored == ignoredNonTransactional {
			r.log.Warn("non-transactional message ignored: only pg_logical_emit_message(true, ...) is published",
				zap.Stringer("lsn", lsn), zap.String("reason", ch.ignored))
		}
		return nil
	case changeBegin:
		_, err := r.filter.Begin(ch.begin, func() *txnEntry { return r.tracker.Begin(ch.begin.commitTime) })
		return err
	case changeEvent:
		verdict, txn, index, err := r.filter.Row(lsn)
		if err != nil || verdict == replaySkip {
			return err
		}
		// The row held back is not the transaction's last: hand it on.
		if err := s.release(ctx); err != nil {
			return err
		}
		ev := ch.event
		ev.Position = Position{CommitLSN: txn.commitLSN, Index: index}
		ev.CommitTime = txn.commitTime
		ev.XID = txn.xid
		ev.LSN = lsn
		ev.txn = txn.entry
		s.held, s.holding = ev, true
		if !r.cfg.MarkTxnEnd {
			return s.release(ctx)
		}
		return nil
	case changeCommit:
		if s.holding {
			// The transaction's last row: handed on before the filter
			// closes the transaction, which counts it as forwarded.
			s.held.TxnEnd = true
			if err := s.release(ctx); err != nil {
				return err
			}
		}
		verdict, txn, err := r.filter.Commit(lsn)
		if err != nil || verdict == replaySkip {
			return err
		}
		r.tracker.Commit(txn.entry, ch.commit.endLSN)
		if txn.forwarded > 0 {
			r.m.CDCTransactions.Inc()
			r.m.CDCLastCommitTimestamp.Set(float64(txn.commitTime.UnixNano()) / 1e9)
		}
		return nil
	}
	return nil
}

// release hands on the row held back, if any.
func (s *session) release(ctx context.Context) error {
	if !s.holding {
		return nil
	}
	r, ev := s.r, s.held
	s.held, s.holding = Event{}, false
	r.tracker.Track(ev.txn)
	if err := s.emit(ctx, ev); err != nil {
		// Not handed on: the next session sends it again.
		r.tracker.Untrack(ev.txn)
		return err
	}
	r.filter.Forwarded()
	r.m.CDCEvents.Inc()
	if ce := r.log.Check(zap.DebugLevel, "event read"); ce != nil {
		ce.Write(zap.String("event_id", ev.ID), zap.Uint32("xid", ev.XID), zap.Stringer("lsn", ev.LSN))
	}
	return nil
}

// checkRelation stops the relay when a relation that is no outbox table by
// name, and that an insert came for, is a partition of one, or has one as a
// partition: the publication sends the partition's rows under the
// partition's name (publish_via_partition_root is off), or the outbox's
// rows under its root's name, and ignoring them would confirm the slot past
// events never published.
func (s *session) checkRelation(ctx context.Context, rel relationName, lsn pglogrepl.LSN) error {
	kin, err := s.partitions.of(ctx, rel.id)
	if err != nil || kin.outbox == "" {
		return err
	}
	cfg := s.r.cfg
	name := pgx.Identifier{rel.namespace, rel.name}.Sanitize()
	if !kin.under {
		return fmt.Errorf("replication stream %s: the outbox %s is a partition of %s (oid %d), and publication %q sends its rows under that name (publish_via_partition_root), which no --table setting names, so the relay would not publish them; detach it (ALTER TABLE %s DETACH PARTITION %s), or set --table to %s: %w",
			s.where(lsn), kin.outbox, name, rel.id, cfg.Publication, name, kin.outbox, name, ErrConfig)
	}
	return fmt.Errorf("replication stream %s: relation %s (oid %d) is a partition of the outbox %s, and publication %q sends its rows under the partition's name, which the relay would not publish; run ALTER PUBLICATION %s SET (publish_via_partition_root = true), or set --table to the partitioned table the publication publishes via its root: %w",
		s.where(lsn), name, rel.id, kin.outbox, cfg.Publication,
		pgx.Identifier{cfg.Publication}.Sanitize(), ErrConfig)
}

// emit hands ev on, once its bytes fit the budget. While the publisher is
// slow it keeps reporting status, so a stalled NATS cannot make the server
// end the session on wal_sender_timeout.
func (s *session) emit(ctx context.Context, ev Event) error {
	ev.size = eventSize(&ev)
	if !s.r.budget.take(ev.size) {
		if err := s.waitBudget(ctx, ev.size); err != nil {
			return err
		}
	}
	if err := s.send(ctx, ev); err != nil {
		s.r.budget.release(ev.size) // not handed on
		return err
	}
	return nil
}

// send puts ev on the events channel, reporting status while it waits.
func (s *session) send(ctx context.Context, ev Event) error {
	select {
	case s.r.events <- ev:
		return nil
	default:
	}
	// While the pump is the bottleneck the reader waits here for most
	// events: one timer per session, not one per wait.
	if s.statusTimer == nil {
		s.statusTimer = time.NewTimer(time.Until(s.nextStatus))
	} else {
		s.statusTimer.Reset(time.Until(s.nextStatus))
	}
	timer := s.statusTimer
	for {
		select {
		case s.r.events <- ev:
			timer.Stop()
			return nil
		case <-ctx.Done():
			timer.Stop()
			return ctx.Err()
		case err := <-s.r.fatal:
			timer.Stop()
			return err
		case err := <-s.r.restart:
			timer.Stop()
			return err
		case <-timer.C:
			if err := s.sendStatus(); err != nil {
				return err
			}
			timer.Reset(time.Until(s.nextStatus))
		}
	}
}

// waitBudget waits until n bytes fit the budget and takes them, reporting
// status meanwhile.
func (s *session) waitBudget(ctx context.Context, n int64) error {
	timer := time.NewTimer(time.Until(s.nextStatus))
	defer timer.Stop()
	for !s.r.budget.take(n) {
		select {
		case <-s.r.budget.freed:
		case <-ctx.Done():
			return ctx.Err()
		case err := <-s.r.fatal:
			return err
		case err := <-s.r.restart:
			return err
		case <-timer.C:
			if err := s.sendStatus(); err != nil {
				return err
			}
			timer.Reset(time.Until(s.nextStatus))
		}
	}
	return nil
}

// sendStatus reports the confirmed position as written, flushed and applied.
// All three are set: pglogrepl fills a zero flush or apply position with the
// write position, which would move the slot further than meant.
func (s *session) sendStatus() error {
	s.nextStatus = time.Now().Add(s.r.cfg.StatusInterval)
	s.r.beat()
	confirmed := s.r.tracker.Confirmed()
	if confirmed == 0 {
		return nil
	}
	err := pglogrepl.SendStandbyStatusUpdate(context.Background(), s.conn, pglogrepl.StandbyStatusUpdate{
		WALWritePosition: confirmed,
		WALFlushPosition: confirmed,
		WALApplyPosition: confirmed,
		ClientTime:       time.Now(),
	})
	if err != nil {
		return fmt.Errorf("send standby status: %w", err)
	}
	s.r.m.CDCConfirmedLSN.Set(float64(confirmed))
	s.r.m.CDCLastSlotAdvance.Set(float64(s.r.tracker.LastAdvance().UnixNano()) / 1e9)
	s.updateLag(confirmed)
	return nil
}

// requestReply sends the confirmed position and asks the server to answer.
func (s *session) requestReply() error {
	c := s.r.tracker.Confirmed()
	err := pglogrepl.SendStandbyStatusUpdate(context.Background(), s.conn, pglogrepl.StandbyStatusUpdate{
		WALWritePosition: c, WALFlushPosition: c, WALApplyPosition: c, ClientTime: time.Now(), ReplyRequested: true,
	})
	if err != nil {
		return fmt.Errorf("send standby status: %w", err)
	}
	return nil
}

func (s *session) observeWALEnd(walEnd pglogrepl.LSN) {
	if walEnd <= s.walEnd {
		return
	}
	s.walEnd = walEnd
	s.r.m.CDCServerWALEnd.Set(float64(walEnd))
	s.updateLag(s.r.tracker.Confirmed())
}

func (s *session) updateLag(confirmed pglogrepl.LSN) {
	if s.walEnd > confirmed {
		s.r.m.CDCLagBytes.Set(float64(s.walEnd - confirmed))
	} else {
		s.r.m.CDCLagBytes.Set(0)
	}
}

// close sends a last status update, so a restart replays as little as
// possible, and closes the connection. Correctness never depends on it.
func (s *session) close() {
	timeout := s.r.cfg.ConnectTimeout
	if nc := s.conn.Conn(); nc != nil {
		// A write to a dead peer must not hold up shutdown.
		_ = nc.SetWriteDeadline(time.Now().Add(timeout))
	}
	if err := s.sendStatus(); err == nil {
		s.r.log.Info("final status sent", zap.String("slot", s.r.cfg.Slot), zap.Stringer("confirmed_lsn", s.r.tracker.Confirmed()))
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	_ = s.conn.Close(ctx) // the session is over either way
	s.partitions.close()
}
