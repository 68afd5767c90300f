package main

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/pprof"
	"net/url"
	"strconv"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/outbox-relay/outbox-relay/internal/backoff"
	"github.com/outbox-relay/outbox-relay/internal/cdc"
	"github.com/outbox-relay/outbox-relay/internal/janitor"
	"github.com/outbox-relay/outbox-relay/internal/leader"
	"github.com/outbox-relay/outbox-relay/internal/metrics"
	"github.com/outbox-relay/outbox-relay/internal/relay"
	"github.com/outbox-relay/outbox-relay/internal/sink"
	"github.com/outbox-relay/outbox-relay/internal/tracing"
)

// newLogger builds the zap logger the configuration asks for, writing to out.
func newLogger(cfg *config, out io.Writer) *zap.Logger {
	level, _ := zapcore.ParseLevel(cfg.logLevel) // validated in finish
	encCfg := zap.NewProductionEncoderConfig()
	encCfg.EncodeTime = zapcore.ISO8601TimeEncoder
	var enc zapcore.Encoder
	if cfg.logFormat == "console" {
		encCfg.EncodeLevel = zapcore.CapitalLevelEncoder
		if isTerminal(out) {
			encCfg.EncodeLevel = zapcore.CapitalColorLevelEncoder
		}
		enc = zapcore.NewConsoleEncoder(encCfg)
	} else {
		enc = zapcore.NewJSONEncoder(encCfg)
	}
	return zap.New(zapcore.NewCore(enc, zapcore.Lock(zapcore.AddSync(out)), level))
}

// runRelay runs the relay until ctx is done or a failure no retry can fix.
func runRelay(ctx context.Context, cfg *config, logOut io.Writer) (err error) {
	log := newLogger(cfg, logOut)
	defer func() { _ = log.Sync() }() // stderr may not support sync
	m := metrics.New(version, commit)
	health := relay.NewHealth(cfg.stallTimeout, beatTimeout(cfg))

	srv, err := serveHTTP(cfg.httpAddr, cfg.pprof, m, health)
	if err != nil {
		return err
	}
	defer func() {
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(sctx) // exiting anyway
	}()
	log.Info("relay starting", zap.String("slot", cfg.cdc.Slot), zap.String("stream", cfg.sink.Stream),
		zap.String("table", cfg.cdc.TablesText()))

	nc, err := sink.Connect(cfg.sink, log.Named("sink"), m)
	if err != nil {
		return err
	}
	defer nc.Close()

	err = lead(ctx, cfg, log, m, health, nc)
	if err != nil {
		health.SetRole(relay.RoleUnhealthy)
		return err
	}
	log.Info("relay stopped")
	return nil
}

// lead wins leadership (when election is on), relays while it lasts, and
// stands by again when it is lost, until ctx is done.
func lead(ctx context.Context, cfg *config, log *zap.Logger, m *metrics.Metrics, health *relay.Health, nc *sink.Connection) error {
	election := cfg.election
	election.Key = cfg.cdc.Slot // advisory locks are per database already
	elector := leader.New(election, log.Named("leader"))
	lc := &lifecycle{
		elect: func(ctx context.Context) (lease, error) {
			if !cfg.leaderElection {
				return unelected{}, nil
			}
			l, err := elector.Acquire(ctx, func(ready bool) {
				if ready {
					health.SetRole(relay.RoleStandby)
				} else {
					health.SetRole(relay.RoleWaiting)
				}
			})
			if err != nil {
				return nil, err
			}
			log.Info("leadership acquired", zap.String("slot", cfg.cdc.Slot))
			return l, nil
		},
		build: func(ctx context.Context) (*pipeline, error) {
			return buildPipeline(ctx, cfg, log, m, health, nc)
		},
		fatal:  func(err error) bool { return errors.Is(err, leader.ErrNotDirect) },
		report: func(to leaderRole, why ending) { reportRole(m, health, to, why) },
		log:    log.With(zap.String("slot", cfg.cdc.Slot)),
	}
	return lc.Run(ctx)
}

// reportRole shows a lifecycle transition in the probes and metrics.
func reportRole(m *metrics.Metrics, health *relay.Health, to leaderRole, why ending) {
	switch to {
	case roleStandby:
		m.StepDown()
		health.SetRole(relay.RoleWaiting) // until the elector reaches PostgreSQL
	case roleLeader:
		health.SetRole(relay.RoleLeader)
		m.Leader.Set(1)
	case roleDraining:
		m.Leader.Set(0) // no longer leading, even while winding down
		if why == endLost {
			// Ready and live while it winds down: a sidecar's pod must
			// not leave service because its relay stepped down.
			health.SetRole(relay.RoleStandby)
		} else {
			health.SetRole(relay.RoleStopping)
		}
	case roleStopped:
		m.StepDown()
		health.SetRole(relay.RoleStopping)
	}
}

// buildPipeline runs preflight and wires the reader, the pump and the slot
// monitor of one leadership; lead starts and stops them.
func buildPipeline(ctx context.Context, cfg *config, log *zap.Logger, m *metrics.Metrics, health *relay.Health, nc *sink.Connection) (*pipeline, error) {
	streamLog := sink.NewStreamReader(nc.Conn, nc.JetStream, cfg.sink.Stream, cfg.sink.RequestTimeout)
	stream, err := retry(ctx, log, "stream preflight", cfg, func() (sink.StreamState, error) {
		return nc.EnsureStream(ctx, cfg.sink, []string{cfg.template.Wildcard()}, log.Named("sink"))
	}, sink.ErrConfig)
	if err != nil {
		return nil, err
	}
	store, err := retry(ctx, log, "open state bucket", cfg, func() (*sink.StateStore, error) {
		return sink.OpenStateStore(ctx, nc, cfg.sink.StateBucket, stream.Replicas, cfg.sink.RequestTimeout)
	}, sink.ErrConfig)
	if err != nil {
		return nil, err
	}
	slot, err := retry(ctx, log, "postgres preflight", cfg, func() (cdc.SlotState, error) {
		return preflight(ctx, cfg, log, m, nc, stream, streamLog, store)
	}, cdc.ErrConfig, cdc.ErrSlot, relay.ErrPoison)
	if err != nil {
		return nil, err
	}
	marks := relay.NewWatermark(streamLog, store, cfg.sink.Stream, origin(slot.SystemID, slot.Database, cfg.cdc.Slot), log.Named("pump"))
	// A publication changed while no relay ran would have kept inserts
	// from the slot: compare with the one the last start validated.
	pubStore := publicationStore{store: store, key: "publication." + relay.MarkKey(cfg.cdc.Publication, marks.Origin())}
	if _, err := retry(ctx, log, "check the publication's history", cfg, func() (struct{}, error) {
		return struct{}{}, cdc.ReconcilePublication(ctx, pubStore, cfg.cdc, slot.Publication)
	}, cdc.ErrConfig); err != nil {
		return nil, err
	}
	if slot.Created {
		// From now on a dropped slot is detected even if the stream's
		// retention removes every message of this relay.
		if _, err := retry(ctx, log, "record the new slot", cfg, func() (struct{}, error) {
			return struct{}{}, registerSlot(ctx, marks)
		}); err != nil {
			return nil, err
		}
	}
	if _, err := retry(ctx, log, "check for an unfinished recovery", cfg, func() (struct{}, error) {
		return struct{}{}, recoveryFinished(ctx, store, cfg.sink.Stream, marks.Origin())
	}, cdc.ErrSlot); err != nil {
		return nil, err
	}
	// A server that lacks WAL the relay published (a failover to a lagging
	// standby) is refused: the reader compares it with the mark.
	published, err := retry(ctx, log, "read the high-water mark", cfg, func() (pglogrepl.LSN, error) {
		return highWater(ctx, marks)
	})
	if err != nil {
		return nil, err
	}
	mapper, err := newMapper(cfg, marks.Origin(), slot.Database, stream.Subjects)
	if err != nil {
		return nil, err
	}
	pumpCfg := pumpConfig(cfg, nc, stream)

	sinkCfg := cfg.sink
	// Atomic batches are published as they are.
	sinkCfg.FastBatch = !cfg.pump.Atomic && sink.UsesFastBatch(cfg.sink.PublishMode, stream)
	mode := sink.PublishAsync
	if sinkCfg.FastBatch {
		mode = sink.PublishBatch
	}
	log.Info("publish mode", zap.String("publish_mode", mode), zap.String("configured", cfg.sink.PublishMode), zap.Bool("allow_batched", stream.AllowBatched))
	publisher, err := sink.New(nc.Conn, sinkCfg, m)
	if err != nil {
		return nil, err
	}
	publisher.FailOnDisconnect(nc.Disconnected)
	cdcCfg := cfg.cdc
	cdcCfg.MaxRowBytes = nc.MaxPayload()
	reader := cdc.NewReader(cdcCfg, log.Named("cdc"), m)
	reader.SetPublicationBaseline(slot.Publication)
	reader.SetHighWater(published, timelineStore{store: store, key: timelineKey(cfg.sink.Stream, marks.Origin())})
	pump := relay.New(reader, publisher, marks, mapper, pumpCfg, log.Named("pump"), m)
	closeSpans := func() {}
	if cfg.tracing.Enabled() {
		traceCfg := cfg.tracing
		traceCfg.Stream, traceCfg.Version = cfg.sink.Stream, version
		spans, err := tracing.New(traceCfg, log.Named("trace"), m)
		if err != nil {
			_ = publisher.Close() // nothing was published
			return nil, err
		}
		pump.OnStored(spans.Stored)
		closeSpans = func() {
			sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			_ = spans.Shutdown(sctx) // spans not exported in time are lost, nothing else
		}
	}
	health.Attach(relay.Probes{
		Heartbeat:     reader.Heartbeat,
		OldestPending: reader.Tracker().OldestPending,
		LastProgress:  pump.LastProgress,
		PostgresUp:    reader.Streaming,
		NATSUp:        nc.IsConnected,
	})

	p := &pipeline{
		reader: reader,
		pump:   pump,
		monitor: stageFunc(func(ctx context.Context) error {
			cdc.MonitorSlot(ctx, cfg.cdc, log.Named("cdc"), m)
			return nil
		}),
		close: func() {
			_ = publisher.Close() // nothing is in flight any more
			closeSpans()
		},
	}
	if cfg.janitor.Enabled() {
		p.janitor = janitor.New(cfg.janitor, func(ctx context.Context) (*pgx.Conn, error) { return cdc.Connect(ctx, cfg.cdc) },
			janitorStore{store: store, key: janitorKey(cfg.sink.Stream, marks.Origin())}, janitorMetrics{m}, log.Named("janitor"))
	}
	return p, nil
}

// janitorKey is the state bucket key of the janitor's state for origin's
// outbox.
func janitorKey(stream, origin string) string { return "janitor." + relay.MarkKey(stream, origin) }

// janitorStore keeps the janitor's state in the state bucket, where `relay
// status` reads it.
type janitorStore struct {
	store *sink.StateStore
	key   string
}

func (s janitorStore) Load(ctx context.Context) (janitor.State, bool, error) {
	data, ok, err := s.store.Load(ctx, s.key)
	if err != nil || !ok {
		return janitor.State{}, false, err
	}
	var st janitor.State
	if err := json.Unmarshal(data, &st); err != nil {
		return janitor.State{}, false, fmt.Errorf("decode the janitor's state %q: %w", data, err)
	}
	return st, true, nil
}

func (s janitorStore) Save(ctx context.Context, st janitor.State) error {
	data, err := json.Marshal(st)
	if err != nil {
		return fmt.Errorf("encode the janitor's state: %w", err)
	}
	return s.store.Save(ctx, s.key, data)
}

// janitorMetrics counts the janitor's runs.
type janitorMetrics struct{ m *metrics.Metrics }

func (j janitorMetrics) Ran(res janitor.Result, err error, at time.Time) {
	j.m.JanitorRowsDeleted.Add(float64(res.RowsDeleted))
	j.m.JanitorPartitionsDropped.Add(float64(res.PartitionsDropped))
	j.m.JanitorLastRun.Set(float64(at.UnixNano()) / 1e9)
	if err != nil {
		j.m.JanitorErrors.Inc()
		return
	}
	j.m.JanitorLastSuccess.Set(float64(at.UnixNano()) / 1e9)
}

// newMapper builds the mapper of events to messages of origin's slot in
// database, for a stream capturing subjects: the same for relay run, relay
// recover and the initial snapshot.
func newMapper(cfg *config, origin, database string, subjects []string) (*relay.Mapper, error) {
	mapper := relay.NewMapper(cfg.template, origin, subjects)
	if cfg.cloudEvents {
		source := "/outbox-relay/" + url.PathEscape(database)
		if !cfg.cdc.Several() {
			source += "/" + url.PathEscape(cfg.cdc.Schema+"."+cfg.cdc.Table)
		}
		source = cmp.Or(cfg.cloudEventsSource, source)
		ce, err := relay.NewCloudEvents(source, cfg.cloudEventsType)
		if err != nil {
			return nil, err
		}
		mapper.SetCloudEvents(ce)
	}
	return mapper, nil
}

// pumpConfig is the pump's configuration for publishing to stream: a dead
// letter must fit the server and the stream it goes to, and the relay's own
// stream is the one it knows.
func pumpConfig(cfg *config, nc *sink.Connection, stream sink.StreamState) relay.Config {
	pumpCfg := cfg.pump
	pumpCfg.MaxPayload = nc.MaxPayload()
	if stream.MaxMsgSize > 0 && int64(stream.MaxMsgSize) < pumpCfg.MaxPayload {
		pumpCfg.MaxPayload = int64(stream.MaxMsgSize)
	}
	return pumpCfg
}

// origin identifies where positions come from: the cluster, the database
// and the slot.
func origin(systemID, database, slot string) string {
	return systemID + "/" + database + "/" + slot
}

// slotNeverExisted refuses to create a slot when this relay published events
// of a slot of that name before (its high-water mark is recorded, or the
// stream holds its messages): the slot was dropped, and a new one would
// silently skip everything committed in between.
func slotNeverExisted(ctx context.Context, marks *relay.Watermark) error {
	mark, existed, err := marks.Existed(ctx)
	if err != nil {
		return fmt.Errorf("read the relay's high-water mark to check the slot's history: %w", err)
	}
	if !existed {
		return nil
	}
	if mark.Position.IsZero() {
		return errors.New("the relay recorded this slot before (in its state bucket), so it existed and was dropped; events committed since may be missing. See the README's slot recovery section")
	}
	return fmt.Errorf("the relay published events of this slot up to %s, so it existed and was dropped; events committed since may be missing. See the README's slot recovery section", mark.Position)
}

// publicationStore keeps the fingerprint of the publication a slot decodes
// in the state bucket.
type publicationStore struct {
	store *sink.StateStore
	key   string
}

func (s publicationStore) Load(ctx context.Context) (cdc.PublicationFingerprint, bool, error) {
	data, ok, err := s.store.Load(ctx, s.key)
	return cdc.PublicationFingerprint(data), ok, err
}

func (s publicationStore) Save(ctx context.Context, fp cdc.PublicationFingerprint) error {
	return s.store.Save(ctx, s.key, []byte(fp))
}

// highWater returns the commit LSN of the last of the relay's events the
// stream holds, as the pump will find it (from the state bucket alone when
// the stream is missing: the pump waits for it then).
func highWater(ctx context.Context, marks *relay.Watermark) (pglogrepl.LSN, error) {
	r, err := marks.Read(ctx, relay.Mark{}, 0, false)
	if errors.Is(err, sink.ErrStreamMissing) {
		m, _, err := marks.Load(ctx)
		return m.Position.CommitLSN, err
	}
	return r.Mark.Position.CommitLSN, err
}

// timelineKey is the state bucket key of the timeline the relay last
// streamed origin's events into stream from.
func timelineKey(stream, origin string) string { return "timeline." + relay.MarkKey(stream, origin) }

// timelineStore keeps the timeline the relay last streamed from in the state
// bucket, next to the high-water mark whose position it qualifies.
type timelineStore struct {
	store *sink.StateStore
	key   string
}

func (s timelineStore) Load(ctx context.Context) (int32, bool, error) {
	data, ok, err := s.store.Load(ctx, s.key)
	if err != nil || !ok {
		return 0, false, err
	}
	tli, err := strconv.ParseInt(string(data), 10, 32)
	if err != nil {
		return 0, false, fmt.Errorf("decode the recorded timeline %q: %w", data, err)
	}
	return int32(tli), true, nil
}

func (s timelineStore) Save(ctx context.Context, timeline int32) error {
	return s.store.Save(ctx, s.key, []byte(strconv.Itoa(int(timeline))))
}

// registerSlot records a slot created just now in the state bucket.
func registerSlot(ctx context.Context, marks *relay.Watermark) error {
	if _, recorded, err := marks.Load(ctx); err != nil || recorded {
		return err
	}
	return marks.Save(ctx, relay.Mark{})
}

// retry calls f until it succeeds, fails with one of the fatal errors, or ctx
// is done, with backoff and a log line per failure.
func retry[T any](ctx context.Context, log *zap.Logger, what string, cfg *config, f func() (T, error), fatal ...error) (T, error) {
	bo := backoff.Backoff{Min: cfg.cdc.ReconnectMin, Max: cfg.cdc.ReconnectMax}
	for {
		v, err := f()
		if err == nil {
			return v, nil
		}
		for _, target := range fatal {
			if errors.Is(err, target) {
				return v, err
			}
		}
		if ctx.Err() != nil {
			return v, ctx.Err()
		}
		delay := bo.Next()
		log.Warn(what+" failed, retrying", zap.Int("attempt", bo.Attempt()), zap.Duration("backoff", delay), zap.Error(err))
		if !backoff.Sleep(ctx, delay) {
			return v, ctx.Err()
		}
	}
}

// beatTimeout is how long the replication loop may stay silent before
// liveness fails: longer than any wait it makes on purpose.
func beatTimeout(cfg *config) time.Duration {
	return cfg.cdc.ReconnectMax + 2*cfg.cdc.ConnectTimeout + 2*cfg.cdc.QueryTimeout + 3*cfg.cdc.StatusInterval
}

// serveHTTP serves /metrics, /healthz and /readyz on addr.
func serveHTTP(addr string, profile bool, m *metrics.Metrics, health *relay.Health) (*http.Server, error) {
	mux := http.NewServeMux()
	if profile {
		mux.HandleFunc("/debug/pprof/", pprof.Index)
		mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
		mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	}
	mux.Handle("/metrics", m.Handler())
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) {
		writeProbe(w, health.Role(), health.Live(time.Now()))
	})
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, _ *http.Request) {
		writeProbe(w, health.Role(), health.Ready())
	})
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("http-addr: listen on %s: %w", addr, err)
	}
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = srv.Serve(ln) }() // ends with Shutdown
	return srv, nil
}

func writeProbe(w http.ResponseWriter, role relay.Role, err error) {
	w.Header().Set("Content-Type", "application/json")
	body := map[string]string{"role": string(role), "status": "ok"}
	if err != nil {
		body["status"] = "fail"
		body["reason"] = err.Error()
		w.WriteHeader(http.StatusServiceUnavailable)
	}
	_ = json.NewEncoder(w).Encode(body) // the prober may have gone
}
