package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"time"

	"go.uber.org/zap"

	"github.com/outbox-relay/outbox-relay/internal/cdc"
	"github.com/outbox-relay/outbox-relay/internal/metrics"
	"github.com/outbox-relay/outbox-relay/internal/relay"
	"github.com/outbox-relay/outbox-relay/internal/sink"
)

// The initial snapshot (--initial-snapshot): adopting a table that already
// holds rows. When relay run creates its slot, it creates it exporting the
// snapshot of its consistent point and publishes, from that snapshot, the rows
// the setting selects, before it streams from the slot: the snapshot sees
// exactly the rows committed before the slot's consistent point, and the slot
// decodes exactly the transactions committed after it. It is relay recover's
// machinery (the exporting slot, the scan, the pump, the marker), with the
// selection instead of the rows the stream lacks.

// snapshotKind is the recoveryRecord.Kind of an initial snapshot.
const snapshotKind = "initial-snapshot"

// snapshotProgressInterval is how often a snapshot (or a recovery) under way
// logs its progress and records it for relay status.
const snapshotProgressInterval = 5 * time.Second

// snapshotSetting is --initial-snapshot: none, all, since:<time or
// duration>, or where:<SQL predicate>.
type snapshotSetting struct {
	text  string
	since time.Time
	ago   time.Duration
	where string
}

func parseSnapshotSetting(text string) (snapshotSetting, error) {
	s := snapshotSetting{text: text}
	kind, arg, _ := strings.Cut(text, ":")
	switch kind {
	case "none", "all":
		if arg != "" {
			return s, fmt.Errorf("initial-snapshot: %q, %s takes no argument", text, kind)
		}
	case "since":
		if t, err := time.Parse(time.RFC3339Nano, arg); err == nil {
			s.since = t
		} else if d, derr := time.ParseDuration(arg); derr == nil && d > 0 {
			s.ago = d
		} else {
			return s, fmt.Errorf("initial-snapshot: %q, since: takes an RFC 3339 time (2026-11-01T00:00:00Z) or a positive duration (168h)", text)
		}
	case "where":
		if strings.TrimSpace(arg) == "" {
			return s, fmt.Errorf("initial-snapshot: %q, where: takes an SQL condition on the outbox's columns (where:sent_at IS NULL)", text)
		}
		s.where = arg
	default:
		return s, fmt.Errorf("initial-snapshot: %q, must be none, all, since:<time or duration> or where:<SQL condition>", text)
	}
	return s, nil
}

// enabled reports whether a new slot comes with an initial snapshot.
func (s snapshotSetting) enabled() bool { return s.text != "" && s.text != "none" }

// selection is the rows the setting selects, a since: duration counted back
// from now.
func (s snapshotSetting) selection(now time.Time) cdc.Selection {
	sel := cdc.Selection{Since: s.since, Where: s.where}
	if s.ago > 0 {
		sel.Since = now.Add(-s.ago)
	}
	return sel
}

// snapshotKey is the state bucket key of the last initial snapshot of
// origin's slot that finished, for relay status.
func snapshotKey(stream, origin string) string { return "snapshot." + relay.MarkKey(stream, origin) }

// snapshotRecord is what an initial snapshot records: under recoveryKey
// while it runs (with its progress), under snapshotKey once it finished.
type snapshotRecord = recoveryRecord

// preflight runs PostgreSQL's preflight; with --initial-snapshot, a slot it
// creates comes with the initial snapshot, published before it returns.
func preflight(ctx context.Context, cfg *config, log *zap.Logger, m *metrics.Metrics, nc *sink.Connection, stream sink.StreamState,
	streamLog *sink.StreamReader, store *sink.StateStore,
) (cdc.SlotState, error) {
	if !cfg.snapshot.enabled() {
		return cdc.Preflight(ctx, cfg.cdc, log.Named("cdc"), func(systemID, database string) error {
			return slotNeverExisted(ctx, relay.NewWatermark(streamLog, store, cfg.sink.Stream, origin(systemID, database, cfg.cdc.Slot), log.Named("pump")))
		})
	}
	conn, err := cdc.Connect(ctx, cfg.cdc)
	if err != nil {
		return cdc.SlotState{}, err
	}
	current, err := slotOrigin(ctx, cfg, conn)
	_ = conn.Close(context.WithoutCancel(ctx))
	if err != nil {
		return cdc.SlotState{}, err
	}
	key := recoveryKey(cfg.sink.Stream, current)
	rec, unfinished, err := loadRecovery(ctx, store, key)
	if err != nil {
		return cdc.SlotState{}, err
	}
	if unfinished && rec.Kind != snapshotKind {
		return cdc.SlotState{}, recoveryFinished(ctx, store, cfg.sink.Stream, current)
	}
	if unfinished {
		// Its slot's snapshot is gone with the process that held it: a
		// new slot, and a new snapshot, take over.
		exists, err := cdc.SlotExists(ctx, cfg.cdc)
		if err != nil {
			return cdc.SlotState{}, err
		}
		if exists {
			if err := cdc.DropSlot(ctx, cfg.cdc); err != nil {
				return cdc.SlotState{}, err
			}
		}
		log.Warn("initial snapshot did not finish: starting it over with a new slot", zap.String("slot", cfg.cdc.Slot),
			zap.Time("started", rec.Started), zap.Int64("done", rec.Done), zap.Int64("selected", rec.Selected))
	}
	sel := cfg.snapshot.selection(time.Now())
	if unfinished && rec.Selection == cfg.snapshot.text {
		sel.Since = rec.Since // a since: duration counts from the first attempt
	}
	marks := relay.NewWatermark(streamLog, store, cfg.sink.Stream, current, log.Named("pump"))
	cdcCfg := cfg.cdc
	cdcCfg.ExportSnapshot = true
	state, err := cdc.Preflight(ctx, cdcCfg, log.Named("cdc"), func(systemID, database string) error {
		if origin(systemID, database, cfg.cdc.Slot) != current {
			return fmt.Errorf("the server changed while the relay started (origin %s, then %s)", current, origin(systemID, database, cfg.cdc.Slot))
		}
		if !unfinished {
			// Events of an unfinished snapshot are the only ones a slot of
			// this name published.
			if err := slotNeverExisted(ctx, marks); err != nil {
				return err
			}
		}
		if err := cdc.CheckSelection(ctx, cfg.cdc, sel, "initial-snapshot"); err != nil {
			return err
		}
		started := time.Now().UTC()
		if unfinished {
			started = rec.Started
		}
		record, _ := json.Marshal(snapshotRecord{Kind: snapshotKind, Slot: cfg.cdc.Slot, Selection: cfg.snapshot.text, Since: sel.Since, Started: started})
		return store.Save(ctx, key, record)
	})
	if err != nil || state.Snapshot == nil {
		return state, err
	}
	err = publishInitialSnapshot(ctx, cfg, log, m, nc, stream, streamLog, store, state.Snapshot, sel, marks, state.Database)
	state.Snapshot = nil
	return state, err
}

// publishInitialSnapshot publishes the rows sel selects from slot's
// snapshot, then records the snapshot done. After an attempt that did not
// finish, the rows created before the last one it published, less
// --recover-max-transaction-age, are taken as published (they were read in
// the same order), and the later ones whose ids the stream holds are
// skipped.
func publishInitialSnapshot(ctx context.Context, cfg *config, log *zap.Logger, m *metrics.Metrics, nc *sink.Connection, stream sink.StreamState,
	streamLog *sink.StreamReader, store *sink.StateStore, slot *cdc.RecoverySlot, sel cdc.Selection, marks *relay.Watermark, database string,
) error {
	defer slot.Close()
	log = log.With(zap.String("slot", cfg.cdc.Slot))
	key := recoveryKey(cfg.sink.Stream, marks.Origin())
	rec, _, err := loadRecovery(ctx, store, key)
	if err != nil {
		return err
	}
	seam := slot.ConsistentPoint - 1
	reading, err := marks.Read(ctx, relay.Mark{}, 0, false)
	if err != nil {
		return err
	}
	last := reading.Mark
	resumed := !last.Position.IsZero()
	var since time.Time
	if resumed {
		if seam <= last.Position.CommitLSN {
			return fmt.Errorf("slot %q starts at %s, not after the last position published %s: %w", cfg.cdc.Slot, slot.ConsistentPoint, last.Position, cdc.ErrDiverged)
		}
		anchor, err := createdAt(ctx, streamLog, last.Seq)
		if err != nil {
			return err
		}
		since = anchor.Add(-cfg.recoverMaxTxnAge)
		sel.PublishedBefore = since
	}
	// The snapshot is imported first: the exporting connection must not
	// wait long.
	scan, err := slot.Scan(ctx, sel)
	if err != nil {
		return err
	}
	defer scan.Close()
	var onStream map[string]bool
	if resumed {
		var removed int
		if onStream, removed, err = streamIDs(ctx, streamLog, []string{marks.Origin()}, since); err != nil {
			return err
		}
		log.Info("initial snapshot resumes after the last event published", zap.String("event_id", last.MsgID),
			zap.Uint64("stream_seq", last.Seq), zap.Time("since", since))
		if removed > 0 {
			log.Warn("the stream's retention removed messages the snapshot compares with; a row among them is published again, and stored twice outside the duplicate window",
				zap.Int("removed", removed))
		}
	}
	total := scan.Total()
	m.SnapshotSelectedRows.Set(float64(total))
	m.SnapshotDoneRows.Set(0)
	log.Info("initial snapshot started", zap.Stringer("lsn", slot.ConsistentPoint), zap.Int64("selected", total))
	begun := time.Now()
	rec.Selected = total
	report := func(src *scanSource) {
		done := src.done()
		m.SnapshotDoneRows.Set(float64(done))
		fields := []zap.Field{zap.Int64("done", done), zap.Int64("selected", total), zap.Int64("skipped", src.skipped.Load())}
		if elapsed := time.Since(begun); done > 0 && done < total {
			eta := time.Duration(float64(elapsed) / float64(done) * float64(total-done))
			fields = append(fields, zap.Duration("eta", eta.Round(time.Second)))
		}
		log.Info("initial snapshot progress", fields...)
		rec.Done, rec.Updated = done, time.Now().UTC()
		if data, err := json.Marshal(rec); err == nil {
			_ = store.Save(ctx, key, data) // progress for relay status only
		}
	}
	src, err := publishScan(ctx, cfg, nc, stream, marks, database, log, m, scan, seam, onStream, report)
	if err != nil {
		return err
	}
	m.SnapshotDoneRows.Set(float64(src.done()))
	if err := registerSlot(ctx, marks); err != nil {
		return err
	}
	rec.Done, rec.Updated = src.done(), time.Now().UTC()
	data, _ := json.Marshal(rec)
	if err := store.Save(ctx, snapshotKey(cfg.sink.Stream, marks.Origin()), data); err != nil {
		return err
	}
	if err := store.Delete(ctx, key); err != nil {
		return err
	}
	log.Info("initial snapshot done", zap.Int64("published", src.handed), zap.Int64("skipped", src.skipped.Load()),
		zap.Int64("selected", total), zap.Duration("took", time.Since(begun).Round(time.Millisecond)))
	return nil
}

// printSnapshot prints the state of origin's initial snapshot, if any.
func printSnapshot(ctx context.Context, store *sink.StateStore, stream, origin string, out io.Writer) error {
	rec, running, err := loadRecovery(ctx, store, recoveryKey(stream, origin))
	if err != nil {
		return err
	}
	if running && rec.Kind == snapshotKind {
		fmt.Fprintf(out, "  initial snapshot:    in progress (%s), %d of %d rows on the stream (started %s, updated %s)\n",
			rec.Selection, rec.Done, rec.Selected, rec.Started.Format(time.RFC3339), rec.Updated.Format(time.RFC3339))
		return nil
	}
	data, found, err := store.Load(ctx, snapshotKey(stream, origin))
	if err != nil || !found {
		return err
	}
	var done snapshotRecord
	if err := json.Unmarshal(data, &done); err != nil {
		return fmt.Errorf("decode the initial snapshot's record: %w", err)
	}
	fmt.Fprintf(out, "  initial snapshot:    done (%s), %d rows (finished %s)\n", done.Selection, done.Done, done.Updated.Format(time.RFC3339))
	return nil
}
