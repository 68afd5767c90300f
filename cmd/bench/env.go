package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/outbox-relay/outbox-relay/internal/testenv"
)

const (
	benchDB     = "bench"
	publication = "outbox_relay" // the relay's default
	relaySlot   = "outbox_relay" // the relay's default, for the live phase and the profile
	// serveNATSArg makes the harness binary run only a NATS server: the
	// harness starts itself again with it, so the server has a process of
	// its own, as the relay has, and its CPU can be told apart.
	serveNATSArg = "serve-nats"
)

// env is the throwaway PostgreSQL and NATS of one run, the relay binary, and
// connections the harness uses to look at them.
type env struct {
	root  string
	tmp   string
	pg    *testenv.Postgres
	nats  *natsChild
	nc    *nats.Conn
	js    jetstream.JetStream
	dbURL string
	relay string // path of the relay binary
	// relayEnv is added to the relay's environment (-relay-env).
	relayEnv []string
	admin    *pgx.Conn
	pgVer    string
	streams  int // streams created so far, for fresh names
}

func setupEnv(ctx context.Context, logf func(string, ...any)) (e *env, err error) {
	e = &env{}
	defer func() {
		if err != nil {
			e.close()
			e = nil
		}
	}()
	if e.root, err = repoRoot(); err != nil {
		return e, err
	}
	if e.tmp, err = os.MkdirTemp("", "outbox-bench-"); err != nil {
		return e, err
	}

	logf("building the relay (go build -trimpath ./cmd/relay)")
	e.relay = filepath.Join(e.tmp, "relay")
	build := exec.CommandContext(ctx, "go", "build", "-trimpath", "-ldflags", "-s -w", "-o", e.relay, "./cmd/relay")
	build.Dir = e.root
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		return e, fmt.Errorf("go build ./cmd/relay: %w\n%s", err, out)
	}

	logf("starting PostgreSQL (internal/testenv defaults)")
	if e.pg, err = testenv.NewPostgres(); err != nil {
		return e, err
	}
	if err := e.pg.ExecContext(ctx, "postgres", "CREATE DATABASE "+benchDB); err != nil {
		return e, err
	}
	ddl, err := os.ReadFile(filepath.Join(e.root, "sql", "outbox.sql"))
	if err != nil {
		return e, fmt.Errorf("read the outbox DDL: %w", err)
	}
	if err := e.pg.ExecContext(ctx, benchDB, string(ddl)); err != nil {
		return e, err
	}
	// What the relay would create itself; made here because the slots must
	// exist before the backlog is written.
	if err := e.pg.ExecContext(ctx, benchDB, `CREATE PUBLICATION `+publication+` FOR TABLE events WITH (publish = 'insert')`); err != nil {
		return e, err
	}
	e.dbURL = e.pg.URL(benchDB)
	if pid, err := os.ReadFile(filepath.Join(e.pg.DataDir(), "postmaster.pid")); err == nil {
		line, _, _ := strings.Cut(string(pid), "\n")
		postmaster, _ = strconv.Atoi(strings.TrimSpace(line))
	}
	if e.admin, err = pgx.Connect(ctx, e.pg.AdminURL(benchDB)); err != nil {
		return e, fmt.Errorf("connect to postgres: %w", err)
	}
	if err := e.admin.QueryRow(ctx, `SHOW server_version`).Scan(&e.pgVer); err != nil {
		return e, err
	}

	logf("starting NATS (internal/testenv defaults, in a child process)")
	if e.nats, err = startNATSChild(); err != nil {
		return e, err
	}
	if e.nc, err = nats.Connect(e.nats.url, nats.Name("bench"), nats.MaxReconnects(-1)); err != nil {
		return e, fmt.Errorf("connect to nats: %w", err)
	}
	if e.js, err = jetstream.New(e.nc); err != nil {
		return e, err
	}
	return e, nil
}

func (e *env) close() {
	if e.nc != nil {
		e.nc.Close()
	}
	if e.admin != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		_ = e.admin.Close(ctx) // the server goes next
		cancel()
	}
	if e.nats != nil {
		e.nats.stop()
	}
	if e.pg != nil {
		if err := e.pg.Close(); err != nil {
			fmt.Fprintf(os.Stderr, "bench: %v\n", err)
		}
	}
	if e.tmp != "" {
		_ = os.RemoveAll(e.tmp) // temporary files only
	}
}

// repoRoot finds the module root from the working directory up.
func repoRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		data, err := os.ReadFile(filepath.Join(dir, "go.mod"))
		if err == nil && strings.Contains(string(data), "module github.com/outbox-relay/outbox-relay") {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("run the benchmark inside the outbox-relay module (no go.mod found above the working directory)")
		}
		dir = parent
	}
}

// exec runs sql on the admin connection.
func (e *env) exec(ctx context.Context, sql string, args ...any) error {
	if _, err := e.admin.Exec(ctx, sql, args...); err != nil {
		return fmt.Errorf("%s: %w", firstLine(sql), err)
	}
	return nil
}

func firstLine(s string) string {
	s, _, _ = strings.Cut(strings.TrimSpace(s), "\n")
	return s
}

// resetOutbox drops every slot, empties the outbox and creates slots at the
// current WAL position, so the next backlog is all they hold.
func (e *env) resetOutbox(ctx context.Context, slots ...string) error {
	rows, err := e.admin.Query(ctx, `SELECT slot_name FROM pg_replication_slots`)
	if err != nil {
		return err
	}
	existing, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return err
	}
	for _, s := range existing {
		if err := e.dropSlot(ctx, s); err != nil {
			return err
		}
	}
	if err := e.exec(ctx, `TRUNCATE events`); err != nil {
		return err
	}
	for _, s := range slots {
		if err := e.exec(ctx, `SELECT pg_create_logical_replication_slot($1, 'pgoutput')`, s); err != nil {
			return err
		}
	}
	return e.exec(ctx, `CHECKPOINT`)
}

// dropSlot drops slot if it exists, waiting for a consumer that just
// disconnected to let go of it.
func (e *env) dropSlot(ctx context.Context, slot string) error {
	deadline := time.Now().Add(30 * time.Second)
	for {
		var active *bool
		err := e.admin.QueryRow(ctx, `SELECT active FROM pg_replication_slots WHERE slot_name = $1`, slot).Scan(&active)
		if errors.Is(err, pgx.ErrNoRows) {
			return nil
		}
		if err != nil {
			return err
		}
		if active != nil && !*active {
			if _, err := e.admin.Exec(ctx, `SELECT pg_drop_replication_slot($1)`, slot); err == nil {
				return nil
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("slot %s still active after 30s", slot)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// freshStream returns a stream name not used before in this run.
func (e *env) freshStream(prefix string) string {
	e.streams++
	return fmt.Sprintf("%s_%d", prefix, e.streams)
}

func (e *env) deleteStream(ctx context.Context, name string) {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	_ = e.js.DeleteStream(ctx, name) // a stream never created is fine
}

// streamState reads a stream's state; ok is false while it does not exist.
func (e *env) streamState(ctx context.Context, name string) (jetstream.StreamState, bool, error) {
	return streamStateIn(ctx, e.js, name)
}

// streamStateIn is streamState on the server js talks to.
func streamStateIn(ctx context.Context, js jetstream.JetStream, name string) (jetstream.StreamState, bool, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	s, err := js.Stream(ctx, name)
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		return jetstream.StreamState{}, false, nil
	}
	if err != nil {
		return jetstream.StreamState{}, false, err
	}
	return s.CachedInfo().State, true, nil
}

// natsChild is a NATS server run by this same binary in a child process.
type natsChild struct {
	cmd   *exec.Cmd
	stdin io.WriteCloser
	url   string
	done  chan struct{}
}

// startNATSChild starts a NATS server in a child process. With a store
// directory and a port ("0": any free one) as args, the server keeps its
// JetStream store there: a child started later with the same store and the
// first one's port is that server restarted.
func startNATSChild(args ...string) (*natsChild, error) {
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(self, append([]string{serveNATSArg}, args...)...)
	cmd.Stderr = os.Stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGTERM}
	c := &natsChild{cmd: cmd, stdin: stdin, done: make(chan struct{})}
	if err := startLocked(cmd, c.done); err != nil {
		return nil, fmt.Errorf("start nats child: %w", err)
	}
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil {
		c.stop()
		return nil, fmt.Errorf("nats child: %w", err)
	}
	c.url = strings.TrimSpace(strings.TrimPrefix(line, "url="))
	if !strings.HasPrefix(c.url, "nats://") {
		c.stop()
		return nil, fmt.Errorf("nats child said %q", line)
	}
	go func() { _, _ = io.Copy(io.Discard, stdout) }()
	return c, nil
}

func (c *natsChild) pid() int { return c.cmd.Process.Pid }

// port returns the port of the server's client URL.
func (c *natsChild) port() string {
	_, port, _ := strings.Cut(strings.TrimPrefix(c.url, "nats://"), ":")
	return port
}

func (c *natsChild) stop() {
	_ = c.stdin.Close() // the child exits on end of input
	select {
	case <-c.done:
	case <-time.After(30 * time.Second):
		_ = c.cmd.Process.Kill()
		<-c.done
	}
}

// startLocked starts cmd and reaps it into done, from a goroutine that keeps
// its OS thread: Pdeathsig fires when the thread that forked the child ends.
func startLocked(cmd *exec.Cmd, done chan struct{}) error {
	started := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		if err := cmd.Start(); err != nil {
			started <- err
			close(done)
			return
		}
		started <- nil
		_ = cmd.Wait() // exit status is not interesting here
		close(done)
	}()
	return <-started
}

// serveNATS is the child's whole life: a NATS server as the tests run it,
// until standard input ends or a signal comes. args are empty, or a store
// directory and a port (see startNATSChild).
func serveNATS(args []string) int {
	var opts []testenv.NATSOption
	if len(args) == 2 {
		store := args[0]
		port, err := strconv.Atoi(args[1])
		if err != nil {
			fmt.Fprintf(os.Stderr, "bench nats child: port %q: %v\n", args[1], err)
			return 1
		}
		opts = append(opts, testenv.WithNATSConfig(func(o *server.Options) {
			o.StoreDir = store
			if port > 0 {
				o.Port = port
			}
		}))
	}
	n, err := testenv.NewNATS(opts...)
	if err != nil {
		fmt.Fprintf(os.Stderr, "bench nats child: %v\n", err)
		return 1
	}
	fmt.Printf("url=%s\n", n.URL())
	stop := make(chan struct{})
	go func() {
		_, _ = io.Copy(io.Discard, os.Stdin)
		close(stop)
	}()
	sig := make(chan os.Signal, 1)
	signalNotify(sig)
	select {
	case <-stop:
	case <-sig:
	}
	if err := n.Close(); err != nil {
		fmt.Fprintf(os.Stderr, "bench nats child: %v\n", err)
		return 1
	}
	return 0
}
