// Package chaos holds what the relay's chaos suite (cmd/relay/chaos_test.go)
// is built from: a load of concurrent outbox writers, an in-process toxiproxy
// for network faults between the relay and its servers, the record of every
// fault injected, and the report docs/reliability.md is written from.
//
// Randomness comes from one seed (CHAOS_SEED, or the clock when unset), which
// the suite prints, so the order and parameters of faults can be replayed.
// Timing is the machine's: a replay injects the same faults in the same order
// with the same parameters, not at the same instants of the stream.
package chaos

import (
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"time"
)

// Environment variables read by the suite.
const (
	// EnvFull selects the full run (many faults of each kind, a long load)
	// when set to 1; otherwise the short run of `make test`.
	EnvFull = "CHAOS_FULL"
	// EnvSeed sets the seed, to replay a run.
	EnvSeed = "CHAOS_SEED"
	// EnvReport names the Markdown report to write. Relative paths are
	// relative to the repository root. In the full run it defaults to
	// docs/reliability.md; "-" writes none.
	EnvReport = "CHAOS_REPORT"
	// EnvLogDir names a directory to keep every relay's log in; by default
	// logs are kept (in a temporary directory) only when a scenario fails.
	EnvLogDir = "CHAOS_LOG_DIR"
	// EnvFaults, a regular expression, keeps only the fault kinds it
	// matches (for example "pg-blackhole|zombie-leader"), to chase one.
	EnvFaults = "CHAOS_FAULTS"
)

// DefaultReport is where the full run writes its report, relative to the
// repository root.
const DefaultReport = "docs/reliability.md"

// Full reports whether the full run was asked for.
func Full() bool { return os.Getenv(EnvFull) == "1" }

// Seed returns the seed from CHAOS_SEED, or a fresh one from the clock.
func Seed() (uint64, error) {
	if s := os.Getenv(EnvSeed); s != "" {
		seed, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			return 0, fmt.Errorf("%s=%q: not an unsigned integer: %w", EnvSeed, s, err)
		}
		return seed, nil
	}
	return uint64(time.Now().UnixNano()) % 1_000_000_000, nil
}

// RNG returns a generator for one stream of decisions (a scenario, a writer)
// derived from seed, so streams do not depend on each other's consumption.
func RNG(seed uint64, stream string) *rand.Rand {
	h := uint64(14695981039346656037)
	for i := 0; i < len(stream); i++ {
		h ^= uint64(stream[i])
		h *= 1099511628211
	}
	return rand.New(rand.NewPCG(seed, h))
}

// Between returns a duration drawn uniformly from [lo, hi].
func Between(rng *rand.Rand, lo, hi time.Duration) time.Duration {
	if hi <= lo {
		return lo
	}
	return lo + time.Duration(rng.Int64N(int64(hi-lo)+1))
}

// ReportPath returns where the report goes ("" for nowhere): CHAOS_REPORT
// resolved against root, or DefaultReport in the full run.
func ReportPath(root string) string {
	p := os.Getenv(EnvReport)
	switch {
	case p == "-":
		return ""
	case p == "" && Full():
		p = DefaultReport
	case p == "":
		return ""
	}
	if !filepath.IsAbs(p) {
		p = filepath.Join(root, p)
	}
	return p
}
