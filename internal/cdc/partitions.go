package cdc

import (
	"context"
	"fmt"

	"github.com/jackc/pgx/v5"
)

// partitionCheck tells whether a relation the stream describes is a
// partition of the outbox table. It asks on a normal connection, opened when
// first needed, and remembers each answer for the replication session, until
// the stream describes the relation again (after an ATTACH or DETACH, say).
type partitionCheck struct {
	cfg   Config
	conn  *pgx.Conn
	known map[uint32]string
}

func newPartitionCheck(cfg Config) *partitionCheck {
	return &partitionCheck{cfg: cfg, known: make(map[uint32]string)}
}

// of returns the outbox table the relation with OID relid is a partition
// of, at any depth, "" when none. A relation that no longer exists is a
// partition of none.
func (p *partitionCheck) of(ctx context.Context, relid uint32) (string, error) {
	if outbox, ok := p.known[relid]; ok {
		return outbox, nil
	}
	if p.conn == nil {
		conn, err := connect(ctx, p.cfg, false)
		if err != nil {
			return "", err
		}
		p.conn = conn
	}
	q := querier{conn: p.conn, timeout: p.cfg.QueryTimeout}
	rows, err := q.query(ctx, `SELECT n.nspname::text, c.relname::text FROM pg_partition_ancestors($1::oid::regclass) a
		JOIN pg_class c ON c.oid = a.relid JOIN pg_namespace n ON n.oid = c.relnamespace
		WHERE a.relid <> $1::oid::regclass`, relid)
	outbox := ""
	if err == nil {
		for rows.Next() {
			var schema, name string
			if err = rows.Scan(&schema, &name); err != nil {
				break
			}
			if _, ok := p.cfg.tableFor(schema, name); ok && outbox == "" {
				outbox = pgx.Identifier{schema, name}.Sanitize()
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
		return "", fmt.Errorf("check whether relation %d is a partition of %s: %w", relid, p.cfg.TablesText(), err)
	}
	p.known[relid] = outbox
	return outbox, nil
}

// forget drops what is known about relid.
func (p *partitionCheck) forget(relid uint32) { delete(p.known, relid) }

func (p *partitionCheck) close() {
	if p.conn != nil {
		closeConn(p.conn, p.cfg.ConnectTimeout)
		p.conn = nil
	}
}
