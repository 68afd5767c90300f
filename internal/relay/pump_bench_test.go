package relay

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"go.uber.org/zap"

	"github.com/outbox-relay/outbox-relay/internal/cdc"
	"github.com/outbox-relay/outbox-relay/internal/metrics"
	"github.com/outbox-relay/outbox-relay/internal/sink"
)

// benchSource delivers a fixed number of copies of one event, in positions
// that increase, and counts acknowledgements.
type benchSource struct {
	ch    chan cdc.Event
	acked atomic.Int64
}

func (s *benchSource) Events() <-chan cdc.Event { return s.ch }
func (s *benchSource) Ack(cdc.Event)            { s.acked.Add(1) }

// benchPublisher stores every message at once, at the next sequence.
type benchPublisher struct{ seq uint64 }

type storedAck struct{ ack sink.Ack }

func (p storedAck) Wait(context.Context) (sink.Ack, error) { return p.ack, nil }

func (p *benchPublisher) Publish(_ context.Context, m sink.Message) (sink.Pending, error) {
	p.seq++
	return storedAck{ack: sink.Ack{Stream: "OUTBOX", Seq: p.seq}}, nil
}

// benchLog is an empty one-replica stream; benchMarks keeps nothing.
type benchLog struct{}

func (benchLog) Info(context.Context) (sink.StreamInfo, error) {
	return sink.StreamInfo{Replicas: 1, Retention: "limits", Subjects: []string{"outbox.>"}}, nil
}

func (benchLog) Header(context.Context, uint64) (nats.Header, bool, error) { return nil, false, nil }
func (benchLog) LastMsgID(context.Context, string) (string, error)         { return "", nil }
func (benchLog) DuplicateOf(context.Context, string, string, bool) (uint64, bool, error) {
	return 0, false, nil
}

type benchMarks struct{}

func (benchMarks) Load(context.Context, string) ([]byte, bool, error) { return nil, false, nil }
func (benchMarks) Save(context.Context, string, []byte) error         { return nil }

// BenchmarkPump is the pump's own cost per event, mapping included, with a
// publisher that acknowledges at once: everything but the network and
// JetStream. Events come through a buffered channel as from the reader.
func BenchmarkPump(b *testing.B) {
	src := &benchSource{ch: make(chan cdc.Event, 4096)}
	marks := NewWatermark(benchLog{}, benchMarks{}, "OUTBOX", "bench", zap.NewNop())
	pump := New(src, &benchPublisher{}, marks, benchMapper(b), Config{
		Window: 1024, ShutdownTimeout: time.Second, RetryMin: time.Millisecond, RetryMax: time.Second, OnPoison: OnPoisonStop,
	}, zap.NewNop(), metrics.New("bench", "bench"))
	ev := benchEvent(256, "")
	ev.CommitTime = time.Now()
	b.ReportAllocs()
	b.ResetTimer()
	go func() {
		for i := range b.N {
			ev.Position = cdc.Position{CommitLSN: 0x16_B374D848, Index: uint32(i)}
			src.ch <- ev
		}
		close(src.ch)
	}()
	if err := pump.Run(context.Background()); err != nil {
		b.Fatal(err)
	}
	b.StopTimer()
	if got := src.acked.Load(); got != int64(b.N) {
		b.Fatalf("acknowledged %d of %d events", got, b.N)
	}
}
