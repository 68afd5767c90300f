// Command bench measures the relay against the physical limits of its input
// and its output, measured the same way in the same run on the same machine:
//
//   - backlog drain: N events committed while the relay is stopped, in
//     transactions of 1, 10 and 1000 rows and payloads of about 256 B and
//     1 KiB, drained by the relay binary; the input limit (a bare pgoutput
//     consumer on its own slot) and the output limit (a bare asynchronous
//     JetStream publisher with the same window) drain the same shape;
//   - live latency at 1,000/s, 10,000/s and as fast as the producers go;
//   - CPU per 100k events, peak RSS, RSS for a 1,000,000-event backlog and a
//     single 1,000,000-row transaction, and CPU while idle;
//   - peak RSS across a NATS outage: a backlog of 64 KiB events written
//     while the relay cannot publish, then drained once NATS is back;
//   - a CPU and allocation profile of the relay's packages draining in
//     process.
//
// It starts its own throwaway PostgreSQL (internal/testenv, as the tests do)
// and NATS server, prints a table, writes bench-results.json and rewrites
// docs/benchmarks.md. Run it with `make bench`; -quick is a smoke run.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"
)

type options struct {
	events       int
	sizes        []int
	shapes       []int
	window       int
	runs         int
	largeRuns    int
	writers      int
	large        bool
	largeEvents  int
	live         bool
	outage       bool
	outageEvents int
	outageSize   int
	outageOnly   bool
	modes        bool
	modesOnly    bool
	modesEvents  int
	modesShape   int
	modesNoLive  bool
	modesNames   string
	rates        []int
	liveFor      time.Duration
	idleFor      time.Duration
	producers    int
	profile      bool
	profileDir   string
	profShape    int
	profPayload  int
	relayEnv     []string
	baseline     string
	compareProcs bool
	jsonPath     string
	docPath      string
	quick        bool
	render       string
	command      string
}

func parseFlags(args []string) (options, error) {
	var o options
	fs := flag.NewFlagSet("bench", flag.ContinueOnError)
	var sizes, shapes, rates string
	fs.IntVar(&o.events, "events", 200000, "events in each backlog drain")
	fs.StringVar(&sizes, "sizes", "256,1024", "payload sizes in bytes, comma-separated")
	fs.StringVar(&shapes, "shapes", "1,10,1000", "rows per transaction of the backlogs, comma-separated")
	fs.IntVar(&o.window, "publish-window", 1024, "the relay's --publish-window, and the output limit's window")
	fs.IntVar(&o.writers, "writers", 4, "connections writing each backlog")
	fs.IntVar(&o.runs, "runs", 2, "runs of each contender per backlog; the best counts")
	fs.IntVar(&o.largeRuns, "large-runs", 1, "runs of each contender per -large backlog")
	fs.BoolVar(&o.compareProcs, "compare-procs", true, "also drain the 10-row, 256 B backlog with the relay on 2 CPUs (GOMAXPROCS=2), against its default of 1")
	fs.BoolVar(&o.large, "large", true, "also drain a 1,000,000-event backlog and a single 1,000,000-row transaction (memory bound)")
	fs.IntVar(&o.largeEvents, "large-events", 1000000, "events in each -large case")
	fs.BoolVar(&o.live, "live", true, "measure live latency and idle CPU")
	fs.BoolVar(&o.outage, "outage", true, "measure the relay's peak RSS while a backlog of large events is written during a NATS outage, and the drain after it")
	fs.IntVar(&o.outageEvents, "outage-events", 8000, "events written during the NATS outage")
	fs.IntVar(&o.outageSize, "outage-payload", 64*1024, "payload size in bytes of the events written during the NATS outage")
	fs.BoolVar(&o.outageOnly, "outage-only", false, "run only the NATS outage phase (and write docs/benchmarks.md only if -doc is given)")
	fs.BoolVar(&o.modes, "modes", true, "compare the publishing modes (default, --atomic-transactions, --publish-mode=batch) on one backlog, with the output limits of plain asynchronous and fast batch publishing, and at 1,000 events/s")
	fs.BoolVar(&o.modesOnly, "modes-only", false, "run only the publishing modes phase (and write docs/benchmarks.md only if -doc is given)")
	fs.IntVar(&o.modesEvents, "modes-events", 0, "events in the publishing modes' backlog (default: -events)")
	fs.IntVar(&o.modesShape, "modes-shape", 10, "rows per transaction of the publishing modes' backlog")
	fs.BoolVar(&o.modesNoLive, "modes-no-live", false, "skip the publishing modes' live latency (the drains and output limits only)")
	fs.StringVar(&o.modesNames, "modes-names", "", "comma-separated publishing modes to compare, the first the reference (default: all, default first)")
	fs.StringVar(&rates, "rates", "1000,10000,max", "live producer rates per second; max: as fast as the producers go")
	fs.DurationVar(&o.liveFor, "live-duration", 10*time.Second, "how long each live rate runs")
	fs.DurationVar(&o.idleFor, "idle", 10*time.Second, "how long the idle relay is watched")
	fs.IntVar(&o.producers, "producers", 8, "connections of the live producers")
	fs.BoolVar(&o.profile, "profile", true, "profile the relay's packages draining in process (CPU and allocations)")
	fs.StringVar(&o.profileDir, "profile-dir", ".", "where bench-cpu.prof and bench-allocs.prof are written")
	fs.IntVar(&o.profShape, "profile-shape", 10, "rows per transaction of the profiled backlog")
	fs.IntVar(&o.profPayload, "profile-payload", 256, "payload size in bytes of the profiled backlog")
	var relayEnv string
	fs.StringVar(&o.baseline, "baseline-relay", "", "also drain each backlog with this relay binary (an earlier build, say), interleaved with the relay's runs, each from a slot of its own: before/after in the same run (JSON baseline, log lines)")
	fs.StringVar(&relayEnv, "relay-env", "", "extra environment of the relay binary, comma-separated KEY=VALUE (e.g. GOMAXPROCS=1,RELAY_EVENT_BUFFER=8192)")
	fs.StringVar(&o.jsonPath, "json", "bench-results.json", "where the results are written as JSON (empty: nowhere)")
	fs.StringVar(&o.docPath, "doc", "docs/benchmarks.md", "the report rewritten with the results, relative to the module root (empty: none; -quick writes none unless given)")
	fs.StringVar(&o.render, "render", "", "measure nothing: print the report of this results JSON and rewrite -doc from it")
	fs.BoolVar(&o.quick, "quick", false, "smoke run: 20,000 events, -large with as many, 3 s live phases")
	if err := fs.Parse(args); err != nil {
		return o, err
	}
	if fs.NArg() > 0 {
		return o, fmt.Errorf("unexpected arguments: %s", strings.Join(fs.Args(), " "))
	}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	if o.quick {
		if !set["events"] {
			o.events = 20000
		}
		if !set["large-events"] {
			o.largeEvents = o.events
		}
		if !set["live-duration"] {
			o.liveFor = 3 * time.Second
		}
		if !set["idle"] {
			o.idleFor = 3 * time.Second
		}
		if !set["doc"] {
			o.docPath = ""
		}
		if !set["runs"] {
			o.runs = 1
		}
		if !set["outage-events"] {
			o.outageEvents = 300
		}
	}
	if o.outageOnly {
		sizes = ""
		o.outage, o.large, o.live, o.profile, o.compareProcs, o.modes = true, false, false, false, false, false
		if !set["doc"] {
			o.docPath = ""
		}
	}
	if o.modesOnly {
		sizes = ""
		o.modes, o.outage, o.large, o.live, o.profile, o.compareProcs = true, false, false, false, false, false
		if !set["doc"] {
			o.docPath = ""
		}
	}
	if o.modesEvents == 0 {
		o.modesEvents = o.events
	}
	for _, kv := range strings.Split(relayEnv, ",") {
		if kv = strings.TrimSpace(kv); kv == "" {
			continue
		}
		if !strings.Contains(kv, "=") {
			return o, fmt.Errorf("relay-env: %q is not KEY=VALUE", kv)
		}
		o.relayEnv = append(o.relayEnv, kv)
	}
	var err error
	if o.sizes, err = intList(sizes, "sizes"); err != nil {
		return o, err
	}
	if o.shapes, err = intList(shapes, "shapes"); err != nil {
		return o, err
	}
	if o.rates, err = intList(strings.ReplaceAll(rates, "max", "0"), "rates"); err != nil {
		return o, err
	}
	var errs []error
	if o.events < 1 || o.largeEvents < 1 || o.outageEvents < 1 || o.outageSize < 1 {
		errs = append(errs, errors.New("events, large-events, outage-events, outage-payload: must be positive"))
	}
	if o.profShape < 1 || o.profPayload < 1 {
		errs = append(errs, errors.New("profile-shape, profile-payload: must be positive"))
	}
	if o.window < 1 || o.writers < 1 || o.producers < 1 || o.runs < 1 || o.largeRuns < 1 {
		errs = append(errs, errors.New("publish-window, writers, producers, runs, large-runs: must be positive"))
	}
	if o.liveFor <= 0 || o.idleFor <= 0 {
		errs = append(errs, errors.New("live-duration, idle: must be positive"))
	}
	o.command = strings.TrimSpace("go run ./cmd/bench " + strings.Join(args, " "))
	return o, errors.Join(errs...)
}

func intList(s, name string) ([]int, error) {
	var out []int
	for _, part := range strings.Split(s, ",") {
		part = strings.TrimSpace(part)
		if part == "" {
			continue
		}
		v, err := strconv.Atoi(part)
		if err != nil || v < 0 {
			return nil, fmt.Errorf("%s: %q is not a non-negative number", name, part)
		}
		out = append(out, v)
	}
	return out, nil
}

func main() {
	if len(os.Args) > 1 && os.Args[1] == serveNATSArg {
		os.Exit(serveNATS(os.Args[2:]))
	}
	opts, err := parseFlags(os.Args[1:])
	if errors.Is(err, flag.ErrHelp) {
		return
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "bench: %v\n", err)
		os.Exit(2)
	}
	if opts.profile {
		// Finer allocation sampling for the allocation profile; the
		// harness's own allocations do not matter.
		runtime.MemProfileRate = 16 * 1024
	}
	if opts.render != "" {
		if err := render(opts); err != nil {
			fmt.Fprintf(os.Stderr, "bench: %v\n", err)
			os.Exit(1)
		}
		return
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, opts); err != nil {
		fmt.Fprintf(os.Stderr, "bench: %v\n", err)
		stop()
		os.Exit(1)
	}
}

// render prints and writes the report of a results file from an earlier run.
func render(opts options) error {
	data, err := os.ReadFile(opts.render)
	if err != nil {
		return err
	}
	var res results
	if err := json.Unmarshal(data, &res); err != nil {
		return fmt.Errorf("%s: %w", opts.render, err)
	}
	res.Targets = evaluate(&res)
	printReport(os.Stdout, &res)
	if opts.docPath == "" {
		return nil
	}
	path := opts.docPath
	if !filepath.IsAbs(path) {
		root, err := repoRoot()
		if err != nil {
			return err
		}
		path = filepath.Join(root, path)
	}
	if err := os.WriteFile(path, []byte(markdownReport(&res)), 0o644); err != nil {
		return err
	}
	logf("wrote %s", path)
	return nil
}

func logf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "%s bench: %s\n", time.Now().Format("15:04:05"), fmt.Sprintf(format, args...))
}

func run(ctx context.Context, opts options) error {
	started := time.Now()
	e, err := setupEnv(ctx, logf)
	if err != nil {
		return err
	}
	e.relayEnv = opts.relayEnv
	defer e.close()
	res := &results{
		Date:     started.UTC().Format(time.RFC3339),
		Command:  opts.command,
		Machine:  readMachine(e),
		Settings: settingsOf(opts),
	}
	fail := func(phase string, err error) {
		logf("%s failed: %v", phase, err)
		res.Errors = append(res.Errors, fmt.Sprintf("%s: %v", phase, err))
	}

	for _, size := range opts.sizes {
		for _, shape := range opts.shapes {
			if ctx.Err() != nil {
				break
			}
			name := fmt.Sprintf("%s txns, %s", rowsLabel(shape), sizeLabel(size))
			c, err := e.drainCase(ctx, name, opts.events, shape, size, opts.runs, opts)
			if err != nil {
				fail(name, err)
				continue
			}
			res.Drains = append(res.Drains, c)
		}
	}
	if opts.compareProcs && slices.Contains(opts.shapes, 10) && slices.Contains(opts.sizes, 256) && ctx.Err() == nil {
		const variant = "GOMAXPROCS=2"
		name := "10-row txns, 256 B, relay on 2 CPUs (" + variant + ")"
		e.relayEnv = append(slices.Clip(opts.relayEnv), variant)
		c, err := e.drainCase(ctx, name, opts.events, 10, 256, opts.runs, opts)
		e.relayEnv = opts.relayEnv
		if err != nil {
			fail(name, err)
		} else {
			c.Variant = variant
			res.Drains = append(res.Drains, c)
		}
	}
	if opts.large && ctx.Err() == nil {
		for _, lc := range []struct {
			name  string
			shape int
		}{
			{fmt.Sprintf("%s-event backlog, 1000-row txns, 256 B", count(opts.largeEvents)), 1000},
			{fmt.Sprintf("single %s-row txn, 256 B", count(opts.largeEvents)), opts.largeEvents},
		} {
			if ctx.Err() != nil {
				break
			}
			c, err := e.drainCase(ctx, lc.name, opts.largeEvents, lc.shape, 256, opts.largeRuns, opts)
			if err != nil {
				fail(lc.name, err)
				continue
			}
			c.Large = true
			res.Drains = append(res.Drains, c)
		}
	}
	if opts.outage && ctx.Err() == nil {
		o, err := e.outage(ctx, opts.outageEvents, outageShape, opts.outageSize, opts.window)
		if o != nil {
			res.Outage = o
		}
		if err != nil {
			fail("outage", err)
		}
	}
	if opts.modes && ctx.Err() == nil {
		m, err := e.modes(ctx, opts.modesEvents, opts.modesShape, 256, opts.runs, 1000, opts.liveFor, opts)
		if err != nil {
			fail("modes", err)
		} else {
			res.Modes = m
		}
	}
	if opts.live && ctx.Err() == nil {
		live, err := e.live(ctx, opts.rates, opts.liveFor, opts.idleFor, opts.window, opts.producers, 256, logf)
		if err != nil {
			fail("live", err)
		} else {
			res.Live = &live
		}
	}
	if opts.profile && ctx.Err() == nil {
		dir := opts.profileDir
		if !filepath.IsAbs(dir) {
			if wd, err := os.Getwd(); err == nil {
				dir = filepath.Join(wd, dir)
			}
		}
		p, err := e.profileDrain(ctx, opts.events, opts.profShape, opts.profPayload, opts.window, dir, logf)
		if err != nil {
			fail("profile", err)
		} else {
			res.Profile = &p
		}
		if ctx.Err() == nil {
			lp, err := e.profileLive(ctx, 1000, opts.liveFor, opts.window, opts.producers, dir, logf)
			if err != nil {
				fail("live profile", err)
			} else {
				res.LiveProfile = &lp
			}
		}
	}
	if err := ctx.Err(); err != nil {
		res.Errors = append(res.Errors, "interrupted: "+err.Error())
	}
	res.Seconds = time.Since(started).Seconds()
	res.Targets = evaluate(res)

	printReport(os.Stdout, res)
	if opts.jsonPath != "" {
		data, err := json.MarshalIndent(res, "", "  ")
		if err != nil {
			return err
		}
		if err := os.WriteFile(opts.jsonPath, append(data, '\n'), 0o644); err != nil {
			return err
		}
		logf("wrote %s", opts.jsonPath)
	}
	if opts.docPath != "" && ctx.Err() == nil {
		path := opts.docPath
		if !filepath.IsAbs(path) {
			path = filepath.Join(e.root, path)
		}
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			return err
		}
		if err := os.WriteFile(path, []byte(markdownReport(res)), 0o644); err != nil {
			return err
		}
		logf("wrote %s", path)
	}
	if len(res.Errors) > 0 {
		return fmt.Errorf("%d phase(s) failed: %s", len(res.Errors), strings.Join(res.Errors, "; "))
	}
	return nil
}

// limits measures the input and the output limit of run i of a drain, with
// the bench process on one CPU in odd runs and on two in even runs.
func (e *env) limits(ctx context.Context, name string, i, runs int, slot string, n, window int, payload float64) (in, out pass, err error) {
	procs := 1 + i%2
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(procs))
	logf("drain %s: input limit (run %d of %d, GOMAXPROCS=%d)", name, i+1, runs, procs)
	if in, err = e.inputLimit(ctx, slot, n, payload); err != nil {
		return in, out, err
	}
	in.GOMAXPROCS = procs
	if err = e.dropSlot(ctx, slot); err != nil {
		return in, out, err
	}
	logf("drain %s: output limit (run %d of %d, GOMAXPROCS=%d)", name, i+1, runs, procs)
	out, err = e.outputLimit(ctx, n, window, payload)
	out.GOMAXPROCS = procs
	return in, out, err
}

// drainCase writes one backlog and drains it runs times with each
// contender, interleaved (input limit, output limit, relay, then again),
// each run of the input limit and of the relay from a slot of its own made
// before the backlog was written. The best run of each is kept: the limits
// are best cases by nature, and the relay gets as many tries.
func (e *env) drainCase(ctx context.Context, name string, n, shape, size, runs int, opts options) (drainCase, error) {
	c := drainCase{Name: name, Shape: shape, Payload: size, Events: n, Runs: runs}
	relaySlotOf := func(i int) string { return fmt.Sprintf("bench_relay_%d", i) }
	inputSlotOf := func(i int) string { return fmt.Sprintf("bench_input_%d", i) }
	var slots []string
	baseSlotOf := func(i int) string { return fmt.Sprintf("bench_base_%d", i) }
	for i := range runs {
		slots = append(slots, relaySlotOf(i), inputSlotOf(i))
		if opts.baseline != "" {
			slots = append(slots, baseSlotOf(i))
		}
	}
	logf("drain %s: writing %d events", name, n)
	if err := e.resetOutbox(ctx, slots...); err != nil {
		return c, err
	}
	w, err := writeBacklog(ctx, e.dbURL, n, shape, size, opts.writers, "b")
	if err != nil {
		return c, err
	}
	c.Write = w
	if err := e.exec(ctx, `CHECKPOINT`); err != nil {
		return c, err
	}
	for i := range runs {
		// With two or more runs each limit is measured on one CPU, like
		// the relay by default, and on two; the better counts.
		in, out, err := e.limits(ctx, name, i, runs, inputSlotOf(i), n, opts.window, w.PayloadBytes)
		if err != nil {
			return c, err
		}
		c.InputRuns = append(c.InputRuns, in.EventsPerSec)
		if i == 0 || in.EventsPerSec > c.Input.EventsPerSec {
			c.Input = in
		}
		c.OutputRuns = append(c.OutputRuns, out.EventsPerSec)
		if i == 0 || out.EventsPerSec > c.Output.EventsPerSec {
			c.Output = out
		}
		logf("drain %s: relay (run %d of %d)", name, i+1, runs)
		r, err := e.relayDrain(ctx, relaySlotOf(i), n, opts.window, w.PayloadBytes)
		if err != nil {
			return c, err
		}
		if err := e.dropSlot(ctx, relaySlotOf(i)); err != nil {
			return c, err
		}
		c.RelayRuns = append(c.RelayRuns, r.EventsPerSec)
		if runs > 1 {
			c.RelayAll = append(c.RelayAll, r)
		}
		if i == 0 || r.EventsPerSec > c.Relay.EventsPerSec {
			c.Relay = r
		}
		logf("drain %s: run %d: relay %.0f/s, input limit %.0f/s, output limit %.0f/s",
			name, i+1, r.EventsPerSec, in.EventsPerSec, out.EventsPerSec)
		if opts.baseline == "" {
			continue
		}
		logf("drain %s: baseline relay %s (run %d of %d)", name, opts.baseline, i+1, runs)
		relay := e.relay
		e.relay = opts.baseline
		b, err := e.relayDrain(ctx, baseSlotOf(i), n, opts.window, w.PayloadBytes)
		e.relay = relay
		if err != nil {
			return c, err
		}
		if err := e.dropSlot(ctx, baseSlotOf(i)); err != nil {
			return c, err
		}
		c.BaselineRuns = append(c.BaselineRuns, b.EventsPerSec)
		if c.Baseline == nil || b.EventsPerSec > c.Baseline.EventsPerSec {
			c.Baseline = &b
		}
		logf("drain %s: run %d: relay %.0f/s (%.1f µs/ev), baseline %.0f/s (%.1f µs/ev): %.2f", name, i+1,
			r.EventsPerSec, 1e6*r.CPU.RelaySeconds/float64(n), b.EventsPerSec, 1e6*b.CPU.RelaySeconds/float64(n), r.EventsPerSec/b.EventsPerSec)
	}
	if opts.baseline != "" {
		logf("drain %s: best relay %.0f/s, best baseline %.0f/s: %.2f", name, c.Relay.EventsPerSec, c.Baseline.EventsPerSec, c.Relay.EventsPerSec/c.Baseline.EventsPerSec)
	}
	c.Limit, c.LimitName = c.Input.EventsPerSec, "input"
	if c.Output.EventsPerSec < c.Limit {
		c.Limit, c.LimitName = c.Output.EventsPerSec, "output"
	}
	c.Ratio = c.Relay.EventsPerSec / c.Limit
	c.SteadyRatio = c.Relay.SteadyEventsPerSec / c.Limit
	if c.Reachable = reachable(c); c.Reachable > 0 {
		c.ReachableRatio = c.Relay.EventsPerSec / c.Reachable
		logf("drain %s: %.0f/s reachable once PostgreSQL sends the first row: ratio %.2f", name, c.Reachable, c.ReachableRatio)
	}
	logf("drain %s: best relay %.0f/s over lower limit %.0f/s (%s): ratio %.2f", name, c.Relay.EventsPerSec, c.Limit, c.LimitName, c.Ratio)
	return c, nil
}

func rowsLabel(shape int) string {
	if shape == 1 {
		return "1-row"
	}
	return fmt.Sprintf("%d-row", shape)
}

func sizeLabel(size int) string {
	if size >= 1024 && size%1024 == 0 {
		return fmt.Sprintf("%d KiB", size/1024)
	}
	return fmt.Sprintf("%d B", size)
}

// count renders n with thousands separators.
func count(n int) string {
	s := strconv.Itoa(n)
	var b strings.Builder
	for i, r := range s {
		if i > 0 && (len(s)-i)%3 == 0 {
			b.WriteByte(',')
		}
		b.WriteRune(r)
	}
	return b.String()
}
