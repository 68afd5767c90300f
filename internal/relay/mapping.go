package relay

import (
	"bytes"
	"cmp"
	"encoding/json"
	"errors"
	"fmt"
	"net/textproto"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/jackc/pglogrepl"
	"github.com/nats-io/nats.go"

	"github.com/outbox-relay/outbox-relay/internal/cdc"
	"github.com/outbox-relay/outbox-relay/internal/rowheader"
	"github.com/outbox-relay/outbox-relay/internal/sink"
)

// Headers the relay sets on every message. Outbox-Commit-Lsn,
// Outbox-Commit-Index and Outbox-Origin give the event's place in commit
// order, which lets a restarted relay find what the stream already holds.
const (
	HeaderAggregateType = "Outbox-Aggregate-Type"
	HeaderAggregateID   = "Outbox-Aggregate-Id"
	HeaderEventType     = "Outbox-Event-Type"
	HeaderCreatedAt     = "Outbox-Created-At"
	HeaderCommitLSN     = "Outbox-Commit-Lsn"
	HeaderCommitIndex   = "Outbox-Commit-Index"
	HeaderOrigin        = "Outbox-Origin"
	// Dead-letter messages also carry these.
	HeaderPoisonReason    = "Outbox-Poison-Reason"
	HeaderOriginalSubject = "Outbox-Original-Subject"
	HeaderPayloadOmitted  = "Outbox-Payload-Omitted"
	HeaderHeadersOmitted  = "Outbox-Headers-Omitted"
	// Messages republished by relay replay carry these instead of the
	// commit position and origin: the replay's id, and the event's id.
	HeaderReplay   = "Outbox-Replay"
	HeaderReplayOf = "Outbox-Replay-Of"
)

// Template builds subjects from events: dot-separated tokens, each a literal
// or containing placeholders {aggregate_type}, {aggregate_id}, {event_type},
// {id}, {schema} or {table}.
type Template struct {
	source string
	tokens [][]templatePart
}

type templatePart struct {
	literal string
	field   string // set for a placeholder
}

// templateFields maps each placeholder to the event field it reads.
func templateField(ev *cdc.Event, field string) string {
	switch field {
	case "aggregate_type":
		return ev.AggregateType
	case "aggregate_id":
		return ev.AggregateID
	case "event_type":
		return ev.EventType
	case "id":
		return rowID(ev)
	case "schema":
		return cmp.Or(ev.Schema, messageTable)
	case "table":
		return cmp.Or(ev.Table, messageTable)
	}
	return ""
}

// messageTable is what {schema} and {table} read for a logical decoding
// message, which comes from no table.
const messageTable = "message"

// rowID is the event's id column value; ev.ID, its message id, may be
// qualified by its table (cdc.Config.QualifiedIDs).
func rowID(ev *cdc.Event) string { return cmp.Or(ev.RowID, ev.ID) }

// parsePlaceholders splits part, a piece of the template whole given by
// setting, into literals and {placeholders}, refusing an unknown
// placeholder and braces that do not pair.
func parsePlaceholders(setting, whole, part string) ([]templatePart, error) {
	var parts []templatePart
	rest := part
	for rest != "" {
		open := strings.IndexAny(rest, "{}")
		if open < 0 {
			parts = append(parts, templatePart{literal: rest})
			break
		}
		if rest[open] == '}' {
			return nil, fmt.Errorf("%s: %q has a } without its {", setting, whole)
		}
		if open > 0 {
			parts = append(parts, templatePart{literal: rest[:open]})
		}
		end := strings.IndexByte(rest[open:], '}')
		if end < 0 {
			return nil, fmt.Errorf("%s: %q has an unclosed {", setting, whole)
		}
		field := rest[open+1 : open+end]
		switch field {
		case "aggregate_type", "aggregate_id", "event_type", "id", "schema", "table":
		default:
			return nil, fmt.Errorf("%s: unknown placeholder {%s} (use aggregate_type, aggregate_id, event_type, id, schema or table)", setting, field)
		}
		parts = append(parts, templatePart{field: field})
		rest = rest[open+end+1:]
	}
	return parts, nil
}

// ParseTemplate parses and checks a subject template.
func ParseTemplate(s string) (Template, error) {
	t := Template{source: s}
	if s == "" {
		return t, errors.New("subject-template: must not be empty")
	}
	for _, tok := range strings.Split(s, ".") {
		parts, err := parsePlaceholders("subject-template", s, tok)
		if err != nil {
			return t, err
		}
		if len(parts) == 0 {
			return t, fmt.Errorf("subject-template: %q has an empty token", s)
		}
		for _, p := range parts {
			if p.field == "" && !sink.ValidToken(p.literal) {
				return t, fmt.Errorf("subject-template: %q is not a valid subject token", p.literal)
			}
		}
		t.tokens = append(t.tokens, parts)
	}
	return t, nil
}

// String returns the template's source.
func (t Template) String() string { return t.source }

// Wildcard returns the subject pattern covering every subject the template
// can build: each token with a placeholder becomes '*'.
func (t Template) Wildcard() string {
	toks := make([]string, len(t.tokens))
	for i, parts := range t.tokens {
		if len(parts) == 1 && parts[0].field == "" {
			toks[i] = parts[0].literal
		} else {
			toks[i] = "*"
		}
	}
	return strings.Join(toks, ".")
}

// StreamSubjects returns subjects for a stream created to capture the
// template's messages.
func (t Template) StreamSubjects() []string { return []string{t.Wildcard()} }

// Subject builds ev's subject. It fails when a placeholder's value is not a
// valid subject token (empty, or containing '.', '*', '>' or whitespace).
func (t Template) Subject(ev *cdc.Event) (string, error) {
	b, err := t.appendSubject(nil, ev)
	if err != nil {
		return "", err
	}
	return string(b), nil
}

// appendSubject appends ev's subject to b.
func (t Template) appendSubject(b []byte, ev *cdc.Event) ([]byte, error) {
	for i, parts := range t.tokens {
		if i > 0 {
			b = append(b, '.')
		}
		start := len(b)
		for _, p := range parts {
			if p.field == "" {
				b = append(b, p.literal...)
				continue
			}
			v := templateField(ev, p.field)
			if !sink.ValidToken(v) {
				return b, fmt.Errorf("{%s} = %q is not a valid subject token", p.field, v)
			}
			b = append(b, v...)
		}
		if len(b) == start {
			return b, errors.New("empty subject token")
		}
	}
	if len(b) > MaxSubjectLength {
		return b, fmt.Errorf("the subject is %d bytes long, more than %d: a NATS server closes the connection of a client sending a longer control line (max_control_line, 4 KiB by default)", len(b), MaxSubjectLength)
	}
	return b, nil
}

// MaxSubjectLength bounds a subject: with the reply subject and the sizes,
// a longer one makes the publish's control line exceed NATS's default
// max_control_line (4096 bytes), and the server closes the connection,
// again at every retry.
const MaxSubjectLength = 3584

// Mapper turns events into messages. It is used by one goroutine: it keeps
// what consecutive events share (a transaction's commit LSN, its created_at,
// the subject) and builds every message in the same header map, so that a
// message costs few allocations.
type Mapper struct {
	template Template
	origin   string
	// captures lists the stream's subjects; a subject outside them would
	// never be stored.
	captures []string
	// checkEach is set when the stream captures only some of the subjects
	// the template can build, so each must be checked.
	checkEach bool

	originValue    []string // shared by every message; never modified
	lastCommitLSN  pglogrepl.LSN
	commitLSNValue []string
	lastCreatedRaw string
	createdValue   []string

	// header is the map every message is built in, and values the header
	// values set per event: Message's result is valid until its next call.
	header  nats.Header
	values  headerValues
	subject []byte // the subject being built
	// lastSubject is the previous message's subject, reused when the next
	// one is the same.
	lastSubject string

	// ce, when set, makes every message a CloudEvent (SetCloudEvents).
	ce *CloudEvents
}

// SetCloudEvents makes the mapper build every message as a CloudEvent in
// binary content mode (see CloudEvents); nil builds plain messages.
func (mp *Mapper) SetCloudEvents(ce *CloudEvents) { mp.ce = ce }

// headerValues holds one value for each header stamp sets per event.
type headerValues [stampedHeaders][1]string

// NewMapper builds a Mapper. origin identifies the slot the events come
// from (cluster system identifier, database and slot).
func NewMapper(template Template, origin string, streamSubjects []string) *Mapper {
	return &Mapper{
		template: template, origin: origin, captures: streamSubjects,
		checkEach:   len(streamSubjects) > 0 && !sink.Captures(streamSubjects, template.Wildcard()),
		originValue: []string{origin},
		header:      make(nats.Header, stampedHeaders+4),
	}
}

// SetCaptures replaces the stream's subjects, read again since the mapper
// was built.
func (mp *Mapper) SetCaptures(streamSubjects []string) {
	mp.captures = streamSubjects
	mp.checkEach = len(streamSubjects) > 0 && !sink.Captures(streamSubjects, mp.template.Wildcard())
}

// Captured reports whether the stream stores messages published to subject.
func (mp *Mapper) Captured(subject string) bool { return sink.Captures(mp.captures, subject) }

// Origin returns the origin stamped on every message.
func (mp *Mapper) Origin() string { return mp.origin }

// PoisonError says why an event can never be stored as it is.
type PoisonError struct {
	Reason string // one of metrics.PoisonReasons
	Detail string
	// ID and Position identify the event when known (set by Mapper.Message),
	// so that the error reported at exit can name them as log fields.
	ID       string
	Position cdc.Position
}

func (e *PoisonError) Error() string { return e.Reason + ": " + e.Detail }

// EventID returns the poison event's id, or "" when unknown.
func (e *PoisonError) EventID() string { return e.ID }

// EventLSN returns the commit LSN of the poison event's transaction.
func (e *PoisonError) EventLSN() pglogrepl.LSN { return e.Position.CommitLSN }

// Message maps ev to its message. It returns a *PoisonError when the row can
// never become a valid message. The message's header map is reused by the
// next call: publish the message before mapping the next event.
func (mp *Mapper) Message(ev *cdc.Event) (sink.Message, error) {
	msg, err := mp.message(ev)
	if err != nil { // checked first: errors.As would allocate on every call
		var poison *PoisonError
		if errors.As(err, &poison) {
			poison.ID, poison.Position = ev.ID, ev.Position
		}
	}
	return msg, err
}

func (mp *Mapper) message(ev *cdc.Event) (sink.Message, error) {
	if ev.Defect != "" {
		return sink.Message{}, &PoisonError{Reason: "bad_row", Detail: ev.Defect}
	}
	if ev.PayloadOmitted > 0 || ev.HeadersOmitted > 0 {
		return sink.Message{}, &PoisonError{Reason: "too_large", Detail: fmt.Sprintf(
			"payload %d bytes, headers column %d bytes (with more than the server's max_payload left out when read): no message can carry them",
			len(ev.Payload)+ev.PayloadOmitted, len(ev.Headers)+ev.HeadersOmitted)}
	}
	if err := checkID(rowID(ev)); err != nil {
		return sink.Message{}, &PoisonError{Reason: "bad_row", Detail: err.Error()}
	}
	if ev.CreatedAt != "" {
		if _, err := mp.createdAt(ev.CreatedAt); err != nil {
			return sink.Message{}, &PoisonError{Reason: "bad_row", Detail: err.Error()}
		}
	}
	var err error
	mp.subject, err = mp.template.appendSubject(mp.subject[:0], ev)
	if err != nil {
		return sink.Message{}, &PoisonError{Reason: "invalid_subject", Detail: err.Error()}
	}
	if string(mp.subject) != mp.lastSubject {
		mp.lastSubject = string(mp.subject)
	}
	subject := mp.lastSubject
	if mp.checkEach && !sink.Captures(mp.captures, subject) {
		return sink.Message{}, &PoisonError{Reason: "no_stream", Detail: fmt.Sprintf("no subject of the stream captures %q", subject)}
	}
	header := mp.header
	clear(header)
	if len(ev.Headers) > 0 {
		if err := addRowHeaders(header, ev.Headers, false); err != nil {
			return sink.Message{}, &PoisonError{Reason: "bad_row", Detail: err.Error()}
		}
	}
	mp.stamp(header, ev, &mp.values)
	if mp.ce != nil {
		if err := mp.ce.stamp(header, ev); err != nil {
			return sink.Message{}, &PoisonError{Reason: "bad_row", Detail: err.Error()}
		}
	}
	return sink.Message{Subject: subject, ID: ev.ID, Data: ev.Payload, Header: header}, nil
}

// DeadLetter maps ev to a message for the dead-letter subject: the payload
// and headers unchanged, plus the reason and the subject it would have had.
// The message is built to fit what any server takes, so that dead-lettering
// itself never fails for size: JetStream's 64 KiB limit on a header block
// and maxPayload (the server's max_payload; 0 for none) for headers and body
// together. What does not fit is left out, in this order, and said so in a
// header (the row stays in the table): the row's own headers
// (Outbox-Headers-Omitted gives the column's size), then the body
// (Outbox-Payload-Omitted gives its size), then both; as a last resort every
// value longer than 1 KiB is cut short and an id that long is not sent as
// Nats-Msg-Id.
func (mp *Mapper) DeadLetter(ev *cdc.Event, subject string, reason *PoisonError, maxPayload int64) sink.Message {
	build := func(rowHeaders bool) nats.Header {
		header := nats.Header{}
		if rowHeaders && len(ev.Headers) > 0 {
			// A malformed headers column may be why it is poison; keep
			// every entry that is usable.
			_ = addRowHeaders(header, ev.Headers, true)
		}
		mp.stamp(header, ev, new(headerValues))
		header.Set(HeaderPoisonReason, reason.Reason+": "+sanitizeHeaderValue(reason.Detail))
		if original, err := mp.template.Subject(ev); err == nil {
			header.Set(HeaderOriginalSubject, original)
		}
		if !rowHeaders && len(ev.Headers) > 0 {
			header.Set(HeaderHeadersOmitted, strconv.Itoa(len(ev.Headers)))
		}
		// Left out when the row was read: larger than any message.
		if ev.HeadersOmitted > 0 {
			header.Set(HeaderHeadersOmitted, strconv.Itoa(ev.HeadersOmitted))
		}
		if ev.PayloadOmitted > 0 {
			header.Set(HeaderPayloadOmitted, strconv.Itoa(ev.PayloadOmitted))
		}
		return header
	}
	// An id that cannot be a Nats-Msg-Id as it is (see checkID) is not
	// sent as one: trimmed by the client, it could make JetStream drop
	// another event as a duplicate of this dead letter.
	id := ev.ID
	if checkID(id) != nil {
		id = ""
	}
	withBody := func(header nats.Header, body bool) sink.Message {
		if !body && ev.PayloadOmitted == 0 {
			header.Set(HeaderPayloadOmitted, strconv.Itoa(len(ev.Payload)))
			return sink.Message{Subject: subject, ID: id, Header: header}
		}
		return sink.Message{Subject: subject, ID: id, Data: ev.Payload, Header: header}
	}
	// The body is the event; the row's headers are extras: keep the body
	// rather than the headers.
	for _, keep := range []struct{ headers, body bool }{{true, true}, {false, true}, {true, false}, {false, false}} {
		if keep.headers || len(ev.Headers) > 0 || ev.HeadersOmitted > 0 {
			if msg := withBody(build(keep.headers), keep.body); Fits(msg, maxPayload) {
				return msg
			}
		}
	}
	msg := withBody(build(false), false)
	for k, vs := range msg.Header {
		for i, v := range vs {
			vs[i] = shorten(v, maxDeadLetterValue)
		}
		msg.Header[k] = vs
	}
	if len(msg.ID) > maxDeadLetterValue {
		msg.ID = ""
	}
	return msg
}

// Limits a dead-letter message is built to fit.
const (
	// maxHeaderBlock is JetStream's limit on a message's encoded header
	// block (JSStreamHeaderExceedsMaximumErr), whatever max_payload allows.
	maxHeaderBlock = 65535
	// sinkHeadersSize is the most the headers the sink adds take, besides
	// Nats-Msg-Id: Nats-Expected-Last-Sequence with a 20-digit value.
	sinkHeadersSize = len("Nats-Expected-Last-Sequence") + 20 + 4
	// maxDeadLetterValue is what each header value of a dead-letter message
	// is cut to when nothing else makes it fit.
	maxDeadLetterValue = 1024
)

// Fits reports whether msg, once the sink adds its headers, is within
// JetStream's 64 KiB header limit and maxPayload (0: no limit): whether the
// server can take it at all.
func Fits(msg sink.Message, maxPayload int64) bool {
	size := headerSize(msg.Header) + int64(sinkHeadersSize)
	if msg.ID != "" {
		size += int64(len("Nats-Msg-Id") + len(msg.ID) + 4)
	}
	return size <= maxHeaderBlock && (maxPayload <= 0 || size+int64(len(msg.Data)) <= maxPayload)
}

// shorten cuts s to at most n bytes, on a UTF-8 boundary, saying how long
// it was.
func shorten(s string, n int) string {
	if len(s) <= n {
		return s
	}
	cut := n
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:cut] + "... (" + strconv.Itoa(len(s)) + " bytes)"
}

// stampedHeaders is how many headers stamp sets at most.
const stampedHeaders = 7

// stamp sets the relay's headers, the per-event values in values. Value
// slices of what rows share may be shared between messages (nothing writes to
// them after this): rows of one transaction share the commit LSN and usually
// created_at (now() is the transaction's start).
func (mp *Mapper) stamp(header nats.Header, ev *cdc.Event, values *headerValues) {
	set := func(i int, k, v string) {
		if v != "" {
			values[i][0] = sanitizeHeaderValue(v)
			header[k] = values[i][:]
		}
	}
	set(0, HeaderAggregateType, ev.AggregateType)
	set(1, HeaderAggregateID, ev.AggregateID)
	set(2, HeaderEventType, ev.EventType)
	if ev.CreatedAt != "" {
		value, err := mp.createdAt(ev.CreatedAt)
		if err != nil {
			// Only a dead letter gets here: it keeps what the row says.
			value = []string{sanitizeHeaderValue(ev.CreatedAt)}
		}
		header[HeaderCreatedAt] = value
	}
	if mp.commitLSNValue == nil || ev.Position.CommitLSN != mp.lastCommitLSN {
		mp.lastCommitLSN = ev.Position.CommitLSN
		mp.commitLSNValue = []string{formatLSN(ev.Position.CommitLSN)}
	}
	header[HeaderCommitLSN] = mp.commitLSNValue
	set(3, HeaderCommitIndex, strconv.FormatUint(uint64(ev.Position.Index), 10))
	header[HeaderOrigin] = mp.originValue
}

// createdAt returns the Outbox-Created-At value for raw, shared by the rows
// that have the same (rows of a transaction usually do: now() is the
// transaction's start).
func (mp *Mapper) createdAt(raw string) ([]string, error) {
	if mp.createdValue != nil && raw == mp.lastCreatedRaw {
		return mp.createdValue, nil
	}
	value, err := normalizeTimestamp(raw)
	if err != nil {
		return nil, err
	}
	mp.lastCreatedRaw, mp.createdValue = raw, []string{value}
	return mp.createdValue, nil
}

// checkID explains why id cannot be a message's Nats-Msg-Id: JetStream
// deduplicates by it, and the NATS client trims white space around header
// values and turns line breaks into spaces, so "a " would be stored as "a"
// and the real "a" then dropped as its duplicate.
func checkID(id string) error {
	switch {
	case id == "":
		return errors.New("column id is empty")
	case strings.ContainsAny(id, "\r\n"):
		return fmt.Errorf("id %q contains a line break", id)
	case textproto.TrimString(id) != id:
		return fmt.Errorf("id %q has white space at its start or end", id)
	}
	return nil
}

// PositionFromHeader reads an event position stamped by the relay, and
// whether the message came from origin.
func PositionFromHeader(h nats.Header, origin string) (cdc.Position, bool) {
	if h == nil || h.Get(HeaderOrigin) != origin {
		return cdc.Position{}, false
	}
	lsn, err := pglogrepl.ParseLSN(h.Get(HeaderCommitLSN))
	if err != nil {
		return cdc.Position{}, false
	}
	index, err := strconv.ParseUint(h.Get(HeaderCommitIndex), 10, 32)
	if err != nil {
		return cdc.Position{}, false
	}
	return cdc.Position{CommitLSN: lsn, Index: uint32(index)}, true
}

// addRowHeaders adds the entries of the row's headers object: a string as
// it is, without the white space around it, which NATS headers cannot carry;
// a number, boolean, object or array as its JSON text (objects and arrays
// compacted); a JSON null not at all, like SQL NULL, and a headers column
// that is JSON null as no headers. Names the relay sets itself (Nats-*,
// Outbox-*) and names or values that cannot travel in a NATS header make the
// row poison: silently dropping them would change the event. With lenient
// set, such entries are skipped instead (for dead-letter messages). Entries
// are visited in name order, so the outcome never depends on map iteration.
func addRowHeaders(header nats.Header, raw []byte, lenient bool) error {
	trimmed := bytes.TrimSpace(raw)
	if string(trimmed) == "null" {
		return nil
	}
	if len(trimmed) == 0 || trimmed[0] != '{' {
		return errors.New("column headers is not a JSON object")
	}
	var entries map[string]json.RawMessage
	if err := json.Unmarshal(trimmed, &entries); err != nil {
		return fmt.Errorf("column headers: %w", err)
	}
	names := make([]string, 0, len(entries))
	for name := range entries {
		names = append(names, name)
	}
	slices.Sort(names)
	var first error
	for _, name := range names {
		value, present := headerText(entries[name])
		if !present {
			continue
		}
		if err := checkRowHeader(name, value); err != nil {
			if !lenient {
				return err
			}
			first = cmp.Or(first, err)
			continue
		}
		// NATS trims ASCII white space around header values on the wire;
		// trimming here keeps the message what the relay believes it sent.
		header[name] = []string{textproto.TrimString(value)}
	}
	return first
}

// headerText renders one JSON value of the headers object as a header
// value: a string as it is, null as absent, anything else as its compact
// JSON text.
func headerText(value json.RawMessage) (string, bool) {
	if len(value) > 0 && value[0] == '"' {
		var s string
		if json.Unmarshal(value, &s) == nil {
			return s, true
		}
	}
	if string(value) == "null" {
		return "", false
	}
	var b bytes.Buffer
	if json.Compact(&b, value) != nil {
		return string(value), true // valid: the object it comes from parsed
	}
	return b.String(), true
}

func checkRowHeader(name, value string) error { return rowheader.Check(name, value) }

// validHeaderName accepts RFC 7230 token characters.
func validHeaderName(name string) bool { return rowheader.ValidName(name) }

func sanitizeHeaderValue(v string) string {
	// Two IndexByte scans, not ContainsAny, which builds its set of
	// characters on every call: this runs for several headers of every
	// event.
	if strings.IndexByte(v, '\r') < 0 && strings.IndexByte(v, '\n') < 0 {
		return v
	}
	return strings.NewReplacer("\r", " ", "\n", " ").Replace(v)
}

func headerSize(h nats.Header) int64 {
	var n int64
	for k, vs := range h {
		for _, v := range vs {
			n += int64(len(k) + len(v) + 4)
		}
	}
	return n + 12
}

// normalizeTimestamp renders PostgreSQL's text form of created_at (ISO
// date style, UTC session time zone) as RFC 3339 in UTC: a timestamptz
// ("2026-11-26 04:13:53.123456+00") at its instant, a timestamp without time
// zone as that time in UTC, a date as midnight UTC. infinity, -infinity,
// dates BC and anything else RFC 3339 cannot express are an error.
func normalizeTimestamp(s string) (string, error) {
	for _, layout := range []string{
		"2006-01-02 15:04:05.999999999-07", "2006-01-02 15:04:05.999999999-07:00", "2006-01-02 15:04:05.999999999-07:00:00",
		"2006-01-02 15:04:05.999999999", "2006-01-02", time.RFC3339Nano,
	} {
		if t, err := time.Parse(layout, s); err == nil {
			return t.UTC().Format(time.RFC3339Nano), nil
		}
	}
	return "", fmt.Errorf("created_at %q cannot be written in RFC 3339", s)
}

// formatLSN renders lsn as PostgreSQL does ("16/B374D848"), without fmt:
// it runs for every message.
func formatLSN(lsn pglogrepl.LSN) string {
	var buf [17]byte
	b := appendUpperHex(buf[:0], uint32(lsn>>32))
	b = append(b, '/')
	b = appendUpperHex(b, uint32(lsn))
	return string(b)
}

func appendUpperHex(b []byte, v uint32) []byte {
	const digits = "0123456789ABCDEF"
	if v == 0 {
		return append(b, '0')
	}
	var tmp [8]byte
	i := len(tmp)
	for v > 0 {
		i--
		tmp[i] = digits[v&0xF]
		v >>= 4
	}
	return append(b, tmp[i:]...)
}
