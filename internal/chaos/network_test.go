package chaos

import (
	"bufio"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// echoServer echoes every line back and reports connections it saw end.
func echoServer(t *testing.T) (addr string, closed <-chan struct{}) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	t.Cleanup(func() { _ = ln.Close() })
	ended := make(chan struct{}, 100)
	go func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer func() { ended <- struct{}{} }()
				defer conn.Close()
				_, _ = io.Copy(conn, conn)
			}()
		}
	}()
	return ln.Addr().String(), ended
}

func dialLink(t *testing.T, l *Link) (net.Conn, *bufio.Reader) {
	t.Helper()
	conn, err := net.DialTimeout("tcp", l.Addr(), 5*time.Second)
	require.NoError(t, err)
	t.Cleanup(func() { _ = conn.Close() })
	return conn, bufio.NewReader(conn)
}

func roundTrip(t *testing.T, conn net.Conn, r *bufio.Reader, timeout time.Duration) (string, error) {
	t.Helper()
	require.NoError(t, conn.SetDeadline(time.Now().Add(timeout)))
	if _, err := conn.Write([]byte("ping\n")); err != nil {
		return "", err
	}
	return r.ReadString('\n')
}

func newTestLink(t *testing.T, upstream string) *Link {
	t.Helper()
	n := NewNetwork()
	t.Cleanup(n.Close)
	l, err := n.Link("test", upstream)
	require.NoError(t, err)
	return l
}

func TestLinkForwardsAndCuts(t *testing.T) {
	addr, _ := echoServer(t)
	l := newTestLink(t, addr)
	conn, r := dialLink(t, l)
	got, err := roundTrip(t, conn, r, 5*time.Second)
	require.NoError(t, err)
	require.Equal(t, "ping\n", got)

	before := l.Addr()
	require.NoError(t, l.Cut())
	_, err = roundTrip(t, conn, r, 5*time.Second)
	require.Error(t, err, "a cut closes open connections")
	refused, err := net.DialTimeout("tcp", before, time.Second)
	if err == nil {
		r := bufio.NewReader(refused)
		_, err = roundTrip(t, refused, r, 5*time.Second)
		_ = refused.Close()
	}
	require.Error(t, err, "a cut turns new connections away")

	require.NoError(t, l.Restore())
	require.Equal(t, before, l.Addr(), "the address survives a cut")
	conn, r = dialLink(t, l)
	got, err = roundTrip(t, conn, r, 5*time.Second)
	require.NoError(t, err)
	require.Equal(t, "ping\n", got)
}

func TestBlackholeSwallowsEverythingAndClosesNothing(t *testing.T) {
	addr, ended := echoServer(t)
	l := newTestLink(t, addr)
	conn, r := dialLink(t, l)
	_, err := roundTrip(t, conn, r, 5*time.Second)
	require.NoError(t, err)

	require.NoError(t, l.Blackhole())
	_, err = roundTrip(t, conn, r, 500*time.Millisecond)
	require.Error(t, err, "nothing comes back through a blackhole")
	var netErr net.Error
	require.ErrorAs(t, err, &netErr)
	require.True(t, netErr.Timeout(), "the connection stays open, silent: %v", err)

	// The client hangs up; the server must not notice, as with a host
	// that vanished.
	require.NoError(t, conn.Close())
	select {
	case <-ended:
		t.Fatal("the server saw the connection end through a blackhole")
	case <-time.After(500 * time.Millisecond):
	}

	// Healing resets what was blackholed, and the link works again.
	require.NoError(t, l.Heal())
	select {
	case <-ended:
	case <-time.After(5 * time.Second):
		t.Fatal("healing should close the blackholed connection")
	}
	conn, r = dialLink(t, l)
	got, err := roundTrip(t, conn, r, 5*time.Second)
	require.NoError(t, err)
	require.Equal(t, "ping\n", got)
}

func TestLatencyAndBandwidth(t *testing.T) {
	addr, _ := echoServer(t)
	l := newTestLink(t, addr)
	conn, r := dialLink(t, l)

	require.NoError(t, l.Latency(100*time.Millisecond, 0))
	start := time.Now()
	_, err := roundTrip(t, conn, r, 5*time.Second)
	require.NoError(t, err)
	require.GreaterOrEqual(t, time.Since(start), 200*time.Millisecond, "100ms each way")
	require.NoError(t, l.Heal())

	// 8 KB/s each way: 16 KB take about two seconds to come back.
	require.NoError(t, l.Bandwidth(8))
	payload := strings.Repeat("x", 16*1024-1) + "\n"
	start = time.Now()
	require.NoError(t, conn.SetDeadline(time.Now().Add(30*time.Second)))
	go func() { _, _ = conn.Write([]byte(payload)) }()
	got, err := r.ReadString('\n')
	require.NoError(t, err)
	require.Len(t, got, len(payload))
	require.GreaterOrEqual(t, time.Since(start), 1500*time.Millisecond)
	require.NoError(t, l.Heal())
}
