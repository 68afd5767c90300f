package main

import (
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/outbox-relay/outbox-relay/internal/e2e"
	"github.com/outbox-relay/outbox-relay/internal/testenv"
)

// TestPreflightRefusesWhatCannotWork: problems no retry can fix are
// configuration errors that `relay check` reports and `relay run` exits on,
// each naming the fix: a role that may not create the publication (trial
// S5, retried forever before), a created_at column of another type, and a
// --replication-timeout not above the server's wal_sender_timeout.
func TestPreflightRefusesWhatCannotWork(t *testing.T) {
	t.Parallel()
	f := newFixture(t, testenv.WithPostgresConfig("wal_sender_timeout", "45s"))
	relayURL := func(db string) string { return strings.Replace(f.pg.URL(db), "postgres@", "relay@", 1) }
	f.pg.Exec(t, f.db, `CREATE ROLE relay LOGIN REPLICATION; GRANT SELECT ON events TO relay`)
	tests := []struct {
		name  string
		db    string
		setup string
		env   []string
		want  []string
	}{
		{
			name: "no CREATE on the database", db: "nocreate",
			env:  []string{"RELAY_POSTGRES_URL", relayURL("nocreate")},
			want: []string{`GRANT CREATE ON DATABASE "nocreate" TO "relay"`},
		},
		{
			name: "not the table's owner", db: "notowner",
			setup: `GRANT CREATE ON DATABASE notowner TO relay`,
			env:   []string{"RELAY_POSTGRES_URL", relayURL("notowner")},
			want:  []string{`ALTER TABLE "public"."events" OWNER TO "relay"`, "--create-publication=false"},
		},
		{
			name: "created_at of another type", db: "createdat",
			setup: `ALTER TABLE events ALTER COLUMN created_at TYPE text`,
			want:  []string{`created_at`, "type text", "timestamptz"},
		},
		{
			name: "replication timeout not above wal_sender_timeout", db: "timeout",
			env:  []string{"RELAY_REPLICATION_TIMEOUT", "30s"},
			want: []string{"replication-timeout: 30s", "wal_sender_timeout 45s"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			db := tt.db
			f.pg.CreateDatabase(t, db)
			e2e.SetupOutbox(t, f.pg, db)
			f.pg.Exec(t, db, `GRANT SELECT ON events TO relay`)
			if tt.setup != "" {
				f.pg.Exec(t, db, tt.setup)
			}
			env := f.env(append([]string{"RELAY_POSTGRES_URL", f.pg.URL(db)}, tt.env...)...) // tt.env wins
			for _, cmd := range []string{"check", "run"} {
				start := time.Now()
				code, out := runCommand(t, f.bin, env, cmd)
				out = unescaped(out)
				require.Equal(t, 1, code, "%s: %s", cmd, out)
				for _, w := range tt.want {
					require.Contains(t, out, w, cmd)
				}
				require.NotContains(t, out, "retrying", "%s: not retried", cmd)
				require.Less(t, time.Since(start), 30*time.Second, cmd)
			}
		})
	}
}
