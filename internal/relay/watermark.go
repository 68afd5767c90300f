package relay

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/nats-io/nats.go"
	"go.uber.org/zap"

	"github.com/outbox-relay/outbox-relay/internal/cdc"
	"github.com/outbox-relay/outbox-relay/internal/metrics"
	"github.com/outbox-relay/outbox-relay/internal/sink"
)

// StreamLog reads the stream the relay publishes to. Every read goes to the
// stream's leader and blocks for at most its request timeout.
type StreamLog interface {
	// Info returns the stream's sequences and settings.
	Info(ctx context.Context) (sink.StreamInfo, error)
	// Header returns the headers of the message at seq, or false when the
	// stream holds none there (never stored, or removed).
	Header(ctx context.Context, seq uint64) (nats.Header, bool, error)
	// LastMsgID returns the message id of the last message the stream
	// stored, even if that message was removed since, by publishing to
	// subject a probe JetStream refuses; one-replica streams only.
	LastMsgID(ctx context.Context, subject string) (string, error)
	// DuplicateOf reports whether a message with id is in the stream's
	// duplicate window, and its sequence, without storing anything, by
	// publishing to subject (which the stream must capture); replicated
	// says how to ask (see sink.StreamReader.DuplicateOf).
	DuplicateOf(ctx context.Context, subject, id string, replicated bool) (uint64, bool, error)
}

// MarkStore keeps marks where the stream's retention cannot delete them.
// Save returns once the record is durable.
type MarkStore interface {
	Load(ctx context.Context, key string) ([]byte, bool, error)
	Save(ctx context.Context, key string, value []byte) error
}

// Mark is the relay's high-water mark in its stream: the last of its events
// the stream is known to hold. Own events on the stream always form a prefix
// of commit order (see Pump), so every event at or before Position is stored,
// except the Holes.
type Mark struct {
	// Position is the last stored event's place in commit order (zero:
	// none), Seq its stream sequence (0: unknown) and MsgID its id.
	Position cdc.Position
	Seq      uint64
	MsgID    string
	// StreamCreated is when the stream Seq belongs to was created: the
	// sequences of a deleted and recreated stream mean nothing in the new.
	StreamCreated time.Time
	// Shared is set once another writer was seen on a stream with more than
	// one replica, where only publishing one message at a time keeps the
	// relay's events in order.
	Shared bool
	// Holes are events before Position that are not stored: on a replicated
	// stream another writer's message took their place while later events
	// of a burst were stored. They are published again, out of order.
	Holes []cdc.Position
}

// IsHole reports whether pos is one of m's holes.
func (m *Mark) IsHole(pos cdc.Position) bool { return slices.Contains(m.Holes, pos) }

// Stored reports whether the event at pos is known to be on the stream.
func (m *Mark) Stored(pos cdc.Position) bool {
	return !m.Position.IsZero() && !m.Position.Less(pos) && !m.IsHole(pos)
}

// markRecord is a Mark as kept in the store.
type markRecord struct {
	Origin        string    `json:"origin"`
	Stream        string    `json:"stream"`
	CommitLSN     string    `json:"commit_lsn,omitempty"`
	Index         uint32    `json:"index,omitempty"`
	Seq           uint64    `json:"seq,omitempty"`
	MsgID         string    `json:"msg_id,omitempty"`
	StreamCreated time.Time `json:"stream_created"`
	Shared        bool      `json:"shared,omitempty"`
	Holes         []string  `json:"holes,omitempty"`
	Updated       time.Time `json:"updated"`
}

func encodeMark(origin, stream string, m Mark, now time.Time) ([]byte, error) {
	rec := markRecord{Origin: origin, Stream: stream, Seq: m.Seq, MsgID: m.MsgID, StreamCreated: m.StreamCreated, Shared: m.Shared, Updated: now}
	if !m.Position.IsZero() {
		rec.CommitLSN, rec.Index = m.Position.CommitLSN.String(), m.Position.Index
	}
	for _, h := range m.Holes {
		rec.Holes = append(rec.Holes, h.String())
	}
	return json.Marshal(rec)
}

func decodeMark(data []byte) (Mark, error) {
	var rec markRecord
	if err := json.Unmarshal(data, &rec); err != nil {
		return Mark{}, fmt.Errorf("decode high-water mark: %w", err)
	}
	m := Mark{Seq: rec.Seq, MsgID: rec.MsgID, StreamCreated: rec.StreamCreated, Shared: rec.Shared}
	if rec.CommitLSN != "" {
		lsn, err := pglogrepl.ParseLSN(rec.CommitLSN)
		if err != nil {
			return Mark{}, fmt.Errorf("decode high-water mark: %w", err)
		}
		m.Position = cdc.Position{CommitLSN: lsn, Index: rec.Index}
	}
	for _, h := range rec.Holes {
		pos, err := parsePosition(h)
		if err != nil {
			return Mark{}, fmt.Errorf("decode high-water mark: hole %q: %w", h, err)
		}
		m.Holes = append(m.Holes, pos)
	}
	return m, nil
}

// parsePosition reads a Position as Position.String writes it ("16/B374D848#3").
func parsePosition(s string) (cdc.Position, error) {
	lsnText, indexText, ok := strings.Cut(s, "#")
	if !ok {
		return cdc.Position{}, errors.New("want <lsn>#<index>")
	}
	lsn, err := pglogrepl.ParseLSN(lsnText)
	if err != nil {
		return cdc.Position{}, err
	}
	var index uint32
	if _, err := fmt.Sscanf(indexText, "%d", &index); err != nil {
		return cdc.Position{}, err
	}
	return cdc.Position{CommitLSN: lsn, Index: index}, nil
}

// MarkKey is the store key of the mark of origin's events in stream. Keys
// allow letters, digits and -/_=. only, so anything else is escaped as =XX.
func MarkKey(stream, origin string) string {
	var b strings.Builder
	for _, part := range []string{stream, origin} {
		if b.Len() > 0 {
			b.WriteByte('.')
		}
		for i := 0; i < len(part); i++ {
			c := part[i]
			switch {
			case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9', c == '-', c == '_', c == '/':
				b.WriteByte(c)
			default:
				fmt.Fprintf(&b, "=%02X", c)
			}
		}
	}
	return b.String()
}

// Reading is what Watermark.Read found on the stream.
type Reading struct {
	// Mark is what the stream is known to hold.
	Mark Mark
	// Info is the stream's state when read; the next message expects
	// Info.LastSeq as the stream's last sequence.
	Info sink.StreamInfo
	// Uncertain counts events right after Mark that may be stored too: the
	// stream has removed messages (work-queue or interest retention, age or
	// count limits, a purge) where they would be.
	Uncertain int
	// LastMsgID, read when Uncertain > 0 on a one-replica stream, is the id
	// of the last message the stream stored; if it is one of the uncertain
	// events, that event and those before it are stored and none after.
	LastMsgID string
	// Foreign is set when the stream holds messages from other writers
	// after Mark.
	Foreign bool
	// Recorded is set when the store had a record for this origin.
	Recorded bool
}

// Watermark owns the relay's high-water mark: it reads it back from the
// stream and the store, and persists it.
type Watermark struct {
	log    StreamLog
	store  MarkStore
	origin string
	stream string
	key    string
	logger *zap.Logger
	// ScanLimit bounds how many messages Read examines.
	ScanLimit int
}

// NewWatermark builds the Watermark of origin's events in stream.
func NewWatermark(log StreamLog, store MarkStore, stream, origin string, logger *zap.Logger) *Watermark {
	return &Watermark{log: log, store: store, origin: origin, stream: stream, key: MarkKey(stream, origin), logger: logger, ScanLimit: 100_000}
}

// Origin returns the origin whose events the Watermark tracks.
func (w *Watermark) Origin() string { return w.origin }

// own returns the position of a message the relay stamped for this origin.
func (w *Watermark) own(h nats.Header) (cdc.Position, string, bool) {
	pos, ok := PositionFromHeader(h, w.origin)
	if !ok {
		return cdc.Position{}, "", false
	}
	return pos, h.Get(nats.MsgIdHdr), true
}

// Load returns the stored record, if any.
func (w *Watermark) Load(ctx context.Context) (Mark, bool, error) {
	data, ok, err := w.store.Load(ctx, w.key)
	if err != nil || !ok {
		return Mark{}, ok, err
	}
	m, err := decodeMark(data)
	return m, err == nil, err
}

// Save persists m; it returns once the store has it.
func (w *Watermark) Save(ctx context.Context, m Mark) error {
	data, err := encodeMark(w.origin, w.stream, m, time.Now())
	if err != nil {
		return err
	}
	return w.store.Save(ctx, w.key, data)
}

// Read establishes what the stream holds of this origin's events, starting
// from known (what this process already knows; zero at start) and the stored
// record, whichever is further. Fast path: the stream's last message is the
// relay's own, so it is the mark. Otherwise the messages after `after` (the
// last sequence this process knows holds no own message of a later chain; 0:
// after the mark's) are read, up to the stream's end: own ones move the mark;
// removed ones right after the last own one may have been own, and are
// counted as uncertain. Without any position in this stream the end of the
// stream is searched backwards. untilForeign stops at the first message of
// another writer: right for a process that started its current chain of
// messages right after `after`, since the chain cannot continue past one.
func (w *Watermark) Read(ctx context.Context, known Mark, after uint64, untilForeign bool) (Reading, error) {
	info, err := w.log.Info(ctx)
	if err != nil {
		return Reading{}, err
	}
	r := Reading{Info: info, Mark: known}
	stored, recorded, err := w.Load(ctx)
	if err != nil {
		return Reading{}, err
	}
	r.Recorded = recorded
	if recorded {
		r.Mark = merge(r.Mark, stored)
	}
	if !r.Mark.StreamCreated.IsZero() && !r.Mark.StreamCreated.Equal(info.Created) {
		// The stream was recreated: what was stored before is delivered,
		// but its sequences are no use in this stream.
		w.logger.Warn("stream was recreated since the relay last wrote to it; its high-water mark keeps only the position",
			zap.String("stream", w.stream), zap.Stringer("lsn", r.Mark.Position.CommitLSN))
		r.Mark.Seq, r.Mark.MsgID, after = 0, "", 0
	}
	r.Mark.StreamCreated = info.Created
	from := max(after, r.Mark.Seq) + 1
	if info.LastSeq == 0 || info.LastSeq < from {
		return r, nil
	}
	// Fast path: the last message is the relay's own.
	h, found, err := w.log.Header(ctx, info.LastSeq)
	if err != nil {
		return Reading{}, err
	}
	if found {
		if pos, id, ok := w.own(h); ok {
			r.Mark = advance(r.Mark, pos, info.LastSeq, id)
			return r, nil
		}
		r.Foreign = true
	}
	if from == 1 && after == 0 {
		// No position in this stream to start from: look back from the
		// end instead, as far as the scan limit allows.
		return w.readBackwards(ctx, r, found)
	}
	if from < info.FirstSeq {
		// Removed from the stream's start (limits, purge): those messages
		// may have been own.
		r.Uncertain = int(info.FirstSeq - from)
		from = info.FirstSeq
	}
	gap := 0 // removed messages since the last own one
	for seq, n := from, 0; seq <= info.LastSeq; seq, n = seq+1, n+1 {
		if n >= w.ScanLimit {
			// Other writers' messages, mostly: the relay's own after its
			// mark sit near its start. Events after the mark that are
			// stored further on are published again; JetStream drops
			// those inside its duplicate window.
			w.logger.Warn("stopped reading the stream back: too many messages after the relay's high-water mark; events after it may be published again",
				zap.String("stream", w.stream), zap.Uint64("stream_seq", seq), zap.Int("scan_limit", w.ScanLimit))
			break
		}
		h, found, err := w.log.Header(ctx, seq)
		if err != nil {
			return Reading{}, err
		}
		if !found {
			gap++
			continue
		}
		if pos, id, ok := w.own(h); ok {
			r.Mark = advance(r.Mark, pos, seq, id)
			r.Uncertain, gap = 0, 0
			continue
		}
		r.Foreign = true
		if untilForeign {
			break
		}
	}
	r.Uncertain += gap
	// The last stored message's id tells the uncertain events apart when
	// that message is gone too.
	if r.Uncertain > 0 && !found && info.Replicas == 1 {
		if r.LastMsgID, err = w.lastMsgID(ctx, info); err != nil {
			return Reading{}, err
		}
	}
	return r, nil
}

// OwnSince returns the positions of this origin's events stored after
// sequence from, up to the stream's end (at most ScanLimit messages), with
// the sequence of each.
func (w *Watermark) OwnSince(ctx context.Context, from uint64) (map[cdc.Position]uint64, error) {
	info, err := w.log.Info(ctx)
	if err != nil {
		return nil, err
	}
	own := map[cdc.Position]uint64{}
	for seq, n := from+1, 0; seq <= info.LastSeq && n < w.ScanLimit; seq, n = seq+1, n+1 {
		h, found, err := w.log.Header(ctx, seq)
		if err != nil {
			return nil, err
		}
		if !found {
			continue
		}
		if pos, _, ok := w.own(h); ok {
			own[pos] = seq
		}
	}
	return own, nil
}

// readBackwards looks for the last own message from the stream's end.
func (w *Watermark) readBackwards(ctx context.Context, r Reading, lastFound bool) (Reading, error) {
	gap := 0
	for seq, n := r.Info.LastSeq, 0; seq >= r.Info.FirstSeq && seq > 0 && n < w.ScanLimit; seq, n = seq-1, n+1 {
		h, found, err := w.log.Header(ctx, seq)
		if err != nil {
			return Reading{}, err
		}
		if !found {
			gap++
			continue
		}
		if pos, id, ok := w.own(h); ok {
			r.Mark = advance(r.Mark, pos, seq, id)
			break
		}
		r.Foreign = true
	}
	r.Uncertain = gap
	if gap > 0 && !lastFound && r.Info.Replicas == 1 {
		var err error
		if r.LastMsgID, err = w.lastMsgID(ctx, r.Info); err != nil {
			return Reading{}, err
		}
	}
	return r, nil
}

func (w *Watermark) lastMsgID(ctx context.Context, info sink.StreamInfo) (string, error) {
	subject, ok := probeSubject(info.Subjects)
	if !ok {
		return "", nil
	}
	return w.log.LastMsgID(ctx, subject)
}

// probeSubject returns a literal subject the stream captures: its first
// subject, each wildcard token filled in.
func probeSubject(subjects []string) (string, bool) {
	if len(subjects) == 0 {
		return "", false
	}
	toks := strings.Split(subjects[0], ".")
	for i, t := range toks {
		if t == "*" || t == ">" {
			toks[i] = "outbox-relay-probe"
		}
	}
	return strings.Join(toks, "."), true
}

// merge returns the further of what this process knows (known) and the
// stored record. The holes are known's once the process has a mark of its
// own (it fills them and the store lags behind), else the record's.
func merge(known, stored Mark) Mark {
	out := known
	if known.Position.Less(stored.Position) || (known.Position == stored.Position && known.Seq == 0) {
		out.Position, out.Seq, out.MsgID, out.StreamCreated = stored.Position, stored.Seq, stored.MsgID, stored.StreamCreated
	}
	out.Shared = known.Shared || stored.Shared
	if known.Position.IsZero() {
		out.Holes = slices.Clone(stored.Holes)
	}
	return out
}

// advance moves m to an own message found at seq, when it is further.
func advance(m Mark, pos cdc.Position, seq uint64, id string) Mark {
	if m.Position.Less(pos) || m.Position == pos {
		m.Position, m.Seq, m.MsgID = pos, seq, id
	}
	return m
}

// Existed reports whether this origin ever stored an event in the stream
// (or registered to): the rule that keeps a dropped slot from being
// recreated silently. It looks at the store first, then at the stream.
func (w *Watermark) Existed(ctx context.Context) (Mark, bool, error) {
	m, ok, err := w.Load(ctx)
	if err != nil || ok {
		return m, ok, err
	}
	r, err := w.Read(ctx, Mark{}, 0, false)
	if errors.Is(err, sink.ErrStreamMissing) {
		return Mark{}, false, nil
	}
	if err != nil {
		return Mark{}, false, err
	}
	return r.Mark, !r.Mark.Position.IsZero(), nil
}

// markSaver writes the pump's mark in the background, at most once per
// interval while it moves, and in the foreground when asked. One goroutine
// writes, so writes reach the store in the order they were made.
type markSaver struct {
	w        *Watermark
	interval time.Duration
	log      *zap.Logger
	errors   interface{ Inc() }

	mu         sync.Mutex
	pending    Mark
	hasPending bool
	wake       chan struct{}
	// writing serialises writes: a flush waits for a background write in
	// progress, so an older mark never overwrites a newer one.
	writing sync.Mutex
}

func newMarkSaver(w *Watermark, interval time.Duration, log *zap.Logger, m *metrics.Metrics) *markSaver {
	return &markSaver{w: w, interval: interval, log: log, errors: m.PumpMarkSaveErrors, wake: make(chan struct{}, 1)}
}

// set asks for m to be written soon. It copies m: the caller goes on
// changing its own.
func (s *markSaver) set(m *Mark) {
	s.mu.Lock()
	holes := s.pending.Holes[:0]
	s.pending, s.hasPending = *m, true
	if len(m.Holes) > 0 {
		s.pending.Holes = append(holes, m.Holes...)
	} else {
		s.pending.Holes = nil
	}
	s.mu.Unlock()
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

// flush writes m now, after any write in progress, and drops what set asked
// for before (m is newer).
func (s *markSaver) flush(ctx context.Context, m Mark) error {
	s.mu.Lock()
	s.hasPending = false
	s.mu.Unlock()
	s.writing.Lock()
	defer s.writing.Unlock()
	if err := s.w.Save(ctx, m); err != nil {
		s.errors.Inc()
		return err
	}
	return nil
}

// run writes what set asks for until ctx is done.
func (s *markSaver) run(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-s.wake:
		}
		s.mu.Lock()
		m, ok := s.pending, s.hasPending
		m.Holes = slices.Clone(m.Holes)
		s.hasPending = false
		s.mu.Unlock()
		if !ok {
			continue
		}
		s.writing.Lock()
		err := s.w.Save(ctx, m)
		s.writing.Unlock()
		if err != nil && ctx.Err() == nil {
			s.errors.Inc()
			s.log.Warn("write high-water mark failed, will write again", zap.Error(err))
			// Keep it unless something newer came meanwhile.
			s.mu.Lock()
			if !s.hasPending {
				s.pending, s.hasPending = m, true
			}
			s.mu.Unlock()
		}
		t := time.NewTimer(s.interval)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
		select {
		case s.wake <- struct{}{}:
		default:
		}
	}
}
