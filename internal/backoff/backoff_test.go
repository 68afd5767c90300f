package backoff

import (
	"context"
	"math"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func TestNextWithinEqualJitterBounds(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name     string
		min, max time.Duration
		ceilings []time.Duration // expected ceiling of each attempt
	}{
		{
			"doubling to the cap", time.Second, 10 * time.Second,
			[]time.Duration{1 * time.Second, 2 * time.Second, 4 * time.Second, 8 * time.Second, 10 * time.Second, 10 * time.Second, 10 * time.Second},
		},
		{
			"exact power of two cap", 100 * time.Millisecond, 800 * time.Millisecond,
			[]time.Duration{100 * time.Millisecond, 200 * time.Millisecond, 400 * time.Millisecond, 800 * time.Millisecond, 800 * time.Millisecond},
		},
		{
			"min equals max", time.Second, time.Second,
			[]time.Duration{time.Second, time.Second, time.Second},
		},
		{
			"max below min", time.Second, 300 * time.Millisecond,
			[]time.Duration{300 * time.Millisecond, 300 * time.Millisecond},
		},
		{"tiny", 1, 3, []time.Duration{1, 2, 3, 3}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			// Many runs, since the delays are random.
			for range 500 {
				b := Backoff{Min: tt.min, Max: tt.max}
				for i, ceiling := range tt.ceilings {
					require.Equal(t, i, b.Attempt())
					d := b.Next()
					require.GreaterOrEqual(t, d, ceiling/2, "attempt %d", i)
					require.LessOrEqual(t, d, ceiling, "attempt %d", i)
					require.LessOrEqual(t, d, tt.max, "attempt %d", i)
				}
			}
		})
	}
}

func TestNextCappedAfterManyAttempts(t *testing.T) {
	t.Parallel()
	b := Backoff{Min: time.Millisecond, Max: time.Minute}
	for i := range 10_000 { // far beyond where Min·2^attempt would overflow
		d := b.Next()
		require.Positive(t, d, "attempt %d", i)
		require.LessOrEqual(t, d, time.Minute, "attempt %d", i)
		if i > 20 {
			require.GreaterOrEqual(t, d, 30*time.Second, "attempt %d", i)
		}
	}
	require.Equal(t, 10_000, b.Attempt())
}

func TestNextIsJittered(t *testing.T) {
	t.Parallel()
	seen := map[time.Duration]bool{}
	for range 100 {
		b := Backoff{Min: time.Second, Max: time.Second}
		seen[b.Next()] = true
	}
	require.Greater(t, len(seen), 1, "100 delays should not all be equal")
}

func TestReset(t *testing.T) {
	t.Parallel()
	b := Backoff{Min: time.Second, Max: time.Hour}
	for range 10 {
		b.Next()
	}
	require.Equal(t, 10, b.Attempt())
	require.Greater(t, b.Next(), 5*time.Minute)
	b.Reset()
	require.Equal(t, 0, b.Attempt())
	d := b.Next()
	require.GreaterOrEqual(t, d, 500*time.Millisecond)
	require.LessOrEqual(t, d, time.Second)
	require.Equal(t, 1, b.Attempt())
}

func TestSleep(t *testing.T) {
	t.Parallel()
	require.True(t, Sleep(context.Background(), time.Millisecond))

	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	start := time.Now()
	require.False(t, Sleep(ctx, time.Hour))
	require.Less(t, time.Since(start), time.Minute)
}

// TestNextHugeMax: a Max near the largest duration never overflows the
// doubling ceiling.
func TestNextHugeMax(t *testing.T) {
	t.Parallel()
	for _, c := range []struct{ min, max time.Duration }{
		{time.Second, math.MaxInt64},
		{1 << 62, math.MaxInt64},
		{3 * 365 * 24 * time.Hour, 200 * 365 * 24 * time.Hour},
	} {
		b := Backoff{Min: c.min, Max: c.max}
		for i := range 100 {
			var d time.Duration
			require.NotPanics(t, func() { d = b.Next() }, "min %s max %s attempt %d", c.min, c.max, i)
			require.Positive(t, d, "min %s max %s attempt %d", c.min, c.max, i)
			require.LessOrEqual(t, d, c.max)
		}
	}
}
