package testenv

import (
	"fmt"
	"net/url"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
)

const (
	// natsClusterName is the route cluster name shared by all nodes.
	natsClusterName = "testenv"

	// jsClusterTimeout bounds waits for JetStream RAFT elections; nats-server
	// uses randomized election timeouts of several seconds, so a meta or
	// stream leader routinely takes 5-10s to appear.
	jsClusterTimeout = 30 * time.Second
)

// NATSCluster is a JetStream cluster of in-process NATS servers connected by
// routes on 127.0.0.1. Nodes can be stopped and started individually; each
// keeps its ports, server name and store directory.
type NATSCluster struct {
	nodes []*NATS
}

// StartNATSCluster starts n JetStream nodes (3 gives a cluster that survives
// one failure) with distinct client and route ports and store directories,
// and waits until the JetStream meta leader sees all of them. opts apply to
// every node. Everything is shut down in t.Cleanup.
func StartNATSCluster(t testing.TB, n int, opts ...NATSOption) *NATSCluster {
	t.Helper()
	if n < 1 {
		t.Fatalf("testenv: start nats cluster: need at least one node, got %d", n)
	}
	var cfg natsConfig
	for _, o := range opts {
		o(&cfg)
	}

	// Route ports must be known up front because every node lists its
	// peers, so RANDOM_PORT cannot be used here.
	clientPorts := make([]int, n)
	routePorts := make([]int, n)
	for i := range n {
		clientPorts[i] = FreePort(t)
		routePorts[i] = FreePort(t)
	}

	c := &NATSCluster{nodes: make([]*NATS, n)}
	for i := range n {
		storeDir := t.TempDir()
		var routes []*url.URL
		for j, port := range routePorts {
			if j != i {
				routes = append(routes, &url.URL{Scheme: "nats-route", Host: loopbackHost + ":" + strconv.Itoa(port)})
			}
		}
		c.nodes[i] = &NATS{
			storeDir: storeDir,
			port:     clientPorts[i],
			mutate:   cfg.mutate,
			base: func() *server.Options {
				o := baseNATSOptions(storeDir)
				// JetStream clustering identifies peers by server name, so it
				// must be stable across restarts.
				o.ServerName = "n" + strconv.Itoa(i)
				o.Port = clientPorts[i]
				o.Cluster = server.ClusterOpts{Name: natsClusterName, Host: loopbackHost, Port: routePorts[i]}
				o.Routes = routes
				return o
			},
		}
	}
	t.Cleanup(func() {
		for _, node := range c.nodes {
			node.stop()
		}
	})
	for i, node := range c.nodes {
		if err := node.start(); err != nil {
			t.Fatalf("testenv: start nats cluster node %d: %v", i, err)
		}
	}
	if _, err := c.waitMetaLeader(n); err != nil {
		t.Fatalf("testenv: start nats cluster: %v", err)
	}
	return c
}

// Size returns the number of nodes, running or not.
func (c *NATSCluster) Size() int { return len(c.nodes) }

// URLs returns the client URLs of all nodes, comma-separated, as accepted by
// nats.Connect.
func (c *NATSCluster) URLs() string {
	urls := make([]string, len(c.nodes))
	for i, node := range c.nodes {
		urls[i] = node.URL()
	}
	return strings.Join(urls, ",")
}

// NodeURL returns the client URL of node i.
func (c *NATSCluster) NodeURL(i int) string { return c.nodes[i].URL() }

// Node returns the running server of node i, or nil while it is stopped.
func (c *NATSCluster) Node(i int) *server.Server { return c.nodes[i].Server() }

// StopNode shuts node i down; stopping a stopped node is a no-op.
func (c *NATSCluster) StopNode(t testing.TB, i int) {
	t.Helper()
	c.nodes[i].Stop(t)
}

// StartNode restarts node i with its previous ports and store directory.
// It returns once the node accepts connections; it may still be catching up
// with the cluster.
func (c *NATSCluster) StartNode(t testing.TB, i int) {
	t.Helper()
	c.nodes[i].Start(t)
}

// Connect returns a client that knows all nodes, closed in t.Cleanup; see
// NATS.Connect for its reconnect defaults.
func (c *NATSCluster) Connect(t testing.TB, opts ...nats.Option) *nats.Conn {
	t.Helper()
	return connectNATS(t, c.URLs(), opts)
}

// WaitForMetaLeader waits until a running node is JetStream meta leader and
// sees every running node as a peer, and returns its index. Use it after
// stopping or starting nodes, before creating streams.
func (c *NATSCluster) WaitForMetaLeader(t testing.TB) int {
	t.Helper()
	running := 0
	for _, node := range c.nodes {
		if node.Running() {
			running++
		}
	}
	i, err := c.waitMetaLeader(running)
	if err != nil {
		t.Fatalf("testenv: %v", err)
	}
	return i
}

func (c *NATSCluster) waitMetaLeader(peers int) (int, error) {
	deadline := time.Now().Add(jsClusterTimeout)
	for time.Now().Before(deadline) {
		for i, node := range c.nodes {
			srv := node.Server()
			if srv != nil && srv.JetStreamIsLeader() && len(srv.JetStreamClusterPeers()) >= peers {
				return i, nil
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	return -1, fmt.Errorf("no JetStream meta leader with %d peers after %s", peers, jsClusterTimeout)
}

// StreamLeader waits until a running node leads stream (in the default
// global account, i.e. without configured accounts) and returns its index.
// After the leader is stopped it returns the newly elected one.
func (c *NATSCluster) StreamLeader(t testing.TB, stream string) int {
	t.Helper()
	deadline := time.Now().Add(jsClusterTimeout)
	for time.Now().Before(deadline) {
		for i, node := range c.nodes {
			if srv := node.Server(); srv != nil && srv.JetStreamIsStreamLeader(server.DEFAULT_GLOBAL_ACCOUNT, stream) {
				return i
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("testenv: no leader for stream %q after %s", stream, jsClusterTimeout)
	return -1
}
