package chaos

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"time"

	toxiproxy "github.com/Shopify/toxiproxy/v2"
	"github.com/Shopify/toxiproxy/v2/toxics"
	"github.com/rs/zerolog"
)

// Network is an in-process toxiproxy: TCP proxies on 127.0.0.1 in front of
// the servers, through which the relay is pointed, so faults can be put on
// the wire between the relay and PostgreSQL or NATS while everyone else
// talks to the servers directly.
type Network struct {
	server *toxiproxy.ApiServer
	mu     sync.Mutex
	links  []*Link
}

// NewNetwork starts an empty toxiproxy. No HTTP API is served: links are
// driven through the library.
func NewNetwork() *Network {
	// Some toxics log through zerolog's global logger, at trace level, to
	// stderr; the proxies' own logger is silenced below.
	zerolog.SetGlobalLevel(zerolog.ErrorLevel)
	return &Network{server: toxiproxy.NewServer(toxiproxy.NewMetricsContainer(nil), zerolog.Nop())}
}

// Link is one proxy: clients connect to Addr and are forwarded to the
// upstream server, through whatever toxics are on.
type Link struct {
	name  string
	proxy *toxiproxy.Proxy

	mu     sync.Mutex
	toxics []string     // names of the toxics on now
	cut    net.Listener // holds the port while the link is cut
}

// Link starts a proxy named name on a free 127.0.0.1 port, forwarding to
// upstream (host:port).
func (n *Network) Link(name, upstream string) (*Link, error) {
	p := toxiproxy.NewProxy(n.server, name, "127.0.0.1:0", upstream)
	if err := n.server.Collection.Add(p, true); err != nil {
		return nil, fmt.Errorf("start proxy %s to %s: %w", name, upstream, err)
	}
	l := &Link{name: name, proxy: p}
	n.mu.Lock()
	n.links = append(n.links, l)
	n.mu.Unlock()
	return l, nil
}

// Close stops every proxy and closes their connections.
func (n *Network) Close() {
	n.mu.Lock()
	defer n.mu.Unlock()
	for _, l := range n.links {
		_ = l.Heal() // closing anyway
		l.proxy.Stop()
	}
	n.links = nil
}

// Name returns the link's name.
func (l *Link) Name() string { return l.name }

// Addr returns the address clients connect to (host:port); it stays the same
// across Cut and Restore.
func (l *Link) Addr() string {
	l.proxy.Lock()
	defer l.proxy.Unlock()
	return l.proxy.Listen
}

// Port returns the port of Addr.
func (l *Link) Port() string {
	_, port, _ := net.SplitHostPort(l.Addr())
	return port
}

// Cut takes the link down the way a firewall resetting connections does:
// every open connection is closed, so both ends see it end at once, and new
// connections are closed as soon as they are accepted. Restore brings it
// back.
func (l *Link) Cut() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.cut != nil {
		return nil
	}
	addr := l.proxy.Listen
	l.proxy.Stop()
	// Keep the port, so that no other test's server can take it before
	// Restore, and turn every client away.
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("cut link %s: hold %s: %w", l.name, addr, err)
	}
	l.cut = ln
	go func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			_ = conn.Close()
		}
	}()
	return nil
}

// Restore undoes Cut, listening again on the same address.
func (l *Link) Restore() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.restore()
}

func (l *Link) restore() error {
	if l.cut == nil {
		return nil
	}
	_ = l.cut.Close() // only ever accepted to turn clients away
	l.cut = nil
	// The port was held until just now; retry briefly all the same.
	var err error
	for range 50 {
		if err = l.proxy.Start(); err == nil || errors.Is(err, toxiproxy.ErrProxyAlreadyStarted) {
			return nil
		}
		time.Sleep(100 * time.Millisecond)
	}
	return fmt.Errorf("restore link %s: %w", l.name, err)
}

// Blackhole makes the link swallow everything in both directions without
// closing anything, as when a host vanishes or a network partitions: data
// sent is acknowledged by the proxy's TCP stack and dropped, nothing comes
// back, and a connection one side closes stays open on the other side.
// New connections are accepted and then hear nothing either. Heal ends it,
// closing every connection that was blackholed, as the returning host's
// TCP stack would reset them.
func (l *Link) Blackhole() error {
	return l.add("blackhole", blackholeType, nil)
}

// Latency delays every chunk of data by latency ± jitter, each direction.
func (l *Link) Latency(latency, jitter time.Duration) error {
	return l.add("latency", "latency", map[string]any{"latency": latency.Milliseconds(), "jitter": jitter.Milliseconds()})
}

// Bandwidth limits each direction of each connection to kbps KB/s.
func (l *Link) Bandwidth(kbps int64) error {
	return l.add("bandwidth", "bandwidth", map[string]any{"rate": kbps})
}

func (l *Link) add(name, typ string, attrs map[string]any) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if attrs == nil {
		attrs = map[string]any{}
	}
	for _, stream := range []string{"upstream", "downstream"} {
		full := name + "_" + stream
		body, err := json.Marshal(map[string]any{"name": full, "type": typ, "stream": stream, "toxicity": 1.0, "attributes": attrs})
		if err != nil {
			return err
		}
		if _, err := l.proxy.Toxics.AddToxicJson(strings.NewReader(string(body))); err != nil {
			return fmt.Errorf("add toxic %s to link %s: %w", full, l.name, err)
		}
		l.toxics = append(l.toxics, full)
	}
	return nil
}

// Heal removes every toxic and restores a cut link.
func (l *Link) Heal() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	var errs []error
	for _, name := range l.toxics {
		if err := l.proxy.Toxics.RemoveToxic(context.Background(), name); err != nil {
			errs = append(errs, fmt.Errorf("remove toxic %s from link %s: %w", name, l.name, err))
		}
	}
	l.toxics = nil
	errs = append(errs, l.restore())
	return errors.Join(errs...)
}

// blackholeType is the toxic behind Blackhole. toxiproxy's own "timeout"
// toxic with timeout 0 drops data too, but passes a close on: when the relay
// closes its end (as a leader stepping down does), PostgreSQL would see the
// connection end and release the relay's advisory lock at once. A vanished
// host closes nothing, and the server learns only through its own timeouts
// (idle_session_timeout, wal_sender_timeout, TCP keepalive), which is what
// the suite has to prove.
const blackholeType = "outbox_relay_blackhole"

type blackholeToxic struct{}

// Pipe drops every chunk and ignores the end of the input until the toxic
// is removed.
func (*blackholeToxic) Pipe(stub *toxics.ToxicStub) {
	input := stub.Input
	for {
		select {
		case <-stub.Interrupt:
			return
		case c, ok := <-input:
			if !ok || c == nil {
				// The sender closed its end. Stay silent: receiving
				// from a nil channel blocks until the interrupt.
				input = nil
			}
		}
	}
}

// Cleanup closes the connection when the blackhole is removed: whatever was
// swallowed is gone, so neither end could make sense of it afterwards.
func (*blackholeToxic) Cleanup(stub *toxics.ToxicStub) { stub.Close() }

func init() { toxics.Register(blackholeType, new(blackholeToxic)) }
