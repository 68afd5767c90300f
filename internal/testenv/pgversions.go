package testenv

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
)

// PostgresBinFor returns the bin directory of a PostgreSQL server of the
// given major version (14 to 18) for WithPostgresBin: $PG<major>_BIN when
// set, else the newest installation of that major that
// scripts/install-postgres.sh cached under ~/.cache/outbox-relay/postgres.
// It fails the test, never skips it, when there is none.
func PostgresBinFor(t testing.TB, major int) string {
	t.Helper()
	dir, err := postgresBinFor(major)
	if err != nil {
		t.Fatalf("testenv: %v", err)
	}
	return dir
}

func postgresBinFor(major int) (string, error) {
	env := fmt.Sprintf("PG%d_BIN", major)
	if dir := os.Getenv(env); dir != "" {
		if missing := missingPGBinaries(dir); len(missing) > 0 {
			return "", fmt.Errorf("%s=%s lacks %s", env, dir, strings.Join(missing, ", "))
		}
		return dir, nil
	}
	home, err := os.UserHomeDir()
	if err != nil {
		return "", fmt.Errorf("find PostgreSQL %d: %w", major, err)
	}
	cache := filepath.Join(home, ".cache", "outbox-relay", "postgres")
	if c := os.Getenv("OUTBOX_RELAY_CACHE"); c != "" {
		cache = filepath.Join(c, "postgres")
	}
	matches, _ := filepath.Glob(filepath.Join(cache, fmt.Sprintf("%d.*", major), "bin"))
	// Newest first: compare the numeric minor of "<major>.<minor>.<patch>-...".
	minor := func(dir string) int {
		parts := strings.SplitN(filepath.Base(filepath.Dir(dir)), ".", 3)
		if len(parts) < 2 {
			return -1
		}
		n, _ := strconv.Atoi(parts[1])
		return n
	}
	slices.SortFunc(matches, func(a, b string) int { return minor(b) - minor(a) })
	for _, dir := range matches {
		if len(missingPGBinaries(dir)) == 0 {
			return dir, nil
		}
	}
	return "", fmt.Errorf("PostgreSQL %d server binaries not found in %s: run `scripts/install-postgres.sh %d` (.ci/run does), or set %s",
		major, cache, major, env)
}

// staged maps a bin directory the server user cannot reach to its copy.
var staged struct {
	mu   sync.Mutex
	dirs map[string]string
}

// reachableBin returns binDir when the server's OS user can run the binaries
// there, or else a copy of the installation (binDir's parent, with lib and
// share) in the temp directory, made once per process. Running as root, the
// server runs as user postgres, who cannot enter /root, where
// ~/.cache/outbox-relay/postgres lives.
func reachableBin(binDir string, owner *osUser) (string, error) {
	if owner == nil {
		return binDir, nil
	}
	probe := exec.Command(filepath.Join(binDir, "postgres"), "--version")
	probe.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uint32(owner.uid), Gid: uint32(owner.gid)}}
	probe.Dir = "/"
	err := probe.Run()
	if err == nil {
		return binDir, nil
	}
	if !errors.Is(err, os.ErrPermission) {
		return "", fmt.Errorf("run %s/postgres --version as %s: %w", binDir, owner.name, err)
	}
	staged.mu.Lock()
	defer staged.mu.Unlock()
	if dir, ok := staged.dirs[binDir]; ok {
		return dir, nil
	}
	root := filepath.Dir(binDir)
	// A stable place, reused by later test processes; hard links are
	// instant and take no space, a copy when the temp directory is on
	// another file system.
	final := filepath.Join(os.TempDir(), "testenv-pgbin-"+strings.ReplaceAll(strings.Trim(root, "/"), "/", "_"))
	if _, err := os.Stat(filepath.Join(final, ".staged")); err != nil {
		tmp, err := os.MkdirTemp("", "testenv-pgbin-staging-")
		if err != nil {
			return "", fmt.Errorf("stage %s for user %s: %w", root, owner.name, err)
		}
		defer func() { _ = os.RemoveAll(tmp) }() // what is left is the staging dir only
		into := filepath.Join(tmp, "pg")
		if out, err := exec.Command("cp", "-al", root, into).CombinedOutput(); err != nil {
			_ = os.RemoveAll(into)
			if out2, err2 := exec.Command("cp", "-a", root, into).CombinedOutput(); err2 != nil {
				return "", fmt.Errorf("stage %s for user %s: %s %s: %w", root, owner.name, out, out2, err2)
			}
		}
		if err := os.Chmod(into, 0o755); err != nil {
			return "", fmt.Errorf("stage %s for user %s: %w", root, owner.name, err)
		}
		if err := os.WriteFile(filepath.Join(into, ".staged"), nil, 0o644); err != nil {
			return "", fmt.Errorf("stage %s for user %s: %w", root, owner.name, err)
		}
		// Another process may have staged it meanwhile; either copy will do.
		if err := os.Rename(into, final); err != nil {
			if _, statErr := os.Stat(filepath.Join(final, ".staged")); statErr != nil {
				return "", fmt.Errorf("stage %s for user %s: %w", root, owner.name, err)
			}
		}
	}
	dir := filepath.Join(final, filepath.Base(binDir))
	if staged.dirs == nil {
		staged.dirs = map[string]string{}
	}
	staged.dirs[binDir] = dir
	return dir, nil
}

// Version returns the server's version number (server_version_num, e.g.
// 180004).
func (p *Postgres) Version(t testing.TB) int {
	t.Helper()
	version, err := binVersion(p.binDir)
	if err != nil {
		t.Fatalf("testenv: %v", err)
	}
	return version
}

// DefaultPostgresMajor returns the major version (14, 15, ...) of the
// server binaries StartPostgres runs without WithPostgresBin: those of
// PG_BIN, else /usr/lib/postgresql/15/bin. It fails the test, never skips
// it, when there are none. make test-matrix runs the core suite with PG_BIN
// set to each supported major, and tests that also run on a fixed major use
// it to name their cases and to not run one twice.
func DefaultPostgresMajor(t testing.TB) int {
	t.Helper()
	dir, err := findPostgresBin()
	if err != nil {
		t.Fatalf("testenv: %v", err)
	}
	version, err := binVersion(dir)
	if err != nil {
		t.Fatalf("testenv: %v", err)
	}
	return version / 10000
}

// binVersion runs postgres --version in dir and returns the version as
// major*10000 + minor, like server_version_num.
func binVersion(dir string) (int, error) {
	out, err := exec.Command(filepath.Join(dir, "postgres"), "--version").Output()
	if err != nil {
		return 0, fmt.Errorf("%s/postgres --version: %w", dir, err)
	}
	// "postgres (PostgreSQL) 18.4" or "... 15.18 (Debian 15.18-0+deb12u1)"
	fields := strings.Fields(string(out))
	if len(fields) < 3 {
		return 0, fmt.Errorf("%s/postgres --version: %q", dir, out)
	}
	parts := strings.SplitN(fields[2], ".", 3)
	major, err := strconv.Atoi(parts[0])
	if err != nil {
		return 0, fmt.Errorf("%s/postgres --version: %q", dir, out)
	}
	minor := 0
	if len(parts) > 1 {
		minor, _ = strconv.Atoi(parts[1])
	}
	return major*10000 + minor, nil
}
