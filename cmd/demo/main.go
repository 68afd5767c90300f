// Command demo runs the relay end to end on one machine, with nothing to
// install but Go and the PostgreSQL 15 server binaries: a throwaway
// PostgreSQL cluster with the outbox table, an in-process NATS JetStream
// server, the relay binary built from this repository, a producer writing
// outbox transactions, and a consumer printing what reaches the stream.
//
// Usage:
//
//	go run ./cmd/demo                 # until Ctrl-C
//	go run ./cmd/demo --duration 20s  # stop by itself and check delivery (CI)
//
// RELAY_* variables in the environment reach the relay, except the ones the
// demo sets to wire it up; RELAY_LOG_LEVEL=debug shows more of its work.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
	"time"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	// After NotifyContext, so that a SIGTERM it sends is caught.
	exitWithParent()
	// A demo piped into a pager or `head` must still clean up when its
	// reader goes away: ignored, SIGPIPE turns into write errors, which the
	// demo does not care about, instead of killing it mid-shutdown.
	signal.Ignore(syscall.SIGPIPE)

	err := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	if err != nil && !errors.Is(err, errReported) {
		fmt.Fprintf(os.Stderr, "demo: %v\n", err)
	}
	if err != nil {
		os.Exit(1)
	}
}

// errReported marks a failure already explained on the output (a usage
// error, or the delivery summary), so main only sets the exit code.
var errReported = errors.New("failure already reported")

// options are the command line settings.
type options struct {
	// duration is how long the producer writes before the demo stops by
	// itself and checks delivery; 0 runs until interrupted.
	duration time.Duration
	// example, when "orders", runs examples/orders (an HTTP service, a
	// traced client and an idempotent consumer) instead of the producer
	// and consumer of the plain demo.
	example string
}

// run is the whole program: it parses args, runs the demo until ctx is done
// (or --duration has passed), stops everything and reports. A nil error
// means exit code 0.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	opts, err := parseFlags(args, stderr)
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		return err
	}
	out := &console{w: stdout}
	res, err := runDemo(ctx, opts, out)
	if errors.Is(err, errInterrupted) {
		out.printf("demo: %v", err)
		return nil
	}
	if err != nil {
		return err
	}
	// Printed last, once everything has stopped, so it is the line CI logs
	// end with.
	return res.report(out, opts.duration > 0)
}

func parseFlags(args []string, stderr io.Writer) (options, error) {
	var opts options
	fs := flag.NewFlagSet("demo", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.DurationVar(&opts.duration, "duration", 0,
		"produce events for this long, then stop and exit non-zero unless every committed event arrived exactly once, in order (default: run until Ctrl-C)")
	fs.StringVar(&opts.example, "example", "",
		"orders: run the example service of examples/orders (HTTP API writing with the outbox package, a traced client, an idempotent consumer) and check that every request's event arrives once with its trace context (default: the plain producer and consumer)")
	fs.Usage = func() {
		fmt.Fprint(stderr, "Usage: go run ./cmd/demo [--duration 20s]\n\n"+
			"Runs PostgreSQL, NATS JetStream, the relay, a producer and a consumer locally.\n\nFlags:\n")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return opts, err
		}
		return opts, errReported // the flag package has printed why
	}
	if fs.NArg() > 0 {
		return opts, fmt.Errorf("unexpected arguments: %v", fs.Args())
	}
	if opts.example != "" && opts.example != "orders" {
		return opts, fmt.Errorf("--example %q: the only example is orders", opts.example)
	}
	if opts.duration < 0 {
		return opts, fmt.Errorf("--duration %s: must not be negative", opts.duration)
	}
	return opts, nil
}

// exitWithParent asks the kernel to send SIGTERM when the parent dies. `go
// run` exits on SIGTERM without passing it on, which would leave the demo,
// and with it PostgreSQL and the relay, running with nobody to stop them;
// this way the demo shuts down as if it had been sent SIGTERM itself.
func exitWithParent() {
	parent := os.Getppid()
	_, _, errno := syscall.RawSyscall(syscall.SYS_PRCTL, syscall.PR_SET_PDEATHSIG, uintptr(syscall.SIGTERM), 0)
	if errno != 0 {
		return // only a convenience; Ctrl-C still works
	}
	// The parent may have died before the request took effect.
	if os.Getppid() != parent {
		_ = syscall.Kill(os.Getpid(), syscall.SIGTERM)
	}
}
