package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sync"
	"syscall"
	"time"

	relaypkg "github.com/outbox-relay/outbox-relay/internal/relay"
)

// buildRelay builds cmd/relay into dir and returns the binary's path. The
// demo runs the real binary, not the relay's code in-process, so it shows
// exactly what gets deployed, signals and exit codes included.
func buildRelay(ctx context.Context, root, dir string) (string, error) {
	bin := filepath.Join(dir, "relay")
	cmd := exec.CommandContext(ctx, "go", "build", "-o", bin, "./cmd/relay")
	cmd.Dir = root
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build ./cmd/relay: %w\n%s", err, out)
	}
	return bin, nil
}

// relayProcess is the relay running as a child process.
type relayProcess struct {
	cmd *exec.Cmd
	// done is closed once the process has been reaped; err (its exit
	// status) is written before that.
	done chan struct{}
	err  error

	stopOnce sync.Once
	exitOnce sync.Once
}

// startRelay starts bin with the demo's environment plus env, which wins
// over variables of the same name, and its output prefixed "relay | ".
func startRelay(bin string, env []string, out *console) (*relayProcess, error) {
	cmd := exec.Command(bin, "run")
	cmd.Env = append(os.Environ(), env...)
	logs := &linePrefixer{out: out, prefix: "relay | "}
	// The same writer for both, so exec copies them with one goroutine and
	// lines cannot tear.
	cmd.Stdout = logs
	cmd.Stderr = logs
	cmd.SysProcAttr = &syscall.SysProcAttr{
		// Out of the terminal's process group: Ctrl-C is for the demo,
		// which stops the relay when its turn comes.
		Setpgid: true,
		// Should the demo die without stopping it, the relay shuts
		// down cleanly instead of running on unsupervised.
		Pdeathsig: syscall.SIGTERM,
	}

	r := &relayProcess{cmd: cmd, done: make(chan struct{})}
	launched := make(chan error, 1)
	go func() {
		// Pdeathsig fires when the thread that started the child exits;
		// holding this goroutine on it until the child is reaped keeps the
		// runtime from retiring it (as internal/testenv does for postgres).
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		if err := cmd.Start(); err != nil {
			launched <- err
			return
		}
		launched <- nil
		r.err = cmd.Wait()
		logs.flush()
		close(r.done)
	}()
	if err := <-launched; err != nil {
		return nil, fmt.Errorf("start relay: %w", err)
	}
	return r, nil
}

// waitReady polls /readyz until the relay leads and streams from its slot.
func (r *relayProcess) waitReady(ctx context.Context, httpAddr string, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	url := "http://" + httpAddr + "/readyz"
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for {
		if leading(ctx, url) {
			return nil
		}
		select {
		case <-r.done:
			return fmt.Errorf("while starting: %w", r.unexpectedExit())
		case <-ctx.Done():
			return fmt.Errorf("wait for the relay to become ready (%s): %w", url, ctx.Err())
		case <-tick.C:
		}
	}
}

// leading reports whether /readyz says the relay is a ready leader. Ready
// alone is not enough: a standby, still waiting for leadership, is ready
// too, but has created neither the stream nor the slot.
func leading(ctx context.Context, url string) bool {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return false
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return false // not listening yet
	}
	defer resp.Body.Close()
	var probe struct {
		Role string `json:"role"`
	}
	if resp.StatusCode != http.StatusOK || json.NewDecoder(resp.Body).Decode(&probe) != nil {
		return false
	}
	return probe.Role == string(relaypkg.RoleLeader)
}

// unexpectedExit describes the exit of a relay nobody asked to stop. It
// returns nil after the first call, since whoever noticed first has
// reported it.
func (r *relayProcess) unexpectedExit() error {
	var err error
	r.exitOnce.Do(func() {
		status := "exit status 0"
		if r.err != nil {
			status = r.err.Error()
		}
		err = fmt.Errorf("relay exited unexpectedly: %s", status)
	})
	return err
}

// stop sends SIGTERM, which makes the relay finish its publishes in flight,
// confirm its position to PostgreSQL and exit 0, and waits for that. After
// timeout it kills the relay. Only the first call acts and reports.
func (r *relayProcess) stop(timeout time.Duration) error {
	var err error
	r.stopOnce.Do(func() { err = r.terminate(timeout) })
	return err
}

func (r *relayProcess) terminate(timeout time.Duration) error {
	select {
	case <-r.done:
		return r.unexpectedExit()
	default:
	}
	if err := r.cmd.Process.Signal(syscall.SIGTERM); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return fmt.Errorf("stop relay: %w", err)
	}
	select {
	case <-r.done:
		if r.err != nil {
			return fmt.Errorf("relay exited with %w after SIGTERM", r.err)
		}
		return nil
	case <-time.After(timeout):
		_ = r.cmd.Process.Kill() // it may exit on its own meanwhile
		<-r.done
		return fmt.Errorf("relay did not exit within %s of SIGTERM; killed it", timeout)
	}
}
