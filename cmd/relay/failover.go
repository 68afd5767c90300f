package main

import (
	"context"
	"fmt"
	"io"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
	"go.uber.org/zap"

	"github.com/outbox-relay/outbox-relay/internal/cdc"
	"github.com/outbox-relay/outbox-relay/internal/relay"
	"github.com/outbox-relay/outbox-relay/internal/sink"
)

// checkFailover warns, for `relay check` with --failover-slot, about what a
// failover lacks as far as the primary can tell.
func checkFailover(ctx context.Context, cfg *config, conn *pgx.Conn, r *checkReport) {
	if !cfg.cdc.FailoverSlot {
		return
	}
	f, err := cdc.ReadFailover(ctx, conn, cfg.cdc.Slot, cfg.cdc.QueryTimeout)
	switch {
	case err != nil:
		r.fail(err)
	case !f.Supported:
		r.fail(fmt.Errorf("failover-slot: failover slots need PostgreSQL 17 or later; turn the flag off: %w", cdc.ErrConfig))
	case f.InRecovery:
		r.warn("failover-slot: the server is a standby; what a failover needs is checked on the primary")
	default:
		problems := f.Problems(cfg.cdc.Slot)
		for _, p := range problems {
			r.warn("failover-slot: " + p)
		}
		if len(problems) == 0 {
			r.ok(fmt.Sprintf("failover-slot: synchronized_standby_slots names %d standby slot(s), each with its standby attached", len(f.StandbySlots)))
		}
	}
}

// printFailover prints the slot's failover state on PostgreSQL 17+: its
// failover and synced flags and, on a primary, the standbys the walsender
// waits for.
func printFailover(ctx context.Context, cfg *config, conn *pgx.Conn, out io.Writer) {
	f, err := cdc.ReadFailover(ctx, conn, cfg.cdc.Slot, cfg.cdc.QueryTimeout)
	if err != nil {
		fmt.Fprintf(out, "  failover:            could not be read: %v\n", err)
		return
	}
	if !f.Supported || !f.SlotExists {
		return
	}
	fmt.Fprintf(out, "  failover:            %t\n", f.Failover)
	fmt.Fprintf(out, "  synced:              %t\n", f.Synced)
	if f.InRecovery {
		return
	}
	if len(f.StandbySlots) == 0 {
		fmt.Fprintln(out, "  standby slots:       none (synchronized_standby_slots is empty)")
	}
	for _, s := range f.StandbySlots {
		state := "missing"
		switch {
		case !s.Exists:
		case !s.Physical:
			state = "not a physical slot"
		case s.Invalidated:
			state = "invalidated"
		case !s.Active:
			state = "no standby attached"
		case s.Behind == 0:
			state = "attached, caught up"
		default:
			state = fmt.Sprintf("attached, %s behind", bytesText(s.Behind))
		}
		fmt.Fprintf(out, "  standby slot %s: %s\n", s.Name, state)
	}
	if f.Waiting {
		fmt.Fprintf(out, "  waiting for standby: %s\n", f.WaitReason())
	}
}

// printTimeline prints the server's timeline and the one the relay last
// streamed from, and returns the divergence error when the server's WAL does
// not hold the last event the stream has from this origin.
func printTimeline(ctx context.Context, cfg *config, store *sink.StateStore, origin string, published pglogrepl.LSN, out io.Writer) error {
	h, err := readHistory(ctx, cfg, store, origin)
	if err != nil {
		return err
	}
	if h.found {
		fmt.Fprintf(out, "  timeline:            %d (the relay last streamed from %d)\n", h.wal.Timeline, h.recorded)
	} else {
		fmt.Fprintf(out, "  timeline:            %d\n", h.wal.Timeline)
	}
	return cdc.CheckHistory(cdc.Published{CommitLSN: published, Timeline: h.recorded}, h.wal)
}

// history is the server's WAL history and the timeline the relay last
// streamed origin's events from (found false: none recorded).
type history struct {
	wal      cdc.ServerWAL
	recorded int32
	found    bool
}

func readHistory(ctx context.Context, cfg *config, store *sink.StateStore, origin string) (history, error) {
	wal, err := cdc.ServerHistory(ctx, cfg.cdc)
	if err != nil {
		return history{}, err
	}
	recorded, found, err := timelineStore{store: store, key: timelineKey(cfg.sink.Stream, origin)}.Load(ctx)
	if err != nil {
		return history{}, err
	}
	return history{wal: wal, recorded: recorded, found: found}, nil
}

// checkHistory is relay run's divergence check at session start, for relay
// check: the server's WAL must hold the last event the stream has from
// origin (a failover to a standby that lacked it fails here).
func checkHistory(ctx context.Context, cfg *config, nc *sink.Connection, origin string) error {
	streamLog := sink.NewStreamReader(nc.Conn, nc.JetStream, cfg.sink.Stream, cfg.sink.RequestTimeout)
	store, err := sink.OpenStateStore(ctx, nc, cfg.sink.StateBucket, 0, cfg.sink.RequestTimeout)
	if err != nil {
		return err
	}
	published, err := highWater(ctx, relay.NewWatermark(streamLog, store, cfg.sink.Stream, origin, zap.NewNop()))
	if err != nil {
		return fmt.Errorf("read the relay's high-water mark: %w", err)
	}
	h, err := readHistory(ctx, cfg, store, origin)
	if err != nil {
		return err
	}
	return cdc.CheckHistory(cdc.Published{CommitLSN: published, Timeline: h.recorded}, h.wal)
}
