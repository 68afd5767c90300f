package cdc

import (
	"context"
	"fmt"
	"strconv"
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
// snapshot, and keeps that connection open for Scan. The publication must
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
	return createExportingSlot(ctx, cfg, version)
}

// createExportingSlot creates the configured slot on a replication
// connection that exports the snapshot of its consistent point, and keeps
// that connection open (and idle) so that the snapshot can be imported.
func createExportingSlot(ctx context.Context, cfg Config, version int) (*RecoverySlot, error) {
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

// Close ends the exported snapshot (if Scan has not already); the slot
// stays.
func (s *RecoverySlot) Close() {
	if s.repl != nil {
		closeConn(s.repl, s.cfg.ConnectTimeout)
		s.repl = nil
	}
}

// Selection chooses the outbox rows a Scan reads.
type Selection struct {
	// Since, unless zero, keeps the rows created at or after it (the
	// created_at column).
	Since time.Time
	// Where, unless empty, is an SQL boolean expression over the outbox
	// table's columns that a row must satisfy, such as a polling outbox's
	// "sent_at IS NULL".
	Where string
	// PublishedBefore, unless zero, leaves out the rows created before it,
	// which an earlier attempt published; unlike Since it keeps the rows
	// without a creation time, which sort last.
	PublishedBefore time.Time
	// Until, unless zero, keeps the rows created before it.
	Until time.Time
	// After, unless zero, keeps the rows created after it (strictly).
	After time.Time
	// IDs, unless empty, keeps the rows with one of these ids, each given as
	// text and compared as a value of the id column's type.
	IDs []string
}

// where renders sel as a WHERE clause with its parameters; id is the id
// column and idType its type, for IDs.
func (sel Selection) where(created, id, idType string) (string, []any) {
	var conds []string
	var args []any
	if !sel.Since.IsZero() {
		args = append(args, sel.Since)
		conds = append(conds, created+" >= $"+strconv.Itoa(len(args)))
	}
	if !sel.Until.IsZero() {
		args = append(args, sel.Until)
		conds = append(conds, created+" < $"+strconv.Itoa(len(args)))
	}
	if !sel.After.IsZero() {
		args = append(args, sel.After)
		conds = append(conds, created+" > $"+strconv.Itoa(len(args)))
	}
	if len(sel.IDs) > 0 {
		// The list cast to the column's type, not the column to text: the
		// primary key's index finds the rows.
		args = append(args, sel.IDs)
		conds = append(conds, id+" = ANY ($"+strconv.Itoa(len(args))+"::text[]::"+idType+"[])")
	}
	if !sel.PublishedBefore.IsZero() {
		args = append(args, sel.PublishedBefore)
		conds = append(conds, "("+created+" IS NULL OR "+created+" >= $"+strconv.Itoa(len(args))+")")
	}
	if sel.Where != "" {
		conds = append(conds, "("+sel.Where+")")
	}
	if len(conds) == 0 {
		return "", nil
	}
	return " WHERE " + strings.Join(conds, " AND "), args
}

// CheckSelection checks, without reading any row, that sel can select rows
// of the outbox: its Where is one boolean expression over the table's
// columns, and Since has a created_at column to compare. setting names the
// setting sel came from, for the error.
func CheckSelection(ctx context.Context, cfg Config, sel Selection, setting string) error {
	conn, err := connect(ctx, cfg, false)
	if err != nil {
		return err
	}
	defer closeConn(conn, cfg.ConnectTimeout)
	q := querier{conn: conn, timeout: cfg.QueryTimeout}
	tables, err := resolveTables(ctx, q, cfg)
	if err != nil {
		return err
	}
	for _, t := range tables {
		if err := checkSelection(ctx, conn, cfg.ForTable(t), sel, setting); err != nil {
			return err
		}
	}
	return nil
}

// checkSelection is CheckSelection for the one table of cfg.
func checkSelection(ctx context.Context, conn *pgx.Conn, cfg Config, sel Selection, setting string) error {
	q := querier{conn: conn, timeout: cfg.QueryTimeout}
	names, err := outboxColumns(ctx, q, cfg)
	if err != nil {
		return err
	}
	if names[colCreatedAt] == "" {
		return fmt.Errorf("%s: rows are read in creation order; the outbox %s needs a created_at column (--column-created-at): %w", setting, qualifiedTable(cfg), ErrConfig)
	}
	if sel.Where == "" {
		return nil
	}
	// Only prepared, never run: a prepared statement is one statement, and
	// WHERE refuses an expression that is not boolean.
	qctx, cancel := context.WithTimeout(ctx, cfg.QueryTimeout)
	defer cancel()
	_, err = conn.PgConn().Prepare(qctx, "", `SELECT 1 FROM `+qualifiedTable(cfg)+` WHERE (`+sel.Where+`)`, nil)
	if err != nil {
		return fmt.Errorf("%s: %q is not one boolean expression over the columns of %s: %w: %w", setting, sel.Where, qualifiedTable(cfg), err, ErrConfig)
	}
	return nil
}

// Scan reads the outbox rows of a slot's snapshot chunk by chunk, in one
// read-only transaction holding that snapshot, through a cursor: memory
// holds one chunk, whatever the table's size.
type Scan struct {
	cfg    Config
	conn   *pgx.Conn
	tx     pgx.Tx
	tables []scanTable
	total  int64
	// rows is how many rows the next FETCH asks for, adjusted to the size
	// of the rows read so far.
	rows int
	read int64
	size int64
	done bool
	// missing lists the ids asked for that no row has.
	missing []string
}

// scanChunkRows is the most rows one chunk holds; the first chunk, read
// before the size of any row is known, holds scanFirstChunkRows.
const (
	scanChunkRows      = 1000
	scanFirstChunkRows = 16
)

// Scan imports the slot's snapshot into a read-only transaction on a new
// connection, counts the rows sel selects committed before the slot's
// consistent point, and opens a cursor over them ordered by the created_at
// column, then by transaction (xmin) and physical order (ctid): commit order
// is not recorded in the table, and rows of one transaction share
// created_at. The exporting connection is closed once the snapshot is
// imported. Each statement is bounded by QueryTimeout; the first FETCH may
// sort the whole selection. It needs the created_at column. Close the scan
// when done.
func (s *RecoverySlot) Scan(ctx context.Context, sel Selection) (*Scan, error) {
	cfg := s.cfg
	conn, err := connect(ctx, cfg, false)
	if err != nil {
		return nil, err
	}
	sc := &Scan{cfg: cfg, conn: conn, rows: scanFirstChunkRows}
	if err := sc.open(ctx, s.snapshot, sel); err != nil {
		sc.Close()
		return nil, err
	}
	s.Close() // the snapshot lives on in the scan's transaction
	return sc, nil
}

// ScanTable reads the outbox rows sel selects as they are now, like
// RecoverySlot.Scan but in a snapshot of its own (no slot): one read-only
// repeatable-read transaction, a cursor in creation order, chunk by chunk.
// With IDs in sel, Missing lists those no row has. Close the scan when done.
func ScanTable(ctx context.Context, cfg Config, sel Selection) (*Scan, error) {
	conn, err := connect(ctx, cfg, false)
	if err != nil {
		return nil, err
	}
	sc := &Scan{cfg: cfg, conn: conn, rows: scanFirstChunkRows}
	if err := sc.open(ctx, "", sel); err != nil {
		sc.Close()
		return nil, err
	}
	return sc, nil
}

// open begins the scan's transaction, in snapshot unless it is empty, and
// declares its cursor: over the outbox table, or, with several tables, over
// all of them in one creation order.
func (sc *Scan) open(ctx context.Context, snapshot string, sel Selection) error {
	cfg := sc.cfg
	tx, err := sc.conn.BeginTx(ctx, pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly})
	if err != nil {
		return fmt.Errorf("read the outbox rows: %w", err)
	}
	sc.tx = tx
	if snapshot != "" {
		if _, err := tx.Exec(ctx, "SET TRANSACTION SNAPSHOT '"+strings.ReplaceAll(snapshot, "'", "''")+"'"); err != nil {
			return fmt.Errorf("read the outbox rows: %w", err)
		}
	}
	// The transaction idles while the pump publishes a chunk, for as long
	// as NATS makes it wait.
	if _, err := tx.Exec(ctx, "SET LOCAL idle_in_transaction_session_timeout = 0"); err != nil {
		return fmt.Errorf("read the outbox rows: %w", err)
	}
	// In the snapshot: the tables a pattern matches, and their columns, as
	// the rows read are.
	q := querier{conn: sc.conn, timeout: cfg.QueryTimeout}
	tables, err := resolveTables(ctx, q, cfg)
	if err != nil {
		return err
	}
	qctx, cancel := context.WithTimeout(ctx, cfg.QueryTimeout)
	defer cancel()
	var branches, counts []string
	var args []any
	for _, t := range tables {
		one := cfg.ForTable(t)
		names, err := outboxColumns(ctx, q, one)
		if err != nil {
			return err
		}
		if names[colCreatedAt] == "" {
			return fmt.Errorf("column-created-at: rows are read from the table in creation order; the outbox %s needs a created_at column: %w", t, ErrConfig)
		}
		selects := []string{quoteLiteral(t.Schema) + "::text", quoteLiteral(t.Name) + "::text"}
		for _, name := range names {
			column := "NULL::text"
			if name != "" {
				column = pgx.Identifier{name}.Sanitize() + "::text"
			}
			selects = append(selects, column)
		}
		created, id := pgx.Identifier{names[colCreatedAt]}.Sanitize(), pgx.Identifier{names[colID]}.Sanitize()
		var idType string
		if len(sel.IDs) > 0 {
			if err := tx.QueryRow(qctx, `SELECT format_type(atttypid, atttypmod) FROM pg_attribute WHERE attrelid = to_regclass($1) AND attname = $2`,
				t.Qualified(), names[colID]).Scan(&idType); err != nil {
				return fmt.Errorf("read the type of column %q of %s: %w", names[colID], t, err)
			}
		}
		// Every table gets the same parameters for the selection but the
		// ids, which are its own (idsOf).
		base := sel
		base.IDs = nil
		where, baseArgs := base.where(created, id, idType)
		args = baseArgs
		st := scanTable{table: t, names: names, idType: idType, id: id}
		if len(sel.IDs) > 0 {
			st.ids, st.wanted = idsOf(t, idType, tables, sel.IDs)
			cond := id + " = ANY ($" + strconv.Itoa(len(baseArgs)+len(branches)+1) + "::text[]::" + idType + "[])"
			if where == "" {
				where = " WHERE " + cond
			} else {
				where += " AND " + cond
			}
		}
		// With several tables, one order: the creation time as timestamptz
		// (the tables' columns may differ in type), then the table.
		key := created
		if len(tables) > 1 {
			key = created + "::timestamptz"
		}
		selects = append(selects, key+" AS outbox_relay_created", "xmin::text::bigint AS outbox_relay_xmin", "ctid AS outbox_relay_ctid", strconv.Itoa(len(branches))+" AS outbox_relay_table")
		branches = append(branches, `SELECT `+strings.Join(selects, ", ")+` FROM `+t.Qualified()+where)
		counts = append(counts, `(SELECT count(*) FROM `+t.Qualified()+where+`)`)
		sc.tables = append(sc.tables, st)
	}
	if len(branches) == 0 {
		sc.done = true
		return nil
	}
	if len(sel.IDs) > 0 {
		// The ids each table may have, as values of its id column's type:
		// the requested ids none has are missing.
		found := make(map[string]bool)
		for _, st := range sc.tables {
			args = append(args, st.ids)
			var have []int32
			err := tx.QueryRow(qctx, `SELECT coalesce(array_agg(n::int), '{}') FROM unnest($1::text[]) WITH ORDINALITY AS w(want, n)
				WHERE EXISTS (SELECT 1 FROM `+st.table.Qualified()+` WHERE `+st.id+` = want::`+st.idType+`)`, st.ids).Scan(&have)
			if err != nil {
				return fmt.Errorf("look up the ids to read in %s: %w", st.table, err)
			}
			for _, n := range have {
				found[st.wanted[n-1]] = true
			}
		}
		for _, want := range sel.IDs {
			if !found[want] {
				sc.missing = append(sc.missing, want)
			}
		}
	}
	if err := tx.QueryRow(qctx, `SELECT `+strings.Join(counts, " + "), args...).Scan(&sc.total); err != nil {
		return fmt.Errorf("count the outbox rows to read: %w", err)
	}
	// A cursor sorts once and hands the rows out in chunks; pages by key
	// would sort the table again for each chunk.
	// The extended protocol (never the simple one, which runs several
	// statements) for the user's condition.
	args = append([]any{pgx.QueryExecModeExec}, args...)
	if _, err := tx.Exec(qctx, `DECLARE outbox_relay_scan NO SCROLL CURSOR FOR `+strings.Join(branches, " UNION ALL ")+
		` ORDER BY outbox_relay_created, outbox_relay_table, outbox_relay_xmin, outbox_relay_ctid`, args...); err != nil {
		return fmt.Errorf("read the outbox rows: %w", err)
	}
	return nil
}

// scanTable is one table a Scan reads.
type scanTable struct {
	table  Table
	names  [numColumns]string
	id     string // the id column, quoted
	idType string // its type, when ids are selected
	// ids are the selected ids this table may have, as its id column
	// holds them; wanted[i] is the id as requested.
	ids, wanted []string
}

// idsOf returns the requested ids table t may have, as its id column holds
// them (ids), and as requested (wanted): an id qualified by a table of
// tables, <schema>.<table>/<id> (--message-id=table-id), is t's only when t
// is that table; another is t's when it is a value of t's id type, or when t
// is the only table (the lookup then fails on an id of another type).
func idsOf(t Table, idType string, tables []Table, requested []string) (ids, wanted []string) {
	for _, want := range requested {
		id, qualifiedBy := want, -1
		for i, u := range tables {
			if rest, ok := strings.CutPrefix(want, u.Schema+"."+u.Name+"/"); ok {
				id, qualifiedBy = rest, i
				break
			}
		}
		switch {
		case qualifiedBy >= 0 && (tables[qualifiedBy].Schema != t.Schema || tables[qualifiedBy].Name != t.Name):
			continue
		case qualifiedBy < 0 && len(tables) > 1 && !idFits(idType, id):
			// With one table, PostgreSQL says what is wrong with the id.
			continue
		}
		ids, wanted = append(ids, id), append(wanted, want)
	}
	return ids, wanted
}

// idFits reports whether s may be a value of the id column type idType, as
// far as that can be told without the server, so that an id of one table
// does not fail the lookup in another (a uuid against a bigint, say).
func idFits(idType, s string) bool {
	s = strings.TrimSpace(s)
	switch idType {
	case "smallint", "integer", "bigint":
		_, err := strconv.ParseInt(s, 10, 64)
		return err == nil
	case "uuid":
		hex := strings.ReplaceAll(strings.Trim(s, "{}"), "-", "")
		if len(hex) != 32 {
			return false
		}
		for _, r := range hex {
			if !strings.ContainsRune("0123456789abcdefABCDEF", r) {
				return false
			}
		}
		return true
	}
	if strings.HasPrefix(idType, "numeric") {
		_, err := strconv.ParseFloat(s, 64)
		return err == nil
	}
	return true
}

// quoteLiteral quotes s as an SQL string literal.
func quoteLiteral(s string) string { return "'" + strings.ReplaceAll(s, "'", "''") + "'" }

// Total is how many rows the scan returns in all.
func (sc *Scan) Total() int64 { return sc.total }

// Missing lists the ids of the selection's IDs that no row has, in the
// order given.
func (sc *Scan) Missing() []string { return sc.missing }

// Next returns the next chunk of rows, as events without positions, or none
// at the end. A chunk holds up to 1000 rows and about a quarter of
// EventBufferBytes (the first one 16 rows). A row the relay could never publish (a NULL in a
// required column) comes with its Defect set, as from the stream.
func (sc *Scan) Next(ctx context.Context) ([]Event, error) {
	if sc.done {
		return nil, nil
	}
	if sc.read > 0 && sc.cfg.EventBufferBytes > 0 {
		avg := max(1, sc.size/sc.read)
		sc.rows = int(min(int64(scanChunkRows), max(1, sc.cfg.EventBufferBytes/4/avg)))
	}
	qctx, cancel := context.WithTimeout(ctx, sc.cfg.QueryTimeout)
	defer cancel()
	rows, err := sc.tx.Query(qctx, `FETCH FORWARD `+strconv.Itoa(sc.rows)+` FROM outbox_relay_scan`)
	if err != nil {
		return nil, fmt.Errorf("read the outbox rows: %w", err)
	}
	defer rows.Close()
	events := make([]Event, 0, sc.rows)
	for rows.Next() {
		var schema, table string
		var values [numColumns]*string
		var created, xmin, ctid any
		var index int
		dest := []any{&schema, &table}
		for i := range values {
			dest = append(dest, &values[i])
		}
		dest = append(dest, &created, &xmin, &ctid, &index)
		if err := rows.Scan(dest...); err != nil {
			return nil, fmt.Errorf("read the outbox rows: %w", err)
		}
		ev := rowEvent(values, sc.tables[index].names)
		ev.Schema, ev.Table = schema, table
		ev.ID = sc.cfg.eventID(schema, table, ev.RowID)
		events = append(events, ev)
		sc.size += eventSize(&ev)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("read the outbox rows: %w", err)
	}
	sc.read += int64(len(events))
	if len(events) < sc.rows {
		sc.done = true
	}
	return events, nil
}

// Close ends the scan's transaction, and with it the snapshot.
func (sc *Scan) Close() {
	if sc.tx != nil {
		ctx, cancel := context.WithTimeout(context.Background(), sc.cfg.QueryTimeout)
		_ = sc.tx.Rollback(ctx) // read only; closing the connection ends it anyway
		cancel()
	}
	closeConn(sc.conn, sc.cfg.ConnectTimeout)
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
		ID: text(colID), RowID: text(colID), AggregateType: text(colAggregateType), AggregateID: text(colAggregateID),
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
