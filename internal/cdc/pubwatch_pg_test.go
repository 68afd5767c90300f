package cdc

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/outbox-relay/outbox-relay/internal/testenv"
)

// TestPublicationFingerprintOnRealServers checks, on PostgreSQL 15 and 18,
// the catalog behaviour the publication watch relies on: every change that
// can stop the outbox's inserts from being published changes the
// fingerprint, even when undone, and while such a change is uncommitted
// (possibly with its commit record already in the WAL) a lock shows it.
func TestPublicationFingerprintOnRealServers(t *testing.T) {
	t.Parallel()
	for name, bin := range map[string]string{"pg15": "", "pg18": testenv.PostgresBinFor(t, 18)} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			var opts []testenv.PostgresOption
			if bin != "" {
				opts = append(opts, testenv.WithPostgresBin(bin))
			}
			pg := testenv.StartPostgres(t, opts...)
			pg.CreateDatabase(t, "app")
			pg.Exec(t, "app", `CREATE TABLE outbox (id uuid, aggregate_type text, aggregate_id text, event_type text,
					payload jsonb, headers jsonb, created_at timestamptz);
				CREATE TABLE other (id int);
				CREATE ROLE someone;
				CREATE PUBLICATION outbox_pub FOR TABLE outbox WITH (publish = 'insert', publish_via_partition_root = true)`)
			cfg := validConfig()
			cfg.PostgresURL = pg.URL("app")
			ctx := context.Background()
			conn, err := connect(ctx, cfg, false)
			require.NoError(t, err)
			defer closeConn(conn, time.Second)
			q := querier{conn: conn, timeout: 10 * time.Second}
			version, err := serverVersion(ctx, q)
			require.NoError(t, err)
			fingerprint := func() PublicationFingerprint {
				fp, err := readFingerprint(ctx, q, cfg, version)
				require.NoError(t, err)
				return fp
			}
			first, err := validatedFingerprint(ctx, q, cfg, version)
			require.NoError(t, err)
			require.Equal(t, first, fingerprint(), "stable while nothing changes")
			_, err = conn.Exec(ctx, `SET search_path = pg_catalog`)
			require.NoError(t, err)
			require.Equal(t, first, fingerprint(), "the same from a session with another search_path")
			_, err = conn.Exec(ctx, `RESET search_path`)
			require.NoError(t, err)
			pg.Exec(t, "app", `INSERT INTO outbox (id) VALUES (gen_random_uuid()); ALTER PUBLICATION outbox_pub ADD TABLE other`)
			require.Equal(t, first, fingerprint(), "inserts and other tables do not count")

			for _, change := range []string{
				`ALTER PUBLICATION outbox_pub DROP TABLE outbox; ALTER PUBLICATION outbox_pub ADD TABLE outbox`,
				`ALTER PUBLICATION outbox_pub SET (publish_via_partition_root = false); ALTER PUBLICATION outbox_pub SET (publish_via_partition_root = true)`,
				`ALTER PUBLICATION outbox_pub SET (publish = 'update'); ALTER PUBLICATION outbox_pub SET (publish = 'insert')`,
				`ALTER PUBLICATION outbox_pub OWNER TO someone; ALTER PUBLICATION outbox_pub OWNER TO postgres`,
				`ALTER PUBLICATION outbox_pub RENAME TO x; ALTER PUBLICATION x RENAME TO outbox_pub`,
				`DROP PUBLICATION outbox_pub; CREATE PUBLICATION outbox_pub FOR TABLE outbox WITH (publish = 'insert', publish_via_partition_root = true)`,
			} {
				before := fingerprint()
				pg.Exec(t, "app", change)
				require.NotEqual(t, before, fingerprint(), "undone or not, %s changes the fingerprint", change)
			}
			// A renamed outbox shows while it is renamed; renamed back, the
			// decoder recognises its OID under the other name instead.
			before := fingerprint()
			pg.Exec(t, "app", `ALTER TABLE outbox RENAME TO y`)
			require.NotEqual(t, before, fingerprint())
			pg.Exec(t, "app", `ALTER TABLE y RENAME TO outbox`)
			// Each in its own transaction, as separate statements.
			for _, change := range []string{
				`ALTER PUBLICATION outbox_pub DROP TABLE outbox`,
				`ALTER PUBLICATION outbox_pub SET (publish_via_partition_root = false)`,
				`ALTER PUBLICATION outbox_pub RENAME TO z`,
				`DROP PUBLICATION outbox_pub`,
				`ALTER TABLE outbox RENAME TO w`,
				`DROP TABLE outbox`,
			} {
				busy, err := publicationInFlux(ctx, q, cfg)
				require.NoError(t, err)
				require.False(t, busy)
				if version < 150000 && (strings.HasPrefix(change, "ALTER PUBLICATION outbox_pub SET") || strings.HasPrefix(change, "ALTER PUBLICATION outbox_pub RENAME")) {
					continue // PostgreSQL 14 holds no lock for these (see publicationInFlux)
				}
				other := pg.Connect(t, "app")
				tx, err := other.Begin(ctx)
				require.NoError(t, err)
				_, err = tx.Exec(ctx, change)
				require.NoError(t, err)
				busy, err = publicationInFlux(ctx, q, cfg)
				require.NoError(t, err)
				require.True(t, busy, "an uncommitted %s holds a lock until it ends", change)
				require.NoError(t, tx.Rollback(ctx))
			}
			// A prepared transaction keeps its locks, with no backend.
			pg.Exec(t, "postgres", `ALTER SYSTEM SET max_prepared_transactions = 5`)
			pg.Restart(t, "fast")
			conn2, err := connect(ctx, cfg, false)
			require.NoError(t, err)
			defer closeConn(conn2, time.Second)
			q = querier{conn: conn2, timeout: 10 * time.Second}
			pg.Exec(t, "app", `BEGIN; ALTER PUBLICATION outbox_pub DROP TABLE outbox; PREPARE TRANSACTION 'p1'`)
			busy, err := publicationInFlux(ctx, q, cfg)
			require.NoError(t, err)
			require.True(t, busy, "a prepared ALTER PUBLICATION")
			pg.Exec(t, "app", `ROLLBACK PREPARED 'p1'`)
			busy, err = publicationInFlux(ctx, q, cfg)
			require.NoError(t, err)
			require.False(t, busy)
		})
	}
}
