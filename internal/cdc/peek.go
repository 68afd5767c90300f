package cdc

import (
	"context"
	"fmt"

	"github.com/jackc/pgx/v5"
)

// What `relay check` and `relay status` learn by looking, without changing
// anything: the events at the head of the slot, and whether the role may
// create the publication the relay would create.

// PeekEvents returns up to limit outbox events at the head of the slot, in
// commit order with their positions, without consuming them: the events a
// relay started now would publish first. It decodes what
// pg_logical_slot_peek_binary_changes returns (pgoutput, protocol 1, the
// configured publication) with the relay's own decoder. PostgreSQL refuses
// to peek a slot that is in use (active), and decoding reads WAL from the
// slot's position, bounded by the query timeout. conn must be a normal
// connection to the slot's database by a role with the REPLICATION
// attribute.
func PeekEvents(ctx context.Context, conn *pgx.Conn, cfg Config, limit int) ([]Event, error) {
	q := querier{conn: conn, timeout: cfg.QueryTimeout}
	// publication_names is a list of identifiers: quoted, a name keeps its
	// case and may hold commas or spaces.
	rows, err := q.query(ctx, `SELECT lsn::text, data FROM pg_logical_slot_peek_binary_changes($1, NULL, $2,
		'proto_version', '1', 'publication_names', $3, 'messages', $4)`,
		cfg.Slot, limit, pgx.Identifier{cfg.Publication}.Sanitize(), fmt.Sprint(cfg.MessagePrefix != ""))
	if err != nil {
		return nil, fmt.Errorf("peek slot %q: %w", cfg.Slot, err)
	}
	defer rows.Close()
	d := newDecoder(cfg)
	d.messagePrefix = cfg.MessagePrefix
	var (
		events []Event
		open   bool
		commit Position
		xid    uint32
	)
	for rows.Next() && len(events) < limit {
		var lsn string
		var data []byte
		if err := rows.Scan(&lsn, &data); err != nil {
			return nil, fmt.Errorf("peek slot %q: %w", cfg.Slot, err)
		}
		ch, err := d.decode(data)
		if err != nil {
			return nil, fmt.Errorf("peek slot %q: change at %s: %w", cfg.Slot, lsn, err)
		}
		switch ch.kind {
		case changeBegin:
			open, commit, xid = true, Position{CommitLSN: ch.begin.finalLSN}, ch.begin.xid
		case changeCommit:
			open = false
		case changeEvent:
			if !open {
				return nil, fmt.Errorf("peek slot %q: insert at %s outside a transaction", cfg.Slot, lsn)
			}
			ev := ch.event
			ev.Position = commit
			ev.XID = xid
			commit.Index++
			events = append(events, ev)
		}
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("peek slot %q: %w", cfg.Slot, err)
	}
	return events, nil
}

// CheckCreatePublication explains why the role may not create the
// publication the relay would create (publicationRights). It returns nil
// when the publication exists or creating it is not allowed anyway
// (--create-publication=false).
func CheckCreatePublication(ctx context.Context, conn *pgx.Conn, cfg Config) error {
	if !cfg.CreatePublication {
		return nil
	}
	q := querier{conn: conn, timeout: cfg.QueryTimeout}
	var exists bool
	if err := q.row(ctx, `SELECT EXISTS (SELECT 1 FROM pg_publication WHERE pubname = $1)`, cfg.Publication).Scan(&exists); err != nil {
		return fmt.Errorf("read the rights to create publication %q: %w", cfg.Publication, err)
	}
	if exists {
		return nil
	}
	return publicationRights(ctx, q, cfg)
}
