package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"

	"github.com/outbox-relay/outbox-relay/internal/cdc"
	"github.com/outbox-relay/outbox-relay/internal/janitor"
	"github.com/outbox-relay/outbox-relay/internal/metrics"
	"github.com/outbox-relay/outbox-relay/internal/relay"
	"github.com/outbox-relay/outbox-relay/internal/sink"
)

// checkReport is what `relay check` found: a line per check that passed, the
// warnings, and the problems.
type checkReport struct {
	oks, warnings []string
	problems      []error
}

func (r *checkReport) ok(notes ...string) { r.oks = append(r.oks, notes...) }

func (r *checkReport) warn(warnings ...string) { r.warnings = append(r.warnings, warnings...) }

func (r *checkReport) fail(err error) {
	if err != nil {
		r.problems = append(r.problems, err)
	}
}

// overrule replaces the passing lines that start with prefix by err: a
// closer look found that what they announce cannot happen.
func (r *checkReport) overrule(prefix string, err error) {
	r.oks = slices.DeleteFunc(r.oks, func(n string) bool { return strings.HasPrefix(n, prefix) })
	r.fail(err)
}

// runCheck runs the preflight checks of PostgreSQL and NATS without changing
// anything, prints a line per check and per warning, and fails listing every
// problem: whatever `relay run` would fail on or never get past.
func runCheck(ctx context.Context, cfg *config, out io.Writer) error {
	var r checkReport
	notes, err := cdc.Check(ctx, cfg.cdc)
	r.ok(notes...)
	r.fail(withReplicationHint(err))
	var stream *plannedStream
	nc, err := connectNATS(cfg)
	if err != nil {
		r.fail(err)
	} else {
		defer nc.Close()
		stream = checkStream(ctx, cfg, nc, &r)
	}
	checkSlot(ctx, cfg, nc, stream, &r)
	checkJanitor(ctx, cfg, &r)
	for _, n := range r.oks {
		fmt.Fprintln(out, "ok   ", n)
	}
	for _, w := range r.warnings {
		fmt.Fprintln(out, "warn ", w)
	}
	if err := errors.Join(r.problems...); err != nil {
		return fmt.Errorf("check found problems:\n%w", err)
	}
	fmt.Fprintln(out, "all checks passed")
	return nil
}

// checkJanitor checks, with --retention, that the janitor can clean up.
func checkJanitor(ctx context.Context, cfg *config, r *checkReport) {
	if !cfg.janitor.Enabled() {
		return
	}
	conn, err := cdc.Connect(ctx, cfg.cdc)
	if err != nil {
		return // cdc.Check has reported it
	}
	defer func() { _ = conn.Close(context.WithoutCancel(ctx)) }()
	note, err := janitor.Check(ctx, conn, cfg.janitor)
	if err != nil {
		r.fail(fmt.Errorf("retention: cleanup cannot run: %w", err))
		return
	}
	r.ok("retention: " + note)
}

// refusedPrefix starts cdc.Check's report of a refused replication
// connection, whose hint (a pg_hba.conf replication line) is wrong for
// logical replication.
const refusedPrefix = "postgres-url: replication connection refused"

// withReplicationHint replaces, among the problems cdc.Check joined, the
// report of a refused replication connection by one with the right hint:
// a logical replication connection (replication=database) matches the
// pg_hba.conf lines of its database, not "replication" lines, which admit
// physical replication and which the relay does not need.
func withReplicationHint(err error) error {
	var joined interface{ Unwrap() []error }
	if !errors.As(err, &joined) {
		return err
	}
	problems := slices.Clone(joined.Unwrap())
	for i, p := range problems {
		var pgErr *pgconn.PgError
		if !strings.HasPrefix(p.Error(), refusedPrefix) || !errors.As(p, &pgErr) {
			continue
		}
		switch pgErr.Code {
		case "42501": // insufficient_privilege: not superuser or REPLICATION
			problems[i] = fmt.Errorf("%s: the role lacks the REPLICATION attribute; run ALTER ROLE <role> REPLICATION: %w", refusedPrefix, pgErr)
		case "28000": // invalid_authorization_specification: pg_hba.conf
			problems[i] = fmt.Errorf("%s by pg_hba.conf: a logical replication connection matches the lines for its database (as in host <database> <role> ...), not \"replication\" lines, which admit physical replication and which the relay does not need: %w", refusedPrefix, pgErr)
		default:
			problems[i] = fmt.Errorf("%s: %w", refusedPrefix, pgErr)
		}
	}
	return errors.Join(problems...)
}

// connectNATS connects for a one-off command, failing after the connect
// timeout instead of retrying forever as the relay does.
func connectNATS(cfg *config) (*sink.Connection, error) {
	nc, err := sink.Connect(cfg.sink, zap.NewNop(), metrics.New(version, commit))
	if err != nil {
		return nil, err
	}
	deadline := time.Now().Add(cfg.sink.ConnectTimeout)
	for !nc.IsConnected() {
		if time.Now().After(deadline) {
			cause := nc.NotConnectedCause()
			nc.Close()
			return nil, fmt.Errorf("nats-url: no server reachable within %s: %w", cfg.sink.ConnectTimeout, cause)
		}
		time.Sleep(50 * time.Millisecond)
	}
	return nc, nil
}

// plannedStream is the stream as `relay run` would find or create it.
type plannedStream struct {
	subjects []string
	// maxSize bounds a message: the server's max_payload, or the stream's
	// max_msg_size when smaller.
	maxSize int64
	exists  bool
}

// checkStream checks the stream as EnsureStream does at startup, and
// returns what run would publish into, or nil when run would fail there.
func checkStream(ctx context.Context, cfg *config, nc *sink.Connection, r *checkReport) *plannedStream {
	dry := cfg.sink
	dry.CreateStream = false
	state, err := nc.EnsureStream(ctx, dry, []string{cfg.template.Wildcard()}, zap.NewNop())
	if err != nil {
		if cfg.sink.CreateStream && errors.Is(err, sink.ErrConfig) && state.Subjects == nil {
			if err := checkStreamToCreate(ctx, cfg, nc); err != nil {
				r.fail(err)
				return nil
			}
			r.ok(fmt.Sprintf("stream %q: missing, will be created on start with subjects %s", cfg.sink.Stream, strings.Join(cfg.sink.StreamSubjects, ", ")))
			return &plannedStream{subjects: cfg.sink.StreamSubjects, maxSize: nc.MaxPayload()}
		}
		r.fail(err)
		return nil
	}
	r.ok(fmt.Sprintf("stream %q: captures %s (duplicate window %s, replicas %d)",
		cfg.sink.Stream, cfg.template.Wildcard(), state.DuplicateWindow, state.Replicas))
	if state.Replicas < 3 {
		r.warn(fmt.Sprintf("stream %q: fewer than 3 replicas: an acknowledgement survives a NATS host crash only with R3 or sync_interval: always", cfg.sink.Stream))
	}
	planned := &plannedStream{subjects: state.Subjects, maxSize: nc.MaxPayload(), exists: true}
	if state.MaxMsgSize > 0 && int64(state.MaxMsgSize) < planned.maxSize {
		planned.maxSize = int64(state.MaxMsgSize)
	}
	return planned
}

// checkStreamToCreate checks a stream the relay would create: no other
// stream may claim its subjects, and some stream must capture the
// dead-letter subject.
func checkStreamToCreate(ctx context.Context, cfg *config, nc *sink.Connection) error {
	overlaps, err := sink.Overlaps(ctx, nc.JetStream, cfg.sink.StreamSubjects, cfg.sink.RequestTimeout)
	if err != nil {
		return err
	}
	var errs []error
	for _, o := range overlaps {
		errs = append(errs, fmt.Errorf("stream: %q cannot be created: %s; set --stream-subjects, --dead-letter-subject or --subject-template so that no two streams claim a subject", cfg.sink.Stream, o))
	}
	if dl := cfg.sink.DeadLetterSubject; dl != "" && !sink.Captures(cfg.sink.StreamSubjects, dl) {
		others, err := sink.Overlaps(ctx, nc.JetStream, []string{dl}, cfg.sink.RequestTimeout)
		if err != nil {
			return err
		}
		if len(others) == 0 {
			errs = append(errs, fmt.Errorf("dead-letter-subject: no stream captures the dead-letter subject %q, and stream %q would not (subjects %s); add it to --stream-subjects or change --dead-letter-subject",
				dl, cfg.sink.Stream, strings.Join(cfg.sink.StreamSubjects, ", ")))
		}
	}
	return errors.Join(errs...)
}

// peekLimit is how many events at the head of the slot check and status
// look at for a poison event.
const peekLimit = 1000

// checkSlot looks closer at what cdc.Check announced: a publication the role
// would create but may not, a missing slot that run refuses to create
// because the stream shows it existed, and a poison event at the head of an
// idle slot. nc and stream are nil when NATS could not be checked.
func checkSlot(ctx context.Context, cfg *config, nc *sink.Connection, stream *plannedStream, r *checkReport) {
	conn, err := cdc.Connect(ctx, cfg.cdc)
	if err != nil {
		return // cdc.Check has reported it
	}
	defer func() { _ = conn.Close(context.WithoutCancel(ctx)) }()
	if err := cdc.CheckCreatePublication(ctx, conn, cfg.cdc); err != nil {
		r.overrule(fmt.Sprintf("publication %q: missing", cfg.cdc.Publication), err)
	}
	checkFailover(ctx, cfg, conn, r)
	slot, err := cdc.ReadSlot(ctx, conn, cfg.cdc.Slot, cfg.cdc.QueryTimeout)
	if err != nil || nc == nil {
		return // cdc.Check has reported a failed read
	}
	origin, err := slotOrigin(ctx, cfg, conn)
	if err != nil {
		r.fail(err)
		return
	}
	if !slot.Exists {
		if !cfg.cdc.CreateSlot {
			return // cdc.Check has reported it
		}
		if err := slotMayBeCreated(ctx, cfg, nc, origin); err != nil {
			r.overrule(fmt.Sprintf("slot %q: missing", cfg.cdc.Slot), err)
		}
		if cfg.snapshot.enabled() {
			if err := cdc.CheckSelection(ctx, cfg.cdc, cfg.snapshot.selection(time.Now()), "initial-snapshot"); err != nil {
				r.fail(err)
			} else {
				r.ok(fmt.Sprintf("initial snapshot: the rows %s selects are published when relay run creates the slot", cfg.snapshot.text))
			}
		}
		return
	}
	if stream == nil {
		return
	}
	if stream.exists {
		// As relay run at every session start: a server that lacks WAL the
		// relay published is refused, never skipped.
		if err := checkHistory(ctx, cfg, nc, origin); err != nil {
			r.fail(err)
		}
	}
	if slot.Active {
		r.ok(fmt.Sprintf("slot %q: in use, so the events at its head were not looked at", cfg.cdc.Slot))
		return
	}
	poison, err := headPoison(ctx, cfg, conn, origin, stream)
	switch {
	case err != nil:
		r.warn(fmt.Sprintf("slot %q: could not look at the events at its head: %v", cfg.cdc.Slot, err))
	case poison == nil:
		r.ok(fmt.Sprintf("slot %q: no poison event among the next %d events", cfg.cdc.Slot, peekLimit))
	case cfg.pump.OnPoison == relay.OnPoisonDeadLetter:
		r.ok(fmt.Sprintf("slot %q: %s; it will be dead-lettered", cfg.cdc.Slot, describePoison(poison)))
	default:
		r.fail(poisonProblem(cfg, poison))
	}
}

// slotOrigin returns the origin stamped on the messages of the configured
// slot.
func slotOrigin(ctx context.Context, cfg *config, conn *pgx.Conn) (string, error) {
	var database string
	if err := conn.QueryRow(ctx, `SELECT current_database()`).Scan(&database); err != nil {
		return "", fmt.Errorf("read current database: %w", err)
	}
	systemID, err := cdc.SystemID(ctx, cfg.cdc)
	if err != nil {
		return "", err
	}
	return origin(systemID, database, cfg.cdc.Slot), nil
}

// slotMayBeCreated applies run's rule for a missing slot (slotNeverExisted)
// to the stream as it is. A stream that does not exist yet holds nothing.
func slotMayBeCreated(ctx context.Context, cfg *config, nc *sink.Connection, origin string) error {
	store, err := sink.OpenStateStore(ctx, nc, cfg.sink.StateBucket, 0, cfg.sink.RequestTimeout)
	if err != nil {
		return err
	}
	streamLog := sink.NewStreamReader(nc.Conn, nc.JetStream, cfg.sink.Stream, cfg.sink.RequestTimeout)
	err = slotNeverExisted(ctx, relay.NewWatermark(streamLog, store, cfg.sink.Stream, origin, zap.NewNop()))
	if err == nil {
		return nil
	}
	return fmt.Errorf("slot: %q does not exist and relay run will refuse to create it: %w", cfg.cdc.Slot, err)
}

// headPoison returns the first poison event among the next peekLimit events
// of the idle slot, as `relay run` would map them, or nil.
func headPoison(ctx context.Context, cfg *config, conn *pgx.Conn, origin string, stream *plannedStream) (*relay.PoisonError, error) {
	events, err := cdc.PeekEvents(ctx, conn, cfg.cdc, peekLimit)
	if err != nil {
		return nil, err
	}
	mapper := relay.NewMapper(cfg.template, origin, stream.subjects)
	for i := range events {
		ev := &events[i]
		msg, err := mapper.Message(ev)
		var poison *relay.PoisonError
		if errors.As(err, &poison) {
			return poison, nil
		}
		if err != nil {
			return nil, err
		}
		if !relay.Fits(msg, stream.maxSize) {
			return &relay.PoisonError{
				Reason: "too_large", ID: ev.ID, Position: ev.Position,
				Detail: fmt.Sprintf("payload and headers exceed %d bytes (the server's max_payload or the stream's max_msg_size), or the headers 64 KiB", stream.maxSize),
			}, nil
		}
	}
	return nil, nil
}

func describePoison(p *relay.PoisonError) string {
	return fmt.Sprintf("poison event %s at %s: %s", p.ID, p.Position, p.Error())
}

// poisonProblem explains a poison event at the head of the slot under
// --on-poison=stop.
func poisonProblem(cfg *config, p *relay.PoisonError) error {
	return fmt.Errorf("slot: the next event of %q to publish is %s; relay run stops on it at every start (--on-poison=stop). Fix its cause or run with --on-poison=dead-letter; see the README's poison events",
		cfg.cdc.Slot, describePoison(p))
}

// runStatus prints the slot, the lag and the stream, and whether they agree.
// It fails when they do not, so scripts can act on it.
func runStatus(ctx context.Context, cfg *config, out io.Writer) error {
	var problems []error
	pgConn, err := cdc.Connect(ctx, cfg.cdc)
	if err != nil {
		return err
	}
	defer func() { _ = pgConn.Close(context.WithoutCancel(ctx)) }()
	slot, err := cdc.ReadSlot(ctx, pgConn, cfg.cdc.Slot, cfg.cdc.QueryTimeout)
	if err != nil {
		return fmt.Errorf("read slot %q: %w", cfg.cdc.Slot, err)
	}
	ours, err := slotOrigin(ctx, cfg, pgConn)
	if err != nil {
		return err
	}
	tables, err := cdc.ResolveTables(ctx, pgConn, cfg.cdc)
	if err != nil {
		return err
	}
	tablesExist := true
	for _, t := range tables {
		var tableExists bool
		if err := pgConn.QueryRow(ctx, `SELECT to_regclass($1) IS NOT NULL`, t.Qualified()).Scan(&tableExists); err != nil {
			return fmt.Errorf("look up table %s: %w", t.Qualified(), err)
		}
		if !tableExists {
			tablesExist = false
			problems = append(problems, fmt.Errorf("table: %s does not exist; create it (see sql/outbox.sql) or set --table", t.Qualified()))
		}
	}
	fmt.Fprintf(out, "slot %s\n", cfg.cdc.Slot)
	if !slot.Exists {
		fmt.Fprintln(out, "  exists:              no")
	} else {
		fmt.Fprintf(out, "  active:              %t\n", slot.Active)
		fmt.Fprintf(out, "  confirmed_flush_lsn: %s\n", slot.ConfirmedFlush)
		fmt.Fprintf(out, "  current WAL:         %s\n", slot.CurrentWAL)
		fmt.Fprintf(out, "  lag:                 %s (current WAL - confirmed)\n", bytesText(slot.LagBytes))
		fmt.Fprintf(out, "  retained WAL:        %s\n", bytesText(slot.RetainedBytes))
		fmt.Fprintf(out, "  wal_status:          %s\n", slot.WALStatus)
		if slot.InvalidationReason != "" {
			fmt.Fprintf(out, "  invalidation_reason: %s\n", slot.InvalidationReason)
		}
		if slot.SafeWALSize < 0 {
			fmt.Fprintln(out, "  safe_wal_size:       unlimited (max_slot_wal_keep_size = -1)")
		} else {
			fmt.Fprintf(out, "  safe_wal_size:       %s\n", bytesText(slot.SafeWALSize))
		}
		if cause := slot.LostCause(); cause != "" {
			problems = append(problems, fmt.Errorf("the slot is lost: %s; see the README's slot recovery section", cause))
		}
		printFailover(ctx, cfg, pgConn, out)
	}

	nc, err := connectNATS(cfg)
	if err != nil {
		return errors.Join(append(problems, err)...)
	}
	defer nc.Close()
	js := nc.JetStream
	stream, err := js.Stream(ctx, cfg.sink.Stream)
	if err != nil {
		return errors.Join(append(problems, fmt.Errorf("stream %q: %w", cfg.sink.Stream, err))...)
	}
	info := stream.CachedInfo()
	fmt.Fprintf(out, "stream %s\n", cfg.sink.Stream)
	fmt.Fprintf(out, "  messages:            %d\n", info.State.Msgs)
	fmt.Fprintf(out, "  last sequence:       %d\n", info.State.LastSeq)
	fmt.Fprintf(out, "  duplicate window:    %s\n", info.Config.Duplicates)
	fmt.Fprintf(out, "  replicas:            %d\n", info.Config.Replicas)
	store, err := sink.OpenStateStore(ctx, nc, cfg.sink.StateBucket, 0, cfg.sink.RequestTimeout)
	if err != nil {
		return errors.Join(append(problems, err)...)
	}
	reading, err := readMark(ctx, cfg, nc, store, ours)
	if err != nil {
		return errors.Join(append(problems, err)...)
	}
	seen, err := originsSeen(ctx, stream, originsScan, cfg.sink.RequestTimeout)
	if err != nil {
		return errors.Join(append(problems, err)...)
	}
	fmt.Fprintf(out, "  writers:             %s\n", seen.describe(ours))
	if slot.Exists && !slot.Active && tablesExist {
		planned := &plannedStream{subjects: info.Config.Subjects, maxSize: nc.MaxPayload(), exists: true}
		if info.Config.MaxMsgSize > 0 && int64(info.Config.MaxMsgSize) < planned.maxSize {
			planned.maxSize = int64(info.Config.MaxMsgSize)
		}
		poison, err := headPoison(ctx, cfg, pgConn, ours, planned)
		switch {
		case err != nil:
			fmt.Fprintf(out, "  next events:         could not be read: %v\n", err)
		case poison == nil:
			fmt.Fprintln(out, "  next events:         no poison event")
		case cfg.pump.OnPoison == relay.OnPoisonDeadLetter:
			fmt.Fprintf(out, "  next events:         %s; it will be dead-lettered\n", describePoison(poison))
		default:
			fmt.Fprintf(out, "  next events:         %s\n", describePoison(poison))
			problems = append(problems, poisonProblem(cfg, poison))
		}
	}
	mark := reading.Mark
	fmt.Fprintf(out, "  high-water mark:     bucket %s, key %s\n", cfg.sink.StateBucket, relay.MarkKey(cfg.sink.Stream, ours))
	switch {
	case mark.Position.IsZero() && !reading.Recorded:
		fmt.Fprintln(out, "  last relayed event:  none")
	case mark.Position.IsZero():
		fmt.Fprintln(out, "  last relayed event:  none yet (the slot is recorded)")
	default:
		fmt.Fprintf(out, "  last relayed event:  %s at sequence %d (commit %s)\n", mark.MsgID, mark.Seq, mark.Position)
	}
	if reading.Uncertain > 0 {
		fmt.Fprintf(out, "  uncertain:           %d messages after it were removed by the stream's retention\n", reading.Uncertain)
	}
	if reading.Foreign || mark.Shared {
		fmt.Fprintln(out, "  shared:              other writers' messages follow the relay's own on this stream")
	}
	if len(mark.Holes) > 0 {
		fmt.Fprintf(out, "  to publish again:    %d events another writer's message displaced\n", len(mark.Holes))
	}
	if err := printTimeline(ctx, cfg, store, ours, mark.Position.CommitLSN, out); err != nil {
		problems = append(problems, err)
	}
	if err := printJanitor(ctx, cfg, store, ours, out); err != nil {
		problems = append(problems, err)
	}
	if err := printSnapshot(ctx, store, cfg.sink.Stream, ours, out); err != nil {
		problems = append(problems, err)
	}
	if (reading.Recorded || !mark.Position.IsZero()) && !slot.Exists {
		problems = append(problems, fmt.Errorf("the relay published events of slot %q, which no longer exists: it was dropped; see the README's slot recovery section", cfg.cdc.Slot))
	}
	if err := errors.Join(problems...); err != nil {
		fmt.Fprintln(out, "consistency:         PROBLEM")
		return err
	}
	if seen.shared(ours) || reading.Foreign || mark.Shared {
		// Supported, but never "ok" without saying so: the relay's own
		// events are in order among themselves only.
		fmt.Fprintln(out, "consistency:         shared (this relay's events are once each and in commit order among themselves; others write to the stream too)")
		return nil
	}
	fmt.Fprintln(out, "consistency:         ok")
	return nil
}

// printJanitor prints whether cleanup is on in this configuration and what
// the janitor of the slot's leader recorded of its last run.
func printJanitor(ctx context.Context, cfg *config, store *sink.StateStore, origin string, out io.Writer) error {
	state, ran, err := janitorStore{store: store, key: janitorKey(cfg.sink.Stream, origin)}.Load(ctx)
	if err != nil {
		return err
	}
	fmt.Fprintln(out, "janitor")
	if cfg.janitor.Enabled() {
		fmt.Fprintf(out, "  enabled:             yes, retention %s, every %s\n", cfg.janitor.Retention, cfg.janitor.Interval)
	} else {
		fmt.Fprintln(out, "  enabled:             no (--retention is 0)")
	}
	if !ran {
		fmt.Fprintln(out, "  last run:            none")
		return nil
	}
	result := "ok"
	if state.LastError != "" {
		result = "failed: " + state.LastError
	}
	fmt.Fprintf(out, "  last run:            %s, retention %s: %s\n", state.LastRun.UTC().Format(time.RFC3339), state.Retention, result)
	if !state.LastSuccess.IsZero() {
		fmt.Fprintf(out, "  last success:        %s\n", state.LastSuccess.UTC().Format(time.RFC3339))
	}
	fmt.Fprintf(out, "  rows deleted:        %d, partitions dropped: %d (all runs)\n", state.RowsDeleted, state.PartitionsDropped)
	return nil
}

// readMark reads what the stream holds of origin's events, as a relay
// starting now would.
func readMark(ctx context.Context, cfg *config, nc *sink.Connection, store *sink.StateStore, origin string) (relay.Reading, error) {
	streamLog := sink.NewStreamReader(nc.Conn, nc.JetStream, cfg.sink.Stream, cfg.sink.RequestTimeout)
	return relay.NewWatermark(streamLog, store, cfg.sink.Stream, origin, zap.NewNop()).Read(ctx, relay.Mark{}, 0, false)
}

// originsScan is how many messages at the end of the stream status reads to
// see who writes it.
const originsScan = 100

// writers counts the messages at the end of a stream by origin; anonymous
// counts those without an Outbox-Origin header (not from a relay).
type writers struct {
	scanned   int
	byOrigin  map[string]int
	anonymous int
}

// shared reports whether anyone but ours wrote the messages scanned.
func (w writers) shared(ours string) bool {
	return w.anonymous > 0 || len(w.byOrigin) > 1 || (len(w.byOrigin) == 1 && w.byOrigin[ours] == 0)
}

func (w writers) describe(ours string) string {
	if w.scanned == 0 {
		return "none (the stream is empty)"
	}
	origins := slices.Sorted(maps.Keys(w.byOrigin))
	parts := make([]string, 0, len(origins)+1)
	for _, o := range origins {
		label := o
		if o == ours {
			label += " (this slot)"
		}
		parts = append(parts, fmt.Sprintf("%s: %d", label, w.byOrigin[o]))
	}
	if w.anonymous > 0 {
		parts = append(parts, fmt.Sprintf("%d without Outbox-Origin", w.anonymous))
	}
	return fmt.Sprintf("in the last %d messages, %s", w.scanned, strings.Join(parts, ", "))
}

// originsSeen reads the headers of the last n messages of stream. It reads
// them one by one (STREAM.MSG.GET), as the relay reads the stream's tail,
// so that status needs no right to create consumers.
func originsSeen(ctx context.Context, stream jetstream.Stream, n int, timeout time.Duration) (writers, error) {
	w := writers{byOrigin: map[string]int{}}
	state := stream.CachedInfo().State
	for seq := state.LastSeq; seq >= state.FirstSeq && seq > 0 && w.scanned < n; seq-- {
		rctx, cancel := context.WithTimeout(ctx, timeout)
		msg, err := stream.GetMsg(rctx, seq)
		cancel()
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			continue
		}
		if err != nil {
			return w, fmt.Errorf("read message %d of stream %q: %w", seq, stream.CachedInfo().Config.Name, err)
		}
		w.scanned++
		if o := msg.Header.Get(relay.HeaderOrigin); o != "" {
			w.byOrigin[o]++
		} else {
			w.anonymous++
		}
	}
	return w, nil
}

func bytesText(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}
