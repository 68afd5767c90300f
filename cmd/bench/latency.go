package main

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/outbox-relay/outbox-relay/internal/relay"
)

const commitToAckMetric = "outbox_relay_pump_commit_to_ack_seconds"

// latencyRun is the relay under a live load of one-row transactions.
type latencyRun struct {
	Label        string  `json:"label"`
	TargetRate   int     `json:"target_rate"` // 0: as fast as the producers go
	AchievedRate float64 `json:"achieved_rate"`
	Events       int     `json:"events"`
	Measured     int     `json:"measured_events"`
	// EndToEnd runs from the producer's COMMIT returning to the message's
	// stored time in JetStream, for every event after the warm-up.
	EndToEnd percentiles `json:"commit_to_stored"`
	// Histogram is the relay's own outbox_relay_pump_commit_to_ack_seconds
	// (commit timestamp in the WAL to PubAck), diffed over the phase and
	// interpolated within its buckets.
	Histogram percentiles `json:"relay_histogram_commit_to_ack"`
	// InsertRTT is the producer's INSERT+COMMIT round trip, for context.
	InsertRTT percentiles `json:"insert_commit_round_trip"`
	// PerSecond is EndToEnd for each second of the phase, warm-up included,
	// to show a trend or a hiccup.
	PerSecond  []percentiles `json:"commit_to_stored_per_second"`
	CatchUp    float64       `json:"catch_up_seconds"`
	CPU        cpuUse        `json:"cpu"`
	CPUPer100k float64       `json:"relay_cpu_seconds_per_100k"`
}

// idleRun is the relay with nothing to do.
type idleRun struct {
	Seconds    float64 `json:"seconds"`
	CPUSeconds float64 `json:"relay_cpu_seconds"`
	// CPUShare is the relay's CPU time over wall time (1 = one core).
	CPUShare float64 `json:"relay_cpu_share"`
	RSS      int64   `json:"rss_bytes"`
}

// liveResult is the live phase: latency at each rate, then idle.
type liveResult struct {
	Rates   []latencyRun `json:"rates"`
	Idle    idleRun      `json:"idle"`
	PeakRSS int64        `json:"peak_rss_bytes"`
}

// live runs the relay on an empty outbox, drives it at each rate for d, and
// then leaves it idle for idle.
func (e *env) live(ctx context.Context, rates []int, d, idle time.Duration, window, conns, payload int, logf func(string, ...any)) (liveResult, error) {
	var res liveResult
	if err := e.resetOutbox(ctx, relaySlot); err != nil {
		return res, err
	}
	stream := e.freshStream("LIVE")
	defer e.deleteStream(context.WithoutCancel(ctx), stream)
	r, err := e.startRelay(stream, window)
	if err != nil {
		return res, err
	}
	defer func() { _ = r.stop(30 * time.Second) }() // a second stop is harmless
	if err := r.waitReady(ctx, time.Minute); err != nil {
		return res, err
	}
	stored := uint64(0)
	for i, rate := range rates {
		label := "max"
		if rate > 0 {
			label = fmt.Sprintf("%d/s", rate)
		}
		logf("live: %s for %s", label, d)
		tag := "r" + strconv.Itoa(i)
		lr := latencyRun{Label: label, TargetRate: rate}
		_, body, err := r.get(ctx, "/metrics")
		if err != nil {
			return res, err
		}
		histBefore := parseHistogram(body, commitToAckMetric)
		u0 := sampleUsage(r.pid(), e.nats.pid())

		p, err := produce(ctx, e.dbURL, rate, d, conns, payload, tag)
		if err != nil {
			return res, err
		}
		produced := time.Now()
		if len(p.records) == 0 {
			return res, fmt.Errorf("live %s: the producers committed nothing", label)
		}
		lr.Events = len(p.records)
		lr.AchievedRate = float64(lr.Events) / p.elapsed.Seconds()
		startSeq := stored + 1
		stored += uint64(lr.Events)
		if err := e.waitStream(ctx, stream, stored, r); err != nil {
			return res, err
		}
		lr.CatchUp = time.Since(produced).Seconds()
		u1 := sampleUsage(r.pid(), e.nats.pid())
		lr.CPU = u1.since(u0)
		lr.CPUPer100k = lr.CPU.RelaySeconds / float64(lr.Events) * 1e5
		_, body, err = r.get(ctx, "/metrics")
		if err != nil {
			return res, err
		}
		lr.Histogram = parseHistogram(body, commitToAckMetric).sub(histBefore).percentiles()

		storedAt, err := e.storedTimes(ctx, stream, startSeq, lr.Events, tag)
		if err != nil {
			return res, err
		}
		// The first second warms up connections and caches.
		start := p.records[0].sent
		for _, rec := range p.records {
			start = min(start, rec.sent)
		}
		warm := start
		if d >= 5*time.Second {
			warm += int64(time.Second)
		}
		var e2e, rtt []float64
		var perSecond [][]float64
		for _, rec := range p.records {
			at, ok := storedAt[rec.seq]
			if !ok {
				return res, fmt.Errorf("live %s: event %s-%d committed but not on the stream", label, tag, rec.seq)
			}
			sec := int(time.Duration(rec.sent - start).Seconds())
			for len(perSecond) <= sec {
				perSecond = append(perSecond, nil)
			}
			perSecond[sec] = append(perSecond[sec], float64(at-rec.committed)/1e6)
			if rec.sent < warm {
				continue
			}
			e2e = append(e2e, float64(at-rec.committed)/1e6)
			rtt = append(rtt, float64(rec.committed-rec.sent)/1e6)
		}
		lr.Measured = len(e2e)
		lr.EndToEnd = exactPercentiles(e2e)
		lr.InsertRTT = exactPercentiles(rtt)
		for _, samples := range perSecond {
			lr.PerSecond = append(lr.PerSecond, exactPercentiles(samples))
		}
		res.Rates = append(res.Rates, lr)
	}

	logf("live: idle for %s", idle)
	time.Sleep(min(2*time.Second, idle))
	u0 := sampleUsage(r.pid(), e.nats.pid())
	time.Sleep(idle)
	u1 := sampleUsage(r.pid(), e.nats.pid())
	wall := u1.at.Sub(u0.at).Seconds()
	res.Idle = idleRun{Seconds: wall, CPUSeconds: u1.relay - u0.relay}
	res.Idle.CPUShare = res.Idle.CPUSeconds / wall
	res.Idle.RSS, res.PeakRSS, err = memory(r.pid())
	if err != nil {
		return res, err
	}
	return res, r.stop(30 * time.Second)
}

// waitStream waits until stream holds n messages.
func (e *env) waitStream(ctx context.Context, stream string, n uint64, r *relayProc) error {
	lastCount, lastChange := uint64(0), time.Now()
	for {
		st, _, err := e.streamState(ctx, stream)
		if err != nil && ctx.Err() != nil {
			return ctx.Err()
		}
		if st.Msgs >= n {
			return nil
		}
		if st.Msgs != lastCount {
			lastCount, lastChange = st.Msgs, time.Now()
		}
		if r != nil && r.exited() {
			return fmt.Errorf("relay exited; log tail:\n%s", r.logTail())
		}
		if time.Since(lastChange) > stallTimeout {
			return fmt.Errorf("stream %s stalled at %d of %d messages", stream, lastCount, n)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// storedTimes reads n messages of stream from startSeq and returns when
// each event of tag was stored (Unix nanoseconds), by its sequence number
// in the producer.
func (e *env) storedTimes(ctx context.Context, stream string, startSeq uint64, n int, tag string) (map[int]int64, error) {
	out := make(map[int]int64, n)
	prefix := tag + "-"
	err := readStream(ctx, e.js, stream, startSeq, n, false, func(m jetstream.Msg) error {
		md, err := m.Metadata()
		if err != nil {
			return err
		}
		id := m.Headers().Get(relay.HeaderAggregateID)
		seq, err := strconv.Atoi(strings.TrimPrefix(id, prefix))
		if err != nil || !strings.HasPrefix(id, prefix) {
			return fmt.Errorf("stream %s seq %d: unexpected aggregate id %q", stream, md.Sequence.Stream, id)
		}
		if _, dup := out[seq]; dup {
			return fmt.Errorf("stream %s: event %s stored twice", stream, id)
		}
		out[seq] = md.Timestamp.UnixNano()
		return nil
	})
	return out, err
}

// readStream hands fn the n messages of stream from startSeq, in stream
// order, through an ordered consumer; headersOnly leaves the bodies on the
// server.
func readStream(ctx context.Context, js jetstream.JetStream, stream string, startSeq uint64, n int, headersOnly bool, fn func(jetstream.Msg) error) error {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	defer cancel()
	s, err := js.Stream(ctx, stream)
	if err != nil {
		return err
	}
	cons, err := s.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{
		DeliverPolicy: jetstream.DeliverByStartSequencePolicy, OptStartSeq: startSeq, HeadersOnly: headersOnly,
	})
	if err != nil {
		return err
	}
	for read := 0; read < n; {
		batch, err := cons.Fetch(min(1000, n-read), jetstream.FetchMaxWait(5*time.Second))
		if err != nil {
			return err
		}
		got := 0
		for m := range batch.Messages() {
			got++
			if err := fn(m); err != nil {
				return err
			}
		}
		if err := batch.Error(); err != nil && !errors.Is(err, nats.ErrTimeout) {
			return err
		}
		if got == 0 {
			return fmt.Errorf("stream %s: read %d of %d messages", stream, read, n)
		}
		read += got
	}
	return nil
}
