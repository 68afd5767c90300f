package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"regexp"
	"strings"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/outbox-relay/outbox-relay/internal/backoff"
	"github.com/outbox-relay/outbox-relay/internal/cdc"
	"github.com/outbox-relay/outbox-relay/internal/metrics"
	"github.com/outbox-relay/outbox-relay/internal/relay"
	"github.com/outbox-relay/outbox-relay/internal/sink"
)

// `relay replay`: republish chosen events from the outbox table, for
// consumers that lost data or a new consumer's backfill. The rows are read in
// one snapshot, chunk by chunk, in creation order (created_at, then
// transaction, then insertion: the table does not record commit order), and
// published with plain JetStream publishes, a bounded window of them in
// flight, each awaiting its PubAck. Replayed messages are not part of the
// relay's chain of messages: they carry no commit position and no origin, and
// a message id of their own, <event id>/replay/<replay id>, so that JetStream
// does not drop them as duplicates of the originals, and a replay run again
// with the same replay id stores nothing twice within the stream's duplicate
// window. Outbox-Replay and Outbox-Replay-Of mark them.

// replaySettings are relay replay's flags.
type replaySettings struct {
	since, until    string
	ids, idsFile    string
	afterSeq        uint64
	subjectPrefix   string
	subjectTemplate string
	id              string
	dryRun          bool

	// Derived by finish.
	sinceTime, untilTime time.Time
	idList               []string
	target               relay.Template
}

// replayIDPattern is what a replay id may be: it is part of every message
// id, and a header value.
var replayIDPattern = regexp.MustCompile(`^[A-Za-z0-9_.:-]{1,64}$`)

// replayPreview is how many messages a dry run prints.
const replayPreview = 5

// finish checks the settings, given the relay's subject template, and
// derives the selection and the target template. Exactly one selection:
// a time range, an id list, or a stream position.
func (r *replaySettings) finish(subjectTemplate string) error {
	var errs []error
	var chosen []string
	if r.since != "" || r.until != "" {
		chosen = append(chosen, "--replay-since/--replay-until")
	}
	if r.ids != "" || r.idsFile != "" {
		chosen = append(chosen, "--replay-ids/--replay-ids-from")
	}
	if r.afterSeq > 0 {
		chosen = append(chosen, "--replay-after-seq")
	}
	switch len(chosen) {
	case 0:
		errs = append(errs, errors.New("replay: no selection; choose exactly one of --replay-since/--replay-until (a time range), --replay-ids/--replay-ids-from (an id list) or --replay-after-seq (a stream position)"))
	case 1:
	default:
		errs = append(errs, fmt.Errorf("replay: several selections (%s); choose exactly one", strings.Join(chosen, ", ")))
	}
	parseTime := func(setting, text string) time.Time {
		if text == "" {
			return time.Time{}
		}
		t, err := time.Parse(time.RFC3339Nano, text)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %q, must be an RFC 3339 time such as 2026-11-01T00:00:00Z", setting, text))
		}
		return t
	}
	r.sinceTime = parseTime("replay-since", r.since)
	r.untilTime = parseTime("replay-until", r.until)
	if !r.sinceTime.IsZero() && !r.untilTime.IsZero() && !r.sinceTime.Before(r.untilTime) {
		errs = append(errs, fmt.Errorf("replay-until: %s is not after --replay-since %s", r.until, r.since))
	}
	r.idList = splitIDs(r.ids)
	if r.idsFile != "" {
		data, err := os.ReadFile(r.idsFile)
		if err != nil {
			errs = append(errs, fmt.Errorf("replay-ids-from: %w", err))
		}
		r.idList = append(r.idList, splitIDs(string(data))...)
	}
	if (r.ids != "" || r.idsFile != "") && len(r.idList) == 0 {
		errs = append(errs, errors.New("replay-ids: the list is empty"))
	}
	if r.id == "" {
		r.id = newReplayID(time.Now())
	} else if !replayIDPattern.MatchString(r.id) {
		errs = append(errs, fmt.Errorf("replay-id: %q, must be 1 to 64 letters, digits, '_', '.', ':' or '-'", r.id))
	}
	target, setting := subjectTemplate, "subject-template"
	switch {
	case r.subjectPrefix != "" && r.subjectTemplate != "":
		errs = append(errs, errors.New("replay-subject-prefix: set together with --replay-subject-template; give one"))
	case r.subjectPrefix != "":
		target, setting = strings.TrimSuffix(r.subjectPrefix, ".")+"."+subjectTemplate, "replay-subject-prefix"
	case r.subjectTemplate != "":
		target, setting = r.subjectTemplate, "replay-subject-template"
	}
	tmpl, err := relay.ParseTemplate(target)
	if err != nil && setting != "subject-template" { // the relay's own is reported by finish
		errs = append(errs, fmt.Errorf("%s: %s", setting, strings.TrimPrefix(err.Error(), "subject-template: ")))
	}
	r.target = tmpl
	return errors.Join(errs...)
}

// splitIDs splits a list of ids separated by commas or white space.
func splitIDs(text string) []string {
	return strings.FieldsFunc(text, func(c rune) bool { return c == ',' || c == ' ' || c == '\t' || c == '\n' || c == '\r' })
}

// newReplayID makes a replay id from the time and a few random bytes.
func newReplayID(now time.Time) string {
	b := make([]byte, 3)
	_, _ = rand.Read(b) // never fails
	return now.UTC().Format("20060102T150405Z") + "-" + hex.EncodeToString(b)
}

// selection is the rows the settings select; anchor is the created_at of
// the message at --replay-after-seq.
func (r *replaySettings) selection(anchor time.Time) cdc.Selection {
	return cdc.Selection{Since: r.sinceTime, Until: r.untilTime, IDs: r.idList, After: anchor}
}

// replayMessageID is the message id of event id replayed by replay.
func replayMessageID(id, replay string) string { return id + "/replay/" + replay }

// replayTally counts what a replay did.
type replayTally struct {
	selected, read, published, duplicates, poison int64
}

func (t replayTally) String() string {
	return fmt.Sprintf("%d rows selected, %d published, %d duplicates, %d poison", t.selected, t.published, t.duplicates, t.poison)
}

// runReplay republishes the rows the settings select; see the README's
// replaying events.
func runReplay(ctx context.Context, cfg *config, out io.Writer) error {
	r := &cfg.replay
	nc, err := connectNATS(cfg)
	if err != nil {
		return err
	}
	defer nc.Close()

	// Which stream stores the target subjects.
	wildcard := r.target.Wildcard()
	overlaps, err := sink.Overlaps(ctx, nc.JetStream, []string{wildcard}, cfg.sink.RequestTimeout)
	if err != nil {
		return err
	}
	var target *sink.Overlap
	for i, o := range overlaps {
		if sink.Captures(o.Subjects, wildcard) {
			target = &overlaps[i]
		}
	}
	if target == nil && len(overlaps) == 1 {
		target = &overlaps[0] // the subjects it lacks are poison
	}
	if target == nil {
		if len(overlaps) == 0 {
			return fmt.Errorf("replay: no stream captures %s, the subjects of template %q; create a stream for them, or choose another with --replay-subject-prefix or --replay-subject-template: %w",
				wildcard, r.target.String(), sink.ErrConfig)
		}
		texts := make([]string, len(overlaps))
		for i, o := range overlaps {
			texts[i] = o.String()
		}
		return fmt.Errorf("replay: several streams take parts of %s (%s); give the replay subjects one stream captures whole: %w", wildcard, strings.Join(texts, "; "), sink.ErrConfig)
	}
	rctx, cancel := context.WithTimeout(ctx, cfg.sink.RequestTimeout)
	stream, err := nc.JetStream.Stream(rctx, target.Stream)
	cancel()
	if err != nil {
		return fmt.Errorf("look up stream %q: %w", target.Stream, err)
	}
	sc := stream.CachedInfo().Config
	fmt.Fprintf(out, "replay %s: subjects %s, stored by stream %s (subjects %s, duplicate window %s)\n",
		r.id, r.target.String(), sc.Name, strings.Join(sc.Subjects, ", "), sc.Duplicates)
	if !sink.Captures(sc.Subjects, wildcard) {
		fmt.Fprintf(out, "warning: stream %s captures only some of %s; the events whose subjects it lacks are poison\n", sc.Name, wildcard)
	}
	if sc.Name == cfg.sink.Stream {
		fmt.Fprintf(out, "note: replaying into the relay's own stream %s: a running relay sees another writer there (see the README's other writers); prefer another subject and stream for a backfill\n", sc.Name)
	}

	// What to read.
	var anchor time.Time
	if r.afterSeq > 0 {
		streamLog := sink.NewStreamReader(nc.Conn, nc.JetStream, cfg.sink.Stream, cfg.sink.RequestTimeout)
		t, found, err := messageCreatedAt(ctx, streamLog, r.afterSeq)
		if err != nil {
			return err
		}
		if !found {
			return fmt.Errorf("replay-after-seq: stream %q holds no message of the relay at sequence %d (none, or one without %s); choose a sequence of one of its events",
				cfg.sink.Stream, r.afterSeq, relay.HeaderCreatedAt)
		}
		anchor = t
		fmt.Fprintf(out, "after sequence %d of stream %s: rows created after %s\n", r.afterSeq, cfg.sink.Stream, t.Format(time.RFC3339Nano))
	}
	scan, err := cdc.ScanTable(ctx, cfg.cdc, r.selection(anchor))
	if err != nil {
		return err
	}
	defer scan.Close()
	if missing := scan.Missing(); len(missing) > 0 {
		fmt.Fprintf(out, "warning: %d of the ids given are in no row of the table: %s\n", len(missing), strings.Join(first(missing, 20), ", "))
	}
	database, err := currentDatabase(ctx, cfg)
	if err != nil {
		return err
	}
	mcfg := *cfg
	mcfg.template = r.target
	mapper, err := newMapper(&mcfg, "", database, sc.Subjects)
	if err != nil {
		return err
	}
	maxPayload := nc.MaxPayload()
	if sc.MaxMsgSize > 0 && int64(sc.MaxMsgSize) < maxPayload {
		maxPayload = int64(sc.MaxMsgSize)
	}
	p := &replayer{
		cfg: cfg, out: out, mapper: mapper, maxPayload: maxPayload,
		tally: replayTally{selected: scan.Total()},
	}
	fmt.Fprintf(out, "rows selected: %d, in creation order (created_at, then transaction, then insertion)\n", scan.Total())
	if r.dryRun {
		return p.dryRun(ctx, scan)
	}
	sinkCfg := cfg.sink
	sinkCfg.Stream, sinkCfg.PublishMode, sinkCfg.FastBatch, sinkCfg.Atomic = sc.Name, sink.PublishAsync, false, false
	p.publisher, err = sink.New(nc.Conn, sinkCfg, metrics.New(version, commit))
	if err != nil {
		return err
	}
	defer func() { _ = p.publisher.Close() }() // nothing is in flight once run returned
	p.publisher.FailOnDisconnect(nc.Disconnected)
	err = p.run(ctx, scan)
	fmt.Fprintf(out, "replay %s: %s\n", r.id, p.tally)
	if err != nil {
		return fmt.Errorf("replay %s stopped (run it again with --replay-id=%s within the stream's duplicate window of %s to go on without storing anything twice): %w",
			r.id, r.id, sc.Duplicates, err)
	}
	return nil
}

// first returns up to n of list.
func first(list []string, n int) []string { return list[:min(n, len(list))] }

// replayer maps and publishes the rows of a replay.
type replayer struct {
	cfg        *config
	out        io.Writer
	mapper     *relay.Mapper
	publisher  *sink.Sink
	maxPayload int64
	tally      replayTally
	// inFlight are the publishes awaiting their PubAck, oldest first, and
	// inFlightBytes their size.
	inFlight      []replayPending
	inFlightBytes int64
	// outage is set while publishing again keeps failing.
	outage bool
}

// replayPending is a publish in flight and what it takes to send it again.
type replayPending struct {
	pending sink.Pending
	msg     sink.Message
	eventID string
}

// message maps ev to its replayed message, or explains why it is poison.
// The message's header map is the mapper's: publish it before the next.
func (p *replayer) message(ev *cdc.Event) (sink.Message, error) {
	msg, err := p.mapper.Message(ev)
	if err != nil {
		return msg, err
	}
	// Not part of the relay's chain of messages: no commit position (a
	// row read from the table has none) and no origin, or the relay
	// would take it for its own.
	delete(msg.Header, relay.HeaderCommitLSN)
	delete(msg.Header, relay.HeaderCommitIndex)
	delete(msg.Header, relay.HeaderOrigin)
	msg.Header.Set(relay.HeaderReplay, p.cfg.replay.id)
	msg.Header.Set(relay.HeaderReplayOf, ev.ID)
	msg.ID = replayMessageID(ev.ID, p.cfg.replay.id)
	if !relay.Fits(msg, p.maxPayload) {
		return msg, &relay.PoisonError{Reason: "too_large", ID: ev.ID, Detail: fmt.Sprintf(
			"payload %d bytes and headers: more than the %d bytes the server and the stream take", len(msg.Data), p.maxPayload)}
	}
	return msg, nil
}

// poison reports a poison row: skipped with --on-poison=dead-letter (the
// row stays in the table; its original was dead-lettered when the relay
// published it), the end of the replay with stop.
func (p *replayer) poison(id string, err error) error {
	p.tally.poison++
	if p.cfg.pump.OnPoison == relay.OnPoisonStop {
		return fmt.Errorf("event %s is poison (--on-poison=stop; --on-poison=dead-letter skips it): %w", id, err)
	}
	fmt.Fprintf(p.out, "poison: event %s skipped: %v\n", id, err)
	return nil
}

// dryRun counts the rows and prints the first messages.
func (p *replayer) dryRun(ctx context.Context, scan *cdc.Scan) error {
	shown := 0
	for {
		rows, err := scan.Next(ctx)
		if err != nil || len(rows) == 0 {
			fmt.Fprintf(p.out, "dry run, nothing published: %d rows selected, %d would be published, %d poison\n",
				p.tally.selected, p.tally.read-p.tally.poison, p.tally.poison)
			return err
		}
		for i := range rows {
			ev := &rows[i]
			p.tally.read++
			msg, err := p.message(ev)
			if err != nil {
				p.tally.poison++
				fmt.Fprintf(p.out, "poison: event %s: %v\n", ev.ID, err)
				continue
			}
			if shown < replayPreview {
				shown++
				fmt.Fprintf(p.out, "would publish: %s id %s (created %s, %d bytes)\n", msg.Subject, msg.ID, msg.Header.Get(relay.HeaderCreatedAt), len(msg.Data))
			}
		}
	}
}

// run publishes the rows of scan, a bounded window in flight, and waits for
// every PubAck.
func (p *replayer) run(ctx context.Context, scan *cdc.Scan) error {
	window := max(1, p.cfg.pump.Window)
	limit := max(1, p.cfg.cdc.EventBufferBytes/2)
	ticker := time.NewTicker(snapshotProgressInterval)
	defer ticker.Stop()
	for {
		rows, err := scan.Next(ctx)
		if err != nil {
			return errors.Join(err, p.settle(ctx, 0, 0))
		}
		if len(rows) == 0 {
			return p.settle(ctx, 0, 0)
		}
		for i := range rows {
			ev := &rows[i]
			p.tally.read++
			msg, err := p.message(ev)
			if err != nil {
				if perr := p.poison(ev.ID, err); perr != nil {
					return errors.Join(perr, p.settle(ctx, 0, 0))
				}
				continue
			}
			pending, err := p.publisher.Publish(ctx, msg)
			if err != nil {
				pending = failed{err}
			}
			// The header map is reused for the next message: keep a copy
			// to publish this one again.
			msg.Header = nats.Header(http.Header(msg.Header).Clone())
			p.inFlight = append(p.inFlight, replayPending{pending: pending, msg: msg, eventID: ev.ID})
			p.inFlightBytes += int64(len(msg.Data))
			if err := p.settle(ctx, window-1, limit); err != nil {
				return errors.Join(err, p.settle(ctx, 0, 0))
			}
		}
		select {
		case <-ticker.C:
			fmt.Fprintf(p.out, "progress: %d of %d rows read, %d published, %d duplicates, %d poison\n",
				p.tally.read, p.tally.selected, p.tally.published, p.tally.duplicates, p.tally.poison)
		default:
		}
	}
}

// failed is a publish that failed before it was sent.
type failed struct{ err error }

func (f failed) Wait(context.Context) (sink.Ack, error) { return sink.Ack{}, f.err }

// settle waits for the oldest publishes until at most n are in flight,
// holding at most bytes (0: any), publishing again, in order, each that
// failed for a reason that may pass: JetStream stores messages in the order
// sent, so the order holds unless a publish fails and a later one of the
// window is stored first.
func (p *replayer) settle(ctx context.Context, n int, bytes int64) error {
	var errs []error
	for len(p.inFlight) > n || (bytes > 0 && p.inFlightBytes > bytes && len(p.inFlight) > 0) {
		next := p.inFlight[0]
		p.inFlight = p.inFlight[1:]
		p.inFlightBytes -= int64(len(next.msg.Data))
		ack, err := next.pending.Wait(ctx)
		if err != nil && !permanent(err) && ctx.Err() == nil {
			ack, err = p.again(ctx, next, err)
		}
		switch {
		case permanent(err):
			if perr := p.poison(next.eventID, err); perr != nil {
				errs = append(errs, perr)
				n, bytes = 0, 0 // settle the rest, publish nothing more
			}
		case err != nil:
			// Only a stop (ctx) ends the retries: what is still in flight
			// is unconfirmed too.
			errs = append(errs, fmt.Errorf("publish event %s (and %d more in flight, unconfirmed): %w", next.eventID, len(p.inFlight), err))
			p.inFlight, p.inFlightBytes = nil, 0
		case ack.Duplicate:
			p.tally.duplicates++
		default:
			p.tally.published++
		}
	}
	return errors.Join(errs...)
}

// again publishes a message whose publish failed once at a time until it
// is stored, it proves poison, or ctx is done. While publishes keep failing
// it waits between attempts as the relay does (--retry-min, --retry-max),
// and says so once, and every tenth attempt; once one is stored, the next
// failed message of the window goes at once.
func (p *replayer) again(ctx context.Context, failed replayPending, cause error) (sink.Ack, error) {
	b := backoff.Backoff{Min: p.cfg.pump.RetryMin, Max: p.cfg.pump.RetryMax}
	for attempt := 1; ; attempt++ {
		if p.outage {
			if !backoff.Sleep(ctx, b.Next()) {
				return sink.Ack{}, ctx.Err()
			}
		}
		pending, err := p.publisher.Publish(ctx, failed.msg)
		if err == nil {
			var ack sink.Ack
			if ack, err = pending.Wait(ctx); err == nil {
				p.outage = false
				return ack, nil
			}
		}
		if permanent(err) || ctx.Err() != nil {
			return sink.Ack{}, err
		}
		if !p.outage || attempt%10 == 0 {
			fmt.Fprintf(p.out, "retry: publishes fail (%v, then %v); publishing event %s and those after it again (attempt %d)\n",
				cause, err, failed.eventID, attempt)
		}
		p.outage = true
	}
}

// permanent reports whether a publish failed for good: the message is too
// large for the server or the stream.
func permanent(err error) bool {
	_, class := sink.Classify(err)
	return errors.Is(err, sink.ErrPermanent) || errors.Is(class, sink.ErrPermanent)
}
