package janitor

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/outbox-relay/outbox-relay/internal/testenv"
)

// TestRunOnce runs the janitor once on outboxes of each shape it meets, on a
// real server: it removes rows created more than an hour ago, in batches of
// 3, by whatever column type created_at has; it drops the partitions of a
// range-partitioned outbox whose upper bound is past, and deletes rows
// elsewhere; an outbox partitioned otherwise is cleaned by deletes only.
func TestRunOnce(t *testing.T) {
	t.Parallel()
	pg := testenv.StartPostgres(t)
	tests := []struct {
		name string
		// ddl creates table t; rows are inserted with "at" values.
		ddl    string
		column string
		// recentAt is the creation time of the recent rows; now() unless set.
		recentAt string
		old      int // rows created two days ago
		recent   int // rows created now
		future   int // rows created in 40 days (a partition with MAXVALUE, or none)
		dropped  []string
		wantErr  string
	}{
		{name: "timestamptz", ddl: `CREATE TABLE t (id bigserial PRIMARY KEY, at timestamptz NOT NULL)`, old: 10, recent: 4},
		{name: "timestamp without time zone, taken as UTC", ddl: `CREATE TABLE t (id bigserial PRIMARY KEY, at timestamp NOT NULL)`, old: 7, recent: 2},
		{name: "date", ddl: `CREATE TABLE t (id bigserial PRIMARY KEY, at date NOT NULL)`, old: 5, recent: 3, recentAt: "now() + interval '1 day'"},
		{name: "the second of two names", ddl: `CREATE TABLE t (id bigserial PRIMARY KEY, at timestamptz NOT NULL)`, column: "created_at, at", old: 4, recent: 1},
		{name: "nothing old", ddl: `CREATE TABLE t (id bigserial PRIMARY KEY, at timestamptz NOT NULL)`, recent: 6},
		{
			name: "range partitions on created_at",
			ddl: `CREATE TABLE t (id bigserial, at timestamptz NOT NULL) PARTITION BY RANGE (at);
				CREATE TABLE "t past" PARTITION OF t FOR VALUES FROM (MINVALUE) TO (now() - interval '1 day 1 hour');
				CREATE TABLE t_overlap PARTITION OF t FOR VALUES FROM (now() - interval '1 day 1 hour') TO (now() - interval '30 minutes');
				CREATE TABLE t_next PARTITION OF t FOR VALUES FROM (now() - interval '30 minutes') TO (now() + interval '1 day');
				CREATE TABLE t_open PARTITION OF t FOR VALUES FROM (now() + interval '1 day') TO (MAXVALUE);`,
			old: 6, recent: 2, future: 2, dropped: []string{`public."t past"`},
		},
		{
			name: "range partitions on created_at, the old rows in the default partition",
			ddl: `CREATE TABLE t (id bigserial, at timestamptz NOT NULL) PARTITION BY RANGE (at);
				CREATE TABLE t_next PARTITION OF t FOR VALUES FROM (now() - interval '1 hour') TO (now() + interval '1 day');
				CREATE TABLE t_default PARTITION OF t DEFAULT;`,
			old: 3, recent: 2, future: 1,
		},
		{
			name: "list partitions fall back to deletes",
			ddl: `CREATE TABLE t (id bigserial, kind text NOT NULL DEFAULT 'a', at timestamptz NOT NULL) PARTITION BY LIST (kind);
				CREATE TABLE t_a PARTITION OF t FOR VALUES IN ('a');`,
			old: 4, recent: 2,
		},
		{
			name: "range partitions on another column fall back to deletes",
			ddl: `CREATE TABLE t (id bigint NOT NULL DEFAULT 1, at timestamptz NOT NULL) PARTITION BY RANGE (id);
				CREATE TABLE t_1 PARTITION OF t FOR VALUES FROM (0) TO (100);`,
			old: 4, recent: 2,
		},
		{
			name: "range partitions on two columns fall back to deletes",
			ddl: `CREATE TABLE t (id bigint NOT NULL DEFAULT 1, at timestamptz NOT NULL) PARTITION BY RANGE (at, id);
				CREATE TABLE t_1 PARTITION OF t FOR VALUES FROM (MINVALUE, MINVALUE) TO (MAXVALUE, MAXVALUE);`,
			old: 4, recent: 2,
		},
		{name: "no such column", ddl: `CREATE TABLE t (id bigserial PRIMARY KEY, made timestamptz NOT NULL)`, column: "at", wantErr: `table "public"."t" has no column at to clean up by`},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			db := fmt.Sprintf("janitor_%d", i)
			pg.CreateDatabase(t, db)
			pg.Exec(t, db, tt.ddl)
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			conn, err := pgx.Connect(ctx, pg.AdminURL(db))
			require.NoError(t, err)
			defer conn.Close(ctx)
			inZone := func(zone string) {
				_, err := conn.Exec(ctx, `SELECT set_config('TimeZone', $1, false)`, zone)
				require.NoError(t, err)
			}
			inZone("UTC") // as the relay reads a created_at without time zone
			recentAt := "now()"
			if tt.recentAt != "" {
				recentAt = tt.recentAt
			}
			if tt.wantErr == "" {
				_, err := conn.Exec(ctx, `INSERT INTO t (at) SELECT now() - interval '2 days' FROM generate_series(1, $1)
					UNION ALL SELECT `+recentAt+` FROM generate_series(1, $2)
					UNION ALL SELECT now() + interval '40 days' FROM generate_series(1, $3)`, tt.old, tt.recent, tt.future)
				require.NoError(t, err)
			}
			// The session's time zone must not change which rows are old.
			inZone("Pacific/Kiritimati")
			cfg := Config{
				Retention: time.Hour, Interval: time.Minute, Schema: "public", Table: "t", CreatedAt: "at",
				BatchSize: 3, StatementTimeout: 5 * time.Second, LockTimeout: time.Second,
			}
			if tt.column != "" {
				cfg.CreatedAt = tt.column
			}
			require.NoError(t, cfg.Validate())
			res, err := RunOnce(ctx, conn, cfg)
			if tt.wantErr != "" {
				require.ErrorContains(t, err, tt.wantErr)
				return
			}
			require.NoError(t, err)
			inZone("UTC")
			require.Equal(t, int64(len(tt.dropped)), res.PartitionsDropped)
			var left, oldLeft int
			require.NoError(t, conn.QueryRow(ctx, `SELECT count(*), count(*) FILTER (WHERE at < now() - interval '1 hour') FROM t`).Scan(&left, &oldLeft))
			require.Zero(t, oldLeft, "no old row is left")
			require.Equal(t, tt.recent+tt.future, left, "the other rows are kept")
			if tt.dropped == nil {
				require.Equal(t, int64(tt.old), res.RowsDeleted)
			}
			for _, p := range tt.dropped {
				var gone bool
				require.NoError(t, conn.QueryRow(ctx, `SELECT to_regclass($1) IS NULL`, p).Scan(&gone))
				require.True(t, gone, "%s is dropped", p)
			}

			again, err := RunOnce(ctx, conn, cfg)
			require.NoError(t, err)
			require.Equal(t, Result{Cutoff: again.Cutoff}, again, "a second run finds nothing")
		})
	}
}

// TestValidate: each problem names its setting.
func TestValidate(t *testing.T) {
	t.Parallel()
	ok := Config{Retention: time.Hour, Interval: time.Minute, CreatedAt: "created_at", BatchSize: 1, StatementTimeout: time.Second, LockTimeout: time.Second}
	require.NoError(t, ok.Validate())
	require.NoError(t, Config{}.Validate(), "off needs nothing")
	bad := ok
	bad.CreatedAt = " , "
	require.ErrorContains(t, bad.Validate(), "retention: 1h0m0s needs the outbox's creation time")
	bad = ok
	bad.Retention = -time.Second
	require.ErrorContains(t, bad.Validate(), "retention: -1s, must not be negative")
	bad = ok
	bad.Interval = 0
	require.ErrorContains(t, bad.Validate(), "retention-interval: 0s, must be positive")
}

// TestCheck: relay check reports how cleanup would run, and refuses a role
// that may not delete the outbox's rows or, for a partitioned outbox, does
// not own it and its partitions.
func TestCheck(t *testing.T) {
	t.Parallel()
	pg := testenv.StartPostgres(t)
	pg.CreateDatabase(t, "app")
	pg.Exec(t, "app", `CREATE TABLE plain (id bigserial PRIMARY KEY, created_at timestamptz NOT NULL);
		CREATE TABLE parts (id bigserial, created_at timestamptz NOT NULL) PARTITION BY RANGE (created_at);
		CREATE TABLE parts_1 PARTITION OF parts FOR VALUES FROM (MINVALUE) TO (MAXVALUE);
		CREATE ROLE cleaner LOGIN;
		CREATE ROLE owner_role;
		ALTER TABLE parts OWNER TO owner_role;`)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	conn, err := pgx.Connect(ctx, strings.Replace(pg.URL("app"), "postgres@", "cleaner@", 1))
	require.NoError(t, err)
	defer conn.Close(ctx)
	cfg := Config{
		Retention: 168 * time.Hour, Interval: 5 * time.Minute, Schema: "public", CreatedAt: "created_at",
		BatchSize: 1000, StatementTimeout: 5 * time.Second, LockTimeout: time.Second,
	}
	check := func(table string) (string, error) {
		c := cfg
		c.Table = table
		return Check(ctx, conn, c)
	}

	_, err = check("plain")
	require.ErrorContains(t, err, `the role may not delete rows of "public"."plain"; run GRANT DELETE ON "public"."plain" TO <role>`)
	pg.Exec(t, "app", `GRANT DELETE ON plain TO cleaner`)
	note, err := check("plain")
	require.NoError(t, err)
	require.Equal(t, `rows of "public"."plain" created more than 168h0m0s ago (by created_at) are deleted every 5m0s, in batches of 1000`, note)

	pg.Exec(t, "app", `GRANT DELETE ON parts TO cleaner`)
	_, err = check("parts")
	require.ErrorContains(t, err, "does not own it and its partitions")
	pg.Exec(t, "app", `GRANT owner_role TO cleaner`)
	_, err = check("parts")
	require.ErrorContains(t, err, "does not own it and its partitions", "parts_1 is still the superuser's")
	pg.Exec(t, "app", `ALTER TABLE parts_1 OWNER TO owner_role`)
	note, err = check("parts")
	require.NoError(t, err)
	require.Contains(t, note, "by dropping partitions whose upper bound is older")
}

// TestRunOnceOnAStandby: where the relay reads from a hot standby, the
// janitor cannot delete; it says so, and relay check too, rather than fail
// with PostgreSQL's read-only error at every run.
func TestRunOnceOnAStandby(t *testing.T) {
	t.Parallel()
	primary := testenv.StartPostgres(t)
	primary.CreateDatabase(t, "app")
	primary.Exec(t, "app", `CREATE TABLE t (id bigserial PRIMARY KEY, created_at timestamptz NOT NULL);
		INSERT INTO t (created_at) VALUES (now() - interval '2 days')`)
	standby := testenv.StartStandby(t, primary)
	standby.CatchUp(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	conn, err := pgx.Connect(ctx, standby.AdminURL("app"))
	require.NoError(t, err)
	defer conn.Close(ctx)
	cfg := Config{
		Retention: time.Hour, Interval: time.Minute, Schema: "public", Table: "t", CreatedAt: "created_at",
		BatchSize: 10, StatementTimeout: 5 * time.Second, LockTimeout: time.Second,
	}
	_, err = RunOnce(ctx, conn, cfg)
	require.ErrorIs(t, err, errStandby)
	_, err = Check(ctx, conn, cfg)
	require.ErrorIs(t, err, errStandby)
}
