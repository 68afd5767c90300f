package cdc

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"unsafe"
)

// ErrConfig marks a problem only a change of configuration or schema can fix;
// retrying will not help.
var ErrConfig = errors.New("configuration error")

// Columns names the outbox table's columns. Headers and CreatedAt are optional:
// an empty name means the table has no such column. Each may list
// alternatives, comma-separated ("kind,event_kind"): a relation uses the
// first of them it has, so events written before and after a column rename
// can both be read while both are in the slot.
type Columns struct {
	ID            string
	AggregateType string
	AggregateID   string
	EventType     string
	Payload       string
	Headers       string
	CreatedAt     string
}

// column indexes into outboxColumns' slots.
const (
	colID = iota
	colAggregateType
	colAggregateID
	colEventType
	colPayload
	colHeaders
	colCreatedAt
	numColumns
)

func (c Columns) names() [numColumns]string {
	return [numColumns]string{c.ID, c.AggregateType, c.AggregateID, c.EventType, c.Payload, c.Headers, c.CreatedAt}
}

// alternatives splits each configured column into its alternatives; an
// unconfigured column has none.
func (c Columns) alternatives() [numColumns][]string {
	var alts [numColumns][]string
	for slot, names := range c.names() {
		for _, name := range strings.Split(names, ",") {
			if name = strings.TrimSpace(name); name != "" {
				alts[slot] = append(alts[slot], name)
			}
		}
	}
	return alts
}

// find returns, for each configured column, the index in have of its first
// alternative there (-1 for an unconfigured column), and the configured
// columns none of whose alternatives have holds, as "a or b".
func (c Columns) find(have []string) (index [numColumns]int, missing []string) {
	for slot, alts := range c.alternatives() {
		index[slot] = -1
		for _, name := range alts {
			if i := slices.Index(have, name); i >= 0 {
				index[slot] = i
				break
			}
		}
		if len(alts) > 0 && index[slot] < 0 {
			missing = append(missing, strings.Join(alts, " or "))
		}
	}
	return index, missing
}

// missingFrom returns the configured columns none of whose alternatives
// have holds.
func (c Columns) missingFrom(have []string) []string {
	_, missing := c.find(have)
	return missing
}

// required reports whether the column at slot i must exist and be non-NULL.
func required(i int) bool { return i != colHeaders && i != colCreatedAt }

// relation is what the decoder keeps of a Relation message: whether it is the
// outbox table and, if so, where each configured column sits in its tuples.
type relation struct {
	name   relationName
	outbox bool
	index  [numColumns]int // -1 when the column is not configured
	// columns are the names the relation has for the configured columns
	// (the alternative found).
	columns [numColumns]string
	width   int
}

// changeKind says what a decoded pgoutput message means to the reader.
type changeKind int

const (
	changeIgnored changeKind = iota // another table, a type, an origin, ...
	changeBegin
	changeCommit
	changeEvent
	// changeRelation describes a relation that is not the outbox by name.
	changeRelation
	// changeForeignInsert is an insert into a relation that is not the
	// outbox by name; the reader checks whether it is a partition of the
	// outbox. (With publish_via_partition_root, a partition's Relation
	// message is sent too, but its inserts come under the root's OID.)
	changeForeignInsert
	// changeIgnoredMessage is a logical decoding message the relay does
	// not publish, for the reason in change.ignored.
	changeIgnoredMessage
)

// Why a logical decoding message is not published: the values of
// outbox_relay_cdc_messages_ignored_total{reason}.
const (
	// ignoredOtherPrefix: the message's prefix is not --message-prefix.
	ignoredOtherPrefix = "other_prefix"
	// ignoredNonTransactional: pg_logical_emit_message(false, ...), sent
	// when written, whether its transaction commits or not, and outside of
	// commit order.
	ignoredNonTransactional = "non_transactional"
)

// change is a decoded pgoutput message.
type change struct {
	kind   changeKind
	begin  beginMessage
	commit commitMessage
	event  Event // for changeEvent; positions are filled in by the reader
	// relation is the relation of a changeRelation or changeForeignInsert.
	relation relationName
	// ignored is why a changeIgnoredMessage is not published.
	ignored string
}

// relationName identifies a relation of a Relation message.
type relationName struct {
	id              uint32
	namespace, name string
}

// decoder turns pgoutput messages into changes. It keeps the relation cache
// of one replication session and is used by one goroutine.
type decoder struct {
	cfg Config
	// outboxOIDs are the listed outbox tables' OIDs when the session
	// started, with their names: the same relation under a name no table
	// setting matches is an outbox renamed.
	outboxOIDs map[uint32]string
	relations  map[uint32]relation
	insert     insertMessage // reused to avoid an allocation per row
	// maxRow, when positive, leaves out payload and headers of larger
	// rows (Event.Omitted).
	maxRow int64
	// messagePrefix, when not empty, is the prefix of the logical decoding
	// messages that are events (Config.MessagePrefix).
	messagePrefix string
}

func newDecoder(cfg Config) *decoder {
	return &decoder{cfg: cfg, relations: make(map[uint32]relation)}
}

// decode decodes one pgoutput message. Errors wrapping ErrConfig mean the
// outbox table does not match the configuration; other errors mean a message
// that does not follow the protocol.
func (d *decoder) decode(data []byte) (change, error) {
	if len(data) == 0 {
		return change{}, errors.New("decode: empty message")
	}
	body := data[1:]
	switch messageKind(data[0]) {
	case kindBegin:
		b, err := decodeBegin(body)
		return change{kind: changeBegin, begin: b}, err
	case kindCommit:
		c, err := decodeCommit(body)
		return change{kind: changeCommit, commit: c}, err
	case kindRelation:
		r, err := decodeRelation(body)
		if err != nil {
			return change{}, err
		}
		if err := d.addRelation(r); err != nil {
			return change{}, err
		}
		if rel := d.relations[r.id]; !rel.outbox {
			return change{kind: changeRelation, relation: rel.name}, nil
		}
		return change{}, nil
	case kindInsert:
		return d.decodeInsert(body)
	case kindMessage:
		if d.messagePrefix == "" {
			return change{}, nil // not asked for
		}
		return d.decodeMessage(body)
	case kindOrigin, kindType, kindUpdate, kindDelete, kindTruncate:
		// The publication publishes inserts only; anything else (from a
		// publication shared with other tables, say) is not ours.
		return change{}, nil
	default:
		return change{}, fmt.Errorf("decode: unknown message type %q", data[0])
	}
}

func (d *decoder) addRelation(r relationMessage) error {
	rel := relation{name: relationName{id: r.id, namespace: r.namespace, name: r.name}, width: len(r.columns)}
	table, outbox := d.cfg.tableFor(r.namespace, r.name)
	if old, ok := d.outboxOIDs[r.id]; ok && !outbox {
		// Its rows would be ignored under the new name, and confirmed past.
		return fmt.Errorf("the outbox table %s (oid %d) arrives named %s.%s: it was renamed, and the relay would skip its rows; rename it back, or stop the relay and set --table once the rows under the old name are published: %w",
			old, r.id, r.namespace, r.name, ErrConfig)
	}
	if outbox {
		// A table a pattern matched, renamed later in the session out of
		// the pattern, is caught like a listed one.
		if d.outboxOIDs == nil {
			d.outboxOIDs = make(map[uint32]string)
		}
		d.outboxOIDs[r.id] = r.namespace + "." + r.name
		rel.outbox = true
		have := make([]string, len(r.columns))
		for i, c := range r.columns {
			have[i] = c.name
		}
		var missing []string
		rel.index, missing = table.Columns.find(have)
		if len(missing) > 0 {
			hint := "set the column flags to match the table"
			if d.cfg.Several() {
				hint = "set --table-columns for it, or the column flags, to match the table"
			}
			return fmt.Errorf("outbox table %s.%s has no column %q here (%s; during a rename, list both names, e.g. --column-event-type=old,new): %w",
				r.namespace, r.name, missing, hint, ErrConfig)
		}
		for slot, i := range rel.index {
			if i >= 0 {
				rel.columns[slot] = have[i]
			}
		}
	}
	d.relations[r.id] = rel
	return nil
}

func (d *decoder) decodeInsert(body []byte) (change, error) {
	if err := decodeInsert(body, &d.insert); err != nil {
		return change{}, err
	}
	rel, ok := d.relations[d.insert.relationID]
	if !ok {
		return change{}, fmt.Errorf("decode insert: relation %d was never described", d.insert.relationID)
	}
	if !rel.outbox {
		return change{kind: changeForeignInsert, relation: rel.name}, nil
	}
	if len(d.insert.values) != rel.width {
		return change{}, fmt.Errorf("decode insert: %d columns, relation has %d", len(d.insert.values), rel.width)
	}
	ev, defect := d.event(rel)
	ev.Defect = defect
	return change{kind: changeEvent, event: ev}, nil
}

// event copies the row's values out of the message buffer, which the
// replication connection reuses. A NULL in a required column or a value sent
// in binary is a defect of the row, not of the stream: the event still goes
// on, and the poison policy decides its fate.
func (d *decoder) event(rel relation) (Event, string) {
	var (
		ev     Event
		defect string
		text   [numColumns][]byte
	)
	names := rel.columns
	for slot := range numColumns {
		i := rel.index[slot]
		if i < 0 {
			continue
		}
		v := d.insert.values[i]
		switch v.kind {
		case 't':
			text[slot] = v.value
		case 'n':
			if required(slot) && defect == "" {
				defect = fmt.Sprintf("column %q is NULL", names[slot])
			}
		default:
			if defect == "" {
				defect = fmt.Sprintf("column %q has no text value (kind %q)", names[slot], v.kind)
			}
		}
	}
	// A row no message can carry is poison whatever happens next: do not
	// copy a column larger than any message, only remember its size.
	var payloadOmitted, headersOmitted int
	if d.maxRow > 0 && int64(len(text[colPayload])) > d.maxRow {
		payloadOmitted, text[colPayload] = len(text[colPayload]), nil
	}
	if d.maxRow > 0 && int64(len(text[colHeaders])) > d.maxRow {
		headersOmitted, text[colHeaders] = len(text[colHeaders]), nil
	}
	// One allocation holds every value: the row is copied out of the
	// connection's buffer once, and strings are views of the copy, which
	// nothing writes to afterwards.
	size := 0
	for _, v := range text {
		size += len(v)
	}
	buf := make([]byte, 0, size)
	view := func(v []byte) []byte {
		if v == nil {
			return nil
		}
		start := len(buf)
		buf = append(buf, v...)
		return buf[start:len(buf):len(buf)]
	}
	str := func(v []byte) string {
		b := view(v)
		if len(b) == 0 {
			return ""
		}
		return unsafe.String(&b[0], len(b))
	}
	ev.RowID = str(text[colID])
	if rel.name.namespace != "" { // not a logical decoding message
		ev.Schema, ev.Table = rel.name.namespace, rel.name.name
	}
	ev.ID = d.cfg.eventID(ev.Schema, ev.Table, ev.RowID)
	ev.AggregateType = str(text[colAggregateType])
	ev.AggregateID = str(text[colAggregateID])
	ev.EventType = str(text[colEventType])
	ev.Payload = view(text[colPayload])
	ev.Headers = view(text[colHeaders])
	ev.CreatedAt = str(text[colCreatedAt])
	ev.PayloadOmitted, ev.HeadersOmitted = payloadOmitted, headersOmitted
	return ev, defect
}
