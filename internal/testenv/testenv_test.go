package testenv_test

import (
	"context"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"

	"github.com/outbox-relay/outbox-relay/internal/testenv"
)

func TestPostgres(t *testing.T) {
	t.Parallel()
	pg := testenv.StartPostgres(t, testenv.WithPostgresConfig("wal_sender_timeout", "7s"))
	ctx := context.Background()

	url := pg.CreateDatabase(t, "app")
	require.Contains(t, url, "127.0.0.1:")
	pg.Exec(t, "app", "CREATE TABLE t (id int PRIMARY KEY, v text)")
	pg.Exec(t, "app", "INSERT INTO t VALUES ($1, $2)", 1, "before-crash")
	pg.Exec(t, "app", "SELECT pg_create_logical_replication_slot('s', 'pgoutput')")

	// Connect over TCP like the relay does, not the admin socket.
	conn, err := pgx.Connect(ctx, url)
	require.NoError(t, err)
	var walLevel, senderTimeout string
	require.NoError(t, conn.QueryRow(ctx, "SHOW wal_level").Scan(&walLevel))
	require.NoError(t, conn.QueryRow(ctx, "SHOW wal_sender_timeout").Scan(&senderTimeout))
	require.NoError(t, conn.Close(ctx))
	require.Equal(t, "logical", walLevel)
	require.Equal(t, "7s", senderTimeout)

	// A replication connection must be allowed on loopback TCP.
	repl, err := pgx.Connect(ctx, url+"&replication=database")
	require.NoError(t, err)
	require.NoError(t, repl.Close(ctx))

	port := pg.Port()
	pg.Stop(t, "immediate")
	pg.Stop(t, "immediate") // stopping a stopped server must not hang
	_, err = pgx.Connect(ctx, url)
	require.Error(t, err, "server should be down")

	pg.Start(t)
	require.Equal(t, port, pg.Port())
	pg.Restart(t, "fast")

	c := pg.Connect(t, "app")
	var v, slot string
	require.NoError(t, c.QueryRow(ctx, "SELECT v FROM t WHERE id = 1").Scan(&v))
	require.Equal(t, "before-crash", v)
	require.NoError(t, c.QueryRow(ctx, "SELECT slot_name FROM pg_replication_slots").Scan(&slot))
	require.Equal(t, "s", slot)
	require.FileExists(t, filepath.Join(pg.DataDir(), "PG_VERSION"))
	require.FileExists(t, pg.LogPath())
}

func TestPostgresHBAAndFiles(t *testing.T) {
	t.Parallel()
	pg := testenv.StartPostgres(t,
		testenv.WithPostgresHBA("host all all 127.0.0.1/32 scram-sha-256"),
		testenv.WithPostgresFile("marker.txt", []byte("hello")),
	)
	ctx := context.Background()

	// The admin socket is unaffected by the stricter TCP rule.
	pg.Exec(t, "postgres", "CREATE ROLE app LOGIN PASSWORD 'secret'")

	_, err := pgx.Connect(ctx, pg.URL("postgres"))
	require.Error(t, err, "TCP without password must be rejected")

	withPassword := strings.Replace(pg.URL("postgres"), "postgres@", "app:secret@", 1)
	conn, err := pgx.Connect(ctx, withPassword)
	require.NoError(t, err)
	require.NoError(t, conn.Close(ctx))

	data, err := os.ReadFile(filepath.Join(pg.DataDir(), "marker.txt"))
	require.NoError(t, err)
	require.Equal(t, "hello", string(data))
}

func TestPostgresParallelClusters(t *testing.T) {
	t.Parallel()
	a := testenv.StartPostgres(t)
	b := testenv.StartPostgres(t)
	require.NotEqual(t, a.Port(), b.Port())
	require.NotEqual(t, a.DataDir(), b.DataDir())
	a.Exec(t, "postgres", "CREATE TABLE only_in_a (id int)")
	b.Exec(t, "postgres", "SELECT 1")
}

func TestNATSRestartKeepsStream(t *testing.T) {
	t.Parallel()
	ns := testenv.StartNATS(t)
	require.Equal(t, "nats://127.0.0.1:"+strconv.Itoa(ns.Port()), ns.URL())

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	nc := ns.Connect(t)
	js, err := jetstream.New(nc)
	require.NoError(t, err)
	_, err = js.CreateStream(ctx, jetstream.StreamConfig{Name: "EVENTS", Subjects: []string{"events.>"}})
	require.NoError(t, err)
	_, err = js.Publish(ctx, "events.a", []byte("kept"))
	require.NoError(t, err)

	port := ns.Port()
	ns.Restart(t)
	require.Equal(t, port, ns.Port())
	require.NotNil(t, ns.Server())

	// The old connection reconnects to the same port.
	require.Eventually(t, nc.IsConnected, 10*time.Second, 20*time.Millisecond)
	msg, err := js.Stream(ctx, "EVENTS")
	require.NoError(t, err)
	raw, err := msg.GetMsg(ctx, 1)
	require.NoError(t, err)
	require.Equal(t, "kept", string(raw.Data))

	ns.Stop(t)
	ns.Stop(t) // no-op
	require.Nil(t, ns.Server())
}

func TestNATSClusterLeaderFailover(t *testing.T) {
	t.Parallel()
	cl := testenv.StartNATSCluster(t, 3)
	require.Len(t, strings.Split(cl.URLs(), ","), 3)

	ctx, cancel := context.WithTimeout(context.Background(), 45*time.Second)
	defer cancel()
	nc := cl.Connect(t)
	js, err := jetstream.New(nc)
	require.NoError(t, err)
	_, err = js.CreateStream(ctx, jetstream.StreamConfig{Name: "R3", Subjects: []string{"r3.>"}, Replicas: 3})
	require.NoError(t, err)
	_, err = js.Publish(ctx, "r3.a", []byte("one"))
	require.NoError(t, err)

	old := cl.StreamLeader(t, "R3")
	cl.StopNode(t, old)
	require.Nil(t, cl.Node(old))

	// Publishing retries until the new leader is elected.
	require.Eventually(t, func() bool {
		pctx, pcancel := context.WithTimeout(ctx, 2*time.Second)
		defer pcancel()
		_, err := js.Publish(pctx, "r3.b", []byte("two"))
		return err == nil
	}, 30*time.Second, 100*time.Millisecond)
	leader := cl.StreamLeader(t, "R3")
	require.NotEqual(t, old, leader)

	stream, err := js.Stream(ctx, "R3")
	require.NoError(t, err)
	info, err := stream.Info(ctx)
	require.NoError(t, err)
	require.Equal(t, uint64(2), info.State.Msgs)

	cl.StartNode(t, old)
	require.NotNil(t, cl.Node(old))
}

// TestPostgresOtherMajor starts PostgreSQL 18 from the binaries
// scripts/install-postgres.sh caches, and checks what the relay's tests
// rely on: the version, logical decoding with pgoutput and, when the tests
// run as root, a server running as the OS user postgres.
func TestPostgresOtherMajor(t *testing.T) {
	t.Parallel()
	pg := testenv.StartPostgres(t, testenv.WithPostgresBin(testenv.PostgresBinFor(t, 18)))
	require.GreaterOrEqual(t, pg.Version(t), 180000)
	ctx := context.Background()
	c := pg.Connect(t, "postgres")
	var version int
	require.NoError(t, c.QueryRow(ctx, `SELECT current_setting('server_version_num')::int`).Scan(&version))
	require.GreaterOrEqual(t, version, 180000)
	pg.Exec(t, "postgres", `CREATE TABLE t (id int PRIMARY KEY); CREATE PUBLICATION p FOR TABLE t`)
	pg.Exec(t, "postgres", `SELECT pg_create_logical_replication_slot('s', 'pgoutput')`)
	pg.Exec(t, "postgres", `INSERT INTO t VALUES (1)`)
	var changes int
	require.NoError(t, c.QueryRow(ctx, `SELECT count(*) FROM pg_logical_slot_peek_binary_changes('s', NULL, NULL,
		'proto_version', '1', 'publication_names', 'p')`).Scan(&changes))
	require.Equal(t, 4, changes, "begin, relation, insert, commit")
	if os.Geteuid() == 0 {
		data, err := os.Stat(pg.DataDir())
		require.NoError(t, err)
		require.NotZero(t, data.Sys().(*syscall.Stat_t).Uid, "the data directory belongs to the server user, not root")
	}
}
