package tracing_test

import (
	"context"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/stretchr/testify/require"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"
	"go.uber.org/zap/zaptest"

	"github.com/outbox-relay/outbox-relay/internal/cdc"
	"github.com/outbox-relay/outbox-relay/internal/e2e"
	"github.com/outbox-relay/outbox-relay/internal/metrics"
	"github.com/outbox-relay/outbox-relay/internal/tracing"
)

const sampledParent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"

// TestProducer pins down which trace context of a row the relay links its
// span to: the lower-case W3C entries, trimmed as the message carries them;
// anything invalid is no producer at all.
func TestProducer(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		headers string
		valid   bool
		sampled bool
		state   string
	}{
		{"no headers", ``, false, false, ""},
		{"JSON null", `null`, false, false, ""},
		{"no trace context", `{"x-request-id": "r1"}`, false, false, ""},
		{"sampled", `{"traceparent": "` + sampledParent + `"}`, true, true, ""},
		{"with trace state", `{"traceparent": "` + sampledParent + `", "tracestate": "vendor=opaque"}`, true, true, "vendor=opaque"},
		{"not sampled", `{"traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00"}`, true, false, ""},
		{"white space around it", `{"traceparent": "  ` + sampledParent + ` "}`, true, true, ""},
		{"garbage", `{"traceparent": "garbage"}`, false, false, ""},
		{"zero trace id", `{"traceparent": "00-00000000000000000000000000000000-00f067aa0ba902b7-01"}`, false, false, ""},
		{"not a string", `{"traceparent": 5}`, false, false, ""},
		{"another case", `{"Traceparent": "` + sampledParent + `"}`, false, false, ""},
		{"not JSON", `{"traceparent": "` + sampledParent, false, false, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			sc, ok := tracing.Producer([]byte(tt.headers))
			require.Equal(t, tt.valid, ok)
			require.Equal(t, tt.valid, sc.IsValid())
			require.Equal(t, tt.sampled, sc.IsSampled())
			require.Equal(t, tt.state, sc.TraceState().String())
			if tt.valid {
				require.Equal(t, "4bf92f3577b34da6a3ce929d0e0e4736", sc.TraceID().String())
			}
		})
	}
}

// TestLinkedSampler: a span is sampled as the span it is linked to was.
func TestLinkedSampler(t *testing.T) {
	t.Parallel()
	sampled, _ := tracing.Producer([]byte(`{"traceparent": "` + sampledParent + `"}`))
	tests := []struct {
		name  string
		links []trace.Link
		want  sdktrace.SamplingDecision
	}{
		{"no link", nil, sdktrace.Drop},
		{"sampled link", []trace.Link{{SpanContext: sampled}}, sdktrace.RecordAndSample},
		{"unsampled link", []trace.Link{{SpanContext: sampled.WithTraceFlags(0)}}, sdktrace.Drop},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			got := tracing.LinkedSampler{}.ShouldSample(sdktrace.SamplingParameters{Links: tt.links})
			require.Equal(t, tt.want, got.Decision)
		})
	}
}

func sampledEvent(id string) cdc.Event {
	return cdc.Event{ID: id, AggregateType: "order", EventType: "created", Headers: []byte(`{"traceparent": "` + sampledParent + `"}`), CommitTime: time.Now()}
}

// TestSpansFailureIsCountedNotFatal: a collector that refuses spans costs
// the spans, counted, and nothing else; one that accepts them gets them.
func TestSpansFailureIsCountedNotFatal(t *testing.T) {
	t.Parallel()
	refusing := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		http.Error(w, "no", http.StatusBadRequest) // not retried
	}))
	t.Cleanup(refusing.Close)
	receiver := e2e.StartOTLPReceiver(t)
	for _, tt := range []struct {
		name, url, outcome string
	}{
		{"refused", refusing.URL + "/v1/traces", "failed"},
		{"accepted", receiver.URL(), "exported"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			m := metrics.New("test", "test")
			spans, err := tracing.New(tracing.Config{Endpoint: tt.url, Stream: "OUTBOX", BatchTimeout: 50 * time.Millisecond}, zaptest.NewLogger(t), m)
			require.NoError(t, err)
			spans.Stored(sampledEvent("a"), 1)
			spans.Stored(cdc.Event{ID: "no trace"}, 2)
			spans.Stored(sampledEvent("b"), 3)
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			require.NoError(t, spans.Shutdown(ctx))
			require.Equal(t, 2.0, testutil.ToFloat64(m.TraceSpans.WithLabelValues(tt.outcome)))
			for _, other := range metrics.TraceSpanOutcomes {
				if other != tt.outcome {
					require.Zero(t, testutil.ToFloat64(m.TraceSpans.WithLabelValues(other)), other)
				}
			}
		})
	}
	require.Len(t, receiver.Spans(), 2)
}

// TestSpansDropWhenTheCollectorStalls: Stored never blocks the pump; with a
// collector that does not answer, spans beyond the queues are dropped and
// counted.
func TestSpansDropWhenTheCollectorStalls(t *testing.T) {
	t.Parallel()
	release := make(chan struct{})
	stalled := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-release:
		case <-r.Context().Done():
		}
		http.Error(w, "late", http.StatusBadRequest)
	}))
	t.Cleanup(stalled.Close)
	m := metrics.New("test", "test")
	spans, err := tracing.New(tracing.Config{Endpoint: stalled.URL + "/v1/traces", Stream: "OUTBOX", QueueSize: 10, BatchTimeout: 10 * time.Millisecond, Timeout: time.Minute},
		zaptest.NewLogger(t), m)
	require.NoError(t, err)
	t.Cleanup(func() {
		close(release)
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		require.NoError(t, spans.Shutdown(ctx), "once the collector answers, what is queued is done with")
	})
	start := time.Now()
	for i := range 20000 {
		spans.Stored(sampledEvent("e"), uint64(i+1))
	}
	require.Less(t, time.Since(start), 10*time.Second, "Stored does not wait for the collector")
	require.Greater(t, testutil.ToFloat64(m.TraceSpans.WithLabelValues("dropped")), 0.0)
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	require.ErrorIs(t, spans.Shutdown(ctx), context.DeadlineExceeded, "the collector still does not answer")
}

// TestConfigValidate: the endpoint must be an HTTP URL; empty is off.
func TestConfigValidate(t *testing.T) {
	t.Parallel()
	require.NoError(t, tracing.Config{}.Validate())
	require.False(t, tracing.Config{}.Enabled())
	require.NoError(t, tracing.Config{Endpoint: "https://collector:4318/v1/traces"}.Validate())
	for _, bad := range []string{"collector:4318", "grpc://collector:4317", "http://", "::"} {
		require.ErrorContains(t, tracing.Config{Endpoint: bad}.Validate(), "otlp-traces-endpoint", bad)
	}
}
