package cdc

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/outbox-relay/outbox-relay/internal/testenv"
)

// TestPeekEvents reads the head of a real slot: the events of committed
// transactions in commit order with their positions, through a publication
// whose name needs quoting, without consuming anything.
func TestPeekEvents(t *testing.T) {
	t.Parallel()
	pg := testenv.StartPostgres(t)
	pg.CreateDatabase(t, "app")
	pg.Exec(t, "app", `CREATE TABLE outbox (id text PRIMARY KEY, aggregate_type text, aggregate_id text, event_type text,
			payload jsonb, headers jsonb, created_at timestamptz DEFAULT now());
		CREATE TABLE other (n int);
		CREATE PUBLICATION "Outbox Pub" FOR TABLE outbox WITH (publish = 'insert');`)
	pg.Exec(t, "app", `SELECT pg_create_logical_replication_slot('peek_slot', 'pgoutput')`)
	pg.Exec(t, "app", `INSERT INTO outbox (id, aggregate_type, aggregate_id, event_type, payload) VALUES ('a', 't', '1', 'e', '{}')`)
	pg.Exec(t, "app", `INSERT INTO other VALUES (1)`)
	pg.Exec(t, "app", `BEGIN; INSERT INTO outbox (id, aggregate_type, aggregate_id, event_type, payload, headers)
		VALUES ('b', 't', '2', 'e', '{"x": 1}', '{"h": "v"}'), ('c', 't', '3', 'e', '{}', NULL); COMMIT;`)

	cfg := validConfig()
	cfg.PostgresURL = pg.URL("app")
	cfg.Table, cfg.Publication, cfg.Slot = "outbox", "Outbox Pub", "peek_slot"
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	conn, err := Connect(ctx, cfg)
	require.NoError(t, err)
	defer func() { _ = conn.Close(ctx) }()

	for range 2 { // peeking consumes nothing
		events, err := PeekEvents(ctx, conn, cfg, 100)
		require.NoError(t, err)
		require.Len(t, events, 3)
		require.Equal(t, []string{"a", "b", "c"}, []string{events[0].ID, events[1].ID, events[2].ID})
		require.Equal(t, uint32(0), events[0].Position.Index)
		require.Less(t, events[0].Position.CommitLSN, events[1].Position.CommitLSN)
		require.Equal(t, events[1].Position.CommitLSN, events[2].Position.CommitLSN, "one transaction")
		require.Equal(t, uint32(1), events[2].Position.Index)
		require.JSONEq(t, `{"h": "v"}`, string(events[1].Headers))
		require.Equal(t, "2", events[1].AggregateID)
		require.NotEmpty(t, events[0].CreatedAt)
	}
	events, err := PeekEvents(ctx, conn, cfg, 1)
	require.NoError(t, err)
	require.Len(t, events, 1, "at most limit events")
}

// TestCheckCreatePublication: CREATE PUBLICATION ... FOR TABLE needs CREATE
// on the database and ownership of the table; each missing right is named,
// and a role that has both, or a publication that exists, passes.
func TestCheckCreatePublication(t *testing.T) {
	t.Parallel()
	pg := testenv.StartPostgres(t)
	pg.CreateDatabase(t, "app")
	pg.Exec(t, "app", `CREATE TABLE outbox (id text PRIMARY KEY);
		CREATE ROLE reader LOGIN; GRANT SELECT ON outbox TO reader;
		CREATE ROLE creator LOGIN; GRANT CREATE ON DATABASE app TO creator; GRANT SELECT ON outbox TO creator;
		CREATE ROLE owners; CREATE ROLE member LOGIN IN ROLE owners; GRANT CREATE ON DATABASE app TO owners;
		CREATE TABLE owned (id text PRIMARY KEY); ALTER TABLE owned OWNER TO owners;`)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	check := func(role, table string) error {
		cfg := validConfig()
		cfg.PostgresURL = strings.Replace(pg.URL("app"), "postgres@", role+"@", 1)
		cfg.Table, cfg.Publication, cfg.CreatePublication = table, "pub", true
		conn, err := Connect(ctx, cfg)
		require.NoError(t, err)
		defer func() { _ = conn.Close(ctx) }()
		return CheckCreatePublication(ctx, conn, cfg)
	}
	err := check("reader", "outbox")
	require.ErrorIs(t, err, ErrConfig)
	require.ErrorContains(t, err, `role "reader" may not create it: it lacks CREATE on database "app" (GRANT CREATE ON DATABASE "app" TO "reader") and ownership of "public"."outbox", which is owned by "postgres"`)
	err = check("creator", "outbox")
	require.ErrorContains(t, err, `it lacks ownership of "public"."outbox"`)
	require.NotContains(t, err.Error(), "GRANT CREATE")
	require.NoError(t, check("member", "owned"), "a member of the owning role may create it")
	require.NoError(t, check("postgres", "outbox"))
	pg.Exec(t, "app", `CREATE PUBLICATION pub FOR TABLE outbox`)
	require.NoError(t, check("reader", "outbox"), "an existing publication needs no rights")
}
