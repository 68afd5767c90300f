// Package janitor deletes published rows of the outbox table once they are
// older than the retention: whole partitions of an outbox range-partitioned
// by its created_at column, and rows in small batches otherwise. Deleting is
// safe for publishing because the relay reads the WAL, not the table.
package janitor

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"go.uber.org/zap"
)

// Defaults of the settings that have no flag.
const (
	// DefaultBatchSize is how many rows one DELETE removes: small enough to
	// take milliseconds and to hold row locks only that long.
	DefaultBatchSize = 1000
	// DefaultLockTimeout bounds how long a statement of the janitor waits
	// for a lock. A DETACH waits for the outbox's writers to finish their
	// transactions, and writers that come after it queue behind it: the
	// janitor gives up (and tries again at its next run) rather than hold
	// them up longer.
	DefaultLockTimeout = time.Second
)

// Config configures the janitor. Retention 0 turns it off.
type Config struct {
	// Retention is the age (by CreatedAt) past which rows are removed.
	Retention time.Duration
	// Interval is the time between the end of one run and the start of the
	// next.
	Interval time.Duration
	// Schema and Table name the outbox table.
	Schema, Table string
	// CreatedAt is the creation time column, or comma-separated
	// alternatives of which the table has one (as cdc.Columns.CreatedAt).
	CreatedAt string
	// Tables, when set, lists the outbox tables at the start of each run
	// and check (several tables, or tables a pattern names); each is
	// cleaned up as Schema, Table and CreatedAt would be.
	Tables func(ctx context.Context, db *pgx.Conn) ([]Table, error)
	// TablesSetting names those tables in the log (the --table setting).
	TablesSetting string
	// BatchSize is how many rows one DELETE removes.
	BatchSize int
	// StatementTimeout bounds each statement (statement_timeout);
	// LockTimeout bounds its waits for locks (lock_timeout).
	StatementTimeout time.Duration
	LockTimeout      time.Duration
}

// Table is one outbox table to clean up.
type Table struct {
	Schema, Name string
	// CreatedAt is the table's creation time column, or alternatives.
	CreatedAt string
}

// tables are the tables to clean up now.
func (c Config) tables(ctx context.Context, db *pgx.Conn) ([]Config, error) {
	if c.Tables == nil {
		return []Config{c}, nil
	}
	tables, err := c.Tables(ctx, db)
	if err != nil {
		return nil, err
	}
	out := make([]Config, len(tables))
	for i, t := range tables {
		one := c
		one.Schema, one.Table, one.CreatedAt, one.Tables = t.Schema, t.Name, t.CreatedAt, nil
		out[i] = one
	}
	return out, nil
}

// Enabled reports whether the janitor runs at all.
func (c Config) Enabled() bool { return c.Retention > 0 }

// Validate reports every problem of c at once, each naming its setting.
func (c Config) Validate() error {
	var errs []error
	if c.Retention < 0 {
		errs = append(errs, fmt.Errorf("retention: %s, must not be negative (0 turns cleanup off)", c.Retention))
	}
	if !c.Enabled() {
		return errors.Join(errs...)
	}
	if len(c.createdAtColumns()) == 0 {
		errs = append(errs, fmt.Errorf("retention: %s needs the outbox's creation time, and the column mapping has none (--column-created-at is empty); map the created_at column or turn cleanup off", c.Retention))
	}
	if c.Interval <= 0 {
		errs = append(errs, fmt.Errorf("retention-interval: %s, must be positive", c.Interval))
	}
	if c.BatchSize < 1 {
		errs = append(errs, fmt.Errorf("janitor batch size: %d, must be at least 1", c.BatchSize))
	}
	if c.StatementTimeout <= 0 || c.LockTimeout <= 0 {
		errs = append(errs, errors.New("janitor timeouts: must be positive"))
	}
	return errors.Join(errs...)
}

func (c Config) createdAtColumns() []string {
	var names []string
	for _, name := range strings.Split(c.CreatedAt, ",") {
		if name = strings.TrimSpace(name); name != "" {
			names = append(names, name)
		}
	}
	return names
}

func (c Config) qualified() string { return pgx.Identifier{c.Schema, c.Table}.Sanitize() }

// tablesText names the tables for the log: the one table, or the setting
// the Tables function reads.
func (c Config) tablesText() string {
	if c.Tables != nil && c.TablesSetting != "" {
		return c.TablesSetting
	}
	return c.qualified()
}

// Result is what one run did.
type Result struct {
	// Cutoff is the server's now() less the retention: rows created before
	// it were removed.
	Cutoff time.Time
	// RowsDeleted counts rows removed by DELETE; PartitionsDropped whole
	// partitions detached and dropped (their rows are not counted).
	RowsDeleted       int64
	PartitionsDropped int64
}

// RunOnce removes what is older than the retention: first every partition
// whose upper bound is at or before the cutoff (when the outbox is range
// partitioned by its created_at column alone), each detached and dropped in
// a transaction of its own, then the remaining old rows, in batches of
// BatchSize, each a transaction of its own. Every statement runs under
// StatementTimeout and LockTimeout. It stops at the first error, keeping
// what earlier transactions did; the next run goes on from there. It counts
// what it did until it stopped, also on an error.
//
// With several tables, each is cleaned up in turn; an error with one does
// not keep the others from being cleaned up.
func RunOnce(ctx context.Context, db *pgx.Conn, cfg Config) (Result, error) {
	tables, err := cfg.tables(ctx, db)
	if err != nil {
		return Result{}, fmt.Errorf("list the outbox tables: %w", err)
	}
	var total Result
	var errs []error
	for _, one := range tables {
		res, err := runTable(ctx, db, one)
		total.Cutoff = res.Cutoff
		total.RowsDeleted += res.RowsDeleted
		total.PartitionsDropped += res.PartitionsDropped
		errs = append(errs, err)
		if ctx.Err() != nil || db.IsClosed() {
			break
		}
	}
	return total, errors.Join(errs...)
}

// runTable is RunOnce for the one table of cfg.
func runTable(ctx context.Context, db *pgx.Conn, cfg Config) (Result, error) {
	var res Result
	var column string
	var partitions []string
	if err := inTx(ctx, db, cfg, func(tx pgx.Tx) error {
		var err error
		if column, err = createdAtColumn(ctx, tx, cfg); err != nil {
			return err
		}
		if err := tx.QueryRow(ctx, `SELECT now() - make_interval(secs => $1)`, cfg.Retention.Seconds()).Scan(&res.Cutoff); err != nil {
			return fmt.Errorf("read the cleanup cutoff: %w", err)
		}
		partitions, err = expiredPartitions(ctx, tx, cfg, column, res.Cutoff)
		return err
	}); err != nil {
		return res, err
	}
	for _, p := range partitions {
		if err := inTx(ctx, db, cfg, func(tx pgx.Tx) error {
			// One transaction: a crash leaves the partition attached, never
			// detached and kept.
			if _, err := tx.Exec(ctx, fmt.Sprintf(`ALTER TABLE %s DETACH PARTITION %s`, cfg.qualified(), p)); err != nil {
				return err
			}
			_, err := tx.Exec(ctx, `DROP TABLE `+p)
			return err
		}); err != nil {
			return res, fmt.Errorf("detach and drop partition %s of %s: %w", p, cfg.qualified(), err)
		}
		res.PartitionsDropped++
	}
	col := pgx.Identifier{column}.Sanitize()
	// The inner SELECT finds a batch (through an index on created_at when
	// there is one); tableoid tells apart equal ctids of different
	// partitions; the outer condition checks the row again.
	del := fmt.Sprintf(`DELETE FROM %[1]s WHERE (tableoid, ctid) IN
		(SELECT tableoid, ctid FROM %[1]s WHERE %[2]s < $1::timestamptz LIMIT $2) AND %[2]s < $1::timestamptz`, cfg.qualified(), col)
	for {
		var n int64
		err := inTx(ctx, db, cfg, func(tx pgx.Tx) error {
			tag, err := tx.Exec(ctx, del, res.Cutoff, cfg.BatchSize)
			n = tag.RowsAffected()
			return err
		})
		if err != nil {
			return res, fmt.Errorf("delete rows of %s created before %s: %w", cfg.qualified(), res.Cutoff.UTC().Format(time.RFC3339), err)
		}
		res.RowsDeleted += n
		if n < int64(cfg.BatchSize) {
			return res, nil
		}
	}
}

// inTx runs f in a transaction whose statements are bounded by the
// configured statement and lock timeouts, in the time zone UTC, where the
// relay reads a created_at without time zone.
func inTx(ctx context.Context, db *pgx.Conn, cfg Config, f func(pgx.Tx) error) error {
	return pgx.BeginFunc(ctx, db, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `SELECT set_config('statement_timeout', $1, true), set_config('lock_timeout', $2, true), set_config('TimeZone', 'UTC', true)`,
			millis(cfg.StatementTimeout), millis(cfg.LockTimeout)); err != nil {
			return err
		}
		return f(tx)
	})
}

func millis(d time.Duration) string { return fmt.Sprintf("%dms", max(d.Milliseconds(), 1)) }

// errStandby: the relay reads from a hot standby, where nothing can be
// deleted.
var errStandby = errors.New("the server is a standby in recovery, where rows cannot be deleted; clean up on the primary (with your own job) or run without --retention")

// createdAtColumn returns the configured creation time column the table has,
// on a server where rows can be deleted.
func createdAtColumn(ctx context.Context, db pgx.Tx, cfg Config) (string, error) {
	var standby bool
	if err := db.QueryRow(ctx, `SELECT pg_is_in_recovery()`).Scan(&standby); err != nil {
		return "", fmt.Errorf("read whether the server is in recovery: %w", err)
	}
	if standby {
		return "", errStandby
	}
	names := cfg.createdAtColumns()
	var found *string
	err := db.QueryRow(ctx, `SELECT attname::text FROM pg_attribute
		WHERE attrelid = to_regclass($1) AND attnum > 0 AND NOT attisdropped AND attname = ANY ($2::text[])
		ORDER BY array_position($2::text[], attname::text) LIMIT 1`, cfg.qualified(), names).Scan(&found)
	if errors.Is(err, pgx.ErrNoRows) {
		return "", fmt.Errorf("table %s has no column %s to clean up by", cfg.qualified(), strings.Join(names, " or "))
	}
	if err != nil {
		return "", fmt.Errorf("look up the creation time column of %s: %w", cfg.qualified(), err)
	}
	return *found, nil
}

// upperBound matches a range partition's bound of one column whose upper
// end is a literal (not MAXVALUE), as pg_get_expr renders it.
const upperBound = `^FOR VALUES FROM \(.*\) TO \('([^']*)'\)$`

// expiredPartitions returns the partitions to drop, qualified and quoted:
// when the outbox is partitioned by range on column alone, its partitions
// (not the default one, nor one a DETACH CONCURRENTLY left pending) whose
// upper bound is at or before cutoff. Bounds are read as timestamptz in
// the session's time zone, UTC, as the relay reads created_at.
func expiredPartitions(ctx context.Context, db pgx.Tx, cfg Config, column string, cutoff time.Time) ([]string, error) {
	var byColumn bool
	err := db.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pg_partitioned_table pt
			JOIN pg_attribute a ON a.attrelid = pt.partrelid AND a.attnum = pt.partattrs[0]
		WHERE pt.partrelid = to_regclass($1) AND pt.partstrat = 'r' AND pt.partnatts = 1 AND a.attname = $2)`,
		cfg.qualified(), column).Scan(&byColumn)
	if err != nil {
		return nil, fmt.Errorf("read how %s is partitioned: %w", cfg.qualified(), err)
	}
	if !byColumn {
		return nil, nil
	}
	rows, err := db.Query(ctx, `SELECT format('%I.%I', n.nspname, c.relname)
		FROM pg_inherits i
			JOIN pg_class c ON c.oid = i.inhrelid
			JOIN pg_namespace n ON n.oid = c.relnamespace
		WHERE i.inhparent = to_regclass($1) AND NOT i.inhdetachpending
			AND (regexp_match(pg_get_expr(c.relpartbound, c.oid), $2))[1]::timestamptz <= $3::timestamptz
		ORDER BY 1`, cfg.qualified(), upperBound, cutoff)
	if err != nil {
		return nil, fmt.Errorf("list the partitions of %s: %w", cfg.qualified(), err)
	}
	names, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return nil, fmt.Errorf("list the partitions of %s: %w", cfg.qualified(), err)
	}
	return names, nil
}

// Check reports, without changing anything, how the janitor would clean up
// the outbox, and fails when it could not: no creation time column, no
// right to delete rows, or, where it would drop partitions, no ownership of
// the outbox and its partitions.
func Check(ctx context.Context, db *pgx.Conn, cfg Config) (string, error) {
	tables, err := cfg.tables(ctx, db)
	if err != nil {
		return "", fmt.Errorf("list the outbox tables: %w", err)
	}
	var notes []string
	var errs []error
	for _, one := range tables {
		note, err := checkTable(ctx, db, one)
		if note != "" {
			notes = append(notes, note)
		}
		errs = append(errs, err)
	}
	if len(tables) == 0 {
		notes = append(notes, "no outbox table matches the tables setting yet")
	}
	return strings.Join(notes, "; "), errors.Join(errs...)
}

// checkTable is Check for the one table of cfg.
func checkTable(ctx context.Context, db *pgx.Conn, cfg Config) (string, error) {
	var note string
	err := inTx(ctx, db, cfg, func(tx pgx.Tx) error {
		column, err := createdAtColumn(ctx, tx, cfg)
		if err != nil {
			return err
		}
		var mayDelete, byColumn, owns bool
		err = tx.QueryRow(ctx, `SELECT has_table_privilege(to_regclass($1), 'DELETE'),
				EXISTS (SELECT 1 FROM pg_partitioned_table pt
					JOIN pg_attribute a ON a.attrelid = pt.partrelid AND a.attnum = pt.partattrs[0]
				WHERE pt.partrelid = to_regclass($1) AND pt.partstrat = 'r' AND pt.partnatts = 1 AND a.attname = $2),
				NOT EXISTS (SELECT 1 FROM pg_class c WHERE (c.oid = to_regclass($1) OR c.oid IN (SELECT relid FROM pg_partition_tree(to_regclass($1))))
					AND NOT pg_has_role(c.relowner, 'USAGE'))`,
			cfg.qualified(), column).Scan(&mayDelete, &byColumn, &owns)
		if err != nil {
			return fmt.Errorf("read the rights on %s: %w", cfg.qualified(), err)
		}
		var errs []error
		if !mayDelete {
			errs = append(errs, fmt.Errorf("the role may not delete rows of %s; run GRANT DELETE ON %s TO <role>", cfg.qualified(), cfg.qualified()))
		}
		if byColumn && !owns {
			errs = append(errs, fmt.Errorf("%s is partitioned by range on %s, and the role does not own it and its partitions, so it cannot drop old partitions; make it a member of their owner role", cfg.qualified(), column))
		}
		how := "in batches of " + fmt.Sprint(cfg.BatchSize)
		if byColumn {
			how = "by dropping partitions whose upper bound is older, then in batches of " + fmt.Sprint(cfg.BatchSize)
		}
		note = fmt.Sprintf("rows of %s created more than %s ago (by %s) are deleted every %s, %s", cfg.qualified(), cfg.Retention, column, cfg.Interval, how)
		return errors.Join(errs...)
	})
	return note, err
}

// State is what the janitor has done, kept where `relay status` reads it.
type State struct {
	// Retention is the retention of the last run.
	Retention time.Duration `json:"retention"`
	// LastRun is when the last run ended, LastSuccess when the last run
	// without an error ended; LastError is the last run's error, if any.
	LastRun     time.Time `json:"last_run"`
	LastSuccess time.Time `json:"last_success,omitzero"`
	LastError   string    `json:"last_error,omitempty"`
	// RowsDeleted and PartitionsDropped are totals over every run.
	RowsDeleted       int64 `json:"rows_deleted"`
	PartitionsDropped int64 `json:"partitions_dropped"`
}

// Store keeps the janitor's State.
type Store interface {
	// Load returns the state saved last, and false when there is none.
	Load(ctx context.Context) (State, bool, error)
	// Save replaces the state.
	Save(ctx context.Context, s State) error
}

// Instruments is told the outcome of each run (metrics).
type Instruments interface {
	Ran(res Result, err error, at time.Time)
}

// Janitor runs RunOnce every Interval on a connection of its own.
type Janitor struct {
	cfg     Config
	connect func(ctx context.Context) (*pgx.Conn, error)
	store   Store
	inst    Instruments
	log     *zap.Logger
}

// New returns a janitor that opens its connection with connect, keeps its
// state in store and reports each run to inst and in one log line.
func New(cfg Config, connect func(ctx context.Context) (*pgx.Conn, error), store Store, inst Instruments, log *zap.Logger) *Janitor {
	return &Janitor{cfg: cfg, connect: connect, store: store, inst: inst, log: log}
}

// Run cleans up at once and then every Interval until ctx is done. Errors
// do not end it: each is logged, counted, and the next run tries again.
func (j *Janitor) Run(ctx context.Context) error {
	var db *pgx.Conn
	defer func() {
		if db != nil {
			_ = db.Close(context.WithoutCancel(ctx)) // ending anyway
		}
	}()
	for {
		start := time.Now()
		var res Result
		var err error
		if db == nil {
			db, err = j.connect(ctx)
		}
		if err == nil {
			res, err = RunOnce(ctx, db, j.cfg)
		}
		if ctx.Err() != nil {
			return nil
		}
		if err != nil && db != nil && db.IsClosed() {
			db = nil // reconnect on the next run
		}
		j.report(ctx, res, err, start)
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(j.cfg.Interval):
		}
	}
}

// report logs a run, counts it, and saves the state.
func (j *Janitor) report(ctx context.Context, res Result, runErr error, start time.Time) {
	now := time.Now()
	j.inst.Ran(res, runErr, now)
	fields := []zap.Field{
		zap.String("table", j.cfg.tablesText()), zap.Duration("retention", j.cfg.Retention),
		zap.Time("cutoff", res.Cutoff), zap.Int64("rows_deleted", res.RowsDeleted),
		zap.Int64("partitions_dropped", res.PartitionsDropped), zap.Duration("duration", now.Sub(start)),
	}
	state, _, err := j.store.Load(ctx)
	if err != nil {
		fields = append(fields, zap.NamedError("state_error", err))
	}
	state.Retention = j.cfg.Retention
	state.LastRun = now
	state.RowsDeleted += res.RowsDeleted
	state.PartitionsDropped += res.PartitionsDropped
	state.LastError = ""
	if runErr != nil {
		state.LastError = runErr.Error()
	} else {
		state.LastSuccess = now
	}
	if err == nil {
		if err := j.store.Save(ctx, state); err != nil {
			fields = append(fields, zap.NamedError("state_error", err))
		}
	}
	if runErr != nil {
		j.log.Warn("cleanup run failed, trying again at the next run", append(fields, zap.Error(runErr))...)
		return
	}
	j.log.Info("cleanup run done", fields...)
}
