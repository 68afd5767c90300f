package testenv

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

const (
	// defaultPGBin is where Debian/Ubuntu's postgresql-15 package installs
	// the server binaries; they are not on PATH there.
	defaultPGBin = "/usr/lib/postgresql/15/bin"

	// pgStartTimeout bounds how long Start waits for the server to accept
	// connections, including crash recovery after an immediate stop.
	pgStartTimeout = 30 * time.Second

	// pgStopTimeout bounds a graceful stop before escalating to immediate
	// shutdown and then SIGKILL, so Stop and cleanup can never hang.
	pgStopTimeout = 30 * time.Second

	// pgStartAttempts is how often StartPostgres picks a new port when the
	// one from FreePort was taken by someone else before postgres bound it.
	pgStartAttempts = 4

	// logTailLines is how much of the server log failure messages include.
	logTailLines = 40

	// sqlstateCannotConnectNow is what postgres answers while it is still
	// starting up or running crash recovery.
	sqlstateCannotConnectNow = "57P03"

	// maxSocketDirLen keeps "<dir>/.s.PGSQL.<port>" below the 107-byte
	// sun_path limit of Unix sockets.
	maxSocketDirLen = 90
)

// PostgresOption configures a cluster started by StartPostgres or
// NewPostgres.
type PostgresOption func(*postgresConfig)

type postgresConfig struct {
	binDir   string
	settings []pgSetting
	hba      []string
	files    []pgFile
}

type pgSetting struct{ key, value string }

type pgFile struct {
	name string
	data []byte
}

// WithPostgresConfig adds a postgresql.conf setting, e.g.
// WithPostgresConfig("wal_sender_timeout", "5s"). The value is written
// single-quoted, which postgres accepts for every setting type. Settings are
// appended after the harness defaults, so they override them.
func WithPostgresConfig(key, value string) PostgresOption {
	return func(c *postgresConfig) {
		c.settings = append(c.settings, pgSetting{key: key, value: value})
	}
}

// WithPostgresBin runs the server binaries in dir (initdb, postgres) instead
// of those of PG_BIN or /usr/lib/postgresql/15/bin: another major version,
// say, from PostgresBinFor. The test fails, never skips, when they are
// missing.
func WithPostgresBin(dir string) PostgresOption {
	return func(c *postgresConfig) { c.binDir = dir }
}

// WithPostgresHBA puts lines at the top of pg_hba.conf, before the generated
// trust entries. pg_hba.conf is first-match, so these lines take precedence:
// e.g. "host all all 127.0.0.1/32 scram-sha-256" makes TCP clients need a
// password, and "hostnossl all all 127.0.0.1/32 reject" forces TLS. The
// harness's own connections (Exec, Connect, readiness checks) use the Unix
// socket, so they keep working unless a "local" line is added.
func WithPostgresHBA(lines ...string) PostgresOption {
	return func(c *postgresConfig) {
		c.hba = append(c.hba, lines...)
	}
}

// WithPostgresFile writes a file into the data directory before the server
// starts, owned by the server's OS user with mode 0600. postgres refuses TLS
// keys readable by others or owned by another non-root user, so TLS tests
// should place server.crt/server.key here and reference them with relative
// paths (resolved against the data directory), e.g.
// WithPostgresConfig("ssl_key_file", "server.key").
func WithPostgresFile(name string, data []byte) PostgresOption {
	return func(c *postgresConfig) {
		c.files = append(c.files, pgFile{name: name, data: data})
	}
}

// Postgres is a throwaway PostgreSQL cluster owned by one test or program.
// Its port and data directory stay the same across Stop/Start, like a real
// server restart.
type Postgres struct {
	binDir  string
	dir     string // owns everything: data dir, log, Unix socket
	dataDir string
	logPath string
	owner   *osUser // nil when the server runs as the current user
	port    int     // fixed once StartPostgres returns

	// mu serializes Start/Stop so a restart cannot race with cleanup.
	mu   sync.Mutex
	proc *pgProcess
}

// osUser is the unprivileged account postgres runs as when tests run as root.
type osUser struct {
	name     string
	uid, gid int
}

// pgProcess is one run of the postmaster. done is closed after the process
// has been reaped; err is written before that.
type pgProcess struct {
	cmd  *exec.Cmd
	done chan struct{}
	err  error
}

// StartPostgres initializes a fresh cluster in a temporary directory, starts
// it on a free 127.0.0.1 port with wal_level=logical and waits until it
// accepts connections. The cluster is stopped (immediate mode) and its
// directory removed in t.Cleanup. It fails the test, never skips it, when
// the PostgreSQL binaries are missing.
func StartPostgres(t testing.TB, opts ...PostgresOption) *Postgres {
	t.Helper()
	p, err := NewPostgres(opts...)
	if err != nil {
		t.Fatalf("testenv: %v", err)
	}
	t.Cleanup(func() {
		if err := p.stop("immediate"); err != nil {
			t.Errorf("testenv: cleanup postgres: %v", err)
		}
		// Read before the directory, and with it the log, is removed.
		if t.Failed() {
			t.Logf("testenv: postgres log tail (%s):\n%s", p.logPath, p.logTail())
		}
		if err := p.removeDir(); err != nil {
			t.Errorf("testenv: cleanup postgres: %v", err)
		}
	})
	return p
}

// NewPostgres is StartPostgres for callers without a testing.TB, such as the
// demo: it returns an error instead of failing a test, and the caller must
// call Close. On error nothing is left behind.
func NewPostgres(opts ...PostgresOption) (p *Postgres, err error) {
	var cfg postgresConfig
	for _, o := range opts {
		o(&cfg)
	}

	binDir := cfg.binDir
	if binDir == "" {
		if binDir, err = findPostgresBin(); err != nil {
			return nil, fmt.Errorf("start postgres: %w", err)
		}
	} else if missing := missingPGBinaries(binDir); len(missing) > 0 {
		return nil, fmt.Errorf("start postgres: %s lacks %s (scripts/install-postgres.sh <major> installs them)", binDir, strings.Join(missing, ", "))
	}
	owner, err := serverUser()
	if err != nil {
		return nil, fmt.Errorf("start postgres: %w", err)
	}
	if binDir, err = reachableBin(binDir, owner); err != nil {
		return nil, fmt.Errorf("start postgres: %w", err)
	}
	dir, err := makeClusterDir(owner)
	if err != nil {
		return nil, fmt.Errorf("start postgres: %w", err)
	}
	p = &Postgres{
		binDir:  binDir,
		dir:     dir,
		dataDir: filepath.Join(dir, "data"),
		logPath: filepath.Join(dir, "postgres.log"),
		owner:   owner,
	}
	// From here on the directory, and possibly a half-started server, exist;
	// a failed start must not leave them behind.
	defer func() {
		if err != nil {
			err = fmt.Errorf("start postgres: %w", err)
			if cerr := p.Close(); cerr != nil {
				err = fmt.Errorf("%w (cleanup: %w)", err, cerr)
			}
			p = nil
		}
	}()

	if err := p.initdb(); err != nil {
		return nil, err
	}
	if err := p.configure(cfg); err != nil {
		return nil, err
	}

	p.mu.Lock()
	defer p.mu.Unlock()
	for attempt := 1; ; attempt++ {
		port, err := PickFreePort()
		if err != nil {
			return nil, err
		}
		p.port = port
		err = p.start()
		if err == nil {
			return p, nil
		}
		// FreePort is inherently racy with parallel tests; a lost race
		// shows up as a bind failure, so simply try another port.
		if attempt < pgStartAttempts && strings.Contains(err.Error(), "Address already in use") {
			continue
		}
		return nil, err
	}
}

// Close stops the server in immediate mode, since the data is about to be
// discarded and a shutdown checkpoint would only cost time, and removes the
// cluster directory. It is for clusters from NewPostgres; StartPostgres
// registers the equivalent in t.Cleanup. Calling it again is harmless.
func (p *Postgres) Close() error {
	return errors.Join(p.stop("immediate"), p.removeDir())
}

// removeDir deletes the cluster directory: data, log and socket.
func (p *Postgres) removeDir() error {
	if err := os.RemoveAll(p.dir); err != nil {
		return fmt.Errorf("remove %s: %w", p.dir, err)
	}
	return nil
}

// URL returns a connection URL for database db over TCP on 127.0.0.1 as the
// superuser "postgres" (no password, sslmode=disable), as the relay would use.
func (p *Postgres) URL(db string) string {
	return fmt.Sprintf("postgres://postgres@%s:%d/%s?sslmode=disable", loopbackHost, p.port, url.PathEscape(db))
}

// AdminURL returns a superuser URL for database db over the cluster's Unix
// socket. It matches "local" pg_hba lines, so it keeps working after
// WithPostgresHBA tightened TCP access.
func (p *Postgres) AdminURL(db string) string {
	return fmt.Sprintf("postgres://postgres@/%s?host=%s&port=%d&sslmode=disable",
		url.PathEscape(db), url.QueryEscape(p.dir), p.port)
}

// Port returns the TCP port the cluster listens on; it survives restarts.
func (p *Postgres) Port() int { return p.port }

// DataDir returns the cluster's data directory (PGDATA).
func (p *Postgres) DataDir() string { return p.dataDir }

// LogPath returns the server log file, which accumulates across restarts.
func (p *Postgres) LogPath() string { return p.logPath }

// CreateDatabase creates database name and returns its URL (see URL).
func (p *Postgres) CreateDatabase(t testing.TB, name string) string {
	t.Helper()
	p.Exec(t, "postgres", "CREATE DATABASE "+pgx.Identifier{name}.Sanitize())
	return p.URL(name)
}

// Exec runs sql in database db as superuser over the Unix socket and fails
// the test on error. Without args the simple protocol is used, so sql may
// contain several statements; with args it must be a single statement.
func (p *Postgres) Exec(t testing.TB, db, sql string, args ...any) {
	t.Helper()
	// Not t.Context(): that is already canceled while cleanups run, and
	// cleanups are a natural place to drop slots or publications.
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := p.ExecContext(ctx, db, sql, args...); err != nil {
		t.Fatalf("testenv: %v", err)
	}
}

// ExecContext is Exec for callers without a testing.TB: it returns the
// error instead of failing a test.
func (p *Postgres) ExecContext(ctx context.Context, db, sql string, args ...any) error {
	conn, err := pgx.Connect(ctx, p.AdminURL(db))
	if err != nil {
		return fmt.Errorf("postgres exec: connect to %s: %w", db, err)
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, sql, args...); err != nil {
		return fmt.Errorf("postgres exec on %s: %q: %w", db, sql, err)
	}
	return nil
}

// Connect opens a superuser connection to database db over the Unix socket;
// it is closed in t.Cleanup. Use pgx.Connect(ctx, p.URL(db)) to test TCP.
func (p *Postgres) Connect(t testing.TB, db string) *pgx.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, p.AdminURL(db))
	if err != nil {
		t.Fatalf("testenv: postgres connect to %s: %v", db, err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = conn.Close(ctx) // the server may already be stopped
	})
	return conn
}

// Stop shuts the server down and waits for it to exit. mode follows
// pg_ctl -m: "smart" (wait for clients), "fast" (disconnect clients, clean
// shutdown checkpoint) or "immediate" (no checkpoint, crash recovery on next
// start). Stopping a stopped server is a no-op.
func (p *Postgres) Stop(t testing.TB, mode string) {
	t.Helper()
	if err := p.stop(mode); err != nil {
		t.Fatalf("testenv: stop postgres: %v", err)
	}
}

// Start starts a stopped server on the same port and data directory and
// waits until it accepts connections.
func (p *Postgres) Start(t testing.TB) {
	t.Helper()
	p.mu.Lock()
	defer p.mu.Unlock()
	if err := p.start(); err != nil {
		t.Fatalf("testenv: start postgres: %v", err)
	}
}

// Restart stops the server with mode (see Stop) and starts it again.
func (p *Postgres) Restart(t testing.TB, mode string) {
	t.Helper()
	p.Stop(t, mode)
	p.Start(t)
}

// findPostgresBin locates a directory holding initdb and postgres.
func findPostgresBin() (string, error) {
	if dir := os.Getenv("PG_BIN"); dir != "" {
		if missing := missingPGBinaries(dir); len(missing) > 0 {
			return "", fmt.Errorf("PG_BIN=%s lacks %s: point PG_BIN at the directory containing them "+
				"(scripts/install-postgres.sh <major> installs 14 to 18 and prints it), "+
				"or unset it after installing them with `apt-get install postgresql-15`",
				dir, strings.Join(missing, ", "))
		}
		return dir, nil
	}
	candidates := []string{defaultPGBin}
	if out, err := exec.Command("pg_config", "--bindir").Output(); err == nil {
		// On Debian it is usually the default, which the error below
		// should not list twice.
		if dir := strings.TrimSpace(string(out)); dir != defaultPGBin {
			candidates = append(candidates, dir)
		}
	}
	for _, dir := range candidates {
		if len(missingPGBinaries(dir)) == 0 {
			return dir, nil
		}
	}
	return "", fmt.Errorf("PostgreSQL server binaries (initdb, postgres) not found in %s: "+
		"install them with `apt-get install postgresql-15`, or set PG_BIN to the directory containing them",
		strings.Join(candidates, ", "))
}

func missingPGBinaries(dir string) []string {
	var missing []string
	for _, name := range []string{"initdb", "postgres"} {
		st, err := os.Stat(filepath.Join(dir, name))
		if err != nil || st.IsDir() || st.Mode()&0o111 == 0 {
			missing = append(missing, name)
		}
	}
	return missing
}

// serverUser returns the account to run postgres as: nil (the current user)
// normally, or "postgres" when running as root, which initdb and postgres
// refuse outright.
func serverUser() (*osUser, error) {
	if os.Geteuid() != 0 {
		return nil, nil
	}
	u, err := user.Lookup("postgres")
	if err != nil {
		return nil, fmt.Errorf("running as root, which postgres refuses, and cannot find OS user postgres to run it as "+
			"(`apt-get install postgresql-15` creates it): %w", err)
	}
	uid, err := strconv.Atoi(u.Uid)
	if err != nil {
		return nil, fmt.Errorf("parse uid of user postgres: %w", err)
	}
	gid, err := strconv.Atoi(u.Gid)
	if err != nil {
		return nil, fmt.Errorf("parse gid of user postgres: %w", err)
	}
	return &osUser{name: u.Username, uid: uid, gid: gid}, nil
}

// makeClusterDir creates the cluster's private directory. It is not
// t.TempDir(): that is created 0700 by the test user, so with tests running
// as root the postgres user could neither create the data directory nor its
// socket there.
func makeClusterDir(owner *osUser) (string, error) {
	dir, err := os.MkdirTemp("", "testenv-pg-")
	if err != nil {
		return "", fmt.Errorf("create cluster dir: %w", err)
	}
	if len(dir) > maxSocketDirLen {
		// A long TMPDIR would make the Unix socket path too long.
		_ = os.Remove(dir)
		if dir, err = os.MkdirTemp("/tmp", "testenv-pg-"); err != nil {
			return "", fmt.Errorf("create cluster dir: %w", err)
		}
	}
	if owner != nil {
		if err := os.Chown(dir, owner.uid, owner.gid); err != nil {
			_ = os.RemoveAll(dir)
			return "", fmt.Errorf("chown cluster dir to %s: %w", owner.name, err)
		}
	}
	return dir, nil
}

// command prepares a PostgreSQL binary to run as the server user.
func (p *Postgres) command(name string, args ...string) *exec.Cmd {
	cmd := exec.Command(filepath.Join(p.binDir, name), args...)
	// The test's working directory may not be accessible to the postgres
	// user; the cluster dir is.
	cmd.Dir = p.dir
	cmd.Env = serverEnv()
	// A process group of its own: a terminal's Ctrl-C goes to the whole
	// foreground group, and postgres would shut itself down on it before its
	// owner (the test or the demo) has stopped the clients depending on it.
	// Stopping is the owner's job, or Pdeathsig's if the owner dies.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if p.owner != nil {
		cmd.SysProcAttr.Credential = &syscall.Credential{Uid: uint32(p.owner.uid), Gid: uint32(p.owner.gid)}
	}
	return cmd
}

// serverEnv drops PG* variables (PGPORT, PGDATA, ...), which would otherwise
// change server defaults, and forces the C locale so log messages are English
// and bind failures can be recognized.
func serverEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		if strings.HasPrefix(kv, "PG") || strings.HasPrefix(kv, "LC_") || strings.HasPrefix(kv, "LANG=") {
			continue
		}
		env = append(env, kv)
	}
	return append(env, "LC_ALL=C", "LANG=C")
}

func (p *Postgres) initdb() error {
	cmd := p.command("initdb",
		"-D", p.dataDir,
		"-A", "trust",
		"-U", "postgres",
		"-E", "UTF8",
		"--locale=C", // containers often lack other locales
		"--no-sync",  // throwaway cluster: durability against OS crash is moot
	)
	cmd.WaitDelay = 5 * time.Second
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("initdb: %w\n%s", err, out)
	}
	return nil
}

// configure writes postgresql.conf settings, pg_hba.conf and extra files.
func (p *Postgres) configure(cfg postgresConfig) error {
	settings := []pgSetting{
		{"listen_addresses", loopbackHost},
		// The cluster's own directory, so no /var/run/postgresql is needed
		// and parallel clusters cannot collide.
		{"unix_socket_directories", p.dir},
		{"wal_level", "logical"},
		{"max_replication_slots", "20"},
		{"max_wal_senders", "20"},
		{"max_connections", "100"},
		{"shared_buffers", "64MB"},
		// Speed only: the OS does not crash under a test, and an immediate
		// stop still exercises crash recovery because WAL reaches the page
		// cache. synchronous_commit stays on so commit semantics are real.
		{"fsync", "off"},
		{"full_page_writes", "off"},
	}
	settings = append(settings, cfg.settings...)

	var b strings.Builder
	b.WriteString("\n# Added by internal/testenv; later lines win.\n")
	for _, s := range settings {
		fmt.Fprintf(&b, "%s = '%s'\n", s.key, strings.ReplaceAll(s.value, "'", "''"))
	}
	if err := appendFile(filepath.Join(p.dataDir, "postgresql.conf"), b.String()); err != nil {
		return fmt.Errorf("write postgresql.conf: %w", err)
	}

	if err := p.writeHBA(cfg.hba); err != nil {
		return err
	}

	for _, f := range cfg.files {
		if !filepath.IsLocal(f.name) {
			return fmt.Errorf("WithPostgresFile(%q): name must be relative to the data directory", f.name)
		}
		path := filepath.Join(p.dataDir, f.name)
		if err := os.WriteFile(path, f.data, 0o600); err != nil {
			return fmt.Errorf("write %s: %w", f.name, err)
		}
		if p.owner != nil {
			if err := os.Chown(path, p.owner.uid, p.owner.gid); err != nil {
				return fmt.Errorf("chown %s: %w", f.name, err)
			}
		}
	}
	return nil
}

// writeHBA prepends extra lines and makes sure loopback TCP is trusted for
// normal and replication connections, whatever initdb generated.
func (p *Postgres) writeHBA(extra []string) error {
	path := filepath.Join(p.dataDir, "pg_hba.conf")
	orig, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("read pg_hba.conf: %w", err)
	}
	var b strings.Builder
	if len(extra) > 0 {
		b.WriteString("# Added by internal/testenv (WithPostgresHBA); first match wins.\n")
		for _, l := range extra {
			b.WriteString(l + "\n")
		}
	}
	b.Write(orig)
	for _, need := range [][]string{
		{"host", "all", "all", "127.0.0.1/32", "trust"},
		{"host", "replication", "all", "127.0.0.1/32", "trust"},
	} {
		if !hbaHasLine(string(orig), need) {
			b.WriteString(strings.Join(need, " ") + "\n")
		}
	}
	// Rewriting the existing file keeps its owner (the server user).
	if err := os.WriteFile(path, []byte(b.String()), 0o600); err != nil {
		return fmt.Errorf("write pg_hba.conf: %w", err)
	}
	return nil
}

func hbaHasLine(hba string, fields []string) bool {
	for _, line := range strings.Split(hba, "\n") {
		if i := strings.IndexByte(line, '#'); i >= 0 {
			line = line[:i]
		}
		if strings.Join(strings.Fields(line), " ") == strings.Join(fields, " ") {
			return true
		}
	}
	return false
}

func appendFile(path, text string) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		return err
	}
	if _, err := f.WriteString(text); err != nil {
		_ = f.Close()
		return err
	}
	return f.Close()
}

// start launches the postmaster and waits for it to accept connections.
// The caller holds p.mu.
func (p *Postgres) start() error {
	if p.proc != nil {
		select {
		case <-p.proc.done:
		default:
			return errors.New("postgres is already running")
		}
	}
	if err := waitPortFree(p.port, 5*time.Second); err != nil {
		// Reported in postgres's own words so StartPostgres can retry.
		return fmt.Errorf("could not bind 127.0.0.1:%d: Address already in use: %w", p.port, err)
	}

	logf, err := os.OpenFile(p.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return fmt.Errorf("open server log: %w", err)
	}
	defer logf.Close() // the child keeps its own descriptor

	cmd := p.command("postgres", "-D", p.dataDir, "-p", strconv.Itoa(p.port))
	cmd.Stdout = logf
	cmd.Stderr = logf
	// If the test binary dies without running cleanups (e.g. -timeout
	// panic), SIGQUIT makes the postmaster do an immediate shutdown
	// instead of lingering forever.
	cmd.SysProcAttr.Pdeathsig = syscall.SIGQUIT

	proc, err := startChild(cmd)
	if err != nil {
		return fmt.Errorf("run postgres: %w", err)
	}
	p.proc = proc

	if err := p.waitReady(proc); err != nil {
		_ = proc.stop(syscall.SIGQUIT, 10*time.Second)
		return fmt.Errorf("%w\nlog tail (%s):\n%s", err, p.logPath, p.logTail())
	}
	return nil
}

// startChild starts cmd, whose SysProcAttr asks for a Pdeathsig, and reaps
// it in the background; done is closed once it has exited.
func startChild(cmd *exec.Cmd) (*pgProcess, error) {
	proc := &pgProcess{cmd: cmd, done: make(chan struct{})}
	launched := make(chan error, 1)
	go func() {
		// Pdeathsig fires when the forking *thread* exits, not the process.
		// Keeping this goroutine on its thread until the child is reaped
		// stops the Go runtime from retiring that thread under it.
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		if err := cmd.Start(); err != nil {
			launched <- err
			return
		}
		launched <- nil
		proc.err = cmd.Wait()
		close(proc.done)
	}()
	if err := <-launched; err != nil {
		return nil, err
	}
	return proc, nil
}

// waitReady polls until postgres answers on its socket. Any answer other
// than "starting up" counts, like pg_isready: an authentication error still
// proves the server accepts connections.
func (p *Postgres) waitReady(proc *pgProcess) error {
	deadline := time.Now().Add(pgStartTimeout)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		conn, err := pgconn.Connect(ctx, p.AdminURL("postgres"))
		if err == nil {
			_ = conn.Close(ctx)
			cancel()
			return nil
		}
		cancel()
		var pgErr *pgconn.PgError
		if errors.As(err, &pgErr) && pgErr.Code != sqlstateCannotConnectNow {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("postgres not accepting connections after %s: %w", pgStartTimeout, err)
		}
		select {
		case <-proc.done:
			return fmt.Errorf("postgres exited during startup: %w", proc.err)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// stop shuts the server down in the given pg_ctl mode; a stopped server is
// left alone.
func (p *Postgres) stop(mode string) error {
	sig, err := stopSignal(mode)
	if err != nil {
		return err
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.proc == nil {
		return nil
	}
	err = p.proc.stop(sig, pgStopTimeout)
	p.proc = nil
	return err
}

// stopSignal maps pg_ctl shutdown modes to the postmaster signals pg_ctl
// itself sends; signalling directly lets us wait on the child we own.
func stopSignal(mode string) (syscall.Signal, error) {
	switch mode {
	case "smart":
		return syscall.SIGTERM, nil
	case "fast":
		return syscall.SIGINT, nil
	case "immediate":
		return syscall.SIGQUIT, nil
	default:
		return 0, fmt.Errorf("unknown stop mode %q (want smart, fast or immediate)", mode)
	}
}

// stop signals the postmaster and waits for it to exit, escalating to
// immediate shutdown and finally SIGKILL so that it never hangs.
func (proc *pgProcess) stop(sig syscall.Signal, timeout time.Duration) error {
	steps := []struct {
		sig     syscall.Signal
		timeout time.Duration
	}{{sig, timeout}, {syscall.SIGQUIT, 10 * time.Second}, {syscall.SIGKILL, 10 * time.Second}}
	for i, s := range steps {
		if err := proc.cmd.Process.Signal(s.sig); err != nil && !errors.Is(err, os.ErrProcessDone) {
			return fmt.Errorf("signal postgres: %w", err)
		}
		select {
		case <-proc.done:
			if i > 0 {
				return fmt.Errorf("postgres ignored %v for %s; stopped it with %v", sig, timeout, s.sig)
			}
			return nil
		case <-time.After(s.timeout):
		}
	}
	return fmt.Errorf("postgres (pid %d) did not exit even after SIGKILL", proc.cmd.Process.Pid)
}

// logTail returns the last lines of the server log for failure messages.
func (p *Postgres) logTail() string { return tailFile(p.logPath) }
