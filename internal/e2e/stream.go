package e2e

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// StoredMessage is a message read back from the stream.
type StoredMessage struct {
	Seq     uint64
	Subject string
	Header  nats.Header
	Data    []byte
}

// ReadStream returns every message of stream in sequence order.
func ReadStream(t testing.TB, nc *nats.Conn, stream string) []StoredMessage {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	msgs, err := ReadStreamContext(ctx, nc, stream)
	if err != nil {
		t.Fatalf("read stream %s: %v", stream, err)
	}
	return msgs
}

// ReadStreamContext returns every message of stream in sequence order. It
// rides out what a restart or a cluster does to a reader: a stream
// info or a fetch answered by "no responders" (a consumer just created on
// one node is not yet known to the node the client talks to), or a timeout
// while a leader moves. It resumes after the last message read, with a new
// consumer, until ctx is done.
func ReadStreamContext(ctx context.Context, nc *nats.Conn, stream string) ([]StoredMessage, error) {
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
	out := make([]StoredMessage, 0, info.State.Msgs)
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
				out = append(out, StoredMessage{Seq: md.Sequence.Stream, Subject: m.Subject(), Header: m.Headers(), Data: m.Data()})
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

// StreamCount returns how many messages stream holds, or -1 if it cannot be
// read now.
func StreamCount(nc *nats.Conn, stream string) int {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	js, err := jetstream.New(nc)
	if err != nil {
		return -1
	}
	s, err := js.Stream(ctx, stream)
	if err != nil {
		return -1
	}
	info, err := s.Info(ctx)
	if err != nil {
		return -1
	}
	return int(info.State.Msgs)
}

// IDs returns the Nats-Msg-Id of each message.
func IDs(msgs []StoredMessage) []string {
	ids := make([]string, len(msgs))
	for i, m := range msgs {
		ids[i] = m.Header.Get(jetstream.MsgIDHeader)
	}
	return ids
}

// Verdict compares what the stream holds with what was committed.
type Verdict struct {
	Expected, Stored      int
	Lost, Duplicated      int
	Reordered, Unexpected int
	FirstProblem          string
}

// OK reports whether the stream holds every committed event exactly once in
// commit order and nothing else.
func (v Verdict) OK() bool {
	return v.Lost == 0 && v.Duplicated == 0 && v.Reordered == 0 && v.Unexpected == 0 && v.Expected == v.Stored
}

func (v Verdict) String() string {
	s := fmt.Sprintf("expected %d, stored %d, lost %d, duplicated %d, reordered %d, unexpected %d",
		v.Expected, v.Stored, v.Lost, v.Duplicated, v.Reordered, v.Unexpected)
	if v.FirstProblem != "" {
		s += "; first problem: " + v.FirstProblem
	}
	return s
}

// Compare judges stored ids against expected ids (commit order).
func Compare(expected, stored []string) Verdict {
	v := Verdict{Expected: len(expected), Stored: len(stored)}
	note := func(format string, args ...any) {
		if v.FirstProblem == "" {
			v.FirstProblem = fmt.Sprintf(format, args...)
		}
	}
	pos := make(map[string]int, len(expected))
	for i, id := range expected {
		pos[id] = i
	}
	seen := make(map[string]bool, len(stored))
	last := -1
	for i, id := range stored {
		p, ok := pos[id]
		switch {
		case !ok:
			v.Unexpected++
			note("stream seq %d holds %q, never committed", i+1, id)
			continue
		case seen[id]:
			v.Duplicated++
			note("stream seq %d holds %q again", i+1, id)
			continue
		}
		seen[id] = true
		if p < last {
			v.Reordered++
			note("stream seq %d holds %q (commit position %d) after commit position %d", i+1, id, p, last)
		}
		last = max(last, p)
	}
	var missing []string
	for _, id := range expected {
		if !seen[id] {
			v.Lost++
			if len(missing) < 3 {
				missing = append(missing, id)
			}
		}
	}
	if len(missing) > 0 {
		note("lost, e.g. %s", strings.Join(missing, ", "))
	}
	return v
}
