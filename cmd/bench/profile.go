package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"strings"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/outbox-relay/outbox-relay/internal/cdc"
	"github.com/outbox-relay/outbox-relay/internal/metrics"
	"github.com/outbox-relay/outbox-relay/internal/relay"
	"github.com/outbox-relay/outbox-relay/internal/sink"
)

// profileLine is one row of `go tool pprof -top`.
type profileLine struct {
	Flat    string `json:"flat"`
	FlatPct string `json:"flat_pct"`
	Cum     string `json:"cum"`
	CumPct  string `json:"cum_pct"`
	Func    string `json:"func"`
}

// profileResult is the in-process drain run under the profilers.
type profileResult struct {
	Events         int     `json:"events"`
	Shape          int     `json:"txn_rows"`
	Payload        int     `json:"payload_bytes"`
	Seconds        float64 `json:"seconds"`
	EventsPerSec   float64 `json:"events_per_sec"`
	CPUSeconds     float64 `json:"process_cpu_seconds"`
	AllocsPerEvent float64 `json:"allocs_per_event"`
	BytesPerEvent  float64 `json:"alloc_bytes_per_event"`
	GCCycles       uint32  `json:"gc_cycles"`
	CPUProfile     string  `json:"cpu_profile"`
	AllocProfile   string  `json:"alloc_profile"`
	AllocBase      string  `json:"alloc_profile_base"`
	// Total is pprof's "Showing nodes accounting for ..." header of the
	// flat CPU listing.
	Total        string        `json:"cpu_total"`
	TopFlat      []profileLine `json:"top_cpu_flat"`
	TopCum       []profileLine `json:"top_cpu_cum"`
	TopRelayCum  []profileLine `json:"top_cpu_cum_relay_code"`
	TopAllocSize []profileLine `json:"top_alloc_space"`
	TopAllocObjs []profileLine `json:"top_alloc_objects"`
}

// inProcessRelay wires the relay's packages the way cmd/relay does for a
// leader (without the election, the health probes and the HTTP server), with
// the same defaults and a JSON logger at info level that writes nowhere.
type inProcessRelay struct {
	reader *cdc.Reader
	pump   *relay.Pump
	close  func()
}

func (e *env) newInProcessRelay(ctx context.Context, stream string, window int) (*inProcessRelay, error) {
	encCfg := zap.NewProductionEncoderConfig()
	encCfg.EncodeTime = zapcore.ISO8601TimeEncoder
	log := zap.New(zapcore.NewCore(zapcore.NewJSONEncoder(encCfg), zapcore.AddSync(io.Discard), zapcore.InfoLevel))
	m := metrics.New("bench", "bench")
	tmpl, err := relay.ParseTemplate("outbox.{aggregate_type}.{event_type}")
	if err != nil {
		return nil, err
	}
	cdcCfg, sinkCfg := inProcessConfigs(e.dbURL, e.nats.url, stream, tmpl)
	if err := errors.Join(cdcCfg.Validate(), sinkCfg.Validate()); err != nil {
		return nil, err
	}
	conn, err := sink.Connect(sinkCfg, log, m)
	if err != nil {
		return nil, err
	}
	nc, js := conn.Conn, conn.JetStream
	state, err := conn.EnsureStream(ctx, sinkCfg, []string{tmpl.Wildcard()}, log)
	if err != nil {
		nc.Close()
		return nil, err
	}
	slot, err := cdc.Preflight(ctx, cdcCfg, log, func(string, string) error { return nil })
	if err != nil {
		nc.Close()
		return nil, err
	}
	mapper := relay.NewMapper(tmpl, slot.SystemID+"/"+slot.Database+"/"+relaySlot, state.Subjects)
	pumpCfg := relay.Config{
		Window: window, AckEvery: 32, ShutdownTimeout: 15 * time.Second, RetryMin: 100 * time.Millisecond, RetryMax: 10 * time.Second,
		OnPoison: relay.OnPoisonStop, DeadLetterSubject: "outbox_dead_letter", MaxPayload: nc.MaxPayload(),
	}
	if err := pumpCfg.Validate(); err != nil {
		nc.Close()
		return nil, err
	}
	store, err := sink.OpenStateStore(ctx, conn, "outbox-relay", 1, sinkCfg.RequestTimeout)
	if err != nil {
		nc.Close()
		return nil, err
	}
	marks := relay.NewWatermark(sink.NewStreamReader(nc, js, stream, sinkCfg.RequestTimeout), store, stream, mapper.Origin(), log)
	publisher, err := sink.New(nc, sinkCfg, m)
	if err != nil {
		nc.Close()
		return nil, err
	}
	reader := cdc.NewReader(cdcCfg, log, m)
	pump := relay.New(reader, publisher, marks, mapper, pumpCfg, log, m)
	return &inProcessRelay{reader: reader, pump: pump, close: nc.Close}, nil
}

// profileDrain drains a backlog of n events (shape rows per transaction) with
// the relay's packages running in this process under the CPU profiler and
// the allocation profiler. The NATS server runs in its own process, so the
// profile holds the relay's work, the Go runtime's on its behalf, and the
// harness's polling of the stream (a few requests a second).
func (e *env) profileDrain(ctx context.Context, n, shape, payload, window int, dir string, logf func(string, ...any)) (profileResult, error) {
	res := profileResult{Events: n, Shape: shape, Payload: payload}
	if err := e.resetOutbox(ctx, relaySlot); err != nil {
		return res, err
	}
	logf("profile: writing %d events in %d-row transactions", n, shape)
	if _, err := writeBacklog(ctx, e.dbURL, n, shape, payload, 4, "p"); err != nil {
		return res, err
	}
	if err := e.exec(ctx, `CHECKPOINT`); err != nil {
		return res, err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return res, err
	}
	stream := e.freshStream("PROFILE")
	defer e.deleteStream(context.WithoutCancel(ctx), stream)

	res.CPUProfile = filepath.Join(dir, "bench-cpu.prof")
	res.AllocProfile = filepath.Join(dir, "bench-allocs.prof")
	res.AllocBase = filepath.Join(dir, "bench-allocs-base.prof")
	if err := writeHeapProfile(res.AllocBase); err != nil {
		return res, err
	}
	cpuFile, err := os.Create(res.CPUProfile)
	if err != nil {
		return res, err
	}
	defer cpuFile.Close()
	var before runtime.MemStats
	runtime.ReadMemStats(&before)
	cpuBefore, _ := cpuSeconds(os.Getpid())
	logf("profile: draining in process under pprof")
	if err := pprof.StartCPUProfile(cpuFile); err != nil {
		return res, err
	}
	started := time.Now()
	last, err := e.runInProcess(ctx, stream, n, window)
	pprof.StopCPUProfile()
	if err != nil {
		return res, err
	}
	cpuAfter, _ := cpuSeconds(os.Getpid())
	var after runtime.MemStats
	runtime.ReadMemStats(&after)
	if err := writeHeapProfile(res.AllocProfile); err != nil {
		return res, err
	}
	elapsed := last.Sub(started)
	res.Seconds = elapsed.Seconds()
	res.EventsPerSec = float64(n) / elapsed.Seconds()
	res.CPUSeconds = cpuAfter - cpuBefore
	res.AllocsPerEvent = float64(after.Mallocs-before.Mallocs) / float64(n)
	res.BytesPerEvent = float64(after.TotalAlloc-before.TotalAlloc) / float64(n)
	res.GCCycles = after.NumGC - before.NumGC

	if res.Total, res.TopFlat, err = pprofTop(ctx, 25, "-top", res.CPUProfile); err != nil {
		return res, err
	}
	if _, res.TopCum, err = pprofTop(ctx, 30, "-top", "-cum", res.CPUProfile); err != nil {
		return res, err
	}
	if _, res.TopRelayCum, err = pprofTop(ctx, 25, "-top", "-cum", "-show=outbox-relay/internal", res.CPUProfile); err != nil {
		return res, err
	}
	if _, res.TopAllocSize, err = pprofTop(ctx, 20, "-top", "-sample_index=alloc_space", "-base", res.AllocBase, res.AllocProfile); err != nil {
		return res, err
	}
	if _, res.TopAllocObjs, err = pprofTop(ctx, 20, "-top", "-sample_index=alloc_objects", "-base", res.AllocBase, res.AllocProfile); err != nil {
		return res, err
	}
	return res, nil
}

// runInProcess runs the in-process relay until stream holds n messages and
// returns the stored time of the last one.
func (e *env) runInProcess(ctx context.Context, stream string, n, window int) (time.Time, error) {
	r, err := e.newInProcessRelay(ctx, stream, window)
	if err != nil {
		return time.Time{}, err
	}
	defer r.close()
	pumpCtx, stopPump := context.WithCancel(ctx)
	defer stopPump()
	readerCtx, stopReader := context.WithCancel(context.WithoutCancel(ctx))
	defer stopReader()
	readerDone := make(chan error, 1)
	go func() { readerDone <- r.reader.Run(readerCtx) }()
	pumpDone := make(chan error, 1)
	go func() { pumpDone <- r.pump.Run(pumpCtx) }()

	var last time.Time
	lastCount, lastChange := uint64(0), time.Now()
	for {
		st, _, err := e.streamState(ctx, stream)
		if err == nil && st.Msgs >= uint64(n) {
			last = st.LastTime
			break
		}
		if st.Msgs != lastCount {
			lastCount, lastChange = st.Msgs, time.Now()
		}
		select {
		case err := <-pumpDone:
			return time.Time{}, fmt.Errorf("in-process pump stopped: %w", err)
		case err := <-readerDone:
			return time.Time{}, fmt.Errorf("in-process reader stopped: %w", err)
		case <-ctx.Done():
			return time.Time{}, ctx.Err()
		case <-time.After(25 * time.Millisecond):
		}
		if time.Since(lastChange) > stallTimeout {
			return time.Time{}, fmt.Errorf("in-process drain stalled at %d of %d", lastCount, n)
		}
	}
	stopPump()
	pumpErr := <-pumpDone
	stopReader()
	readerErr := <-readerDone
	return last, errors.Join(pumpErr, readerErr)
}

func writeHeapProfile(path string) error {
	runtime.GC() // the allocation profile is as of the last GC
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if err := pprof.Lookup("allocs").WriteTo(f, 0); err != nil {
		_ = f.Close()
		return err
	}
	return f.Close()
}

// pprofTop runs `go tool pprof -top` with args and parses its rows.
func pprofTop(ctx context.Context, nodes int, args ...string) (string, []profileLine, error) {
	full := append([]string{"tool", "pprof", fmt.Sprintf("-nodecount=%d", nodes)}, args...)
	cmd := exec.CommandContext(ctx, "go", full...)
	out, err := cmd.Output()
	if err != nil {
		var stderr string
		var exitErr *exec.ExitError
		if errors.As(err, &exitErr) {
			stderr = string(exitErr.Stderr)
		}
		return "", nil, fmt.Errorf("go %s: %w\n%s", strings.Join(full, " "), err, stderr)
	}
	var total string
	var lines []profileLine
	header := false
	sc := bufio.NewScanner(strings.NewReader(string(out)))
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, "Showing nodes accounting for") {
			total = strings.TrimPrefix(line, "Showing nodes accounting for ")
		}
		f := strings.Fields(line)
		if len(f) >= 5 && f[0] == "flat" && f[1] == "flat%" {
			header = true
			continue
		}
		if !header || len(f) < 6 {
			continue
		}
		lines = append(lines, profileLine{Flat: f[0], FlatPct: f[1], Cum: f[3], CumPct: f[4], Func: strings.Join(f[5:], " ")})
	}
	return total, lines, nil
}

// inProcessConfigs are the cdc and sink settings of the in-process relay:
// cmd/relay's defaults.
func inProcessConfigs(dbURL, natsURL, stream string, tmpl relay.Template) (cdc.Config, sink.Config) {
	cdcCfg := cdc.Config{
		PostgresURL: dbURL, Schema: "public", Table: "events",
		Columns: cdc.Columns{
			ID: "id", AggregateType: "aggregate_type", AggregateID: "aggregate_id", EventType: "event_type",
			Payload: "payload", Headers: "headers", CreatedAt: "created_at",
		},
		Publication: publication, Slot: relaySlot,
		StatusInterval: 2 * time.Second, ConnectTimeout: 10 * time.Second, QueryTimeout: 10 * time.Second,
		SlotPollInterval: 15 * time.Second, ReconnectMin: 250 * time.Millisecond, ReconnectMax: 15 * time.Second,
		EventBuffer: 4096, EventBufferBytes: 64 << 20, PublicationCheckInterval: time.Second,
	}
	sinkCfg := sink.Config{
		NATSURL: natsURL, Stream: stream, StateBucket: "outbox-relay", CreateStream: true, StreamSubjects: tmpl.StreamSubjects(),
		DuplicateWindow: 2 * time.Minute, Replicas: 1, PublishTimeout: 10 * time.Second,
		ConnectTimeout: 5 * time.Second, RequestTimeout: 5 * time.Second, ReconnectWait: time.Second,
	}
	return cdcCfg, sinkCfg
}
