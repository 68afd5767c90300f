// Package tracing exports one OpenTelemetry span per published event over
// OTLP/HTTP, linked to the span of the producer that wrote the event (its
// W3C trace context, carried in the row's headers). It is optional (off
// unless an endpoint is set) and sits beside the pump, never in its way: the
// pump tells it what it stored (Spans.Stored), and a bounded queue drops
// spans rather than slow the relay.
package tracing

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/textproto"
	"net/url"
	"sync"
	"time"

	"github.com/jackc/pglogrepl"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"
	"go.uber.org/zap"

	"github.com/outbox-relay/outbox-relay/internal/cdc"
	"github.com/outbox-relay/outbox-relay/internal/metrics"
)

// Config configures span export.
type Config struct {
	// Endpoint is the OTLP/HTTP traces URL, e.g.
	// http://otel-collector:4318/v1/traces; empty turns export off.
	Endpoint string
	// Stream names the stream events are stored in, for the spans' names
	// and attributes.
	Stream string
	// Version is the relay's version, for the spans' resource.
	Version string
	// Timeout bounds each export request.
	Timeout time.Duration
	// QueueSize bounds the spans waiting to be exported; more are dropped
	// and counted.
	QueueSize int
	// BatchTimeout is the longest a span waits before it is exported.
	BatchTimeout time.Duration
}

// Enabled reports whether spans are exported at all.
func (c Config) Enabled() bool { return c.Endpoint != "" }

// Validate reports every problem of c at once, each naming the setting.
func (c Config) Validate() error {
	if !c.Enabled() {
		return nil
	}
	u, err := url.Parse(c.Endpoint)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return fmt.Errorf("otlp-traces-endpoint: %q is not an http:// or https:// URL", c.Endpoint)
	}
	return nil
}

// Spans exports a span for each stored event that carries a sampled trace
// context. Build it with New; Stored is called by the pump, Shutdown once
// the pump has stopped.
type Spans struct {
	cfg      Config
	provider *sdktrace.TracerProvider
	tracer   trace.Tracer
	m        *metrics.Metrics
	queue    chan stored
	done     chan struct{}

	closeQueue sync.Once
}

// stored is an event the pump found stored, with what its span needs.
type stored struct {
	link                                      trace.SpanContext
	id, aggregateType, aggregateID, eventType string
	commitLSN                                 pglogrepl.LSN
	seq                                       uint64
	committed, at                             time.Time
}

// New starts span export to cfg.Endpoint. Export failures are logged (at
// most one line a minute) and counted, never returned.
func New(cfg Config, log *zap.Logger, m *metrics.Metrics) (*Spans, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = 10 * time.Second
	}
	if cfg.QueueSize <= 0 {
		cfg.QueueSize = 4096
	}
	if cfg.BatchTimeout <= 0 {
		cfg.BatchTimeout = time.Second
	}
	exp, err := otlptracehttp.New(context.Background(),
		otlptracehttp.WithEndpointURL(cfg.Endpoint), otlptracehttp.WithTimeout(cfg.Timeout))
	if err != nil {
		return nil, fmt.Errorf("otlp-traces-endpoint: %w", err)
	}
	res := resource.NewSchemaless(
		attribute.String("service.name", "outbox-relay"),
		attribute.String("service.version", cfg.Version),
	)
	provider := sdktrace.NewTracerProvider(
		sdktrace.WithResource(res),
		sdktrace.WithSampler(LinkedSampler{}),
		// Blocking only the export goroutine: the queue in front of it
		// is what drops, and counts, when the collector cannot keep up.
		sdktrace.WithBatcher(&counting{SpanExporter: exp, log: log, m: m},
			sdktrace.WithBatchTimeout(cfg.BatchTimeout), sdktrace.WithBlocking()),
	)
	s := &Spans{
		cfg: cfg, provider: provider, m: m,
		tracer: provider.Tracer("github.com/outbox-relay/outbox-relay/internal/tracing"),
		queue:  make(chan stored, cfg.QueueSize),
		done:   make(chan struct{}),
	}
	go s.run()
	return s, nil
}

// Stored records that ev is stored on the stream at seq (0: unknown). It is
// called by the pump, from its goroutine, and never blocks: without a
// sampled trace context in the row's headers it does nothing, and when the
// queue is full the span is dropped and counted.
func (s *Spans) Stored(ev cdc.Event, seq uint64) {
	link, ok := Producer(ev.Headers)
	if !ok || !link.IsSampled() {
		return // the producer's decision: no span
	}
	item := stored{
		link: link, id: ev.ID, aggregateType: ev.AggregateType, aggregateID: ev.AggregateID, eventType: ev.EventType,
		commitLSN: ev.Position.CommitLSN, seq: seq, committed: ev.CommitTime, at: time.Now(),
	}
	select {
	case s.queue <- item:
	default:
		s.m.TraceSpans.WithLabelValues("dropped").Inc()
	}
}

// run makes the queued spans, until Shutdown closes the queue.
func (s *Spans) run() {
	defer close(s.done)
	for item := range s.queue {
		attrs := []attribute.KeyValue{
			attribute.String("messaging.system", "nats"),
			attribute.String("messaging.operation.type", "send"),
			attribute.String("messaging.destination.name", s.cfg.Stream),
			attribute.String("messaging.message.id", item.id),
			attribute.String("outbox.aggregate_type", item.aggregateType),
			attribute.String("outbox.aggregate_id", item.aggregateID),
			attribute.String("outbox.event_type", item.eventType),
			attribute.String("outbox_relay.commit_lsn", item.commitLSN.String()),
			attribute.Float64("outbox_relay.commit_to_stored_seconds", item.at.Sub(item.committed).Seconds()),
		}
		if item.seq > 0 {
			attrs = append(attrs, attribute.Int64("outbox_relay.stream_sequence", int64(item.seq)))
		}
		start := item.committed
		if start.IsZero() || start.After(item.at) {
			start = item.at // clocks of database and relay host differ
		}
		// A root span linked to the producer's, not its child: the relay
		// is another process, at another time, and may publish long after
		// the producer's trace ended.
		_, span := s.tracer.Start(context.Background(), "publish "+s.cfg.Stream,
			trace.WithNewRoot(), trace.WithSpanKind(trace.SpanKindProducer), trace.WithTimestamp(start),
			trace.WithLinks(trace.Link{SpanContext: item.link}), trace.WithAttributes(attrs...))
		span.End(trace.WithTimestamp(item.at))
	}
}

// Shutdown exports what is queued, within ctx, and stops. Call it after
// the pump has stopped calling Stored; when ctx ends first, a later call
// waits again.
func (s *Spans) Shutdown(ctx context.Context) error {
	s.closeQueue.Do(func() { close(s.queue) })
	select {
	case <-s.done:
	case <-ctx.Done():
		return ctx.Err()
	}
	return s.provider.Shutdown(ctx)
}

// Producer returns the span context of the producer that wrote a row, from
// the traceparent and tracestate entries of its headers column, and whether
// there is a valid one. Names are matched as written, lower-case, as the
// W3C propagators write them and as a consumer reading the message's
// headers (case-sensitive in NATS) finds them.
func Producer(headers []byte) (trace.SpanContext, bool) {
	// Cheap first: it runs for every stored event that has headers.
	if !bytes.Contains(headers, []byte(`"traceparent"`)) {
		return trace.SpanContext{}, false
	}
	var h map[string]json.RawMessage
	if json.Unmarshal(headers, &h) != nil {
		return trace.SpanContext{}, false
	}
	carrier := propagation.MapCarrier{}
	for _, k := range []string{"traceparent", "tracestate"} {
		var v string
		if raw, ok := h[k]; ok && json.Unmarshal(raw, &v) == nil {
			carrier[k] = textproto.TrimString(v) // as the message carries it
		}
	}
	sc := trace.SpanContextFromContext(propagation.TraceContext{}.Extract(context.Background(), carrier))
	return sc, sc.IsValid()
}

// LinkedSampler samples a span the way the producer sampled the span it is
// linked to: the relay's spans have no parent (they are linked, not
// children), so the parent-based samplers would decide alone.
type LinkedSampler struct{}

// ShouldSample records and samples a span whose first link is sampled.
func (LinkedSampler) ShouldSample(p sdktrace.SamplingParameters) sdktrace.SamplingResult {
	if len(p.Links) > 0 && p.Links[0].SpanContext.IsSampled() {
		return sdktrace.SamplingResult{Decision: sdktrace.RecordAndSample}
	}
	return sdktrace.SamplingResult{Decision: sdktrace.Drop}
}

// Description names the sampler.
func (LinkedSampler) Description() string { return "LinkedSampler" }

// counting counts the spans exported or not, and logs failures.
type counting struct {
	sdktrace.SpanExporter
	log     *zap.Logger
	m       *metrics.Metrics
	lastLog time.Time // used by the batcher's one goroutine only
}

// ExportSpans exports spans and counts the outcome. A failure is reported
// here, not to OpenTelemetry's global error handler.
func (c *counting) ExportSpans(ctx context.Context, spans []sdktrace.ReadOnlySpan) error {
	err := c.SpanExporter.ExportSpans(ctx, spans)
	if err != nil {
		c.m.TraceSpans.WithLabelValues("failed").Add(float64(len(spans)))
		if time.Since(c.lastLog) > time.Minute {
			c.lastLog = time.Now()
			c.log.Warn("span export failed, spans dropped", zap.Error(err))
		}
		return nil
	}
	c.m.TraceSpans.WithLabelValues("exported").Add(float64(len(spans)))
	return nil
}
