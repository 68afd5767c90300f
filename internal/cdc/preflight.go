package cdc

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"go.uber.org/zap"
)

// ErrSlot marks a replication slot that cannot be used safely: missing when
// it may not be created, lost, or of the wrong kind. Resuming would skip
// events, so the relay stops instead of retrying.
var ErrSlot = errors.New("replication slot unusable")

// SlotState is what preflight learned about the slot.
type SlotState struct {
	// Created is true when preflight created the slot just now.
	Created bool
	// ConfirmedFlush is the slot's confirmed_flush_lsn.
	ConfirmedFlush pglogrepl.LSN
	// SystemID is the cluster's system identifier, which with the slot name
	// identifies where the positions in messages come from.
	SystemID string
	// Database is the database the slot decodes.
	Database string
	// Publication is the fingerprint of the publication preflight
	// validated: give it to Reader.SetPublicationBaseline and
	// ReconcilePublication.
	Publication PublicationFingerprint
	// Snapshot is, with Config.ExportSnapshot and a slot created just now,
	// the slot with its exported snapshot still open: Scan it, or Close it.
	Snapshot *RecoverySlot
}

// Preflight checks that PostgreSQL can feed the relay and explains every
// problem it finds, naming the setting and the fix: wal_level, the role's
// REPLICATION attribute, the outbox table and its columns, the publication and
// the slot, and with FailoverSlot what a failover needs (it makes an existing
// slot a failover slot, and warns about the rest). It creates the
// publication, then the slot, when they are missing and the configuration
// allows it; the publication must exist first, or the slot's first changes
// can be decoded without it. Before creating a slot it asks mayCreate, given
// the system identifier and database, which can refuse (when the stream
// shows the slot existed before, say).
func Preflight(ctx context.Context, cfg Config, log *zap.Logger, mayCreate func(systemID, database string) error) (SlotState, error) {
	conn, err := connect(ctx, cfg, false)
	if err != nil {
		return SlotState{}, err
	}
	defer closeConn(conn, cfg.ConnectTimeout)

	q := querier{conn: conn, timeout: cfg.QueryTimeout}
	version, err := serverVersion(ctx, q)
	if err != nil {
		return SlotState{}, err
	}
	if err := checkServer(ctx, q, cfg, version); err != nil {
		return SlotState{}, err
	}
	if untested, _ := versionSupport(version); untested {
		log.Warn("postgres is newer than the versions the relay is tested with", zap.Int("server_version_num", version),
			zap.String("reason", untestedVersion(version)))
	}
	if err := ensurePublication(ctx, q, cfg, version, log); err != nil {
		return SlotState{}, err
	}
	fingerprint, err := validatedFingerprint(ctx, q, cfg, version)
	if err != nil {
		return SlotState{}, err
	}
	sys, err := identify(ctx, cfg)
	if err != nil {
		return SlotState{}, err
	}
	state, err := ensureSlot(ctx, q, cfg, version, log, func(database string) error { return mayCreate(sys.SystemID, database) })
	if err != nil {
		return SlotState{}, err
	}
	if cfg.FailoverSlot {
		if err := ensureFailover(ctx, q, cfg, log); err != nil {
			if state.Snapshot != nil {
				state.Snapshot.Close()
			}
			return SlotState{}, err
		}
	}
	state.SystemID = sys.SystemID
	state.Publication = fingerprint
	return state, nil
}

// Check runs the preflight checks without changing anything and returns a
// line per check. Problems are returned together, joined, each naming the
// setting and the fix; a missing publication or slot that the relay would
// create is a note, not a problem.
func Check(ctx context.Context, cfg Config) ([]string, error) {
	conn, err := connect(ctx, cfg, false)
	if err != nil {
		return nil, err
	}
	defer closeConn(conn, cfg.ConnectTimeout)
	q := querier{conn: conn, timeout: cfg.QueryTimeout}
	version, err := serverVersion(ctx, q)
	if err != nil {
		return nil, err
	}
	var notes []string
	var errs []error
	if err := checkServer(ctx, q, cfg, version); err != nil {
		errs = append(errs, err)
	} else {
		notes = append(notes, "postgres: wal_level = logical, role may replicate, table and columns present")
		if untested, _ := versionSupport(version); untested {
			notes = append(notes, "postgres: untested version: "+untestedVersion(version))
		}
	}
	dry := cfg
	dry.CreatePublication, dry.CreateSlot = false, false
	if err := ensurePublication(ctx, q, dry, version, zap.NewNop()); err != nil {
		if cfg.CreatePublication && isMissing(ctx, q, `SELECT 1 FROM pg_publication WHERE pubname = $1`, cfg.Publication) {
			if err := publicationRights(ctx, q, cfg); err != nil {
				errs = append(errs, err)
			} else if isMissing(ctx, q, `SELECT 1 WHERE NOT pg_is_in_recovery()`) { // a standby, read-only
				errs = append(errs, fmt.Errorf("publication: %q does not exist, and the server is read-only (a standby); create it on the primary", cfg.Publication))
			} else {
				notes = append(notes, fmt.Sprintf("publication %q: missing, will be created on start", cfg.Publication))
			}
		} else {
			errs = append(errs, err)
		}
	} else {
		notes = append(notes, fmt.Sprintf("publication %q: publishes inserts of the table", cfg.Publication))
	}
	if _, err := identify(ctx, cfg); err != nil {
		errs = append(errs, fmt.Errorf("postgres-url: replication connection refused (check pg_hba.conf has a replication line for the role): %w", err))
	} else {
		notes = append(notes, "postgres: replication connection accepted")
	}
	row, exists, err := readSlot(ctx, q, cfg.Slot)
	switch {
	case err != nil:
		errs = append(errs, err)
	case !exists && cfg.CreateSlot:
		notes = append(notes, fmt.Sprintf("slot %q: missing, will be created on start", cfg.Slot))
	case !exists:
		errs = append(errs, fmt.Errorf("slot: %q does not exist and --create-slot is off", cfg.Slot))
	default:
		var database string
		if err := q.row(ctx, `SELECT current_database()`).Scan(&database); err != nil {
			errs = append(errs, fmt.Errorf("read current database: %w", err))
		} else if err := row.usable(cfg.Slot, database); err != nil {
			errs = append(errs, err)
		} else {
			notes = append(notes, fmt.Sprintf("slot %q: usable, confirmed_flush_lsn %s, wal_status %s", cfg.Slot, row.confirmedFlush, row.walStatus))
		}
	}
	return notes, errors.Join(errs...)
}

func isMissing(ctx context.Context, q querier, sql string, args ...any) bool {
	var one int
	err := q.row(ctx, sql, args...).Scan(&one)
	return errors.Is(err, pgx.ErrNoRows)
}

// checkServer gathers every server, role and table problem before reporting,
// so a user fixes them in one round.
func checkServer(ctx context.Context, q querier, cfg Config, version int) error {
	var walLevel string
	var replication bool
	var senderTimeoutMS int64
	err := q.row(ctx, `SELECT current_setting('wal_level'), r.rolreplication OR r.rolsuper,
			(SELECT setting::bigint FROM pg_settings WHERE name = 'wal_sender_timeout')
		FROM pg_roles r WHERE r.rolname = current_user`).Scan(&walLevel, &replication, &senderTimeoutMS)
	if err != nil {
		return fmt.Errorf("read server settings: %w", err)
	}
	var errs []error
	if _, err := versionSupport(version); err != nil {
		errs = append(errs, err)
	} else if err := standbyRequirements(ctx, q, version); err != nil {
		errs = append(errs, err)
	}
	if _, err := replicationTimeout(cfg.ReplicationTimeout, time.Duration(senderTimeoutMS)*time.Millisecond); err != nil {
		errs = append(errs, err)
	}
	if walLevel != "logical" {
		errs = append(errs, fmt.Errorf("server: wal_level is %q; set wal_level = logical in postgresql.conf and restart PostgreSQL", walLevel))
	}
	if !replication {
		errs = append(errs, errors.New("postgres-url: the role lacks the REPLICATION attribute; run ALTER ROLE <role> REPLICATION"))
	}
	if tables, err := resolveTables(ctx, q, cfg); err != nil {
		errs = append(errs, err)
	} else {
		for _, t := range tables {
			errs = append(errs, checkTable(ctx, q, cfg.ForTable(t)))
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("%w: %w", ErrConfig, err)
	}
	return nil
}

func checkTable(ctx context.Context, q querier, cfg Config) error {
	qualified := pgx.Identifier{cfg.Schema, cfg.Table}.Sanitize()
	var exists, canSelect bool
	err := q.row(ctx, `SELECT to_regclass($1) IS NOT NULL,
		COALESCE(has_table_privilege(to_regclass($1), 'SELECT'), false)`, qualified).Scan(&exists, &canSelect)
	if err != nil {
		return fmt.Errorf("look up table %s: %w", qualified, err)
	}
	if !exists {
		return fmt.Errorf("table: %s does not exist; create it (see sql/outbox.sql) or set --table", qualified)
	}
	if !canSelect {
		return fmt.Errorf("table: the role may not read %s; run GRANT SELECT ON %s TO <role>", qualified, qualified)
	}
	rows, err := q.query(ctx, `SELECT a.attname::text, format_type(a.atttypid, a.atttypmod), t.typname::text FROM pg_attribute a
		JOIN pg_type t ON t.oid = a.atttypid
		WHERE a.attrelid = to_regclass($1) AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum`, qualified)
	if err != nil {
		return fmt.Errorf("read columns of %s: %w", qualified, err)
	}
	var have, types, typnames []string
	for rows.Next() {
		var name, typ, typname string
		if err := rows.Scan(&name, &typ, &typname); err != nil {
			rows.Close()
			return fmt.Errorf("read columns of %s: %w", qualified, err)
		}
		have, types, typnames = append(have, name), append(types, typ), append(typnames, typname)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return fmt.Errorf("read columns of %s: %w", qualified, err)
	}
	index, missing := cfg.Columns.find(have)
	if len(missing) > 0 {
		return fmt.Errorf("table: %s has no column %s; set the --column-* flags to the table's column names",
			qualified, strings.Join(missing, ", "))
	}
	// created_at is rendered as an RFC 3339 time; other types have no
	// such rendering.
	if i := index[colCreatedAt]; i >= 0 && !slices.Contains([]string{"timestamptz", "timestamp", "date"}, typnames[i]) {
		return fmt.Errorf("table: column %s of %s is of type %s; --column-created-at needs timestamptz, timestamp or date (or set it empty)",
			pgx.Identifier{have[i]}.Sanitize(), qualified, types[i])
	}
	return nil
}

// walPositionSQL is the server's WAL position: pg_current_wal_lsn() on a
// primary; on a standby, which cannot call it, the position replayed, which
// is as far as decoding there reaches and as far as the standby's catalog
// (the publication) is seen by a new snapshot: replaying a commit record
// makes the transaction visible before the replayed position passes it.
const walPositionSQL = `CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn() ELSE pg_current_wal_lsn() END`

// standbyRequirements explains what logical decoding on a standby needs when
// the server is one (a hot standby in recovery): PostgreSQL 16 or later, and
// hot_standby_feedback, without which the primary's vacuum removes catalog
// rows decoding still needs and PostgreSQL invalidates the slot
// (rows_removed). nil on a primary.
func standbyRequirements(ctx context.Context, q querier, version int) error {
	var standby bool
	var feedback string
	if err := q.row(ctx, `SELECT pg_is_in_recovery(), current_setting('hot_standby_feedback')`).Scan(&standby, &feedback); err != nil {
		return fmt.Errorf("read recovery state: %w", err)
	}
	switch {
	case !standby:
		return nil
	case version < 160000:
		return fmt.Errorf("server: the server is a standby, and logical decoding on a standby needs PostgreSQL 16 or later, it is %s; point --postgres-url at the primary",
			versionText(version))
	case feedback != "on":
		return errors.New("server: the server is a standby with hot_standby_feedback off, so the primary's vacuum can remove catalog rows the slot needs and PostgreSQL would invalidate it; " +
			"set hot_standby_feedback = on on the standby and give it a physical replication slot on the primary (primary_slot_name)")
	}
	return nil
}

// The PostgreSQL majors the relay runs on: from oldestMajor, and tested up
// to newestTestedMajor (make test-matrix runs the core suite on each).
const (
	oldestMajor       = 14
	newestTestedMajor = 18
)

// versionSupport is the relay's rule for a server of the given
// server_version_num. Servers older than PostgreSQL 14 (the relay's leader
// election and pgoutput options need it) are refused with an error. Servers
// newer than the newest tested major are untested: the relay runs on them
// with a warning, since a new major keeps pgoutput's protocol version 1 and
// the catalog columns the relay reads, and a refusal would block every
// database upgrade until a relay release; make test-matrix with the new
// major's binaries is how it becomes tested. 14 to 18 are supported and
// tested.
func versionSupport(version int) (untested bool, err error) {
	switch {
	case version < oldestMajor*10000:
		return false, fmt.Errorf("server: PostgreSQL %s (server_version_num %d) is not supported; the relay needs PostgreSQL %d or later",
			versionText(version), version, oldestMajor)
	case version >= (newestTestedMajor+1)*10000:
		return true, nil
	}
	return false, nil
}

// untestedVersion is the warning for a server newer than the tested majors.
func untestedVersion(version int) string {
	return fmt.Sprintf("PostgreSQL %s is newer than the majors the relay is tested with (%d to %d); it runs, but check the release notes for changes to logical decoding and pgoutput",
		versionText(version), oldestMajor, newestTestedMajor)
}

// versionText renders a server_version_num as PostgreSQL writes its
// version: 180004 as 18.4 (major and minor since PostgreSQL 10), 90624 as
// 9.6.24.
func versionText(version int) string {
	if version >= 100000 {
		return fmt.Sprintf("%d.%d", version/10000, version%10000)
	}
	return fmt.Sprintf("%d.%d.%d", version/10000, version%10000/100, version%100)
}

// replicationTimeout is the --replication-timeout to use with a server
// whose wal_sender_timeout is sender (0 when disabled): configured, when
// set, which must be above sender (the server ends a silent session after
// sender, and answers a ping only after half of it, so a shorter timeout
// would give up on sessions the server keeps), or else twice sender and at
// least a minute.
func replicationTimeout(configured, sender time.Duration) (time.Duration, error) {
	if configured == 0 {
		return max(time.Minute, 2*sender), nil
	}
	if sender > 0 && configured <= sender {
		return 0, fmt.Errorf("replication-timeout: %s is not above the server's wal_sender_timeout %s; raise it (leave it unset for twice wal_sender_timeout)",
			configured, sender)
	}
	return configured, nil
}

// publicationRights explains, with the statements that fix it, why the
// role cannot create the publication: CREATE on the database and ownership
// of the tables are needed (directly or through a role the relay's role
// belongs to), and superuser for a publication FOR ALL TABLES (a pattern).
// nil when it can. Tables that do not exist are left out: checkTable
// reports them.
func publicationRights(ctx context.Context, q querier, cfg Config) error {
	tables, err := resolveTables(ctx, q, cfg)
	if err != nil {
		return err
	}
	var role, database string
	var canCreate, super bool
	var notOwned, owners []string
	err = q.row(ctx, `WITH t AS (SELECT name, c.relowner FROM unnest($1::text[]) WITH ORDINALITY AS u(name, n)
				JOIN pg_class c ON c.oid = to_regclass(u.name) WHERE NOT pg_has_role(c.relowner, 'USAGE') ORDER BY u.n)
		SELECT current_user, current_database(), has_database_privilege(current_database(), 'CREATE'),
			(SELECT rolsuper FROM pg_roles WHERE rolname = current_user),
			ARRAY(SELECT name FROM t), ARRAY(SELECT pg_get_userbyid(relowner)::text FROM t)`,
		qualifiedNames(tables)).Scan(&role, &database, &canCreate, &super, &notOwned, &owners)
	if err != nil {
		return fmt.Errorf("read the rights to create publication %q: %w", cfg.Publication, err)
	}
	create := createPublication(cfg, tables)
	if cfg.Patterns() {
		if super {
			return nil
		}
		return fmt.Errorf("publication: %q does not exist, and a pattern in --table needs it FOR ALL TABLES, which only a superuser may create; have one run %s and set --create-publication=false: %w",
			cfg.Publication, create, ErrConfig)
	}
	if canCreate && len(notOwned) == 0 {
		return nil
	}
	var lacks, fixes []string
	if !canCreate {
		grant := fmt.Sprintf("GRANT CREATE ON DATABASE %s TO %s", pgx.Identifier{database}.Sanitize(), pgx.Identifier{role}.Sanitize())
		lacks = append(lacks, fmt.Sprintf("CREATE on database %q (%s)", database, grant))
		fixes = append(fixes, grant)
	}
	for i, name := range notOwned {
		lacks = append(lacks, fmt.Sprintf("ownership of %s, which is owned by %q", name, owners[i]))
		fixes = append(fixes, fmt.Sprintf("ALTER TABLE %s OWNER TO %s", name, pgx.Identifier{role}.Sanitize()))
	}
	return fmt.Errorf("publication: %q does not exist and role %q may not create it: it lacks %s; run %s, or have the tables' owner run %s and set --create-publication=false: %w",
		cfg.Publication, role, strings.Join(lacks, " and "), strings.Join(fixes, " and "), create, ErrConfig)
}

// slotRow is one row of pg_replication_slots.
type slotRow struct {
	plugin         string
	slotType       string
	database       string
	confirmedFlush pglogrepl.LSN
	walStatus      string
	// invalidation is why PostgreSQL invalidated the slot (see
	// invalidationReasonSQL); empty for a valid slot.
	invalidation string
	activePID    *int32
}

// invalidationReasonSQL reads why PostgreSQL invalidated a slot of
// pg_replication_slots s: invalidation_reason on PostgreSQL 17+ (wal_removed,
// rows_removed, wal_level_insufficient, idle_timeout on 18+), "conflicting"
// for PostgreSQL 16's conflicting = true, NULL for a valid slot. Through
// to_jsonb, a column the server lacks reads as NULL, so one query fits every
// major.
const invalidationReasonSQL = `COALESCE(to_jsonb(s)->>'invalidation_reason',
	CASE WHEN to_jsonb(s)->>'conflicting' = 'true' THEN 'conflicting' END)`

func readSlot(ctx context.Context, q querier, slot string) (slotRow, bool, error) {
	var r slotRow
	var confirmed, plugin, database, walStatus, invalidation *string
	err := q.row(ctx, `SELECT plugin, slot_type, database, confirmed_flush_lsn::text, wal_status, active_pid, `+invalidationReasonSQL+`
		FROM pg_replication_slots s WHERE slot_name = $1`, slot).Scan(&plugin, &r.slotType, &database, &confirmed, &walStatus, &r.activePID, &invalidation)
	if errors.Is(err, pgx.ErrNoRows) {
		return r, false, nil
	}
	if err != nil {
		return r, false, fmt.Errorf("read slot %q: %w", slot, err)
	}
	r.plugin, r.database, r.walStatus, r.invalidation = deref(plugin), deref(database), deref(walStatus), deref(invalidation)
	if confirmed != nil {
		if r.confirmedFlush, err = pglogrepl.ParseLSN(*confirmed); err != nil {
			return r, false, fmt.Errorf("read slot %q: %w", slot, err)
		}
	}
	return r, true, nil
}

func ensureSlot(ctx context.Context, q querier, cfg Config, version int, log *zap.Logger, mayCreate func(database string) error) (SlotState, error) {
	var database string
	if err := q.row(ctx, `SELECT current_database()`).Scan(&database); err != nil {
		return SlotState{}, fmt.Errorf("read current database: %w", err)
	}
	row, exists, err := readSlot(ctx, q, cfg.Slot)
	if err != nil {
		return SlotState{}, err
	}
	if !exists {
		if !cfg.CreateSlot {
			return SlotState{}, fmt.Errorf("slot: %q does not exist and --create-slot is off; creating it would start from now and skip any event written since the old one: %w", cfg.Slot, ErrSlot)
		}
		if err := mayCreate(database); err != nil {
			return SlotState{}, fmt.Errorf("slot: %q does not exist and may not be created: %w: %w", cfg.Slot, err, ErrSlot)
		}
		if cfg.FailoverSlot && version < 170000 {
			return SlotState{}, fmt.Errorf("failover-slot: failover slots need PostgreSQL 17 or later, the server is version %d; turn the flag off: %w",
				version/10000, ErrConfig)
		}
		var snapshot *RecoverySlot
		var lsn string
		if cfg.ExportSnapshot {
			if snapshot, err = createExportingSlot(ctx, cfg, version); err != nil {
				return SlotState{}, err
			}
			lsn = snapshot.ConsistentPoint.String()
		} else {
			create := `SELECT lsn::text FROM pg_create_logical_replication_slot($1, 'pgoutput')`
			if cfg.FailoverSlot {
				// Arguments: slot, plugin, temporary, two-phase, failover.
				create = `SELECT lsn::text FROM pg_create_logical_replication_slot($1, 'pgoutput', false, false, true)`
			}
			if err := q.row(ctx, create, cfg.Slot).Scan(&lsn); err != nil {
				return SlotState{}, fmt.Errorf("create slot %q: %w", cfg.Slot, err)
			}
		}
		log.Info("replication slot created", zap.String("slot", cfg.Slot), zap.String("lsn", lsn))
		if row, exists, err = readSlot(ctx, q, cfg.Slot); err != nil || !exists {
			if snapshot != nil {
				snapshot.Close()
			}
			return SlotState{}, fmt.Errorf("read slot %q after creating it: %w", cfg.Slot, errors.Join(err, ErrSlot))
		}
		return SlotState{Created: true, ConfirmedFlush: row.confirmedFlush, Database: database, Snapshot: snapshot}, nil
	}
	if err := row.usable(cfg.Slot, database); err != nil {
		return SlotState{}, err
	}
	return SlotState{ConfirmedFlush: row.confirmedFlush, Database: database}, nil
}

// usable explains why an existing slot cannot be used.
func (r slotRow) usable(slot, database string) error {
	switch {
	case r.slotType != "logical" || r.plugin != "pgoutput":
		return fmt.Errorf("slot: %q is a %s slot with plugin %q, want a logical pgoutput slot: %w", slot, r.slotType, r.plugin, ErrSlot)
	case r.database != database:
		return fmt.Errorf("slot: %q decodes database %q, not %q: %w", slot, r.database, database, ErrSlot)
	case r.walStatus == "lost" || r.invalidation != "":
		state := "wal_status = " + r.walStatus
		if r.invalidation != "" {
			state += ", invalidation_reason = " + r.invalidation
		}
		return fmt.Errorf("slot: %q is lost (%s): %s, so events may be missing; see the recovery section of the README: %w",
			slot, state, lostSlotCause(r.invalidation), ErrSlot)
	}
	return nil
}

// lostSlotCause explains a lost slot by why PostgreSQL invalidated it
// (invalidationReasonSQL; empty on PostgreSQL 14 and 15, where removed WAL
// is the only cause) and says how to keep it from happening again.
func lostSlotCause(reason string) string {
	switch reason {
	case "", "wal_removed":
		return "PostgreSQL removed WAL it still needed (max_slot_wal_keep_size)"
	case "idle_timeout":
		return "no relay streamed from it for longer than idle_replication_slot_timeout, so PostgreSQL invalidated it " +
			"at a checkpoint and no longer keeps the WAL it needs; set idle_replication_slot_timeout above the longest time " +
			"the relay may be stopped, or to 0"
	case "rows_removed", "conflicting":
		return "the primary removed catalog rows that decoding on this standby still needed " +
			"(turn on hot_standby_feedback and give the standby a physical slot on the primary)"
	case "wal_level_insufficient":
		return "the primary's wal_level is no longer logical"
	}
	return "PostgreSQL invalidated it"
}

// identify runs IDENTIFY_SYSTEM on a replication connection. It also proves
// that pg_hba.conf admits replication connections for the role.
func identify(ctx context.Context, cfg Config) (pglogrepl.IdentifySystemResult, error) {
	conn, err := connect(ctx, cfg, true)
	if err != nil {
		return pglogrepl.IdentifySystemResult{}, err
	}
	defer closeConn(conn, cfg.ConnectTimeout)
	qctx, cancel := context.WithTimeout(ctx, cfg.QueryTimeout)
	defer cancel()
	sys, err := pglogrepl.IdentifySystem(qctx, conn.PgConn())
	if err != nil {
		return sys, fmt.Errorf("identify system: %w", err)
	}
	return sys, nil
}

// connect opens a normal or (replication) a logical replication connection.
func connect(ctx context.Context, cfg Config, replication bool) (*pgx.Conn, error) {
	connCfg, err := ParseURL(cfg.PostgresURL)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", err, ErrConfig)
	}
	connCfg.ConnectTimeout = cfg.ConnectTimeout
	// Timestamps reach the relay as text rendered in the session's time
	// zone and date style; pinning them makes created_at parse the same on
	// every server.
	connCfg.RuntimeParams["timezone"] = "UTC"
	connCfg.RuntimeParams["datestyle"] = "ISO, MDY"
	if replication {
		connCfg.RuntimeParams["replication"] = "database"
		// The replication protocol speaks simple queries only.
		connCfg.DefaultQueryExecMode = pgx.QueryExecModeSimpleProtocol
	}
	if connCfg.RuntimeParams["application_name"] == "" {
		connCfg.RuntimeParams["application_name"] = "outbox-relay"
	}
	cctx, cancel := context.WithTimeout(ctx, cfg.ConnectTimeout)
	defer cancel()
	conn, err := pgx.ConnectConfig(cctx, connCfg)
	if err != nil {
		return nil, fmt.Errorf("connect to postgres: %w", err)
	}
	return conn, nil
}

func closeConn(conn *pgx.Conn, timeout time.Duration) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	_ = conn.Close(ctx) // the session is over either way
}

// querier runs queries with a per-query timeout.
type querier struct {
	conn    *pgx.Conn
	timeout time.Duration
}

type timedRow struct {
	row    pgx.Row
	cancel context.CancelFunc
}

func (r timedRow) Scan(dest ...any) error {
	defer r.cancel()
	return r.row.Scan(dest...)
}

func (q querier) row(ctx context.Context, sql string, args ...any) timedRow {
	qctx, cancel := context.WithTimeout(ctx, q.timeout)
	return timedRow{row: q.conn.QueryRow(qctx, sql, args...), cancel: cancel}
}

func (q querier) query(ctx context.Context, sql string, args ...any) (pgx.Rows, error) {
	// The rows are read right away by the caller; the timeout covers both.
	qctx, cancel := context.WithTimeout(ctx, q.timeout)
	rows, err := q.conn.Query(qctx, sql, args...)
	if err != nil {
		cancel()
		return nil, err
	}
	return &cancelRows{Rows: rows, cancel: cancel}, nil
}

func (q querier) exec(ctx context.Context, sql string, args ...any) error {
	qctx, cancel := context.WithTimeout(ctx, q.timeout)
	defer cancel()
	_, err := q.conn.Exec(qctx, sql, args...)
	return err
}

// cancelRows releases the query's timeout when the rows are closed.
type cancelRows struct {
	pgx.Rows
	cancel context.CancelFunc
}

func (r *cancelRows) Close() {
	r.Rows.Close()
	r.cancel()
}

func deref(s *string) string {
	if s == nil {
		return ""
	}
	return *s
}

// Connect opens a normal connection with the configured timeouts, for
// one-off commands.
func Connect(ctx context.Context, cfg Config) (*pgx.Conn, error) { return connect(ctx, cfg, false) }

// SystemID returns the cluster's system identifier, read with
// IDENTIFY_SYSTEM (which needs only the REPLICATION attribute).
func SystemID(ctx context.Context, cfg Config) (string, error) {
	sys, err := identify(ctx, cfg)
	return sys.SystemID, err
}

// ParseURL parses a PostgreSQL connection URL or keyword/value string. Its
// error names the setting and the cause (an unreadable sslrootcert file,
// say) but never quotes the URL, which may hold a password.
func ParseURL(url string) (*pgx.ConnConfig, error) {
	cfg, err := pgx.ParseConfig(url)
	if err == nil {
		return cfg, nil
	}
	var parseErr *pgconn.ParseConfigError
	if errors.As(err, &parseErr) && parseErr.Unwrap() != nil {
		return nil, fmt.Errorf("postgres-url: cannot be used: %s", parseErr.Unwrap().Error())
	}
	return nil, errors.New("postgres-url: cannot be parsed (check its syntax)")
}
