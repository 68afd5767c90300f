// Command orders is the example service: `orders serve` runs the HTTP API
// (POST /orders writes the order and its event in one transaction), and
// `orders consume` processes the events idempotently. Settings come from
// the environment:
//
//	DATABASE_URL           the service's database (serve)
//	HTTP_ADDR              where serve listens (default :8080)
//	CONSUMER_DATABASE_URL  the consumer's own database (consume)
//	NATS_URL               NATS (consume; default nats://127.0.0.1:4222)
//	STREAM                 the relay's stream (consume; default OUTBOX)
//	OTEL_EXPORTER_OTLP_ENDPOINT, OTEL_EXPORTER_OTLP_TRACES_ENDPOINT
//	                       when set, spans are exported over OTLP/HTTP
//
// Run the relay next to serve, pointed at the same database (in Kubernetes
// as its sidecar: helm/examples/sidecar-app/values-orders.yaml).
package main

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"

	"github.com/outbox-relay/outbox-relay/examples/orders"
	"github.com/outbox-relay/outbox-relay/outbox"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Getenv)
	stop()
	if err != nil {
		fmt.Fprintf(os.Stderr, "orders: %v\n", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string, getenv func(string) string) error {
	if len(args) != 1 {
		return errors.New("usage: orders serve | orders consume")
	}
	tp, err := tracerProvider(ctx, getenv)
	if err != nil {
		return err
	}
	defer func() {
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = tp.Shutdown(sctx) // spans not exported by now are lost
	}()
	switch args[0] {
	case "serve":
		return serve(ctx, getenv, tp)
	case "consume":
		return consume(ctx, getenv, tp)
	}
	return fmt.Errorf("unknown command %q: usage: orders serve | orders consume", args[0])
}

// tracerProvider makes spans, exported over OTLP when the standard
// OpenTelemetry variables name a collector.
func tracerProvider(ctx context.Context, getenv func(string) string) (*sdktrace.TracerProvider, error) {
	if getenv("OTEL_EXPORTER_OTLP_ENDPOINT") == "" && getenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") == "" {
		return sdktrace.NewTracerProvider(), nil
	}
	exp, err := otlptracehttp.New(ctx)
	if err != nil {
		return nil, fmt.Errorf("otlp exporter: %w", err)
	}
	return sdktrace.NewTracerProvider(sdktrace.WithBatcher(exp)), nil
}

func serve(ctx context.Context, getenv func(string) string, tp *sdktrace.TracerProvider) error {
	pool, err := pgxpool.New(ctx, getenv("DATABASE_URL"))
	if err != nil {
		return fmt.Errorf("DATABASE_URL: %w", err)
	}
	defer pool.Close()
	if err := outbox.Migrate(ctx, outbox.Pgx(pool), outbox.Plain, true); err != nil {
		return err
	}
	if _, err := pool.Exec(ctx, orders.Schema); err != nil {
		return fmt.Errorf("create orders table: %w", err)
	}
	w, err := outbox.New()
	if err != nil {
		return err
	}
	svc := &orders.Service{DB: pool, Outbox: w, Tracer: tp.Tracer("orders")}
	ln, err := net.Listen("tcp", cmp.Or(getenv("HTTP_ADDR"), ":8080"))
	if err != nil {
		return err
	}
	srv := &http.Server{Handler: svc.Handler(), ReadHeaderTimeout: 5 * time.Second}
	go func() {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = srv.Shutdown(sctx) // exiting anyway
	}()
	if err := srv.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

func consume(ctx context.Context, getenv func(string) string, tp *sdktrace.TracerProvider) error {
	pool, err := pgxpool.New(ctx, getenv("CONSUMER_DATABASE_URL"))
	if err != nil {
		return fmt.Errorf("CONSUMER_DATABASE_URL: %w", err)
	}
	defer pool.Close()
	if _, err := pool.Exec(ctx, orders.ConsumerSchema); err != nil {
		return fmt.Errorf("create consumer tables: %w", err)
	}
	nc, err := nats.Connect(cmp.Or(getenv("NATS_URL"), nats.DefaultURL))
	if err != nil {
		return fmt.Errorf("NATS_URL: %w", err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return err
	}
	c := &orders.Consumer{
		DB: pool, JS: js, Stream: cmp.Or(getenv("STREAM"), "OUTBOX"), Durable: "orders-consumer",
		AckWait: 30 * time.Second, Tracer: tp.Tracer("orders-consumer"),
		Report: func(p orders.Processed) {
			switch {
			case p.Err != nil:
				fmt.Fprintf(os.Stderr, "message %s (seq %d): %v\n", p.MessageID, p.Seq, p.Err)
			case p.Duplicate:
				fmt.Fprintf(os.Stdout, "message %s (seq %d) already processed, skipped\n", p.MessageID, p.Seq)
			default:
				fmt.Fprintf(os.Stdout, "order %s of %s, %s: processed (message %s, trace %s)\n", p.Event.Order, p.Event.Customer, orders.FormatCents(p.Event.TotalCents), p.MessageID, p.TraceID)
			}
		},
	}
	return c.Run(ctx)
}
