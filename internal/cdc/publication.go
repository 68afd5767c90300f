package cdc

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"go.uber.org/zap"
)

// treeRole says where a relation sits in the outbox table's partition tree.
type treeRole string

const (
	roleSelf       treeRole = "self"       // the outbox table itself
	roleAncestor   treeRole = "ancestor"   // a partitioned table the outbox is a partition of
	roleDescendant treeRole = "descendant" // a partition of the (partitioned) outbox
)

// publishedRel is one row of pg_publication_tables that belongs to the
// outbox's partition tree: the name the publication delivers rows under.
type publishedRel struct {
	role      treeRole
	qualified string
	// rowFilter is the row filter (PostgreSQL 15+), "" when none.
	rowFilter string
	// columns are the published columns (PostgreSQL 15+); nil before 15,
	// when every column is published.
	columns []string
}

// publicationInfo is what the catalog says about the publication, as far as
// it decides whether the outbox's inserts reach the relay under its name.
type publicationInfo struct {
	exists    bool
	insert    bool
	allTables bool
	viaRoot   bool
	published []publishedRel
}

// readPublication reads the publication's settings (exists false when there
// is none), not yet how it publishes any table (readPublishedTree).
func readPublication(ctx context.Context, q querier, cfg Config) (publicationInfo, error) {
	var info publicationInfo
	err := q.row(ctx, `SELECT p.pubinsert, p.puballtables, p.pubviaroot FROM pg_publication p WHERE p.pubname = $1`, cfg.Publication).Scan(&info.insert, &info.allTables, &info.viaRoot)
	if errors.Is(err, pgx.ErrNoRows) {
		return info, nil
	}
	if err != nil {
		return info, fmt.Errorf("look up publication %q: %w", cfg.Publication, err)
	}
	info.exists = true
	return info, nil
}

// readPublishedTree reads how the publication publishes the partition tree
// of the outbox table of cfg: the outbox itself, the tables it is a
// partition of and its own partitions.
func readPublishedTree(ctx context.Context, q querier, cfg Config, version int) ([]publishedRel, error) {
	var published []publishedRel
	extra := `NULL::text, NULL::text[]`
	if version >= 150000 {
		extra = `pt.rowfilter, pt.attnames::text[]`
	}
	rows, err := q.query(ctx, `WITH outbox AS (SELECT to_regclass($2) AS oid),
		tree AS (
			SELECT a.relid, 'ancestor' AS role FROM outbox, pg_partition_ancestors(outbox.oid) a WHERE a.relid <> outbox.oid
			UNION ALL SELECT t.relid, 'descendant' FROM outbox, pg_partition_tree(outbox.oid) t WHERE t.relid <> outbox.oid
			UNION ALL SELECT outbox.oid, 'self' FROM outbox)
		SELECT tree.role, pt.schemaname::text, pt.tablename::text, `+extra+`
		FROM pg_publication_tables pt
		JOIN pg_namespace n ON n.nspname = pt.schemaname
		JOIN pg_class c ON c.relnamespace = n.oid AND c.relname = pt.tablename
		JOIN tree ON tree.relid = c.oid
		WHERE pt.pubname = $1
		ORDER BY tree.role DESC, 2, 3`, cfg.Publication, qualifiedTable(cfg))
	if err != nil {
		return nil, fmt.Errorf("read the tables of publication %q: %w", cfg.Publication, err)
	}
	defer rows.Close()
	for rows.Next() {
		var rel publishedRel
		var schema, table string
		var filter *string
		if err := rows.Scan(&rel.role, &schema, &table, &filter, &rel.columns); err != nil {
			return nil, fmt.Errorf("read the tables of publication %q: %w", cfg.Publication, err)
		}
		rel.qualified = pgx.Identifier{schema, table}.Sanitize()
		rel.rowFilter = deref(filter)
		published = append(published, rel)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("read the tables of publication %q: %w", cfg.Publication, err)
	}
	return published, nil
}

// judgePublication explains, naming the fix, why the publication would not
// deliver every insert of the outbox to the relay under the outbox's name
// with every mapped column; nil when it does. The publication exists.
func judgePublication(cfg Config, info publicationInfo) error {
	pub := pgx.Identifier{cfg.Publication}.Sanitize()
	qualified := qualifiedTable(cfg)
	var errs []error
	if !info.insert {
		errs = append(errs, fmt.Errorf("publication: %q does not publish inserts; run ALTER PUBLICATION %s SET (publish = 'insert')", cfg.Publication, pub))
	}
	var self *publishedRel
	var ancestors, descendants []string
	for i, rel := range info.published {
		switch rel.role {
		case roleSelf:
			self = &info.published[i]
		case roleAncestor:
			ancestors = append(ancestors, rel.qualified)
		case roleDescendant:
			descendants = append(descendants, rel.qualified)
		}
	}
	// Remaking the table's membership in one transaction changes it
	// atomically: no insert is decoded in between.
	readd := fmt.Sprintf("in one transaction, run ALTER PUBLICATION %s DROP TABLE %s and ALTER PUBLICATION %s ADD TABLE %s", pub, qualified, pub, qualified)
	switch {
	case len(ancestors) > 0:
		errs = append(errs, fmt.Errorf("table: %s is a partition of %s, which publication %q publishes with publish_via_partition_root, so the outbox's rows arrive under that name; set --table=%s",
			qualified, ancestors[0], cfg.Publication, ancestors[0]))
	case self != nil:
		if self.rowFilter != "" {
			errs = append(errs, fmt.Errorf("publication: %q has a row filter on %s, WHERE %s, which would hide events from the relay; remove it: %s",
				cfg.Publication, qualified, self.rowFilter, readd))
		}
		if self.columns != nil {
			if missing := cfg.Columns.missingFrom(self.columns); len(missing) > 0 {
				errs = append(errs, fmt.Errorf("publication: %q publishes a column list of %s without %s, which the relay maps; publish every column: %s",
					cfg.Publication, qualified, strings.Join(missing, ", "), readd))
			}
		}
	case len(descendants) > 0:
		errs = append(errs, fmt.Errorf("publication: %q publishes the partitions of %s (%s) under their own names, so the relay would not see the outbox's rows; run ALTER PUBLICATION %s SET (publish_via_partition_root = true)",
			cfg.Publication, qualified, strings.Join(descendants, ", "), pub))
	default:
		errs = append(errs, fmt.Errorf("publication: %q does not include %s; run ALTER PUBLICATION %s ADD TABLE %s",
			cfg.Publication, qualified, pub, qualified))
	}
	return errors.Join(errs...)
}

// judgeTables explains, naming the fix, why the publication would not
// deliver every insert of each of the tables to the relay under its own name
// with every mapped column, or, for a pattern, of the tables created later;
// nil when it does. exists is false, with nil, when the publication does not
// exist. A pattern's tables need no check of their own: a publication FOR
// ALL TABLES via the partitions' root publishes every column of every row
// of each (no row filter or column list), and the running relay checks
// every second.
func judgeTables(ctx context.Context, q querier, cfg Config, tables []Table, version int) (exists bool, err error) {
	info, err := readPublication(ctx, q, cfg)
	if err != nil || !info.exists {
		return false, err
	}
	pub := pgx.Identifier{cfg.Publication}.Sanitize()
	var errs []error
	if !info.insert {
		errs = append(errs, fmt.Errorf("publication: %q does not publish inserts; run ALTER PUBLICATION %s SET (publish = 'insert')", cfg.Publication, pub))
	}
	if cfg.Patterns() && !info.allTables {
		errs = append(errs, fmt.Errorf("publication: %q lists its tables, so the tables --table=%s matches that are created later would not reach the relay; a pattern needs a publication FOR ALL TABLES: as a superuser, run DROP PUBLICATION %s and %s, or list the tables in --table",
			cfg.Publication, cfg.TablesText(), pub, createPublication(cfg, tables)))
	}
	if cfg.Patterns() && !info.viaRoot {
		errs = append(errs, fmt.Errorf("publication: %q publishes partitions under their own names, so the rows of a partitioned table --table=%s matches would not reach the relay under its name; run ALTER PUBLICATION %s SET (publish_via_partition_root = true)",
			cfg.Publication, cfg.TablesText(), pub))
	}
	var unlogged []string
	if err := q.row(ctx, `SELECT ARRAY(SELECT name FROM unnest($1::text[]) name JOIN pg_class c ON c.oid = to_regclass(name)
		WHERE c.relpersistence = 'u')`, qualifiedNames(tables)).Scan(&unlogged); err != nil {
		return true, fmt.Errorf("read whether the outbox tables are logged: %w", err)
	}
	for _, name := range unlogged {
		// A FOR TABLE publication refuses unlogged tables, FOR ALL TABLES
		// takes them: their rows never reach the WAL.
		errs = append(errs, fmt.Errorf("table: %s is UNLOGGED, so its rows never reach the WAL the relay reads, and none is published; run ALTER TABLE %s SET LOGGED, then publish the rows written since it was unlogged with relay replay",
			name, name))
	}
	// The tables a pattern matches were judged above, as a whole.
	for _, t := range cfg.explicitTables() {
		one := cfg.ForTable(t)
		published, err := readPublishedTree(ctx, q, one, version)
		if err != nil {
			return true, err
		}
		table := info
		table.insert = true // reported above, once
		table.published = published
		errs = append(errs, judgePublication(one, table))
	}
	return true, errors.Join(errs...)
}

// createPublication is the statement that creates the publication the
// configuration needs: for the listed tables, or for all tables when a
// pattern names some (tables created later must be in it from the start).
// publish_via_partition_root makes a partitioned outbox publish its
// partitions' rows under its own name; for a plain table it changes nothing.
func createPublication(cfg Config, tables []Table) string {
	pub := pgx.Identifier{cfg.Publication}.Sanitize()
	if cfg.Patterns() {
		return fmt.Sprintf("CREATE PUBLICATION %s FOR ALL TABLES WITH (publish = 'insert', publish_via_partition_root = true)", pub)
	}
	names := make([]string, len(tables))
	for i, t := range tables {
		names[i] = t.Qualified()
	}
	return fmt.Sprintf("CREATE PUBLICATION %s FOR TABLE %s WITH (publish = 'insert', publish_via_partition_root = true)", pub, strings.Join(names, ", "))
}

// ensurePublication checks the publication, creating it first when it is
// missing and the configuration allows it. A publication that would not
// deliver every outbox insert under the outbox's name is refused with the
// statement that fixes it.
func ensurePublication(ctx context.Context, q querier, cfg Config, version int, log *zap.Logger) error {
	tables, err := resolveTables(ctx, q, cfg)
	if err != nil {
		return err
	}
	exists, err := judgeTables(ctx, q, cfg, tables, version)
	if exists {
		if err != nil {
			return fmt.Errorf("%w: %w", err, ErrConfig)
		}
		return nil
	}
	if err != nil {
		return err
	}
	create := createPublication(cfg, tables)
	if !cfg.CreatePublication {
		return fmt.Errorf("publication: %q does not exist; create it with %s, or allow --create-publication: %w",
			cfg.Publication, create, ErrConfig)
	}
	if err := q.exec(ctx, create); err != nil {
		var pgErr *pgconn.PgError
		if errors.As(err, &pgErr) && pgErr.Code == sqlstateInsufficientPrivilege {
			if rights := publicationRights(ctx, q, cfg); rights != nil {
				return rights
			}
			return fmt.Errorf("create publication %q: %w: %w", cfg.Publication, err, ErrConfig)
		}
		if errors.As(err, &pgErr) && pgErr.Code == sqlstateReadOnlyTransaction {
			return fmt.Errorf("publication: %q does not exist, and the server is read-only (a standby); create it on the primary with %s: %w",
				cfg.Publication, create, ErrConfig)
		}
		return fmt.Errorf("create publication %q: %w", cfg.Publication, err)
	}
	log.Info("publication created", zap.String("publication", cfg.Publication), zap.String("table", cfg.TablesText()))
	// Read back what PostgreSQL made of it: a table that is a partition of
	// a table published via its root, say, would still not reach the relay
	// under its name.
	exists, err = judgeTables(ctx, q, cfg, tables, version)
	if !exists && err == nil {
		return fmt.Errorf("publication: %q is missing right after it was created: %w", cfg.Publication, ErrConfig)
	}
	if err != nil {
		return fmt.Errorf("publication %q was created but cannot be used: %w: %w", cfg.Publication, err, ErrConfig)
	}
	return nil
}

// validatedFingerprint returns the fingerprint of the publication, checked
// to deliver every outbox insert under the outbox's name, read before and
// after the check: a change in between is retried.
func validatedFingerprint(ctx context.Context, q querier, cfg Config, version int) (PublicationFingerprint, error) {
	before, err := readFingerprint(ctx, q, cfg, version)
	if err != nil {
		return "", err
	}
	tables, err := resolveTables(ctx, q, cfg)
	if err != nil {
		return "", err
	}
	exists, err := judgeTables(ctx, q, cfg, tables, version)
	if err != nil {
		if exists {
			err = fmt.Errorf("%w: %w", err, ErrConfig)
		}
		return "", err
	}
	if !exists {
		return "", fmt.Errorf("publication %q disappeared during preflight", cfg.Publication)
	}
	after, err := readFingerprint(ctx, q, cfg, version)
	if err != nil {
		return "", err
	}
	if before != after {
		return "", fmt.Errorf("publication %q changed during preflight", cfg.Publication)
	}
	return after, nil
}

// sqlstateInsufficientPrivilege: permission denied, must be owner.
const sqlstateInsufficientPrivilege = "42501"

// sqlstateReadOnlyTransaction: cannot execute a statement in a read-only
// transaction, as on a standby.
const sqlstateReadOnlyTransaction = "25006"

// qualifiedTable is the outbox table as a quoted, schema-qualified name.
func qualifiedTable(cfg Config) string { return pgx.Identifier{cfg.Schema, cfg.Table}.Sanitize() }

// serverVersion reads server_version_num, e.g. 150004.
func serverVersion(ctx context.Context, q querier) (int, error) {
	var version int
	if err := q.row(ctx, `SELECT current_setting('server_version_num')::int`).Scan(&version); err != nil {
		return 0, fmt.Errorf("read server version: %w", err)
	}
	return version, nil
}
