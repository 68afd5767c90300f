package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/outbox-relay/outbox-relay/internal/e2e"
	"github.com/outbox-relay/outbox-relay/internal/testenv"
)

const (
	// demoDB is the database the outbox table lives in.
	demoDB = "demo"

	// streamName is the stream the relay creates and the consumer reads;
	// it is the relay's default.
	streamName = "OUTBOX"

	// readyTimeout bounds the relay's start: preflight, creating the
	// stream, the publication and the slot.
	readyTimeout = time.Minute

	// drainTimeout bounds how long the demo waits, after the producer has
	// stopped, for the consumer to receive every committed event; the relay
	// normally needs well under a second.
	drainTimeout = 15 * time.Second

	// relayStopTimeout is longer than the relay's own shutdown timeout
	// (15s by default) so a clean exit is never cut short by SIGKILL.
	relayStopTimeout = 30 * time.Second

	// catchUpTimeout bounds the consumer's final read of whatever the
	// relay published while stopping.
	catchUpTimeout = 5 * time.Second
)

// errInterrupted reports that the user stopped the demo before it was up,
// which is neither a failure nor a run worth a summary.
var errInterrupted = errors.New("interrupted while starting")

// result is what the demo saw: the ids of committed events in commit order,
// and the Nats-Msg-Ids the consumer received in stream order.
type result struct {
	committed, received []string
	rolledBack          int
}

// report prints the one-line delivery summary. When strict (--duration), a
// run that is not perfect, or that committed nothing and so proved nothing,
// is an error.
func (r result) report(out *console, strict bool) error {
	v := e2e.Compare(r.committed, r.received)
	if r.rolledBack > 0 && v.Unexpected == 0 {
		out.printf("demo: %d transactions rolled back, none of their events reached the stream", r.rolledBack)
	}
	if v.OK() && len(r.committed) > 0 {
		out.printf("demo: %d events committed, %d received, in order", len(r.committed), len(r.received))
		return nil
	}
	problem := v.String()
	if len(r.committed) == 0 {
		problem = "nothing was committed, so nothing was checked"
	}
	out.printf("demo: %d events committed, %d received, NOT as expected: %s", len(r.committed), len(r.received), problem)
	if strict {
		return errReported
	}
	return nil
}

// runDemo starts everything, lets the producer write until ctx is done or
// opts.duration has passed, and stops everything in order: producer, relay,
// consumer, NATS, PostgreSQL. Whatever happens, nothing it started is left
// running and its temporary directories are removed before it returns.
func runDemo(ctx context.Context, opts options, out *console) (res result, err error) {
	// When the user gives up while things start, that is not a failure of
	// the demo, unless it was asked to check delivery.
	started := false
	defer func() {
		if err != nil && !started && ctx.Err() != nil && opts.duration == 0 {
			err = errInterrupted
		}
	}()

	root, err := moduleRoot(ctx)
	if err != nil {
		return res, err
	}

	out.printf("demo: starting PostgreSQL")
	pg, err := testenv.NewPostgres()
	if err != nil {
		return res, err
	}
	defer func() {
		out.printf("demo: stopping PostgreSQL")
		err = errors.Join(err, pg.Close())
	}()
	dbURL, err := createOutbox(ctx, pg, root)
	if err != nil {
		return res, err
	}

	out.printf("demo: starting NATS")
	ns, err := testenv.NewNATS()
	if err != nil {
		return res, err
	}
	defer func() {
		out.printf("demo: stopping NATS")
		err = errors.Join(err, ns.Close())
	}()

	binDir, err := os.MkdirTemp("", "outbox-demo-")
	if err != nil {
		return res, fmt.Errorf("create directory for the relay binary: %w", err)
	}
	defer func() {
		if rerr := os.RemoveAll(binDir); rerr != nil {
			err = errors.Join(err, fmt.Errorf("remove %s: %w", binDir, rerr))
		}
	}()
	out.printf("demo: building the relay (go build ./cmd/relay)")
	bin, err := buildRelay(ctx, root, binDir)
	if err != nil {
		return res, err
	}
	httpPort, err := testenv.PickFreePort()
	if err != nil {
		return res, err
	}
	httpAddr := net.JoinHostPort("127.0.0.1", strconv.Itoa(httpPort))

	printBanner(out, dbURL, ns.URL(), httpAddr, opts.duration)

	relayEnv := []string{
		"RELAY_POSTGRES_URL=" + dbURL,
		"RELAY_NATS_URL=" + ns.URL(),
		"RELAY_CREATE_STREAM=true",
		"RELAY_LOG_FORMAT=console",
		"RELAY_HTTP_ADDR=" + httpAddr,
	}
	var spans *e2e.OTLPReceiver
	if opts.example == "orders" {
		// The relay's own spans, linked to each request's trace.
		spans = e2e.NewOTLPReceiver()
		defer spans.Close()
		relayEnv = append(relayEnv, "RELAY_OTLP_TRACES_ENDPOINT="+spans.URL())
	}
	relay, err := startRelay(bin, relayEnv, out)
	if err != nil {
		return res, err
	}
	// Only for early returns; on the normal path the relay is stopped
	// before the consumer, and stopping twice is a no-op.
	defer func() { err = errors.Join(err, relay.stop(relayStopTimeout)) }()
	// Until the relay streams, its slot may not exist yet, and events
	// committed before the slot would never be published.
	if err := relay.waitReady(ctx, httpAddr, readyTimeout); err != nil {
		return res, err
	}
	if opts.example == "orders" {
		started = true
		return runOrders(ctx, opts, out, pg, dbURL, ns.URL(), relay, spans)
	}

	cons, err := startConsumer(ctx, ns.URL(), out)
	if err != nil {
		return res, err
	}
	defer cons.stop() // only for early returns, like the relay's

	prod, err := newProducer(ctx, dbURL, out)
	if err != nil {
		return res, err
	}
	defer prod.close()
	out.printf("demo: relay ready; producing a transaction every ~%s", produceInterval)
	started = true

	failure := runUntilDone(ctx, opts.duration, out, prod, relay, cons)

	// Stop in dependency order: nothing new is written, everything written
	// is relayed and received, the relay lets go of its slot and stream,
	// and only then do the servers go away (deferred above).
	out.printf("demo: stopping producer")
	prod.close()
	res.committed, res.rolledBack = prod.results()
	if failure == nil {
		if err := cons.waitReceived(len(res.committed), drainTimeout); err != nil {
			out.printf("demo: %v", err) // the summary tells what is missing
		}
	}
	out.printf("demo: stopping relay (SIGTERM)")
	if err := relay.stop(relayStopTimeout); err != nil {
		failure = errors.Join(failure, err)
	}
	out.printf("demo: stopping consumer")
	if failure == nil {
		// The relay may have published more while stopping, such as
		// duplicates, which the check must see.
		if err := cons.catchUp(catchUpTimeout); err != nil {
			failure = err
		}
	}
	cons.stop()
	res.received = cons.received()
	return res, failure
}

// runUntilDone waits for a reason to stop: ctx, the duration, or a part of
// the demo failing. It stops the producer before returning and returns the
// failure, if any.
func runUntilDone(ctx context.Context, duration time.Duration, out *console, prod *producer, relay *relayProcess, cons *consumer) error {
	prodCtx, stopProducing := context.WithCancel(ctx)
	defer stopProducing()
	prodDone := make(chan error, 1)
	go func() { prodDone <- prod.run(prodCtx) }()

	var elapsed <-chan time.Time
	if duration > 0 {
		timer := time.NewTimer(duration)
		defer timer.Stop()
		elapsed = timer.C
	}
	var failure error
	select {
	case <-ctx.Done():
		out.printf("demo: interrupted")
	case <-elapsed:
		out.printf("demo: %s elapsed", duration)
	case err := <-prodDone:
		if err == nil { // ctx is done, and won the race against the select
			out.printf("demo: interrupted")
			return nil
		}
		return fmt.Errorf("producer: %w", err)
	case <-relay.done:
		failure = relay.unexpectedExit()
	case <-cons.done:
		failure = fmt.Errorf("consumer stopped unexpectedly: %w", cons.err)
	}
	stopProducing()
	if err := <-prodDone; err != nil {
		failure = errors.Join(failure, fmt.Errorf("producer: %w", err))
	}
	return failure
}

// printBanner tells where everything runs.
func printBanner(out *console, dbURL, natsURL, httpAddr string, duration time.Duration) {
	stop := "Ctrl-C to stop"
	if duration > 0 {
		stop += fmt.Sprintf(" (stops by itself %s after the relay is ready)", duration)
	}
	out.printf("")
	out.printf("  outbox relay demo")
	out.printf("  PostgreSQL  %s  (table events)", dbURL)
	out.printf("  NATS        %s  (stream %s)", natsURL, streamName)
	out.printf("  metrics     http://%s/metrics", httpAddr)
	out.printf("  %s", stop)
	out.printf("")
}

// moduleRoot finds the repository, which holds the relay's source and the
// outbox DDL, from the working directory, so `go run ./cmd/demo` works from
// anywhere inside it.
func moduleRoot(ctx context.Context) (string, error) {
	cmd := exec.CommandContext(ctx, "go", "env", "GOMOD")
	outb, err := cmd.Output()
	if err != nil {
		return "", fmt.Errorf("find the repository with `go env GOMOD`: %w", err)
	}
	gomod := strings.TrimSpace(string(outb))
	if gomod == "" || gomod == os.DevNull {
		return "", errors.New("run the demo from inside the outbox-relay repository: `go env GOMOD` finds no go.mod")
	}
	root := filepath.Dir(gomod)
	if _, err := os.Stat(filepath.Join(root, "cmd", "relay")); err != nil {
		return "", fmt.Errorf("run the demo from inside the outbox-relay repository: %s has no cmd/relay", root)
	}
	return root, nil
}

// createOutbox creates the demo database with the outbox table shipped in
// sql/outbox.sql and returns the database's TCP URL.
func createOutbox(ctx context.Context, pg *testenv.Postgres, root string) (string, error) {
	ddl, err := os.ReadFile(filepath.Join(root, "sql", "outbox.sql"))
	if err != nil {
		return "", fmt.Errorf("read outbox DDL: %w", err)
	}
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if err := pg.ExecContext(ctx, "postgres", "CREATE DATABASE "+demoDB); err != nil {
		return "", fmt.Errorf("create database: %w", err)
	}
	if err := pg.ExecContext(ctx, demoDB, string(ddl)); err != nil {
		return "", fmt.Errorf("create outbox table: %w", err)
	}
	return pg.URL(demoDB), nil
}
