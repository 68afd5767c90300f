package sink

import (
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

// These tests pin down the fast batch rules (allow_batched, nats-server
// 2.14+, checked on 2.15.2) that the sink's batch publishing (BatchPublish)
// and the pump's fake stream rest on.

// fastReply is one reply to a fast batch: which message's reply subject it
// came to (its batch sequence), and what it says.
type fastReply struct {
	To      int
	Type    string // "ack", "gap", "err", or "" for a PubAck or an API error
	Seq     uint64
	Count   uint64
	Dup     bool
	ErrCode int
}

func (r fastReply) String() string {
	switch {
	case r.Type != "":
		return fmt.Sprintf("@%d %s seq %d err %d", r.To, r.Type, r.Seq, r.ErrCode)
	case r.ErrCode != 0:
		return fmt.Sprintf("@%d error %d", r.To, r.ErrCode)
	}
	return fmt.Sprintf("@%d pubAck seq %d count %d dup %t", r.To, r.Seq, r.Count, r.Dup)
}

// fastPipeline sends fast batches over one connection and collects every
// reply, in arrival order, by batch.
type fastPipeline struct {
	nc      *nats.Conn
	inbox   string
	mu      sync.Mutex
	replies map[string][]fastReply
}

func newFastPipeline(t *testing.T, nc *nats.Conn) *fastPipeline {
	t.Helper()
	p := &fastPipeline{nc: nc, inbox: nc.NewInbox(), replies: map[string][]fastReply{}}
	sub, err := nc.Subscribe(p.inbox+".>", func(m *nats.Msg) {
		// <inbox>.<batch>.<flow>.<gap>.<seq>.<op>.$FI
		parts := strings.Split(m.Subject[len(p.inbox)+1:], ".")
		var to int
		_, _ = fmt.Sscanf(parts[3], "%d", &to)
		var body struct {
			Type      string `json:"type"`
			Seq       uint64 `json:"seq"`
			Count     uint64 `json:"count"`
			Duplicate bool   `json:"duplicate"`
			Error     *struct {
				ErrCode int `json:"err_code"`
			} `json:"error"`
		}
		_ = json.Unmarshal(m.Data, &body)
		r := fastReply{To: to, Type: body.Type, Seq: body.Seq, Count: body.Count, Dup: body.Duplicate}
		if body.Error != nil {
			r.ErrCode = body.Error.ErrCode
		}
		p.mu.Lock()
		p.replies[parts[0]] = append(p.replies[parts[0]], r)
		p.mu.Unlock()
	})
	require.NoError(t, err)
	t.Cleanup(func() { _ = sub.Unsubscribe() })
	require.NoError(t, nc.Flush())
	return p
}

// Fast batch operations, the reply subject's second last token.
const (
	opStart  = 0
	opAppend = 1
	opCommit = 2
)

// send publishes the seq-th message (from 1) of batch with op and header.
func (p *fastPipeline) send(t *testing.T, subject, batch string, seq, op int, header nats.Header) {
	t.Helper()
	reply := fmt.Sprintf("%s.%s.%d.fail.%d.%d.$FI", p.inbox, batch, 500, seq, op)
	require.NoError(t, p.nc.PublishMsg(&nats.Msg{Subject: subject, Reply: reply, Header: header, Data: []byte("x")}))
}

// sendBatch publishes one message per header as batch, the last committing it.
func (p *fastPipeline) sendBatch(t *testing.T, subject, batch string, headers ...nats.Header) {
	t.Helper()
	for i, h := range headers {
		op := opAppend
		switch {
		case i == len(headers)-1:
			op = opCommit
		case i == 0:
			op = opStart
		}
		p.send(t, subject, batch, i+1, op, h)
	}
}

// until waits for a reply to batch that ends it (a PubAck or an API error)
// and returns every reply to it so far.
func (p *fastPipeline) until(t *testing.T, batch string) []fastReply {
	t.Helper()
	require.NoError(t, p.nc.Flush())
	var out []fastReply
	require.Eventually(t, func() bool {
		p.mu.Lock()
		defer p.mu.Unlock()
		out = append([]fastReply(nil), p.replies[batch]...)
		for _, r := range out {
			if r.Type == "" {
				return true
			}
		}
		return false
	}, 30*time.Second, 5*time.Millisecond, "batch %s should end", batch)
	// Whatever else is on its way.
	time.Sleep(100 * time.Millisecond)
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]fastReply(nil), p.replies[batch]...)
}

// TestJetStreamFastBatchRules runs the fast batch rules the sink's batch
// publishing relies on (see fastbatch.go) against one server and a
// three-node cluster, with gaps set to fail:
//   - the first message is answered with the flow settings (a flow ack for
//     sequence 0), the commit with a PubAck holding the stream sequence of
//     the last message and the batch's count;
//   - a message refused mid-batch (another writer's message took its place)
//     is reported as a flow error, and ends the batch: the PubAck counts the
//     messages before it, and the batch's later messages are refused as of
//     an unknown batch (10208) or dropped, nothing of them stored;
//   - a duplicate is not reported: at the commit the PubAck is the last
//     stored message's (the place before the commit's own); mid-batch the
//     next message's expectation fails;
//   - a refusal of the first message is answered as a single publish's;
//   - a batch of nothing but duplicates is answered with sequence 0;
//   - on one replica a wrong last message id is answered to the message as
//     a single publish's refusal, without ending the batch;
//   - a batch of one is a single publish, a duplicate reported as such;
//   - a stream without allow_batched refuses every message (10205).
func TestJetStreamFastBatchRules(t *testing.T) {
	t.Run("one replica", func(t *testing.T) {
		fastBatchRules(t, testenv.StartNATS(t).Connect(t), 1)
	})
	t.Run("three replicas", func(t *testing.T) {
		c := testenv.StartNATSCluster(t, 3)
		c.WaitForMetaLeader(t)
		fastBatchRules(t, c.Connect(t), 3)
	})
}

// ended returns the replies up to the first that ends the batch, without
// the reply subject of a PubAck: the server sends it to the reply of the
// message being stored when the batch ended, which differs between one
// replica and a cluster. Later messages of the batch are either refused as
// of an unknown batch (10208) or, while the end is being stored in a
// cluster, dropped unanswered.
func ended(t *testing.T, rs []fastReply) []fastReply {
	t.Helper()
	var out []fastReply
	for i, r := range rs {
		if r.Type == "" && r.ErrCode == 0 {
			r.To = 0
		}
		out = append(out, r)
		if r.Type == "" {
			for _, later := range rs[i+1:] {
				require.Equal(t, 10208, later.ErrCode, "after the end: %v", rs)
			}
			break
		}
	}
	return out
}

func fastBatchRules(t *testing.T, nc *nats.Conn, replicas int) {
	js, err := jetstream.New(nc)
	require.NoError(t, err)
	s := contractStream(t, js, jetstream.StreamConfig{Name: "F", Subjects: []string{"F.>"}, Replicas: replicas, Duplicates: time.Minute, AllowBatchPublish: true})
	newPipeline(t, nc).ready(t, "F.probe")
	p := newFastPipeline(t, nc)
	settings := fastReply{To: 1, Type: "ack", Seq: 0}

	p.sendBatch(t, "F.e", "b1", chainHeader("f1", 0, ""), chainHeader("f2", 1, "f1"), chainHeader("f3", 2, "f2"))
	require.Equal(t, []fastReply{settings, {Seq: 3, Count: 3}}, ended(t, p.until(t, "b1")))

	// f5 expects the wrong place: the batch ends after f4.
	p.sendBatch(t, "F.e", "b2", chainHeader("f4", 3, "f3"), chainHeader("f5", 9, "f4"), chainHeader("f6", 5, "f5"))
	require.Equal(t, []fastReply{settings, {To: 2, Type: "err", Seq: 2, ErrCode: 10071}, {Seq: 4, Count: 1}},
		ended(t, p.until(t, "b2")))

	// The commit (f5 again) is a duplicate: the PubAck is f6's.
	p.sendBatch(t, "F.e", "b3", chainHeader("f5", 4, "f4"), chainHeader("f6", 5, "f5"), chainHeader("f5", 6, "f6"))
	require.Equal(t, []fastReply{settings, {Seq: 6, Count: 3}}, ended(t, p.until(t, "b3")))

	// f2 again mid-batch: dropped unreported, so f8's expectation fails.
	p.sendBatch(t, "F.e", "b4", chainHeader("f7", 6, "f6"), chainHeader("f2", 7, "f7"), chainHeader("f8", 8, "f2"))
	require.Equal(t, []fastReply{settings, {To: 3, Type: "err", Seq: 3, ErrCode: 10071}, {Seq: 7, Count: 2}},
		ended(t, p.until(t, "b4")))

	// Batches of one.
	p.sendBatch(t, "F.e", "b5", nats.Header{jetstream.MsgIDHeader: {"f7"}})
	require.Equal(t, []fastReply{{Seq: 7, Count: 1, Dup: true}}, ended(t, p.until(t, "b5")))
	p.sendBatch(t, "F.e", "b6", nats.Header{jetstream.MsgIDHeader: {"f8"}})
	require.Equal(t, []fastReply{{Seq: 8, Count: 1}}, ended(t, p.until(t, "b6")))

	// The first message refused.
	p.sendBatch(t, "F.e", "b7", chainHeader("f9", 1, ""), chainHeader("f10", 8, ""))
	require.Equal(t, []fastReply{settings, {To: 1, ErrCode: 10071}}, ended(t, p.until(t, "b7")))
	require.Equal(t, []string{"f1", "f2", "f3", "f4", "f5", "f6", "f7", "f8"}, storedIDs(t, s))

	// Nothing but duplicates: the PubAck names no sequence (0).
	p.sendBatch(t, "F.e", "b8", chainHeader("f7", 8, "f8"), chainHeader("f8", 8, "f8"))
	require.Equal(t, []fastReply{settings, {Seq: 0, Count: 2}}, ended(t, p.until(t, "b8")))

	if replicas == 1 {
		// A wrong last message id (checked on one replica only, after the
		// batch took the message) is answered as for a single publish,
		// to the message; the batch is not ended by it (its commit may
		// never be answered): the sink takes the reply as the batch's end.
		p.sendBatch(t, "F.e", "b9", chainHeader("f9", 8, "f8"), chainHeader("f10", 9, "nope"), chainHeader("f11", 10, "f10"))
		require.Equal(t, []fastReply{settings, {To: 2, ErrCode: 10070}}, p.until(t, "b9")[:2])
		require.Equal(t, []string{"f1", "f2", "f3", "f4", "f5", "f6", "f7", "f8", "f9"}, storedIDs(t, s))
	}

	contractStream(t, js, jetstream.StreamConfig{Name: "G", Subjects: []string{"G.>"}, Replicas: replicas})
	newPipeline(t, nc).ready(t, "G.probe")
	p.sendBatch(t, "G.e", "g1", nats.Header{jetstream.MsgIDHeader: {"g1"}}, nats.Header{jetstream.MsgIDHeader: {"g2"}})
	require.Equal(t, []fastReply{{To: 1, ErrCode: 10205}, {To: 2, ErrCode: 10205}}, p.until(t, "g1"))
}
