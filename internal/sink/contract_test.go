package sink

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"

	"github.com/outbox-relay/outbox-relay/internal/testenv"
)

// These tests pin down the JetStream behaviour the relay's ordering and
// recovery rest on, against real servers (one server and a three-node
// cluster). The pump's fake stream (internal/relay) encodes the same rules;
// if a server release changed one of them, these fail first.

// rawReply is one reply to a raw publish: the PubAck or the API error.
type rawReply struct {
	Seq       uint64
	Duplicate bool
	ErrCode   int
	Desc      string
}

func (r rawReply) String() string {
	if r.ErrCode != 0 {
		return fmt.Sprintf("error %d %q", r.ErrCode, r.Desc)
	}
	return fmt.Sprintf("stored at %d (duplicate %t)", r.Seq, r.Duplicate)
}

// pipeline publishes messages back to back over one connection, each with a
// reply subject of its own, and collects the replies by index.
type pipeline struct {
	nc      *nats.Conn
	inbox   string
	mu      sync.Mutex
	replies map[int]rawReply
	sent    int
}

func newPipeline(t *testing.T, nc *nats.Conn) *pipeline {
	t.Helper()
	p := &pipeline{nc: nc, inbox: nc.NewRespInbox(), replies: map[int]rawReply{}}
	sub, err := nc.Subscribe(p.inbox+".*", func(m *nats.Msg) {
		var i int
		_, _ = fmt.Sscanf(m.Subject[len(p.inbox)+1:], "%d", &i)
		var body struct {
			Seq       uint64 `json:"seq"`
			Duplicate bool   `json:"duplicate"`
			Error     *struct {
				ErrCode int    `json:"err_code"`
				Desc    string `json:"description"`
			} `json:"error"`
		}
		_ = json.Unmarshal(m.Data, &body)
		r := rawReply{Seq: body.Seq, Duplicate: body.Duplicate}
		if body.Error != nil {
			r = rawReply{ErrCode: body.Error.ErrCode, Desc: body.Error.Desc}
		}
		p.mu.Lock()
		p.replies[i] = r
		p.mu.Unlock()
	})
	require.NoError(t, err)
	t.Cleanup(func() { _ = sub.Unsubscribe() })
	require.NoError(t, nc.Flush())
	return p
}

// ready waits until a reply from the stream capturing subject reaches the
// pipeline: in a cluster the subscription's interest reaches the stream
// leader's node a moment after it is made, and replies sent before are lost.
// The probe expects an impossible last sequence, so nothing is stored (an
// impossible last message id would do on one replica, but see
// TestJetStreamReplicatedStreamsNeedSequenceOnly).
func (p *pipeline) ready(t *testing.T, subject string) {
	t.Helper()
	require.Eventually(t, func() bool {
		i := p.publish(t, subject, nats.Header{jetstream.ExpectedLastSeqHeader: {"4611686018427387904"}})
		deadline := time.Now().Add(200 * time.Millisecond)
		for time.Now().Before(deadline) {
			p.mu.Lock()
			_, ok := p.replies[i]
			p.mu.Unlock()
			if ok {
				return true
			}
			time.Sleep(5 * time.Millisecond)
		}
		return false
	}, 30*time.Second, time.Millisecond, "replies from the stream should reach the pipeline")
	p.mu.Lock()
	p.replies, p.sent = map[int]rawReply{}, 0
	p.mu.Unlock()
}

// publish sends one message and returns its index for reply.
func (p *pipeline) publish(t *testing.T, subject string, header nats.Header) int {
	t.Helper()
	i := p.sent
	p.sent++
	require.NoError(t, p.nc.PublishMsg(&nats.Msg{Subject: subject, Reply: fmt.Sprintf("%s.%d", p.inbox, i), Header: header, Data: []byte("x")}))
	return i
}

// wait returns every reply, in publish order.
func (p *pipeline) wait(t *testing.T) []rawReply {
	t.Helper()
	require.NoError(t, p.nc.Flush())
	require.Eventually(t, func() bool {
		p.mu.Lock()
		defer p.mu.Unlock()
		return len(p.replies) == p.sent
	}, 30*time.Second, 10*time.Millisecond, "every publish should be answered: %s", p.dump())
	p.mu.Lock()
	defer p.mu.Unlock()
	out := make([]rawReply, p.sent)
	for i := range out {
		out[i] = p.replies[i]
	}
	return out
}

// chainHeader is what the relay puts on a message of its ordered chain.
func chainHeader(id string, expectSeq uint64, expectID string) nats.Header {
	h := nats.Header{jetstream.MsgIDHeader: {id}, jetstream.ExpectedLastSeqHeader: {fmt.Sprint(expectSeq)}}
	if expectID != "" {
		h[jetstream.ExpectedLastMsgIDHeader] = []string{expectID}
	}
	return h
}

func contractStream(t *testing.T, js jetstream.JetStream, cfg jetstream.StreamConfig) jetstream.Stream {
	t.Helper()
	if cfg.Name == "" {
		cfg.Name = "C"
	}
	if len(cfg.Subjects) == 0 {
		cfg.Subjects = []string{"c.>"}
	}
	cfg.Storage = jetstream.FileStorage
	var s jetstream.Stream
	require.Eventually(t, func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		var err error
		s, err = js.CreateStream(ctx, cfg)
		return err == nil
	}, time.Minute, 200*time.Millisecond, "create stream %s", cfg.Name)
	if cfg.Replicas > 1 {
		require.Eventually(t, func() bool {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			info, err := s.Info(ctx)
			if err != nil || info.Cluster == nil || info.Cluster.Leader == "" || len(info.Cluster.Replicas) != cfg.Replicas-1 {
				return false
			}
			for _, r := range info.Cluster.Replicas {
				if !r.Current {
					return false
				}
			}
			return true
		}, time.Minute, 100*time.Millisecond, "stream %s should have a leader and current replicas", cfg.Name)
	}
	return s
}

func lastSeq(t *testing.T, s jetstream.Stream) uint64 {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	info, err := s.Info(ctx)
	require.NoError(t, err)
	return info.State.LastSeq
}

// TestJetStreamChainRefusesEverythingAfterAForeignMessage: on a stream with
// one replica, a pipelined burst where each message expects its
// predecessor's sequence and message id, with a message from someone else
// landing mid-burst: nothing of the burst after it is stored. This is what
// makes an acknowledged message proof that its predecessors are the relay's
// own on such a stream.
func TestJetStreamChainRefusesEverythingAfterAForeignMessage(t *testing.T) {
	ns := testenv.StartNATS(t)
	nc := ns.Connect(t)
	js, err := jetstream.New(nc)
	require.NoError(t, err)
	s := contractStream(t, js, jetstream.StreamConfig{Duplicates: time.Minute})
	p := newPipeline(t, nc)
	const n, foreignAt = 60, 25
	prevID, expect := "", uint64(0)
	for i := range n {
		if i == foreignAt {
			// Another writer: no message id, no expectations.
			require.NoError(t, nc.Publish("c.other", []byte("foreign")))
		}
		id := fmt.Sprintf("e%d", i)
		p.publish(t, "c.event", chainHeader(id, expect, prevID))
		prevID, expect = id, expect+1
	}
	replies := p.wait(t)
	for i, r := range replies {
		if i < foreignAt {
			require.Equal(t, rawReply{Seq: uint64(i + 1)}, r, "message %d before the foreign one", i)
			continue
		}
		require.Contains(t, []int{10070, 10071}, r.ErrCode, "message %d after the foreign one must be refused, got %s", i, r)
	}
	require.Equal(t, uint64(foreignAt+1), lastSeq(t, s), "only the messages before the foreign one and the foreign one are stored")
}

// TestJetStreamReplicatedStreamsNeedSequenceOnly pins down why the relay never
// sends Nats-Expected-Last-Msg-Id to a stream with more than one replica:
// nats-server (v2.15.2) checks it only when the replicas apply the message,
// and a mismatch there stops the stream for good (no leader, every publish
// times out). Expected-last-sequence is checked before the proposal and
// refuses cleanly, but it is arithmetic: a message from another writer takes
// the place of a refused one, and the next message of the burst is stored.
// If this test starts failing, the server changed: revisit the relay's
// replicated-stream mode (internal/relay, ordering guard).
func TestJetStreamReplicatedStreamsNeedSequenceOnly(t *testing.T) {
	cluster := testenv.StartNATSCluster(t, 3)
	cluster.WaitForMetaLeader(t)
	nc := cluster.Connect(t)
	js, err := jetstream.New(nc)
	require.NoError(t, err)

	t.Run("sequence arithmetic lets a later message take a refused one's place", func(t *testing.T) {
		s := contractStream(t, js, jetstream.StreamConfig{Name: "SEQ", Subjects: []string{"q.>"}, Replicas: 3, Duplicates: time.Minute})
		p := newPipeline(t, nc)
		p.ready(t, "q.probe")
		require.NoError(t, nc.Publish("q.other", []byte("foreign")))
		first := p.publish(t, "q.event", nats.Header{jetstream.MsgIDHeader: {"a"}, jetstream.ExpectedLastSeqHeader: {"0"}})
		second := p.publish(t, "q.event", nats.Header{jetstream.MsgIDHeader: {"b"}, jetstream.ExpectedLastSeqHeader: {"1"}})
		replies := p.wait(t)
		require.Equal(t, 10071, replies[first].ErrCode, "the first is refused: %s", replies[first])
		require.Equal(t, rawReply{Seq: 2}, replies[second], "the second is stored after the foreign message, its predecessor missing")
		require.Equal(t, uint64(2), lastSeq(t, s))
	})

	t.Run("a last message id mismatch stops the stream", func(t *testing.T) {
		s := contractStream(t, js, jetstream.StreamConfig{Replicas: 3, Duplicates: time.Minute})
		p := newPipeline(t, nc)
		p.ready(t, "c.probe")
		p.publish(t, "c.event", nats.Header{jetstream.MsgIDHeader: {"A"}})
		p.publish(t, "c.event", chainHeader("B", 1, "not-A"))
		replies := p.wait(t)
		require.Equal(t, rawReply{Seq: 1}, replies[0])
		require.Equal(t, 10070, replies[1].ErrCode, "%s", replies[1])
		// Give the cluster the time of several leader elections.
		require.Never(t, func() bool {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			defer cancel()
			info, err := s.Info(ctx)
			return err == nil && info.Cluster != nil && info.Cluster.Leader != ""
		}, 15*time.Second, time.Second, "the stream stays without a leader")
	})
}

// TestJetStreamLastMsgIDRules: a duplicate does not move the stream's last
// message id; a publish expecting an id that is not the last is refused with
// the actual last id in the description (which is how the relay learns the
// last id of a stream whose last message was already removed); a work-queue
// stream keeps the last id and the duplicate entry of a message its consumer
// removed, until the server restarts: then both are rebuilt from the messages
// it still holds.
func TestJetStreamLastMsgIDRules(t *testing.T) {
	ns := testenv.StartNATS(t)
	nc := ns.Connect(t)
	js, err := jetstream.New(nc)
	require.NoError(t, err)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	request := func(subject string, h nats.Header) rawReply {
		t.Helper()
		p := newPipeline(t, nc)
		p.publish(t, subject, h)
		return p.wait(t)[0]
	}
	probe := func() rawReply {
		return request("c.probe", nats.Header{jetstream.ExpectedLastMsgIDHeader: {"no-such-id-7f3c"}})
	}

	contractStream(t, js, jetstream.StreamConfig{Duplicates: time.Minute})
	require.Equal(t, rawReply{Seq: 1}, request("c.e", nats.Header{jetstream.MsgIDHeader: {"A"}}))
	require.Equal(t, rawReply{Seq: 2}, request("c.e", nats.Header{jetstream.MsgIDHeader: {"B"}}))
	require.Equal(t, rawReply{Seq: 1, Duplicate: true}, request("c.e", nats.Header{jetstream.MsgIDHeader: {"A"}}))
	refused := request("c.e", chainHeader("C", 2, "A"))
	require.Equal(t, 10070, refused.ErrCode, "the duplicate of A must not have made A the last id: %s", refused)
	require.Equal(t, "wrong last msg ID: B", refused.Desc)
	require.Equal(t, rawReply{ErrCode: 10070, Desc: "wrong last msg ID: B"}, probe(), "a probe with an impossible id reveals the last id and stores nothing")
	require.Equal(t, rawReply{Seq: 3}, request("c.e", chainHeader("C", 2, "B")))

	// Work queue: the consumer removes what it acknowledges.
	wq := contractStream(t, js, jetstream.StreamConfig{Name: "WQ", Subjects: []string{"w.>"}, Retention: jetstream.WorkQueuePolicy, Duplicates: time.Minute})
	require.Equal(t, rawReply{Seq: 1}, request("w.e", nats.Header{jetstream.MsgIDHeader: {"W1"}}))
	require.Equal(t, rawReply{Seq: 2}, request("w.e", nats.Header{jetstream.MsgIDHeader: {"W2"}}))
	cons, err := wq.CreateOrUpdateConsumer(ctx, jetstream.ConsumerConfig{Durable: "worker", AckPolicy: jetstream.AckExplicitPolicy})
	require.NoError(t, err)
	batch, err := cons.Fetch(2, jetstream.FetchMaxWait(5*time.Second))
	require.NoError(t, err)
	for m := range batch.Messages() {
		require.NoError(t, m.DoubleAck(ctx))
	}
	require.Eventually(t, func() bool {
		info, err := wq.Info(ctx)
		return err == nil && info.State.Msgs == 0
	}, 10*time.Second, 20*time.Millisecond, "the consumer's acks remove the messages")
	_, err = wq.GetMsg(ctx, 2)
	require.ErrorIs(t, err, jetstream.ErrMsgNotFound, "a removed message cannot be read back")
	wqProbe := request("w.probe", nats.Header{jetstream.ExpectedLastMsgIDHeader: {"no-such-id-7f3c"}})
	require.Equal(t, rawReply{ErrCode: 10070, Desc: "wrong last msg ID: W2"}, wqProbe, "the last id outlives the message")
	require.Equal(t, rawReply{Seq: 2, Duplicate: true}, request("w.e", nats.Header{jetstream.MsgIDHeader: {"W2"}}), "the duplicate entry outlives the message")

	// After a restart the server rebuilds both from the messages it still
	// holds: a removed last message leaves no last id.
	ns.Restart(t)
	require.Eventually(t, func() bool {
		_, err := js.Stream(ctx, "WQ")
		return err == nil
	}, 30*time.Second, 100*time.Millisecond)
	after := request("w.probe", nats.Header{jetstream.ExpectedLastMsgIDHeader: {"no-such-id-7f3c"}})
	require.Equal(t, rawReply{ErrCode: 10070, Desc: "wrong last msg ID: "}, after)
	require.Equal(t, rawReply{Seq: 3}, request("w.e", nats.Header{jetstream.MsgIDHeader: {"W2"}}), "and no duplicate entry: the id is stored again")
}

func (p *pipeline) dump() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	var b strings.Builder
	for i := 0; i < p.sent; i++ {
		r, ok := p.replies[i]
		if !ok {
			fmt.Fprintf(&b, "%d:none ", i)
			continue
		}
		fmt.Fprintf(&b, "%d:%s ", i, r)
	}
	return b.String()
}
