package sink

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/stretchr/testify/require"
	"go.uber.org/zap"

	"github.com/outbox-relay/outbox-relay/internal/metrics"
	"github.com/outbox-relay/outbox-relay/internal/testenv"
)

// testSink connects to a fresh NATS server with a stream OUTBOX capturing
// outbox.> (at most maxMsgSize bytes a message when positive) and returns a
// Sink over that connection.
func testSink(t *testing.T, publishTimeout time.Duration, maxMsgSize int32, opts ...testenv.NATSOption) (*Sink, *Connection, *testenv.NATS) {
	t.Helper()
	s, conn, ns, _ := testSinkMode(t, PublishAsync, publishTimeout, maxMsgSize, opts...)
	return s, conn, ns
}

// testSinkMode is testSink with a publish mode, returning the metrics too.
func testSinkMode(t *testing.T, mode string, publishTimeout time.Duration, maxMsgSize int32, opts ...testenv.NATSOption) (*Sink, *Connection, *testenv.NATS, *metrics.Metrics) {
	t.Helper()
	ns := testenv.StartNATS(t, opts...)
	cfg := validConfig()
	cfg.NATSURL, cfg.CreateStream, cfg.PublishTimeout, cfg.PublishMode = ns.URL(), true, publishTimeout, mode
	log := zap.NewNop()
	m := metrics.New("test", "test")
	conn, err := Connect(cfg, log, m)
	require.NoError(t, err)
	t.Cleanup(conn.Close)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	state, err := conn.EnsureStream(ctx, cfg, []string{"outbox.>"}, log)
	require.NoError(t, err)
	cfg.FastBatch = UsesFastBatch(cfg.PublishMode, state)
	if maxMsgSize > 0 {
		stream, err := conn.JetStream.Stream(ctx, cfg.Stream)
		require.NoError(t, err)
		sc := stream.CachedInfo().Config
		sc.MaxMsgSize = maxMsgSize
		_, err = conn.JetStream.UpdateStream(ctx, sc)
		require.NoError(t, err)
	}
	s, err := New(conn.Conn, cfg, m)
	require.NoError(t, err)
	t.Cleanup(func() { _ = s.Close() })
	return s, conn, ns, m
}

func waitAck(t *testing.T, p Pending) (Ack, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return p.Wait(ctx)
}

// TestPublishIsAcknowledgedInOrder publishes a window of messages, each
// expecting its predecessor, and checks every PubAck names the message's own
// sequence; republishing the same IDs yields duplicates naming the stored
// copies, and the slots are reused across rounds.
func TestPublishIsAcknowledgedInOrder(t *testing.T) {
	s, _, _ := testSink(t, 5*time.Second, 0)
	ctx := context.Background()
	const n = 300
	for round := range 3 {
		var pending []Pending
		for i := range n {
			msg := Message{Subject: "outbox.order", ID: fmt.Sprintf("id-%d", i), Data: []byte("payload"), Header: nats.Header{"Outbox-Event-Type": {"created"}}}
			if round == 0 {
				msg.CheckLastSeq, msg.ExpectLastSeq = true, uint64(i)
			}
			p, err := s.Publish(ctx, msg)
			require.NoError(t, err)
			pending = append(pending, p)
		}
		for i, p := range pending {
			ack, err := waitAck(t, p)
			require.NoError(t, err)
			require.Equal(t, Ack{Stream: "OUTBOX", Seq: uint64(i + 1), Duplicate: round > 0}, ack, "round %d, message %d", round, i)
		}
	}
	require.LessOrEqual(t, len(s.slots), n, "slots are reused")
}

// TestPublishFailuresAreClassified checks each way JetStream refuses a
// message maps to the class the pump acts on.
func TestPublishFailuresAreClassified(t *testing.T) {
	s, _, _ := testSink(t, 5*time.Second, 2048, testenv.WithNATSConfig(func(o *server.Options) { o.MaxPayload = 64 * 1024 }))
	ctx := context.Background()
	first, err := s.Publish(ctx, Message{Subject: "outbox.a", ID: "1", Data: []byte("x"), CheckLastSeq: true, ExpectLastSeq: 0})
	require.NoError(t, err)
	_, err = waitAck(t, first)
	require.NoError(t, err)

	t.Run("wrong last sequence", func(t *testing.T) {
		p, err := s.Publish(ctx, Message{Subject: "outbox.a", ID: "2", Data: []byte("x"), CheckLastSeq: true, ExpectLastSeq: 7})
		require.NoError(t, err)
		_, err = waitAck(t, p)
		require.ErrorIs(t, err, ErrWrongSequence)
		require.Contains(t, err.Error(), "wrong last sequence")
	})
	t.Run("larger than the stream allows", func(t *testing.T) {
		p, err := s.Publish(ctx, Message{Subject: "outbox.a", ID: "3", Data: make([]byte, 4096)})
		require.NoError(t, err)
		_, err = waitAck(t, p)
		require.ErrorIs(t, err, ErrPermanent)
	})
	t.Run("larger than the server allows", func(t *testing.T) {
		_, err := s.Publish(ctx, Message{Subject: "outbox.a", ID: "4", Data: make([]byte, 65*1024)})
		require.ErrorIs(t, err, ErrPermanent)
		require.ErrorIs(t, err, nats.ErrMaxPayload)
	})
	t.Run("no stream captures the subject", func(t *testing.T) {
		p, err := s.Publish(ctx, Message{Subject: "elsewhere.a", ID: "5", Data: []byte("x")})
		require.NoError(t, err)
		_, err = waitAck(t, p)
		require.Error(t, err)
		kind, class := Classify(err)
		require.Equal(t, "no_responders", kind)
		require.NoError(t, class, "transient")
	})
	t.Run("stream still accepts the next message", func(t *testing.T) {
		p, err := s.Publish(ctx, Message{Subject: "outbox.a", ID: "6", Data: []byte("x"), CheckLastSeq: true, ExpectLastSeq: 1})
		require.NoError(t, err)
		ack, err := waitAck(t, p)
		require.NoError(t, err)
		require.Equal(t, uint64(2), ack.Seq)
	})
}

// TestPublishTimesOutAndIgnoresLateReplies answers publishes on a subject no
// stream captures from a plain subscriber, too late: the publish times out,
// and the late reply (addressed to the timed-out publish) does not resolve
// the next publish that reuses the slot.
func TestPublishTimesOutAndIgnoresLateReplies(t *testing.T) {
	s, conn, _ := testSink(t, 300*time.Millisecond, 0)
	ctx := context.Background()
	late := make(chan string, 1)
	sub, err := conn.Subscribe("slow.>", func(m *nats.Msg) { late <- m.Reply })
	require.NoError(t, err)
	defer func() { _ = sub.Unsubscribe() }()
	require.NoError(t, conn.Flush())

	p, err := s.Publish(ctx, Message{Subject: "slow.a", ID: "1", Data: []byte("x")})
	require.NoError(t, err)
	start := time.Now()
	_, err = waitAck(t, p)
	require.ErrorIs(t, err, nats.ErrTimeout)
	kind, class := Classify(err)
	require.Equal(t, "timeout", kind)
	require.NoError(t, class)
	require.GreaterOrEqual(t, time.Since(start), 250*time.Millisecond)
	oldReply := <-late

	// The next publish reuses the slot under a new reply subject; a reply
	// to the old one, looking like a PubAck, must be ignored.
	next, err := s.Publish(ctx, Message{Subject: "slow.b", ID: "2", Data: []byte("x")})
	require.NoError(t, err)
	newReply := <-late
	require.NotEqual(t, oldReply, newReply)
	require.NoError(t, conn.Publish(oldReply, []byte(`{"stream":"OUTBOX","seq":99}`)))
	require.NoError(t, conn.Flush())
	time.Sleep(50 * time.Millisecond)
	require.NoError(t, conn.Publish(newReply, []byte(`{"stream":"OUTBOX","seq":5,"duplicate":true}`)))
	ack, err := waitAck(t, next)
	require.NoError(t, err)
	require.Equal(t, Ack{Stream: "OUTBOX", Seq: 5, Duplicate: true}, ack)
}

// TestWaitAfterContextEndsCanBeRepeated checks that a Wait ended by its
// context leaves the publish in flight for a later Wait.
func TestWaitAfterContextEndsCanBeRepeated(t *testing.T) {
	s, conn, _ := testSink(t, 5*time.Second, 0)
	replies := make(chan string, 1)
	sub, err := conn.Subscribe("held.>", func(m *nats.Msg) { replies <- m.Reply })
	require.NoError(t, err)
	defer func() { _ = sub.Unsubscribe() }()
	require.NoError(t, conn.Flush())
	p, err := s.Publish(context.Background(), Message{Subject: "held.a", ID: "1", Data: []byte("x")})
	require.NoError(t, err)
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	_, err = p.Wait(ctx)
	require.ErrorIs(t, err, context.DeadlineExceeded)
	require.NoError(t, conn.Publish(<-replies, []byte(`{"stream":"OUTBOX","seq":1}`)))
	ack, err := waitAck(t, p)
	require.NoError(t, err)
	require.Equal(t, uint64(1), ack.Seq)
}

// TestPublishAcrossAServerRestart publishes while the server restarts: every
// publish resolves, stored or failed, none hangs past its timeout, and
// publishing works again afterwards.
func TestPublishAcrossAServerRestart(t *testing.T) {
	s, conn, ns := testSink(t, time.Second, 0)
	ctx := context.Background()
	var pending []Pending
	for i := range 200 {
		if i == 100 {
			ns.Restart(t)
		}
		p, err := s.Publish(ctx, Message{Subject: "outbox.a", ID: fmt.Sprint(i), Data: []byte("x")})
		if err == nil {
			pending = append(pending, p)
		}
	}
	for _, p := range pending {
		start := time.Now()
		_, err := waitAck(t, p)
		if err != nil {
			kind, class := Classify(err)
			require.NoError(t, class, "restart failures are transient: %v", err)
			require.Contains(t, []string{"timeout", "connection", "no_responders", "server"}, kind, "%v", err)
		}
		require.Less(t, time.Since(start), 3*time.Second)
	}
	require.Eventually(t, conn.IsConnected, 10*time.Second, 50*time.Millisecond)
	require.Eventually(t, func() bool {
		p, err := s.Publish(ctx, Message{Subject: "outbox.a", ID: "after", Data: []byte("x")})
		if err != nil {
			return false
		}
		_, err = waitAck(t, p)
		return err == nil
	}, 15*time.Second, 200*time.Millisecond)
}

func TestParseReplySubject(t *testing.T) {
	const inbox = "_INBOX.abc"
	for _, tc := range []struct {
		subject string
		index   int
		gen     uint64
		ok      bool
	}{
		{inbox + ".0.0", 0, 0, true},
		{inbox + ".17.3", 17, 3, true},
		{inbox + ".17", 0, 0, false},
		{inbox + ".", 0, 0, false},
		{inbox, 0, 0, false},
		{inbox + "..1", 0, 0, false},
		{inbox + ".a.1", 0, 0, false},
		{inbox + ".1.x", 0, 0, false},
		{inbox + ".1234567890.1", 0, 0, false},
		{inbox + ".1." + strings.Repeat("9", 30), 0, 0, false},
	} {
		index, gen, ok := parseReplySubject(tc.subject, len(inbox))
		require.Equal(t, tc.ok, ok, tc.subject)
		if ok {
			require.Equal(t, tc.index, index, tc.subject)
			require.Equal(t, tc.gen, gen, tc.subject)
		}
	}
}

// TestPublishWithoutReply sends messages without asking for a PubAck, then
// one that asks: its acknowledgement names its own sequence, all were stored
// in order, and the published counter includes the ones without a reply.
func TestPublishWithoutReply(t *testing.T) {
	s, conn, _ := testSink(t, 5*time.Second, 0)
	ctx := context.Background()
	for i := range 10 {
		p, err := s.Publish(ctx, Message{Subject: "outbox.a", ID: fmt.Sprint(i), Data: []byte("x"), CheckLastSeq: true, ExpectLastSeq: uint64(i), NoReply: true})
		require.NoError(t, err)
		require.Nil(t, p)
	}
	require.Equal(t, 10.0, testutil.ToFloat64(s.m.SinkInflight), "sent and not yet confirmed")
	p, err := s.Publish(ctx, Message{Subject: "outbox.a", ID: "10", Data: []byte("x"), CheckLastSeq: true, ExpectLastSeq: 10})
	require.NoError(t, err)
	require.Equal(t, 11.0, testutil.ToFloat64(s.m.SinkInflight))
	ack, err := waitAck(t, p)
	require.NoError(t, err)
	require.Equal(t, Ack{Stream: "OUTBOX", Seq: 11}, ack)
	stream, err := conn.JetStream.Stream(ctx, "OUTBOX")
	require.NoError(t, err)
	require.Equal(t, uint64(11), stream.CachedInfo().State.Msgs)
	require.Equal(t, 11.0, testutil.ToFloat64(s.m.SinkPublished))
	require.Zero(t, testutil.ToFloat64(s.m.SinkInflight))
}

// TestPublishesFailAtOnceWhenTheConnectionDrops: publishes in flight when
// the connection to NATS drops fail as soon as it drops, not after the
// publish timeout (no PubAck can come: the reply's interest went with the
// connection); publishes made while disconnected fail at once (no reconnect
// buffer to send them long after the relay gave up on them).
func TestPublishesFailAtOnceWhenTheConnectionDrops(t *testing.T) {
	for _, failFast := range []bool{true, false} {
		t.Run(fmt.Sprintf("fail on disconnect %t", failFast), func(t *testing.T) {
			s, conn, ns := testSink(t, 6*time.Second, 0)
			if failFast {
				s.FailOnDisconnect(conn.Disconnected)
			}
			// A listener that never answers: the publishes stay in flight.
			other := ns.Connect(t)
			_, err := other.Subscribe("silent.x", func(*nats.Msg) {})
			require.NoError(t, err)
			require.NoError(t, other.Flush())
			ctx := context.Background()
			var pending []Pending
			for i := range 5 {
				p, err := s.Publish(ctx, Message{Subject: "silent.x", ID: fmt.Sprint(i), Data: []byte("x")})
				require.NoError(t, err)
				pending = append(pending, p)
			}
			require.NoError(t, conn.Flush())
			ns.Stop(t)
			start := time.Now()
			for _, p := range pending {
				_, err := waitAck(t, p)
				require.Error(t, err)
			}
			if !failFast {
				require.GreaterOrEqual(t, time.Since(start), 4*time.Second, "without the signal the publishes wait out their timeout")
				return
			}
			require.Less(t, time.Since(start), 3*time.Second, "in-flight publishes must not wait out the publish timeout")
			_, err = s.Publish(ctx, Message{Subject: "outbox.a", ID: "while-down", Data: []byte("x")})
			require.Error(t, err, "a publish while disconnected fails at once")
			kind, class := Classify(err)
			require.NoError(t, class)
			require.Equal(t, "connection", kind, "%v", err)
		})
	}
}
