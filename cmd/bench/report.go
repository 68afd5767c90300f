package main

import (
	"fmt"
	"io"
	"math"
	"os"
	"runtime"
	"strings"
	"text/tabwriter"

	"github.com/nats-io/nats-server/v2/server"
)

// results is everything one run measured; it is also the JSON written.
type results struct {
	Date     string      `json:"date"`
	Command  string      `json:"command"`
	Seconds  float64     `json:"duration_seconds"`
	Machine  machine     `json:"machine"`
	Settings settings    `json:"settings"`
	Drains   []drainCase `json:"drains"`
	Live     *liveResult `json:"live,omitempty"`
	// Outage is the relay's memory across a NATS outage.
	Outage  *outageResult  `json:"outage,omitempty"`
	Profile *profileResult `json:"profile,omitempty"`
	// LiveProfile is the relay binary's CPU profile at 1,000 events/s.
	LiveProfile *liveProfile `json:"live_profile,omitempty"`
	Targets     []target     `json:"targets"`
	Errors      []string     `json:"errors,omitempty"`

	// Modes compares the publishing modes.
	Modes *modesResult `json:"modes,omitempty"`
}

// drainCase is one backlog shape drained by the two limits and the relay.
type drainCase struct {
	Name    string `json:"name"`
	Shape   int    `json:"txn_rows"`
	Payload int    `json:"payload_bytes_nominal"`
	Events  int    `json:"events"`
	Large   bool   `json:"large"`
	// Variant names a relay setting other than its defaults, for
	// comparison; such a case is no target.
	Variant string `json:"variant,omitempty"`
	Runs    int    `json:"runs"`
	// The events per second of every run; the best is reported in full.
	InputRuns  []float64 `json:"input_limit_runs"`
	OutputRuns []float64 `json:"output_limit_runs"`
	RelayRuns  []float64 `json:"relay_runs"`
	// RelayAll is every run of the relay in full, for a look at the
	// spread (throughput on a busy machine can be bimodal).
	RelayAll []relayRun   `json:"relay_all_runs,omitempty"`
	Write    backlogWrite `json:"backlog_write"`
	Input    pass         `json:"input_limit"`
	Output   pass         `json:"output_limit"`
	Relay    relayRun     `json:"relay"`
	// Limit is the lower of the two limits, in events per second.
	Limit     float64 `json:"lower_limit_events_per_sec"`
	LimitName string  `json:"lower_limit"`
	// Ratio is the relay's events per second over Limit, from starting the
	// process; SteadyRatio counts from the first message stored.
	Ratio       float64 `json:"ratio"`
	SteadyRatio float64 `json:"steady_ratio"`
	// Reachable and ReachableRatio are set for a drain whose transactions
	// PostgreSQL decodes long before sending the first row (decodeFirst):
	// the rate any relay could reach once it sends it (reachable), and the
	// relay's rate over it.
	Reachable      float64 `json:"reachable_events_per_sec,omitempty"`
	ReachableRatio float64 `json:"ratio_to_reachable,omitempty"`
	// Baseline is the best drain of -baseline-relay's binary, and
	// BaselineRuns every run's rate.
	Baseline     *relayRun `json:"baseline,omitempty"`
	BaselineRuns []float64 `json:"baseline_runs,omitempty"`
}

type machine struct {
	NProc      int    `json:"nproc"`
	GoVersion  string `json:"go_version"`
	GOARCH     string `json:"goarch"`
	Kernel     string `json:"kernel"`
	CPUModel   string `json:"cpu_model"`
	MemTotal   string `json:"mem_total"`
	PostgreSQL string `json:"postgresql"`
	NATSServer string `json:"nats_server"`
	LoadAvg    string `json:"loadavg_at_start"`
}

type settings struct {
	Events      int     `json:"events"`
	Sizes       []int   `json:"payload_sizes"`
	Shapes      []int   `json:"txn_rows"`
	Window      int     `json:"publish_window"`
	Runs        int     `json:"runs"`
	LargeRuns   int     `json:"large_runs"`
	Writers     int     `json:"backlog_writers"`
	Large       bool    `json:"large"`
	LargeEvents int     `json:"large_events"`
	Rates       []int   `json:"live_rates"`
	LiveSeconds float64 `json:"live_seconds_per_rate"`
	IdleSeconds float64 `json:"idle_seconds"`
	Producers   int     `json:"live_producers"`
	// OutageEvents of OutagePayload bytes are written during the NATS
	// outage (0 when the phase did not run).
	OutageEvents  int      `json:"outage_events,omitempty"`
	OutagePayload int      `json:"outage_payload_bytes,omitempty"`
	Postgres      []string `json:"postgresql_settings"`
	RelayEnv      []string `json:"relay_env,omitempty"`
}

// target is one of the goals and whether this run met it.
type target struct {
	Name string `json:"name"`
	Want string `json:"want"`
	Got  string `json:"got"`
	Met  bool   `json:"met"`
}

// postgresSettings are internal/testenv's settings, which the benchmark
// keeps (the rest are PostgreSQL 15's defaults).
var postgresSettings = []string{
	"wal_level=logical", "fsync=off", "full_page_writes=off", "synchronous_commit=on (default)",
	"shared_buffers=64MB", "max_wal_senders=20", "max_replication_slots=20", "max_connections=100",
}

func settingsOf(o options) settings {
	s := settings{
		Events: o.events, Sizes: o.sizes, Shapes: o.shapes, Window: o.window, Runs: o.runs, LargeRuns: o.largeRuns, Writers: o.writers,
		Large: o.large, LargeEvents: o.largeEvents, Rates: o.rates, LiveSeconds: o.liveFor.Seconds(),
		IdleSeconds: o.idleFor.Seconds(), Producers: o.producers, Postgres: postgresSettings, RelayEnv: o.relayEnv,
	}
	if o.outage {
		s.OutageEvents, s.OutagePayload = o.outageEvents, o.outageSize
	}
	return s
}

func readMachine(e *env) machine {
	m := machine{
		NProc: runtime.NumCPU(), GoVersion: runtime.Version(), GOARCH: runtime.GOARCH,
		PostgreSQL: e.pgVer, NATSServer: server.VERSION,
	}
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		m.Kernel = strings.TrimSpace(string(b))
	}
	if b, err := os.ReadFile("/proc/loadavg"); err == nil {
		m.LoadAvg = strings.Join(strings.Fields(string(b))[:3], " ")
	}
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
				m.CPUModel = strings.TrimSpace(v)
				break
			}
		}
	}
	if b, err := os.ReadFile("/proc/meminfo"); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			if k, v, ok := strings.Cut(line, ":"); ok && k == "MemTotal" {
				var kb int64
				if _, err := fmt.Sscanf(strings.TrimSpace(v), "%d kB", &kb); err == nil {
					m.MemTotal = fmt.Sprintf("%.1f GiB", float64(kb)/(1<<20))
				}
			}
		}
	}
	return m
}

const mib = 1 << 20

// noisyShare is the share of the machine other tenants may take during a
// measurement before its verdict is flagged as noisy.
const noisyShare = 0.10

// noise flags a verdict whose measurements shared the machine with others.
func noise(uses ...cpuUse) string {
	worst := 0.0
	for _, u := range uses {
		worst = max(worst, u.otherShare())
	}
	if worst < noisyShare {
		return ""
	}
	return fmt.Sprintf("; noisy: others took %s of the CPUs", pct(worst))
}

// evaluate compares the run with the targets.
func evaluate(res *results) []target {
	var ts []target
	ratio := func(c drainCase) {
		if c.ReachableRatio == 0 && reachable(c) > 0 {
			// Results of a run before the field (-render).
			c.Reachable = reachable(c)
			c.ReachableRatio = c.Relay.EventsPerSec / c.Reachable
		}
		want := targetRatio(c)
		t := target{
			Name: "backlog drain, " + c.Name,
			Want: fmt.Sprintf(">= %.1f x lower limit", want),
			Got: fmt.Sprintf("%.2f x %s limit (steady %.2f)%s%s", c.Ratio, c.LimitName, c.SteadyRatio,
				noise(c.Relay.CPU, c.Input.CPU, c.Output.CPU), decodeFirst(c)),
			Met: c.Ratio >= want,
		}
		if c.ReachableRatio > 0 {
			// The target for such a drain: against what any
			// relay could reach once PostgreSQL sends the first row.
			t.Want = fmt.Sprintf(">= %.1f x what any relay could reach once PostgreSQL sends the first row", want)
			t.Got = fmt.Sprintf("%.2f x %s ev/s; %s", c.ReachableRatio, rate(c.Reachable), t.Got)
			t.Met = c.ReachableRatio >= want
		}
		ts = append(ts, t)
	}
	for _, c := range res.Drains {
		switch {
		case c.Variant != "":
			continue
		case c.Shape == 1, c.Shape == 10, c.Large && c.Shape >= c.Events:
			ratio(c)
		}
		if c.Large {
			ts = append(ts, target{
				Name: "peak RSS, " + c.Name, Want: "< 64 MiB",
				Got: fmt.Sprintf("%.1f MiB", float64(c.Relay.PeakRSS)/mib), Met: c.Relay.PeakRSS < 64*mib,
			})
		}
	}
	if o := res.Outage; o != nil {
		ts = append(ts, target{
			Name: "peak RSS across a NATS outage, " + o.Name,
			Want: fmt.Sprintf("< %d MiB (the chart's limit is 256 MiB)", rssTargetMiB),
			Got: fmt.Sprintf("%s MiB (outage %s, drain %s; %s of %s events read during the outage)",
				mibs(o.PeakRSS), mibs(o.OutagePeakRSS), mibs(o.DrainPeakRSS), count(o.ReadInOutage), count(o.Events)),
			Met: o.PeakRSS < rssTargetMiB*mib,
		})
		ts = append(ts, target{
			Name: "every event stored once, in commit order, after the NATS outage",
			Want: count(o.Events) + " of " + count(o.Events), Got: o.Check, Met: o.Once,
		})
	}
	ts = append(ts, modesTargets(res.Modes)...)
	if res.Live != nil {
		for _, r := range res.Live.Rates {
			if r.TargetRate != 1000 {
				continue
			}
			ts = append(ts, target{
				Name: "live latency p99 at 1,000/s (commit to stored)", Want: "< 10 ms",
				Got: fmt.Sprintf("%s ms (relay histogram: %s ms)%s", r.EndToEnd.P99, r.Histogram.P99, noise(r.CPU)),
				Met: float64(r.EndToEnd.P99) < 10,
			})
		}
		ts = append(ts, target{
			Name: "idle CPU", Want: "~0 (< 1% of a core)",
			Got: fmt.Sprintf("%.2f%% of a core (%.2f s in %.0f s)", res.Live.Idle.CPUShare*100, res.Live.Idle.CPUSeconds, res.Live.Idle.Seconds),
			Met: res.Live.Idle.CPUShare < 0.01,
		})
	}
	return ts
}

func metLabel(ok bool) string {
	if ok {
		return "met"
	}
	return "NOT MET"
}

func rate(v float64) string {
	if v >= 100 {
		return count(int(math.Round(v)))
	}
	return fmt.Sprintf("%.1f", v)
}

// table is rows of cells, rendered as aligned text or as Markdown.
type table struct {
	head []string
	rows [][]string
}

func (t *table) add(cells ...string) { t.rows = append(t.rows, cells) }

func (t *table) text(w io.Writer) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, strings.Join(t.head, "\t")+"\t")
	for _, r := range t.rows {
		fmt.Fprintln(tw, strings.Join(r, "\t")+"\t")
	}
	_ = tw.Flush() // writes to stdout or a buffer
}

func (t *table) markdown(b *strings.Builder) {
	b.WriteString("| " + strings.Join(t.head, " | ") + " |\n|")
	for i := range t.head {
		if i == 0 {
			b.WriteString(" --- |")
		} else {
			b.WriteString(" ---: |")
		}
	}
	b.WriteString("\n")
	for _, r := range t.rows {
		b.WriteString("| " + strings.Join(r, " | ") + " |\n")
	}
}

func pct(v float64) string { return fmt.Sprintf("%.0f%%", v*100) }

func drainTable(res *results) *table {
	t := &table{head: []string{
		"case", "events", "relay ev/s", "relay MB/s", "startup s", "steady ev/s",
		"input limit ev/s", "output limit ev/s", "ratio", "relay CPU s/100k", "peak RSS MiB", "others' CPU",
	}}
	for _, c := range res.Drains {
		t.add(c.Name, count(c.Events), rate(c.Relay.EventsPerSec), fmt.Sprintf("%.1f", c.Relay.MBPerSec),
			fmt.Sprintf("%.2f", c.Relay.StartupSeconds), rate(c.Relay.SteadyEventsPerSec),
			rate(c.Input.EventsPerSec), rate(c.Output.EventsPerSec),
			fmt.Sprintf("%.2f (%s)", c.Ratio, c.LimitName), fmt.Sprintf("%.2f", c.Relay.CPUPer100k),
			fmt.Sprintf("%.1f", float64(c.Relay.PeakRSS)/mib), pct(c.Relay.CPU.otherShare()))
	}
	return t
}

// perEvent renders CPU seconds spent on n events as microseconds per event.
func perEvent(seconds float64, n int) string { return fmt.Sprintf("%.1f", seconds/float64(n)*1e6) }

// perSyscalls renders read and write system calls per event.
func perSyscalls(reads, writes uint64, n int) string {
	return fmt.Sprintf("%.2f r + %.2f w", float64(reads)/float64(n), float64(writes)/float64(n))
}

// ceiling is the rate at which the relay's drain would use every core, were
// the work of the relay, NATS and PostgreSQL spread perfectly over them.
func ceiling(c drainCase) float64 {
	cpu := c.Relay.CPU.RelaySeconds + c.Relay.CPU.NATSSeconds + c.Relay.CPU.PGSeconds
	if cpu <= 0 {
		return 0
	}
	return float64(runtime.NumCPU()) * float64(c.Events) / cpu
}

// targetRatio is the drain target for a case: 0.9 of the lower
// limit in every case (issue 13; earlier runs asked 0.8 of the cases with
// more than one row per transaction), for a single huge transaction of what
// any relay could reach once PostgreSQL sends the first row (reachable).
func targetRatio(drainCase) float64 { return 0.9 }

// budget is the relay CPU per event (µs) that would let the drain reach its
// target ratio on this machine, were the cores shared perfectly: all the
// CPU there is at the target rate, less what NATS and PostgreSQL need.
// Negative means the servers alone leave no room.
func budget(c drainCase) float64 {
	if c.Limit <= 0 {
		return 0
	}
	servers := (c.Relay.CPU.NATSSeconds + c.Relay.CPU.PGSeconds) / float64(c.Events) * 1e6
	return float64(runtime.NumCPU())*1e6/(targetRatio(c)*c.Limit) - servers
}

func costTable(res *results) *table {
	t := &table{head: []string{
		"case", "relay µs/ev", "NATS µs/ev", "PostgreSQL µs/ev", "relay syscalls/ev", "NATS syscalls/ev", "CPU ceiling ev/s", "relay budget µs/ev",
		"input limit: PG µs/ev", "output limit: NATS µs/ev", "others' CPU (in, out)", "backlog written ev/s", "avg payload B",
	}}
	for _, c := range res.Drains {
		r := c.Relay.CPU
		t.add(c.Name, perEvent(r.RelaySeconds, c.Events), perEvent(r.NATSSeconds, c.Events), perEvent(r.PGSeconds, c.Events),
			perSyscalls(r.RelayReads, r.RelayWrites, c.Events), perSyscalls(r.NATSReads, r.NATSWrites, c.Events),
			rate(ceiling(c)), fmt.Sprintf("%.1f (%.1fx)", budget(c), targetRatio(c)), perEvent(c.Input.CPU.PGSeconds, c.Events), perEvent(c.Output.CPU.NATSSeconds, c.Events),
			pct(c.Input.CPU.otherShare())+", "+pct(c.Output.CPU.otherShare()),
			rate(c.Write.EventsPerSec), fmt.Sprintf("%.0f", c.Write.PayloadBytes))
	}
	return t
}

func liveTable(l *liveResult) *table {
	t := &table{head: []string{
		"rate", "achieved ev/s", "events", "e2e p50 ms", "e2e p99 ms", "e2e p99.9 ms", "e2e max ms",
		"hist p50 ms", "hist p99 ms", "hist p99.9 ms", "catch-up s", "relay µs/ev", "NATS µs/ev", "PostgreSQL µs/ev", "producers µs/ev", "busy", "others' CPU",
	}}
	for _, r := range l.Rates {
		t.add(r.Label, rate(r.AchievedRate), count(r.Events), r.EndToEnd.P50.String(), r.EndToEnd.P99.String(),
			r.EndToEnd.P999.String(), r.EndToEnd.Max.String(), r.Histogram.P50.String(), r.Histogram.P99.String(),
			r.Histogram.P999.String(), fmt.Sprintf("%.2f", r.CatchUp), perEvent(r.CPU.RelaySeconds, r.Events),
			perEvent(r.CPU.NATSSeconds, r.Events), perEvent(r.CPU.PGSeconds, r.Events), perEvent(r.CPU.SelfSeconds, r.Events),
			pct(r.CPU.MachineBusy), pct(r.CPU.otherShare()))
	}
	return t
}

// mibs renders bytes in MiB.
func mibs(b int64) string { return fmt.Sprintf("%.1f", float64(b)/mib) }

func outageTable(o *outageResult) *table {
	t := &table{head: []string{
		"case", "RSS before MiB", "outage s", "read in outage", "peak RSS outage MiB", "peak RSS drain MiB",
		"drain s", "drain ev/s", "drain MB/s", "first stored s", "relay µs/ev", "others' CPU", "stream",
	}}
	check := "every event once, in order"
	if !o.Once {
		check = o.Check
	}
	drain := []string{
		fmt.Sprintf("%.2f", o.Drain.Seconds), rate(o.Drain.EventsPerSec), fmt.Sprintf("%.1f", o.Drain.MBPerSec),
		fmt.Sprintf("%.2f", o.FirstStoredSeconds), perEvent(o.Drain.CPU.RelaySeconds, o.Events), pct(o.Drain.CPU.otherShare()),
	}
	if o.Drain.Events == 0 { // the drain failed
		for i := range drain {
			drain[i] = "-"
		}
	}
	row := []string{
		o.Name, mibs(o.RSSBefore), fmt.Sprintf("%.1f", o.OutageSeconds), count(o.ReadInOutage),
		mibs(o.OutagePeakRSS), mibs(o.DrainPeakRSS),
	}
	t.add(append(append(row, drain...), check)...)
	return t
}

// rssCurve renders the RSS samples of a phase ("outage" or "drain") as
// "seconds: MiB (events read)" pairs, at most every step seconds.
func rssCurve(o *outageResult, phase string, step float64) string {
	var parts []string
	next := -1.0
	for _, s := range o.Samples {
		if s.Phase != phase || s.Seconds < next {
			continue
		}
		next = s.Seconds + step
		parts = append(parts, fmt.Sprintf("%.1f s: %s (%s read)", s.Seconds, mibs(s.RSS), count(s.Read)))
	}
	return strings.Join(parts, ", ")
}

func targetTable(ts []target) *table {
	t := &table{head: []string{"target", "want", "got", "verdict"}}
	for _, x := range ts {
		t.add(x.Name, x.Want, x.Got, metLabel(x.Met))
	}
	return t
}

func profileTable(lines []profileLine, n int) *table {
	t := &table{head: []string{"flat", "flat%", "cum", "cum%", "function"}}
	for i, l := range lines {
		if i == n {
			break
		}
		t.add(l.Flat, l.FlatPct, l.Cum, l.CumPct, l.Func)
	}
	return t
}

func printReport(w io.Writer, res *results) {
	fmt.Fprintf(w, "\noutbox-relay benchmark, %s, %d CPUs, %s\n", res.Date, res.Machine.NProc, res.Machine.GoVersion)
	fmt.Fprintf(w, "command: %s\n", res.Command)
	if len(res.Drains) > 0 {
		fmt.Fprintf(w, "\nBacklog drain (written while the relay was stopped; ratio = relay / lower limit)\n")
		drainTable(res).text(w)
		fmt.Fprintf(w, "\nCPU per event during the relay's drain (µs), and the rate at which it would fill every core\n")
		costTable(res).text(w)
	}
	if res.Live != nil {
		fmt.Fprintf(w, "\nLive latency (one-row transactions; e2e = COMMIT returned -> stored in JetStream; hist = relay's commit_to_ack histogram)\n")
		liveTable(res.Live).text(w)
		fmt.Fprintf(w, "\nIdle: relay CPU %.2f s over %.0f s (%.2f%% of a core), RSS %.1f MiB; peak RSS over the live phase %.1f MiB\n",
			res.Live.Idle.CPUSeconds, res.Live.Idle.Seconds, res.Live.Idle.CPUShare*100, float64(res.Live.Idle.RSS)/mib, float64(res.Live.PeakRSS)/mib)
	}
	if o := res.Outage; o != nil {
		fmt.Fprintf(w, "\nMemory across a NATS outage (backlog written while NATS was down, drained once it was back; RSS in MiB)\n")
		outageTable(o).text(w)
		fmt.Fprintf(w, "RSS during the outage (s since NATS stopped: MiB): %s\nRSS during the drain: %s\n",
			rssCurve(o, "outage", 1), rssCurve(o, "drain", 1))
	}
	if res.Modes != nil {
		modesText(w, res.Modes)
	}
	if len(res.Targets) > 0 {
		fmt.Fprintf(w, "\nTargets\n")
		targetTable(res.Targets).text(w)
	}
	if p := res.Profile; p != nil {
		fmt.Fprintf(w, "\nProfile: in-process drain of %s events (%d-row txns, %d B): %s ev/s under pprof, %.1f allocs and %.0f B allocated per event, %d GCs\n",
			count(p.Events), p.Shape, p.Payload, rate(p.EventsPerSec), p.AllocsPerEvent, p.BytesPerEvent, p.GCCycles)
		fmt.Fprintf(w, "CPU, flat (%s):\n", p.Total)
		profileTable(p.TopFlat, 20).text(w)
		fmt.Fprintf(w, "\nCPU, cumulative, relay code only:\n")
		profileTable(p.TopRelayCum, 15).text(w)
		fmt.Fprintf(w, "\nAllocated bytes, flat:\n")
		profileTable(p.TopAllocSize, 12).text(w)
		fmt.Fprintf(w, "\nprofiles: %s, %s (base %s)\n", p.CPUProfile, p.AllocProfile, p.AllocBase)
	}
	if lp := res.LiveProfile; lp != nil {
		fmt.Fprintf(w, "\nProfile of the relay binary at %d events/s (%d s, %.0f µs CPU per event), cumulative (%s):\n", lp.Rate, lp.Seconds, lp.CPUPerEvent, lp.Total)
		profileTable(lp.TopCum, 30).text(w)
		fmt.Fprintf(w, "profile: %s\n", lp.Profile)
	}
	for _, e := range res.Errors {
		fmt.Fprintf(w, "\nERROR: %s\n", e)
	}
}

// decodeFirst explains a drain whose transactions are so large that
// PostgreSQL spends a large part of the input limit's time decoding before it
// sends the first row (protocol 1 sends a transaction only once it is
// decoded whole): the relay cannot publish a row it has not received, so its
// time is at least that wait plus the publishing, while the input limit's is
// that wait plus reading. It returns "" for other drains.
func decodeFirst(c drainCase) string {
	if !decodesFirst(c) {
		return ""
	}
	return fmt.Sprintf("; PostgreSQL sent the first row after %.1f s of the input limit's %.1f s (reachable: that wait, then every event at the lower of the output limit and the input limit's rate once rows flowed); the relay published at %.2f x the output limit once rows arrived",
		c.Input.FirstSeconds, c.Input.Seconds, c.Relay.SteadyEventsPerSec/c.Output.EventsPerSec)
}

// decodesFirst reports whether PostgreSQL spent at least a quarter of the
// input limit's time decoding before it sent the first row.
func decodesFirst(c drainCase) bool {
	return c.Input.FirstSeconds >= 0.25*c.Input.Seconds && c.Input.Seconds > c.Input.FirstSeconds && c.Output.EventsPerSec > 0
}

// reachable is, for a drain that decodesFirst, the most events per second
// any relay could drain it at: nothing before PostgreSQL sends the first row
// (as measured by the input limit), then the events at the lower of the
// output limit and the input limit's rate once rows flow. 0 for other
// drains.
func reachable(c drainCase) float64 {
	if !decodesFirst(c) {
		return 0
	}
	flow := min(c.Output.EventsPerSec, float64(c.Events)/(c.Input.Seconds-c.Input.FirstSeconds))
	return float64(c.Events) / (c.Input.FirstSeconds + float64(c.Events)/flow)
}

// modesTargets are the targets for the publishing modes: with fast
// batches the drain beats the plain asynchronous output limit of the same
// run, and the atomic mode keeps up with one-row transactions at the live
// rate, its p99 next to the default mode's.
func modesTargets(r *modesResult) []target {
	if r == nil {
		return nil
	}
	var ts []target
	var def *modeRun
	for i := range r.Modes {
		m := &r.Modes[i]
		switch m.Mode.Name {
		case "default":
			def = m
		case "batch":
			ts = append(ts, target{
				Name: "fast batch drain, " + r.Backlog, Want: "> plain async output limit",
				Got: fmt.Sprintf("%s ev/s, %.2f x the plain async output limit (%s ev/s; fast batch output limit %s ev/s)",
					rate(m.Drain.EventsPerSec), m.AsyncRatio, rate(r.OutputAsync.EventsPerSec), rate(r.OutputBatch.EventsPerSec)),
				Met: m.AsyncRatio > 1,
			})
		case "atomic":
			got := fmt.Sprintf("drain %s ev/s (%.2f x default); at %d/s achieved %s ev/s, e2e p99 %s ms", rate(m.Drain.EventsPerSec), m.Ratio,
				r.Rate, rate(m.Live.AchievedRate), m.Live.EndToEnd.P99)
			if def != nil {
				got += fmt.Sprintf(" (default: %s ms)", def.Live.EndToEnd.P99)
			}
			ts = append(ts, target{
				Name: fmt.Sprintf("atomic transactions keep up at %d one-row transactions/s", r.Rate),
				Want: "achieved >= 0.95 x the rate, catch-up < 1 s", Got: got + fmt.Sprintf(", catch-up %.2f s", m.Live.CatchUp),
				Met: m.Live.AchievedRate >= 0.95*float64(r.Rate) && m.Live.CatchUp < 1,
			})
		}
	}
	return ts
}
