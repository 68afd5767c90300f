package testenv

import (
	"fmt"
	"net"
	"strconv"
	"testing"
	"time"
)

// loopbackHost is the only interface servers started by this package listen
// on, so tests never expose anything beyond the machine.
const loopbackHost = "127.0.0.1"

// FreePort returns a TCP port on 127.0.0.1 that was free a moment ago. The
// port is found by listening on port 0 and closing the listener, so another
// process could grab it in between; callers that bind it should tolerate that
// small race (StartPostgres retries with a new port).
func FreePort(t testing.TB) int {
	t.Helper()
	port, err := PickFreePort()
	if err != nil {
		t.Fatalf("testenv: %v", err)
	}
	return port
}

// PickFreePort is FreePort for callers without a testing.TB: it returns
// the error instead of failing a test. The same race applies.
func PickFreePort() (int, error) {
	l, err := net.Listen("tcp", net.JoinHostPort(loopbackHost, "0"))
	if err != nil {
		return 0, fmt.Errorf("find free port: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// waitPortFree blocks until port can be bound on 127.0.0.1 or timeout
// elapses. A restarted server must reuse its old port so clients can
// reconnect, and a just-closed listener or a racing test can hold it briefly.
func waitPortFree(port int, timeout time.Duration) error {
	addr := net.JoinHostPort(loopbackHost, strconv.Itoa(port))
	deadline := time.Now().Add(timeout)
	for {
		l, err := net.Listen("tcp", addr)
		if err == nil {
			return l.Close()
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("port %d still busy after %s: %w", port, timeout, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
