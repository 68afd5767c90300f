package cdc

import (
	"context"
	"errors"
	"time"

	"github.com/jackc/pgx/v5"
	"go.uber.org/zap"

	"github.com/outbox-relay/outbox-relay/internal/backoff"
	"github.com/outbox-relay/outbox-relay/internal/metrics"
)

// SlotReading is one reading of the slot from pg_replication_slots.
type SlotReading struct {
	Exists bool
	Active bool
	// WALStatus is pg_replication_slots.wal_status.
	WALStatus string
	// InvalidationReason is why PostgreSQL invalidated the slot
	// (pg_replication_slots.invalidation_reason, PostgreSQL 17+, e.g.
	// idle_timeout; "conflicting" on PostgreSQL 16); empty while it is
	// valid.
	InvalidationReason string
	// RetainedBytes is the server's WAL position (walPositionSQL) -
	// restart_lsn: WAL kept for the slot.
	RetainedBytes int64
	// LagBytes is the server's WAL position - confirmed_flush_lsn.
	LagBytes int64
	// SafeWALSize is safe_wal_size, or -1 when max_slot_wal_keep_size is
	// unlimited.
	SafeWALSize    int64
	ConfirmedFlush string
	CurrentWAL     string
	MaxSlotWALKeep string
}

// ReadSlot reads the slot's state on a normal connection.
func ReadSlot(ctx context.Context, conn *pgx.Conn, slot string, timeout time.Duration) (SlotReading, error) {
	q := querier{conn: conn, timeout: timeout}
	var r SlotReading
	var walStatus, confirmed, invalidation *string
	var retained, lag, safe *int64
	err := q.row(ctx, `SELECT s.active, s.wal_status, `+invalidationReasonSQL+`,
			(w.lsn - s.restart_lsn)::bigint,
			(w.lsn - s.confirmed_flush_lsn)::bigint,
			s.safe_wal_size, s.confirmed_flush_lsn::text, w.lsn::text,
			current_setting('max_slot_wal_keep_size')
		FROM pg_replication_slots s, (SELECT `+walPositionSQL+` AS lsn) w WHERE s.slot_name = $1`, slot).
		Scan(&r.Active, &walStatus, &invalidation, &retained, &lag, &safe, &confirmed, &r.CurrentWAL, &r.MaxSlotWALKeep)
	if errors.Is(err, pgx.ErrNoRows) {
		return r, nil
	}
	if err != nil {
		return r, err
	}
	r.Exists = true
	r.WALStatus, r.ConfirmedFlush, r.InvalidationReason = deref(walStatus), deref(confirmed), deref(invalidation)
	r.SafeWALSize = -1
	if safe != nil {
		r.SafeWALSize = *safe
	}
	if retained != nil {
		r.RetainedBytes = *retained
	}
	if lag != nil {
		r.LagBytes = *lag
	}
	return r, nil
}

// LostCause explains why the slot can no longer be used, naming the cause
// and how to avoid it, or returns "" when it is not lost.
func (r SlotReading) LostCause() string {
	if !r.Exists || (r.WALStatus != "lost" && r.InvalidationReason == "") {
		return ""
	}
	return lostSlotCause(r.InvalidationReason)
}

// MonitorSlot polls the slot every SlotPollInterval and exports its retained
// WAL, safe_wal_size and wal_status, and whether its walsender waits for a
// standby (PostgreSQL 17+), until ctx is done. It keeps its own
// normal connection, reconnecting with backoff.
func MonitorSlot(ctx context.Context, cfg Config, log *zap.Logger, m *metrics.Metrics) {
	bo := backoff.Backoff{Min: cfg.ReconnectMin, Max: cfg.ReconnectMax}
	var conn *pgx.Conn
	defer func() {
		if conn != nil {
			closeConn(conn, cfg.ConnectTimeout)
		}
	}()
	tick := time.NewTicker(cfg.SlotPollInterval)
	defer tick.Stop()
	var wait standbyWait
	for {
		if conn == nil {
			c, err := connect(ctx, cfg, false)
			if err != nil {
				if ctx.Err() != nil {
					return
				}
				delay := bo.Next()
				log.Debug("slot monitor connection failed", zap.Int("attempt", bo.Attempt()), zap.Duration("backoff", delay), zap.Error(err))
				if !backoff.Sleep(ctx, delay) {
					return
				}
				continue
			}
			conn = c
			bo.Reset()
		}
		r, err := ReadSlot(ctx, conn, cfg.Slot, cfg.QueryTimeout)
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			log.Debug("slot monitor query failed", zap.Error(err))
			closeConn(conn, cfg.ConnectTimeout)
			conn = nil
			continue
		}
		if !r.Exists {
			m.SetSlotWALStatus("missing")
		} else {
			m.SetSlotWALStatus(r.WALStatus)
			m.CDCSlotRetainedWAL.Set(float64(r.RetainedBytes))
			m.CDCSlotSafeWALSize.Set(float64(r.SafeWALSize))
			// The reader updates the lag from keepalives, which it cannot
			// read while it waits for a slow publisher; the poll keeps
			// the gauge true then.
			m.CDCLagBytes.Set(float64(max(0, r.LagBytes)))
			if err := wait.observe(ctx, conn, cfg, log, m); err != nil && ctx.Err() == nil {
				log.Debug("slot monitor query failed", zap.Error(err))
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}
