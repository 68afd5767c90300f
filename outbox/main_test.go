package outbox_test

import (
	"context"
	"fmt"
	"os"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/outbox-relay/outbox-relay/internal/testenv"
	"github.com/outbox-relay/outbox-relay/outbox"
)

// pg is the PostgreSQL every test and example of the package uses, started
// by TestMain: examples cannot start servers of their own. Each test works
// in a database of its own (newDatabase); the examples share "examples",
// whose URL TestMain puts in DATABASE_URL, where a service would find it.
var pg *testenv.Postgres

func TestMain(m *testing.M) {
	var err error
	pg, err = testenv.NewPostgres()
	if err != nil {
		// Loudly, never a skip: the tests need a real server.
		fmt.Fprintf(os.Stderr, "outbox tests: %v\n", err)
		os.Exit(1)
	}
	code := 1
	if err := setupExamples(); err != nil {
		fmt.Fprintf(os.Stderr, "outbox tests: %v\n", err)
	} else {
		code = m.Run()
	}
	if err := pg.Close(); err != nil {
		fmt.Fprintf(os.Stderr, "outbox tests: %v\n", err)
	}
	os.Exit(code)
}

// setupExamples creates the examples' database and points DATABASE_URL at
// it, with the outbox and a table of orders to write next to it.
func setupExamples() error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := pg.ExecContext(ctx, "postgres", "CREATE DATABASE examples"); err != nil {
		return err
	}
	// The outbox too, whatever order the examples run in (Example creates
	// it as well; Migrate leaves what exists).
	ddl, err := outbox.Schema(outbox.Plain, true)
	if err != nil {
		return err
	}
	if err := pg.ExecContext(ctx, "examples", `CREATE TABLE orders (id bigint PRIMARY KEY, total numeric NOT NULL);`+ddl); err != nil {
		return err
	}
	return os.Setenv("DATABASE_URL", pg.URL("examples"))
}

// newDatabase creates a database for one test and returns a connection to
// it, closed at the end of the test.
func newDatabase(t testing.TB, name string) (*pgx.Conn, string) {
	t.Helper()
	url := pg.CreateDatabase(t, name)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatalf("connect to %s: %v", name, err)
	}
	t.Cleanup(func() { _ = conn.Close(context.Background()) })
	return conn, url
}
