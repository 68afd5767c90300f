package main

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/outbox-relay/outbox-relay/internal/e2e"
)

const (
	// outageSlot is the relay's slot in the outage phase.
	outageSlot = "bench_outage"
	// outageShape is the rows per transaction of the outage's backlog.
	outageShape = 10
	// outageSettle is how long the relay's read count must stand still,
	// once the backlog is written, before NATS comes back: the relay has
	// then read (and holds) all it will.
	outageSettle = 2 * time.Second
	// outageMaxHold caps the outage after the backlog is written.
	outageMaxHold = 2 * time.Minute
	// outageSampleEvery is how often the relay's RSS is sampled.
	outageSampleEvery = 500 * time.Millisecond
	// rssTargetMiB is the outage phase's target for the relay's peak RSS,
	// with room below the Helm chart's memory limit (256Mi).
	rssTargetMiB = 200
)

// outageResult is the relay riding out a NATS outage while a backlog of
// large events is written, then draining it once NATS is back: where memory
// bounded by event count, not bytes, outgrows a pod's memory limit.
type outageResult struct {
	Name    string       `json:"name"`
	Events  int          `json:"events"`
	Shape   int          `json:"txn_rows"`
	Payload int          `json:"payload_bytes_nominal"`
	Write   backlogWrite `json:"backlog_write"`
	// OutageSeconds runs from stopping NATS to starting it again.
	OutageSeconds float64 `json:"outage_seconds"`
	// ReadInOutage is outbox_relay_cdc_events_total when NATS came back:
	// the events the relay read, and holds, while it could publish none.
	ReadInOutage int `json:"events_read_during_outage"`
	// RSSBefore is the relay's RSS, ready and idle, as NATS stopped.
	RSSBefore int64 `json:"rss_before_outage_bytes"`
	// OutagePeakRSS is the relay's VmHWM when NATS came back (the process
	// is fresh for the phase); DrainPeakRSS is its VmHWM at the end of the
	// drain, reset to the current RSS when NATS came back. PeakRSS is the
	// larger of the two.
	OutagePeakRSS int64 `json:"outage_peak_rss_bytes"`
	DrainPeakRSS  int64 `json:"drain_peak_rss_bytes"`
	PeakRSS       int64 `json:"peak_rss_bytes"`
	// DrainPeakSampled is set when VmHWM could not be reset: DrainPeakRSS
	// is then the largest RSS sample of the drain.
	DrainPeakSampled bool `json:"drain_peak_from_samples,omitempty"`
	// Drain runs from starting NATS again to the JetStream stored time of
	// the last message.
	Drain pass `json:"drain"`
	// FirstStoredSeconds runs from starting NATS again to the first
	// message stored.
	FirstStoredSeconds float64 `json:"first_stored_seconds"`
	// Samples is the relay's RSS every half second, from stopping NATS to
	// the end of the drain.
	Samples []memSample `json:"rss_samples"`
	// Check is the stream read back against the outbox in commit order;
	// Once is whether it holds every event once, in that order.
	Check string `json:"stream_check"`
	Once  bool   `json:"every_event_once_in_order"`
}

// memSample is the relay's RSS at one moment of the outage phase.
type memSample struct {
	// Seconds since NATS stopped.
	Seconds float64 `json:"seconds"`
	// Phase is "outage" or "drain".
	Phase string `json:"phase"`
	RSS   int64  `json:"rss_bytes"`
	// Read is outbox_relay_cdc_events_total, -1 when it could not be read.
	Read int `json:"events_read"`
	// Stored is how many messages the stream held (the drain only).
	Stored uint64 `json:"stored,omitempty"`
}

// outage measures the relay's memory across a NATS outage. The relay runs
// against a NATS server of the phase's own; once it is ready the server
// stops, n events of about size bytes are committed in transactions of shape
// rows by one connection (so commit order is the order written), and the
// relay reads what it will while it cannot publish. Then the server starts
// again on the same port and store and the relay drains. It returns the
// result once the drain is over, with an error too when the stream does not
// hold every event once in commit order.
func (e *env) outage(ctx context.Context, n, shape, size, window int) (*outageResult, error) {
	o := &outageResult{
		Name:   fmt.Sprintf("%s events of %s, %s txns", count(n), sizeLabel(size), rowsLabel(shape)),
		Events: n, Shape: shape, Payload: size,
	}
	if err := e.resetOutbox(ctx, outageSlot); err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel() // stops the writer should the phase fail
	store := filepath.Join(e.tmp, "outage-nats")
	defer func() { _ = os.RemoveAll(store) }() // temporary files only
	nc, err := startNATSChild(store, "0")
	if err != nil {
		return nil, err
	}
	running := nc
	defer func() {
		if running != nil {
			running.stop()
		}
	}()
	stream := e.freshStream("OUTAGE")
	r, err := e.startRelay(stream, window, "RELAY_SLOT="+outageSlot, "RELAY_NATS_URL="+nc.url)
	if err != nil {
		return nil, err
	}
	stopped := false
	defer func() {
		if !stopped {
			_ = r.stop(30 * time.Second) // already failing
		}
	}()
	if err := r.waitReady(ctx, time.Minute); err != nil {
		return nil, err
	}
	if o.RSSBefore, _, err = memory(r.pid()); err != nil {
		return nil, err
	}

	logf("outage %s: stopping NATS", o.Name)
	down := time.Now()
	nc.stop()
	running = nil
	if err := waitMetric(ctx, r, "outbox_relay_sink_connected", 0, 30*time.Second); err != nil {
		return nil, err
	}
	// sample records the relay's RSS and read count, and returns the count.
	sample := func(phase string, stored uint64) int {
		s := memSample{Seconds: time.Since(down).Seconds(), Phase: phase, Read: eventsRead(ctx, r), Stored: stored}
		if rss, _, err := memory(r.pid()); err == nil {
			s.RSS = rss
			o.Samples = append(o.Samples, s)
		}
		return s.Read
	}

	logf("outage %s: writing the backlog while NATS is down", o.Name)
	type written struct {
		w   backlogWrite
		err error
	}
	done := make(chan written, 1)
	go func() {
		w, err := writeBacklog(ctx, e.dbURL, n, shape, size, 1, "o")
		done <- written{w, err}
	}()
	var (
		writtenAt  time.Time
		lastRead   = -1
		lastChange = time.Now()
	)
	tick := time.NewTicker(outageSampleEvery)
	defer tick.Stop()
	for {
		select {
		case w := <-done:
			if w.err != nil {
				return nil, w.err
			}
			o.Write, writtenAt = w.w, time.Now()
			logf("outage %s: backlog written in %.1f s; waiting for the relay to read what it will", o.Name, w.w.Seconds)
			continue
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-tick.C:
		}
		if r.exited() {
			return nil, fmt.Errorf("relay exited during the outage; log tail:\n%s", r.logTail())
		}
		if read := sample("outage", 0); read >= 0 && read != lastRead {
			lastRead, lastChange = read, time.Now()
		}
		if !writtenAt.IsZero() && (lastRead >= n || time.Since(lastChange) >= outageSettle || time.Since(writtenAt) > outageMaxHold) {
			break
		}
	}
	tick.Stop()
	o.ReadInOutage = lastRead
	if _, o.OutagePeakRSS, err = memory(r.pid()); err != nil {
		return nil, err
	}
	o.DrainPeakSampled = resetPeakRSS(r.pid()) != nil
	// From here on the outage is measured: a failed drain returns it, with
	// the drain's peak as far as the samples saw it.
	drained := false
	defer func() {
		if !drained {
			o.Check, o.DrainPeakSampled = "not checked: the drain failed", true
			o.DrainPeakRSS = peakSample(o.Samples, "drain")
			o.PeakRSS = max(o.OutagePeakRSS, o.DrainPeakRSS)
		}
	}()

	logf("outage %s: the relay read %d events and peaked at %.1f MiB; starting NATS again", o.Name, o.ReadInOutage, float64(o.OutagePeakRSS)/mib)
	if nc, err = startNATSChild(store, nc.port()); err != nil {
		return o, err
	}
	running = nc
	back := time.Now()
	o.OutageSeconds = back.Sub(down).Seconds()
	conn, err := nats.Connect(nc.url, nats.Name("bench-outage"), nats.MaxReconnects(-1))
	if err != nil {
		return o, fmt.Errorf("connect to nats: %w", err)
	}
	defer conn.Close()
	js, err := jetstream.New(conn)
	if err != nil {
		return o, err
	}
	before := sampleUsage(r.pid(), nc.pid())
	state, err := waitDrain(ctx, js, stream, n, r, outageSampleEvery, func(st jetstream.StreamState) { sample("drain", st.Msgs) })
	if err != nil {
		return o, err
	}
	after := sampleUsage(r.pid(), nc.pid())
	sample("drain", state.Msgs)
	rss, hwm, err := memory(r.pid())
	if err != nil {
		return o, err
	}
	stopped = true
	if err := r.stop(30 * time.Second); err != nil {
		return o, err
	}
	drained = true
	o.DrainPeakRSS = hwm
	if o.DrainPeakSampled {
		o.DrainPeakRSS = max(rss, peakSample(o.Samples, "drain"))
	}
	o.PeakRSS = max(o.OutagePeakRSS, o.DrainPeakRSS)
	o.Drain = newPass(n, state.LastTime.Sub(back), o.Write.PayloadBytes, after.since(before))
	o.FirstStoredSeconds = state.FirstTime.Sub(back).Seconds()
	logf("outage %s: drained in %.1f s (%.0f/s); peak RSS %.1f MiB in the outage, %.1f MiB in the drain",
		o.Name, o.Drain.Seconds, o.Drain.EventsPerSec, float64(o.OutagePeakRSS)/mib, float64(o.DrainPeakRSS)/mib)
	if err := e.dropSlot(ctx, outageSlot); err != nil {
		return o, err
	}

	v, err := e.checkOutage(ctx, js, stream, n)
	if err != nil {
		return o, err
	}
	o.Check, o.Once = v.String(), v.OK()
	if !o.Once {
		return o, fmt.Errorf("stream %s after the outage: %s", stream, v)
	}
	return o, nil
}

// checkOutage compares the message ids in stream with the outbox's event
// ids in commit order, which is the order the one writer wrote them in.
func (e *env) checkOutage(ctx context.Context, js jetstream.JetStream, stream string, n int) (e2e.Verdict, error) {
	rows, err := e.admin.Query(ctx, `SELECT id::text FROM events ORDER BY split_part(aggregate_id, '-', 2)::int`)
	if err != nil {
		return e2e.Verdict{}, err
	}
	expected, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return e2e.Verdict{}, err
	}
	st, _, err := streamStateIn(ctx, js, stream)
	if err != nil {
		return e2e.Verdict{}, err
	}
	stored := make([]string, 0, n)
	err = readStream(ctx, js, stream, st.FirstSeq, int(st.Msgs), true, func(m jetstream.Msg) error {
		stored = append(stored, m.Headers().Get(jetstream.MsgIDHeader))
		return nil
	})
	if err != nil {
		return e2e.Verdict{}, fmt.Errorf("read stream %s: %w", stream, err)
	}
	return e2e.Compare(expected, stored), nil
}

// peakSample is the largest RSS sampled in phase.
func peakSample(samples []memSample, phase string) int64 {
	var peak int64
	for _, s := range samples {
		if s.Phase == phase {
			peak = max(peak, s.RSS)
		}
	}
	return peak
}

// resetPeakRSS resets pid's VmHWM to its current RSS (Linux 4.0 and later).
func resetPeakRSS(pid int) error {
	return os.WriteFile(fmt.Sprintf("/proc/%d/clear_refs", pid), []byte("5"), 0)
}

// eventsRead reads outbox_relay_cdc_events_total from the relay, or -1.
func eventsRead(ctx context.Context, r *relayProc) int {
	code, body, err := r.get(ctx, "/metrics")
	if err != nil || code != http.StatusOK {
		return -1
	}
	v, ok := e2e.ParseMetrics(body)["outbox_relay_cdc_events_total"]
	if !ok {
		return -1
	}
	return int(v)
}

// waitMetric waits until the relay's metric name reads want.
func waitMetric(ctx context.Context, r *relayProc, name string, want float64, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		code, body, err := r.get(ctx, "/metrics")
		if err == nil && code == http.StatusOK {
			if v, ok := e2e.ParseMetrics(body)[name]; ok && v == want {
				return nil
			}
		}
		if r.exited() {
			return fmt.Errorf("relay exited; log tail:\n%s", r.logTail())
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		if time.Now().After(deadline) {
			return errors.Join(fmt.Errorf("relay's %s not %g after %s", name, want, timeout), err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
