package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"time"
)

// liveProfile is the relay binary's CPU profile under a live load.
type liveProfile struct {
	Rate        int           `json:"rate"`
	Seconds     int           `json:"profile_seconds"`
	Events      int           `json:"events"`
	CPUPerEvent float64       `json:"relay_cpu_us_per_event"`
	Profile     string        `json:"cpu_profile"`
	Total       string        `json:"cpu_total"`
	TopFlat     []profileLine `json:"top_cpu_flat"`
	TopCum      []profileLine `json:"top_cpu_cum"`
}

// profileLive runs the relay binary with --pprof under producers at rate
// for d and takes a CPU profile of it over the middle of that time: where a
// relay's CPU goes when events trickle in one by one.
func (e *env) profileLive(ctx context.Context, rate int, d time.Duration, window, conns int, dir string, logf func(string, ...any)) (liveProfile, error) {
	res := liveProfile{Rate: rate, Seconds: max(1, int(d.Seconds())-2)}
	if err := e.resetOutbox(ctx, relaySlot); err != nil {
		return res, err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return res, err
	}
	stream := e.freshStream("PLIVE")
	defer e.deleteStream(context.WithoutCancel(ctx), stream)
	r, err := e.startRelay(stream, window, "RELAY_PPROF=true")
	if err != nil {
		return res, err
	}
	defer func() { _ = r.stop(30 * time.Second) }() // a second stop is harmless
	if err := r.waitReady(ctx, time.Minute); err != nil {
		return res, err
	}
	logf("profile: relay binary at %d/s for %s", rate, d)
	type produced struct {
		p   production
		err error
	}
	done := make(chan produced, 1)
	go func() {
		p, err := produce(ctx, e.dbURL, rate, d, conns, 256, "pl")
		done <- produced{p, err}
	}()
	time.Sleep(time.Second)
	cpu0, _ := cpuSeconds(r.pid())
	res.Profile = filepath.Join(dir, "bench-cpu-live.prof")
	if err := fetchProfile(ctx, "http://"+r.httpAddr+"/debug/pprof/profile?seconds="+strconv.Itoa(res.Seconds), res.Profile); err != nil {
		return res, err
	}
	cpu1, _ := cpuSeconds(r.pid())
	pr := <-done
	if pr.err != nil {
		return res, pr.err
	}
	res.Events = len(pr.p.records)
	// The profile covered res.Seconds of a steady rate.
	res.CPUPerEvent = (cpu1 - cpu0) / (float64(rate) * float64(res.Seconds)) * 1e6
	if err := e.waitStream(ctx, stream, uint64(res.Events), r); err != nil {
		return res, err
	}
	if res.Total, res.TopFlat, err = pprofTop(ctx, 25, "-top", res.Profile); err != nil {
		return res, err
	}
	if _, res.TopCum, err = pprofTop(ctx, 30, "-top", "-cum", res.Profile); err != nil {
		return res, err
	}
	return res, r.stop(30 * time.Second)
}

func fetchProfile(ctx context.Context, url, path string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return fmt.Errorf("fetch profile: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		body, _ := io.ReadAll(resp.Body)
		return fmt.Errorf("fetch profile: %s: %s", resp.Status, body)
	}
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if _, err := io.Copy(f, resp.Body); err != nil {
		_ = f.Close()
		return err
	}
	return f.Close()
}
