package testenv

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
)

// PgBouncer pool modes.
const (
	PoolSession     = "session"
	PoolTransaction = "transaction"
)

// PgBouncerOption configures a pooler started by StartPgBouncer.
type PgBouncerOption func(*pgBouncerConfig)

type pgBouncerConfig struct {
	mode         string
	poolSize     int
	ignore       []string
	connectQuery string
}

// WithPoolMode sets pool_mode: PoolSession (the default) or PoolTransaction.
func WithPoolMode(mode string) PgBouncerOption {
	return func(c *pgBouncerConfig) { c.mode = mode }
}

// WithPoolSize sets default_pool_size, the server connections per database
// and user (default 2).
func WithPoolSize(n int) PgBouncerOption {
	return func(c *pgBouncerConfig) { c.poolSize = n }
}

// WithIgnoreStartupParameters sets ignore_startup_parameters. PgBouncer
// refuses a client whose startup packet carries a parameter it does not
// track unless it is listed here, and then drops it silently: what users
// do to make clients that set idle_session_timeout or tcp_keepalives_*
// connect at all.
func WithIgnoreStartupParameters(names ...string) PgBouncerOption {
	return func(c *pgBouncerConfig) { c.ignore = append(c.ignore, names...) }
}

// WithConnectQuery sets the query PgBouncer runs on every new server
// connection, e.g. "SET idle_session_timeout = 5000" to give every pooled
// backend a setting the clients' startup parameters no longer carry.
func WithConnectQuery(query string) PgBouncerOption {
	return func(c *pgBouncerConfig) { c.connectQuery = query }
}

// PgBouncer is a pgbouncer process in front of a test PostgreSQL, listening
// on a free 127.0.0.1 port, with trust authentication for user postgres.
type PgBouncer struct {
	dir     string
	logPath string
	port    int
	proc    *pgProcess
}

// StartPgBouncer starts pgbouncer as a child process in front of pg (every
// database, TCP to 127.0.0.1) and waits until it accepts connections; it is
// stopped in t.Cleanup. It fails the test, never skips it, when pgbouncer is
// not installed. Like postgres it runs as the OS user postgres when the test
// runs as root, which pgbouncer refuses.
func StartPgBouncer(t testing.TB, pg *Postgres, opts ...PgBouncerOption) *PgBouncer {
	t.Helper()
	cfg := pgBouncerConfig{mode: PoolSession, poolSize: 2}
	for _, o := range opts {
		o(&cfg)
	}
	bin, err := findPgBouncer()
	if err != nil {
		t.Fatalf("testenv: %v", err)
	}
	owner, err := serverUser()
	if err != nil {
		t.Fatalf("testenv: start pgbouncer: %v", err)
	}
	dir, err := makeClusterDir(owner)
	if err != nil {
		t.Fatalf("testenv: start pgbouncer: %v", err)
	}
	b := &PgBouncer{dir: dir, logPath: filepath.Join(dir, "pgbouncer.log")}
	t.Cleanup(func() {
		b.stop()
		if t.Failed() {
			t.Logf("testenv: pgbouncer log tail (%s):\n%s", b.logPath, tailFile(b.logPath))
		}
		_ = os.RemoveAll(dir) // a temporary directory
	})
	// As for postgres, another process may take the free port before
	// pgbouncer binds it; pgbouncer then exits, and another port is tried.
	for attempt := 1; ; attempt++ {
		if b.port, err = PickFreePort(); err != nil {
			t.Fatalf("testenv: start pgbouncer: %v", err)
		}
		if err := b.writeConfig(cfg, pg.Port(), owner); err != nil {
			t.Fatalf("testenv: start pgbouncer: %v", err)
		}
		err := b.start(bin, owner)
		if err == nil {
			return b
		}
		if !errors.Is(err, errExited) || attempt == pgStartAttempts {
			t.Fatalf("testenv: start pgbouncer: %v\nlog tail (%s):\n%s", err, b.logPath, tailFile(b.logPath))
		}
	}
}

// errExited is a pgbouncer that exited while starting, as it does when its
// port was taken.
var errExited = errors.New("pgbouncer exited during startup")

// findPgBouncer locates the pgbouncer binary: PGBOUNCER_BIN, PATH, or where
// Debian installs it (/usr/sbin, often not on a user's PATH).
func findPgBouncer() (string, error) {
	if bin := os.Getenv("PGBOUNCER_BIN"); bin != "" {
		return bin, nil
	}
	if bin, err := exec.LookPath("pgbouncer"); err == nil {
		return bin, nil
	}
	if st, err := os.Stat("/usr/sbin/pgbouncer"); err == nil && st.Mode()&0o111 != 0 {
		return "/usr/sbin/pgbouncer", nil
	}
	return "", errors.New("pgbouncer not found on PATH or in /usr/sbin: install it with `apt-get install pgbouncer`, or set PGBOUNCER_BIN")
}

func (b *PgBouncer) writeConfig(cfg pgBouncerConfig, pgPort int, owner *osUser) error {
	database := fmt.Sprintf("host=%s port=%d", loopbackHost, pgPort)
	if cfg.connectQuery != "" {
		database += " connect_query='" + strings.ReplaceAll(cfg.connectQuery, "'", "''") + "'"
	}
	var ini strings.Builder
	fmt.Fprintf(&ini, "[databases]\n* = %s\n\n[pgbouncer]\n", database)
	settings := [][2]string{
		{"listen_addr", loopbackHost},
		{"listen_port", strconv.Itoa(b.port)},
		{"unix_socket_dir", ""},
		{"auth_type", "trust"},
		{"auth_file", filepath.Join(b.dir, "userlist.txt")},
		{"pool_mode", cfg.mode},
		{"default_pool_size", strconv.Itoa(cfg.poolSize)},
		{"logfile", b.logPath},
		{"ignore_startup_parameters", strings.Join(cfg.ignore, ",")},
		{"server_login_retry", "1"},
	}
	for _, s := range settings {
		fmt.Fprintf(&ini, "%s = %s\n", s[0], s[1])
	}
	files := map[string]string{
		"pgbouncer.ini": ini.String(),
		"userlist.txt":  `"postgres" ""` + "\n",
	}
	for name, content := range files {
		path := filepath.Join(b.dir, name)
		if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
			return fmt.Errorf("write %s: %w", name, err)
		}
		if owner != nil {
			if err := os.Chown(path, owner.uid, owner.gid); err != nil {
				return fmt.Errorf("chown %s: %w", name, err)
			}
		}
	}
	return nil
}

func (b *PgBouncer) start(bin string, owner *osUser) error {
	cmd := exec.Command(bin, filepath.Join(b.dir, "pgbouncer.ini"))
	cmd.Dir = b.dir
	cmd.Env = serverEnv()
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if owner != nil {
		cmd.SysProcAttr.Credential = &syscall.Credential{Uid: uint32(owner.uid), Gid: uint32(owner.gid)}
	}
	proc, err := startChild(cmd)
	if err != nil {
		return fmt.Errorf("run pgbouncer: %w", err)
	}
	b.proc = proc
	deadline := time.Now().Add(30 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		conn, err := pgconn.Connect(ctx, b.URL("postgres"))
		cancel()
		if err == nil {
			_ = conn.Close(context.Background())
			return nil
		}
		select {
		case <-proc.done:
			return fmt.Errorf("%w: %w", errExited, proc.err)
		default:
		}
		if time.Now().After(deadline) {
			b.stop()
			return fmt.Errorf("pgbouncer not accepting connections after 30s: %w", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// stop ends pgbouncer at once (SIGTERM is its immediate shutdown) and waits.
func (b *PgBouncer) stop() {
	if b.proc != nil {
		_ = b.proc.stop(syscall.SIGTERM, 10*time.Second) // escalates to SIGKILL; a throwaway process
	}
}

// URL returns a connection URL for database db through the pooler, as user
// postgres (sslmode=disable).
func (b *PgBouncer) URL(db string) string {
	return fmt.Sprintf("postgres://postgres@%s:%d/%s?sslmode=disable", loopbackHost, b.port, url.PathEscape(db))
}

// Port returns the port pgbouncer listens on.
func (b *PgBouncer) Port() int { return b.port }

// tailFile returns the last lines of a log file for failure messages.
func tailFile(path string) string {
	data, err := os.ReadFile(path)
	if err != nil {
		return fmt.Sprintf("(cannot read log: %v)", err)
	}
	lines := strings.Split(strings.TrimRight(string(data), "\n"), "\n")
	if len(lines) > logTailLines {
		lines = lines[len(lines)-logTailLines:]
	}
	return strings.Join(lines, "\n")
}
