package e2e

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/outbox-relay/outbox-relay/internal/testenv"
)

// build caches the relay binary for the life of the test process: building
// it once per test would dominate the suite's time.
var build struct {
	once sync.Once
	path string
	err  error
}

// BuildRelay builds cmd/relay (once per test process) and returns its path.
func BuildRelay(t testing.TB) string {
	t.Helper()
	build.once.Do(func() {
		dir, err := os.MkdirTemp("", "outbox-relay-bin-")
		if err != nil {
			build.err = err
			return
		}
		build.path = filepath.Join(dir, "relay")
		cmd := exec.Command("go", "build", "-o", build.path, "./cmd/relay")
		cmd.Dir = RepoRoot()
		if out, err := cmd.CombinedOutput(); err != nil {
			build.err = fmt.Errorf("go build ./cmd/relay: %w\n%s", err, out)
		}
	})
	if build.err != nil {
		t.Fatalf("build relay: %v", build.err)
	}
	return build.path
}

// Relay is the relay running as a child process.
type Relay struct {
	t        testing.TB
	cmd      *exec.Cmd
	logs     *SyncBuffer
	HTTPAddr string
	done     chan struct{}
	exitCode int
}

// SyncBuffer is a bytes.Buffer safe for the writes of a running process and
// concurrent reads by the test.
type SyncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

// Write appends p.
func (b *SyncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

// String returns everything written so far.
func (b *SyncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// StartRelay starts the relay binary with env (RELAY_* settings) and args.
// It listens for HTTP on a free loopback port unless env sets one. The
// process is killed in cleanup if still running, and its log is printed when
// the test failed.
func StartRelay(t testing.TB, bin string, env map[string]string, args ...string) *Relay {
	t.Helper()
	r := &Relay{t: t, logs: &SyncBuffer{}, done: make(chan struct{})}
	full := map[string]string{
		"RELAY_HTTP_ADDR":  fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t)),
		"RELAY_LOG_FORMAT": "json",
	}
	for k, v := range env {
		full[k] = v
	}
	r.HTTPAddr = full["RELAY_HTTP_ADDR"]
	r.cmd = exec.Command(bin, args...)
	r.cmd.Env = []string{"PATH=" + os.Getenv("PATH"), "HOME=" + os.TempDir()}
	for k, v := range full {
		r.cmd.Env = append(r.cmd.Env, k+"="+v)
	}
	r.cmd.Stdout = r.logs
	r.cmd.Stderr = r.logs
	if err := r.cmd.Start(); err != nil {
		t.Fatalf("start relay: %v", err)
	}
	go func() {
		err := r.cmd.Wait()
		r.exitCode = 0
		var exitErr *exec.ExitError
		if errors.As(err, &exitErr) {
			r.exitCode = exitErr.ExitCode()
		}
		close(r.done)
	}()
	t.Cleanup(func() {
		_ = r.cmd.Process.Kill() // already gone is fine
		<-r.done
		if t.Failed() {
			t.Logf("relay (pid %d) log:\n%s", r.cmd.Process.Pid, tail(r.logs.String(), 150))
		}
	})
	return r
}

func tail(s string, lines int) string {
	parts := strings.Split(s, "\n")
	if len(parts) > lines {
		parts = parts[len(parts)-lines:]
	}
	return strings.Join(parts, "\n")
}

// Pid returns the process id.
func (r *Relay) Pid() int { return r.cmd.Process.Pid }

// Logs returns everything the relay wrote so far.
func (r *Relay) Logs() string { return r.logs.String() }

// LogText returns the log with JSON string escapes of quotes and
// backslashes undone, for tests that look for a message the relay quotes
// (most errors quote names: "public"."events").
func (r *Relay) LogText() string {
	return strings.NewReplacer(`\\`, `\`, `\"`, `"`).Replace(r.logs.String())
}

// Signal sends sig.
func (r *Relay) Signal(sig syscall.Signal) {
	_ = r.cmd.Process.Signal(sig) // it may have exited already
}

// Wait waits up to timeout for the process to exit and returns its exit code.
func (r *Relay) Wait(timeout time.Duration) (int, error) {
	select {
	case <-r.done:
		return r.exitCode, nil
	case <-time.After(timeout):
		return -1, fmt.Errorf("relay did not exit within %s", timeout)
	}
}

// Exited reports whether the process has exited.
func (r *Relay) Exited() bool {
	select {
	case <-r.done:
		return true
	default:
		return false
	}
}

// Stop sends SIGTERM and waits for the exit code.
func (r *Relay) Stop(timeout time.Duration) (int, error) {
	r.Signal(syscall.SIGTERM)
	return r.Wait(timeout)
}

// Kill sends SIGKILL and waits for the process to be gone.
func (r *Relay) Kill() {
	r.Signal(syscall.SIGKILL)
	<-r.done
}

// Get fetches path from the relay's HTTP server and returns the status code
// and body; code 0 when it does not answer.
func (r *Relay) Get(path string) (int, string) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+r.HTTPAddr+path, nil)
	if err != nil {
		return 0, ""
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, ""
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body)
}

// Metrics returns the samples the relay exposes, keyed by the sample's name
// with labels as written ("outbox_relay_leader", "x_total{kind=\"timeout\"}").
func (r *Relay) Metrics() map[string]float64 {
	code, body := r.Get("/metrics")
	if code != http.StatusOK {
		return nil
	}
	return ParseMetrics(body)
}

// ParseMetrics parses the Prometheus text format's samples.
func ParseMetrics(body string) map[string]float64 {
	out := map[string]float64{}
	sc := bufio.NewScanner(strings.NewReader(body))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		if i < 0 {
			continue
		}
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			continue
		}
		out[line[:i]] = v
	}
	return out
}
