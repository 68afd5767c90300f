package main

import (
	"bufio"
	"math"
	"slices"
	"strconv"
	"strings"
)

// millis is a duration in milliseconds. NaN (no data) and +Inf (beyond the
// histogram's last bound) are written to JSON as null.
type millis float64

func (m millis) MarshalJSON() ([]byte, error) {
	f := float64(m)
	if math.IsNaN(f) || math.IsInf(f, 0) {
		return []byte("null"), nil
	}
	return strconv.AppendFloat(nil, math.Round(f*1000)/1000, 'f', -1, 64), nil
}

// UnmarshalJSON reads what MarshalJSON wrote; null becomes NaN.
func (m *millis) UnmarshalJSON(data []byte) error {
	if string(data) == "null" {
		*m = millis(math.NaN())
		return nil
	}
	f, err := strconv.ParseFloat(string(data), 64)
	*m = millis(f)
	return err
}

// String renders m for tables.
func (m millis) String() string {
	f := float64(m)
	switch {
	case math.IsNaN(f):
		return "n/a"
	case math.IsInf(f, 1):
		return "> 300000"
	case f < 10:
		return strconv.FormatFloat(f, 'f', 2, 64)
	case f < 100:
		return strconv.FormatFloat(f, 'f', 1, 64)
	}
	return strconv.FormatFloat(f, 'f', 0, 64)
}

// percentiles of a latency distribution.
type percentiles struct {
	P50  millis `json:"p50_ms"`
	P99  millis `json:"p99_ms"`
	P999 millis `json:"p99_9_ms"`
	Max  millis `json:"max_ms,omitempty"`
}

// exactPercentiles takes nearest-rank percentiles of samples (milliseconds).
func exactPercentiles(samples []float64) percentiles {
	if len(samples) == 0 {
		nan := millis(math.NaN())
		return percentiles{P50: nan, P99: nan, P999: nan, Max: nan}
	}
	s := slices.Clone(samples)
	slices.Sort(s)
	rank := func(q float64) millis {
		i := int(math.Ceil(q*float64(len(s)))) - 1
		return millis(s[min(max(i, 0), len(s)-1)])
	}
	return percentiles{P50: rank(0.50), P99: rank(0.99), P999: rank(0.999), Max: millis(s[len(s)-1])}
}

// histogram is a Prometheus histogram's cumulative bucket counts by upper
// bound (+Inf included).
type histogram map[float64]float64

// parseHistogram reads the buckets of histogram name from a Prometheus text
// exposition.
func parseHistogram(body, name string) histogram {
	h := histogram{}
	prefix := name + `_bucket{le="`
	sc := bufio.NewScanner(strings.NewReader(body))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		rest, ok := strings.CutPrefix(line, prefix)
		if !ok {
			continue
		}
		le, rest, ok := strings.Cut(rest, `"}`)
		if !ok {
			continue
		}
		bound, err := strconv.ParseFloat(le, 64) // accepts "+Inf"
		if err != nil {
			continue
		}
		count, err := strconv.ParseFloat(strings.TrimSpace(rest), 64)
		if err != nil {
			continue
		}
		h[bound] = count
	}
	return h
}

// sub returns the observations made between before and h.
func (h histogram) sub(before histogram) histogram {
	d := histogram{}
	for le, c := range h {
		d[le] = c - before[le]
	}
	return d
}

func (h histogram) count() float64 { return h[math.Inf(1)] }

// quantile estimates the q-quantile in seconds by linear interpolation
// within the bucket holding it, as Prometheus' histogram_quantile does. It
// returns +Inf when the quantile lies above the highest finite bound, and
// NaN for an empty histogram.
func (h histogram) quantile(q float64) float64 {
	total := h.count()
	if total <= 0 {
		return math.NaN()
	}
	bounds := make([]float64, 0, len(h))
	for le := range h {
		bounds = append(bounds, le)
	}
	slices.Sort(bounds)
	target := q * total
	lower, below := 0.0, 0.0
	for _, le := range bounds {
		c := h[le]
		if c >= target {
			if math.IsInf(le, 1) {
				return le
			}
			if c == below {
				return le
			}
			return lower + (le-lower)*(target-below)/(c-below)
		}
		lower, below = le, c
	}
	return math.Inf(1)
}

func (h histogram) percentiles() percentiles {
	ms := func(q float64) millis { return millis(h.quantile(q) * 1000) }
	return percentiles{P50: ms(0.50), P99: ms(0.99), P999: ms(0.999)}
}
