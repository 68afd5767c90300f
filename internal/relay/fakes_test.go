package relay_test

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/outbox-relay/outbox-relay/internal/cdc"
	"github.com/outbox-relay/outbox-relay/internal/relay"
	"github.com/outbox-relay/outbox-relay/internal/sink"
)

// ---------------------------------------------------------------------------
// fakeSource

// ackRecord is one acknowledgement the pump gave the source.
type ackRecord struct {
	ID       string
	Position cdc.Position
}

// fakeSource delivers events from a buffered channel and records acks. Events
// built by the tests carry no tracker handle, so Ack only records.
type fakeSource struct {
	ch chan cdc.Event

	mu   sync.Mutex
	acks []ackRecord
	// onAck, when set, runs after each ack is recorded.
	onAck func(ev cdc.Event)
}

var _ relay.Source = (*fakeSource)(nil)

func newFakeSource(buffer int) *fakeSource {
	return &fakeSource{ch: make(chan cdc.Event, buffer)}
}

// newFilledSource returns a source holding evs, closed after them when closed
// is set.
func newFilledSource(evs []cdc.Event, closed bool) *fakeSource {
	s := newFakeSource(len(evs) + 1)
	for _, ev := range evs {
		s.ch <- ev
	}
	if closed {
		s.Close()
	}
	return s
}

func (s *fakeSource) Events() <-chan cdc.Event { return s.ch }

func (s *fakeSource) Ack(ev cdc.Event) {
	s.mu.Lock()
	s.acks = append(s.acks, ackRecord{ID: ev.ID, Position: ev.Position})
	hook := s.onAck
	s.mu.Unlock()
	if hook != nil {
		hook(ev)
	}
}

// OnAck installs a hook run after each ack.
func (s *fakeSource) OnAck(f func(ev cdc.Event)) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.onAck = f
}

func (s *fakeSource) Close() { close(s.ch) }

// Acks returns the acknowledgements in the order they were given.
func (s *fakeSource) Acks() []ackRecord {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]ackRecord(nil), s.acks...)
}

// AckedIDs returns the acknowledged event IDs in ack order.
func (s *fakeSource) AckedIDs() []string {
	var ids []string
	for _, a := range s.Acks() {
		ids = append(ids, a.ID)
	}
	return ids
}

// ---------------------------------------------------------------------------
// fakeStream

// faultKind is a scripted failure of one publish.
type faultKind int

const (
	faultNone faultKind = iota
	// faultTransient: the message never reaches the stream (a timeout, say);
	// its Pending fails with a transient error.
	faultTransient
	// faultAckLost: the message is processed as usual (stored, unless a
	// check refuses it) but the PubAck is lost: Pending fails with a
	// transient error.
	faultAckLost
	// faultSync: Publish itself fails with a transient error; nothing is
	// sent.
	faultSync
	// faultPermanentSync: Publish fails with sink.ErrPermanent (the client's
	// max payload check); nothing is sent.
	faultPermanentSync
	// faultPermanentAsync: the server refuses the message as too large;
	// Pending fails with sink.ErrPermanent.
	faultPermanentAsync
)

func (k faultKind) String() string {
	return [...]string{"none", "transient", "ack-lost", "sync", "permanent-sync", "permanent-async"}[k]
}

// fault scripts what happens to one publish.
type fault struct {
	kind faultKind
	// hold, when set, delays the delivery of the publish's result (the
	// message is processed at once, in order) until hold is closed.
	hold chan struct{}
	// onResult, when set, runs inside Wait after the result was taken and
	// before Wait returns it.
	onResult func()
	// failReads makes the next failReads stream reads (Info, Header) fail
	// once this publish is processed.
	failReads int
	// foreign, when set, is stored just before this publish is processed,
	// as another writer's message would be.
	foreign *sink.Message
	// late makes the publish time out at once while its message reaches the
	// stream only just before the event is published again: a publish
	// stored after the relay gave up on it, ahead of its next copy.
	late bool
}

func (f fault) any() bool {
	return f.kind != faultNone || f.hold != nil || f.onResult != nil || f.failReads > 0 || f.foreign != nil || f.late
}

// script decides the fault of the nth publish (1-based, counting every call
// to Publish, retries and dead letters included).
type script func(n int, m sink.Message) fault

// atPublish faults the nth publish.
func atPublish(n int, f fault) script {
	return func(i int, _ sink.Message) fault {
		if i == n {
			return f
		}
		return fault{}
	}
}

// onEvent faults every publish of event id to a subject accepted by match
// (nil: any subject).
func onEvent(id string, match func(subject string) bool, f fault) script {
	return func(_ int, m sink.Message) fault {
		if m.ID == id && (match == nil || match(m.Subject)) {
			return f
		}
		return fault{}
	}
}

// onReplies numbers the publishes that ask for a reply (from 1) and hands
// sc that number; those sent without one get no fault. With transactions
// joined in atomic batches the replies are the commits, wherever the joins
// put them. publishOf returns the publish number of the kth reply (0 while
// there is none).
func onReplies(sc script) (_ script, publishOf func(k int) int) {
	var mu sync.Mutex
	var at []int
	numbered := func(n int, m sink.Message) fault {
		if m.NoReply {
			return fault{}
		}
		mu.Lock()
		at = append(at, n)
		k := len(at)
		mu.Unlock()
		return sc(k, m)
	}
	publishOf = func(k int) int {
		mu.Lock()
		defer mu.Unlock()
		if k < 1 || k > len(at) {
			return 0
		}
		return at[k-1]
	}
	return numbered, publishOf
}

// firstOf returns the first non-empty fault of the scripts.
func firstOf(scripts ...script) script {
	return func(n int, m sink.Message) fault {
		for _, s := range scripts {
			if f := s(n, m); f.any() {
				return f
			}
		}
		return fault{}
	}
}

// storedMsg is one message of a fake stream.
type storedMsg struct {
	Seq             uint64
	Subject         string
	ID              string
	Data            []byte
	Header          nats.Header
	CheckLastSeq    bool
	ExpectLastSeq   uint64
	ExpectLastMsgID string
	removed         bool
}

// streamStore is one stream's messages and sequence space.
type streamStore struct {
	name    string
	msgs    []storedMsg // by sequence - 1
	lastSeq uint64
	lastID  string            // the last stored message's Nats-Msg-Id
	ids     map[string]uint64 // Nats-Msg-Id -> seq, the duplicate window
}

// fakeStream models one JetStream stream, plus another stream that catches
// the subjects it does not capture (a separate dead-letter stream). Each
// rule below is checked against a real server in internal/sink's contract
// tests (TestJetStream*):
//
//   - messages are processed strictly in Publish order, as over one
//     connection;
//   - one replica: Nats-Expected-Last-Sequence is checked first, then the
//     duplicate window, then Nats-Expected-Last-Msg-Id; a replicated stream
//     checks the duplicate window first, then the sequence, and the
//     message id expectation must never reach it (it would stop a real
//     stream: the fake fails the test);
//   - Nats-Expected-Last-Msg-Id is compared with the last stored message's
//     id, which a duplicate does not change and a removal keeps;
//   - a refused message gets an error, a duplicate the stored copy's
//     sequence;
//   - messages can be removed (a work-queue consumer, limits); reading a
//     removed one finds nothing; its duplicate entry stays;
//   - a Pending delivers its result once, like a PubAckFuture: a Wait after
//     the result was taken blocks until its ctx is done.
type fakeStream struct {
	t          testing.TB
	captures   []string
	dedup      bool
	replicated bool
	retention  string
	created    time.Time

	mu        sync.Mutex
	main      streamStore
	other     streamStore
	script    script
	publishes int
	paused    bool
	queue     []*fakePending
	pendings  []*fakePending // every pending, by publish number - 1 (nil for sync failures)
	// removeStored removes each message as soon as it is stored (a
	// work-queue stream whose consumer keeps up).
	removeStored bool
	marks        *fakeMarkStore

	// accounting
	outstanding    int // results not yet taken by a Wait
	maxOutstanding int
	rejectedSeq    int // refusals for a wrong last sequence or message id
	duplicates     int
	reads          int
	readFailures   int // reads still to fail
	probes         int
	holds          sync.WaitGroup
	// commitsOutstanding counts the atomic batch commits among the
	// results not yet taken.
	commitsOutstanding, maxCommitsOutstanding int
	// late holds publishes to store later, by event id.
	late map[string]*fakePending
	// batches are the atomic batches staged and not yet committed, by id;
	// maxBatch is the server's max_batch_size (fakes_batch_test.go).
	batches  map[string]*fakeBatch
	maxBatch int
	commits  int
	// fast models the sink's fast batches (fakes_fast_test.go); fastOpen
	// is the batch being sent.
	fast                   bool
	fastOpen               *fakeFastBatch
	fastCommits, fastEnded int
}

var (
	_ relay.Publisher = (*fakeStream)(nil)
	_ relay.StreamLog = (*fakeStream)(nil)
)

// newFakeStream returns a stream with one replica, or a replicated one.
func newFakeStream(t testing.TB, dedup, replicated bool) *fakeStream {
	return &fakeStream{
		t:          t,
		captures:   []string{"outbox.>"},
		dedup:      dedup,
		replicated: replicated,
		retention:  "limits",
		created:    time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC),
		main:       streamStore{name: "OUTBOX", ids: map[string]uint64{}},
		other:      streamStore{name: "OTHER", ids: map[string]uint64{}},
		marks:      newFakeMarkStore(),
		batches:    map[string]*fakeBatch{},
		maxBatch:   1000,
	}
}

func (s *fakeStream) SetScript(sc script) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.script = sc
}

// FailReads makes the next n stream reads fail.
func (s *fakeStream) FailReads(n int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.readFailures = n
}

// WorkQueue makes the stream remove every message once stored, as a
// work-queue stream does when its consumer keeps up.
func (s *fakeStream) WorkQueue() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.retention, s.removeStored = "workqueue", true
}

// Forget models a server restart of a work-queue stream: the duplicate
// window and the last message id are rebuilt from the messages still held.
func (s *fakeStream) Forget() {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := &s.main
	st.ids = map[string]uint64{}
	st.lastID = ""
	for _, m := range st.msgs {
		if !m.removed && m.ID != "" {
			st.ids[m.ID] = m.Seq
		}
	}
	if n := len(st.msgs); n > 0 && !st.msgs[n-1].removed {
		st.lastID = st.msgs[n-1].ID
	}
}

// Pause queues publishes unprocessed until Resume.
func (s *fakeStream) Pause() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.paused = true
}

// Resume processes the queued publishes in order and delivers their results.
func (s *fakeStream) Resume() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.paused = false
	for _, p := range s.queue {
		s.processLocked(p)
	}
	s.queue = nil
}

// Queued returns how many publishes wait for Resume.
func (s *fakeStream) Queued() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.queue)
}

// Append stores m directly, as another writer would.
func (s *fakeStream) Append(m sink.Message) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.appendLocked(m)
}

func (s *fakeStream) appendLocked(m sink.Message) {
	st := s.storeFor(m.Subject)
	st.lastSeq++
	h := cloneHeader(m.Header)
	if m.ID != "" {
		if h == nil {
			h = nats.Header{}
		}
		h.Set(nats.MsgIdHdr, m.ID)
	}
	st.msgs = append(st.msgs, storedMsg{Seq: st.lastSeq, Subject: m.Subject, ID: m.ID, Data: m.Data, Header: h, removed: s.removeStored && st == &s.main})
	st.lastID = m.ID
	if m.ID != "" {
		st.ids[m.ID] = st.lastSeq
	}
}

// Messages returns the messages of the stream that were ever stored, removed
// ones included (what a consumer saw).
func (s *fakeStream) Messages() []storedMsg {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]storedMsg(nil), s.main.msgs...)
}

// OtherMessages returns the messages stored in the other stream.
func (s *fakeStream) OtherMessages() []storedMsg {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]storedMsg(nil), s.other.msgs...)
}

// Pending returns the pending of the nth publish (nil if there was none).
func (s *fakeStream) Pending(n int) *fakePending {
	s.mu.Lock()
	defer s.mu.Unlock()
	if n < 1 || n > len(s.pendings) {
		return nil
	}
	return s.pendings[n-1]
}

// MaxCommitsOutstanding returns the most atomic batch commits whose result
// was not yet taken, at any time.
func (s *fakeStream) MaxCommitsOutstanding() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.maxCommitsOutstanding
}

// Publishes returns how many times Publish was called.
func (s *fakeStream) Publishes() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.publishes
}

func (s *fakeStream) MaxOutstanding() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.maxOutstanding
}

func (s *fakeStream) RejectedWrongSequence() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.rejectedSeq
}

func (s *fakeStream) Duplicates() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.duplicates
}

// Reads returns how many times the stream was read (Info and Header).
func (s *fakeStream) Reads() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.reads
}

// WaitHolds waits for the goroutines delivering held results.
func (s *fakeStream) WaitHolds() { s.holds.Wait() }

func (s *fakeStream) storeFor(subject string) *streamStore {
	if sink.Captures(s.captures, subject) {
		return &s.main
	}
	return &s.other
}

// Publish implements relay.Publisher.
func (s *fakeStream) Publish(ctx context.Context, m sink.Message) (sink.Pending, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.publishes++
	n := s.publishes
	var f fault
	if s.script != nil {
		f = s.script(n, m)
	}
	switch f.kind {
	case faultSync, faultPermanentSync:
		// Not sent: the sink leaves its open fast batch.
		s.fastOpen = nil
	}
	switch f.kind {
	case faultSync:
		s.pendings = append(s.pendings, nil)
		return nil, fmt.Errorf("publish to %q: %w", m.Subject, nats.ErrReconnectBufExceeded)
	case faultPermanentSync:
		s.pendings = append(s.pendings, nil)
		return nil, fmt.Errorf("%w: publish to %q: %w", sink.ErrPermanent, m.Subject, nats.ErrMaxPayload)
	}
	if s.replicated && m.ExpectLastMsgID != "" && s.t != nil {
		s.t.Errorf("publish of %s to a replicated stream expects a last message id: that stops a real stream on a mismatch", m.ID)
	}
	m.Header = cloneHeader(m.Header)
	p := &fakePending{
		stream: s, n: n, msg: m, fault: f,
		ok: make(chan sink.Ack, 1), errc: make(chan error, 1),
	}
	s.pendings = append(s.pendings, p)
	s.joinFastBatchLocked(p)
	if !m.NoReply {
		s.outstanding++
		s.maxOutstanding = max(s.maxOutstanding, s.outstanding)
	}
	if !m.NoReply && m.BatchCommit {
		s.commitsOutstanding++
		s.maxCommitsOutstanding = max(s.maxCommitsOutstanding, s.commitsOutstanding)
	}
	if s.paused {
		s.queue = append(s.queue, p)
	} else {
		s.processLocked(p)
	}
	if m.NoReply {
		// Processed like any other message; its result goes nowhere.
		return nil, nil
	}
	return p, nil
}

// processLocked applies p's message to its stream and delivers the result,
// at once or when its hold is released.
func (s *fakeStream) processLocked(p *fakePending) {
	if l, ok := s.late[p.msg.ID]; ok {
		_, _ = s.applyLocked(l)
		delete(s.late, p.msg.ID)
	}
	if p.fault.late {
		if s.late == nil {
			s.late = map[string]*fakePending{}
		}
		s.late[p.msg.ID] = p
		p.deliver(sink.Ack{}, fmt.Errorf("publish to %q: %w", p.msg.Subject, nats.ErrTimeout))
		return
	}
	if p.fault.failReads > 0 {
		s.readFailures = p.fault.failReads
	}
	if p.fault.foreign != nil {
		s.appendLocked(*p.fault.foreign)
	}
	ack, err := s.applyFastLocked(p)
	if p.fault.kind == faultAckLost {
		ack, err = sink.Ack{}, fmt.Errorf("publish to %q: %w", p.msg.Subject, nats.ErrTimeout)
	}
	if p.fault.hold == nil {
		p.deliver(ack, err)
		return
	}
	s.holds.Add(1)
	go func() {
		defer s.holds.Done()
		<-p.fault.hold
		p.deliver(ack, err)
	}()
}

func (s *fakeStream) applyLocked(p *fakePending) (sink.Ack, error) {
	m := p.msg
	switch p.fault.kind {
	case faultTransient:
		return sink.Ack{}, fmt.Errorf("publish to %q: %w", m.Subject, nats.ErrTimeout)
	case faultPermanentAsync:
		return sink.Ack{}, fmt.Errorf("%w: publish to %q: nats: API error: code=400 err_code=10054 description=message size exceeds maximum allowed", sink.ErrPermanent, m.Subject)
	}
	if m.BatchID != "" {
		return s.applyBatchLocked(p)
	}
	st := s.storeFor(m.Subject)
	dup := func() (sink.Ack, bool) {
		if !s.dedup || m.ID == "" {
			return sink.Ack{}, false
		}
		seq, ok := st.ids[m.ID]
		if !ok {
			return sink.Ack{}, false
		}
		s.duplicates++
		return sink.Ack{Stream: st.name, Seq: seq, Duplicate: true}, true
	}
	if s.replicated {
		if ack, ok := dup(); ok {
			return ack, nil
		}
	}
	if m.CheckLastSeq && m.ExpectLastSeq != st.lastSeq {
		s.rejectedSeq++
		return sink.Ack{}, fmt.Errorf("%w: publish to %q: nats: API error: code=400 err_code=10071 description=wrong last sequence: %d (expected %d)",
			sink.ErrWrongSequence, m.Subject, st.lastSeq, m.ExpectLastSeq)
	}
	if !s.replicated {
		if ack, ok := dup(); ok {
			return ack, nil
		}
		if m.ExpectLastMsgID != "" && m.ExpectLastMsgID != st.lastID {
			s.rejectedSeq++
			return sink.Ack{}, fmt.Errorf("%w: publish to %q: nats: API error: code=400 err_code=10070 description=wrong last msg ID: %s",
				sink.ErrWrongSequence, m.Subject, st.lastID)
		}
	}
	st.lastSeq++
	h := m.Header
	if h == nil {
		h = nats.Header{}
	}
	if m.ID != "" {
		h.Set(nats.MsgIdHdr, m.ID)
	}
	st.msgs = append(st.msgs, storedMsg{
		Seq: st.lastSeq, Subject: m.Subject, ID: m.ID, Data: m.Data, Header: h,
		CheckLastSeq: m.CheckLastSeq, ExpectLastSeq: m.ExpectLastSeq, ExpectLastMsgID: m.ExpectLastMsgID,
		removed: s.removeStored && st == &s.main,
	})
	st.lastID = m.ID
	if m.ID != "" {
		st.ids[m.ID] = st.lastSeq
	}
	p.storedSeq = st.lastSeq
	return sink.Ack{Stream: st.name, Seq: st.lastSeq}, nil
}

// readLocked counts a read and fails it when reads are set to fail.
func (s *fakeStream) readLocked(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	s.reads++
	if s.readFailures > 0 {
		s.readFailures--
		return fmt.Errorf("read stream %q: %w", s.main.name, context.DeadlineExceeded)
	}
	return nil
}

// Info implements relay.StreamLog.
func (s *fakeStream) Info(ctx context.Context) (sink.StreamInfo, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.readLocked(ctx); err != nil {
		return sink.StreamInfo{}, err
	}
	first := uint64(0)
	for _, m := range s.main.msgs {
		if !m.removed {
			first = m.Seq
			break
		}
	}
	if first == 0 {
		first = s.main.lastSeq + 1
	}
	replicas := 1
	if s.replicated {
		replicas = 3
	}
	return sink.StreamInfo{
		FirstSeq: first, LastSeq: s.main.lastSeq, Created: s.created,
		Replicas: replicas, Retention: s.retention, Subjects: s.captures,
	}, nil
}

// Header implements relay.StreamLog.
func (s *fakeStream) Header(ctx context.Context, seq uint64) (nats.Header, bool, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.readLocked(ctx); err != nil {
		return nil, false, err
	}
	if seq == 0 || seq > uint64(len(s.main.msgs)) || s.main.msgs[seq-1].removed {
		return nil, false, nil
	}
	return cloneHeader(s.main.msgs[seq-1].Header), true, nil
}

// LastMsgID implements relay.StreamLog.
func (s *fakeStream) LastMsgID(ctx context.Context, subject string) (string, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.readLocked(ctx); err != nil {
		return "", err
	}
	if s.replicated && s.t != nil {
		s.t.Errorf("last message id probe on a replicated stream: that stops a real stream")
	}
	if !sink.Captures(s.captures, subject) {
		return "", fmt.Errorf("probe subject %q not captured", subject)
	}
	s.probes++
	return s.main.lastID, nil
}

// fakeMarkStore is a MarkStore in memory.
type fakeMarkStore struct {
	mu      sync.Mutex
	records map[string][]byte
	saves   int
}

var _ relay.MarkStore = (*fakeMarkStore)(nil)

func newFakeMarkStore() *fakeMarkStore { return &fakeMarkStore{records: map[string][]byte{}} }

func (f *fakeMarkStore) Load(ctx context.Context, key string) ([]byte, bool, error) {
	if err := ctx.Err(); err != nil {
		return nil, false, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	v, ok := f.records[key]
	return v, ok, nil
}

func (f *fakeMarkStore) Save(ctx context.Context, key string, value []byte) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.records[key] = append([]byte(nil), value...)
	f.saves++
	return nil
}

// Clear forgets every record (a lost bucket).
func (f *fakeMarkStore) Clear() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.records = map[string][]byte{}
}

// fakePending is one publish in flight.
type fakePending struct {
	stream *fakeStream
	n      int
	msg    sink.Message
	fault  fault

	ok   chan sink.Ack
	errc chan error

	// storedSeq is where the message was stored (0: not stored); set
	// under stream.mu when processed.
	storedSeq uint64
	// fastBatch is the fast batch the message belongs to, which it
	// commits when fastCommit (fakes_fast_test.go).
	fastBatch  *fakeFastBatch
	fastCommit bool

	waits atomic.Int32
}

func (p *fakePending) deliver(ack sink.Ack, err error) {
	if err != nil {
		p.errc <- err
		return
	}
	p.ok <- ack
}

// Wait implements sink.Pending like the real one: the result is delivered
// once; ctx ending first leaves it to a later Wait.
func (p *fakePending) Wait(ctx context.Context) (sink.Ack, error) {
	p.waits.Add(1)
	var (
		ack sink.Ack
		err error
	)
	select {
	case ack = <-p.ok:
	case err = <-p.errc:
	case <-ctx.Done():
		return sink.Ack{}, ctx.Err()
	}
	p.stream.mu.Lock()
	p.stream.outstanding--
	if p.msg.BatchCommit {
		p.stream.commitsOutstanding--
	}
	p.stream.mu.Unlock()
	if p.fault.onResult != nil {
		p.fault.onResult()
	}
	return ack, err
}

// Waits returns how many times Wait was called.
func (p *fakePending) Waits() int { return int(p.waits.Load()) }

func cloneHeader(h nats.Header) nats.Header {
	if h == nil {
		return nil
	}
	c := make(nats.Header, len(h))
	for k, v := range h {
		c[k] = append([]string(nil), v...)
	}
	return c
}

// AckRequests returns how many publishes asked for a PubAck.
func (s *fakeStream) AckRequests() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for _, p := range s.pendings {
		if p != nil && !p.msg.NoReply {
			n++
		}
	}
	return n
}
