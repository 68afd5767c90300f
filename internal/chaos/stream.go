package chaos

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/outbox-relay/outbox-relay/internal/e2e"
)

// ReadStream returns every message of stream in sequence order, like
// e2e.ReadStream, but rides out what a cluster does to a reader: a stream
// info or a fetch answered by "no responders" (a consumer just created on
// one node is not yet known to the node the client talks to), or a timeout
// while a leader moves. It resumes after the last message read, with a new
// consumer, until ctx is done.
func ReadStream(ctx context.Context, nc *nats.Conn, stream string) ([]e2e.StoredMessage, error) {
	js, err := jetstream.New(nc)
	if err != nil {
		return nil, err
	}
	var lastErr error
	retry := func(err error) error {
		lastErr = err
		select {
		case <-ctx.Done():
			return fmt.Errorf("read stream %s: %w (last error: %w)", stream, ctx.Err(), lastErr)
		case <-time.After(200 * time.Millisecond):
			return nil
		}
	}
	var info *jetstream.StreamInfo
	for {
		rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		s, err := js.Stream(rctx, stream)
		if err == nil {
			info, err = s.Info(rctx)
		}
		cancel()
		if err == nil {
			break
		}
		if err := retry(err); err != nil {
			return nil, err
		}
	}
	out := make([]e2e.StoredMessage, 0, info.State.Msgs)
	next := info.State.FirstSeq
	for uint64(len(out)) < info.State.Msgs {
		rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		cons, err := js.OrderedConsumer(rctx, stream, jetstream.OrderedConsumerConfig{
			DeliverPolicy: jetstream.DeliverByStartSequencePolicy,
			OptStartSeq:   next,
		})
		cancel()
		if err != nil {
			if err := retry(err); err != nil {
				return nil, err
			}
			continue
		}
		for uint64(len(out)) < info.State.Msgs {
			batch, err := cons.Fetch(1000, jetstream.FetchMaxWait(5*time.Second))
			if err != nil {
				lastErr = err
				break
			}
			got := 0
			for m := range batch.Messages() {
				md, err := m.Metadata()
				if err != nil {
					return nil, err
				}
				out = append(out, e2e.StoredMessage{Seq: md.Sequence.Stream, Subject: m.Subject(), Header: m.Headers(), Data: m.Data()})
				next = md.Sequence.Stream + 1
				got++
			}
			if err := batch.Error(); err != nil && !errors.Is(err, nats.ErrTimeout) {
				lastErr = err
				break
			}
			if got == 0 {
				lastErr = fmt.Errorf("stream has %d messages, read %d, and a fetch brought none", info.State.Msgs, len(out))
				break
			}
		}
		if uint64(len(out)) < info.State.Msgs {
			// A new consumer, from where this one stopped.
			if err := retry(lastErr); err != nil {
				return nil, err
			}
		}
	}
	return out, nil
}
