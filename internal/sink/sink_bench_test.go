package sink

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"go.uber.org/zap"

	"github.com/outbox-relay/outbox-relay/internal/metrics"
	"github.com/outbox-relay/outbox-relay/internal/testenv"
)

// benchSink connects to a fresh in-process NATS server as the relay does and
// creates the stream the relay would.
func benchSink(b *testing.B, window int) *Sink {
	b.Helper()
	ns := testenv.StartNATS(b)
	cfg := Config{
		NATSURL: ns.URL(), Stream: "OUTBOX", CreateStream: true, StreamSubjects: []string{"outbox.*.*"},
		DuplicateWindow: 2 * time.Minute, Replicas: 1, PublishTimeout: 10 * time.Second,
		ConnectTimeout: 5 * time.Second, RequestTimeout: 5 * time.Second, ReconnectWait: time.Second,
	}
	log := zap.NewNop()
	m := metrics.New("bench", "bench")
	nc, err := Connect(cfg, log, m)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(nc.Close)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := nc.EnsureStream(ctx, cfg, []string{"outbox.*.*"}, log); err != nil {
		b.Fatal(err)
	}
	s, err := New(nc.Conn, cfg, m)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = s.Close() })
	return s
}

// benchHeader is the header set the mapper stamps on an event without row
// headers.
func benchHeader() nats.Header {
	return nats.Header{
		"Outbox-Aggregate-Type": {"order"},
		"Outbox-Aggregate-Id":   {"o-123456"},
		"Outbox-Event-Type":     {"created"},
		"Outbox-Created-At":     {"2026-11-26T04:13:53.123456Z"},
		"Outbox-Commit-Lsn":     {"16/B374D848"},
		"Outbox-Commit-Index":   {"3"},
		"Outbox-Origin":         {"7311425360846561234/app/outbox_relay"},
	}
}

// BenchmarkPublish publishes through the Sink to a real JetStream stream
// (file storage, in-process server) as the pump does: each message with a
// Nats-Msg-Id and an expected last sequence, at most window in flight,
// waiting for the oldest acknowledgement. The server's work is part of the
// measurement. window=1 is a synchronous round trip per message; bare=true
// leaves out the relay's own headers and the sequence check, to show what
// they cost the client and the server.
func BenchmarkPublish(b *testing.B) {
	for _, bc := range []struct {
		size, window int
		bare         bool
	}{{256, 1024, false}, {256, 1024, true}, {1024, 1024, false}, {256, 1, false}} {
		b.Run(fmt.Sprintf("payload=%d/window=%d/bare=%t", bc.size, bc.window, bc.bare), func(b *testing.B) {
			s := benchSink(b, bc.window)
			header := benchHeader()
			if bc.bare {
				header = nats.Header{}
			}
			ctx := context.Background()
			data := []byte(fmt.Sprintf(`{"n": 123456, "pad": "%s"}`, strings.Repeat("x", max(0, bc.size-24))))
			ring := make([]Pending, bc.window)
			wait := func(p Pending, seq uint64) {
				ack, err := p.Wait(ctx)
				if err != nil {
					b.Fatal(err)
				}
				if ack.Seq != seq || ack.Duplicate {
					b.Fatalf("stored at %d (duplicate %t), want %d", ack.Seq, ack.Duplicate, seq)
				}
			}
			b.SetBytes(int64(len(data)))
			b.ReportAllocs()
			b.ResetTimer()
			for i := range b.N {
				slot := i % bc.window
				if i >= bc.window {
					wait(ring[slot], uint64(i-bc.window+1))
				}
				p, err := s.Publish(ctx, Message{
					Subject: "outbox.order.created", ID: "bench-" + strconv.Itoa(i), Data: data, Header: header,
					CheckLastSeq: !bc.bare, ExpectLastSeq: uint64(i),
				})
				if err != nil {
					b.Fatal(err)
				}
				ring[slot] = p
			}
			for i := max(0, b.N-bc.window); i < b.N; i++ {
				wait(ring[i%bc.window], uint64(i+1))
			}
		})
	}
}
