package sink

import (
	"context"
	"fmt"
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

// atomicSink connects to a fresh NATS server, lets preflight create the
// stream OUTBOX for the atomic mode, and returns a Sink.
func atomicSink(t *testing.T) (*Sink, *Connection, StreamState) {
	t.Helper()
	ns := testenv.StartNATS(t)
	cfg := validConfig()
	cfg.NATSURL, cfg.CreateStream, cfg.PublishTimeout, cfg.Atomic = ns.URL(), true, 5*time.Second, true
	m := metrics.New("test", "test")
	conn, err := Connect(cfg, zap.NewNop(), m)
	require.NoError(t, err)
	t.Cleanup(conn.Close)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	state, err := conn.EnsureStream(ctx, cfg, []string{"outbox.>"}, zap.NewNop())
	require.NoError(t, err)
	s, err := New(conn.Conn, cfg, m)
	require.NoError(t, err)
	t.Cleanup(func() { _ = s.Close() })
	return s, conn, state
}

// TestSinkPublishesAtomicBatches: the Sink sets the batch headers, a message
// before the commit that asks for a reply resolves as staged, the commit
// with the last message's sequence and the batch's size; the whole batch is
// counted as published with its commit, and a batch left without a commit
// leaves the in-flight count when the next one starts. A batch holding a
// stored id fails with ErrBatchDuplicate.
func TestSinkPublishesAtomicBatches(t *testing.T) {
	s, conn, state := atomicSink(t)
	require.True(t, state.AllowAtomic, "a stream created for the atomic mode allows atomic batches")
	ctx := context.Background()
	batch := func(id string, ids []string, noReply bool, header nats.Header) []Pending {
		var out []Pending
		for k, mid := range ids {
			commit := k == len(ids)-1
			p, err := s.Publish(ctx, Message{
				Subject: "outbox.a", ID: mid, Data: []byte("xy"), Header: header,
				BatchID: id, BatchSeq: uint64(k + 1), BatchCommit: commit, NoReply: noReply && !commit,
			})
			require.NoError(t, err)
			out = append(out, p)
		}
		return out
	}

	ps := batch("b1", []string{"1", "2", "3"}, true, nats.Header{})
	require.Equal(t, 3.0, testutil.ToFloat64(s.m.SinkInflight))
	ack, err := waitAck(t, ps[2])
	require.NoError(t, err)
	require.Equal(t, Ack{Stream: "OUTBOX", Seq: 3, Count: 3}, ack)
	require.Equal(t, 3.0, testutil.ToFloat64(s.m.SinkPublished))
	require.Equal(t, 6.0, testutil.ToFloat64(s.m.SinkPublishedBytes))
	require.Zero(t, testutil.ToFloat64(s.m.SinkInflight))

	// Every message asking for a reply; one header map reused.
	h := nats.Header{}
	ps = batch("b2", []string{"4", "5"}, false, h)
	ack, err = waitAck(t, ps[0])
	require.NoError(t, err)
	require.Equal(t, Ack{Stream: "OUTBOX", Staged: true}, ack)
	ack, err = waitAck(t, ps[1])
	require.NoError(t, err)
	require.Equal(t, Ack{Stream: "OUTBOX", Seq: 5, Count: 2}, ack)
	require.Equal(t, 5.0, testutil.ToFloat64(s.m.SinkPublished))

	// A plain message after a batch carries no batch header.
	p, err := s.Publish(ctx, Message{Subject: "outbox.a", ID: "6", Header: h})
	require.NoError(t, err)
	ack, err = waitAck(t, p)
	require.NoError(t, err)
	require.Equal(t, uint64(6), ack.Seq)
	msg, err := conn.JetStream.Stream(ctx, "OUTBOX")
	require.NoError(t, err)
	stored, err := msg.GetMsg(ctx, 6)
	require.NoError(t, err)
	require.Empty(t, stored.Header.Get(headerBatchID))
	stored, err = msg.GetMsg(ctx, 5)
	require.NoError(t, err)
	require.Equal(t, "b2", stored.Header.Get(headerBatchID))
	require.Equal(t, "2", stored.Header.Get(headerBatchSeq))

	// Left without a commit: out of the in-flight count once the next
	// batch starts.
	for k := 1; k <= 2; k++ {
		p, err := s.Publish(ctx, Message{Subject: "outbox.a", ID: fmt.Sprint(100 + k), BatchID: "b3", BatchSeq: uint64(k), NoReply: true})
		require.NoError(t, err)
		require.Nil(t, p)
	}
	require.Equal(t, 2.0, testutil.ToFloat64(s.m.SinkInflight))
	ps = batch("b4", []string{"7", "8"}, true, nil)
	ack, err = waitAck(t, ps[1])
	require.NoError(t, err)
	require.Equal(t, Ack{Stream: "OUTBOX", Seq: 8, Count: 2}, ack)
	require.Zero(t, testutil.ToFloat64(s.m.SinkInflight), "the abandoned batch is not in flight")
	require.Equal(t, 8.0, testutil.ToFloat64(s.m.SinkPublished))

	// Committed by a message that is not stored.
	p, err = s.Publish(ctx, Message{Subject: "outbox.a", ID: "9", Data: []byte("xy"), BatchID: "b5", BatchSeq: 1, NoReply: true})
	require.NoError(t, err)
	require.Nil(t, p)
	p, err = s.Publish(ctx, Message{Subject: "outbox.a", BatchID: "b5", BatchSeq: 2, BatchCommit: true, BatchEOB: true})
	require.NoError(t, err)
	ack, err = waitAck(t, p)
	require.NoError(t, err)
	require.Equal(t, Ack{Stream: "OUTBOX", Seq: 9, Count: 1}, ack)
	require.Equal(t, 9.0, testutil.ToFloat64(s.m.SinkPublished))
	require.Zero(t, testutil.ToFloat64(s.m.SinkInflight))

	// A stored id: refused whole.
	ps = batch("b6", []string{"10", "2"}, true, nil)
	_, err = waitAck(t, ps[1])
	require.ErrorIs(t, err, ErrBatchDuplicate)
	require.Zero(t, testutil.ToFloat64(s.m.SinkInflight))
	require.Equal(t, 9.0, testutil.ToFloat64(s.m.SinkPublished))
}

// TestPreflightForAtomicBatches: the atomic mode refuses a stream that does
// not allow atomic batches and names the setting; a stream the relay creates
// for it allows them.
func TestPreflightForAtomicBatches(t *testing.T) {
	ns := testenv.StartNATS(t)
	cfg := validConfig()
	cfg.NATSURL = ns.URL()
	conn, err := Connect(cfg, zap.NewNop(), metrics.New("test", "test"))
	require.NoError(t, err)
	t.Cleanup(conn.Close)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err = conn.JetStream.CreateStream(ctx, jetstream.StreamConfig{Name: "OUTBOX", Subjects: []string{"outbox.>"}, Storage: jetstream.FileStorage})
	require.NoError(t, err)
	state, err := conn.EnsureStream(ctx, cfg, []string{"outbox.>"}, zap.NewNop())
	require.NoError(t, err, "the default mode does not need it")
	require.False(t, state.AllowAtomic)
	require.NotEmpty(t, state.ServerVersion)

	cfg.Atomic = true
	_, err = conn.EnsureStream(ctx, cfg, []string{"outbox.>"}, zap.NewNop())
	require.ErrorIs(t, err, ErrConfig)
	require.ErrorContains(t, err, "allow_atomic")
	require.ErrorContains(t, err, "--atomic-transactions")
}

func TestVersionAtLeast(t *testing.T) {
	for _, tc := range []struct {
		v    string
		want bool
	}{
		{"2.15.2", true},
		{"2.15.3", true},
		{"2.16.0", true},
		{"3.0.0", true},
		{"v2.15.2", true},
		{"2.15.2-beta.1", true},
		{"2.15.1", false},
		{"2.14.9", false},
		{"2.12.14", false},
		{"", false},
		{"2.15", false},
		{"garbage", false},
	} {
		require.Equal(t, tc.want, versionAtLeast(tc.v, MinAtomicServer), "%q", tc.v)
	}
	sc := jetstream.StreamConfig{AllowAtomicPublish: true, Subjects: []string{"outbox.>"}}
	require.Error(t, checkAtomic("S", sc, "2.14.4", ""))
	require.NoError(t, checkAtomic("S", sc, MinAtomicServer, ""))
	require.NoError(t, checkAtomic("S", sc, MinAtomicServer, "outbox.dlq.x"))
	err := checkAtomic("S", sc, MinAtomicServer, "dlq.x")
	require.ErrorIs(t, err, ErrConfig)
	require.ErrorContains(t, err, "dead-letter-subject")
}
