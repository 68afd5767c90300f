package relay

import (
	"bytes"
	"encoding/json"
	"errors"
	"net/textproto"
	"strings"
	"testing"
	"unicode"
	"unicode/utf8"

	"github.com/outbox-relay/outbox-relay/internal/cdc"
	"github.com/outbox-relay/outbox-relay/internal/sink"
)

// fuzzTemplates are the templates FuzzSubject builds subjects with.
var fuzzTemplates = []string{
	"outbox.{aggregate_type}.{event_type}",
	"outbox.{aggregate_type}.{aggregate_id}.{event_type}",
	"orders-{event_type}",
	"x.{aggregate_type}-{aggregate_id}.y",
	"{aggregate_type}{event_type}{aggregate_id}",
}

// FuzzSubject: for any field values a subject is either refused or valid,
// with exactly the template's tokens, and captured by the template's own
// stream subjects.
func FuzzSubject(f *testing.F) {
	seeds := [][3]string{
		{"order", "created", "o-17"},
		{"", "created", "o-17"},
		{"a.b", "c", "d"},
		{"*", ">", "x"},
		{"a b", "c\td", "e\nf"},
		{"ü", "é", "\x7f"},
		{"\x00", "x", "y"},
		{"{event_type}", "}", "{"},
		{"a..b", ".", ".."},
		{"\xff\xfe", "\u00a0", "\u2028"},
		{"paid\u200b", "\u3000", "\ufeffx"},
		{"счёт", "создан", "🧾"},
	}
	for _, s := range seeds {
		f.Add(s[0], s[1], s[2])
	}
	var templates []Template
	for _, src := range fuzzTemplates {
		tmpl, err := ParseTemplate(src)
		if err != nil {
			f.Fatal(err)
		}
		templates = append(templates, tmpl)
	}
	f.Fuzz(func(t *testing.T, aggregateType, eventType, aggregateID string) {
		ev := cdc.Event{ID: "id-1", AggregateType: aggregateType, EventType: eventType, AggregateID: aggregateID}
		for _, tmpl := range templates {
			s, err := tmpl.Subject(&ev)
			if err != nil {
				if s != "" {
					t.Fatalf("%s: error %v with subject %q", tmpl, err, s)
				}
				continue
			}
			if !sink.ValidSubject(s, false) {
				t.Fatalf("%s: invalid subject %q", tmpl, s)
			}
			// Checked rune by rune, apart from ValidToken's own code: no
			// character that hides, splits or is trimmed.
			if !utf8.ValidString(s) {
				t.Fatalf("%s: subject %q is not valid UTF-8", tmpl, s)
			}
			for _, r := range s {
				if unicode.IsSpace(r) || unicode.IsControl(r) || unicode.Is(unicode.Cf, r) || r == '*' || r == '>' {
					t.Fatalf("%s: subject %q contains %U", tmpl, s, r)
				}
			}
			if got, want := strings.Count(s, ".")+1, len(tmpl.tokens); got != want {
				t.Fatalf("%s: subject %q has %d tokens, want %d", tmpl, s, got, want)
			}
			if !sink.Captures(tmpl.StreamSubjects(), s) {
				t.Fatalf("%s: subject %q not captured by %v", tmpl, s, tmpl.StreamSubjects())
			}
			if !strings.Contains(tmpl.String(), "{aggregate_type}") {
				continue
			}
			if !strings.Contains(s, aggregateType) {
				t.Fatalf("%s: subject %q lacks aggregate_type %q", tmpl, s, aggregateType)
			}
		}
	})
}

// FuzzTemplate: any template either fails to parse or has a wildcard that is
// a valid subject pattern with the same number of tokens.
func FuzzTemplate(f *testing.F) {
	for _, s := range append([]string{"", ".", "a.b", "{id}", "{", "}", "{}", "a.{", "a.*", "a.>", "{id}}", "{{id}}", "a b"}, fuzzTemplates...) {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, src string) {
		tmpl, err := ParseTemplate(src)
		if err != nil {
			return
		}
		w := tmpl.Wildcard()
		if !sink.ValidSubject(w, true) {
			t.Fatalf("template %q: invalid wildcard %q", src, w)
		}
		if got, want := strings.Count(w, "."), strings.Count(src, "."); got != want {
			t.Fatalf("template %q: wildcard %q has %d dots, template %d", src, w, got, want)
		}
		ev := cdc.Event{ID: "i", AggregateType: "t", AggregateID: "a", EventType: "e"}
		s, err := tmpl.Subject(&ev)
		if err != nil {
			t.Fatalf("template %q: valid values refused: %v", src, err)
		}
		if !sink.ValidSubject(s, false) || !sink.Captures(tmpl.StreamSubjects(), s) {
			t.Fatalf("template %q: subject %q invalid or not captured by %q", src, s, w)
		}
	})
}

// FuzzRowHeaders: any headers column either makes the row poison or yields
// headers that can travel: valid names, none reserved, no line breaks, each
// the string the JSON object gave, or the compact JSON text of any other
// value but null, which is left out.
func FuzzRowHeaders(f *testing.F) {
	for _, s := range []string{
		`{"trace": "abc"}`,
		`{"a": "1", "b": 2, "c": null, "d": [], "e": {}}`,
		`{"Nats-Msg-Id": "x"}`,
		`{"outbox-origin": "x"}`,
		`{"a": "x\r\ny"}`,
		`{"a b": "x"}`,
		`{"a\u000d": "x"}`,
		`{"k": "\u2028 \u0000"}`,
		`{"k": "v", "k": "w"}`,
		"  {\"k\" : \"v\"}  ",
		`{"k": "v"} trailing`,
		`[]`,
		`null`,
		`"s"`,
		``,
		"\xff{",
		`{"\xff": "x"}`,
		`{"k": "\xff"}`,
	} {
		f.Add([]byte(s))
	}
	tmpl, err := ParseTemplate("outbox.{aggregate_type}.{event_type}")
	if err != nil {
		f.Fatal(err)
	}
	mp := NewMapper(tmpl, "origin", tmpl.StreamSubjects())
	stamped := map[string]bool{
		HeaderAggregateType: true, HeaderAggregateID: true, HeaderEventType: true, HeaderCreatedAt: true,
		HeaderCommitLSN: true, HeaderCommitIndex: true, HeaderOrigin: true,
	}
	f.Fuzz(func(t *testing.T, raw []byte) {
		ev := cdc.Event{ID: "i", AggregateType: "t", AggregateID: "a", EventType: "e", Payload: []byte("{}"), Headers: raw}
		msg, err := mp.Message(&ev)

		// The dead-letter path uses the same column best-effort; it must
		// not panic or let anything invalid through either.
		dl := mp.DeadLetter(&ev, "dlq", &PoisonError{Reason: "bad_row", Detail: "x"}, 1024)
		checkFuzzHeaders(t, dl.Header, stamped, HeaderPoisonReason, HeaderOriginalSubject, HeaderPayloadOmitted, HeaderHeadersOmitted)

		if err != nil {
			var poison *PoisonError
			if !errors.As(err, &poison) {
				t.Fatalf("error %T, want *PoisonError: %v", err, err)
			}
			return
		}
		checkFuzzHeaders(t, msg.Header, stamped)

		// Every entry of the object is there: a string unchanged, null
		// left out, anything else as its compact JSON text.
		trimmed := bytes.TrimSpace(raw) // as the relay does
		if len(raw) == 0 || string(trimmed) == "null" {
			return
		}
		var obj map[string]json.RawMessage
		if err := json.Unmarshal(trimmed, &obj); err != nil {
			t.Fatalf("accepted headers %q that are not a JSON object: %v", raw, err)
		}
		for k, v := range obj {
			var want string
			var s string
			switch {
			case json.Unmarshal(v, &s) == nil && bytes.HasPrefix(v, []byte(`"`)):
				// NATS cannot carry white space around a header value;
				// the relay trims it as the wire would.
				want = textproto.TrimString(s)
			case string(v) == "null":
				if _, present := msg.Header[k]; present {
					t.Fatalf("null %q became a header", k)
				}
				continue
			default:
				var b bytes.Buffer
				if err := json.Compact(&b, v); err != nil {
					t.Fatalf("compact %q: %v", v, err)
				}
				want = b.String()
			}
			if got := msg.Header[k]; len(got) != 1 || got[0] != want {
				t.Fatalf("header %q = %q, want %q", k, got, want)
			}
		}
	})
}

func checkFuzzHeaders(t *testing.T, h map[string][]string, stamped map[string]bool, extra ...string) {
	t.Helper()
	relay := map[string]bool{}
	for k := range stamped {
		relay[k] = true
	}
	for _, k := range extra {
		relay[k] = true
	}
	for k, vs := range h {
		if !relay[k] {
			if !validHeaderName(k) {
				t.Fatalf("invalid header name %q", k)
			}
			lower := strings.ToLower(k)
			if strings.HasPrefix(lower, "nats-") || strings.HasPrefix(lower, "outbox-") {
				t.Fatalf("reserved header name %q from the row", k)
			}
		}
		if len(vs) != 1 {
			t.Fatalf("header %q has %d values", k, len(vs))
		}
		if strings.ContainsAny(vs[0], "\r\n") {
			t.Fatalf("header %q value %q has a line break", k, vs[0])
		}
	}
}
