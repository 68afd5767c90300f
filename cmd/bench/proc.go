package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/outbox-relay/outbox-relay/internal/testenv"
)

// clockTicks is USER_HZ, the unit of utime and stime in /proc/<pid>/stat;
// 100 on every Linux architecture Go supports.
const clockTicks = 100

func signalNotify(c chan os.Signal) { signal.Notify(c, os.Interrupt, syscall.SIGTERM) }

// procStat reads the CPU times (user+system, and of reaped children) and
// the parent of pid.
func procStat(pid int) (self, children float64, ppid int, err error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, 0, 0, err
	}
	// The command name (field 2) may hold spaces; fields after it are
	// counted from the closing parenthesis.
	i := bytes.LastIndexByte(data, ')')
	if i < 0 {
		return 0, 0, 0, errors.New("unexpected /proc/pid/stat format")
	}
	f := strings.Fields(string(data[i+1:]))
	// f[0] is field 3 (state): ppid is field 4, utime, stime, cutime and
	// cstime are fields 14 to 17.
	if len(f) < 15 {
		return 0, 0, 0, errors.New("unexpected /proc/pid/stat format")
	}
	var v [4]uint64
	for k := range v {
		if v[k], err = strconv.ParseUint(f[11+k], 10, 64); err != nil {
			return 0, 0, 0, err
		}
	}
	ppid, err = strconv.Atoi(f[1])
	return float64(v[0]+v[1]) / clockTicks, float64(v[2]+v[3]) / clockTicks, ppid, err
}

// cpuSeconds returns the user plus system CPU time pid has used.
func cpuSeconds(pid int) (float64, error) {
	self, _, _, err := procStat(pid)
	return self, err
}

// treeCPU returns the CPU time of parent and its children: its own, that of
// the children it has reaped, and that of those alive. For the postmaster
// that is all of PostgreSQL, exited backends included (backends start
// sessions of their own, so process groups do not find them).
func treeCPU(parent int) float64 {
	self, reaped, _, err := procStat(parent)
	if err != nil {
		return 0
	}
	total := self + reaped
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == parent {
			continue
		}
		if cpu, _, ppid, err := procStat(pid); err == nil && ppid == parent {
			total += cpu
		}
	}
	return total
}

// memory returns VmRSS and VmHWM (peak RSS) of pid, in bytes.
func memory(pid int) (rss, hwm int64, err error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, 0, err
	}
	for _, line := range strings.Split(string(data), "\n") {
		key, value, ok := strings.Cut(line, ":")
		if !ok || (key != "VmRSS" && key != "VmHWM") {
			continue
		}
		f := strings.Fields(value)
		if len(f) != 2 || f[1] != "kB" {
			continue
		}
		kb, err := strconv.ParseInt(f[0], 10, 64)
		if err != nil {
			return 0, 0, err
		}
		if key == "VmRSS" {
			rss = kb * 1024
		} else {
			hwm = kb * 1024
		}
	}
	return rss, hwm, nil
}

// syscalls returns how many read and write system calls pid has made.
func syscalls(pid int) (reads, writes uint64) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/io", pid))
	if err != nil {
		return 0, 0
	}
	for _, line := range strings.Split(string(data), "\n") {
		k, v, ok := strings.Cut(line, ": ")
		if !ok {
			continue
		}
		n, _ := strconv.ParseUint(strings.TrimSpace(v), 10, 64)
		switch k {
		case "syscr":
			reads = n
		case "syscw":
			writes = n
		}
	}
	return reads, writes
}

// machineCPU reads the busy and total jiffies of all CPUs from /proc/stat.
func machineCPU() (busy, total uint64) {
	data, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0, 0
	}
	line, _, _ := strings.Cut(string(data), "\n")
	f := strings.Fields(line)
	if len(f) < 5 || f[0] != "cpu" {
		return 0, 0
	}
	for i, s := range f[1:] {
		v, _ := strconv.ParseUint(s, 10, 64)
		total += v
		// idle (4th) and iowait (5th) are not busy; guest time is already
		// counted in user.
		if i != 3 && i != 4 && i < 8 {
			busy += v
		}
	}
	return busy, total
}

// usage samples the CPU time of the relay, NATS, PostgreSQL, the harness
// and the whole machine, so a phase can report its own share of each, and
// what other tenants of the machine took.
type usage struct {
	relay, nats, pg, self float64
	busy, total           uint64
	// read and write system calls of the relay and NATS
	relayR, relayW, natsR, natsW uint64
	at                           time.Time
}

// postmaster is the pid of PostgreSQL's postmaster, the parent of all its
// processes.
var postmaster int

func sampleUsage(relayPID, natsPID int) usage {
	u := usage{at: time.Now()}
	if relayPID > 0 {
		u.relay, _ = cpuSeconds(relayPID)
		u.relayR, u.relayW = syscalls(relayPID)
	}
	if natsPID > 0 {
		u.nats, _ = cpuSeconds(natsPID)
		u.natsR, u.natsW = syscalls(natsPID)
	}
	if postmaster > 0 {
		u.pg = treeCPU(postmaster)
	}
	u.self, _ = cpuSeconds(os.Getpid())
	u.busy, u.total = machineCPU()
	return u
}

// cpuUse is what happened between two samples, in CPU seconds.
type cpuUse struct {
	Seconds      float64 `json:"wall_seconds"`
	RelaySeconds float64 `json:"relay_cpu_seconds"`
	NATSSeconds  float64 `json:"nats_cpu_seconds"`
	PGSeconds    float64 `json:"postgres_cpu_seconds"`
	SelfSeconds  float64 `json:"harness_cpu_seconds"`
	// OtherSeconds is what the rest of the machine used: other tenants,
	// the kernel's own threads. It is noise for the benchmark.
	OtherSeconds float64 `json:"other_cpu_seconds"`
	// MachineBusy is the share of all cores busy, 0..1.
	MachineBusy float64 `json:"machine_busy"`
	// Read and write system calls of the relay and of NATS: how well the
	// work is batched.
	RelayReads  uint64 `json:"relay_read_syscalls"`
	RelayWrites uint64 `json:"relay_write_syscalls"`
	NATSReads   uint64 `json:"nats_read_syscalls"`
	NATSWrites  uint64 `json:"nats_write_syscalls"`
}

func (u usage) since(prev usage) cpuUse {
	c := cpuUse{
		Seconds:      u.at.Sub(prev.at).Seconds(),
		RelaySeconds: u.relay - prev.relay, NATSSeconds: u.nats - prev.nats,
		PGSeconds: u.pg - prev.pg, SelfSeconds: u.self - prev.self,
		RelayReads: u.relayR - prev.relayR, RelayWrites: u.relayW - prev.relayW,
		NATSReads: u.natsR - prev.natsR, NATSWrites: u.natsW - prev.natsW,
	}
	if u.total > prev.total {
		busy := float64(u.busy - prev.busy)
		c.MachineBusy = busy / float64(u.total-prev.total)
		c.OtherSeconds = max(0, busy/clockTicks-c.RelaySeconds-c.NATSSeconds-c.PGSeconds-c.SelfSeconds)
	}
	return c
}

// otherShare is the share of the machine's cores other tenants used.
func (c cpuUse) otherShare() float64 {
	if c.Seconds <= 0 {
		return 0
	}
	return c.OtherSeconds / c.Seconds / float64(runtime.NumCPU())
}

// relayProc is the relay binary running as a child process.
type relayProc struct {
	cmd      *exec.Cmd
	httpAddr string
	logPath  string
	started  time.Time
	done     chan struct{}
}

func (e *env) startRelay(stream string, window int, extra ...string) (*relayProc, error) {
	port, err := testenv.PickFreePort()
	if err != nil {
		return nil, err
	}
	r := &relayProc{httpAddr: fmt.Sprintf("127.0.0.1:%d", port), done: make(chan struct{})}
	r.logPath = filepath.Join(e.tmp, stream+".relay.log")
	logf, err := os.Create(r.logPath)
	if err != nil {
		return nil, err
	}
	defer logf.Close() // the child has its own descriptor
	r.cmd = exec.Command(e.relay, "run")
	r.cmd.Env = []string{
		"PATH=" + os.Getenv("PATH"),
		"HOME=" + e.tmp,
		"RELAY_POSTGRES_URL=" + e.dbURL,
		"RELAY_NATS_URL=" + e.nats.url,
		"RELAY_CREATE_STREAM=true",
		"RELAY_STREAM=" + stream,
		"RELAY_PUBLISH_WINDOW=" + strconv.Itoa(window),
		"RELAY_HTTP_ADDR=" + r.httpAddr,
		"RELAY_LOG_FORMAT=json",
		"RELAY_LOG_LEVEL=info",
	}
	r.cmd.Env = append(append(r.cmd.Env, e.relayEnv...), extra...)
	r.cmd.Stdout = logf
	r.cmd.Stderr = logf
	r.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGTERM}
	r.started = time.Now()
	if err := startLocked(r.cmd, r.done); err != nil {
		return nil, fmt.Errorf("start relay: %w", err)
	}
	return r, nil
}

func (r *relayProc) pid() int { return r.cmd.Process.Pid }

func (r *relayProc) exited() bool {
	select {
	case <-r.done:
		return true
	default:
		return false
	}
}

// stop sends SIGTERM and waits for the exit, killing the relay after
// timeout. It reports a non-zero exit.
func (r *relayProc) stop(timeout time.Duration) error {
	_ = r.cmd.Process.Signal(syscall.SIGTERM) // it may have exited already
	select {
	case <-r.done:
	case <-time.After(timeout):
		_ = r.cmd.Process.Kill()
		<-r.done
		return fmt.Errorf("relay did not stop within %s; killed", timeout)
	}
	if code := r.cmd.ProcessState.ExitCode(); code != 0 {
		return fmt.Errorf("relay exited with code %d; log tail:\n%s", code, r.logTail())
	}
	return nil
}

func (r *relayProc) logTail() string {
	data, _ := os.ReadFile(r.logPath)
	lines := strings.Split(strings.TrimRight(string(data), "\n"), "\n")
	if len(lines) > 30 {
		lines = lines[len(lines)-30:]
	}
	return strings.Join(lines, "\n")
}

// get fetches path from the relay's HTTP server.
func (r *relayProc) get(ctx context.Context, path string) (int, string, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+r.httpAddr+path, nil)
	if err != nil {
		return 0, "", err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body), err
}

// waitReady waits until the relay leads and streams.
func (r *relayProc) waitReady(ctx context.Context, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		code, body, _ := r.get(ctx, "/readyz")
		if code == http.StatusOK && strings.Contains(body, `"role":"leader"`) {
			return nil
		}
		if r.exited() {
			return fmt.Errorf("relay exited while starting; log tail:\n%s", r.logTail())
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return fmt.Errorf("relay not ready after %s (last /readyz: %d %s)", timeout, code, strings.TrimSpace(body))
		}
		time.Sleep(20 * time.Millisecond)
	}
}
