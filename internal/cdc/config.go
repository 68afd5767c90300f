package cdc

import (
	"errors"
	"fmt"
	"regexp"
	"strings"
	"time"
)

// Config configures the PostgreSQL side: where the outbox is and how the slot
// is read.
type Config struct {
	// PostgresURL is a libpq connection URL or keyword/value string.
	PostgresURL string
	// Tables are the outbox tables, or patterns naming them (ParseTables).
	// When empty, Schema, Table and Columns name the one outbox table.
	Tables []Table
	// Schema, Table and Columns name the table the single-table parts read
	// (ForTable); with Tables empty, the one outbox table.
	Schema  string
	Table   string
	Columns Columns
	// QualifiedIDs makes an event's ID, its Nats-Msg-Id, "<schema>.<table>/<id>"
	// instead of the id column's value: ids need then be unique per table
	// only (--message-id=table-id).
	QualifiedIDs bool
	// Publication and Slot name the publication and logical replication slot.
	Publication string
	Slot        string
	// CreatePublication and CreateSlot allow creating them when missing.
	CreatePublication bool
	CreateSlot        bool
	// FailoverSlot creates the slot as a failover slot (PostgreSQL 17+),
	// which standbys with sync_replication_slots keep in step, so the slot
	// survives a failover.
	FailoverSlot bool
	// StatusInterval is how often the confirmed position is reported to
	// PostgreSQL; it must stay well below the server's wal_sender_timeout.
	StatusInterval time.Duration
	// ReplicationTimeout ends a replication session from which nothing
	// arrived for this long (a server or network that went silent without
	// closing the connection); halfway, a reply is requested. It must be
	// above the server's wal_sender_timeout; 0 derives it: twice
	// wal_sender_timeout, at least a minute.
	ReplicationTimeout time.Duration
	// ConnectTimeout bounds establishing a connection; QueryTimeout bounds
	// each query on a normal connection.
	ConnectTimeout time.Duration
	QueryTimeout   time.Duration
	// SlotPollInterval is how often pg_replication_slots is read for the
	// slot's retained WAL and status.
	SlotPollInterval time.Duration
	// ReconnectMin and ReconnectMax bound the jittered exponential backoff
	// between replication sessions.
	ReconnectMin time.Duration
	ReconnectMax time.Duration
	// TakeOverActiveSlot ends another session streaming from the slot. Set
	// only when leader election guarantees that session's relay is gone
	// (its host may have vanished, leaving the session to linger until
	// wal_sender_timeout).
	TakeOverActiveSlot bool
	// EventBuffer is how many events may wait between the reader and the
	// publisher; it bounds memory and provides backpressure.
	EventBuffer int
	// MaxRowBytes, when positive, is the most payload and headers of a row
	// can take together and still be published (NATS's max_payload): a
	// larger row is read without them (Event.Omitted).
	MaxRowBytes int64
	// MarkTxnEnd sets Event.TxnEnd on the last outbox row of each
	// transaction: each row is then handed on only once the next row or the
	// commit arrived.
	MarkTxnEnd bool
	// EventBufferBytes bounds the bytes of events read and not yet
	// acknowledged (payloads, headers and strings): the reader waits while
	// they are over it. One event larger than it passes alone.
	EventBufferBytes int64
	// PublicationCheckInterval is how often the running relay checks that
	// its publication is unchanged; the slot is confirmed only up to the
	// WAL position of the last check that found it so.
	PublicationCheckInterval time.Duration
	// AcceptPublication is the Digest of a publication fingerprint the
	// operator acknowledged after a change (ReconcilePublication).
	AcceptPublication string
	// MessagePrefix, when not empty, makes transactional logical decoding
	// messages with exactly this prefix events too
	// (pg_logical_emit_message(true, prefix, content)); empty reads no
	// messages.
	MessagePrefix string
	// ExportSnapshot makes Preflight create a missing slot on a replication
	// connection that exports the snapshot of its consistent point, and
	// hand it back open (SlotState.Snapshot): the initial snapshot reads
	// the rows committed before the slot in it.
	ExportSnapshot bool
}

// identifierPattern accepts what the relay will put unquoted into replication
// commands (slot names) and what PostgreSQL accepts as a slot name.
var identifierPattern = regexp.MustCompile(`^[a-z0-9_]{1,63}$`)

// Validate reports every problem of c at once, each naming the setting.
func (c Config) Validate() error {
	var errs []error
	if c.PostgresURL == "" {
		errs = append(errs, errors.New("postgres-url: required (RELAY_POSTGRES_URL)"))
	}
	for _, t := range c.tableList() {
		if t.Name == "" {
			errs = append(errs, errors.New("table: must not be empty"))
		}
		if t.Schema == "" {
			errs = append(errs, errors.New("table: schema must not be empty"))
		}
	}
	if !identifierPattern.MatchString(c.Slot) {
		errs = append(errs, fmt.Errorf("slot: %q is not a valid slot name (lower-case letters, digits and _, at most 63)", c.Slot))
	}
	errs = append(errs, validPublication(c.Publication))
	for _, t := range c.tableList() {
		alts := t.Columns.alternatives()
		for slot := range numColumns {
			if required(slot) && len(alts[slot]) == 0 {
				if c.Several() {
					errs = append(errs, fmt.Errorf("column-%s: must not be empty (for %s)", columnSettings[slot], t))
				} else {
					errs = append(errs, fmt.Errorf("column-%s: must not be empty", columnSettings[slot]))
				}
			}
		}
	}
	errs = append(errs,
		positive("status-interval", c.StatusInterval),
		positive("connect-timeout", c.ConnectTimeout),

		positive("query-timeout", c.QueryTimeout),
		positive("slot-poll-interval", c.SlotPollInterval),
		positive("reconnect-min", c.ReconnectMin),
		positive("reconnect-max", c.ReconnectMax),
		positive("publication-check-interval", c.PublicationCheckInterval),
	)
	if c.ReplicationTimeout < 0 {
		errs = append(errs, fmt.Errorf("replication-timeout: %s, must not be negative (0 derives it from wal_sender_timeout)", c.ReplicationTimeout))
	}
	if c.ReconnectMax < c.ReconnectMin {
		errs = append(errs, fmt.Errorf("reconnect-max: %s is below reconnect-min %s", c.ReconnectMax, c.ReconnectMin))
	}
	if c.EventBufferBytes < 1 {
		errs = append(errs, fmt.Errorf("event-buffer-bytes: %d, must be at least 1", c.EventBufferBytes))
	}
	if strings.ContainsRune(c.MessagePrefix, 0) {
		errs = append(errs, fmt.Errorf("message-prefix: %q contains a NUL byte", c.MessagePrefix))
	}
	if c.EventBuffer < 1 {
		errs = append(errs, fmt.Errorf("event-buffer: %d, must be at least 1", c.EventBuffer))
	}
	return errors.Join(errs...)
}

// validPublication accepts what PostgreSQL can store as a publication name
// unchanged: a name longer than NAMEDATALEN-1 bytes would be truncated on
// CREATE PUBLICATION and then never found under the configured name. Any
// other character is fine: the relay quotes the name wherever it uses it.
func validPublication(name string) error {
	switch {
	case name == "":
		return errors.New("publication: must not be empty")
	case len(name) > 63:
		return fmt.Errorf("publication: %q is %d bytes long, PostgreSQL keeps at most 63", name, len(name))
	case strings.ContainsRune(name, 0):
		return fmt.Errorf("publication: %q contains a NUL byte", name)
	}
	return nil
}

func positive(name string, d time.Duration) error {
	if d <= 0 {
		return fmt.Errorf("%s: %s, must be positive", name, d)
	}
	return nil
}
