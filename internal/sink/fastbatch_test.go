package sink

import (
	"context"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/stretchr/testify/require"
	"go.uber.org/zap"

	"github.com/outbox-relay/outbox-relay/internal/metrics"
	"github.com/outbox-relay/outbox-relay/internal/testenv"
)

// testFastSink is testSink publishing in fast batches, to a stream it
// creates with allow_batched.
func testFastSink(t *testing.T) (*Sink, *Connection, *metrics.Metrics) {
	t.Helper()
	s, conn, _, m := testSinkMode(t, PublishBatch, 5*time.Second, 0)
	require.True(t, s.fast, "a stream created for batch publishing allows it")
	return s, conn, m
}

// chainMsg is a message of the relay's chain: expecting its predecessor's
// sequence and id.
func chainMsg(id string, expectSeq uint64, expectID string, noReply bool) Message {
	return Message{Subject: "outbox.e", ID: id, Data: []byte("payload"), CheckLastSeq: true, ExpectLastSeq: expectSeq, ExpectLastMsgID: expectID, NoReply: noReply}
}

// publishBurst publishes ids as one burst after the stream's message
// (lastSeq, lastID): all but the last without a reply. It returns the last
// one's Pending.
func publishBurst(t *testing.T, s *Sink, ids []string, lastSeq uint64, lastID string) Pending {
	t.Helper()
	var p Pending
	for i, id := range ids {
		var err error
		p, err = s.Publish(context.Background(), chainMsg(id, lastSeq+uint64(i), lastID, i < len(ids)-1))
		require.NoError(t, err)
		lastID = id
	}
	require.NotNil(t, p)
	return p
}

// TestFastBatchPublish: bursts (messages without a reply, then one asking)
// go as fast batches, the burst's last message committing each; its Ack is
// the stream sequence of the last message, and every message is counted as
// published once the commit is stored. A message of another writer in the
// middle of a burst ends the batch there: the commit fails with
// ErrWrongSequence and nothing of the burst after the foreign message is
// stored. A duplicate at the commit shows as an Ack at the wrong place. A
// message asking for a reply without an expectation goes on its own, and
// reports a duplicate as a single publish does.
func TestFastBatchPublish(t *testing.T) {
	s, conn, m := testFastSink(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	stream, err := conn.JetStream.Stream(ctx, "OUTBOX")
	require.NoError(t, err)

	// Two bursts back to back, pipelined.
	p1 := publishBurst(t, s, []string{"a1", "a2", "a3", "a4"}, 0, "")
	p2 := publishBurst(t, s, []string{"a5", "a6", "a7"}, 4, "a4")
	ack, err := waitAck(t, p1)
	require.NoError(t, err)
	require.Equal(t, uint64(4), ack.Seq)
	ack, err = waitAck(t, p2)
	require.NoError(t, err)
	require.Equal(t, uint64(7), ack.Seq)
	require.False(t, ack.Duplicate)
	require.Equal(t, 7.0, testutil.ToFloat64(m.SinkPublished))
	require.Equal(t, 2.0, testutil.ToFloat64(m.SinkFastBatches))
	require.Equal(t, 0.0, testutil.ToFloat64(m.SinkInflight))
	require.Equal(t, []string{"a1", "a2", "a3", "a4", "a5", "a6", "a7"}, storedIDs(t, stream))

	// Another writer's message lands after a9: a10 is refused, and the
	// batch ends there.
	publishNoReply(t, s, chainMsg("a8", 7, "a7", true))
	publishNoReply(t, s, chainMsg("a9", 8, "a8", true))
	require.NoError(t, conn.Flush())
	_, err = conn.JetStream.Publish(ctx, "outbox.other", []byte("foreign"))
	require.NoError(t, err)
	p := publishBurst(t, s, []string{"a10", "a11", "a12"}, 9, "a9")
	_, err = waitAck(t, p)
	require.ErrorIs(t, err, ErrWrongSequence)
	require.ErrorIs(t, err, errBatchEnded)
	require.ErrorContains(t, err, "after 2 of its 5 messages")
	require.Equal(t, []string{"a1", "a2", "a3", "a4", "a5", "a6", "a7", "a8", "a9", "-"}, storedIDs(t, stream))

	// A duplicate at a commit is stored nowhere new: its Ack is not where
	// it expected to land (11).
	p = publishBurst(t, s, []string{"a13", "a9"}, 10, "")
	ack, err = waitAck(t, p)
	require.NoError(t, err)
	require.Equal(t, uint64(11), ack.Seq, "a13 only")
	require.False(t, ack.Duplicate)

	// A wrong last message id mid-batch: the commit fails at once (the
	// server would never answer it).
	publishNoReply(t, s, chainMsg("a14", 11, "a13", true))
	p = publishBurst(t, s, []string{"a15", "a16"}, 12, "nope")
	_, err = waitAck(t, p)
	require.ErrorIs(t, err, ErrWrongSequence)
	require.NotErrorIs(t, err, nats.ErrTimeout)

	// On its own: no expectation, a duplicate reported as such.
	p, err = s.Publish(ctx, Message{Subject: "outbox.e", ID: "a2", Data: []byte("x")})
	require.NoError(t, err)
	ack, err = waitAck(t, p)
	require.NoError(t, err)
	require.Equal(t, Ack{Stream: "OUTBOX", Seq: 2, Duplicate: true}, ack)

	// Every message of a batch must expect the last sequence.
	_, err = s.Publish(ctx, Message{Subject: "outbox.e", ID: "b1", Data: []byte("x"), NoReply: true})
	require.ErrorContains(t, err, "must expect the last sequence")
}

// publishNoReply publishes m, which asks for no reply.
func publishNoReply(t *testing.T, s *Sink, m Message) {
	t.Helper()
	p, err := s.Publish(context.Background(), m)
	require.NoError(t, err)
	require.Nil(t, p)
}

// TestFastBatchPreflight: --publish-mode=batch refuses a stream without
// allow_batched; auto uses fast batches exactly when the stream allows them.
func TestFastBatchPreflight(t *testing.T) {
	ns := testenv.StartNATS(t)
	cfg := validConfig()
	cfg.NATSURL, cfg.PublishMode = ns.URL(), PublishBatch
	log := zap.NewNop()
	conn, err := Connect(cfg, log, metrics.New("test", "test"))
	require.NoError(t, err)
	t.Cleanup(conn.Close)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err = conn.JetStream.CreateStream(ctx, jetstream.StreamConfig{Name: "OUTBOX", Subjects: []string{"outbox.>"}, Storage: jetstream.FileStorage})
	require.NoError(t, err)
	state, err := conn.EnsureStream(ctx, cfg, []string{"outbox.>"}, log)
	require.ErrorIs(t, err, ErrConfig)
	require.ErrorContains(t, err, "allow_batched")
	require.False(t, UsesFastBatch(PublishAuto, state))
	require.False(t, UsesFastBatch(PublishAsync, StreamState{AllowBatched: true}))
	require.True(t, UsesFastBatch(PublishAuto, StreamState{AllowBatched: true}))
	require.True(t, UsesFastBatch(PublishBatch, state))
	cfg.PublishMode = "fast"
	require.ErrorContains(t, cfg.Validate(), "publish-mode")
}
