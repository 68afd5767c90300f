package outbox

import (
	"context"
	"embed"
	"fmt"
)

// schemaFiles holds the plain SQL of the outbox, also in outbox/sql/ for
// migration tools: outbox.sql (the table), outbox_partitioned.sql (the
// table partitioned by created_at) and publication.sql (the publication the
// relay reads it through).
//
//go:embed sql/*.sql
var schemaFiles embed.FS

// Layout chooses the outbox table's shape.
type Layout int

const (
	// Plain is one table (sql/outbox.sql).
	Plain Layout = iota
	// Partitioned is a table partitioned by range of created_at, with a
	// default partition (sql/outbox_partitioned.sql): clean up by dropping
	// old partitions. Its primary key is (id, created_at), as a partitioned
	// table's keys must include the partition key.
	Partitioned
)

// Schema returns the SQL that creates the outbox table named events, in the
// first schema of the search path, if it does not exist: the table the relay
// expects with its default settings. With publication set it also creates
// the publication outbox_relay the relay reads it through (inserts only,
// publish_via_partition_root on), if missing. The same SQL is in outbox/sql/
// for migration tools.
func Schema(layout Layout, publication bool) (string, error) {
	name := "sql/outbox.sql"
	switch layout {
	case Plain:
	case Partitioned:
		name = "sql/outbox_partitioned.sql"
	default:
		return "", fmt.Errorf("outbox: unknown layout %d", int(layout))
	}
	table, err := schemaFiles.ReadFile(name)
	if err != nil {
		return "", fmt.Errorf("outbox: read %s: %w", name, err)
	}
	if !publication {
		return string(table), nil
	}
	pub, err := schemaFiles.ReadFile("sql/publication.sql")
	if err != nil {
		return "", fmt.Errorf("outbox: read sql/publication.sql: %w", err)
	}
	return string(table) + "\n" + string(pub), nil
}

// Migrate runs Schema(layout, publication) through db. It is idempotent:
// what exists is left as it is. With a pgx connection, pool or transaction
// or a database/sql one, a statement without arguments may hold several
// commands, as this one does. To create the table in another schema, set
// the search path first (SET LOCAL search_path TO billing, in the same
// transaction). Creating the publication needs ownership of the table and
// CREATE on the database.
func Migrate(ctx context.Context, db Execer, layout Layout, publication bool) error {
	ddl, err := Schema(layout, publication)
	if err != nil {
		return err
	}
	if err := db.Exec(ctx, ddl); err != nil {
		return fmt.Errorf("outbox: create the outbox: %w", err)
	}
	return nil
}
