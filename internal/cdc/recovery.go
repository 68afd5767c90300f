package cdc

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
)

// What `relay recover` needs from PostgreSQL: a new slot whose start is a
// seam without gap or overlap between the rows it will decode and the rows
// the recovery reads from the outbox table.

// RecoverySlot is a slot just created for a recovery, with the snapshot of
// its consistent point: the rows that snapshot sees are exactly those
// committed before the point, and the slot decodes exactly the transactions
// committed after it.
type RecoverySlot struct {
	// ConsistentPoint is where the slot starts.
	ConsistentPoint pglogrepl.LSN
	cfg             Config
	// repl exported the snapshot, which lives as long as it stays open and
	// idle.
	repl     *pgx.Conn
	snapshot string
}

// CreateRecoverySlot creates the configured slot (a failover slot with
// FailoverSlot, PostgreSQL 17+) on a replication connection that exports its
// snapshot, and keeps that connection open for Rows. The publication must
// exist first: a slot created before its publication can miss changes. Call
// Close when done; the slot stays.
func CreateRecoverySlot(ctx context.Context, cfg Config) (*RecoverySlot, error) {
	conn, err := connect(ctx, cfg, false)
	if err != nil {
		return nil, err
	}
	q := querier{conn: conn, timeout: cfg.QueryTimeout}
	version, verr := serverVersion(ctx, q)
	missing := isMissing(ctx, q, `SELECT 1 FROM pg_publication WHERE pubname = $1`, cfg.Publication)
	closeConn(conn, cfg.ConnectTimeout)
	if verr != nil {
		return nil, verr
	}
	if missing {
		return nil, fmt.Errorf("publication: %q does not exist; create it before the slot (see the README's role setup): %w", cfg.Publication, ErrConfig)
	}
	if cfg.FailoverSlot && version < 170000 {
		return nil, fmt.Errorf("failover-slot: failover slots need PostgreSQL 17 or later, the server is version %d; turn the flag off: %w", version/10000, ErrConfig)
	}
	cmd := "CREATE_REPLICATION_SLOT " + pgx.Identifier{cfg.Slot}.Sanitize() + " LOGICAL pgoutput "
	switch {
	case cfg.FailoverSlot:
		cmd += "(SNAPSHOT 'export', FAILOVER true)"
	case version >= 150000:
		cmd += "(SNAPSHOT 'export')"
	default:
		cmd += "EXPORT_SNAPSHOT"
	}
	repl, err := connect(ctx, cfg, true)
	if err != nil {
		return nil, err
	}
	// Creating a slot waits for the transactions running meanwhile to end;
	// that is no failure.
	res, err := pglogrepl.ParseCreateReplicationSlot(repl.PgConn().Exec(ctx, cmd))
	if err != nil {
		closeConn(repl, cfg.ConnectTimeout)
		return nil, fmt.Errorf("create slot %q: %w", cfg.Slot, err)
	}
	point, err := pglogrepl.ParseLSN(res.ConsistentPoint)
	if err != nil {
		closeConn(repl, cfg.ConnectTimeout)
		return nil, fmt.Errorf("create slot %q: consistent point: %w", cfg.Slot, err)
	}
	return &RecoverySlot{ConsistentPoint: point, cfg: cfg, repl: repl, snapshot: res.SnapshotName}, nil
}

// Close ends the exported snapshot; the slot stays.
func (s *RecoverySlot) Close() { closeConn(s.repl, s.cfg.ConnectTimeout) }

// Rows returns the outbox rows created at or after since that are committed
// before the slot's consistent point, as events without positions, ordered
// by the created_at column, then by transaction (xmin) and physical order
// (ctid): commit order is not recorded in the table, and rows of one
// transaction share created_at. It needs the created_at column. A row the
// relay could never publish (a NULL in a required column) comes with its
// Defect set, as from the stream.
func (s *RecoverySlot) Rows(ctx context.Context, since time.Time) ([]Event, error) {
	cfg := s.cfg
	conn, err := connect(ctx, cfg, false)
	if err != nil {
		return nil, err
	}
	defer closeConn(conn, cfg.ConnectTimeout)
	q := querier{conn: conn, timeout: cfg.QueryTimeout}
	names, err := outboxColumns(ctx, q, cfg)
	if err != nil {
		return nil, err
	}
	if names[colCreatedAt] == "" {
		return nil, fmt.Errorf("column-created-at: the recovery finds the rows to publish again by their creation time; the outbox needs a created_at column: %w", ErrConfig)
	}
	tx, err := conn.BeginTx(ctx, pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly})
	if err != nil {
		return nil, fmt.Errorf("read the outbox in the slot's snapshot: %w", err)
	}
	defer func() { _ = tx.Rollback(context.WithoutCancel(ctx)) }() // read only
	if _, err := tx.Exec(ctx, "SET TRANSACTION SNAPSHOT '"+strings.ReplaceAll(s.snapshot, "'", "''")+"'"); err != nil {
		return nil, fmt.Errorf("read the outbox in the slot's snapshot: %w", err)
	}
	selects := make([]string, numColumns)
	for i, name := range names {
		selects[i] = "NULL::text"
		if name != "" {
			selects[i] = pgx.Identifier{name}.Sanitize() + "::text"
		}
	}
	created := pgx.Identifier{names[colCreatedAt]}.Sanitize()
	qctx, cancel := context.WithTimeout(ctx, cfg.QueryTimeout)
	defer cancel()
	rows, err := tx.Query(qctx, `SELECT `+strings.Join(selects, ", ")+` FROM `+qualifiedTable(cfg)+
		` WHERE `+created+` >= $1 ORDER BY `+created+`, xmin::text::bigint, ctid`, since)
	if err != nil {
		return nil, fmt.Errorf("read the outbox in the slot's snapshot: %w", err)
	}
	defer rows.Close()
	var events []Event
	for rows.Next() {
		var values [numColumns]*string
		dest := make([]any, numColumns)
		for i := range values {
			dest[i] = &values[i]
		}
		if err := rows.Scan(dest...); err != nil {
			return nil, fmt.Errorf("read the outbox in the slot's snapshot: %w", err)
		}
		events = append(events, rowEvent(values, names))
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("read the outbox in the slot's snapshot: %w", err)
	}
	return events, nil
}

// outboxColumns returns, for each configured column, the name the table
// has for it ("" for an unconfigured one).
func outboxColumns(ctx context.Context, q querier, cfg Config) ([numColumns]string, error) {
	var names [numColumns]string
	rows, err := q.query(ctx, `SELECT attname::text FROM pg_attribute WHERE attrelid = to_regclass($1) AND attnum > 0 AND NOT attisdropped ORDER BY attnum`,
		qualifiedTable(cfg))
	if err != nil {
		return names, fmt.Errorf("read columns of %s: %w", qualifiedTable(cfg), err)
	}
	have, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return names, fmt.Errorf("read columns of %s: %w", qualifiedTable(cfg), err)
	}
	index, missing := cfg.Columns.find(have)
	if len(missing) > 0 {
		return names, fmt.Errorf("table: %s has no column %s; set the --column-* flags to the table's column names: %w",
			qualifiedTable(cfg), strings.Join(missing, ", "), ErrConfig)
	}
	for slot, i := range index {
		if i >= 0 {
			names[slot] = have[i]
		}
	}
	return names, nil
}

// rowEvent is the event of a row read from the table, with the defects the
// decoder finds in a row read from the stream.
func rowEvent(values [numColumns]*string, names [numColumns]string) Event {
	text := func(i int) string {
		if values[i] == nil {
			return ""
		}
		return *values[i]
	}
	bytes := func(i int) []byte {
		if values[i] == nil {
			return nil
		}
		return []byte(*values[i])
	}
	ev := Event{
		ID: text(colID), AggregateType: text(colAggregateType), AggregateID: text(colAggregateID),
		EventType: text(colEventType), Payload: bytes(colPayload), Headers: bytes(colHeaders), CreatedAt: text(colCreatedAt),
	}
	for i, name := range names {
		if name != "" && values[i] == nil && required(i) {
			ev.Defect = fmt.Sprintf("column %q is NULL", name)
			break
		}
	}
	return ev
}

// DropSlot drops the configured slot, which must not be in use: what a
// recovery that failed after creating it leaves behind.
func DropSlot(ctx context.Context, cfg Config) error {
	conn, err := connect(ctx, cfg, false)
	if err != nil {
		return err
	}
	defer closeConn(conn, cfg.ConnectTimeout)
	q := querier{conn: conn, timeout: cfg.QueryTimeout}
	_, exists, err := readSlot(ctx, q, cfg.Slot)
	if err != nil || !exists {
		return err
	}
	if err := q.exec(ctx, `SELECT pg_drop_replication_slot($1)`, cfg.Slot); err != nil {
		return fmt.Errorf("drop slot %q: %w", cfg.Slot, err)
	}
	return nil
}

// SlotExists reports whether the configured slot exists.
func SlotExists(ctx context.Context, cfg Config) (bool, error) {
	conn, err := connect(ctx, cfg, false)
	if err != nil {
		return false, err
	}
	defer closeConn(conn, cfg.ConnectTimeout)
	_, exists, err := readSlot(ctx, querier{conn: conn, timeout: cfg.QueryTimeout}, cfg.Slot)
	return exists, err
}
