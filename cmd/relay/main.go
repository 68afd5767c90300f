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
	"runtime"
	"syscall"
)

// Set at build time with -ldflags "-X main.version=... -X main.commit=...".
var (
	version = "dev"
	commit  = "unknown"
)

func main() {
	limitProcs(os.Getenv)
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Getenv, os.Stdout, os.Stderr)
	stop()
	if err != nil && !errors.Is(err, errUsage) {
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

// errUsage marks an error already explained on stderr by the flag parser.
var errUsage = errors.New("usage")

const usage = `relay publishes every committed row of a PostgreSQL outbox table to NATS JetStream.

Usage:
  relay [run] [flags]   relay events (the default command)
  relay check [flags]   run the preflight checks of PostgreSQL and NATS, and exit
  relay status [flags]  print the slot, the lag and the stream, and whether they agree
  relay version         print the version

Run "relay run --help" for the flags; each has a RELAY_* environment variable.
`

// run is the whole program: it parses args, wires the relay and runs the
// command until ctx is done. A nil error means exit code 0.
func run(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	command := "run"
	if len(args) > 0 && len(args[0]) > 0 && args[0][0] != '-' {
		command, args = args[0], args[1:]
	}
	switch command {
	case "version":
		fmt.Fprintf(stdout, "relay %s (commit %s)\n", version, commit)
		return nil
	case "help":
		fmt.Fprint(stdout, usage)
		return nil
	case "run", "check", "status":
	default:
		fmt.Fprint(stderr, usage)
		return fmt.Errorf("unknown command %q", command)
	}
	cfg, err := parseConfig(command, args, getenv, stderr)
	if err != nil {
		if errors.Is(err, flagHelp) {
			return nil
		}
		if isFlagError(err) {
			return errUsage
		}
		return fmt.Errorf("invalid configuration:\n%w", err)
	}
	switch command {
	case "check":
		return runCheck(ctx, cfg, stdout)
	case "status":
		return runStatus(ctx, cfg, stdout)
	}
	return runRelay(ctx, cfg, stderr)
}
