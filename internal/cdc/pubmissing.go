package cdc

import (
	"errors"
	"fmt"
	"regexp"
	"strings"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5/pgconn"
)

// ErrPublication marks WAL that was, or may have been, decoded without the
// publication covering the outbox: the publication was missing at a WAL
// position, or it changed while the relay ran. Retrying cannot help, and
// confirming past that WAL would skip events; the relay stops.
var ErrPublication = errors.New("publication problem")

// Publication problem kinds, the label values of
// outbox_relay_cdc_publication_problems_total{kind}.
const (
	// PublicationMissing: the publication did not exist at a WAL position.
	PublicationMissing = "missing"
	// PublicationChanged: the publication's catalog rows changed.
	PublicationChanged = "changed"
)

// PublicationError is a publication problem (ErrPublication, and ErrConfig:
// only an operator can resolve it) of a kind.
type PublicationError struct {
	// Kind is PublicationMissing or PublicationChanged.
	Kind string
	err  error
}

func (e *PublicationError) Error() string { return e.err.Error() }

// Unwrap returns the explanation, ErrPublication and ErrConfig.
func (e *PublicationError) Unwrap() []error { return []error{e.err, ErrPublication, ErrConfig} }

// What pgoutput reports for a publication that does not exist at a WAL
// position: up to PostgreSQL 17 an ERROR `publication "p" does not exist`
// (undefined_object); from 18 on a WARNING `skipped loading publication "p"`
// (object_not_in_prerequisite_state, without the position), after which it
// decodes nothing for that publication. Both checked against the servers.
const (
	sqlstateUndefinedObject         = "42704"
	sqlstateObjectNotInPrerequisite = "55000"
)

// missingPublication recognises pgoutput's "publication does not exist"
// error and "skipped loading publication" warning.
func missingPublication(e *pgconn.PgError) bool {
	return (e.Code == sqlstateUndefinedObject || e.Code == sqlstateObjectNotInPrerequisite) &&
		strings.Contains(e.Message, "publication")
}

// associatedLSN finds the position in the error context pgoutput adds:
// `slot "s", output plugin "pgoutput", in the change callback, associated LSN 0/1A2B3C8`.
var associatedLSN = regexp.MustCompile(`LSN ([0-9A-Fa-f]+/[0-9A-Fa-f]+)`)

// publicationMissing explains a publication missing at a WAL position.
func (s *session) publicationMissing(e *pgconn.PgError) error {
	position := fmt.Sprintf("after %s, the last commit read", s.r.filter.lastCommit)
	if m := associatedLSN.FindStringSubmatch(e.Where); m != nil {
		if lsn, err := pglogrepl.ParseLSN(m[1]); err == nil {
			position = lsn.String()
		}
	}
	cfg := s.r.cfg
	return &PublicationError{Kind: PublicationMissing, err: fmt.Errorf(
		"publication: %q did not exist at WAL position %s (dropped and created again while slot %q was behind?), "+
			"so PostgreSQL cannot decode the transactions committed until it existed again, and their outbox rows never reached the relay; "+
			"the relay stopped with the slot at %s. To recover, follow the README (\"A publication missing at a WAL position\"): "+
			"hold writers off the outbox, move the slot with pg_replication_slot_advance, and write the rows that are not on the stream again (PostgreSQL said: %s: %s)",
		cfg.Publication, position, cfg.Slot, s.r.tracker.Confirmed(), e.Severity, e.Message)}
}

// publicationNamesOption renders START_REPLICATION's publication_names
// option as PostgreSQL's own walreceiver does: the name as a double-quoted
// identifier, so pgoutput neither lower-cases it nor splits it at a comma,
// inside a string literal.
func publicationNamesOption(name string) string {
	ident := `"` + strings.ReplaceAll(name, `"`, `""`) + `"`
	return `'` + strings.ReplaceAll(ident, `'`, `''`) + `'`
}
