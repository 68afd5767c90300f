package relay

import (
	"strings"
	"testing"

	"github.com/nats-io/nats.go"
	"github.com/stretchr/testify/require"
)

func ceMapper(t testing.TB, typeTemplate string) *Mapper {
	t.Helper()
	ce, err := NewCloudEvents("/outbox-relay/app/public.events", typeTemplate)
	require.NoError(t, err)
	mp := mappingMapper(t)
	mp.SetCloudEvents(ce)
	return mp
}

// TestCloudEventsMessage: binary content mode as the NATS protocol binding
// has it, the relay's own headers kept.
func TestCloudEventsMessage(t *testing.T) {
	t.Parallel()
	mp := ceMapper(t, "com.example.{aggregate_type}.{event_type}")
	ev := mappingEvent()
	msg, err := mp.Message(&ev)
	require.NoError(t, err)
	require.Equal(t, nats.Header{
		"ce-specversion":     {"1.0"},
		"ce-id":              {"0b7a8f4e-5a42-4c38-9f0e-7d0f6f1d2c11"},
		"ce-source":          {"/outbox-relay/app/public.events"},
		"ce-type":            {"com.example.order.created"},
		"ce-time":            {"2026-11-26T04:13:53.123456Z"},
		"ce-subject":         {"o-17"},
		"ce-datacontenttype": {"application/json"},
		"content-type":       {"application/json"},
		HeaderAggregateType:  {"order"},
		HeaderAggregateID:    {"o-17"},
		HeaderEventType:      {"created"},
		HeaderCreatedAt:      {"2026-11-26T04:13:53.123456Z"},
		HeaderCommitLSN:      {"16/B374D848"},
		HeaderCommitIndex:    {"3"},
		HeaderOrigin:         {mappingOrigin},
	}, msg.Header)
	require.Equal(t, `{"total": 42}`, string(msg.Data), "the data is the body")
	require.Equal(t, "outbox.order.created", msg.Subject)

	// Without created_at there is no ce-time; without an aggregate id no
	// ce-subject (both optional attributes).
	ev.CreatedAt, ev.AggregateID = "", ""
	msg, err = mp.Message(&ev)
	require.NoError(t, err)
	require.NotContains(t, msg.Header, "ce-time")
	require.NotContains(t, msg.Header, "ce-subject")
	require.Equal(t, "com.example.order.created", msg.Header.Get("ce-type"))
}

// TestCloudEventsExtensions: which row headers become extensions, which stay
// plain, which make the row poison.
func TestCloudEventsExtensions(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		headers string
		want    nats.Header // the row's part of the message
		poison  string
	}{
		{
			name:    "trace context: extensions, and under their own names",
			headers: `{"traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", "tracestate": "vendor=opaque", "baggage": "tenant=acme, user=a b"}`,
			want: nats.Header{
				"ce-traceparent": {"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"}, "traceparent": {"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"},
				"ce-tracestate": {"vendor=opaque"}, "tracestate": {"vendor=opaque"},
				"ce-baggage": {"tenant=acme,%20user=a%20b"}, "baggage": {"tenant=acme, user=a b"},
			},
		},
		{
			name:    "valid attribute names become extensions only",
			headers: `{"tenant": "acme", "priority": 5, "dataschema": "https://example.com/order.json", "x1": "Euro € 😀"}`,
			want: nats.Header{
				"ce-tenant": {"acme"}, "ce-priority": {"5"}, "ce-dataschema": {"https://example.com/order.json"},
				"ce-x1": {"Euro%20%E2%82%AC%20%F0%9F%98%80"},
			},
		},
		{
			name:    "other names stay plain headers",
			headers: `{"X-Request-Id": "r1", "tenant_id": "acme", "Tenant": "acme"}`,
			want:    nats.Header{"X-Request-Id": {"r1"}, "tenant_id": {"acme"}, "Tenant": {"acme"}},
		},
		{
			name:    "attributes the relay sets stay plain headers",
			headers: `{"id": "mine", "type": "mine", "source": "mine", "data": "x"}`,
			want:    nats.Header{"id": {"mine"}, "type": {"mine"}, "source": {"mine"}, "data": {"x"}},
		},
		{name: "a ce- header is poison", headers: `{"ce-id": "other"}`, poison: `"ce-id" is reserved for the CloudEvents attributes`},
		{name: "in any case", headers: `{"CE-Type": "other", "tenant": "acme"}`, poison: `"CE-Type" is reserved`},
		{name: "content-type is poison", headers: `{"Content-Type": "text/plain"}`, poison: `"Content-Type" is reserved`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			mp := ceMapper(t, "{aggregate_type}.{event_type}")
			ev := mappingEvent()
			ev.Headers = []byte(tt.headers)
			msg, err := mp.Message(&ev)
			if tt.poison != "" {
				p := requirePoison(t, err, "bad_row")
				require.Contains(t, p.Detail, tt.poison)
				return
			}
			require.NoError(t, err)
			got := nats.Header{}
			for k, v := range msg.Header {
				switch {
				case strings.HasPrefix(k, "Outbox-"): // the relay's own
				case k == "ce-specversion" || k == "ce-id" || k == "ce-source" || k == "ce-type" || k == "ce-time" || k == "ce-subject" ||
					k == "ce-datacontenttype" || k == "content-type": // the event's attributes
				default:
					got[k] = v
				}
			}
			require.Equal(t, tt.want, got)
		})
	}
}

// TestCloudEventsTypeTemplate: literal text around placeholders, no subject
// token rules; an empty type makes the row poison.
func TestCloudEventsTypeTemplate(t *testing.T) {
	t.Parallel()
	tests := []struct {
		template, want string
	}{
		{"{aggregate_type}.{event_type}", "order.created"},
		{"com.example.orders.v1", "com.example.orders.v1"},
		{"io.acme/{aggregate_type}:{event_type}#{id}", "io.acme/order:created#0b7a8f4e-5a42-4c38-9f0e-7d0f6f1d2c11"},
		{"{event_type}", "order%20placed%20%C3%BC"},
	}
	for _, tt := range tests {
		mp := ceMapper(t, tt.template)
		ev := mappingEvent()
		if tt.template == "{event_type}" {
			ev.EventType = "order placed ü" // no subject token: the subject template must not use it
			mp.template = mustTemplate(t, "outbox.{aggregate_type}")
		}
		msg, err := mp.Message(&ev)
		require.NoError(t, err, tt.template)
		require.Equal(t, tt.want, msg.Header.Get("ce-type"), tt.template)
	}
	mp := ceMapper(t, "{aggregate_id}")
	mp.template = mustTemplate(t, "outbox.{aggregate_type}")
	ev := mappingEvent()
	ev.AggregateID = ""
	_, err := mp.Message(&ev)
	require.Contains(t, requirePoison(t, err, "bad_row").Detail, "CloudEvents type")

	for _, bad := range []struct{ source, template, want string }{
		{"", "{event_type}", "cloudevents-source: must not be empty"},
		{"/x", "", "cloudevents-type: must not be empty"},
		{"/x", "{kind}", "unknown placeholder {kind}"},
		{"/x", "a.{event_type", "unclosed {"},
		{"/x", "a}b", "} without its {"},
		{"%zz", "{event_type}", "not a URI reference"},
	} {
		_, err := NewCloudEvents(bad.source, bad.template)
		require.ErrorContains(t, err, bad.want, "%q %q", bad.source, bad.template)
	}
}

// TestCEEncode: the binding's percent-encoding, its own example included.
func TestCEEncode(t *testing.T) {
	t.Parallel()
	for in, want := range map[string]string{
		"":                          "",
		"order-17":                  "order-17",
		"Euro € 😀":                  "Euro%20%E2%82%AC%20%F0%9F%98%80",
		`say "hi"`:                  "say%20%22hi%22",
		"50%":                       "50%25",
		"tab\tcr\r":                 "tab%09cr%0D",
		"\x7f\u0085":                "%7F%C2%85",
		"https://x.example/a?b=c&d": "https://x.example/a?b=c&d",
	} {
		require.Equal(t, want, ceEncode(in), "%q", in)
	}
	s := "already-plain"
	require.Equal(t, s, ceEncode(s))
}
