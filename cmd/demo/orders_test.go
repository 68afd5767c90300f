package main

import (
	"bytes"
	"context"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// TestOrdersDemo runs `make demo-orders` bounded, as a user would with
// DEMO_ARGS="--duration 4s": throwaway PostgreSQL and NATS, the relay binary
// (with its OTLP span export), the orders service of examples/orders taking
// traced requests, and its idempotent consumer, which leaves some messages
// unacknowledged after committing, as a crash would. The demo fails unless
// every request's event was processed exactly once, in order, with the
// request's trace context, the redeliveries were skipped as duplicates, and
// the relay exported a span linked to each request's trace.
func TestOrdersDemo(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	var out bytes.Buffer
	err := run(ctx, []string{"--example", "orders", "--duration", "4s"}, &out, &out)
	require.NoError(t, err, "demo output:\n%s", out.String())
	text := out.String()
	require.Contains(t, text, "each event processed once with its request's trace context")
	require.Contains(t, text, "each linked to its request's trace")
	require.Regexp(t, `demo: (\d+) events committed, (\d+) received, in order\n$`, text)
	require.Contains(t, text, "client   | request 1: POST /orders -> 201")
	require.True(t, strings.Contains(text, "trace ") && strings.Contains(text, "arrived"), text)
}
