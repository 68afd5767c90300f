package main

import (
	"encoding/json"
	"math"
	"testing"
	"time"
)

const exposition = `# HELP outbox_relay_pump_commit_to_ack_seconds Time from the transaction's commit in PostgreSQL to the event's PubAck.
# TYPE outbox_relay_pump_commit_to_ack_seconds histogram
outbox_relay_pump_commit_to_ack_seconds_bucket{le="0.001"} 10
outbox_relay_pump_commit_to_ack_seconds_bucket{le="0.005"} 90
outbox_relay_pump_commit_to_ack_seconds_bucket{le="0.01"} 100
outbox_relay_pump_commit_to_ack_seconds_bucket{le="+Inf"} 100
outbox_relay_pump_commit_to_ack_seconds_sum 0.3
outbox_relay_pump_commit_to_ack_seconds_count 100
outbox_relay_sink_publish_duration_seconds_bucket{le="0.001"} 7
`

func TestHistogramQuantile(t *testing.T) {
	h := parseHistogram(exposition, commitToAckMetric)
	if len(h) != 4 || h.count() != 100 {
		t.Fatalf("parsed %v", h)
	}
	for _, tc := range []struct{ q, want float64 }{
		{0.05, 0.0005},   // inside the first bucket, from 0
		{0.5, 0.003},     // 50th of 100: 40/80 of the way from 1 ms to 5 ms
		{0.95, 0.0075},   // halfway through the 5-10 ms bucket
		{1.0, 0.01},      // the last finite bound
		{0.999, 0.00995}, // almost there
	} {
		if got := h.quantile(tc.q); math.Abs(got-tc.want) > 1e-9 {
			t.Errorf("quantile(%v) = %v, want %v", tc.q, got, tc.want)
		}
	}
	before := histogram{0.001: 10, 0.005: 10, 0.01: 10, math.Inf(1): 10}
	d := h.sub(before)
	if d.count() != 90 || d.quantile(0.5) != 0.001+0.004*45/80 {
		t.Errorf("diff: count %v, median %v", d.count(), d.quantile(0.5))
	}
	over := histogram{0.001: 0, math.Inf(1): 5}
	if !math.IsInf(over.quantile(0.5), 1) {
		t.Errorf("a quantile past the last bound should be +Inf, got %v", over.quantile(0.5))
	}
	if !math.IsNaN(histogram{}.quantile(0.5)) {
		t.Error("an empty histogram has no quantile")
	}
}

func TestExactPercentiles(t *testing.T) {
	var s []float64
	for i := 1000; i >= 1; i-- {
		s = append(s, float64(i))
	}
	p := exactPercentiles(s)
	if p.P50 != 500 || p.P99 != 990 || p.P999 != 999 || p.Max != 1000 {
		t.Errorf("got %+v", p)
	}
	if s[0] != 1000 {
		t.Error("the samples must not be reordered")
	}
	empty := exactPercentiles(nil)
	data, err := json.Marshal(empty)
	if err != nil || string(data) != `{"p50_ms":null,"p99_ms":null,"p99_9_ms":null,"max_ms":null}` {
		t.Errorf("empty percentiles as JSON: %s, %v", data, err)
	}
	if millis(math.Inf(1)).String() != "> 300000" || millis(1.234).String() != "1.23" {
		t.Error("millis rendering")
	}
}

func TestParseFlags(t *testing.T) {
	o, err := parseFlags([]string{"-quick", "-rates", "1000,max"})
	if err != nil {
		t.Fatal(err)
	}
	if o.events != 20000 || o.largeEvents != 20000 || o.docPath != "" || o.liveFor != 3*time.Second {
		t.Errorf("quick defaults: %+v", o)
	}
	if len(o.rates) != 2 || o.rates[0] != 1000 || o.rates[1] != 0 {
		t.Errorf("rates %v", o.rates)
	}
	if o.command != "go run ./cmd/bench -quick -rates 1000,max" {
		t.Errorf("command %q", o.command)
	}
	o, err = parseFlags(nil)
	if err != nil || o.events != 200000 || o.docPath != "docs/benchmarks.md" || !o.large || o.command != "go run ./cmd/bench" {
		t.Errorf("defaults: %+v, %v", o, err)
	}
	if _, err := parseFlags([]string{"-sizes", "x"}); err == nil {
		t.Error("a bad size list should fail")
	}
}

func TestCount(t *testing.T) {
	for n, want := range map[int]string{0: "0", 999: "999", 1000: "1,000", 1000000: "1,000,000", 20000: "20,000"} {
		if got := count(n); got != want {
			t.Errorf("count(%d) = %q, want %q", n, got, want)
		}
	}
}
