package cdc

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/jackc/pgx/v5"
)

// Table is one outbox table the relay reads, or a pattern naming several: a
// '*' in the schema or the table name matches any run of characters, so
// "*.outbox" is every schema's outbox table, including schemas created while
// the relay runs.
type Table struct {
	Schema, Name string
	// Columns is the table's column mapping.
	Columns Columns
}

// IsPattern reports whether t names tables by a pattern.
func (t Table) IsPattern() bool { return strings.ContainsRune(t.Schema+t.Name, '*') }

// Matches reports whether the table schema.name is t or matches its pattern.
func (t Table) Matches(schema, name string) bool {
	if !t.IsPattern() {
		return schema == t.Schema && name == t.Name
	}
	return globMatch(t.Schema, schema) && globMatch(t.Name, name)
}

// globMatch matches name against a pattern whose only special character is
// '*', which matches any run of characters (none included).
func globMatch(pattern, name string) bool {
	literal, rest, star := strings.Cut(pattern, "*")
	if !star {
		return pattern == name
	}
	if !strings.HasPrefix(name, literal) {
		return false
	}
	name = name[len(literal):]
	for i := 0; i <= len(name); i++ {
		if globMatch(rest, name[i:]) {
			return true
		}
	}
	return false
}

// String is t as configured: schema.name, unquoted.
func (t Table) String() string { return t.Schema + "." + t.Name }

// Qualified is t as a quoted, schema-qualified name (not for a pattern).
func (t Table) Qualified() string { return pgx.Identifier{t.Schema, t.Name}.Sanitize() }

// ParseTables parses the --table setting: comma-separated tables, each
// [schema.]name (schema public when omitted), either part possibly a
// pattern with '*'. Every table gets columns as its mapping.
func ParseTables(setting string, columns Columns) ([]Table, error) {
	var tables []Table
	var errs []error
	for _, item := range strings.Split(setting, ",") {
		item = strings.TrimSpace(item)
		if item == "" {
			continue
		}
		t := Table{Schema: "public", Name: item, Columns: columns}
		if schema, name, ok := strings.Cut(item, "."); ok {
			t.Schema, t.Name = schema, name
		}
		switch {
		case t.Schema == "" || t.Name == "":
			errs = append(errs, fmt.Errorf("table: %q needs a schema and a table name, schema.table", item))
		case strings.Contains(t.Name, "."):
			errs = append(errs, fmt.Errorf("table: %q has more than one dot; name one table as schema.table", item))
		case slices.ContainsFunc(tables, func(u Table) bool { return u.Schema == t.Schema && u.Name == t.Name }):
			errs = append(errs, fmt.Errorf("table: %q is listed twice", item))
		default:
			tables = append(tables, t)
		}
	}
	if len(tables) == 0 && len(errs) == 0 {
		errs = append(errs, errors.New("table: must not be empty"))
	}
	return tables, errors.Join(errs...)
}

// columnSettings names the column mapping's parts as --table-columns spells
// them (the --column-* flags without the prefix).
var columnSettings = [numColumns]string{"id", "aggregate-type", "aggregate-id", "event-type", "payload", "headers", "created-at"}

// ApplyTableColumns applies the --table-columns setting to tables: entries
// separated by ';', each "<table or pattern>: <column>=<name> ..." with
// columns separated by spaces or ',' and alternatives by '|' (the --column-*
// flags' ','), e.g. "billing.outbox: payload=body event-type=kind|type".
// An entry overrides, for the tables listed in --table under exactly that
// name, the columns it names; the others keep the --column-* mapping.
func ApplyTableColumns(tables []Table, setting string) error {
	var errs []error
	for _, entry := range strings.Split(setting, ";") {
		entry = strings.TrimSpace(entry)
		if entry == "" {
			continue
		}
		name, list, ok := strings.Cut(entry, ":")
		if !ok {
			errs = append(errs, fmt.Errorf("table-columns: %q is not <table>: <column>=<name>, for example \"shop.events: id=event_id payload=body\"", entry))
			continue
		}
		name = strings.TrimSpace(name)
		if !strings.Contains(name, ".") {
			name = "public." + name
		}
		i := slices.IndexFunc(tables, func(t Table) bool { return t.String() == name })
		if i < 0 {
			errs = append(errs, fmt.Errorf("table-columns: %q is not one of the tables of --table", name))
			continue
		}
		for _, pair := range strings.FieldsFunc(list, func(r rune) bool { return r == ' ' || r == ',' || r == '\t' }) {
			column, value, ok := strings.Cut(pair, "=")
			slot := slices.Index(columnSettings[:], column)
			if !ok || slot < 0 {
				errs = append(errs, fmt.Errorf("table-columns: %q in the entry for %s is not <column>=<name> with a column of %s", pair, name, strings.Join(columnSettings[:], ", ")))
				continue
			}
			tables[i].Columns.set(slot, strings.ReplaceAll(value, "|", ","))
		}
	}
	return errors.Join(errs...)
}

func (c *Columns) set(slot int, names string) {
	*[numColumns]*string{&c.ID, &c.AggregateType, &c.AggregateID, &c.EventType, &c.Payload, &c.Headers, &c.CreatedAt}[slot] = names
}

// Several reports whether the configuration reads more than one table, or
// may (a pattern).
func (c Config) Several() bool {
	tables := c.tableList()
	return len(tables) > 1 || len(tables) == 1 && tables[0].IsPattern()
}

// tableList is Tables, or the one table Schema, Table and Columns name when
// Tables is empty.
func (c Config) tableList() []Table {
	if len(c.Tables) > 0 {
		return c.Tables
	}
	return []Table{{Schema: c.Schema, Name: c.Table, Columns: c.Columns}}
}

// Patterns reports whether any table of the configuration is a pattern.
func (c Config) Patterns() bool { return slices.ContainsFunc(c.tableList(), Table.IsPattern) }

// ForTable is c about the one table t: the Schema, Table and Columns the
// single-table parts (a scan, a check of the table) read.
func (c Config) ForTable(t Table) Config {
	c.Schema, c.Table, c.Columns = t.Schema, t.Name, t.Columns
	c.Tables = []Table{t}
	return c
}

// tableFor returns the configured table that schema.name is, or matches;
// an explicitly listed table wins over a pattern.
func (c Config) tableFor(schema, name string) (Table, bool) {
	for _, t := range c.tableList() {
		if !t.IsPattern() && t.Matches(schema, name) {
			return t, true
		}
	}
	for _, t := range c.tableList() {
		if t.IsPattern() && t.Matches(schema, name) {
			return t, true
		}
	}
	return Table{}, false
}

// TablesText lists the configured tables for messages.
func (c Config) TablesText() string {
	tables := c.tableList()
	names := make([]string, len(tables))
	for i, t := range tables {
		names[i] = t.String()
	}
	return strings.Join(names, ", ")
}

// explicitTables are the tables listed by name.
func (c Config) explicitTables() []Table {
	var out []Table
	for _, t := range c.tableList() {
		if !t.IsPattern() {
			out = append(out, t)
		}
	}
	return out
}

// explicitNames are the explicitly listed tables as quoted qualified names,
// the form to_regclass takes.
func (c Config) explicitNames() []string { return qualifiedNames(c.explicitTables()) }

// qualifiedNames are tables as quoted qualified names.
func qualifiedNames(tables []Table) []string {
	names := make([]string, 0, len(tables))
	for _, t := range tables {
		names = append(names, t.Qualified())
	}
	return names
}

// ResolveTables returns the tables the configuration names now: each listed
// table, and every ordinary or partitioned table (not a partition) a pattern
// matches, with the pattern's mapping (never a temporary table, which no
// publication publishes and no other session may read). A listed table is
// returned whether it exists or not; the checks say what is wrong with it.
func ResolveTables(ctx context.Context, conn *pgx.Conn, cfg Config) ([]Table, error) {
	return resolveTables(ctx, querier{conn: conn, timeout: cfg.QueryTimeout}, cfg)
}

func resolveTables(ctx context.Context, q querier, cfg Config) ([]Table, error) {
	tables := cfg.explicitTables()
	if !cfg.Patterns() {
		return tables, nil
	}
	rows, err := q.query(ctx, `SELECT n.nspname::text, c.relname::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
		WHERE c.relkind IN ('r', 'p') AND NOT c.relispartition AND c.relpersistence <> 't'
			AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg\_toast%'
		ORDER BY 1, 2`)
	if err != nil {
		return nil, fmt.Errorf("list the tables matching %s: %w", cfg.TablesText(), err)
	}
	defer rows.Close()
	for rows.Next() {
		var schema, name string
		if err := rows.Scan(&schema, &name); err != nil {
			return nil, fmt.Errorf("list the tables matching %s: %w", cfg.TablesText(), err)
		}
		if t, ok := cfg.tableFor(schema, name); ok && t.IsPattern() {
			t.Schema, t.Name = schema, name
			tables = append(tables, t)
		}
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("list the tables matching %s: %w", cfg.TablesText(), err)
	}
	return tables, nil
}

// outboxOIDs maps the OID of each outbox table that exists, listed or
// matched by a pattern, to its name, so that the decoder recognises one
// renamed, also in a session that has not yet seen its rows.
func outboxOIDs(ctx context.Context, q querier, cfg Config) (map[uint32]string, error) {
	tables, err := resolveTables(ctx, q, cfg)
	if err != nil {
		return nil, err
	}
	oids := make(map[uint32]string)
	for _, t := range tables {
		var oid uint32
		if err := q.row(ctx, `SELECT COALESCE(to_regclass($1)::oid, 0)`, t.Qualified()).Scan(&oid); err != nil {
			return nil, fmt.Errorf("look up table %s: %w", t.Qualified(), err)
		}
		if oid != 0 {
			oids[oid] = t.String()
		}
	}
	return oids, nil
}

// unloggedMatches lists the unlogged tables a pattern of cfg matches.
func unloggedMatches(ctx context.Context, q querier, cfg Config) ([]string, error) {
	rows, err := q.query(ctx, `SELECT n.nspname::text, c.relname::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
		WHERE c.relkind IN ('r', 'p') AND c.relpersistence = 'u' ORDER BY 1, 2`)
	if err != nil {
		return nil, fmt.Errorf("list unlogged tables: %w", err)
	}
	defer rows.Close()
	var names []string
	for rows.Next() {
		var schema, name string
		if err := rows.Scan(&schema, &name); err != nil {
			return nil, fmt.Errorf("list unlogged tables: %w", err)
		}
		if _, ok := cfg.tableFor(schema, name); ok {
			names = append(names, pgx.Identifier{schema, name}.Sanitize())
		}
	}
	return names, rows.Err()
}

// Names reports whether schema.name is a table of the configuration, or
// matches one of its patterns.
func (c Config) Names(schema, name string) bool {
	_, ok := c.tableFor(schema, name)
	return ok
}
