package main

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"slices"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"
	"go.opentelemetry.io/otel/baggage"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"
	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"

	"github.com/outbox-relay/outbox-relay/internal/e2e"
	"github.com/outbox-relay/outbox-relay/outbox"
)

// natsCarrier reads a message's headers for an OpenTelemetry propagator, as
// a consumer does. NATS header names are case-sensitive: the W3C names are
// lower-case.
type natsCarrier nats.Header

func (c natsCarrier) Get(key string) string { return nats.Header(c).Get(key) }
func (c natsCarrier) Set(key, value string) { nats.Header(c).Set(key, value) }
func (c natsCarrier) Keys() []string {
	keys := make([]string, 0, len(c))
	for k := range c {
		keys = append(keys, k)
	}
	return keys
}

// TestTraceContextEndToEnd follows the trace context from a service's
// request context through the outbox package, PostgreSQL, the relay and
// JetStream to a consumer, and the spans the relay exports over OTLP:
//
//   - traceparent, tracestate and baggage reach the message under their
//     own names, unchanged, and a consumer's propagator extracts the
//     producer's span context and baggage from them;
//   - a row whose trace context is invalid or not sampled, or that has
//     none, is published all the same, its headers as written; the
//     consumer's propagator finds no valid parent in garbage;
//   - with --otlp-traces-endpoint, the relay exports one span per event
//     whose producer sampled its span (and none for the others): a root
//     span of its own, linked to the producer's span, with the stream
//     sequence and the commit-to-stored time as attributes.
func TestTraceContextEndToEnd(t *testing.T) {
	f := newFixture(t)
	receiver := e2e.StartOTLPReceiver(t)
	relay := f.startRelay(t, "RELAY_OTLP_TRACES_ENDPOINT", receiver.URL())
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	conn := f.pg.Connect(t, f.db)
	w, err := outbox.New()
	require.NoError(t, err)
	event := func(i int) outbox.Event {
		return outbox.Event{AggregateType: "order", AggregateID: tagf("o-%d", i), EventType: "created", Payload: json.RawMessage(`{}`)}
	}

	sampled, producer := e2e.TracedContext()
	unsampled := trace.ContextWithSpanContext(sampled, producer.WithTraceFlags(0))

	// What each event's message must carry, in commit order.
	type want struct {
		id      string
		headers map[string]string
		span    bool // the relay exports a span linked to the producer's
	}
	var wants []want
	write := func(ctx context.Context, n int, headers map[string]string, span bool) {
		t.Helper()
		events := make([]outbox.Event, n)
		for i := range events {
			events[i] = event(len(wants) + i)
		}
		ids, err := w.Write(ctx, outbox.Pgx(conn), events...)
		require.NoError(t, err)
		for _, id := range ids {
			wants = append(wants, want{id: id, headers: headers, span: span})
		}
	}
	traced := map[string]string{"traceparent": e2e.Traceparent, "tracestate": e2e.Tracestate, "baggage": e2e.Baggage}
	write(sampled, 3, traced, true)
	write(unsampled, 1, map[string]string{"traceparent": e2e.Traceparent[:len(e2e.Traceparent)-2] + "00", "tracestate": e2e.Tracestate, "baggage": e2e.Baggage}, false)
	write(context.Background(), 1, nil, false)
	// Rows written by other means: invalid trace context is carried as it
	// is (the relay does not judge it), and so is a name in another case.
	for _, headers := range []map[string]string{
		{"traceparent": "garbage", "tracestate": "x=1", "baggage": "not a baggage"},
		{"traceparent": "00-00000000000000000000000000000000-00f067aa0ba902b7-01"}, // all-zero trace id: invalid
		{"Traceparent": e2e.Traceparent},
	} {
		raw, err := json.Marshal(headers)
		require.NoError(t, err)
		var id string
		require.NoError(t, conn.QueryRow(ctx, `INSERT INTO events (aggregate_type, aggregate_id, event_type, payload, headers)
			VALUES ('order', 'raw', 'created', '{}', $1::jsonb) RETURNING id::text`, string(raw)).Scan(&id))
		wants = append(wants, want{id: id, headers: headers})
	}
	// The last one sampled: once its span arrived, every earlier span
	// has (one queue, one batcher, in order).
	write(sampled, 1, traced, true)

	f.waitStream(t, len(wants), time.Minute)
	msgs := e2e.ReadStream(t, f.nc, "OUTBOX")
	require.Len(t, msgs, len(wants))
	props := propagation.NewCompositeTextMapPropagator(propagation.TraceContext{}, propagation.Baggage{})
	seqOf := map[string]uint64{}
	for i, m := range msgs {
		wt := wants[i]
		require.Equal(t, wt.id, m.Header.Get(jetstream.MsgIDHeader))
		seqOf[wt.id] = m.Seq
		for _, k := range []string{"traceparent", "tracestate", "baggage", "Traceparent"} {
			require.Equal(t, wt.headers[k], m.Header.Get(k), "%s of event %d", k, i)
		}
		extracted := props.Extract(context.Background(), natsCarrier(m.Header))
		sc := trace.SpanContextFromContext(extracted)
		switch wt.headers["traceparent"] {
		case e2e.Traceparent:
			require.True(t, sc.Equal(producer.WithRemote(true)), "the consumer continues the producer's trace: %v", sc)
			require.Equal(t, "acme", baggage.FromContext(extracted).Member("tenant").Value())
		case traced["traceparent"][:len(e2e.Traceparent)-2] + "00":
			require.True(t, sc.IsValid())
			require.False(t, sc.IsSampled(), "the producer's decision travels")
		default:
			require.False(t, sc.IsValid(), "no valid parent in %q", m.Header)
		}
	}

	last := wants[len(wants)-1].id
	require.Eventually(t, func() bool {
		return slices.ContainsFunc(receiver.Spans(), func(s *tracepb.Span) bool { return spanAttr(s, "messaging.message.id") == last })
	}, 30*time.Second, 50*time.Millisecond, "the last event's span reaches the receiver")
	require.Empty(t, receiver.Errors())
	spans := receiver.Spans()
	var linked []string
	for _, s := range spans {
		id := spanAttr(s, "messaging.message.id")
		linked = append(linked, id)
		require.Equal(t, "publish OUTBOX", s.GetName())
		require.Equal(t, tracepb.Span_SPAN_KIND_PRODUCER, s.GetKind())
		require.Empty(t, s.GetParentSpanId(), "a root span: linked, not a child")
		require.NotEqual(t, producer.TraceID().String(), hex.EncodeToString(s.GetTraceId()), "a trace of its own")
		require.Len(t, s.GetLinks(), 1)
		link := s.GetLinks()[0]
		require.Equal(t, producer.TraceID().String(), hex.EncodeToString(link.GetTraceId()))
		require.Equal(t, producer.SpanID().String(), hex.EncodeToString(link.GetSpanId()))
		require.Equal(t, uint32(1), link.GetFlags()&0xff, "W3C flags of the producer's span: sampled")
		require.Equal(t, int64(seqOf[id]), spanIntAttr(s, "outbox_relay.stream_sequence"), "the stream sequence of event %s", id)
		commitToStored := spanDoubleAttr(s, "outbox_relay.commit_to_stored_seconds")
		require.GreaterOrEqual(t, commitToStored, 0.0)
		require.Less(t, commitToStored, 60.0)
		require.LessOrEqual(t, s.GetStartTimeUnixNano(), s.GetEndTimeUnixNano())
		require.Equal(t, "order", spanAttr(s, "outbox.aggregate_type"))
	}
	var wantSpans []string
	for _, wt := range wants {
		if wt.span {
			wantSpans = append(wantSpans, wt.id)
		}
	}
	require.Equal(t, wantSpans, linked, "one span per event whose producer sampled its span, in commit order, and no other")

	metrics := relay.Metrics()
	require.Equal(t, float64(len(wantSpans)), metrics[`outbox_relay_trace_spans_total{outcome="exported"}`])
	require.Zero(t, metrics[`outbox_relay_trace_spans_total{outcome="failed"}`])
	require.Zero(t, metrics[`outbox_relay_trace_spans_total{outcome="dropped"}`])
	code, err := relay.Stop(30 * time.Second)
	require.NoError(t, err)
	require.Equal(t, 0, code)
}

func spanAttr(s *tracepb.Span, key string) string {
	for _, kv := range s.GetAttributes() {
		if kv.GetKey() == key {
			return kv.GetValue().GetStringValue()
		}
	}
	return ""
}

func spanIntAttr(s *tracepb.Span, key string) int64 {
	for _, kv := range s.GetAttributes() {
		if kv.GetKey() == key {
			return kv.GetValue().GetIntValue()
		}
	}
	return -1
}

func spanDoubleAttr(s *tracepb.Span, key string) float64 {
	for _, kv := range s.GetAttributes() {
		if kv.GetKey() == key {
			return kv.GetValue().GetDoubleValue()
		}
	}
	return -1
}
