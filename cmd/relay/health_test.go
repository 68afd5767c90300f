package main

import (
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/outbox-relay/outbox-relay/internal/chaos"
)

// TestHealthFollowsANATSOutage stops NATS while events are written: lag and
// the oldest pending age grow, readiness flips, liveness holds (a restart
// would not help); when NATS is back, all recover.
func TestHealthFollowsANATSOutage(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	relay := f.startRelay(t, "RELAY_STATUS_INTERVAL", "200ms")
	f.write(t, 5, "before")
	f.waitStream(t, 5, 30*time.Second)
	require.Eventually(t, func() bool {
		m := relay.Metrics()
		return m["outbox_relay_cdc_oldest_pending_age_seconds"] == 0 && m["outbox_relay_cdc_lag_bytes"] < 64*1024
	}, 30*time.Second, 100*time.Millisecond, "caught up: nothing pending, little lag")

	f.nats.Stop(t)
	f.write(t, 50, "during")
	require.Eventually(t, func() bool {
		code, body := relay.Get("/readyz")
		return code == 503 && strings.Contains(body, "NATS")
	}, 30*time.Second, 100*time.Millisecond, "readiness flips while NATS is down")
	var age float64
	require.Eventually(t, func() bool {
		m := relay.Metrics()
		age = m["outbox_relay_cdc_oldest_pending_age_seconds"]
		return age > 1 && m["outbox_relay_cdc_lag_bytes"] > 0 && m["outbox_relay_sink_connected"] == 0
	}, 30*time.Second, 100*time.Millisecond, "lag and pending age grow")
	require.Eventually(t, func() bool {
		return relay.Metrics()["outbox_relay_cdc_oldest_pending_age_seconds"] > age+0.5
	}, 10*time.Second, 100*time.Millisecond, "the age keeps rising")
	code, _ := relay.Get("/healthz")
	require.Equal(t, 200, code, "a server being down is no reason to restart the relay")

	f.nats.Start(t)
	f.waitStream(t, 55, time.Minute)
	require.Eventually(t, func() bool {
		code, _ := relay.Get("/readyz")
		m := relay.Metrics()
		return code == 200 && m["outbox_relay_cdc_oldest_pending_age_seconds"] == 0 && m["outbox_relay_sink_connected"] == 1
	}, 30*time.Second, 100*time.Millisecond, "all recover")
	f.verify(t)
}

// TestLivenessFailsWhenTheRelayIsWedged blackholes the relay's NATS traffic
// without closing its connection: both servers look up, events are pending
// and nothing is acknowledged. After --stall-timeout liveness fails (a
// restart is the cure for such a silent stall); when traffic flows again it
// recovers and nothing is lost.
func TestLivenessFailsWhenTheRelayIsWedged(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	network := chaos.NewNetwork()
	t.Cleanup(network.Close)
	link, err := network.Link("nats", strings.TrimPrefix(f.nats.URL(), "nats://"))
	require.NoError(t, err)
	relay := f.startRelay(t, "RELAY_NATS_URL", "nats://"+link.Addr(), "RELAY_STALL_TIMEOUT", "3s", "RELAY_PUBLISH_TIMEOUT", "2s")
	f.write(t, 5, "before")
	f.waitStream(t, 5, 30*time.Second)

	require.NoError(t, link.Blackhole())
	f.write(t, 20, "during")
	require.Eventually(t, func() bool {
		code, body := relay.Get("/healthz")
		return code == 503 && strings.Contains(body, "none acknowledged")
	}, 30*time.Second, 100*time.Millisecond, "liveness fails on a silent stall")
	require.Equal(t, 1.0, relay.Metrics()["outbox_relay_sink_connected"], "the client still believes it is connected")

	require.NoError(t, link.Heal())
	f.waitStream(t, 25, time.Minute)
	require.Eventually(t, func() bool {
		code, _ := relay.Get("/healthz")
		return code == 200
	}, 30*time.Second, 100*time.Millisecond, "liveness recovers with progress")
	f.verify(t)
}
