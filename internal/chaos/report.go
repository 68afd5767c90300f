package chaos

import (
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/outbox-relay/outbox-relay/internal/e2e"
)

// Fault is one fault injected, and what it took to get over it.
type Fault struct {
	Kind   string `json:"kind"`
	Target string `json:"target"`
	// At is when it was injected, from the start of the scenario.
	At time.Duration `json:"at"`
	// Held is how long the fault lasted (0 for an instant one, such as a
	// kill followed by an immediate restart).
	Held time.Duration `json:"held"`
	// Recovery is from injection until the stream held every event
	// committed by the time the fault was healed (CommittedAtHeal), so it
	// includes the events written while the fault lasted; AfterHeal is the
	// part of it after the fault ended.
	Recovery  time.Duration `json:"recovery"`
	AfterHeal time.Duration `json:"after_heal"`
	Recovered bool          `json:"recovered"`
	// Takeover is from injection until a relay led and streamed again
	// (relay faults, a leader cut off) or the stream had a new leader
	// (NATS cluster), when HasTakeover.
	Takeover    time.Duration `json:"takeover,omitempty"`
	HasTakeover bool          `json:"has_takeover"`
	// Committed is how many events were committed before the injection,
	// CommittedAtHeal by the time the fault was healed; StreamSeq how many
	// the stream held at the injection.
	Committed       int    `json:"committed"`
	CommittedAtHeal int    `json:"committed_at_heal"`
	StreamSeq       int    `json:"stream_seq"`
	Detail          string `json:"detail,omitempty"`
}

// Scenario is one scenario's outcome.
type Scenario struct {
	Name        string
	Description string
	// KnownIssue marks the scenario of faults the relay does not yet get
	// over in time; the report keeps it apart from the others.
	KnownIssue bool
	Setup      string // servers and relays, in a sentence
	Duration   time.Duration
	Load       LoadStats
	// Committed is the number of events in the commit log at the end.
	Committed int
	Relays    int // relay processes started
	Faults    []Fault
	Verdict   e2e.Verdict
	// CaughtUp reports whether the stream reached the commit log's length
	// before the final comparison.
	CaughtUp bool
	Problems []string // anything else that went wrong
	// Relay sums the relays' own counters, read from their /metrics just
	// before each was stopped or killed (so they are lower bounds).
	Relay RelayCounters
	// Server counts what PostgreSQL's log says it did to the relays.
	Server ServerCounters
}

// RelayCounters are the relays' counters that show the defences at work.
type RelayCounters struct {
	Published  float64 // messages JetStream stored
	Skipped    float64 // replayed events skipped: the stream already held them
	Duplicates float64 // publishes JetStream acknowledged as duplicates
	WrongSeq   float64 // publishes refused for a wrong last sequence
	Resyncs    float64 // times the stream's end was read back
	Reconnects float64 // replication sessions started again after an error
	// EndedOldSessions counts, from the relays' logs, lingering replication
	// sessions of a previous leader that a new leader ended.
	EndedOldSessions float64
}

// Add adds o to c.
func (c *RelayCounters) Add(o RelayCounters) {
	c.Published += o.Published
	c.Skipped += o.Skipped
	c.Duplicates += o.Duplicates
	c.WrongSeq += o.WrongSeq
	c.Resyncs += o.Resyncs
	c.Reconnects += o.Reconnects
	c.EndedOldSessions += o.EndedOldSessions
}

// ServerCounters count lines of PostgreSQL's log.
type ServerCounters struct {
	// IdleSessionTimeouts: sessions ended by idle_session_timeout, which is
	// how a silent leader's lock is released.
	IdleSessionTimeouts int
}

// CountServerLog counts the lines of a PostgreSQL log that ServerCounters
// are made of.
func CountServerLog(log string) ServerCounters {
	return ServerCounters{
		IdleSessionTimeouts: strings.Count(log, "terminating connection due to idle-session timeout"),
	}
}

// EndedOldSessionLine is what a relay logs when, taking over, it ends a
// lingering replication session of the previous leader.
const EndedOldSessionLine = "ended a lingering session of a previous leader on the slot"

// Passed reports whether the scenario found nothing wrong.
func (s Scenario) Passed() bool {
	if !s.Verdict.OK() || !s.CaughtUp || len(s.Problems) > 0 {
		return false
	}
	for _, f := range s.Faults {
		if !f.Recovered {
			return false
		}
	}
	return true
}

// Report gathers the scenarios of one run.
type Report struct {
	Seed     uint64
	Full     bool
	Started  time.Time
	Finished time.Time
	Command  string
	Settings []string // relay settings common to the scenarios
	Versions []string // "PostgreSQL 15.x", ...

	mu        sync.Mutex
	scenarios []Scenario
}

// Add records a scenario; safe for concurrent use.
func (r *Report) Add(s Scenario) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.scenarios = append(r.scenarios, s)
}

// Scenarios returns the scenarios recorded so far, by name.
func (r *Report) Scenarios() []Scenario {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := slices.Clone(r.scenarios)
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// WriteFile writes the Markdown report to path.
func (r *Report) WriteFile(path string) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	return os.WriteFile(path, []byte(r.Markdown()), 0o644)
}

// kindStats summarises the faults of one kind.
type kindStats struct {
	scenario, kind      string
	count               int
	recoveries, healed  []time.Duration
	takeovers           []time.Duration
	unrecovered         int
	maxHeld, totalHeld  time.Duration
	firstDetail, target string
}

// byKind groups faults by scenario and kind, in order of first appearance.
func byKind(scenarios []Scenario) []*kindStats {
	var out []*kindStats
	index := map[string]*kindStats{}
	for _, s := range scenarios {
		for _, f := range s.Faults {
			key := s.Name + "/" + f.Kind
			k := index[key]
			if k == nil {
				k = &kindStats{scenario: s.Name, kind: f.Kind, target: f.Target, firstDetail: f.Detail}
				index[key] = k
				out = append(out, k)
			}
			k.count++
			k.totalHeld += f.Held
			k.maxHeld = max(k.maxHeld, f.Held)
			if f.Recovered {
				k.recoveries = append(k.recoveries, f.Recovery)
				k.healed = append(k.healed, f.AfterHeal)
			} else {
				k.unrecovered++
			}
			if f.HasTakeover {
				k.takeovers = append(k.takeovers, f.Takeover)
			}
		}
	}
	return out
}

func median(ds []time.Duration) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[len(s)/2]
}

func maxOf(ds []time.Duration) time.Duration {
	var m time.Duration
	for _, d := range ds {
		m = max(m, d)
	}
	return m
}

func secs(d time.Duration) string { return fmt.Sprintf("%.1f s", d.Seconds()) }

func secsOrDash(ds []time.Duration, f func([]time.Duration) time.Duration) string {
	if len(ds) == 0 {
		return "–"
	}
	return secs(f(ds))
}

// Markdown renders the report.
func (r *Report) Markdown() string {
	var scenarios, known []Scenario
	for _, s := range r.Scenarios() {
		if s.KnownIssue {
			known = append(known, s)
		} else {
			scenarios = append(scenarios, s)
		}
	}
	var b strings.Builder
	p := func(format string, args ...any) { fmt.Fprintf(&b, format, args...) }

	var events, txns, rolledBack, rolledBackEvents, other, failedWrites, faults, relays int64
	var lost, dup, reordered, unexpected int
	passed := true
	var longest, slowest Fault
	var longestScenario, slowestScenario string
	for _, s := range scenarios {
		events += int64(s.Committed)
		txns += s.Load.Transactions
		rolledBack += s.Load.RolledBack
		rolledBackEvents += s.Load.RolledBackEvents
		other += s.Load.OtherWrites
		failedWrites += s.Load.Failed
		faults += int64(len(s.Faults))
		relays += int64(s.Relays)
		lost += s.Verdict.Lost
		dup += s.Verdict.Duplicated
		reordered += s.Verdict.Reordered
		unexpected += s.Verdict.Unexpected
		passed = passed && s.Passed()
		for _, f := range s.Faults {
			if f.Recovery > longest.Recovery {
				longest, longestScenario = f, s.Name
			}
			if f.AfterHeal > slowest.AfterHeal {
				slowest, slowestScenario = f, s.Name
			}
		}
	}
	mode := "short run (`make test`)"
	if r.Full {
		mode = "full run (`make chaos`)"
	}
	result := "**passed**: every committed event is on the stream exactly once, in commit order, and nothing else is; every fault was recovered from"
	if !passed {
		result = "**FAILED**: see the scenarios below"
	}
	reproduced := 0
	for _, s := range known {
		if !s.Passed() {
			reproduced++
		}
	}
	switch {
	case len(known) == 0:
		result += " (the known issues were left out of this run)"
	case reproduced > 0:
		result += "; the [known issues](#known-issues) were reproduced: stalls, though nothing was lost, duplicated or reordered there either"
	default:
		result += "; the [known issues](#known-issues) no longer reproduce"
	}

	p("# Reliability under faults\n\n")
	p("<!-- Generated by TestChaos (cmd/relay/chaos_test.go, internal/chaos). Do not edit by hand: run `make chaos`. -->\n\n")
	p("This page is written by the chaos suite from a real run on this project's development machine. ")
	p("It streams events from concurrent writers while faults are injected at random moments, and then ")
	p("compares the JetStream stream, message by message, with the commit order PostgreSQL recorded.\n\n")

	p("## The run\n\n")
	p("| | |\n|---|---|\n")
	p("| date | %s (UTC), %s |\n", r.Started.UTC().Format("2006-01-02 15:04"), secs(r.Finished.Sub(r.Started)))
	p("| mode | %s |\n", mode)
	p("| seed | `%d` |\n", r.Seed)
	p("| reproduce | `%s` |\n", r.Command)
	p("| machine | %d CPU cores, %s/%s, %s |\n", runtime.NumCPU(), runtime.GOOS, runtime.GOARCH, runtime.Version())
	if len(r.Versions) > 0 {
		p("| servers | %s |\n", strings.Join(r.Versions, ", "))
	}
	p("| result | %s |\n\n", result)

	p("## Figures\n\n")
	p("| | |\n|---|---|\n")
	p("| events committed | **%d** in %d transactions of 1, 10 and 100 rows |\n", events, txns)
	p("| rolled back | %d transactions (%d events), none of which may appear |\n", rolledBack, rolledBackEvents)
	p("| writes to another table | %d transactions, none of which may appear |\n", other)
	p("| writes that failed during outages | %d (retried; the commit log decides what committed) |\n", failedWrites)
	p("| faults injected | **%d** |\n", faults)
	p("| relay processes started | %d |\n", relays)
	p("| lost | **%d** |\n", lost)
	p("| duplicated | **%d** |\n", dup)
	p("| reordered | **%d** |\n", reordered)
	p("| unexpected (rolled back, other tables, never committed) | **%d** |\n", unexpected)
	if longest.Kind != "" {
		p("| longest recovery | %s (%s, %s; the fault itself lasted %s) |\n", secs(longest.Recovery), longest.Kind, longestScenario, secs(longest.Held))
	}
	if slowest.Kind != "" {
		p("| longest catch-up after a fault ended | %s (%s, %s) |\n", secs(slowest.AfterHeal), slowest.Kind, slowestScenario)
	}
	var takeoverLines []string
	for _, k := range byKind(scenarios) {
		if len(k.takeovers) > 0 {
			takeoverLines = append(takeoverLines, fmt.Sprintf("%s: median %s, max %s (%d)", k.kind, secs(median(k.takeovers)), secs(maxOf(k.takeovers)), len(k.takeovers)))
		}
	}
	if len(takeoverLines) > 0 {
		p("| takeover times | %s |\n", strings.Join(takeoverLines, "; "))
	}
	p("\n")

	p("**Recovery** is the time from injecting a fault until the stream held every event committed by the time the ")
	p("fault ended, including those written while it lasted; it includes the time the fault lasted (*held*), and ")
	p("*after heal* is the part after the fault ended: how long the relay took to catch up once it could. ")
	p("**Takeover** is the time from injecting the fault until a relay led and streamed again (`/readyz` answered ")
	p("200 with role `leader`), or, in the NATS cluster, until the stream had a new leader.\n\n")

	p("## Scenarios\n\n")
	p("| scenario | setup | duration | events committed | faults | lost | duplicated | reordered | unexpected | result |\n")
	p("|---|---|---|---|---|---|---|---|---|---|\n")
	for _, s := range scenarios {
		res := "passed"
		if !s.Passed() {
			res = "**FAILED**"
		}
		p("| %s | %s | %s | %d | %d | %d | %d | %d | %d | %s |\n", s.Name, s.Setup, secs(s.Duration), s.Committed, len(s.Faults),
			s.Verdict.Lost, s.Verdict.Duplicated, s.Verdict.Reordered, s.Verdict.Unexpected, res)
	}
	p("\n")
	for _, s := range scenarios {
		p("- **%s**: %s.\n", s.Name, s.Description)
		c := s.Relay
		p("  The relays' counters (lower bounds: read just before each relay was stopped or killed): %.0f messages stored, "+
			"%.0f replayed events skipped because the stream already held them, %.0f publishes acknowledged by JetStream as duplicates, "+
			"%.0f refused for a wrong last sequence, %.0f read-backs of the stream's end, %.0f replication sessions restarted after an error, "+
			"%.0f lingering replication sessions of a previous leader ended by a new one.",
			c.Published, c.Skipped, c.Duplicates, c.WrongSeq, c.Resyncs, c.Reconnects, c.EndedOldSessions)
		if s.Server.IdleSessionTimeouts > 0 {
			p(" PostgreSQL's log shows %d sessions ended by `idle_session_timeout`: a silent leader's lock session.", s.Server.IdleSessionTimeouts)
		}
		p("\n")
		for _, prob := range s.Problems {
			p("  - problem: %s\n", prob)
		}
		if !s.Verdict.OK() {
			p("  - verdict: %s\n", s.Verdict)
		}
	}
	p("\n")

	p("## Faults\n\n")
	p("| scenario | fault | count | held (max) | recovery median | recovery max | after heal max | takeover median | takeover max |\n")
	p("|---|---|---|---|---|---|---|---|---|\n")
	for _, k := range byKind(scenarios) {
		count := fmt.Sprint(k.count)
		if k.unrecovered > 0 {
			count += fmt.Sprintf(" (**%d not recovered**)", k.unrecovered)
		}
		p("| %s | %s | %s | %s | %s | %s | %s | %s | %s |\n", k.scenario, k.kind, count, secs(k.maxHeld),
			secsOrDash(k.recoveries, median), secsOrDash(k.recoveries, maxOf), secsOrDash(k.healed, maxOf),
			secsOrDash(k.takeovers, median), secsOrDash(k.takeovers, maxOf))
	}
	p("\n")
	p("What each fault does:\n\n")
	for _, d := range faultDescriptions {
		p("- `%s`: %s\n", d[0], d[1])
	}
	p("\n")

	p("## What is real and what is simulated\n\n")
	for _, line := range honesty {
		p("- %s\n", line)
	}
	p("\n")

	p("## PostgreSQL versions and failovers\n\n")
	p("The faults above run on PostgreSQL 15. What holds on the other majors, and across a primary failover, is proven by ")
	p("end-to-end tests against real servers of each major (`scripts/install-postgres.sh` installs them):\n\n")
	for _, line := range versionCoverage {
		p("- %s\n", line)
	}
	p("\n")

	p("## Known issues\n\n")
	p("Faults in which a peer goes silent without closing anything. The relay rode them out without losing, duplicating ")
	p("or reordering anything, but this suite found it stalling for minutes, without saying so on `/readyz`; they were ")
	p("kept out of the regular run until the relay was fixed, and now run in every run, each asserting its target.\n\n")
	for _, d := range knownIssues {
		p("- `%s`: %s\n", d[0], d[1])
	}
	p("\n")
	if len(known) == 0 {
		p("Not part of this run.\n\n")
	}
	for _, s := range known {
		p("This run (%s; %s): %d events committed; lost %d, duplicated %d, reordered %d, unexpected %d.\n\n",
			s.Setup, secs(s.Duration), s.Committed, s.Verdict.Lost, s.Verdict.Duplicated, s.Verdict.Reordered, s.Verdict.Unexpected)
		p("| fault | target | held | relay noticed / resumed after | caught up after heal | detail |\n|---|---|---|---|---|---|\n")
		for _, f := range s.Faults {
			noticed := "**never**"
			if f.HasTakeover {
				noticed = secs(f.Takeover)
			}
			healed := secs(f.AfterHeal)
			if !f.Recovered {
				healed = "**never**"
			}
			p("| %s | %s | %s | %s | %s | %s |\n", f.Kind, f.Target, secs(f.Held), noticed, healed, strings.ReplaceAll(f.Detail, "|", "/"))
		}
		p("\n")
		for _, prob := range s.Problems {
			p("- %s\n", strings.ReplaceAll(prob, "\n", " "))
		}
		p("\n")
	}

	if len(r.Settings) > 0 {
		p("## Relay settings\n\n")
		p("Everything not listed is the default (see the README).\n\n")
		for _, s := range r.Settings {
			p("- %s\n", s)
		}
		p("\n")
	}

	p("## Every fault\n\n")
	p("<details><summary>%d faults, in order</summary>\n\n", faults)
	p("| scenario | at | fault | target | held | recovery | after heal | takeover | events committed before | written meanwhile | stream then | detail |\n")
	p("|---|---|---|---|---|---|---|---|---|---|---|---|\n")
	for _, s := range scenarios {
		for _, f := range s.Faults {
			rec, healed := secs(f.Recovery), secs(f.AfterHeal)
			if !f.Recovered {
				rec, healed = "**never**", "–"
			}
			takeover := "–"
			if f.HasTakeover {
				takeover = secs(f.Takeover)
			}
			p("| %s | %s | %s | %s | %s | %s | %s | %s | %d | %d | %d | %s |\n", s.Name, secs(f.At), f.Kind, f.Target, secs(f.Held),
				rec, healed, takeover, f.Committed, f.CommittedAtHeal-f.Committed, f.StreamSeq, strings.ReplaceAll(f.Detail, "|", "/"))
		}
	}
	p("\n</details>\n")
	return b.String()
}

// faultDescriptions explain the fault kinds, for the report.
var faultDescriptions = [][2]string{
	{"relay-sigkill", "the leading relay is killed with SIGKILL and a new one started after 0–1 s."},
	{"relay-sigterm", "the leading relay gets SIGTERM (it must exit 0 after letting its publishes finish) and a new one is started."},
	{"relay-race", "the leading relay is killed with SIGKILL and two relays are started at the same moment on the same slot; leader election must pick one, and the other stands by (it is stopped afterwards)."},
	{"relay-pause", "with a standby running, the leader is frozen with SIGSTOP, keeping every connection open; the standby must take over once the lease runs out; then the old leader is resumed with SIGCONT holding events it read before, and must step down (it is stopped afterwards)."},
	{"postgres-fast-restart", "PostgreSQL is stopped in fast mode (clients disconnected, shutdown checkpoint), kept down for 0.5–3 s, and started."},
	{"postgres-crash-restart", "PostgreSQL is stopped in immediate mode (no checkpoint; crash recovery on start), kept down for 0.5–3 s, and started."},
	{"nats-restart", "the NATS server is shut down, kept down for 0.5–3 s, and started on the same store."},
	{"nats-stream-leader-stop", "in a three-node cluster, the node leading the R3 stream is shut down, kept down for 1–4 s, and started again; takeover is the time until another node leads the stream."},
	{"nats-follower-stop", "in a three-node cluster, a node following the R3 stream is shut down, kept down for 1–4 s, and started again (the relay may be connected to it)."},
	{"pg-cut / nats-cut", "the leader's link to PostgreSQL / NATS goes down: every connection through it is closed and new ones are closed as soon as they are accepted, for 1–4 s."},
	{"pg-latency / nats-latency", "50–200 ms (± 20 %) added to each direction of the leader's link to PostgreSQL / NATS, for 3–6 s."},
	{"pg-bandwidth / nats-bandwidth", "the leader's link to PostgreSQL / NATS limited to 16–64 KB/s per direction and connection, for 3–6 s (the load needs about 100 KB/s)."},
	{"pg-blackhole", "the leader's link to PostgreSQL swallows everything without closing anything (a host that vanished, or a partition): the standby must take over, which relies on the server ending the silent leader's lock session (idle_session_timeout = lease timeout) and on the new leader ending the old one's replication session; 1–3 s after the takeover the link heals and the old leader must stand by. Takeover is counted from the cut."},
	{"zombie-leader", "as pg-blackhole, but the leader's link to NATS is first throttled to 2–6 KB/s for 2–4 s, so that when it is cut off from PostgreSQL it still has publishes in flight, which keep reaching the stream after the standby has started publishing; ordering and exactly-once then rest on the expected-last-sequence checks alone."},
	{"nats-blackhole", "the leader's link to NATS swallows everything without closing anything for 2–12 s (longer than the 5 s request and beyond the 10 s publish timeouts at the upper end); then the connections are reset."},
}

// knownIssues explain the faults of the known-issues scenario, and what
// they found, for the report.
var knownIssues = [][2]string{
	{"nats-node-silent", "in a three-node cluster (R3 stream) reached through one toxiproxy link per node, the link to the node the relay is connected to is blackholed: that node stops answering without closing anything, as a hung host or a partition would, while the other two nodes and the stream are fine. Target: the relay publishes again through another node within 60 s. Found by this suite: with nats.go's default `PingInterval` of 2 minutes the relay kept the silent connection for about 6 minutes (5m56s measured), with `/readyz` 200 throughout, since timed-out PubAcks and stream reads do not make the client reconnect; the relay's NATS connection now pings every 10 s."},
	{"walsender-freeze", "the PostgreSQL process serving the relay's replication session (the walsender) is frozen with SIGSTOP, so the session goes silent while its TCP connection stays up, as with a hung server process or a path that silently drops one long-lived connection; the lock session is not affected, so the relay stays leader. Target: the relay notices within 90 s (it stops reporting ready and ends the session). Found by this suite: the relay's reader had no receive timeout, so it waited as long as the session stayed silent (over 2 minutes measured, then the test gave up), publishing nothing, with `/healthz` and `/readyz` 200 and no log line; the relay now ends a session that has been silent for `--replication-timeout` (default 1m)."},
}

// honesty says what the suite simulates, for the report.
// versionCoverage says what holds on which PostgreSQL major and which tests
// show it; the chaos run itself uses the default major.
var versionCoverage = []string{
	"14, 15, 16, 17, 18: the core suite (order and once, restarts and crashes, outages, idle WAL, slot moves, dropped and lost slots, poison, exactly once past the duplicate window, shared streams and retention, partitions, publications) passes unchanged on each: `make test` on 15, `make test-matrix` on the others (CI runs it on 17 and 18). Older majors are refused at start, newer ones run with a warning.",
	"17 and newer, failover slots (`--failover-slot`): the primary is killed while events flow, the standby that synchronised the slot is promoted, and the relay, given a multi-host URL, follows it with every committed event on the stream once, in commit order: 0 lost, 0 duplicated, 0 reordered (`TestFailoverSlotFollowsThePromotedStandby`, with and without leader election; `TestMultiHostURL`, `TestPreflightMakesAFailoverSlot`).",
	"Any major (the check reads IDENTIFY_SYSTEM and TIMELINE_HISTORY, which every supported major has; tested on 17): a promoted server whose WAL is behind what the relay already published (a failover to a lagging standby) is refused at session start with an error that names the divergence and the recovery, never skipped (`TestDivergedStandbyStopsTheRelay`, on 17, with and without leader election).",
	"16 and older, or a slot that was not a failover slot: the slot is gone after promotion; `relay recover` creates a new one and publishes from the outbox table what the stream lacks, once (`TestRecoverAfterFailover` on 14 and 16, `TestRecoverAfterDivergedFailover` on 16, each with a real promotion). It orders the recovered rows by `created_at`, which is commit order only for transactions that do not overlap, and cannot publish rows deleted before it ran.",
	"16 and newer: the relay can read from a hot standby (logical decoding on a standby), in order and once across a restart, and goes on after that standby's promotion (`TestRelayReadsFromAStandby` on 16 and 18, `TestRelayOnAPromotedStandby` on 16).",
	"18: a slot invalidated by `idle_replication_slot_timeout` is reported with its cause and the relay stops (`TestIdleTimedOutSlotStopsTheRelay`, `TestReaderStopsOnAnIdleTimedOutSlot`); a publication missing at a WAL position stops it as on 15 (`TestPublicationMissingAtAWALPositionStopsTheRelay` on 15 and 18).",
}

var honesty = []string{
	"PostgreSQL 15, NATS (nats-server, in the test process) and the relay (the real binary, as a child process) are real and talk over real TCP on 127.0.0.1; writers and the verifier connect to the servers directly, the relays through the proxies where a scenario has them.",
	"Crashes are process crashes, not host crashes. The test PostgreSQL runs with `fsync = off` (its WAL reaches the page cache, which survives a process crash), and NATS is shut down in-process, so no fault here loses data that was written but not synced. A relay acknowledges to PostgreSQL only what JetStream acknowledged; against a real NATS host crash that is only as durable as the stream (see the README on R3 and `sync_interval`).",
	"`postgres-crash-restart` is `pg_ctl stop -m immediate`: the postmaster and its backends die without a checkpoint and the next start runs crash recovery. It is the closest a test gets to pulling the plug on PostgreSQL.",
	"`nats-restart` and `nats-stream-leader-stop` shut the server down in-process (its listeners close and clients see their connections end); a kill -9 of a NATS host, with its unsynced writes lost, is not simulated.",
	"Network faults are made by toxiproxy in the test process, between the relay and the servers: the relay's connections really stall, slow down or break, but the loopback interface itself never drops packets, and a TCP keepalive from either end is still answered by the proxy. `pg-blackhole` therefore tests the relay's own defences (lease renewal timeouts, `idle_session_timeout`, ending the old leader's replication session), not TCP's.",
	"Faults come one at a time, with the load running throughout: each is held, healed, and the stream must catch up before the next one. Combined faults (PostgreSQL and NATS down at once) are not part of the run.",
	"A replay with the same seed injects the same faults with the same parameters in the same order, but at moments that depend on the machine's timing.",
}
