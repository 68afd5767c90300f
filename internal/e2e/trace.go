package e2e

import (
	"context"

	"go.opentelemetry.io/otel/baggage"
	"go.opentelemetry.io/otel/trace"
)

// Trace context that TracedContext puts in its context, as the W3C headers
// a propagator makes of it.
const (
	Traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
	Tracestate  = "vendor=opaque,other=1"
	Baggage     = "tenant=acme"
)

// TracedContext returns a context with a sampled span context, a trace state
// and baggage, built with the OpenTelemetry API alone, as a service's
// instrumentation leaves them in a request's context.
func TracedContext() (context.Context, trace.SpanContext) {
	traceID, _ := trace.TraceIDFromHex("4bf92f3577b34da6a3ce929d0e0e4736")
	spanID, _ := trace.SpanIDFromHex("00f067aa0ba902b7")
	state, _ := trace.ParseTraceState(Tracestate) // valid: a constant
	sc := trace.NewSpanContext(trace.SpanContextConfig{
		TraceID: traceID, SpanID: spanID, TraceFlags: trace.FlagsSampled, TraceState: state,
	})
	member, _ := baggage.NewMember("tenant", "acme") // valid: constants
	bag, _ := baggage.New(member)
	return baggage.ContextWithBaggage(trace.ContextWithSpanContext(context.Background(), sc), bag), sc
}
