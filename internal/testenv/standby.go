package testenv

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// standbyWait bounds the waits of the standby helpers (catching up,
// promotion, WAL shipping paused or resumed).
const standbyWait = 60 * time.Second

// StandbyOption configures a standby started by StartStandby.
type StandbyOption func(*standbyConfig)

type standbyConfig struct {
	slot     string
	settings []pgSetting
}

// WithStandbySlot names the primary's physical replication slot the standby
// streams from (default "standby1"); StartStandby creates it.
func WithStandbySlot(name string) StandbyOption {
	return func(c *standbyConfig) { c.slot = name }
}

// WithStandbyConfig adds a postgresql.conf setting for the standby only, such
// as WithStandbyConfig("sync_replication_slots", "on") (PostgreSQL 17+). The
// standby starts from a copy of the primary's data directory, with the
// primary's postgresql.conf and postgresql.auto.conf: settings meant for the
// primary alone (synchronized_standby_slots, say) are best set on the primary
// after StartStandby, or overridden here.
func WithStandbyConfig(key, value string) StandbyOption {
	return func(c *standbyConfig) { c.settings = append(c.settings, pgSetting{key: key, value: value}) }
}

// Standby is a physical streaming standby of a primary started by
// StartPostgres: it streams the primary's WAL through a physical replication
// slot of its own, with hot_standby_feedback on, and accepts read-only
// queries. Its embedded Postgres has the usual helpers (URL, Exec, Stop,
// Start, ...); a promoted standby is a primary like any other.
type Standby struct {
	*Postgres
	primary  *Postgres
	slot     string
	conninfo string
}

// StartStandby makes a physical standby of primary, which must be running:
// it creates the standby's physical slot on the primary (reserving WAL at
// once), takes a base backup with the low-level backup API
// (pg_backup_start, a copy of the data directory without pg_wal, pg_replslot
// and postmaster.pid, pg_backup_stop's backup_label; pg_start_backup and
// pg_stop_backup on PostgreSQL 14), and starts it as a standby on a free
// 127.0.0.1 port, with the primary's binaries. It returns once the standby
// accepts connections and streams. The standby is stopped and its directory
// removed in t.Cleanup, before the primary is.
func StartStandby(t testing.TB, primary *Postgres, opts ...StandbyOption) *Standby {
	t.Helper()
	cfg := standbyConfig{slot: "standby1"}
	for _, o := range opts {
		o(&cfg)
	}
	dir, err := makeClusterDir(primary.owner)
	if err != nil {
		t.Fatalf("testenv: start standby: %v", err)
	}
	s := &Standby{
		Postgres: &Postgres{
			binDir:  primary.binDir,
			dir:     dir,
			dataDir: filepath.Join(dir, "data"),
			logPath: filepath.Join(dir, "postgres.log"),
			owner:   primary.owner,
		},
		primary: primary,
		slot:    cfg.slot,
		conninfo: fmt.Sprintf("host=%s port=%d user=postgres dbname=postgres application_name=%s",
			loopbackHost, primary.Port(), cfg.slot),
	}
	t.Cleanup(func() {
		if err := s.stop("immediate"); err != nil {
			t.Errorf("testenv: cleanup standby: %v", err)
		}
		if t.Failed() {
			t.Logf("testenv: standby log tail (%s):\n%s", s.logPath, s.logTail())
		}
		if err := s.removeDir(); err != nil {
			t.Errorf("testenv: cleanup standby: %v", err)
		}
	})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if err := s.baseBackup(ctx); err != nil {
		t.Fatalf("testenv: start standby: %v", err)
	}
	if err := s.configureStandby(cfg); err != nil {
		t.Fatalf("testenv: start standby: %v", err)
	}
	s.mu.Lock()
	for attempt := 1; ; attempt++ {
		port, err := PickFreePort()
		if err != nil {
			s.mu.Unlock()
			t.Fatalf("testenv: start standby: %v", err)
		}
		s.port = port
		err = s.start()
		if err == nil {
			break
		}
		if attempt < pgStartAttempts && strings.Contains(err.Error(), "Address already in use") {
			continue
		}
		s.mu.Unlock()
		t.Fatalf("testenv: start standby: %v", err)
	}
	s.mu.Unlock()
	s.waitStreaming(t, true)
	return s
}

// Slot returns the name of the primary's physical slot the standby streams
// from: the name to put in synchronized_standby_slots.
func (s *Standby) Slot() string { return s.slot }

// Primary returns the server the standby was made from.
func (s *Standby) Primary() *Postgres { return s.primary }

// baseBackup copies the primary's data directory into the standby's between
// the start and the stop of a backup, and writes the backup label.
func (s *Standby) baseBackup(ctx context.Context) error {
	p := s.primary
	if err := p.ExecContext(ctx, "postgres", `SELECT pg_create_physical_replication_slot($1, true)`, s.slot); err != nil {
		return err
	}
	// The backup must start and stop on the same session.
	conn, err := pgx.Connect(ctx, p.AdminURL("postgres"))
	if err != nil {
		return fmt.Errorf("connect to the primary: %w", err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	var version int
	if err := conn.QueryRow(ctx, `SELECT current_setting('server_version_num')::int`).Scan(&version); err != nil {
		return fmt.Errorf("read the primary's version: %w", err)
	}
	start, stop := `SELECT pg_backup_start('testenv standby', true)`, `SELECT labelfile, spcmapfile FROM pg_backup_stop(false)`
	if version < 150000 {
		start, stop = `SELECT pg_start_backup('testenv standby', true, false)`, `SELECT labelfile, spcmapfile FROM pg_stop_backup(false, false)`
	}
	if _, err := conn.Exec(ctx, start); err != nil {
		return fmt.Errorf("start the backup: %w", err)
	}
	if err := copyDataDir(p.dataDir, s.dataDir, p.owner); err != nil {
		return fmt.Errorf("copy the data directory: %w", err)
	}
	var label, spcmap string
	if err := conn.QueryRow(ctx, stop).Scan(&label, &spcmap); err != nil {
		return fmt.Errorf("stop the backup: %w", err)
	}
	files := map[string]string{"backup_label": label, "standby.signal": ""}
	if spcmap != "" {
		files["tablespace_map"] = spcmap
	}
	for name, data := range files {
		if err := writeOwned(filepath.Join(s.dataDir, name), []byte(data), p.owner); err != nil {
			return err
		}
	}
	return nil
}

// copyDataDir copies a running server's data directory as pg_basebackup
// would: without the WAL (the standby streams it from its slot, which holds
// it from before the backup started), the replication slots, the pid file
// and the contents of the directories the server empties at start.
func copyDataDir(from, to string, owner *osUser) error {
	skipContents := map[string]bool{
		"pg_wal": true, "pg_replslot": true, "pg_stat_tmp": true, "pg_dynshmem": true,
		"pg_notify": true, "pg_serial": true, "pg_snapshots": true, "pg_subtrans": true,
	}
	return filepath.WalkDir(from, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return nil // removed by the server while copying
			}
			return err
		}
		rel, err := filepath.Rel(from, path)
		if err != nil {
			return err
		}
		dest := filepath.Join(to, rel)
		parts := strings.Split(rel, string(filepath.Separator))
		inSkipped := len(parts) > 1 && skipContents[parts[0]]
		if d.IsDir() {
			if inSkipped && parts[0] != "pg_wal" {
				return fs.SkipDir // a slot's directory, say
			}
			if err := os.MkdirAll(dest, 0o700); err != nil {
				return err
			}
			if err := chownTo(dest, owner); err != nil {
				return err
			}
			if inSkipped {
				return fs.SkipDir // pg_wal/archive_status: the directory, not its files
			}
			return nil
		}
		if inSkipped || rel == "postmaster.pid" || rel == "postmaster.opts" {
			return nil
		}
		if err := copyFile(path, dest, owner); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return err
		}
		return nil
	})
}

func copyFile(from, to string, owner *osUser) error {
	src, err := os.Open(from)
	if err != nil {
		return err
	}
	defer src.Close()
	dst, err := os.OpenFile(to, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	if _, err := io.Copy(dst, src); err != nil {
		_ = dst.Close()
		return err
	}
	if err := dst.Close(); err != nil {
		return err
	}
	return chownTo(to, owner)
}

func writeOwned(path string, data []byte, owner *osUser) error {
	if err := os.WriteFile(path, data, 0o600); err != nil {
		return fmt.Errorf("write %s: %w", filepath.Base(path), err)
	}
	return chownTo(path, owner)
}

func chownTo(path string, owner *osUser) error {
	if owner == nil {
		return nil
	}
	if err := os.Chown(path, owner.uid, owner.gid); err != nil {
		return fmt.Errorf("chown %s to %s: %w", path, owner.name, err)
	}
	return nil
}

// configureStandby appends the standby's settings to the copied
// postgresql.conf: its own socket directory, the primary to stream from and
// the slot, hot_standby_feedback, and the caller's.
func (s *Standby) configureStandby(cfg standbyConfig) error {
	settings := []pgSetting{
		{"unix_socket_directories", s.dir},
		{"primary_conninfo", s.conninfo},
		{"primary_slot_name", s.slot},
		{"hot_standby", "on"},
		{"hot_standby_feedback", "on"},
		// Feedback and replies often, so the primary sees the standby's
		// position within a second.
		{"wal_receiver_status_interval", "1s"},
		{"wal_retrieve_retry_interval", "1s"},
	}
	settings = append(settings, cfg.settings...)
	var b strings.Builder
	b.WriteString("\n# Added by internal/testenv for the standby; later lines win.\n")
	for _, st := range settings {
		fmt.Fprintf(&b, "%s = '%s'\n", st.key, strings.ReplaceAll(st.value, "'", "''"))
	}
	if err := appendFile(filepath.Join(s.dataDir, "postgresql.conf"), b.String()); err != nil {
		return fmt.Errorf("write the standby's postgresql.conf: %w", err)
	}
	return nil
}

// queryValue runs a query returning one value on a server.
func queryValue[T any](ctx context.Context, p *Postgres, sql string, args ...any) (T, error) {
	var v T
	conn, err := pgx.Connect(ctx, p.AdminURL("postgres"))
	if err != nil {
		return v, err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	err = conn.QueryRow(ctx, sql, args...).Scan(&v)
	return v, err
}

// waitFor polls cond until it holds or standbyWait passes.
func waitFor(t testing.TB, what string, cond func(ctx context.Context) (bool, error)) {
	t.Helper()
	deadline := time.Now().Add(standbyWait)
	var last error
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		ok, err := cond(ctx)
		cancel()
		if err == nil && ok {
			return
		}
		if err != nil {
			last = err
		}
		if time.Now().After(deadline) {
			t.Fatalf("testenv: %s: not within %s (last error: %v)", what, standbyWait, last)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// waitStreaming waits until the standby's WAL receiver streams (on) or is
// gone (off), as the primary's slot for it shows.
func (s *Standby) waitStreaming(t testing.TB, on bool) {
	t.Helper()
	waitFor(t, fmt.Sprintf("standby slot %q active = %t", s.slot, on), func(ctx context.Context) (bool, error) {
		active, err := queryValue[bool](ctx, s.primary, `SELECT active FROM pg_replication_slots WHERE slot_name = $1`, s.slot)
		if err != nil || active != on {
			return false, err
		}
		receivers, err := queryValue[int64](ctx, s.Postgres, `SELECT count(*) FROM pg_stat_wal_receiver`)
		return err == nil && (receivers > 0) == on, err
	})
}

// CatchUp waits until the standby has replayed everything the primary had
// flushed when it was called.
func (s *Standby) CatchUp(t testing.TB) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	target, err := queryValue[string](ctx, s.primary, `SELECT pg_current_wal_flush_lsn()::text`)
	cancel()
	if err != nil {
		t.Fatalf("testenv: read the primary's WAL position: %v", err)
	}
	s.WaitReplayed(t, target)
}

// WaitReplayed waits until the standby has replayed WAL up to lsn (text,
// as PostgreSQL writes a pg_lsn).
func (s *Standby) WaitReplayed(t testing.TB, lsn string) {
	t.Helper()
	waitFor(t, "standby replays up to "+lsn, func(ctx context.Context) (bool, error) {
		return queryValue[bool](ctx, s.Postgres, `SELECT COALESCE(pg_last_wal_replay_lsn() >= $1::pg_lsn, false)`, lsn)
	})
}

// ReplayLSN returns the last WAL position the standby replayed, as text.
func (s *Standby) ReplayLSN(t testing.TB) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	lsn, err := queryValue[string](ctx, s.Postgres, `SELECT pg_last_wal_replay_lsn()::text`)
	if err != nil {
		t.Fatalf("testenv: read the standby's replay position: %v", err)
	}
	return lsn
}

// PauseWAL stops the standby's WAL receiver (primary_conninfo emptied and the
// configuration reloaded): the primary ships no more WAL to it, so it lags
// behind everything committed from now on, and its slot on the primary is
// inactive. It returns once the receiver is gone.
func (s *Standby) PauseWAL(t testing.TB) {
	t.Helper()
	s.Exec(t, "postgres", `ALTER SYSTEM SET primary_conninfo = ''`)
	s.Exec(t, "postgres", `SELECT pg_reload_conf()`)
	s.waitStreaming(t, false)
}

// ResumeWAL starts the standby's WAL receiver again after PauseWAL and
// returns once it streams.
func (s *Standby) ResumeWAL(t testing.TB) {
	t.Helper()
	s.Exec(t, "postgres", `ALTER SYSTEM RESET primary_conninfo`)
	s.Exec(t, "postgres", `SELECT pg_reload_conf()`)
	s.waitStreaming(t, true)
}

// Promote makes the standby a primary (pg_promote) on a new timeline and
// returns once it accepts writes. Stop the primary first (Stop "immediate"
// is a crash) for a failover; WAL the standby did not receive is not on the
// new timeline.
func (s *Standby) Promote(t testing.TB) {
	t.Helper()
	s.Exec(t, "postgres", `SELECT pg_promote(true, 60)`)
	waitFor(t, "standby promoted", func(ctx context.Context) (bool, error) {
		recovering, err := queryValue[bool](ctx, s.Postgres, `SELECT pg_is_in_recovery()`)
		return err == nil && !recovering, err
	})
}
