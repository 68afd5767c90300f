package main

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"

	"github.com/outbox-relay/outbox-relay/internal/chaos"
	"github.com/outbox-relay/outbox-relay/internal/e2e"
	"github.com/outbox-relay/outbox-relay/internal/testenv"
)

// The chaos suite streams events from concurrent writers (transactions of 1,
// 10 and 100 rows, some rolled back, some writes to another table) through
// real relays while faults are injected at random moments, one at a time,
// each held for a while, healed, and followed by a wait until the stream has
// caught up with what was committed by then. At the end the stream is
// compared message by message with the commit order PostgreSQL recorded:
// every committed event exactly once, in commit order, nothing else.
//
// Three scenarios, each with its own servers, run in parallel:
//
//   - processes: relay SIGKILL and SIGTERM with restart, two relays racing
//     for the slot, a frozen leader (SIGSTOP) resumed after a standby took
//     over, PostgreSQL fast and immediate restarts, NATS restarts;
//   - network: two relays (leader and standby), each reaching PostgreSQL and
//     NATS through its own toxiproxy links: links cut, slowed (latency),
//     throttled (bandwidth) and blackholed, always on the current leader's
//     links; a leader blackholed from PostgreSQL must be replaced by the
//     standby within seconds, also while it still has publishes in flight
//     (zombie-leader);
//   - nats-cluster: a three-node JetStream cluster with an R3 stream whose
//     leader, or a follower, is shut down and restarted.
//
// By default (the short run of `make test`) each fault kind comes once.
// CHAOS_FULL=1 (`make chaos`) runs each many times under a longer load and
// writes docs/reliability.md; CHAOS_SEED replays a run's faults; CHAOS_REPORT,
// CHAOS_LOG_DIR and CHAOS_FAULTS are described in internal/chaos. The relays
// run as child processes built without -race; under -race the suite checks
// itself, toxiproxy and the in-process NATS servers.
func TestChaos(t *testing.T) {
	seed, err := chaos.Seed()
	require.NoError(t, err)
	full := chaos.Full()
	plan := shortPlan
	if full {
		plan = fullPlan
	}
	command := fmt.Sprintf("CHAOS_SEED=%d go test -count=1 -run 'TestChaos' -v ./cmd/relay/", seed)
	if full {
		command = fmt.Sprintf("CHAOS_FULL=1 CHAOS_SEED=%d go test -count=1 -timeout 60m -run 'TestChaos' -v ./cmd/relay/", seed)
	}
	t.Logf("chaos seed %d; reproduce with: %s", seed, command)

	report := &chaos.Report{
		Seed: seed, Full: full, Started: time.Now(), Command: command,
		Settings: chaosSettings(),
		Versions: []string{"NATS " + server.VERSION},
	}
	path := chaos.ReportPath(e2e.RepoRoot())
	t.Cleanup(func() {
		report.Finished = time.Now()
		for _, s := range report.Scenarios() {
			t.Logf("%s: %d events, %d faults, %s", s.Name, s.Committed, len(s.Faults), s.Verdict)
		}
		if path == "" {
			return
		}
		if err := report.WriteFile(path); err != nil {
			t.Errorf("write chaos report: %v", err)
			return
		}
		t.Logf("chaos report written to %s", path)
	})

	// A silent NATS node and a silent replication session: caught by the
	// client's pings and --replication-timeout. First, being the slowest
	// in the short run (the relay needs up to a minute to notice).
	t.Run("known-issues", func(t *testing.T) {
		t.Parallel()
		s := newScene(t, "known-issues", seed, plan, report)
		s.result.KnownIssue = true
		chaosKnownIssues(t, s)
	})
	t.Run("processes", func(t *testing.T) {
		t.Parallel()
		chaosProcesses(t, newScene(t, "processes", seed, plan, report))
	})
	t.Run("network", func(t *testing.T) {
		t.Parallel()
		chaosNetwork(t, newScene(t, "network", seed, plan, report))
	})
	t.Run("nats-cluster", func(t *testing.T) {
		t.Parallel()
		chaosCluster(t, newScene(t, "nats-cluster", seed, plan, report))
	})
	t.Run("shared-stream", func(t *testing.T) {
		t.Parallel()
		chaosShared(t, newScene(t, "shared-stream", seed, plan, report))
	})
	t.Run("work-queue", func(t *testing.T) {
		t.Parallel()
		chaosWorkQueue(t, newScene(t, "work-queue", seed, plan, report))
	})
	t.Run("partitioned", func(t *testing.T) {
		t.Parallel()
		chaosPartitioned(t, newScene(t, "partitioned", seed, plan, report))
	})
}

// chaosPlan sizes a run.
type chaosPlan struct {
	repeat        int // faults of each kind
	clusterRepeat int // of each NATS cluster fault
	writers       int
	rate          float64 // events per second aimed at
	// gap is the time between faults, drawn from this range.
	gapMin, gapMax time.Duration
	// recoverTimeout bounds the wait for the stream to catch up after a
	// fault: past it the relay is taken to hang.
	recoverTimeout time.Duration
}

var (
	shortPlan = chaosPlan{
		repeat: 1, clusterRepeat: 1, writers: 4, rate: 150,
		gapMin: 300 * time.Millisecond, gapMax: 1500 * time.Millisecond, recoverTimeout: 2 * time.Minute,
	}
	fullPlan = chaosPlan{
		repeat: 10, clusterRepeat: 8, writers: 6, rate: 200,
		gapMin: 500 * time.Millisecond, gapMax: 4 * time.Second, recoverTimeout: 3 * time.Minute,
	}
)

const chaosStream = "OUTBOX"

// chaosEnv is the relay configuration every scenario starts from.
func chaosEnv() map[string]string {
	return map[string]string{
		"RELAY_STATUS_INTERVAL":      "500ms",
		"RELAY_RECONNECT_MAX":        "2s",
		"RELAY_RETRY_MAX":            "1s",
		"RELAY_LEADER_LEASE_TIMEOUT": "5s",
		"RELAY_LOG_LEVEL":            "info",
		// Above the test cluster's default wal_sender_timeout (60s) yet
		// short enough for walsender-freeze's 90s target; the default
		// would be twice wal_sender_timeout.
		"RELAY_REPLICATION_TIMEOUT": "75s",
	}
}

func chaosSettings() []string {
	var out []string
	for k, v := range chaosEnv() {
		out = append(out, fmt.Sprintf("`%s=%s`", k, v))
	}
	slices.Sort(out)
	out = append(out,
		"`RELAY_DUPLICATE_WINDOW=1s` in the processes scenario, so that replays after restarts fall outside JetStream's duplicate window and only the relay's own stream position check can keep them out",
		"`RELAY_CREATE_STREAM=true` (R1, file storage) in the processes and network scenarios; in nats-cluster the suite creates the stream with 3 replicas before starting the relay",
	)
	return out
}

// scene is one scenario's servers, relays, load and record.
type scene struct {
	t      *testing.T
	name   string
	rng    *rand.Rand
	seed   uint64
	plan   chaosPlan
	report *chaos.Report
	start  time.Time

	bin    string
	pg     *testenv.Postgres
	db     string
	admin  *pgxpool.Pool // the verifier's connections, straight to PostgreSQL
	nc     *nats.Conn    // the verifier's connection, straight to NATS
	writer *e2e.Writer
	load   *chaos.Load
	env    map[string]string

	relays  []*member
	started int

	// count returns how many of the scene's events the stream holds, and
	// stored reads them back; by default every message of the stream is
	// the scene's.
	count  func() int
	stored func(ctx context.Context) ([]string, error)

	result   chaos.Scenario
	broken   bool // a fault was not recovered from: inject no more
	finished bool
}

// member is one relay process of the scene.
type member struct {
	name      string
	r         *e2e.Relay
	pgLink    *chaos.Link // nil when the relay reaches PostgreSQL directly
	natsLink  *chaos.Link
	gone      bool // stopped or killed by the suite
	paused    bool
	harvested bool // its counters were added to the scene's
}

func newScene(t *testing.T, name string, seed uint64, plan chaosPlan, report *chaos.Report) *scene {
	s := &scene{
		t: t, name: name, seed: seed, plan: plan, report: report,
		rng: chaos.RNG(seed, name), db: "app", bin: e2e.BuildRelay(t),
	}
	s.result.Name = name
	s.pg = testenv.StartPostgres(t)
	s.pg.CreateDatabase(t, s.db)
	e2e.SetupOutbox(t, s.pg, s.db)
	// Registered after PostgreSQL and before the relays, so it runs while
	// the server log is still there and after the relays were killed.
	t.Cleanup(s.cleanup)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	admin, err := pgxpool.New(ctx, s.pg.AdminURL(s.db))
	require.NoError(t, err)
	t.Cleanup(admin.Close)
	s.admin = admin
	s.writer = e2e.NewWriter(t, s.pg.AdminURL(s.db), plan.writers+2)
	s.env = chaosEnv()
	s.env["RELAY_POSTGRES_URL"] = s.pg.URL(s.db)
	s.count = func() int { return e2e.StreamCount(s.nc, chaosStream) }
	s.stored = func(ctx context.Context) ([]string, error) {
		msgs, err := e2e.ReadStreamContext(ctx, s.nc, chaosStream)
		return e2e.IDs(msgs), err
	}
	if name == "processes" {
		var version string
		require.NoError(t, admin.QueryRow(ctx, `SHOW server_version`).Scan(&version))
		s.report.Versions = append(s.report.Versions, "PostgreSQL "+version)
	}
	return s
}

// faultSpec is a kind of fault. run prepares the fault (finds its target),
// calls inject at the moment it strikes, holds it, and calls heal at the
// moment it ends; it may record a takeover, and may go on after heal (to
// wait for a relay to step down, say) while the recovery is being measured.
type faultSpec struct {
	kind string
	run  func(s *scene, f *chaos.Fault, inject, heal func() time.Time)
}

// runFaults injects repeat faults of each kind in an order drawn from the
// scene's seed, with random gaps in between while the load goes on.
func (s *scene) runFaults(specs []faultSpec, repeat int) {
	if only := os.Getenv(chaos.EnvFaults); only != "" {
		re, err := regexp.Compile(only)
		require.NoError(s.t, err, "%s", chaos.EnvFaults)
		specs = slices.DeleteFunc(slices.Clone(specs), func(spec faultSpec) bool { return !re.MatchString(spec.kind) })
	}
	var plan []faultSpec
	for range repeat {
		plan = append(plan, specs...)
	}
	s.rng.Shuffle(len(plan), func(i, j int) { plan[i], plan[j] = plan[j], plan[i] })
	for i, spec := range plan {
		if s.broken {
			return
		}
		// Let the load run: the fault strikes at a random point of it.
		time.Sleep(chaos.Between(s.rng, s.plan.gapMin, s.plan.gapMax))
		s.t.Logf("%s: fault %d/%d: %s", s.name, i+1, len(plan), spec.kind)
		s.fault(spec)
	}
}

// fault runs one fault and measures the recovery from it: from the moment
// it was healed until the stream holds every event committed by then,
// including those written while the fault lasted.
func (s *scene) fault(spec faultSpec) {
	t := s.t
	f := chaos.Fault{Kind: spec.kind}
	var injected, healed time.Time
	var caught <-chan time.Time
	stopWatch := func() {}
	defer func() { stopWatch() }()
	inject := func() time.Time {
		f.Committed = s.committedCount()
		f.StreamSeq = max(0, s.count())
		injected = time.Now()
		f.At = injected.Sub(s.start)
		return injected
	}
	heal := func() time.Time {
		healed = time.Now()
		f.Held = healed.Sub(injected)
		f.CommittedAtHeal = s.committedCount()
		var ctx context.Context
		ctx, stopWatch = context.WithCancel(context.Background())
		caught = s.watchCatchUp(ctx, f.CommittedAtHeal)
		return healed
	}
	spec.run(s, &f, inject, heal)
	require.False(t, injected.IsZero() || healed.IsZero(), "fault %s was never injected or healed", spec.kind)
	select {
	case at := <-caught:
		f.Recovered = true
		f.AfterHeal = max(0, at.Sub(healed))
		f.Recovery = at.Sub(injected)
	case <-time.After(s.plan.recoverTimeout):
		s.problem("after %s (%s) at %s the stream did not catch up with the %d events committed by its end within %s; it holds %d",
			f.Kind, f.Target, f.At.Round(time.Millisecond), f.CommittedAtHeal, s.plan.recoverTimeout, s.count())
		s.broken = true
	}
	s.result.Faults = append(s.result.Faults, f)
	takeover := ""
	if f.HasTakeover {
		takeover = fmt.Sprintf(", takeover %s", f.Takeover.Round(time.Millisecond))
	}
	t.Logf("%s: %s on %s at %s: held %s, recovered %t in %s (%s after heal; %d events written meanwhile)%s %s", s.name, f.Kind, f.Target,
		f.At.Round(time.Millisecond), f.Held.Round(time.Millisecond), f.Recovered, f.Recovery.Round(time.Millisecond),
		f.AfterHeal.Round(time.Millisecond), f.CommittedAtHeal-f.Committed, takeover, f.Detail)
	s.checkRelays()
}

// watchCatchUp reports when the stream first holds at least n messages.
func (s *scene) watchCatchUp(ctx context.Context, n int) <-chan time.Time {
	ch := make(chan time.Time, 1)
	go func() {
		for ctx.Err() == nil {
			if s.count() >= n {
				ch <- time.Now()
				return
			}
			select {
			case <-ctx.Done():
			case <-time.After(50 * time.Millisecond):
			}
		}
	}()
	return ch
}

// committedCount returns how many events are committed now, as the commit
// log says, retrying while PostgreSQL is unreachable.
func (s *scene) committedCount() int {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	for {
		var n int
		err := s.admin.QueryRow(ctx, `SELECT COALESCE(sum(cardinality(ids)), 0) FROM commit_log`).Scan(&n)
		if err == nil {
			return n
		}
		if ctx.Err() != nil {
			s.fatal("count committed events: %v", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// problem records something that went wrong and fails the test, going on.
func (s *scene) problem(format string, args ...any) {
	s.t.Helper()
	msg := fmt.Sprintf(format, args...)
	s.result.Problems = append(s.result.Problems, msg)
	s.t.Errorf("%s (seed %d): %s", s.name, s.seed, msg)
}

// fatal records a problem and stops the scenario.
func (s *scene) fatal(format string, args ...any) {
	s.t.Helper()
	s.problem(format, args...)
	s.t.FailNow()
}

// startLoad starts the writers and waits until events flow.
func (s *scene) startLoad() {
	s.start = time.Now()
	s.load = chaos.StartLoad(s.writer, chaos.LoadOptions{Writers: s.plan.writers, Rate: s.plan.rate, Seed: s.seed, Name: s.name})
	require.Eventually(s.t, func() bool { return s.count() >= 100 }, time.Minute, 50*time.Millisecond,
		"events should flow before the first fault")
	// Past the writers' first burst, before the first fault.
	time.Sleep(2 * time.Second)
}

// startRelay starts a relay, through the links when given.
func (s *scene) startRelay(pgLink, natsLink *chaos.Link) *member {
	s.started++
	m := &member{name: fmt.Sprintf("relay-%d", s.started), pgLink: pgLink, natsLink: natsLink}
	env := map[string]string{}
	for k, v := range s.env {
		env[k] = v
	}
	if pgLink != nil {
		env["RELAY_POSTGRES_URL"] = fmt.Sprintf("postgres://postgres@%s/%s?sslmode=disable", pgLink.Addr(), s.db)
	}
	if natsLink != nil {
		env["RELAY_NATS_URL"] = "nats://" + natsLink.Addr()
	}
	m.r = e2e.StartRelay(s.t, s.bin, env)
	s.relays = append(s.relays, m)
	s.result.Relays++
	return m
}

// live returns the relays the suite has not stopped.
func (s *scene) live() []*member {
	var out []*member
	for _, m := range s.relays {
		if !m.gone {
			out = append(out, m)
		}
	}
	return out
}

// role asks a relay's /readyz: ready reports 200, role what it says it is.
func role(m *member) (ready bool, role string) {
	if m.paused {
		return false, "paused"
	}
	code, body := m.r.Get("/readyz")
	var probe struct {
		Role string `json:"role"`
	}
	_ = json.Unmarshal([]byte(body), &probe) // an unanswered probe has no role
	return code == 200, probe.Role
}

// settle waits until one relay leads and streams and every other live relay
// stands by, and returns the leader.
func (s *scene) settle() *member {
	var last string
	deadline := time.Now().Add(2 * time.Minute)
	for time.Now().Before(deadline) {
		var leader *member
		unsettled := 0
		var states []string
		for _, m := range s.live() {
			ready, r := role(m)
			states = append(states, fmt.Sprintf("%s %s ready=%t", m.name, r, ready))
			switch {
			case ready && r == "leader" && leader == nil:
				leader = m
			case ready && r == "standby":
			default:
				unsettled++
			}
		}
		last = strings.Join(states, ", ")
		if leader != nil && unsettled == 0 {
			return leader
		}
		s.checkRelays()
		time.Sleep(50 * time.Millisecond)
	}
	s.fatal("relays did not settle on one ready leader within 2m: %s", last)
	return nil
}

// waitRole waits until m is ready in role want and returns the time it took
// since from.
func (s *scene) waitRole(m *member, want string, from time.Time, timeout time.Duration) time.Duration {
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		if ready, r := role(m); ready && r == want {
			return time.Since(from)
		}
		if m.r.Exited() {
			s.fatal("%s exited while waiting for it to be %s", m.name, want)
		}
		time.Sleep(50 * time.Millisecond)
	}
	_, r := role(m)
	s.fatal("%s did not become a ready %s within %s (role %q)", m.name, want, timeout, r)
	return 0
}

// takeover waits until one of candidates leads and streams, records the time
// since the injection, and returns the new leader.
func (s *scene) takeover(f *chaos.Fault, at time.Time, candidates ...*member) *member {
	deadline := time.Now().Add(time.Minute)
	for time.Now().Before(deadline) {
		for _, m := range candidates {
			if ready, r := role(m); ready && r == "leader" {
				f.Takeover, f.HasTakeover = time.Since(at), true
				return m
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	s.fatal("%s: no relay of %d took over within 1m", f.Kind, len(candidates))
	return nil
}

// harvest adds m's counters to the scene's, once, before m goes.
func (s *scene) harvest(m *member) {
	if m.harvested {
		return
	}
	m.harvested = true
	mt := m.r.Metrics()
	s.result.Relay.Add(chaos.RelayCounters{
		Published:  mt[metricPublished],
		Skipped:    mt["outbox_relay_pump_skipped_total"],
		Duplicates: mt["outbox_relay_sink_duplicates_total"],
		WrongSeq:   mt[metricWrongSeq],
		Resyncs:    mt["outbox_relay_pump_resyncs_total"],
		Reconnects: mt["outbox_relay_cdc_reconnects_total"],
		// The log, unlike the metrics, is still complete after the fact.
		EndedOldSessions: float64(strings.Count(m.r.Logs(), chaos.EndedOldSessionLine)),
	})
}

// kill kills m with SIGKILL, after reading its counters.
func (s *scene) kill(m *member) {
	s.harvest(m)
	m.gone = true
	m.r.Kill()
}

// stopRelay stops m with SIGTERM; it must exit 0.
func (s *scene) stopRelay(m *member) {
	s.harvest(m)
	m.gone = true
	code, err := m.r.Stop(time.Minute)
	if err != nil || code != 0 {
		s.problem("%s did not stop cleanly on SIGTERM: exit code %d, %v", m.name, code, err)
	}
}

// checkRelays fails when a relay exited that the suite did not stop.
func (s *scene) checkRelays() {
	for _, m := range s.relays {
		if !m.gone && m.r.Exited() {
			m.gone = true
			code, _ := m.r.Wait(time.Second)
			s.problem("%s exited by itself with code %d; log tail:\n%s", m.name, code, tailLines(m.r.Logs(), 30))
		}
	}
}

func tailLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// finish stops the load, waits for the stream to hold everything committed,
// stops the relays and compares the stream with the commit log.
func (s *scene) finish() {
	t := s.t
	s.result.Load = s.load.Stop()
	expected := s.writer.Committed(t)
	s.result.Committed = len(expected)
	deadline := time.Now().Add(s.plan.recoverTimeout)
	for time.Now().Before(deadline) {
		if s.count() >= len(expected) {
			s.result.CaughtUp = true
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if !s.result.CaughtUp {
		s.problem("the stream did not reach the %d committed events within %s of the load stopping; it holds %d",
			len(expected), s.plan.recoverTimeout, s.count())
	}
	s.checkRelays()
	// Standbys first, so that no one takes over from the stopped leader.
	live := s.live()
	for _, m := range live {
		if _, r := role(m); r != "leader" {
			s.stopRelay(m)
		}
	}
	for _, m := range s.live() {
		s.stopRelay(m)
	}
	if data, err := os.ReadFile(s.pg.LogPath()); err == nil {
		s.result.Server = chaos.CountServerLog(string(data))
	}
	// A cluster's stream can take longer to read back than a test's
	// default budget, hence the explicit context.
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	stored, err := s.stored(ctx)
	if err != nil {
		s.fatal("read the stream back: %v", err)
	}
	s.result.Verdict = e2e.Compare(expected, stored)
	s.result.Duration = time.Since(s.start)
	if !s.result.Verdict.OK() {
		s.problem("stream vs commit log: %s; %s", s.result.Verdict, s.aroundDivergence(expected, stored))
	}
	s.finished = true
	s.report.Add(s.result)
	t.Logf("%s: %d events committed (%+v), %d faults, %d relays started: %s", s.name, len(expected), s.result.Load,
		len(s.result.Faults), s.result.Relays, s.result.Verdict)
}

// aroundDivergence names the first stream position where the stream differs
// from the commit order, and the faults injected just before it.
func (s *scene) aroundDivergence(expected, stored []string) string {
	i := 0
	for i < len(stored) && i < len(expected) && stored[i] == expected[i] {
		i++
	}
	msg := fmt.Sprintf("the stream first differs from the commit order at sequence %d", i+1)
	var before, after *chaos.Fault
	for k := range s.result.Faults {
		f := &s.result.Faults[k]
		if f.StreamSeq <= i {
			before = f
		} else if after == nil {
			after = f
		}
	}
	if before != nil {
		msg += fmt.Sprintf("; the last fault before it: %s on %s at %s (stream then at %d)", before.Kind, before.Target, before.At.Round(time.Millisecond), before.StreamSeq)
	}
	if after != nil {
		msg += fmt.Sprintf("; the next: %s at %s", after.Kind, after.At.Round(time.Millisecond))
	}
	return msg
}

// cleanup records a scenario that stopped early and keeps the logs of a
// failed one.
func (s *scene) cleanup() {
	if !s.finished {
		if s.load != nil {
			s.result.Load = s.load.Stop()
		}
		s.result.Duration = time.Since(s.start)
		s.result.Problems = append(s.result.Problems, "the scenario stopped before its final check (see the test log)")
		s.report.Add(s.result)
	}
	dir := os.Getenv(chaos.EnvLogDir)
	if dir == "" && !s.t.Failed() {
		return
	}
	if dir == "" {
		var err error
		if dir, err = os.MkdirTemp("", "outbox-relay-chaos-"); err != nil {
			s.t.Logf("keep logs: %v", err)
			return
		}
	}
	dir = filepath.Join(dir, fmt.Sprintf("%s-seed-%d", s.name, s.seed))
	if err := os.MkdirAll(dir, 0o755); err != nil {
		s.t.Logf("keep logs: %v", err)
		return
	}
	for _, m := range s.relays {
		_ = os.WriteFile(filepath.Join(dir, m.name+".log"), []byte(m.r.Logs()), 0o644)
	}
	if data, err := os.ReadFile(s.pg.LogPath()); err == nil {
		_ = os.WriteFile(filepath.Join(dir, "postgres.log"), data, 0o644)
	}
	var faults strings.Builder
	for _, f := range s.result.Faults {
		fmt.Fprintf(&faults, "%+v\n", f)
	}
	_ = os.WriteFile(filepath.Join(dir, "faults.txt"), []byte(faults.String()), 0o644)
	s.t.Logf("%s: relay and PostgreSQL logs kept in %s", s.name, dir)
}

// hold lets a fault last.
func (s *scene) hold(lo, hi time.Duration) { time.Sleep(chaos.Between(s.rng, lo, hi)) }

type faultFunc = func(s *scene, f *chaos.Fault, inject, heal func() time.Time)

// chaosProcesses: relay kills, stops, races and freezes; PostgreSQL and NATS
// restarts.
func chaosProcesses(t *testing.T, s *scene) {
	s.result.Description = "one relay (two during a race or a freeze) against PostgreSQL and one NATS server; the relay's processes and both servers are stopped, killed, frozen and restarted. The stream's duplicate window is 1 s, so replays after a restart are kept out by the relay's stream position check, not by JetStream's deduplication"
	s.result.Setup = "PostgreSQL, 1 NATS server, 1–2 relays"
	ns := testenv.StartNATS(t)
	s.nc = ns.Connect(t)
	s.env["RELAY_NATS_URL"] = ns.URL()
	s.env["RELAY_CREATE_STREAM"] = "true"
	s.env["RELAY_DUPLICATE_WINDOW"] = "1s"
	s.startRelay(nil, nil)
	s.settle()
	s.startLoad()

	specs := []faultSpec{
		relaySigkill(),
		relaySigterm(),
		{"relay-race", func(s *scene, f *chaos.Fault, inject, heal func() time.Time) {
			old := s.settle()
			f.Target = old.name
			at := inject()
			s.kill(old)
			a, b := s.startRelay(nil, nil), s.startRelay(nil, nil)
			heal()
			winner := s.takeover(f, at, a, b)
			loser := a
			if winner == a {
				loser = b
			}
			s.waitRole(loser, "standby", at, time.Minute)
			f.Detail = fmt.Sprintf("%s and %s raced; %s won", a.name, b.name, winner.name)
			s.stopRelay(loser)
		}},
		{"relay-pause", func(s *scene, f *chaos.Fault, inject, heal func() time.Time) {
			old := s.settle()
			standby := s.startRelay(nil, nil)
			s.waitRole(standby, "standby", time.Now(), time.Minute)
			f.Target = old.name
			at := inject()
			old.paused = true
			old.r.Signal(syscall.SIGSTOP)
			s.takeover(f, at, standby)
			s.hold(500*time.Millisecond, 2*time.Second)
			old.r.Signal(syscall.SIGCONT)
			old.paused = false
			healed := heal()
			stepped := s.waitRole(old, "standby", healed, time.Minute)
			f.Detail = fmt.Sprintf("%s took over; the resumed leader stood by after %s", standby.name, stepped.Round(time.Millisecond))
			s.stopRelay(old)
		}},
		{"postgres-fast-restart", pgRestart("fast")},
		{"postgres-crash-restart", pgRestart("immediate")},
		natsRestart(ns),
	}
	s.runFaults(specs, s.plan.repeat)
	s.finish()
}

// relaySigkill kills the leading relay and starts another.
func relaySigkill() faultSpec {
	return faultSpec{"relay-sigkill", func(s *scene, f *chaos.Fault, inject, heal func() time.Time) {
		old := s.settle()
		f.Target = old.name
		at := inject()
		s.kill(old)
		time.Sleep(chaos.Between(s.rng, 0, time.Second)) // a supervisor's restart delay
		m := s.startRelay(nil, nil)
		heal()
		s.takeover(f, at, m)
		f.Detail = fmt.Sprintf("%s replaced it", m.name)
	}}
}

// relaySigterm stops the leading relay and starts another.
func relaySigterm() faultSpec {
	return faultSpec{"relay-sigterm", func(s *scene, f *chaos.Fault, inject, heal func() time.Time) {
		old := s.settle()
		f.Target = old.name
		at := inject()
		s.stopRelay(old)
		stopped := time.Since(at)
		m := s.startRelay(nil, nil)
		heal()
		s.takeover(f, at, m)
		f.Detail = fmt.Sprintf("exited after %s; %s replaced it", stopped.Round(time.Millisecond), m.name)
	}}
}

// natsRestart stops the NATS server for a moment.
func natsRestart(ns *testenv.NATS) faultSpec {
	return faultSpec{"nats-restart", func(s *scene, f *chaos.Fault, inject, heal func() time.Time) {
		s.settle()
		f.Target = "NATS server"
		inject()
		ns.Stop(s.t)
		s.hold(500*time.Millisecond, 3*time.Second)
		ns.Start(s.t)
		heal()
	}}
}

func pgRestart(mode string) faultFunc {
	return func(s *scene, f *chaos.Fault, inject, heal func() time.Time) {
		s.settle()
		f.Target = "PostgreSQL"
		inject()
		s.pg.Stop(s.t, mode)
		s.hold(500*time.Millisecond, 3*time.Second)
		s.pg.Start(s.t)
		heal()
	}
}

// chaosNetwork: faults on the wire between the relays and the servers.
func chaosNetwork(t *testing.T, s *scene) {
	s.result.Description = "two relays, a leader and a standby, each reaching PostgreSQL and NATS through its own toxiproxy links; every fault is put on the current leader's links"
	s.result.Setup = "PostgreSQL, 1 NATS server, 2 relays behind toxiproxy"
	ns := testenv.StartNATS(t)
	s.nc = ns.Connect(t)
	s.env["RELAY_NATS_URL"] = ns.URL()
	s.env["RELAY_CREATE_STREAM"] = "true"
	network := chaos.NewNetwork()
	t.Cleanup(network.Close)
	link := func(name, upstream string) *chaos.Link {
		l, err := network.Link(name, upstream)
		require.NoError(t, err)
		return l
	}
	pgAddr := fmt.Sprintf("127.0.0.1:%d", s.pg.Port())
	natsAddr := fmt.Sprintf("127.0.0.1:%d", ns.Port())
	s.startRelay(link("relay-1-postgres", pgAddr), link("relay-1-nats", natsAddr))
	s.settle()
	s.startRelay(link("relay-2-postgres", pgAddr), link("relay-2-nats", natsAddr))
	s.settle()
	s.startLoad()

	// onLeader builds a fault on the leader's link to PostgreSQL or NATS.
	onLeader := func(kind string, pg bool, strike func(s *scene, l *chaos.Link, f *chaos.Fault) error, lo, hi time.Duration) faultSpec {
		return faultSpec{kind, func(s *scene, f *chaos.Fault, inject, heal func() time.Time) {
			leader := s.settle()
			l := leader.natsLink
			if pg {
				l = leader.pgLink
			}
			f.Target = l.Name()
			inject()
			require.NoError(t, strike(s, l, f))
			s.hold(lo, hi)
			require.NoError(t, l.Heal())
			heal()
			if now := s.settle(); now != leader {
				f.Detail = strings.TrimPrefix(f.Detail+"; "+now.name+" took over", "; ")
			}
		}}
	}
	cut := func(_ *scene, l *chaos.Link, _ *chaos.Fault) error { return l.Cut() }
	latency := func(s *scene, l *chaos.Link, f *chaos.Fault) error {
		d := chaos.Between(s.rng, 50*time.Millisecond, 200*time.Millisecond)
		jitter := d / 5
		f.Detail = fmt.Sprintf("%s ± %s each way", d.Round(time.Millisecond), jitter.Round(time.Millisecond))
		return l.Latency(d, jitter)
	}
	bandwidth := func(s *scene, l *chaos.Link, f *chaos.Fault) error {
		kbps := int64(16 + s.rng.IntN(49))
		f.Detail = fmt.Sprintf("%d KB/s", kbps)
		return l.Bandwidth(kbps)
	}
	blackhole := func(_ *scene, l *chaos.Link, _ *chaos.Fault) error { return l.Blackhole() }
	specs := []faultSpec{
		onLeader("pg-cut", true, cut, time.Second, 4*time.Second),
		onLeader("nats-cut", false, cut, time.Second, 4*time.Second),
		onLeader("pg-latency", true, latency, 3*time.Second, 6*time.Second),
		onLeader("nats-latency", false, latency, 3*time.Second, 6*time.Second),
		onLeader("pg-bandwidth", true, bandwidth, 3*time.Second, 6*time.Second),
		onLeader("nats-bandwidth", false, bandwidth, 3*time.Second, 6*time.Second),
		onLeader("nats-blackhole", false, blackhole, 2*time.Second, 12*time.Second),
		{"pg-blackhole", leaderVanishes(false)},
		{"zombie-leader", leaderVanishes(true)},
	}
	s.runFaults(specs, s.plan.repeat)
	s.finish()
}

// leaderVanishes blackholes the leader's link to PostgreSQL: the standby
// must take over once the server has ended the silent leader's lock session.
// With backlog, the leader's link to NATS is throttled first, so that when
// it is cut off from PostgreSQL it still has publishes in flight, which keep
// reaching the stream after the standby has started publishing.
func leaderVanishes(backlog bool) faultFunc {
	return func(s *scene, f *chaos.Fault, inject, heal func() time.Time) {
		t := s.t
		leader := s.settle()
		var standby *member
		for _, m := range s.live() {
			if m != leader {
				standby = m
			}
		}
		f.Target = leader.pgLink.Name()
		oldWrong, newWrong := metric(leader, metricWrongSeq), metric(standby, metricWrongSeq)
		inject()
		if backlog {
			kbps := int64(2 + s.rng.IntN(5))
			f.Target += " (and " + leader.natsLink.Name() + " throttled)"
			require.NoError(t, leader.natsLink.Bandwidth(kbps))
			s.hold(2*time.Second, 4*time.Second)
			f.Detail = fmt.Sprintf("NATS link at %d KB/s; ", kbps)
		}
		// Takeover counts from the cut, not from the throttling before it.
		cut := time.Now()
		require.NoError(t, leader.pgLink.Blackhole())
		s.takeover(f, cut, standby)
		storedAtTakeover := metric(leader, metricPublished)
		if f.Takeover > 15*time.Second {
			s.problem("the standby took %s to replace a leader cut off from PostgreSQL; it should take a few seconds (lease 5s)", f.Takeover)
		}
		s.hold(time.Second, 3*time.Second)
		require.NoError(t, leader.pgLink.Heal())
		require.NoError(t, leader.natsLink.Heal())
		healed := heal()
		back := s.waitRole(leader, "standby", healed, 2*time.Minute)
		late := metric(leader, metricPublished) - storedAtTakeover
		f.Detail += fmt.Sprintf("%s took over; the old leader had %.0f more messages stored after that, stood by %s after the links healed; "+
			"publishes refused for a wrong last sequence: %.0f of the old leader's, %.0f of the new one's",
			standby.name, late, back.Round(time.Millisecond), metric(leader, metricWrongSeq)-oldWrong, metric(standby, metricWrongSeq)-newWrong)
	}
}

// Relay metrics the suite reads.
const (
	metricPublished = "outbox_relay_sink_published_total"
	metricWrongSeq  = `outbox_relay_sink_publish_errors_total{kind="wrong_sequence"}`
)

// metric reads one sample from a relay's /metrics; 0 when it does not answer.
func metric(m *member, name string) float64 { return m.r.Metrics()[name] }

// chaosCluster: a three-node NATS cluster with an R3 stream.
func chaosCluster(t *testing.T, s *scene) {
	s.result.Description = "a three-node JetStream cluster on loopback with an R3 stream; the node leading the stream, or a follower, is shut down and restarted"
	s.result.Setup = "PostgreSQL, 3-node NATS cluster (R3 stream), 1 relay"
	cluster := testenv.StartNATSCluster(t, 3)
	s.nc = cluster.Connect(t)
	createR3Stream(t, s.nc)
	s.env["RELAY_NATS_URL"] = cluster.URLs()
	s.startRelay(nil, nil)
	s.settle()
	s.startLoad()

	specs := []faultSpec{
		{"nats-stream-leader-stop", func(s *scene, f *chaos.Fault, inject, heal func() time.Time) {
			s.settle()
			waitReplicasCurrent(t, s.nc)
			node := cluster.StreamLeader(t, chaosStream)
			f.Target = fmt.Sprintf("node n%d (stream leader)", node)
			at := inject()
			cluster.StopNode(t, node)
			next := cluster.StreamLeader(t, chaosStream)
			f.Takeover, f.HasTakeover = time.Since(at), true
			f.Detail = fmt.Sprintf("n%d took over the stream", next)
			s.hold(time.Second, 4*time.Second)
			cluster.StartNode(t, node)
			heal()
		}},
		{"nats-follower-stop", func(s *scene, f *chaos.Fault, inject, heal func() time.Time) {
			s.settle()
			waitReplicasCurrent(t, s.nc)
			leader := cluster.StreamLeader(t, chaosStream)
			node := (leader + 1 + s.rng.IntN(2)) % cluster.Size()
			f.Target = fmt.Sprintf("node n%d (stream follower)", node)
			inject()
			cluster.StopNode(t, node)
			s.hold(time.Second, 4*time.Second)
			cluster.StartNode(t, node)
			heal()
		}},
	}
	s.runFaults(specs, s.plan.clusterRepeat)
	s.finish()
}

// chaosKnownIssues are faults in which a peer goes silent without closing
// anything. The relay rode them out without losing, doubling or reordering
// anything, but this suite found it stalling for minutes with /readyz 200
// (the figures below), until the relay got a NATS ping interval of 10 s and
// --replication-timeout. Each fault asserts its target.
//
//   - nats-node-silent: in a three-node cluster, the node the relay is
//     connected to stops answering without closing the connection (a hung
//     host or a partition); the other two nodes and the stream are fine. The
//     relay kept the dead connection until the NATS client's pings timed out
//     (nats.go's default PingInterval of 2 minutes: 5m56s measured), since
//     PubAck and request timeouts do not make it reconnect. Target:
//     publishing again through another node within 60 s.
//   - walsender-freeze: the walsender serving the relay's replication session
//     is frozen (SIGSTOP), so the session goes silent while its TCP
//     connection stays up and the lock session is fine. The relay's reader
//     had no receive timeout (a read deadline only paced status updates), so
//     it waited as long as the session stayed silent, with /healthz and
//     /readyz 200. Target: the relay notices within 90 s (it stops reporting
//     ready, and ends and restarts the session).
func chaosKnownIssues(t *testing.T, s *scene) {
	s.result.Description = "a three-node JetStream cluster (R3 stream) behind one toxiproxy link per node, and one relay that knows only the links; faults that make a peer go silent without closing anything"
	s.result.Setup = "PostgreSQL, 3-node NATS cluster behind toxiproxy (R3 stream), 1 relay"
	// Without advertising, clients know only the URLs they are given, so
	// the relay's every connection goes through a link.
	cluster := testenv.StartNATSCluster(t, 3, testenv.WithNATSConfig(func(o *server.Options) { o.Cluster.NoAdvertise = true }))
	s.nc = cluster.Connect(t)
	createR3Stream(t, s.nc)
	network := chaos.NewNetwork()
	t.Cleanup(network.Close)
	links := make([]*chaos.Link, cluster.Size())
	urls := make([]string, cluster.Size())
	for i := range links {
		l, err := network.Link(fmt.Sprintf("nats-n%d", i), strings.TrimPrefix(cluster.NodeURL(i), "nats://"))
		require.NoError(t, err)
		links[i], urls[i] = l, "nats://"+l.Addr()
	}
	s.env["RELAY_NATS_URL"] = strings.Join(urls, ",")
	s.startRelay(nil, nil)
	s.settle()
	s.startLoad()

	specs := []faultSpec{
		{"nats-node-silent", func(s *scene, f *chaos.Fault, inject, heal func() time.Time) {
			relay := s.settle()
			waitReplicasCurrent(t, s.nc)
			node := relayNode(t, cluster)
			f.Target = links[node].Name() + " (the relay's node)"
			at := inject()
			require.NoError(t, links[node].Blackhole())
			// What the node stored before the blackhole took hold does not
			// count as publishing again.
			time.Sleep(time.Second)
			base := e2e.StreamCount(s.nc, chaosStream)
			for base < 0 && time.Since(at) < time.Minute {
				time.Sleep(100 * time.Millisecond)
				base = e2e.StreamCount(s.nc, chaosStream)
			}
			// Wait for the relay to publish through another node; give up
			// after a while, since the client's pings do time out at last.
			deadline := at.Add(8 * time.Minute)
			var resumed time.Duration
			readyWhileStalled := 0
			for time.Now().Before(deadline) {
				if e2e.StreamCount(s.nc, chaosStream) > base {
					resumed = time.Since(at)
					break
				}
				if ready, _ := role(relay); ready {
					readyWhileStalled++
				}
				time.Sleep(500 * time.Millisecond)
			}
			require.NoError(t, links[node].Heal())
			heal()
			if resumed == 0 {
				f.Detail = fmt.Sprintf("the relay did not publish again within %s", 8*time.Minute)
				s.problem("%s: the relay did not publish through another NATS node within %s", f.Kind, 8*time.Minute)
				return
			}
			f.Takeover, f.HasTakeover = resumed, true
			f.Detail = fmt.Sprintf("published again through another node after %s; /readyz said ready on %d of its probes meanwhile",
				resumed.Round(100*time.Millisecond), readyWhileStalled)
			if resumed > time.Minute {
				s.problem("%s: the relay took %s to publish again through another NATS node (target: 60s): "+
					"it keeps a silent connection until the NATS client's pings time out", f.Kind, resumed.Round(time.Second))
			}
		}},
		{"walsender-freeze", func(s *scene, f *chaos.Fault, inject, heal func() time.Time) {
			relay := s.settle()
			pid := s.walsender()
			f.Target = fmt.Sprintf("walsender pid %d", pid)
			at := inject()
			require.NoError(t, syscall.Kill(pid, syscall.SIGSTOP))
			// Until the relay notices, or a time a fix must beat by far.
			var noticed time.Duration
			for time.Since(at) < 2*time.Minute {
				if ready, _ := role(relay); !ready {
					noticed = time.Since(at)
					break
				}
				time.Sleep(500 * time.Millisecond)
			}
			stalled := e2e.StreamCount(s.nc, chaosStream)
			require.NoError(t, syscall.Kill(pid, syscall.SIGCONT))
			heal()
			if noticed == 0 {
				f.Detail = fmt.Sprintf("for %s the relay published nothing (the stream stayed at %d of %d events committed) and reported ready throughout",
					time.Since(at).Round(time.Second), stalled, s.committedCount())
				s.problem("%s: the relay did not notice a silent replication session within 2m (target: 90s); it waited with /readyz 200", f.Kind)
				return
			}
			f.Takeover, f.HasTakeover = noticed, true
			f.Detail = fmt.Sprintf("the relay stopped reporting ready after %s", noticed.Round(100*time.Millisecond))
			if noticed > 90*time.Second {
				s.problem("%s: the relay took %s to notice a silent replication session (target: 90s)", f.Kind, noticed.Round(time.Second))
			}
		}},
	}
	s.runFaults(specs, 1)
	s.finish()
}

// relayNode returns the cluster node the relay is connected to.
func relayNode(t *testing.T, cluster *testenv.NATSCluster) int {
	t.Helper()
	for i := range cluster.Size() {
		srv := cluster.Node(i)
		if srv == nil {
			continue
		}
		conns, err := srv.Connz(&server.ConnzOptions{})
		require.NoError(t, err)
		for _, c := range conns.Conns {
			if c.Name == "outbox-relay" {
				return i
			}
		}
	}
	t.Fatal("no cluster node has a connection from the relay")
	return -1
}

// walsender returns the pid of the process serving the slot.
func (s *scene) walsender() int {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var pid *int
	err := s.admin.QueryRow(ctx, `SELECT active_pid FROM pg_replication_slots WHERE slot_name = 'outbox_relay'`).Scan(&pid)
	require.NoError(s.t, err)
	require.NotNil(s.t, pid, "the slot should be active")
	return *pid
}

// createR3Stream creates the outbox stream with three replicas, retrying
// while the cluster settles.
func createR3Stream(t *testing.T, nc *nats.Conn) {
	t.Helper()
	js, err := jetstream.New(nc)
	require.NoError(t, err)
	require.Eventually(t, func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_, err := js.CreateStream(ctx, jetstream.StreamConfig{
			Name:       chaosStream,
			Subjects:   []string{"outbox.*.*"},
			Storage:    jetstream.FileStorage,
			Replicas:   3,
			Duplicates: 2 * time.Minute,

			AllowAtomicPublish: atomicMode(),
			AllowBatchPublish:  batchMode(),
		})
		if err != nil {
			t.Logf("create R3 stream: %v", err)
		}
		return err == nil
	}, time.Minute, 500*time.Millisecond, "create the R3 stream")
	waitReplicasCurrent(t, nc)
}

// waitReplicasCurrent waits until the stream has a leader and every replica
// is online and current, so that a fault never strikes a cluster still
// recovering from the last one.
func waitReplicasCurrent(t *testing.T, nc *nats.Conn) {
	t.Helper()
	js, err := jetstream.New(nc)
	require.NoError(t, err)
	current := func() string {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		s, err := js.Stream(ctx, chaosStream)
		if err != nil {
			return err.Error()
		}
		info := s.CachedInfo()
		if info.Cluster == nil || info.Cluster.Leader == "" || len(info.Cluster.Replicas) != 2 {
			return fmt.Sprintf("cluster %+v", info.Cluster)
		}
		for _, r := range info.Cluster.Replicas {
			if !r.Current || r.Offline {
				return fmt.Sprintf("replica %s current=%t offline=%t lag=%d", r.Name, r.Current, r.Offline, r.Lag)
			}
		}
		return ""
	}
	deadline := time.Now().Add(2 * time.Minute)
	for {
		why := current()
		if why == "" {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("stream replicas not current after 2m: %s", why)
		}
		time.Sleep(200 * time.Millisecond)
	}
}
