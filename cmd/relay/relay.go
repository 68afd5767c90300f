package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/pprof"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/outbox-relay/outbox-relay/internal/backoff"
	"github.com/outbox-relay/outbox-relay/internal/cdc"
	"github.com/outbox-relay/outbox-relay/internal/leader"
	"github.com/outbox-relay/outbox-relay/internal/metrics"
	"github.com/outbox-relay/outbox-relay/internal/relay"
	"github.com/outbox-relay/outbox-relay/internal/sink"
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
		zap.String("table", cfg.cdc.Schema+"."+cfg.cdc.Table))

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
	for {
		pctx, cancel := context.WithCancel(ctx)
		var lease *leader.Lease
		if cfg.leaderElection {
			health.SetRole(relay.RoleWaiting)
			m.Leader.Set(0)
			l, err := elector.Acquire(ctx, func(ready bool) {
				if ready {
					health.SetRole(relay.RoleStandby)
				} else {
					health.SetRole(relay.RoleWaiting)
				}
			})
			if err != nil {
				cancel()
				return nil // ctx is done
			}
			lease = l
			go func() {
				// Step down at once when the lease may have ended.
				select {
				case <-lease.Lost():
					m.Leader.Set(0) // no longer leading, even while winding down
					cancel()
				case <-pctx.Done():
				}
			}()
			log.Info("leadership acquired", zap.String("slot", cfg.cdc.Slot))
		}
		health.SetRole(relay.RoleLeader)
		m.Leader.Set(1)
		err := relayAsLeader(pctx, cfg, log, m, health, nc)
		m.StepDown()
		lost := pctx.Err() != nil && ctx.Err() == nil
		cancel()
		if lease != nil {
			lease.Release()
		}
		if ctx.Err() != nil {
			health.SetRole(relay.RoleStopping)
			if errors.Is(err, context.Canceled) {
				return nil // a signal is a clean shutdown
			}
			return err
		}
		if lost {
			// Whatever failed was cut short by the lost lease.
			log.Warn("leadership lost, standing by", zap.String("slot", cfg.cdc.Slot), zap.Error(err))
			continue
		}
		if err != nil {
			return err
		}
		return nil
	}
}

// relayAsLeader runs preflight, then the reader and the pump, until ctx is
// done or either fails for good.
func relayAsLeader(ctx context.Context, cfg *config, log *zap.Logger, m *metrics.Metrics, health *relay.Health, nc *sink.Connection) error {
	js := nc.JetStream
	tails := sink.NewTailReader(js, cfg.sink.Stream, relay.HeaderOrigin, cfg.sink.RequestTimeout)
	stream, err := retry(ctx, log, "stream preflight", cfg, func() (sink.StreamState, error) {
		return nc.EnsureStream(ctx, cfg.sink, []string{cfg.template.Wildcard()}, log.Named("sink"))
	}, sink.ErrConfig)
	if err != nil {
		return err
	}
	slot, err := retry(ctx, log, "postgres preflight", cfg, func() (cdc.SlotState, error) {
		return cdc.Preflight(ctx, cfg.cdc, log.Named("cdc"), func(systemID, database string) error {
			return slotNeverExisted(ctx, tails, origin(systemID, database, cfg.cdc.Slot))
		})
	}, cdc.ErrConfig, cdc.ErrSlot)
	if err != nil {
		return err
	}
	mapper := relay.NewMapper(cfg.template, origin(slot.SystemID, slot.Database, cfg.cdc.Slot), stream.Subjects)
	pumpCfg := cfg.pump
	pumpCfg.MaxPayload = nc.MaxPayload()

	publisher, err := sink.New(nc.Conn, cfg.sink, m)
	if err != nil {
		return err
	}
	defer func() { _ = publisher.Close() }()
	reader := cdc.NewReader(cfg.cdc, log.Named("cdc"), m)
	pump := relay.New(reader, publisher, tails, mapper, pumpCfg, log.Named("pump"), m)
	health.Attach(relay.Probes{
		Heartbeat:     reader.Heartbeat,
		OldestPending: reader.Tracker().OldestPending,
		LastProgress:  pump.LastProgress,
		PostgresUp:    reader.Streaming,
		NATSUp:        nc.IsConnected,
	})

	// The reader outlives the pump: after the pump has let its last
	// publishes finish, the reader reports their position and closes.
	readerCtx, stopReader := context.WithCancel(context.WithoutCancel(ctx))
	defer stopReader()
	readerDone := make(chan error, 1)
	go func() { readerDone <- reader.Run(readerCtx) }()
	monitorDone := make(chan struct{})
	go func() {
		defer close(monitorDone)
		cdc.MonitorSlot(readerCtx, cfg.cdc, log.Named("cdc"), m)
	}()

	pumpErr := pump.Run(ctx)
	stopReader()
	readerErr := <-readerDone
	<-monitorDone
	return errors.Join(pumpErr, readerErr)
}

// origin identifies where positions come from: the cluster, the database
// and the slot.
func origin(systemID, database, slot string) string {
	return systemID + "/" + database + "/" + slot
}

// slotNeverExisted refuses to create a slot when the stream already holds
// events from a slot of that name: the slot was dropped, and a new one would
// silently skip everything committed in between.
func slotNeverExisted(ctx context.Context, tails *sink.TailReader, origin string) error {
	tail, err := tails.Tail(ctx)
	if err != nil {
		return fmt.Errorf("read the stream to check the slot's history: %w", err)
	}
	if pos, ok := relay.PositionFromHeader(tail.Header, origin); ok {
		return fmt.Errorf("the stream holds events from this slot up to %s, so it existed and was dropped; events committed since may be missing. See the README's slot recovery section", pos)
	}
	return nil
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
