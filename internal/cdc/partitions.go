package cdc

import (
	"context"
	"fmt"

	"github.com/jackc/pgx/v5"
)

// partitionCheck tells whether a relation the stream describes is a
// partition of an outbox table, or has one as a partition. It asks on a
// normal connection, opened when first needed, and remembers each answer
// for the replication session, until the stream describes the relation
// again (after an ATTACH or DETACH, say).
type partitionCheck struct {
	cfg   Config
	conn  *pgx.Conn
	known map[uint32]partitionKin
}

// partitionKin is how a relation that is no outbox table is related to one.
type partitionKin struct {
	// outbox is the quoted name of the outbox table, "" when none.
	outbox string
	// under is set when the relation is a partition of the outbox, unset
	// when the outbox is a partition of the relation.
	under bool
}

func newPartitionCheck(cfg Config) *partitionCheck {
	return &partitionCheck{cfg: cfg, known: make(map[uint32]partitionKin)}
}

// of returns the outbox table the relation with OID relid is a partition
// of, at any depth, or else one that is a partition of relid; outbox is ""
// when neither. A relation that no longer exists has no kin.
func (p *partitionCheck) of(ctx context.Context, relid uint32) (partitionKin, error) {
	if kin, ok := p.known[relid]; ok {
		return kin, nil
	}
	if p.conn == nil {
		conn, err := connect(ctx, p.cfg, false)
		if err != nil {
			return partitionKin{}, err
		}
		p.conn = conn
	}
	q := querier{conn: p.conn, timeout: p.cfg.QueryTimeout}
	rows, err := q.query(ctx, `SELECT n.nspname::text, c.relname::text, kin.under FROM (
			SELECT a.relid, true AS under FROM pg_partition_ancestors($1::oid::regclass) a
			UNION ALL SELECT t.relid, false FROM pg_partition_tree($1::oid::regclass) t) kin
		JOIN pg_class c ON c.oid = kin.relid JOIN pg_namespace n ON n.oid = c.relnamespace
		WHERE kin.relid <> $1::oid::regclass
		ORDER BY kin.under DESC`, relid)
	var kin partitionKin
	if err == nil {
		for rows.Next() {
			var schema, name string
			var under bool
			if err = rows.Scan(&schema, &name, &under); err != nil {
				break
			}
			if _, ok := p.cfg.tableFor(schema, name); ok && kin.outbox == "" {
				kin = partitionKin{outbox: pgx.Identifier{schema, name}.Sanitize(), under: under}
			}
		}
		rows.Close()
		if err == nil {
			err = rows.Err()
		}
	}
	if err != nil {
		// The connection may be broken; the next session opens a new one.
		p.close()
		return partitionKin{}, fmt.Errorf("check whether relation %d is a partition of %s: %w", relid, p.cfg.TablesText(), err)
	}
	p.known[relid] = kin
	return kin, nil
}

// forget drops what is known about relid.
func (p *partitionCheck) forget(relid uint32) { delete(p.known, relid) }

func (p *partitionCheck) close() {
	if p.conn != nil {
		closeConn(p.conn, p.cfg.ConnectTimeout)
		p.conn = nil
	}
}
