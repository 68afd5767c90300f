package relay

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/jackc/pglogrepl"
	"github.com/nats-io/nats.go"
	"github.com/stretchr/testify/require"

	"github.com/outbox-relay/outbox-relay/internal/cdc"
	"github.com/outbox-relay/outbox-relay/internal/sink"
)

const mappingOrigin = "7311425360846561234:app:outbox_slot"

func mappingEvent() cdc.Event {
	return cdc.Event{
		ID:            "0b7a8f4e-5a42-4c38-9f0e-7d0f6f1d2c11",
		AggregateType: "order",
		AggregateID:   "o-17",
		EventType:     "created",
		Payload:       []byte(`{"total": 42}`),
		CreatedAt:     "2026-11-26 04:13:53.123456+00",
		Position:      cdc.Position{CommitLSN: 0x16_B374D848, Index: 3},
	}
}

func mustTemplate(t testing.TB, s string) Template {
	t.Helper()
	tmpl, err := ParseTemplate(s)
	require.NoError(t, err)
	return tmpl
}

func mappingMapper(t testing.TB) *Mapper {
	t.Helper()
	tmpl := mustTemplate(t, "outbox.{aggregate_type}.{event_type}")
	return NewMapper(tmpl, mappingOrigin, tmpl.StreamSubjects())
}

// requirePoison asserts err is a *PoisonError with the given reason.
func requirePoison(t *testing.T, err error, reason string) *PoisonError {
	t.Helper()
	var p *PoisonError
	require.True(t, errors.As(err, &p), "want a *PoisonError, got %T: %v", err, err)
	require.Equal(t, reason, p.Reason, "detail: %s", p.Detail)
	require.True(t, strings.HasPrefix(p.Error(), reason+": "), p.Error())
	return p
}

func TestParseTemplateValid(t *testing.T) {
	t.Parallel()
	tests := []struct {
		template string
		wildcard string
		tokens   int
	}{
		{"outbox.{aggregate_type}.{event_type}", "outbox.*.*", 3},
		{"{id}", "*", 1},
		{"events", "events", 1},
		{"a.b.c", "a.b.c", 3},
		{"orders-{event_type}", "*", 1},
		{"outbox.orders-{event_type}.v1", "outbox.*.v1", 3},
		{"x.{aggregate_type}-{aggregate_id}.y", "x.*.y", 3},
		{"{aggregate_type}{event_type}", "*", 1},
		{"{event_type}-suffix", "*", 1},
		{"pre-{id}-post", "*", 1},
		{"{aggregate_type}.{aggregate_id}.{event_type}.{id}", "*.*.*.*", 4},
		{"$JS-like_literal.{id}", "$JS-like_literal.*", 2},
	}
	for _, tt := range tests {
		t.Run(tt.template, func(t *testing.T) {
			t.Parallel()
			tmpl, err := ParseTemplate(tt.template)
			require.NoError(t, err)
			require.Equal(t, tt.template, tmpl.String())
			require.Equal(t, tt.wildcard, tmpl.Wildcard())
			require.Equal(t, []string{tt.wildcard}, tmpl.StreamSubjects())
			require.Len(t, tmpl.tokens, tt.tokens)
			require.True(t, sink.ValidSubject(tmpl.Wildcard(), true))
		})
	}
}

func TestParseTemplateInvalid(t *testing.T) {
	t.Parallel()
	tests := []struct {
		template string
		contains string
	}{
		{"", "must not be empty"},
		{"outbox.{foo}", "unknown placeholder {foo}"},
		{"outbox.{}", "unknown placeholder {}"},
		{"outbox.{Event_Type}", "unknown placeholder"},
		{"outbox.{ id}", "unknown placeholder"},
		{"outbox.{{id}", "unknown placeholder"},
		{"outbox.{event_type", "unclosed {"},
		{"outbox.{", "unclosed {"},
		{"outbox.x{id}{", "unclosed {"},
		{"outbox..{id}", "empty token"},
		{".outbox", "empty token"},
		{"outbox.", "empty token"},
		{".", "empty token"},
		{"outbox.*", "not a valid subject token"},
		{"outbox.>", "not a valid subject token"},
		{"outbox.a*{id}", "not a valid subject token"},
		{"out box.{id}", "not a valid subject token"},
		{"outbox\t.{id}", "not a valid subject token"},
		{"outbox.}", "} without its {"},
		{"outbox.{id}}", "} without its {"},
		{"outbox.a}b", "} without its {"},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprintf("%q", tt.template), func(t *testing.T) {
			t.Parallel()
			_, err := ParseTemplate(tt.template)
			require.ErrorContains(t, err, tt.contains)
			require.True(t, strings.HasPrefix(err.Error(), "subject-template: "), err.Error())
		})
	}
}

func TestTemplateSubject(t *testing.T) {
	t.Parallel()
	ev := mappingEvent()
	tests := []struct {
		template string
		want     string
	}{
		{"outbox.{aggregate_type}.{event_type}", "outbox.order.created"},
		{"outbox.{aggregate_type}.{aggregate_id}", "outbox.order.o-17"},
		{"{id}", "0b7a8f4e-5a42-4c38-9f0e-7d0f6f1d2c11"},
		{"orders-{event_type}", "orders-created"},
		{"x.{aggregate_type}-{aggregate_id}.y", "x.order-o-17.y"},
		{"{aggregate_type}{event_type}", "ordercreated"},
		{"static.subject", "static.subject"},
	}
	for _, tt := range tests {
		t.Run(tt.template, func(t *testing.T) {
			t.Parallel()
			tmpl := mustTemplate(t, tt.template)
			got, err := tmpl.Subject(&ev)
			require.NoError(t, err)
			require.Equal(t, tt.want, got)
			require.True(t, sink.Captures([]string{tmpl.Wildcard()}, got))
		})
	}
}

func TestTemplateSubjectInvalidValues(t *testing.T) {
	t.Parallel()
	values := []string{"", ".", "a.b", "*", "a*", ">", "a>", " ", "a b", "\t", "a\tb", "\n", "a\n", "\r", "\x00", "\x7f"}
	templates := []string{
		"outbox.{aggregate_type}.{event_type}",
		"orders-{event_type}",
		"{aggregate_type}{event_type}",
	}
	for _, tmplSrc := range templates {
		for _, v := range values {
			t.Run(fmt.Sprintf("%s/%q", tmplSrc, v), func(t *testing.T) {
				t.Parallel()
				tmpl := mustTemplate(t, tmplSrc)
				ev := mappingEvent()
				ev.EventType = v
				s, err := tmpl.Subject(&ev)
				require.Error(t, err, "subject %q", s)
				require.Contains(t, err.Error(), "{event_type}")
				require.Empty(t, s)
			})
		}
	}
}

func TestTemplateSubjectUnusedFieldsIgnored(t *testing.T) {
	t.Parallel()
	// Only the fields the template names need be valid tokens.
	ev := mappingEvent()
	ev.AggregateID = "has space.and dot"
	ev.ID = ""
	s, err := mustTemplate(t, "outbox.{aggregate_type}.{event_type}").Subject(&ev)
	require.NoError(t, err)
	require.Equal(t, "outbox.order.created", s)
}

func TestMapperMessage(t *testing.T) {
	t.Parallel()
	mp := mappingMapper(t)
	ev := mappingEvent()
	msg, err := mp.Message(&ev)
	require.NoError(t, err)
	require.Equal(t, "outbox.order.created", msg.Subject)
	require.Equal(t, ev.ID, msg.ID)
	require.Equal(t, ev.Payload, msg.Data)
	require.False(t, msg.CheckLastSeq)
	require.Equal(t, nats.Header{
		HeaderAggregateType: {"order"},
		HeaderAggregateID:   {"o-17"},
		HeaderEventType:     {"created"},
		HeaderCreatedAt:     {"2026-11-26T04:13:53.123456Z"},
		HeaderCommitLSN:     {"16/B374D848"},
		HeaderCommitIndex:   {"3"},
		HeaderOrigin:        {mappingOrigin},
	}, msg.Header)
	require.Equal(t, mappingOrigin, mp.Origin())
}

func TestMapperMessageFields(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name   string
		modify func(ev *cdc.Event)
		check  func(t *testing.T, m sink.Message)
	}{
		{
			"created_at with offset", func(ev *cdc.Event) { ev.CreatedAt = "2026-11-26 04:13:53.5-03" },
			func(t *testing.T, m sink.Message) {
				require.Equal(t, "2026-11-26T07:13:53.5Z", m.Header.Get(HeaderCreatedAt))
			},
		},
		{
			"created_at with minutes offset", func(ev *cdc.Event) { ev.CreatedAt = "2026-11-26 04:13:53+05:30" },
			func(t *testing.T, m sink.Message) {
				require.Equal(t, "2026-11-25T22:43:53Z", m.Header.Get(HeaderCreatedAt))
			},
		},
		{
			"created_at with seconds offset", func(ev *cdc.Event) { ev.CreatedAt = "1900-01-01 00:00:00+00:19:32" },
			func(t *testing.T, m sink.Message) {
				require.Equal(t, "1899-12-31T23:40:28Z", m.Header.Get(HeaderCreatedAt))
			},
		},
		{
			"created_at without fraction", func(ev *cdc.Event) { ev.CreatedAt = "2026-11-26 04:13:53+00" },
			func(t *testing.T, m sink.Message) {
				require.Equal(t, "2026-11-26T04:13:53Z", m.Header.Get(HeaderCreatedAt))
			},
		},
		{
			"created_at without zone taken as UTC", func(ev *cdc.Event) { ev.CreatedAt = "2026-11-26 04:13:53.123456" },
			func(t *testing.T, m sink.Message) {
				require.Equal(t, "2026-11-26T04:13:53.123456Z", m.Header.Get(HeaderCreatedAt))
			},
		},
		{
			"created_at date is midnight UTC", func(ev *cdc.Event) { ev.CreatedAt = "2026-11-26" },
			func(t *testing.T, m sink.Message) {
				require.Equal(t, "2026-11-26T00:00:00Z", m.Header.Get(HeaderCreatedAt))
			},
		},
		{
			"no created_at, no header", func(ev *cdc.Event) { ev.CreatedAt = "" },
			func(t *testing.T, m sink.Message) {
				_, ok := m.Header[HeaderCreatedAt]
				require.False(t, ok)
			},
		},
		{
			"empty aggregate id, no header", func(ev *cdc.Event) { ev.AggregateID = "" },
			func(t *testing.T, m sink.Message) {
				_, ok := m.Header[HeaderAggregateID]
				require.False(t, ok)
			},
		},
		{
			"aggregate id with line break sanitized", func(ev *cdc.Event) { ev.AggregateID = "a\nb" },
			func(t *testing.T, m sink.Message) { require.Equal(t, "a b", m.Header.Get(HeaderAggregateID)) },
		},
		{
			"zero position", func(ev *cdc.Event) { ev.Position = cdc.Position{} },
			func(t *testing.T, m sink.Message) {
				require.Equal(t, "0/0", m.Header.Get(HeaderCommitLSN))
				require.Equal(t, "0", m.Header.Get(HeaderCommitIndex))
			},
		},
		{
			"max index", func(ev *cdc.Event) { ev.Position.Index = 1<<32 - 1 },
			func(t *testing.T, m sink.Message) { require.Equal(t, "4294967295", m.Header.Get(HeaderCommitIndex)) },
		},
		{
			"empty payload", func(ev *cdc.Event) { ev.Payload = []byte{} },
			func(t *testing.T, m sink.Message) { require.Empty(t, m.Data) },
		},
		{"row headers", func(ev *cdc.Event) {
			ev.Headers = []byte(`{"trace-id": "abc", "n": 1, "f": -1.50e3, "b": true, "o": {"x": "y", "z": [1, null]}, "a": ["s"], "e": [], "nil": null, "empty": "", "unicode": "ü\u00e9\t"}`)
		}, func(t *testing.T, m sink.Message) {
			require.Equal(t, []string{"abc"}, m.Header["trace-id"])
			require.Equal(t, []string{""}, m.Header["empty"])
			// White space around a value cannot travel in a NATS header;
			// it is trimmed as the wire would.
			require.Equal(t, []string{"üé"}, m.Header["unicode"])
			// Other JSON values travel as their (compact) JSON text.
			require.Equal(t, []string{"1"}, m.Header["n"])
			require.Equal(t, []string{"-1.50e3"}, m.Header["f"])
			require.Equal(t, []string{"true"}, m.Header["b"])
			require.Equal(t, []string{`{"x":"y","z":[1,null]}`}, m.Header["o"])
			require.Equal(t, []string{`["s"]`}, m.Header["a"])
			require.Equal(t, []string{`[]`}, m.Header["e"])
			// JSON null is no value, like SQL NULL.
			_, ok := m.Header["nil"]
			require.False(t, ok, "null is left out")
			require.Equal(t, "order", m.Header.Get(HeaderAggregateType))
			require.Len(t, m.Header, 16)
		}},
		{
			"headers column JSON null is no headers", func(ev *cdc.Event) { ev.Headers = []byte(" null ") },
			func(t *testing.T, m sink.Message) { require.Len(t, m.Header, 7) },
		},
		{
			"id with inner white space", func(ev *cdc.Event) { ev.ID = "a b\tc" },
			func(t *testing.T, m sink.Message) { require.Equal(t, "a b\tc", m.ID) },
		},
		{
			"row headers with whitespace around", func(ev *cdc.Event) { ev.Headers = []byte(" \n\t{\"k\" :\t \"v\" }\n ") },
			func(t *testing.T, m sink.Message) { require.Equal(t, []string{"v"}, m.Header["k"]) },
		},
		{
			"row header names keep their case", func(ev *cdc.Event) { ev.Headers = []byte(`{"X-Trace": "1", "x-trace": "2"}`) },
			func(t *testing.T, m sink.Message) {
				require.Equal(t, []string{"1"}, m.Header["X-Trace"])
				require.Equal(t, []string{"2"}, m.Header["x-trace"])
			},
		},
		{
			"empty headers object", func(ev *cdc.Event) { ev.Headers = []byte(`{}`) },
			func(t *testing.T, m sink.Message) { require.Len(t, m.Header, 7) },
		},
		{
			"empty headers value", func(ev *cdc.Event) { ev.Headers = []byte{} },
			func(t *testing.T, m sink.Message) { require.Len(t, m.Header, 7) },
		},
		{
			"reserved name with a null value is absent", func(ev *cdc.Event) { ev.Headers = []byte(`{"Nats-Msg-Id": null}`) },
			func(t *testing.T, m sink.Message) { require.Len(t, m.Header, 7) },
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			ev := mappingEvent()
			tt.modify(&ev)
			m, err := mappingMapper(t).Message(&ev)
			require.NoError(t, err)
			tt.check(t, m)
		})
	}
}

func TestMapperMessagePoison(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name     string
		modify   func(ev *cdc.Event)
		captures []string // nil: the template's own
		reason   string
		contains string
	}{
		{"defect", func(ev *cdc.Event) { ev.Defect = `column "payload" is NULL` }, nil, "bad_row", `"payload" is NULL`},
		{"defect wins over an invalid subject", func(ev *cdc.Event) { ev.Defect = "d"; ev.EventType = "" }, nil, "bad_row", "d"},
		{"invalid subject", func(ev *cdc.Event) { ev.EventType = "a.b" }, nil, "invalid_subject", "{event_type}"},
		{"empty subject value", func(ev *cdc.Event) { ev.AggregateType = "" }, nil, "invalid_subject", "{aggregate_type}"},
		{"not captured", func(*cdc.Event) {}, []string{"other.>"}, "no_stream", "outbox.order.created"},
		{"captured only partly", func(*cdc.Event) {}, []string{"outbox.*"}, "no_stream", "outbox.order.created"},
		{"headers array", func(ev *cdc.Event) { ev.Headers = []byte(`["a"]`) }, nil, "bad_row", "not a JSON object"},
		{"headers string", func(ev *cdc.Event) { ev.Headers = []byte(`"x"`) }, nil, "bad_row", "not a JSON object"},
		{"headers number", func(ev *cdc.Event) { ev.Headers = []byte(`1`) }, nil, "bad_row", "not a JSON object"},
		{"headers whitespace only", func(ev *cdc.Event) { ev.Headers = []byte("  \n") }, nil, "bad_row", "not a JSON object"},
		{"headers invalid JSON", func(ev *cdc.Event) { ev.Headers = []byte(`{"a": `) }, nil, "bad_row", "column headers"},
		{"headers trailing data", func(ev *cdc.Event) { ev.Headers = []byte(`{"a": "b"} x`) }, nil, "bad_row", "column headers"},
		{"reserved Nats-", func(ev *cdc.Event) { ev.Headers = []byte(`{"Nats-Msg-Id": "x"}`) }, nil, "bad_row", "reserved"},
		{"reserved Nats- with a number", func(ev *cdc.Event) { ev.Headers = []byte(`{"Nats-Msg-Id": 5}`) }, nil, "bad_row", "reserved"},
		{"reserved nats- lower case", func(ev *cdc.Event) { ev.Headers = []byte(`{"nats-expected-stream": "x"}`) }, nil, "bad_row", "reserved"},
		{"reserved Outbox-", func(ev *cdc.Event) { ev.Headers = []byte(`{"Outbox-Commit-Lsn": "0/1"}`) }, nil, "bad_row", "reserved"},
		{"reserved OUTBOX- upper case", func(ev *cdc.Event) { ev.Headers = []byte(`{"OUTBOX-ORIGIN": "x"}`) }, nil, "bad_row", "reserved"},
		{"name with space", func(ev *cdc.Event) { ev.Headers = []byte(`{"a b": "x"}`) }, nil, "bad_row", "not a valid header name"},
		{"name with colon", func(ev *cdc.Event) { ev.Headers = []byte(`{"a:b": "x"}`) }, nil, "bad_row", "not a valid header name"},
		{"name with CR", func(ev *cdc.Event) { ev.Headers = []byte(`{"a\rb": "x"}`) }, nil, "bad_row", "not a valid header name"},
		{"name with LF", func(ev *cdc.Event) { ev.Headers = []byte(`{"a\nb": "x"}`) }, nil, "bad_row", "not a valid header name"},
		{"empty name", func(ev *cdc.Event) { ev.Headers = []byte(`{"": "x"}`) }, nil, "bad_row", "not a valid header name"},
		{"non-ASCII name", func(ev *cdc.Event) { ev.Headers = []byte(`{"tränce": "x"}`) }, nil, "bad_row", "not a valid header name"},
		{"value with CRLF", func(ev *cdc.Event) { ev.Headers = []byte(`{"a": "x\r\nNats-Msg-Id: y"}`) }, nil, "bad_row", "line break"},
		{"value with LF", func(ev *cdc.Event) { ev.Headers = []byte(`{"a": "x\ny"}`) }, nil, "bad_row", "line break"},
		{"value with CR", func(ev *cdc.Event) { ev.Headers = []byte(`{"a": "x\ry"}`) }, nil, "bad_row", "line break"},
		{"empty id", func(ev *cdc.Event) { ev.ID = "" }, nil, "bad_row", "column id is empty"},
		{"id with a trailing space", func(ev *cdc.Event) { ev.ID = "a " }, nil, "bad_row", `id "a " has white space`},
		{"id with a leading tab", func(ev *cdc.Event) { ev.ID = "\ta" }, nil, "bad_row", "white space at its start or end"},
		{"id with a line break", func(ev *cdc.Event) { ev.ID = "a\nb" }, nil, "bad_row", "line break"},
		{"id with a CR", func(ev *cdc.Event) { ev.ID = "a\r" }, nil, "bad_row", "line break"},
		{"id wins over an invalid subject", func(ev *cdc.Event) { ev.ID = ""; ev.EventType = "" }, nil, "bad_row", "id"},
		{"created_at infinity", func(ev *cdc.Event) { ev.CreatedAt = "infinity" }, nil, "bad_row", `"infinity" cannot be written in RFC 3339`},
		{"created_at -infinity", func(ev *cdc.Event) { ev.CreatedAt = "-infinity" }, nil, "bad_row", "-infinity"},
		{"created_at BC", func(ev *cdc.Event) { ev.CreatedAt = "0044-03-15 12:00:00+00 BC" }, nil, "bad_row", "BC"},
		{"created_at with a line break", func(ev *cdc.Event) { ev.CreatedAt = "x\r\ny" }, nil, "bad_row", "RFC 3339"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			tmpl := mustTemplate(t, "outbox.{aggregate_type}.{event_type}")
			captures := tt.captures
			if captures == nil {
				captures = tmpl.StreamSubjects()
			}
			mp := NewMapper(tmpl, mappingOrigin, captures)
			ev := mappingEvent()
			tt.modify(&ev)
			m, err := mp.Message(&ev)
			p := requirePoison(t, err, tt.reason)
			require.Contains(t, p.Detail, tt.contains)
			require.Equal(t, sink.Message{}, m)
			require.Equal(t, ev.ID, p.EventID(), "the error names the event")
			require.Equal(t, ev.Position.CommitLSN, p.EventLSN())
		})
	}
}

func TestMapperCaptures(t *testing.T) {
	t.Parallel()
	tmpl := mustTemplate(t, "outbox.{aggregate_type}.{event_type}")
	ev := mappingEvent()

	// Without stream subjects nothing is refused as uncaptured.
	_, err := NewMapper(tmpl, mappingOrigin, nil).Message(&ev)
	require.NoError(t, err)

	mp := NewMapper(tmpl, mappingOrigin, []string{"x.>", "outbox.>"})
	_, err = mp.Message(&ev)
	require.NoError(t, err)
	require.True(t, mp.Captured("outbox.a.b"))
	require.True(t, mp.Captured("x.y"))
	require.False(t, mp.Captured("outbox_dead_letter"))
}

func TestPositionFromHeader(t *testing.T) {
	t.Parallel()
	positions := []cdc.Position{
		{},
		{CommitLSN: 0x16_B374D848, Index: 3},
		{CommitLSN: 1, Index: 0},
		{CommitLSN: pglogrepl.LSN(1<<64 - 1), Index: 1<<32 - 1},
	}
	for _, pos := range positions {
		t.Run(pos.String(), func(t *testing.T) {
			t.Parallel()
			ev := mappingEvent()
			ev.Position = pos
			m, err := mappingMapper(t).Message(&ev)
			require.NoError(t, err)
			got, ok := PositionFromHeader(m.Header, mappingOrigin)
			require.True(t, ok)
			require.Equal(t, pos, got)

			_, ok = PositionFromHeader(m.Header, "7311425360846561234:app:other_slot")
			require.False(t, ok, "another origin's position must not count")
			_, ok = PositionFromHeader(m.Header, "")
			require.False(t, ok)
		})
	}
}

func TestPositionFromHeaderInvalid(t *testing.T) {
	t.Parallel()
	good := func() nats.Header {
		return nats.Header{
			HeaderOrigin:      {mappingOrigin},
			HeaderCommitLSN:   {"16/B374D848"},
			HeaderCommitIndex: {"3"},
		}
	}
	tests := []struct {
		name   string
		header nats.Header
	}{
		{"nil header", nil},
		{"empty header", nats.Header{}},
		{"no origin", func() nats.Header { h := good(); delete(h, HeaderOrigin); return h }()},
		{"no lsn", func() nats.Header { h := good(); delete(h, HeaderCommitLSN); return h }()},
		{"bad lsn", func() nats.Header { h := good(); h.Set(HeaderCommitLSN, "xyz"); return h }()},
		{"no index", func() nats.Header { h := good(); delete(h, HeaderCommitIndex); return h }()},
		{"negative index", func() nats.Header { h := good(); h.Set(HeaderCommitIndex, "-1"); return h }()},
		{"index beyond 32 bits", func() nats.Header { h := good(); h.Set(HeaderCommitIndex, "4294967296"); return h }()},
		{"index not a number", func() nats.Header { h := good(); h.Set(HeaderCommitIndex, "3a"); return h }()},
		{"origin differs in case", func() nats.Header { h := good(); h.Set(HeaderOrigin, strings.ToUpper(mappingOrigin)); return h }()},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			pos, ok := PositionFromHeader(tt.header, mappingOrigin)
			require.False(t, ok)
			require.Equal(t, cdc.Position{}, pos)
		})
	}
	pos, ok := PositionFromHeader(good(), mappingOrigin)
	require.True(t, ok)
	require.Equal(t, cdc.Position{CommitLSN: 0x16_B374D848, Index: 3}, pos)
}

func TestMapperDeadLetter(t *testing.T) {
	t.Parallel()
	const dlq = "outbox_dead_letter"
	tests := []struct {
		name       string
		modify     func(ev *cdc.Event)
		reason     PoisonError
		maxPayload int64
		check      func(t *testing.T, ev cdc.Event, m sink.Message)
	}{
		{
			"bad row keeps payload and original subject",
			func(ev *cdc.Event) { ev.Defect = `column "headers" is NULL` },
			PoisonError{Reason: "bad_row", Detail: `column "headers" is NULL`},
			1 << 20,
			func(t *testing.T, ev cdc.Event, m sink.Message) {
				require.Equal(t, `bad_row: column "headers" is NULL`, m.Header.Get(HeaderPoisonReason))
				require.Equal(t, "outbox.order.created", m.Header.Get(HeaderOriginalSubject))
				require.Equal(t, ev.Payload, m.Data)
				_, omitted := m.Header[HeaderPayloadOmitted]
				require.False(t, omitted)
			},
		},
		{
			"invalid subject has no original subject",
			func(ev *cdc.Event) { ev.EventType = "a b" },
			PoisonError{Reason: "invalid_subject", Detail: `{event_type} = "a b" is not a valid subject token`},
			1 << 20,
			func(t *testing.T, ev cdc.Event, m sink.Message) {
				require.True(t, strings.HasPrefix(m.Header.Get(HeaderPoisonReason), "invalid_subject: "))
				_, ok := m.Header[HeaderOriginalSubject]
				require.False(t, ok)
				require.Equal(t, "a b", m.Header.Get(HeaderEventType))
			},
		},
		{
			"detail with line breaks sanitized",
			func(*cdc.Event) {},
			PoisonError{Reason: "rejected", Detail: "line one\r\nline two\nthree"},
			0,
			func(t *testing.T, ev cdc.Event, m sink.Message) {
				require.Equal(t, "rejected: line one  line two three", m.Header.Get(HeaderPoisonReason))
			},
		},
		{
			"oversized payload omitted",
			func(ev *cdc.Event) { ev.Payload = []byte(strings.Repeat("x", 5000)) },
			PoisonError{Reason: "too_large", Detail: "message size exceeds maximum allowed"},
			4096,
			func(t *testing.T, ev cdc.Event, m sink.Message) {
				require.Nil(t, m.Data)
				require.Equal(t, "5000", m.Header.Get(HeaderPayloadOmitted))
				require.Equal(t, "outbox.order.created", m.Header.Get(HeaderOriginalSubject))
				require.True(t, strings.HasPrefix(m.Header.Get(HeaderPoisonReason), "too_large: "))
			},
		},
		{
			"payload near the limit omitted for header room",
			func(ev *cdc.Event) { ev.Payload = []byte(strings.Repeat("x", 4000)) },
			PoisonError{Reason: "too_large", Detail: "d"},
			4096,
			func(t *testing.T, ev cdc.Event, m sink.Message) {
				require.Nil(t, m.Data)
				require.Equal(t, "4000", m.Header.Get(HeaderPayloadOmitted))
			},
		},
		{
			"small payload kept under a limit",
			func(*cdc.Event) {},
			PoisonError{Reason: "no_stream", Detail: "d"},
			4096,
			func(t *testing.T, ev cdc.Event, m sink.Message) {
				require.Equal(t, ev.Payload, m.Data)
				_, omitted := m.Header[HeaderPayloadOmitted]
				require.False(t, omitted)
			},
		},
		{
			"no limit keeps any payload",
			func(ev *cdc.Event) { ev.Payload = []byte(strings.Repeat("x", 100_000)) },
			PoisonError{Reason: "too_large", Detail: "d"},
			0,
			func(t *testing.T, ev cdc.Event, m sink.Message) { require.Len(t, m.Data, 100_000) },
		},
		{
			"usable row headers kept",
			func(ev *cdc.Event) { ev.Headers = []byte(`{"trace": "abc", "n": 1}`) },
			PoisonError{Reason: "too_large", Detail: "d"},
			0,
			func(t *testing.T, ev cdc.Event, m sink.Message) {
				require.Equal(t, "abc", m.Header.Get("trace"))
			},
		},
		{
			"malformed row headers dropped",
			func(ev *cdc.Event) { ev.Headers = []byte(`not json`) },
			PoisonError{Reason: "bad_row", Detail: "column headers is not a JSON object"},
			0,
			func(t *testing.T, ev cdc.Event, m sink.Message) {
				require.Equal(t, "bad_row: column headers is not a JSON object", m.Header.Get(HeaderPoisonReason))
				require.Equal(t, ev.Payload, m.Data)
			},
		},
		{
			"row headers over the header limit omitted, body kept",
			func(ev *cdc.Event) { ev.Headers = []byte(`{"big": "` + strings.Repeat("h", 100<<10) + `"}`) },
			PoisonError{Reason: "too_large", Detail: "header size exceeds maximum allowed of 64k"},
			1 << 20,
			func(t *testing.T, ev cdc.Event, m sink.Message) {
				require.Empty(t, m.Header.Get("big"))
				require.Equal(t, strconv.Itoa(len(ev.Headers)), m.Header.Get(HeaderHeadersOmitted))
				require.Equal(t, ev.Payload, m.Data)
				require.Equal(t, "outbox.order.created", m.Header.Get(HeaderOriginalSubject))
			},
		},
		{
			"row headers over max payload omitted, body kept",
			func(ev *cdc.Event) { ev.Headers = []byte(`{"big": "` + strings.Repeat("h", 4000) + `", "small": "s"}`) },
			PoisonError{Reason: "too_large", Detail: "d"},
			4096,
			func(t *testing.T, ev cdc.Event, m sink.Message) {
				require.Empty(t, m.Header.Get("small"), "the row's headers go as a whole")
				require.NotEmpty(t, m.Header.Get(HeaderHeadersOmitted))
				require.Equal(t, ev.Payload, m.Data)
			},
		},
		{
			"body over max payload omitted, small row headers kept",
			func(ev *cdc.Event) {
				ev.Payload = []byte(strings.Repeat("x", 5000))
				ev.Headers = []byte(`{"trace": "abc"}`)
			},
			PoisonError{Reason: "too_large", Detail: "d"},
			4096,
			func(t *testing.T, ev cdc.Event, m sink.Message) {
				require.Equal(t, "abc", m.Header.Get("trace"))
				require.Nil(t, m.Data)
				require.Equal(t, "5000", m.Header.Get(HeaderPayloadOmitted))
			},
		},
		{
			"both omitted when neither fits",
			func(ev *cdc.Event) {
				ev.Payload = []byte(strings.Repeat("x", 5000))
				ev.Headers = []byte(`{"big": "` + strings.Repeat("h", 5000) + `"}`)
			},
			PoisonError{Reason: "too_large", Detail: "d"},
			4096,
			func(t *testing.T, ev cdc.Event, m sink.Message) {
				require.Nil(t, m.Data)
				require.NotEmpty(t, m.Header.Get(HeaderPayloadOmitted))
				require.NotEmpty(t, m.Header.Get(HeaderHeadersOmitted))
				require.Empty(t, m.Header.Get("big"))
			},
		},
		{
			"reserved row header does not override the relay's",
			func(ev *cdc.Event) {
				ev.Headers = []byte(`{"Outbox-Origin": "forged", "Outbox-Poison-Reason": "forged"}`)
			},
			PoisonError{Reason: "bad_row", Detail: "reserved"},
			0,
			func(t *testing.T, ev cdc.Event, m sink.Message) {
				require.Equal(t, []string{mappingOrigin}, m.Header[HeaderOrigin])
				require.Equal(t, []string{"bad_row: reserved"}, m.Header[HeaderPoisonReason])
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			ev := mappingEvent()
			tt.modify(&ev)
			reason := tt.reason
			m := mappingMapper(t).DeadLetter(&ev, dlq, &reason, tt.maxPayload)
			require.Equal(t, dlq, m.Subject)
			require.Equal(t, ev.ID, m.ID)
			// Stamped like any message, so a restart can find its place.
			pos, ok := PositionFromHeader(m.Header, mappingOrigin)
			require.True(t, ok)
			require.Equal(t, ev.Position, pos)
			for k, vs := range m.Header {
				for _, v := range vs {
					require.NotContains(t, v, "\r", "header %s", k)
					require.NotContains(t, v, "\n", "header %s", k)
				}
			}
			require.True(t, Fits(m, tt.maxPayload), "the dead-letter message fits")
			tt.check(t, ev, m)
		})
	}
}

// TestDeadLetterOfAnUnusableID: a dead letter is not sent with an id the
// NATS client would trim or flatten: stored as "a", it would make JetStream
// drop the real "a" as a duplicate.
func TestDeadLetterOfAnUnusableID(t *testing.T) {
	t.Parallel()
	for _, id := range []string{"", "a ", " a", "a\nb"} {
		ev := mappingEvent()
		ev.ID = id
		m := mappingMapper(t).DeadLetter(&ev, "dlq", &PoisonError{Reason: "bad_row", Detail: "id"}, 0)
		require.Empty(t, m.ID, "id %q", id)
	}
	ev := mappingEvent()
	ev.CreatedAt = "infinity"
	m := mappingMapper(t).DeadLetter(&ev, "dlq", &PoisonError{Reason: "bad_row", Detail: "created_at"}, 0)
	require.Equal(t, ev.ID, m.ID)
	require.Equal(t, "infinity", m.Header.Get(HeaderCreatedAt), "a dead letter keeps what the row says")
}

// TestDeadLetterFitsWhateverTheRow: when even the relay's own headers are too
// large (a huge aggregate id and a reason quoting it), each value is cut
// short, and an id too long for a header is not sent as Nats-Msg-Id.
func TestDeadLetterFitsWhateverTheRow(t *testing.T) {
	t.Parallel()
	ev := mappingEvent()
	ev.AggregateID = strings.Repeat("é", 40<<10)
	ev.EventType = strings.Repeat("e", 40<<10)
	ev.ID = strings.Repeat("i", 70<<10)
	ev.Headers = []byte(`{"big": "` + strings.Repeat("h", 100<<10) + `"}`)
	reason := PoisonError{Reason: "too_large", Detail: "id " + ev.ID}
	for _, maxPayload := range []int64{0, 1 << 20, 8 << 20} {
		m := mappingMapper(t).DeadLetter(&ev, "dlq", &reason, maxPayload)
		require.True(t, Fits(m, maxPayload))
		require.Empty(t, m.ID)
		require.True(t, utf8.ValidString(m.Header.Get(HeaderAggregateID)), "cut on a character boundary")
		require.True(t, strings.HasSuffix(m.Header.Get(HeaderAggregateID), fmt.Sprintf("... (%d bytes)", len(ev.AggregateID))))
		require.True(t, strings.HasPrefix(m.Header.Get(HeaderPoisonReason), "too_large: id iii"))
		pos, ok := PositionFromHeader(m.Header, mappingOrigin)
		require.True(t, ok)
		require.Equal(t, ev.Position, pos)
	}
}

func TestNormalizeTimestamp(t *testing.T) {
	t.Parallel()
	tests := []struct{ in, want string }{
		// timestamptz, as PostgreSQL writes it in ISO date style.
		{"2026-11-26 04:13:53.123456+00", "2026-11-26T04:13:53.123456Z"},
		{"2026-11-26 04:13:53+00", "2026-11-26T04:13:53Z"},
		{"2026-11-26 04:13:53.1+01", "2026-11-26T03:13:53.1Z"},
		{"2026-11-26 04:13:53.123456-09:30", "2026-11-26T13:43:53.123456Z"},
		{"2026-11-26 04:13:53-00:00:12", "2026-11-26T04:14:05Z"},
		// timestamp without time zone: taken as UTC.
		{"2026-11-26 04:13:53.5", "2026-11-26T04:13:53.5Z"},
		{"2026-11-26 04:13:53", "2026-11-26T04:13:53Z"},
		{"0099-01-01 00:00:00", "0099-01-01T00:00:00Z"},
		// date: midnight UTC.
		{"2026-11-26", "2026-11-26T00:00:00Z"},
		// Already RFC 3339.
		{"2026-11-26T04:13:53+02:00", "2026-11-26T02:13:53Z"},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			t.Parallel()
			got, err := normalizeTimestamp(tt.in)
			require.NoError(t, err)
			require.Equal(t, tt.want, got)
		})
	}
	for _, in := range []string{"", "infinity", "-infinity", "0044-03-15 12:00:00+00 BC", "0044-03-15 BC", "294276-12-31 23:59:59", "garbage"} {
		t.Run(in, func(t *testing.T) {
			t.Parallel()
			_, err := normalizeTimestamp(in)
			require.ErrorContains(t, err, fmt.Sprintf("%q cannot be written in RFC 3339", in))
		})
	}
}

func TestValidHeaderName(t *testing.T) {
	t.Parallel()
	for _, name := range []string{"a", "X-Trace-Id", "tenant_id", "a.b", "!#$%&'*+-.^_`|~09AZaz"} {
		require.True(t, validHeaderName(name), name)
	}
	for _, name := range []string{"", " ", "a b", "a:b", "a\tb", "a\x00", "a\x7f", "é", `a"b`, "a(b)", "a,b", "a/b", "a;b", "a<b>", "a=b", "a?b", "a@b", "a[b]", `a\b`, "a{b}"} {
		require.False(t, validHeaderName(name), "%q", name)
	}
}

// TestDeadLetterKeepsAllUsableRowHeaders: a dead-letter message keeps every
// usable entry of a malformed headers column, whatever the map order.
func TestDeadLetterKeepsAllUsableRowHeaders(t *testing.T) {
	t.Parallel()
	mp := mappingMapper(t)
	for range 50 {
		ev := mappingEvent()
		ev.Headers = []byte(`{"a": "1", "b": "x\ny", "c": "3", "d": "4"}`)
		m := mp.DeadLetter(&ev, "dlq", &PoisonError{Reason: "bad_row", Detail: "line break"}, 0)
		require.Equal(t, "1", m.Header.Get("a"))
		require.Equal(t, "3", m.Header.Get("c"))
		require.Equal(t, "4", m.Header.Get("d"))
		_, ok := m.Header["b"]
		require.False(t, ok)
	}
}

func TestFormatLSNMatchesPostgres(t *testing.T) {
	t.Parallel()
	for _, lsn := range []pglogrepl.LSN{0, 1, 0x16B374D848, 0xFFFFFFFFFFFFFFFF, 0x100000000, 0xABCDEF} {
		require.Equal(t, lsn.String(), formatLSN(lsn))
	}
}
