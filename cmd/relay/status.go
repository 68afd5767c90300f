package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"

	"github.com/outbox-relay/outbox-relay/internal/cdc"
	"github.com/outbox-relay/outbox-relay/internal/metrics"
	"github.com/outbox-relay/outbox-relay/internal/relay"
	"github.com/outbox-relay/outbox-relay/internal/sink"
)

// runCheck runs the preflight checks of PostgreSQL and NATS without changing
// anything, prints a line per check, and fails listing every problem.
func runCheck(ctx context.Context, cfg *config, out io.Writer) error {
	var errs []error
	notes, err := cdc.Check(ctx, cfg.cdc)
	for _, n := range notes {
		fmt.Fprintln(out, "ok   ", n)
	}
	if err != nil {
		errs = append(errs, err)
	}
	streamNotes, err := checkStream(ctx, cfg)
	for _, n := range streamNotes {
		fmt.Fprintln(out, "ok   ", n)
	}
	if err != nil {
		errs = append(errs, err)
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("check found problems:\n%w", err)
	}
	fmt.Fprintln(out, "all checks passed")
	return nil
}

// connectNATS connects for a one-off command, failing after the connect
// timeout instead of retrying forever as the relay does.
func connectNATS(cfg *config) (*sink.Connection, error) {
	nc, err := sink.Connect(cfg.sink, zap.NewNop(), metrics.New(version, commit))
	if err != nil {
		return nil, err
	}
	deadline := time.Now().Add(cfg.sink.ConnectTimeout)
	for !nc.IsConnected() {
		if time.Now().After(deadline) {
			cause := nc.NotConnectedCause()
			nc.Close()
			return nil, fmt.Errorf("nats-url: no server reachable within %s: %w", cfg.sink.ConnectTimeout, cause)
		}
		time.Sleep(50 * time.Millisecond)
	}
	return nc, nil
}

func checkStream(ctx context.Context, cfg *config) ([]string, error) {
	nc, err := connectNATS(cfg)
	if err != nil {
		return nil, err
	}
	defer nc.Close()
	dry := cfg.sink
	dry.CreateStream = false
	state, err := nc.EnsureStream(ctx, dry, []string{cfg.template.Wildcard()}, zap.NewNop())
	if err != nil {
		if cfg.sink.CreateStream && errors.Is(err, sink.ErrConfig) && state.Subjects == nil {
			return checkStreamToCreate(ctx, cfg, nc)
		}
		return nil, err
	}
	notes := []string{fmt.Sprintf("stream %q: captures %s (duplicate window %s, replicas %d)",
		cfg.sink.Stream, cfg.template.Wildcard(), state.DuplicateWindow, state.Replicas)}
	if state.Replicas < 3 {
		notes = append(notes, "warning: fewer than 3 replicas: an acknowledgement survives a NATS host crash only with R3 or sync_interval: always")
	}
	return notes, nil
}

// checkStreamToCreate checks a stream the relay would create: no other
// stream may claim its subjects, and some stream must capture the
// dead-letter subject.
func checkStreamToCreate(ctx context.Context, cfg *config, nc *sink.Connection) ([]string, error) {
	overlaps, err := sink.Overlaps(ctx, nc.JetStream, cfg.sink.StreamSubjects, cfg.sink.RequestTimeout)
	if err != nil {
		return nil, err
	}
	var errs []error
	for _, o := range overlaps {
		errs = append(errs, fmt.Errorf("stream: %q cannot be created: %s; set --stream-subjects, --dead-letter-subject or --subject-template so that no two streams claim a subject", cfg.sink.Stream, o))
	}
	if dl := cfg.sink.DeadLetterSubject; dl != "" && !sink.Captures(cfg.sink.StreamSubjects, dl) {
		others, err := sink.Overlaps(ctx, nc.JetStream, []string{dl}, cfg.sink.RequestTimeout)
		if err != nil {
			return nil, err
		}
		if len(others) == 0 {
			errs = append(errs, fmt.Errorf("dead-letter-subject: no stream captures the dead-letter subject %q, and stream %q would not (subjects %s); add it to --stream-subjects or change --dead-letter-subject",
				dl, cfg.sink.Stream, strings.Join(cfg.sink.StreamSubjects, ", ")))
		}
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return []string{fmt.Sprintf("stream %q: missing, will be created on start with subjects %s", cfg.sink.Stream, strings.Join(cfg.sink.StreamSubjects, ", "))}, nil
}

// runStatus prints the slot, the lag and the stream, and whether they agree.
// It fails when they do not, so scripts can act on it.
func runStatus(ctx context.Context, cfg *config, out io.Writer) error {
	var problems []error
	pgConn, err := cdc.Connect(ctx, cfg.cdc)
	if err != nil {
		return err
	}
	defer func() { _ = pgConn.Close(context.WithoutCancel(ctx)) }()
	slot, err := cdc.ReadSlot(ctx, pgConn, cfg.cdc.Slot, cfg.cdc.QueryTimeout)
	if err != nil {
		return fmt.Errorf("read slot %q: %w", cfg.cdc.Slot, err)
	}
	var database string
	if err := pgConn.QueryRow(ctx, `SELECT current_database()`).Scan(&database); err != nil {
		return fmt.Errorf("read current database: %w", err)
	}
	systemID, err := cdc.SystemID(ctx, cfg.cdc)
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "slot %s\n", cfg.cdc.Slot)
	if !slot.Exists {
		fmt.Fprintln(out, "  exists:              no")
	} else {
		fmt.Fprintf(out, "  active:              %t\n", slot.Active)
		fmt.Fprintf(out, "  confirmed_flush_lsn: %s\n", slot.ConfirmedFlush)
		fmt.Fprintf(out, "  current WAL:         %s\n", slot.CurrentWAL)
		fmt.Fprintf(out, "  lag:                 %s (current WAL - confirmed)\n", bytesText(slot.LagBytes))
		fmt.Fprintf(out, "  retained WAL:        %s\n", bytesText(slot.RetainedBytes))
		fmt.Fprintf(out, "  wal_status:          %s\n", slot.WALStatus)
		if slot.SafeWALSize < 0 {
			fmt.Fprintln(out, "  safe_wal_size:       unlimited (max_slot_wal_keep_size = -1)")
		} else {
			fmt.Fprintf(out, "  safe_wal_size:       %s\n", bytesText(slot.SafeWALSize))
		}
		if slot.WALStatus == "lost" {
			problems = append(problems, errors.New("the slot is lost: PostgreSQL removed WAL it still needed; see the README's slot recovery section"))
		}
	}

	nc, err := connectNATS(cfg)
	if err != nil {
		return errors.Join(append(problems, err)...)
	}
	defer nc.Close()
	js := nc.JetStream
	stream, err := js.Stream(ctx, cfg.sink.Stream)
	if err != nil {
		return errors.Join(append(problems, fmt.Errorf("stream %q: %w", cfg.sink.Stream, err))...)
	}
	info := stream.CachedInfo()
	fmt.Fprintf(out, "stream %s\n", cfg.sink.Stream)
	fmt.Fprintf(out, "  messages:            %d\n", info.State.Msgs)
	fmt.Fprintf(out, "  last sequence:       %d\n", info.State.LastSeq)
	fmt.Fprintf(out, "  duplicate window:    %s\n", info.Config.Duplicates)
	fmt.Fprintf(out, "  replicas:            %d\n", info.Config.Replicas)
	tail, err := sink.NewTailReader(js, cfg.sink.Stream, relay.HeaderOrigin, cfg.sink.RequestTimeout).Tail(ctx)
	if err != nil {
		return errors.Join(append(problems, err)...)
	}
	ours := origin(systemID, database, cfg.cdc.Slot)
	if tail.Header == nil {
		fmt.Fprintln(out, "  last relayed event:  none")
	} else {
		fmt.Fprintf(out, "  last relayed event:  %s (commit %s #%s, created %s) from %s\n",
			tail.Header.Get(jetstream.MsgIDHeader), tail.Header.Get(relay.HeaderCommitLSN), tail.Header.Get(relay.HeaderCommitIndex),
			tail.Header.Get(relay.HeaderCreatedAt), tail.Header.Get(relay.HeaderOrigin))
		_, fromUs := relay.PositionFromHeader(tail.Header, ours)
		switch {
		case !fromUs:
			fmt.Fprintf(out, "  note: the last relayed event comes from another origin than this slot (%s)\n", ours)
		case !slot.Exists:
			problems = append(problems, fmt.Errorf("the stream holds events from slot %q, which no longer exists: it was dropped; see the README's slot recovery section", cfg.cdc.Slot))
		}
	}
	if err := errors.Join(problems...); err != nil {
		fmt.Fprintln(out, "consistency:         PROBLEM")
		return err
	}
	fmt.Fprintln(out, "consistency:         ok")
	return nil
}

func bytesText(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}
