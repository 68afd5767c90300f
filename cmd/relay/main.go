// Command relay publishes every committed row of a PostgreSQL outbox table
// to NATS JetStream, once each, in commit order.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"slices"
	"strconv"
	"strings"
	"syscall"

	"github.com/jackc/pglogrepl"
	"go.uber.org/zap"
)

// Set at build time with -ldflags "-X main.version=... -X main.commit=...".
var (
	version = "dev"
	commit  = "unknown"
)

func main() {
	limitProcs(os.Getenv)
	limitMemory(os.LookupEnv, "/")
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.LookupEnv, os.Stdout, os.Stderr)
	stop()
	if err != nil && !errors.Is(err, errUsage) && !errors.Is(err, errReported) {
		fmt.Fprintf(os.Stderr, "relay: %v\n", err)
	}
	if err != nil {
		os.Exit(1)
	}
}

// limitProcs runs the relay on one CPU unless GOMAXPROCS says otherwise. Its
// work is a pipeline fed by a single walsender, which is itself one process
// on one CPU: spread over several CPUs the pipeline's goroutines wake each
// other across cores for every few events, and in `make bench` that cost
// about a fifth more CPU per event and drained backlogs 5 to 10% slower
// (docs/benchmarks.md). A sidecar should leave its neighbours' CPU alone.
func limitProcs(getenv func(string) string) {
	if getenv("GOMAXPROCS") == "" {
		runtime.GOMAXPROCS(1)
	}
}

// softMemoryShare is the part of the container's memory limit Go's soft
// memory limit is set to: the rest is left for what the Go runtime does not
// count (thread stacks outside the heap, memory mapped by the kernel for the
// process) and for the time the collector needs to react.
const softMemoryShare = 0.9

// limitMemory sets Go's soft memory limit to 90% of the memory limit of the
// process's cgroup, unless GOMEMLIMIT is set, and returns the limit set
// (0 for none). Without it the collector lets the heap grow to twice what
// is live (GOGC=100) whatever the container allows, so a backlog of large
// events ends in an OOM kill instead of more frequent collection. root is
// "/" but for tests.
func limitMemory(lookupEnv func(string) (string, bool), root string) int64 {
	if v, ok := lookupEnv("GOMEMLIMIT"); ok && v != "" {
		return 0 // the runtime has applied it
	}
	limit, ok := cgroupMemoryLimit(root)
	if !ok {
		return 0
	}
	soft := int64(float64(limit) * softMemoryShare)
	debug.SetMemoryLimit(soft)
	return soft
}

// cgroupMemoryLimit returns the memory limit of the process's cgroup: the
// lowest limit of its cgroup and of every parent up to the mount point,
// read from cgroup v1's memory.limit_in_bytes when the memory controller is
// mounted as v1 (at /sys/fs/cgroup/memory), else from cgroup v2's
// memory.max (under /sys/fs/cgroup). A container that sees its own cgroup
// as the mount's root (a cgroup namespace, or v1 mounted for the
// container) finds it there, since the directories of the host's path are
// missing and skipped. ok is false when no limit is set.
func cgroupMemoryLimit(root string) (limit int64, ok bool) {
	data, err := os.ReadFile(filepath.Join(root, "proc/self/cgroup"))
	if err != nil {
		return 0, false
	}
	var v1, v2 string
	var hasV1, hasV2 bool
	for _, line := range strings.Split(string(data), "\n") {
		// hierarchy-ID:controller-list:cgroup-path
		id, rest, found := strings.Cut(line, ":")
		if !found {
			continue
		}
		controllers, path, found := strings.Cut(rest, ":")
		if !found {
			continue
		}
		if id == "0" && controllers == "" {
			v2, hasV2 = path, true
		} else if slices.Contains(strings.Split(controllers, ","), "memory") {
			v1, hasV1 = path, true
		}
	}
	switch {
	case hasV1:
		return lowestLimit(filepath.Join(root, "sys/fs/cgroup/memory"), v1, "memory.limit_in_bytes")
	case hasV2:
		return lowestLimit(filepath.Join(root, "sys/fs/cgroup"), v2, "memory.max")
	}
	return 0, false
}

// lowestLimit reads file in the directory of cgroup path under mount and in
// each parent up to mount, and returns the lowest limit set.
func lowestLimit(mount, path, file string) (limit int64, ok bool) {
	dir := filepath.Join(mount, filepath.Clean("/"+path))
	for {
		if v, set := readLimit(filepath.Join(dir, file)); set && (!ok || v < limit) {
			limit, ok = v, true
		}
		if dir == mount || !strings.HasPrefix(dir, mount) {
			return limit, ok
		}
		dir = filepath.Dir(dir)
	}
}

// unlimitedV1 is where cgroup v1 limits mean "none": an unset limit reads
// as the largest page-aligned int64.
const unlimitedV1 = 1 << 62

// readLimit reads a cgroup memory limit file: "max" (v2) or a huge number
// (v1) is no limit.
func readLimit(path string) (int64, bool) {
	data, err := os.ReadFile(path)
	if err != nil {
		return 0, false
	}
	text := strings.TrimSpace(string(data))
	if text == "max" {
		return 0, false
	}
	v, err := strconv.ParseInt(text, 10, 64)
	if err != nil || v <= 0 || v >= unlimitedV1 {
		return 0, false
	}
	return v, true
}

// errUsage marks an error already explained on stderr by the flag parser.
var errUsage = errors.New("usage")

// errReported marks an error already logged as the relay's last log entry.
var errReported = errors.New("reported")

const usage = `relay publishes every committed row of a PostgreSQL outbox table to NATS JetStream.

Usage:
  relay [run] [flags]   relay events (the default command)
  relay check [flags]   run the preflight checks of PostgreSQL and NATS, and exit
  relay status [flags]  print the slot, the lag and the stream, and whether they agree
  relay recover [flags] create a slot lost in a failover and publish what the stream lacks (see the README)
  relay replay [flags]  republish chosen events from the outbox table, under new message ids (see the README)
  relay version         print the version
  relay help            print this

Run "relay run --help" for the flags; each has a RELAY_* environment variable.
`

// run is the whole program: it parses args, wires the relay and runs the
// command until ctx is done. A nil error means exit code 0. lookupEnv is
// os.LookupEnv or a stand-in: a variable set to the empty string is told
// apart from an unset one.
func run(ctx context.Context, args []string, lookupEnv func(string) (string, bool), stdout, stderr io.Writer) error {
	command := "run"
	if len(args) > 0 && len(args[0]) > 0 && args[0][0] != '-' {
		command, args = args[0], args[1:]
	} else if len(args) > 0 && (args[0] == "-h" || args[0] == "-help" || args[0] == "--help") {
		// "relay --help": the commands; "relay run --help": run's flags.
		fmt.Fprint(stdout, usage)
		return nil
	}
	switch command {
	case "version":
		fmt.Fprintf(stdout, "relay %s (commit %s)\n", version, commit)
		return nil
	case "help":
		fmt.Fprint(stdout, usage)
		return nil
	case "run", "check", "status", "recover", "replay":
	default:
		fmt.Fprint(stderr, usage)
		return fmt.Errorf("unknown command %q", command)
	}
	cfg, err := parseConfig(command, args, lookupEnv, stderr)
	if err != nil {
		if errors.Is(err, flagHelp) {
			return nil
		}
		if isFlagError(err) {
			return errUsage
		}
		err = fmt.Errorf("invalid configuration:\n%w", err)
		if command == "run" && cfg.logFormatValid() {
			return logExit(newLogger(cfg, stderr), err)
		}
		return err
	}
	switch command {
	case "check":
		return runCheck(ctx, cfg, stdout)
	case "status":
		return runStatus(ctx, cfg, stdout)
	case "recover":
		return runRecover(ctx, cfg, stdout, stderr)
	case "replay":
		return runReplay(ctx, cfg, stdout)
	}
	if err := runRelay(ctx, cfg, stderr); err != nil {
		return logExit(newLogger(cfg, stderr), err)
	}
	return nil
}

// eventLocator is an error that knows the event it is about.
type eventLocator interface {
	EventID() string
	EventLSN() pglogrepl.LSN
}

// logExit writes the error that ends the relay as its last log entry, in
// the configured format, with the event's id and position when the error
// names an event, and returns errReported so that main does not repeat it.
func logExit(log *zap.Logger, err error) error {
	fields := []zap.Field{zap.Error(err)}
	var ev eventLocator
	if errors.As(err, &ev) && ev.EventID() != "" {
		fields = append(fields, zap.String("event_id", ev.EventID()), zap.Stringer("lsn", ev.EventLSN()))
	}
	log.Error("relay exiting on an error", fields...)
	_ = log.Sync() // stderr may not support sync
	return fmt.Errorf("%w: %w", errReported, err)
}

// isTerminal reports whether w is a terminal, where colours help; in a file
// or a pipe they are noise.
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	info, err := f.Stat()
	return err == nil && info.Mode()&os.ModeCharDevice != 0
}
