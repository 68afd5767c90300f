package testenv

import (
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
)

const (
	// natsReadyTimeout bounds how long a server may take to open its
	// listeners after Start.
	natsReadyTimeout = 10 * time.Second

	// natsPortWait is how long a restart waits for its old port to become
	// bindable again before giving up.
	natsPortWait = 5 * time.Second

	// natsLogEnv enables the server log on stderr when set to "1"; it is off
	// by default because JetStream is chatty.
	natsLogEnv = "TESTENV_NATS_LOG"
)

// NATSOption configures a server started by StartNATS, NewNATS or
// StartNATSCluster.
type NATSOption func(*natsConfig)

type natsConfig struct {
	mutate []func(*server.Options)
}

// WithNATSConfig registers fn to adjust the server options (TLS, auth,
// MaxPayload, ...) before every start, including restarts. It runs after the
// harness defaults, so it may override them; changing Port only takes effect
// on the first start, since restarts reuse the port first bound.
func WithNATSConfig(fn func(*server.Options)) NATSOption {
	return func(c *natsConfig) { c.mutate = append(c.mutate, fn) }
}

// NATS is an in-process NATS server with JetStream, owned by one test or
// program. Its port and store directory stay the same across Stop/Start, so
// clients can reconnect and JetStream state survives.
type NATS struct {
	storeDir  string
	tempStore bool                   // storeDir was made by NewNATS; Close removes it
	base      func() *server.Options // harness defaults for this server
	mutate    []func(*server.Options)

	// mu serializes Start/Stop and guards the fields below.
	mu   sync.Mutex
	port int // 0 until the first start has bound a port
	srv  *server.Server
}

// StartNATS starts a JetStream-enabled NATS server on a free 127.0.0.1 port
// with its store in a temporary directory and waits until it accepts
// connections. It is shut down and its store removed in t.Cleanup.
func StartNATS(t testing.TB, opts ...NATSOption) *NATS {
	t.Helper()
	n, err := NewNATS(opts...)
	if err != nil {
		t.Fatalf("testenv: %v", err)
	}
	t.Cleanup(func() {
		if err := n.Close(); err != nil {
			t.Errorf("testenv: cleanup nats: %v", err)
		}
	})
	return n
}

// NewNATS is StartNATS for callers without a testing.TB, such as the demo:
// it returns an error instead of failing a test, and the caller must call
// Close. On error nothing is left behind.
func NewNATS(opts ...NATSOption) (*NATS, error) {
	var cfg natsConfig
	for _, o := range opts {
		o(&cfg)
	}
	storeDir, err := os.MkdirTemp("", "testenv-nats-")
	if err != nil {
		return nil, fmt.Errorf("start nats: create store dir: %w", err)
	}
	n := &NATS{
		storeDir:  storeDir,
		tempStore: true,
		base: func() *server.Options {
			return baseNATSOptions(storeDir)
		},
		mutate: cfg.mutate,
	}
	if err := n.start(); err != nil {
		err = fmt.Errorf("start nats: %w", err)
		if cerr := n.Close(); cerr != nil {
			err = fmt.Errorf("%w (cleanup: %w)", err, cerr)
		}
		return nil, err
	}
	return n, nil
}

// Close shuts the server down and removes the store directory that NewNATS
// or StartNATS created. Calling it again is harmless.
func (n *NATS) Close() error {
	n.stop()
	if !n.tempStore {
		return nil
	}
	if err := os.RemoveAll(n.storeDir); err != nil {
		return fmt.Errorf("remove nats store %s: %w", n.storeDir, err)
	}
	return nil
}

// baseNATSOptions is the standalone configuration every server starts from.
func baseNATSOptions(storeDir string) *server.Options {
	return &server.Options{
		Host:      loopbackHost,
		Port:      server.RANDOM_PORT,
		JetStream: true,
		StoreDir:  storeDir,
		// Signal handlers are process-wide; tests run many servers.
		NoSigs: true,
		NoLog:  os.Getenv(natsLogEnv) != "1",
	}
}

// URL returns the client URL, nats://127.0.0.1:PORT.
func (n *NATS) URL() string {
	return clientURL(n.Port())
}

// Port returns the client port; it survives restarts.
func (n *NATS) Port() int {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.port
}

// StoreDir returns the JetStream store directory.
func (n *NATS) StoreDir() string { return n.storeDir }

// Server returns the running server, or nil while stopped. A restart
// replaces it, so do not keep the pointer across Stop/Start.
func (n *NATS) Server() *server.Server {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.srv
}

// Running reports whether the server is started.
func (n *NATS) Running() bool { return n.Server() != nil }

// Start starts the server (again), on the same port and store directory as
// before, waiting briefly for the port if it is still busy. Starting a
// running server fails the test.
func (n *NATS) Start(t testing.TB) {
	t.Helper()
	if err := n.start(); err != nil {
		t.Fatalf("testenv: start nats: %v", err)
	}
}

// Stop shuts the server down and waits until it is gone. Stopping a stopped
// server is a no-op.
func (n *NATS) Stop(t testing.TB) {
	t.Helper()
	n.stop()
}

// Restart stops and starts the server.
func (n *NATS) Restart(t testing.TB) {
	t.Helper()
	n.Stop(t)
	n.Start(t)
}

// Connect returns a client connected to the server, closed in t.Cleanup.
// By default it reconnects forever every 50ms so it rides out restarts
// quickly; opts are applied after those defaults.
func (n *NATS) Connect(t testing.TB, opts ...nats.Option) *nats.Conn {
	t.Helper()
	return connectNATS(t, n.URL(), opts)
}

func connectNATS(t testing.TB, url string, opts []nats.Option) *nats.Conn {
	t.Helper()
	all := append([]nats.Option{
		nats.Name(t.Name()),
		nats.MaxReconnects(-1),
		nats.ReconnectWait(50 * time.Millisecond),
	}, opts...)
	nc, err := nats.Connect(url, all...)
	if err != nil {
		t.Fatalf("testenv: connect to nats %s: %v", url, err)
	}
	t.Cleanup(nc.Close)
	return nc
}

func (n *NATS) start() error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.srv != nil {
		return errors.New("nats server is already running")
	}
	o := n.base()
	for _, fn := range n.mutate {
		fn(o)
	}
	if n.port != 0 {
		o.Port = n.port
	}
	// nats-server only reports a busy port by never becoming ready, so check
	// first instead of burning the whole ready timeout.
	for _, port := range []int{o.Port, o.Cluster.Port} {
		if port > 0 {
			if err := waitPortFree(port, natsPortWait); err != nil {
				return err
			}
		}
	}
	srv, err := server.NewServer(o)
	if err != nil {
		return fmt.Errorf("new nats server: %w", err)
	}
	if !o.NoLog {
		srv.ConfigureLogger()
	}
	srv.Start()
	if !srv.ReadyForConnections(natsReadyTimeout) {
		srv.Shutdown()
		srv.WaitForShutdown()
		return fmt.Errorf("nats server on port %d not ready after %s (set %s=1 for its log)",
			o.Port, natsReadyTimeout, natsLogEnv)
	}
	addr, ok := srv.Addr().(*net.TCPAddr)
	if !ok {
		srv.Shutdown()
		srv.WaitForShutdown()
		return fmt.Errorf("nats server has unexpected listen address %v", srv.Addr())
	}
	n.port = addr.Port
	n.srv = srv
	return nil
}

func (n *NATS) stop() {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.srv == nil {
		return
	}
	n.srv.Shutdown()
	n.srv.WaitForShutdown()
	n.srv = nil
}

// clientURL formats a nats:// URL for a loopback port.
func clientURL(port int) string {
	return "nats://" + net.JoinHostPort(loopbackHost, strconv.Itoa(port))
}
