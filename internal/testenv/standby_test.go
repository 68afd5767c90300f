package testenv_test

import (
	"context"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/outbox-relay/outbox-relay/internal/testenv"
)

// TestStandby: a standby made with the low-level backup API streams the
// primary's WAL through its own slot with hot_standby_feedback, falls behind
// while WAL shipping is paused and catches up when it resumes, and, promoted
// after the primary crashed, is a primary on a new timeline without the WAL
// it never received.
func TestStandby(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name  string
		major int // 0: the default installation
	}{
		{name: "default"},
		{name: "postgres17", major: 17},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			var opts []testenv.PostgresOption
			if tt.major != 0 {
				opts = append(opts, testenv.WithPostgresBin(testenv.PostgresBinFor(t, tt.major)))
			}
			primary := testenv.StartPostgres(t, opts...)
			primary.CreateDatabase(t, "app")
			primary.Exec(t, "app", `CREATE TABLE t (id int PRIMARY KEY)`)
			primary.Exec(t, "app", `INSERT INTO t VALUES (1)`)

			standby := testenv.StartStandby(t, primary)
			require.NotEqual(t, primary.Port(), standby.Port())
			require.Equal(t, "standby1", standby.Slot())
			standby.CatchUp(t)
			require.Equal(t, int64(1), count(t, standby.Postgres, "app"), "the standby has what was committed")
			require.Equal(t, "on", value[string](t, standby.Postgres, "app", `SHOW hot_standby_feedback`))
			require.True(t, value[bool](t, standby.Postgres, "app", `SELECT pg_is_in_recovery()`))
			require.Equal(t, "streaming", value[string](t, standby.Postgres, "app", `SELECT status FROM pg_stat_wal_receiver`))

			standby.PauseWAL(t)
			primary.Exec(t, "app", `INSERT INTO t VALUES (2)`)
			flushed := value[string](t, primary, "app", `SELECT pg_current_wal_flush_lsn()::text`)
			require.False(t, value[bool](t, primary, "app", `SELECT active FROM pg_replication_slots WHERE slot_name = 'standby1'`))
			// Nothing arrives while paused: give it time to be wrong.
			time.Sleep(2 * time.Second)
			require.Equal(t, int64(1), count(t, standby.Postgres, "app"), "nothing is shipped while paused")
			require.True(t, value[bool](t, standby.Postgres, "app",
				`SELECT pg_last_wal_replay_lsn() < $1::pg_lsn`, flushed), "the standby lags")

			standby.ResumeWAL(t)
			standby.CatchUp(t)
			require.Equal(t, int64(2), count(t, standby.Postgres, "app"), "it catches up once resumed")

			standby.PauseWAL(t)
			primary.Exec(t, "app", `INSERT INTO t VALUES (3)`) // never reaches the standby
			primary.Stop(t, "immediate")
			standby.Promote(t)
			require.False(t, value[bool](t, standby.Postgres, "app", `SELECT pg_is_in_recovery()`))
			standby.Exec(t, "app", `INSERT INTO t VALUES (4)`)
			require.Equal(t, int64(3), count(t, standby.Postgres, "app"), "rows 1, 2 and 4: row 3 was lost with the primary")
			// The WAL file name starts with the timeline the server writes.
			require.Equal(t, "00000002", value[string](t, standby.Postgres, "app",
				`SELECT substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8)`), "promotion starts timeline 2")
		})
	}
}

func count(t *testing.T, pg *testenv.Postgres, db string) int64 {
	t.Helper()
	return value[int64](t, pg, db, `SELECT count(*) FROM t`)
}

func value[T any](t *testing.T, pg *testenv.Postgres, db, sql string, args ...any) T {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, pg.AdminURL(db))
	require.NoError(t, err)
	defer conn.Close(ctx)
	var v T
	require.NoError(t, conn.QueryRow(ctx, sql, args...).Scan(&v))
	return v
}
