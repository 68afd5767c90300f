package cdc

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"go.uber.org/zap"

	"github.com/outbox-relay/outbox-relay/internal/metrics"
)

// What a failover slot (PostgreSQL 17+) needs, as far as the primary can
// tell: the slot's failover flag, and synchronized_standby_slots naming the
// physical slot of each standby that may take over, which must exist and
// have its standby attached. The standbys' own settings
// (sync_replication_slots, hot_standby_feedback, a dbname in
// primary_conninfo) are not visible from the primary.

// waitForStandbyEvent is the wait event of a walsender that holds changes
// back until the standbys in synchronized_standby_slots confirm the WAL.
const waitForStandbyEvent = "WaitForStandbyConfirmation"

// FailoverReading is what the server says about the slot's readiness for a
// failover. On PostgreSQL 16 and older only Supported (false) is set.
type FailoverReading struct {
	Supported bool
	// InRecovery is set on a standby.
	InRecovery bool
	// SlotExists, Failover and Synced describe the relay's slot: Synced is
	// set for a copy a standby's slot sync worker made (it stays set after
	// the standby's promotion).
	SlotExists, Failover, Synced bool
	// Waiting is set while the slot's walsender holds changes back for the
	// standbys (wait event WaitForStandbyConfirmation).
	Waiting bool
	// StandbySlots are the slots synchronized_standby_slots names, in order.
	StandbySlots []StandbySlot
}

// StandbySlot is a slot named in synchronized_standby_slots.
type StandbySlot struct {
	Name                     string
	Exists, Physical, Active bool
	Invalidated              bool
	// Behind is the WAL the primary flushed that the standby has not
	// confirmed (pg_current_wal_flush_lsn() - restart_lsn), in bytes; -1
	// when not known.
	Behind int64
}

// ReadFailover reads the slot's failover readiness on a normal connection.
func ReadFailover(ctx context.Context, conn *pgx.Conn, slot string, timeout time.Duration) (FailoverReading, error) {
	q := querier{conn: conn, timeout: timeout}
	var f FailoverReading
	var version int
	var standbySlots string
	if err := q.row(ctx, `SELECT current_setting('server_version_num')::int, pg_is_in_recovery(),
			COALESCE(current_setting('synchronized_standby_slots', true), '')`).Scan(&version, &f.InRecovery, &standbySlots); err != nil {
		return f, fmt.Errorf("read failover settings: %w", err)
	}
	if version < 170000 {
		return f, nil
	}
	f.Supported = true
	err := q.row(ctx, `SELECT s.failover, s.synced,
			COALESCE((SELECT a.wait_event = $2 FROM pg_stat_activity a WHERE a.pid = s.active_pid), false)
		FROM pg_replication_slots s WHERE s.slot_name = $1`, slot, waitForStandbyEvent).Scan(&f.Failover, &f.Synced, &f.Waiting)
	switch {
	case errors.Is(err, pgx.ErrNoRows):
	case err != nil:
		return f, fmt.Errorf("read slot %q: %w", slot, err)
	default:
		f.SlotExists = true
	}
	names := splitSlotList(standbySlots)
	if len(names) == 0 {
		return f, nil
	}
	rows, err := q.query(ctx, `SELECT slot_name::text, slot_type = 'physical', active, COALESCE(wal_status = 'lost', false),
			CASE WHEN pg_is_in_recovery() OR restart_lsn IS NULL THEN -1
				ELSE GREATEST(0, pg_current_wal_flush_lsn() - restart_lsn)::bigint END
		FROM pg_replication_slots WHERE slot_name = ANY($1)`, names)
	if err != nil {
		return f, fmt.Errorf("read the slots of synchronized_standby_slots: %w", err)
	}
	found := map[string]StandbySlot{}
	for rows.Next() {
		s := StandbySlot{Exists: true}
		if err := rows.Scan(&s.Name, &s.Physical, &s.Active, &s.Invalidated, &s.Behind); err != nil {
			rows.Close()
			return f, fmt.Errorf("read the slots of synchronized_standby_slots: %w", err)
		}
		found[s.Name] = s
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return f, fmt.Errorf("read the slots of synchronized_standby_slots: %w", err)
	}
	for _, name := range names {
		s, ok := found[name]
		if !ok {
			s = StandbySlot{Name: name, Behind: -1}
		}
		f.StandbySlots = append(f.StandbySlots, s)
	}
	return f, nil
}

// splitSlotList splits synchronized_standby_slots, a comma-separated list
// of slot names, each possibly double-quoted.
func splitSlotList(setting string) []string {
	var names []string
	for _, part := range strings.Split(setting, ",") {
		part = strings.TrimSpace(part)
		if len(part) >= 2 && part[0] == '"' && part[len(part)-1] == '"' {
			part = strings.ReplaceAll(part[1:len(part)-1], `""`, `"`)
		}
		if part != "" {
			names = append(names, part)
		}
	}
	return names
}

// problem explains why a standby slot holds the relay back, or "" when it
// is ready.
func (s StandbySlot) problem() string {
	switch {
	case !s.Exists:
		return fmt.Sprintf("slot %q named in synchronized_standby_slots does not exist: PostgreSQL holds the relay's changes back until it does; create the standby's physical slot or remove it from the setting", s.Name)
	case !s.Physical:
		return fmt.Sprintf("slot %q named in synchronized_standby_slots is not a physical slot: PostgreSQL holds the relay's changes back; name the physical slots of the standbys there", s.Name)
	case s.Invalidated:
		return fmt.Sprintf("slot %q named in synchronized_standby_slots is invalidated (wal_status = lost): PostgreSQL holds the relay's changes back; rebuild the standby or remove the slot from the setting", s.Name)
	case !s.Active:
		return fmt.Sprintf("no standby streams from slot %q named in synchronized_standby_slots: PostgreSQL holds the relay's changes back until one does; start the standby, or remove the slot from the setting to go on without it (a failover to that standby is then no longer safe)", s.Name)
	}
	return ""
}

// Problems explains, each with its fix, what a failover of the slot lacks
// as far as the primary can tell. A standby shows none: it has no
// synchronized_standby_slots of its own to check.
func (f FailoverReading) Problems(slot string) []string {
	if !f.Supported || f.InRecovery {
		return nil
	}
	var problems []string
	if f.SlotExists && !f.Failover {
		problems = append(problems, fmt.Sprintf("slot %q is not a failover slot: standbys do not synchronise it, and it is missing after a failover", slot))
	}
	if len(f.StandbySlots) == 0 {
		problems = append(problems, "synchronized_standby_slots is empty: PostgreSQL may send the relay changes no standby has received, and after a failover to a standby that lacked them the relay stops (the server's WAL diverged from the stream); "+
			"set synchronized_standby_slots to the physical slot of each standby that may take over (and on those standbys sync_replication_slots = on, hot_standby_feedback = on and a dbname in primary_conninfo)")
	}
	for _, s := range f.StandbySlots {
		if p := s.problem(); p != "" {
			problems = append(problems, p)
		}
	}
	return problems
}

// WaitReason says why the walsender holds the relay's changes back: the
// problem of each standby slot that has one, or how far behind they are.
func (f FailoverReading) WaitReason() string {
	var reasons []string
	for _, s := range f.StandbySlots {
		if p := s.problem(); p != "" {
			reasons = append(reasons, p)
		}
	}
	if len(reasons) == 0 {
		for _, s := range f.StandbySlots {
			if s.Behind > 0 {
				reasons = append(reasons, fmt.Sprintf("the standby of slot %q has not confirmed the last %d bytes of WAL", s.Name, s.Behind))
			}
		}
	}
	if len(reasons) == 0 {
		return "a standby named in synchronized_standby_slots has not confirmed the WAL yet"
	}
	return strings.Join(reasons, "; ")
}

// makeFailoverSlot turns an existing slot into a failover slot
// (ALTER_REPLICATION_SLOT, PostgreSQL 17+), which only a replication
// connection can do.
func makeFailoverSlot(ctx context.Context, cfg Config) error {
	conn, err := connect(ctx, cfg, true)
	if err != nil {
		return err
	}
	defer closeConn(conn, cfg.ConnectTimeout)
	qctx, cancel := context.WithTimeout(ctx, cfg.QueryTimeout)
	defer cancel()
	if err := conn.PgConn().Exec(qctx, "ALTER_REPLICATION_SLOT "+pgx.Identifier{cfg.Slot}.Sanitize()+" ( FAILOVER true )").Close(); err != nil {
		return fmt.Errorf("make slot %q a failover slot: %w", cfg.Slot, err)
	}
	return nil
}

// ensureFailover makes the slot a failover slot if it is not one, and logs
// what else a failover lacks, as far as the primary can tell. Missing
// settings are warnings, not refusals: a primary that just took over often
// has no standby of its own yet, and the relay must go on there.
func ensureFailover(ctx context.Context, q querier, cfg Config, log *zap.Logger) error {
	f, err := ReadFailover(ctx, q.conn, cfg.Slot, q.timeout)
	if err != nil {
		return err
	}
	if !f.Supported {
		return fmt.Errorf("failover-slot: failover slots need PostgreSQL 17 or later; turn the flag off: %w", ErrConfig)
	}
	if f.SlotExists && !f.Failover && !f.InRecovery {
		if err := makeFailoverSlot(ctx, cfg); err != nil {
			return err
		}
		log.Info("slot made a failover slot", zap.String("slot", cfg.Slot))
		f.Failover = true
	}
	for _, p := range f.Problems(cfg.Slot) {
		log.Warn("the slot is not ready for a failover", zap.String("slot", cfg.Slot), zap.Error(errors.New(p)))
	}
	return nil
}

// standbyWait follows, for the slot monitor, whether the slot's walsender
// holds changes back for the standbys, and says so once each time it
// starts and ends.
type standbyWait struct {
	waiting bool
}

func (w *standbyWait) observe(ctx context.Context, conn *pgx.Conn, cfg Config, log *zap.Logger, m *metrics.Metrics) error {
	f, err := ReadFailover(ctx, conn, cfg.Slot, cfg.QueryTimeout)
	if err != nil {
		return err
	}
	if f.Waiting {
		m.CDCWaitingForStandby.Set(1)
	} else {
		m.CDCWaitingForStandby.Set(0)
	}
	switch {
	case f.Waiting && !w.waiting:
		log.Warn("the walsender holds changes back until a standby in synchronized_standby_slots confirms them",
			zap.String("slot", cfg.Slot), zap.Error(errors.New(f.WaitReason())))
	case !f.Waiting && w.waiting:
		log.Info("the walsender no longer waits for a standby", zap.String("slot", cfg.Slot))
	}
	w.waiting = f.Waiting
	return nil
}

// heldBackNotice reports whether notice is PostgreSQL's warning that the
// walsender waits for a standby in synchronized_standby_slots (PostgreSQL
// 17+: a slot there is missing, invalidated or has no standby attached).
func heldBackNotice(notice *pgconn.PgError) bool {
	return strings.Contains(notice.Message, "synchronized_standby_slots") ||
		strings.Contains(notice.Detail, "is waiting on the standby")
}
