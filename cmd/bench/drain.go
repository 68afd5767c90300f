package main

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// stallTimeout fails a phase whose stream stops growing for this long.
const stallTimeout = 90 * time.Second

// pass is one timed pass of n events through a contender: the relay, the
// input limit or the output limit.
type pass struct {
	Events       int     `json:"events"`
	Seconds      float64 `json:"seconds"`
	EventsPerSec float64 `json:"events_per_sec"`
	MBPerSec     float64 `json:"payload_mb_per_sec"`
	CPU          cpuUse  `json:"cpu"`
	// FirstSeconds, for the input limit, runs from connecting to the first
	// insert received: how long PostgreSQL decoded before sending anything.
	FirstSeconds float64 `json:"first_seconds,omitempty"`
	// GOMAXPROCS is the bench process's setting while a limit ran.
	GOMAXPROCS int `json:"gomaxprocs,omitempty"`
}

func newPass(n int, elapsed time.Duration, payload float64, cpu cpuUse) pass {
	s := elapsed.Seconds()
	return pass{Events: n, Seconds: s, EventsPerSec: float64(n) / s, MBPerSec: float64(n) * payload / s / 1e6, CPU: cpu}
}

// relayRun is a drain of the backlog by the relay binary.
type relayRun struct {
	pass
	// StartupSeconds runs from starting the process to the first message
	// stored; SteadyEventsPerSec counts from there to the last.
	StartupSeconds     float64 `json:"startup_seconds"`
	SteadyEventsPerSec float64 `json:"steady_events_per_sec"`
	CPUPer100k         float64 `json:"relay_cpu_seconds_per_100k"`
	PeakRSS            int64   `json:"peak_rss_bytes"`
	// RSSSamples is the relay's RSS every second of the drain, in bytes,
	// and StoredSamples the stream's message count then.
	RSSSamples    []int64  `json:"rss_samples_bytes,omitempty"`
	StoredSamples []uint64 `json:"stored_samples,omitempty"`
}

// relayDrain starts the relay on a fresh stream and times it until the stream
// holds n messages: from starting the process to the stored time of the last
// message, as JetStream recorded it.
func (e *env) relayDrain(ctx context.Context, slot string, n, window int, payload float64) (relayRun, error) {
	stream := e.freshStream("BENCH")
	defer e.deleteStream(context.WithoutCancel(ctx), stream)
	before := sampleUsage(0, e.nats.pid())
	r, err := e.startRelay(stream, window, "RELAY_SLOT="+slot)
	if err != nil {
		return relayRun{}, err
	}
	stopped := false
	defer func() {
		if !stopped {
			_ = r.stop(30 * time.Second) // already failing
		}
	}()

	var (
		samples []int64
		counts  []uint64
	)
	state, err := waitDrain(ctx, e.js, stream, n, r, time.Second, func(st jetstream.StreamState) {
		if rss, _, err := memory(r.pid()); err == nil {
			samples = append(samples, rss)
			counts = append(counts, st.Msgs)
		}
	})
	if err != nil {
		return relayRun{}, err
	}
	after := sampleUsage(r.pid(), e.nats.pid())
	_, hwm, err := memory(r.pid())
	if err != nil {
		return relayRun{}, err
	}
	stopped = true
	if err := r.stop(30 * time.Second); err != nil {
		return relayRun{}, err
	}
	if state.Msgs != uint64(n) {
		return relayRun{}, fmt.Errorf("stream holds %d messages, want %d", state.Msgs, n)
	}
	cpu := after.since(before)
	res := relayRun{
		pass:           newPass(n, state.LastTime.Sub(r.started), payload, cpu),
		StartupSeconds: state.FirstTime.Sub(r.started).Seconds(),
		CPUPer100k:     cpu.RelaySeconds / float64(n) * 1e5,
		PeakRSS:        hwm,
		RSSSamples:     samples,
		StoredSamples:  counts,
	}
	if steady := state.LastTime.Sub(state.FirstTime).Seconds(); steady > 0 {
		res.SteadyEventsPerSec = float64(n-1) / steady
	}
	return res, nil
}

// waitDrain polls stream on js until it holds n messages, and returns its
// state then. It calls sample with the state last read at once and then
// every interval, and fails when the relay exits or the stream stops
// growing for stallTimeout.
func waitDrain(ctx context.Context, js jetstream.JetStream, stream string, n int, r *relayProc, every time.Duration, sample func(jetstream.StreamState)) (jetstream.StreamState, error) {
	var (
		state      jetstream.StreamState
		lastCount  uint64
		lastChange = time.Now()
		nextSample = time.Now()
	)
	for {
		if time.Now().After(nextSample) {
			sample(state)
			nextSample = nextSample.Add(every)
		}
		st, ok, err := streamStateIn(ctx, js, stream)
		if err != nil && ctx.Err() != nil {
			return state, ctx.Err()
		}
		if ok {
			state = st
			if state.Msgs >= uint64(n) {
				return state, nil
			}
			if state.Msgs != lastCount {
				lastCount, lastChange = state.Msgs, time.Now()
			}
		}
		if r.exited() {
			return state, fmt.Errorf("relay exited during the drain; log tail:\n%s", r.logTail())
		}
		if time.Since(lastChange) > stallTimeout {
			return state, fmt.Errorf("relay drain stalled at %d of %d events for %s; log tail:\n%s", lastCount, n, stallTimeout, r.logTail())
		}
		time.Sleep(25 * time.Millisecond)
	}
}

// XLogData starts with 'w', the WAL start, the server WAL end and the send
// time; the pgoutput message follows.
const xlogHeader = 1 + 8 + 8 + 8

// inputLimit is the fastest a client can take the backlog out of PostgreSQL:
// it streams the same publication with the same protocol (pgoutput, proto
// v1) from its own slot, counts the inserts, discards everything, and
// reports commit ends as flushed every second, as the relay does.
func (e *env) inputLimit(ctx context.Context, slot string, n int, payload float64) (pass, error) {
	before := sampleUsage(0, e.nats.pid())
	started := time.Now()
	cfg, err := pgconn.ParseConfig(e.dbURL)
	if err != nil {
		return pass{}, err
	}
	cfg.RuntimeParams["replication"] = "database"
	conn, err := pgconn.ConnectConfig(ctx, cfg)
	if err != nil {
		return pass{}, fmt.Errorf("input limit: %w", err)
	}
	defer func() { _ = conn.Close(context.WithoutCancel(ctx)) }() // the slot is dropped next
	err = pglogrepl.StartReplication(ctx, conn, slot, 0, pglogrepl.StartReplicationOptions{
		PluginArgs: []string{"proto_version '1'", "publication_names '" + publication + "'"},
	})
	if err != nil {
		return pass{}, fmt.Errorf("input limit: %w", err)
	}
	var (
		inserts    int
		first      time.Duration
		lastEnd    pglogrepl.LSN
		nextStatus = time.Now().Add(time.Second)
		lastData   = time.Now()
		netConn    = conn.Conn()
	)
	status := func() error {
		nextStatus = time.Now().Add(time.Second)
		if err := netConn.SetReadDeadline(nextStatus); err != nil {
			return err
		}
		if lastEnd == 0 {
			return nil
		}
		return pglogrepl.SendStandbyStatusUpdate(ctx, conn, pglogrepl.StandbyStatusUpdate{
			WALWritePosition: lastEnd, WALFlushPosition: lastEnd, WALApplyPosition: lastEnd,
		})
	}
	if err := status(); err != nil {
		return pass{}, err
	}
	for inserts < n {
		if !time.Now().Before(nextStatus) {
			if err := status(); err != nil {
				return pass{}, fmt.Errorf("input limit: %w", err)
			}
			if time.Since(lastData) > stallTimeout {
				return pass{}, fmt.Errorf("input limit stalled at %d of %d inserts", inserts, n)
			}
		}
		msg, err := conn.ReceiveMessage(context.Background())
		if err != nil {
			if pgconn.Timeout(err) && ctx.Err() == nil {
				continue
			}
			return pass{}, fmt.Errorf("input limit: %w", errors.Join(err, ctx.Err()))
		}
		switch msg := msg.(type) {
		case *pgproto3.CopyData:
			d := msg.Data
			switch {
			case len(d) > xlogHeader && d[0] == pglogrepl.XLogDataByteID:
				lastData = time.Now()
				switch wal := d[xlogHeader:]; wal[0] {
				case 'I':
					if inserts == 0 {
						first = time.Since(started)
					}
					inserts++
				case 'C':
					if len(wal) >= 18 {
						lastEnd = pglogrepl.LSN(binary.BigEndian.Uint64(wal[10:18]))
					}
				}
			case len(d) >= 18 && d[0] == pglogrepl.PrimaryKeepaliveMessageByteID && d[17] != 0:
				if err := status(); err != nil {
					return pass{}, fmt.Errorf("input limit: %w", err)
				}
			}
		case *pgproto3.ErrorResponse:
			return pass{}, fmt.Errorf("input limit: %w", pgconn.ErrorResponseToPgError(msg))
		}
	}
	elapsed := time.Since(started)
	cpu := sampleUsage(0, e.nats.pid()).since(before)
	_ = status() // courtesy; the slot is dropped next anyway
	p := newPass(n, elapsed, payload, cpu)
	p.FirstSeconds = first.Seconds()
	return p, nil
}

// outputLimit is the fastest n messages of the same payload size can be
// stored: a plain asynchronous JetStream publisher, each message with a
// unique Nats-Msg-Id, never more than window unacknowledged, waiting for the
// oldest acknowledgement as the relay does, into a fresh file stream like
// the one the relay creates.
func (e *env) outputLimit(ctx context.Context, n, window int, payload float64) (pass, error) {
	nc, err := nats.Connect(e.nats.url, nats.Name("bench-output-limit"))
	if err != nil {
		return pass{}, err
	}
	defer nc.Close()
	js, err := jetstream.New(nc, jetstream.WithPublishAsyncMaxPending(2*window))
	if err != nil {
		return pass{}, err
	}
	name := e.freshStream("LIMIT")
	defer e.deleteStream(context.WithoutCancel(ctx), name)
	cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	_, err = js.CreateStream(cctx, jetstream.StreamConfig{
		Name: name, Subjects: []string{"limit.>"}, Storage: jetstream.FileStorage, Duplicates: 2 * time.Minute, Replicas: 1,
	})
	cancel()
	if err != nil {
		return pass{}, err
	}
	data := []byte(fmt.Sprintf(`{"n": 123456, "pad": "%s"}`, strings.Repeat("x", max(0, int(payload)-24))))
	ring := make([]jetstream.PubAckFuture, window)
	wait := func(f jetstream.PubAckFuture) error {
		select {
		case <-f.Ok():
			return nil
		case err := <-f.Err():
			return fmt.Errorf("output limit: %w", err)
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	before := sampleUsage(0, e.nats.pid())
	started := time.Now()
	for i := range n {
		if f := ring[i%window]; f != nil {
			if err := wait(f); err != nil {
				return pass{}, err
			}
		}
		msg := &nats.Msg{Subject: "limit.order.created", Data: data, Header: nats.Header{jetstream.MsgIDHeader: []string{"limit-" + strconv.Itoa(i)}}}
		f, err := js.PublishMsgAsync(msg)
		if err != nil {
			return pass{}, fmt.Errorf("output limit: %w", err)
		}
		ring[i%window] = f
	}
	for i := n; i < n+window; i++ {
		if f := ring[i%window]; f != nil {
			if err := wait(f); err != nil {
				return pass{}, err
			}
		}
	}
	return e.outputPass(ctx, "output limit", name, n, started, before, payload)
}

// outputPass ends an output limit started at started (NATS's CPU use then
// before) that stored n messages of payload bytes in stream name: the pass,
// once the stream is seen to hold exactly n.
func (e *env) outputPass(ctx context.Context, what, name string, n int, started time.Time, before usage, payload float64) (pass, error) {
	elapsed := time.Since(started)
	cpu := sampleUsage(0, e.nats.pid()).since(before)
	st, _, err := e.streamState(ctx, name)
	if err != nil {
		return pass{}, err
	}
	if st.Msgs != uint64(n) {
		return pass{}, fmt.Errorf("%s: stream holds %d messages, want %d", what, st.Msgs, n)
	}
	return newPass(n, elapsed, payload, cpu), nil
}
