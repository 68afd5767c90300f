package main

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// consumer reads the stream from the start with an ordered consumer, the
// simplest way to see every message once, in stream order, and prints each.
type consumer struct {
	nc  *nats.Conn
	js  jetstream.JetStream
	it  jetstream.MessagesContext
	out *console

	// done is closed when the read loop ends; err says why, unless stop
	// ended it.
	done chan struct{}
	err  error

	mu      sync.Mutex
	ids     []string // Nats-Msg-Id of each message, in stream order
	lastSeq uint64

	stopOnce sync.Once
}

// startConsumer connects to NATS and starts printing the stream, which the
// relay has created by the time it is ready.
func startConsumer(ctx context.Context, natsURL string, out *console) (c *consumer, err error) {
	nc, err := nats.Connect(natsURL, nats.Name("outbox-demo-consumer"))
	if err != nil {
		return nil, fmt.Errorf("consumer: connect to %s: %w", natsURL, err)
	}
	defer func() {
		if err != nil {
			nc.Close()
		}
	}()
	js, err := jetstream.New(nc)
	if err != nil {
		return nil, fmt.Errorf("consumer: %w", err)
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	cons, err := js.OrderedConsumer(ctx, streamName, jetstream.OrderedConsumerConfig{})
	if err != nil {
		return nil, fmt.Errorf("consumer: create ordered consumer on %s: %w", streamName, err)
	}
	it, err := cons.Messages()
	if err != nil {
		return nil, fmt.Errorf("consumer: %w", err)
	}
	c = &consumer{nc: nc, js: js, it: it, out: out, done: make(chan struct{})}
	go c.loop()
	return c, nil
}

func (c *consumer) loop() {
	defer close(c.done)
	for {
		msg, err := c.it.Next()
		if errors.Is(err, jetstream.ErrMsgIteratorClosed) {
			return // stopped
		}
		if errors.Is(err, nats.ErrTimeout) {
			continue // idle; the ordered consumer keeps itself alive
		}
		if err != nil {
			c.err = err
			return
		}
		c.print(msg)
	}
}

// print writes one line per message: stream sequence, subject, Nats-Msg-Id
// (the outbox row's id) and payload, plus the traceparent when the row
// had one.
func (c *consumer) print(msg jetstream.Msg) {
	md, err := msg.Metadata()
	if err != nil {
		c.out.printf("consumer | unreadable metadata on %s: %v", msg.Subject(), err)
		return
	}
	id := msg.Headers().Get(jetstream.MsgIDHeader)
	line := fmt.Sprintf("consumer | seq %-4d %-24s %s %s", md.Sequence.Stream, msg.Subject(), id, msg.Data())
	if tp := msg.Headers().Get("traceparent"); tp != "" {
		line += "  traceparent=" + tp
	}
	c.mu.Lock()
	c.ids = append(c.ids, id)
	c.lastSeq = md.Sequence.Stream
	c.mu.Unlock()
	c.out.printf("%s", line)
}

// waitReceived waits until n messages have arrived.
func (c *consumer) waitReceived(n int, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		c.mu.Lock()
		got := len(c.ids)
		c.mu.Unlock()
		if got >= n {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("consumer received %d of %d committed events within %s", got, n, timeout)
		}
		select {
		case <-c.done:
			return fmt.Errorf("consumer stopped after %d of %d committed events: %w", got, n, c.err)
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// catchUp waits until the consumer has read up to the stream's last
// message, whatever it is.
func (c *consumer) catchUp(timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	stream, err := c.js.Stream(ctx, streamName)
	if err != nil {
		return fmt.Errorf("consumer: read stream info: %w", err)
	}
	info, err := stream.Info(ctx)
	if err != nil {
		return fmt.Errorf("consumer: read stream info: %w", err)
	}
	last := info.State.LastSeq
	for {
		c.mu.Lock()
		seq := c.lastSeq
		c.mu.Unlock()
		if seq >= last {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("consumer: read up to stream seq %d of %d within %s", seq, last, timeout)
		case <-c.done:
			return fmt.Errorf("consumer stopped at stream seq %d of %d: %w", seq, last, c.err)
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// stop ends the read loop and the connection. A read error that ended the
// loop early was reported when done closed. Calling it again is a no-op.
func (c *consumer) stop() {
	c.stopOnce.Do(func() {
		c.it.Stop()
		<-c.done
		c.nc.Close()
	})
}

// received returns the Nats-Msg-Ids seen, in stream order.
func (c *consumer) received() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]string(nil), c.ids...)
}
