package cdc

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"go.uber.org/zap"

	"github.com/outbox-relay/outbox-relay/internal/backoff"
)

// PublicationFingerprint identifies the catalog rows that decide whether the
// outbox's inserts are published: the publication's row (its OID, and its
// xmin, which every ALTER PUBLICATION ... SET, OWNER or RENAME changes even
// when the values are set back), the outbox table (OID, schema and name),
// and the publication's pg_publication_rel rows for the outbox or a table it
// is a partition of and pg_publication_namespace rows for their schemas
// (each OID and xmin: dropping a table from the publication and adding it
// again makes a new row). Equal fingerprints mean none of those rows changed.
// It is text, one "key=value" line per fact, sorted; store it as it is.
type PublicationFingerprint string

// Digest is a short hash of the fingerprint, for --accept-publication.
func (f PublicationFingerprint) Digest() string {
	sum := sha256.Sum256([]byte(f))
	return hex.EncodeToString(sum[:8])
}

// diff describes what changed from f to g.
func (f PublicationFingerprint) diff(g PublicationFingerprint) string {
	before, after := strings.Split(string(f), "\n"), strings.Split(string(g), "\n")
	var gone, added []string
	for _, l := range before {
		if !slices.Contains(after, l) {
			gone = append(gone, l)
		}
	}
	for _, l := range after {
		if !slices.Contains(before, l) {
			added = append(added, l)
		}
	}
	if len(after) == 1 && after[0] == "" {
		return "the publication no longer exists (was " + strings.Join(gone, ", ") + ")"
	}
	return fmt.Sprintf("gone: [%s], new: [%s]", strings.Join(gone, ", "), strings.Join(added, ", "))
}

// PublicationFingerprintStore keeps the fingerprint of the publication a
// relay last started with, where a restart finds it (the lead's NATS
// key-value bucket, say). Load reports false when none was saved. Both block
// for one round trip and are called from one goroutine.
type PublicationFingerprintStore interface {
	Load(ctx context.Context) (fp PublicationFingerprint, ok bool, err error)
	Save(ctx context.Context, fp PublicationFingerprint) error
}

// ReconcilePublication compares current, the fingerprint preflight
// validated, with the one saved when the relay last started, so that a
// change made while no relay ran is not missed: inserts made while the
// outbox was out of the publication, or with other options, were never sent
// to the slot. With nothing saved yet, or when accept is current's Digest
// (the operator checked the change), it saves current and returns nil; when
// they differ otherwise it returns a PublicationError of kind changed that
// names the change and how to acknowledge it.
func ReconcilePublication(ctx context.Context, store PublicationFingerprintStore, cfg Config, current PublicationFingerprint) error {
	saved, ok, err := store.Load(ctx)
	if err != nil {
		return fmt.Errorf("load the publication fingerprint: %w", err)
	}
	switch {
	case ok && saved == current:
		return nil
	case ok && cfg.AcceptPublication != current.Digest():
		return &PublicationError{Kind: PublicationChanged, err: fmt.Errorf(
			"publication: %q changed since the relay last started (%s). Inserts into %s made while it did not publish them were never sent to slot %q. "+
				"Benign changes (ALTER PUBLICATION ... OWNER TO, RENAME and back, SET (publish = 'insert, update')) also count. "+
				"Check that no insert was skipped, and republish any that was (see the README, \"The publication changed\"); then start the relay once with --accept-publication=%s",
			cfg.Publication, saved.diff(current), cfg.TablesText(), cfg.Slot, current.Digest())}
	}
	if err := store.Save(ctx, current); err != nil {
		return fmt.Errorf("save the publication fingerprint: %w", err)
	}
	return nil
}

// readFingerprint reads the publication's fingerprint in one statement, so
// from one snapshot; "" when the publication does not exist.
func readFingerprint(ctx context.Context, q querier, cfg Config, version int) (PublicationFingerprint, error) {
	rels := `SELECT 'member ' || (SELECT format('%I.%I', n.nspname, c.relname) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = r.prrelid) || '=' || r.oid || '/' || r.xmin FROM pg_publication_rel r
			WHERE r.prpubid = p.oid AND r.prrelid IN (SELECT relid FROM tree)`
	namespaces := `SELECT NULL::text WHERE false`
	if version >= 150000 {
		rels = `SELECT 'member ' || (SELECT format('%I.%I', n.nspname, c.relname) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = r.prrelid) || '=' || r.oid || '/' || r.xmin
				|| '/filter:' || md5(COALESCE(r.prqual::text, '')) || '/columns:' || COALESCE(r.prattrs::text, 'all')
			FROM pg_publication_rel r WHERE r.prpubid = p.oid AND r.prrelid IN (SELECT relid FROM tree)`
		namespaces = `SELECT 'schema ' || pn.pnnspid::regnamespace::text || '=' || pn.oid || '/' || pn.xmin
			FROM pg_publication_namespace pn WHERE pn.pnpubid = p.oid
				AND pn.pnnspid IN (SELECT c.relnamespace FROM pg_class c WHERE c.oid IN (SELECT relid FROM tree))`
	}
	var text *string
	err := q.row(ctx, `WITH outbox AS (SELECT to_regclass(name) AS oid FROM unnest($2::text[]) name),
		tree AS (SELECT oid AS relid FROM outbox UNION SELECT a.relid FROM outbox, pg_partition_ancestors(outbox.oid) a)
		SELECT string_agg(line, E'\n' ORDER BY line) FROM pg_publication p, LATERAL (
			SELECT 'publication=' || p.oid || '/' || p.xmin
			UNION ALL SELECT 'publish_insert=' || p.pubinsert
			UNION ALL SELECT 'publish_via_partition_root=' || p.pubviaroot
			UNION ALL SELECT 'all_tables=' || p.puballtables
			UNION ALL SELECT 'table=' || c.oid || '/' || (SELECT format('%I.%I', n.nspname, c.relname) FROM pg_namespace n WHERE n.oid = c.relnamespace) || '/partition:' || c.relispartition
				FROM outbox JOIN pg_class c ON c.oid = outbox.oid
			UNION ALL `+rels+`
			UNION ALL `+namespaces+`
		) AS facts(line)
		WHERE p.pubname = $1`, cfg.Publication, cfg.explicitNames()).Scan(&text)
	if err != nil {
		return "", fmt.Errorf("read the fingerprint of publication %q: %w", cfg.Publication, err)
	}
	return PublicationFingerprint(deref(text)), nil
}

// publicationInFlux reports whether another session, or a prepared
// transaction, holds a lock that changing the publication or the outbox
// table takes and keeps until its transaction ends: any lock on the
// publication (PostgreSQL 15+: ALTER PUBLICATION ... ADD/DROP/SET, RENAME,
// DROP), or SHARE UPDATE EXCLUSIVE or stronger on the outbox or a table it is
// a partition of (adding it to or dropping it from a publication, DROP,
// RENAME, ALTER TABLE; autovacuum's is left out, a manual VACUUM only
// delays verification). Such a transaction may have written its commit
// record (which logical decoding follows) before it became visible to
// snapshots (which the fingerprint follows); its locks are released only
// after it is visible. No such lock, then every change committed before is
// visible. PostgreSQL 14 holds no lock for ALTER PUBLICATION ... SET or
// RENAME; there the check cannot cover that short window.
func publicationInFlux(ctx context.Context, q querier, cfg Config) (bool, error) {
	var busy bool
	err := q.row(ctx, `WITH outbox AS (SELECT to_regclass(name) AS oid FROM unnest($2::text[]) name),
		tree AS (SELECT oid AS relid FROM outbox UNION SELECT a.relid FROM outbox, pg_partition_ancestors(outbox.oid) a)
		SELECT EXISTS (SELECT 1 FROM pg_locks l
			WHERE l.pid IS DISTINCT FROM pg_backend_pid() AND (
				(l.locktype = 'object' AND l.classid = 'pg_publication'::regclass
					AND l.objid = (SELECT oid FROM pg_publication WHERE pubname = $1))
				OR (l.locktype = 'relation' AND l.relation IN (SELECT relid FROM tree)
					AND l.mode IN ('ShareUpdateExclusiveLock', 'ShareLock', 'ShareRowExclusiveLock', 'ExclusiveLock', 'AccessExclusiveLock')
					AND NOT EXISTS (SELECT 1 FROM pg_stat_activity a WHERE a.pid = l.pid AND a.backend_type = 'autovacuum worker'))))`,
		cfg.Publication, cfg.explicitNames()).Scan(&busy)
	if err != nil {
		return false, fmt.Errorf("read locks on publication %q: %w", cfg.Publication, err)
	}
	return busy, nil
}

// publicationWatch checks, every PublicationCheckInterval while the reader
// runs, that the publication is still the one preflight validated, and
// moves the tracker's verified position: WAL up to a position read before an
// unchanged fingerprint was decoded with that publication, so confirming up
// to it cannot skip an insert the publication stopped sending. When the
// fingerprint changed, verification stops where it was, and the reader stops
// with a PublicationError.
type publicationWatch struct {
	cfg      Config
	log      *zap.Logger
	tracker  *Tracker
	baseline PublicationFingerprint // "" until the first reading
	version  int
	conn     *pgx.Conn
	// stop ends the replication session with an error: fatal once the
	// publication changed, retryable when the server shuts down.
	stop func(error)
}

// run checks until ctx is done or the publication changed.
func (w *publicationWatch) run(ctx context.Context) {
	defer w.close()
	bo := backoff.Backoff{Min: w.cfg.ReconnectMin, Max: w.cfg.ReconnectMax}
	tick := time.NewTicker(w.cfg.PublicationCheckInterval)
	defer tick.Stop()
	for {
		err := w.check(ctx)
		var pubErr *PublicationError
		switch {
		case errors.As(err, &pubErr):
			w.stop(err)
			return
		case err != nil && ctx.Err() == nil:
			if shuttingDown(err) {
				// A walsender waits, before the server can finish
				// shutting down, for its client to confirm the WAL end,
				// which this watch can no longer verify: end the session,
				// and reconnect once the server is back.
				w.stop(fmt.Errorf("publication check: the server is shutting down: %w", err))
			}
			// Verification waits; so does confirmation, never events.
			w.close()
			delay := bo.Next()
			w.log.Warn("publication check failed, retrying", zap.String("publication", w.cfg.Publication),
				zap.Int("attempt", bo.Attempt()), zap.Duration("backoff", delay), zap.Error(err))
			if !backoff.Sleep(ctx, delay) {
				return
			}
			continue
		case err == nil:
			bo.Reset()
		}
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}

// check is one round: the WAL position first, then, with the publication
// not being changed right now, the fingerprint in a later snapshot.
func (w *publicationWatch) check(ctx context.Context) error {
	if w.conn == nil {
		conn, err := connect(ctx, w.cfg, false)
		if err != nil {
			return err
		}
		w.conn = conn
		if w.version, err = serverVersion(ctx, querier{conn: conn, timeout: w.cfg.QueryTimeout}); err != nil {
			return err
		}
	}
	q := querier{conn: w.conn, timeout: w.cfg.QueryTimeout}
	var text string
	if err := q.row(ctx, `SELECT `+walPositionSQL+`::text`).Scan(&text); err != nil {
		return fmt.Errorf("read the WAL position: %w", err)
	}
	lsn, err := pglogrepl.ParseLSN(text)
	if err != nil {
		return fmt.Errorf("read the WAL position: %w", err)
	}
	busy, err := publicationInFlux(ctx, q, w.cfg)
	if err != nil || busy {
		return err // verify next round
	}
	if w.cfg.Patterns() {
		// A FOR ALL TABLES publication takes an unlogged table, whose rows
		// never reach the WAL: a tenant table made so stops the relay.
		unlogged, err := unloggedMatches(ctx, q, w.cfg)
		if err != nil {
			return err
		}
		if len(unlogged) > 0 {
			return &PublicationError{Kind: PublicationChanged, err: fmt.Errorf(
				"table: %s matches --table=%s and is UNLOGGED, so its rows never reach the WAL the relay reads; run ALTER TABLE ... SET LOGGED, then publish the rows written since it was unlogged with relay replay: %w",
				strings.Join(unlogged, ", "), w.cfg.TablesText(), ErrConfig)}
		}
	}
	var fp PublicationFingerprint
	if w.baseline == "" {
		// No baseline from preflight: take one only from a publication
		// that delivers the outbox, checked now.
		fp, err = validatedFingerprint(ctx, q, w.cfg, w.version)
		if errors.Is(err, ErrConfig) {
			return &PublicationError{Kind: PublicationChanged, err: fmt.Errorf(
				"%w; WAL after %s may have been decoded without it covering %s, so the relay stopped without confirming past it",
				err, w.tracker.Confirmed(), w.cfg.TablesText())}
		}
	} else {
		fp, err = readFingerprint(ctx, q, w.cfg, w.version)
	}
	if err != nil {
		return err
	}
	if fp == "" {
		return &PublicationError{Kind: PublicationChanged, err: fmt.Errorf(
			"publication: %q no longer exists; WAL after %s may have been decoded without it, so the relay stopped without confirming past it (see the README, \"The publication changed\")",
			w.cfg.Publication, w.tracker.Confirmed())}
	}
	if w.baseline == "" {
		w.baseline = fp
	}
	if fp != w.baseline {
		return &PublicationError{Kind: PublicationChanged, err: fmt.Errorf(
			"publication: %q changed while the relay ran (%s); WAL between %s and %s may have been decoded without it covering %s, so the relay stopped without confirming past %s. "+
				"Check that no insert was skipped in between, and republish any that was (see the README, \"The publication changed\"); "+
				"benign changes (ALTER PUBLICATION ... OWNER TO, SET (publish = 'insert, update')) stop the relay too",
			w.cfg.Publication, w.baseline.diff(fp), w.tracker.Confirmed(), lsn, w.cfg.TablesText(), w.tracker.Confirmed())}
	}
	w.tracker.Verified(lsn)
	return nil
}

// shuttingDown recognises the errors of a server shutting down or
// restarting: the session terminated by the administrator, or a new one
// refused while the server shuts down or starts.
func shuttingDown(err error) bool {
	var pgErr *pgconn.PgError
	return errors.As(err, &pgErr) && (pgErr.Code == "57P01" || pgErr.Code == "57P02" || pgErr.Code == "57P03")
}

func (w *publicationWatch) close() {
	if w.conn != nil {
		closeConn(w.conn, w.cfg.ConnectTimeout)
		w.conn = nil
	}
}
