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
	known map[uint32]bool
}

func newPartitionCheck(cfg Config) *partitionCheck {
	return &partitionCheck{cfg: cfg, known: make(map[uint32]bool)}
}

// of reports whether the relation with OID relid is a partition, at any
// depth, of the outbox. A relation that no longer exists is not.
func (p *partitionCheck) of(ctx context.Context, relid uint32) (bool, error) {
	if is, ok := p.known[relid]; ok {
		return is, nil
	}
	if p.conn == nil {
		conn, err := connect(ctx, p.cfg, false)
		if err != nil {
			return false, err
		}
		p.conn = conn
	}
	q := querier{conn: p.conn, timeout: p.cfg.QueryTimeout}
	var is bool
	err := q.row(ctx, `SELECT EXISTS (SELECT 1 FROM pg_partition_ancestors($1::oid::regclass) a
		WHERE a.relid = to_regclass($2) AND a.relid <> $1::oid::regclass)`, relid, qualifiedTable(p.cfg)).Scan(&is)
	if err != nil {
		// The connection may be broken; the next session opens a new one.
		p.close()
		return false, fmt.Errorf("check whether relation %d is a partition of %s: %w", relid, qualifiedTable(p.cfg), err)
	}
	p.known[relid] = is
	return is, nil
}

// forget drops what is known about relid.
func (p *partitionCheck) forget(relid uint32) { delete(p.known, relid) }

func (p *partitionCheck) close() {
	if p.conn != nil {
		closeConn(p.conn, p.cfg.ConnectTimeout)
		p.conn = nil
	}
}
