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

// errUsage marks an error already explained on stderr by the flag parser.
var errUsage = errors.New("usage")

// errReported marks an error already logged as the relay's last log entry.
var errReported = errors.New("reported")

const usage = `relay publishes every committed row of a PostgreSQL outbox table to NATS JetStream.

Usage:
  relay [run] [flags]   relay events (the default command)
  relay check [flags]   run the preflight checks of PostgreSQL and NATS, and exit
  relay status [flags]  print the slot, the lag and the stream, and whether they agree
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
	case "run", "check", "status":
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
