package sink

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"

	"github.com/outbox-relay/outbox-relay/internal/testenv"
)

// These tests pin down the atomic batch rules (nats-server 2.12+, checked on
// 2.15.2) that the relay's atomic mode and its fake stream
// (internal/relay/fakes_test.go) rest on.

// batchMsg is what the relay puts on the k-th message (from 1) of an atomic
// batch, plus extra headers.
func batchMsg(id string, batch string, k int, commit bool, extra nats.Header) nats.Header {
	h := nats.Header{headerBatchID: {batch}, headerBatchSeq: {fmt.Sprint(k)}}
	if id != "" {
		h[jetstream.MsgIDHeader] = []string{id}
	}
	if commit {
		h[headerBatchCommit] = []string{"1"}
	}
	for k, v := range extra {
		h[k] = v
	}
	return h
}

// sendBatch publishes the ids as one atomic batch, each message asking for a
// reply, the first expecting expect as the stream's last sequence (none when
// expect < 0), and returns the indexes of the replies.
func sendBatch(t *testing.T, p *pipeline, subject, batch string, ids []string, expect int64) []int {
	t.Helper()
	var idx []int
	for k, id := range ids {
		var extra nats.Header
		if k == 0 && expect >= 0 {
			extra = nats.Header{jetstream.ExpectedLastSeqHeader: {fmt.Sprint(expect)}}
		}
		idx = append(idx, p.publish(t, subject, batchMsg(id, batch, k+1, k == len(ids)-1, extra)))
	}
	return idx
}

// staged is the empty reply to a batch message before its commit.
var staged = rawReply{}

func atomicStream(t *testing.T, js jetstream.JetStream, name string, replicas int) jetstream.Stream {
	t.Helper()
	return contractStream(t, js, jetstream.StreamConfig{
		Name: name, Subjects: []string{name + ".>"}, Replicas: replicas, Duplicates: time.Minute, AllowAtomicPublish: true,
	})
}

// storedIDs returns the message ids the stream holds, in order.
func storedIDs(t *testing.T, s jetstream.Stream) []string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	info, err := s.Info(ctx)
	require.NoError(t, err)
	var ids []string
	for seq := info.State.FirstSeq; seq <= info.State.LastSeq && info.State.LastSeq > 0; seq++ {
		m, err := s.GetMsg(ctx, seq)
		require.NoError(t, err)
		id := m.Header.Get(jetstream.MsgIDHeader)
		if id == "" {
			id = "-"
		}
		ids = append(ids, id)
	}
	return ids
}

// TestJetStreamAtomicBatchRules runs the atomic batch rules the relay relies
// on against one server and a three-node cluster:
//   - a message before the commit is answered with an empty reply, and
//     nothing is stored until the commit, which stores the batch whole, at
//     consecutive sequences, answered with the last one's;
//   - only the first message may expect a last sequence, which JetStream
//     checks against the stream when the commit arrives: batches sent back
//     to back on one connection, each expecting the end of the one before,
//     are all stored; a message of another writer in between makes the next
//     batch be refused whole;
//   - an expected last message id is refused in a batch (10177);
//   - an id in the duplicate window, or twice in the batch, makes JetStream
//     refuse the whole batch (10201) without saying which;
//   - DuplicateOf tells, without storing anything, whether an id is in the
//     duplicate window and where (10070 or 10071 otherwise);
//   - a commit with Nats-Batch-Commit: eob is not stored itself, and its
//     PubAck is the batch's last message's.
func TestJetStreamAtomicBatchRules(t *testing.T) {
	t.Run("one replica", func(t *testing.T) {
		ns := testenv.StartNATS(t)
		atomicBatchRules(t, ns.Connect(t), 1)
	})
	t.Run("three replicas", func(t *testing.T) {
		cluster := testenv.StartNATSCluster(t, 3)
		cluster.WaitForMetaLeader(t)
		atomicBatchRules(t, cluster.Connect(t), 3)
	})
}

func atomicBatchRules(t *testing.T, nc *nats.Conn, replicas int) {
	js, err := jetstream.New(nc)
	require.NoError(t, err)
	s := atomicStream(t, js, "A", replicas)
	p := newPipeline(t, nc)
	p.ready(t, "A.probe")

	// Staged, then stored whole with the commit.
	idx := sendBatch(t, p, "A.e", "b1", []string{"a1", "a2", "a3"}, 0)
	replies := p.wait(t)
	require.Equal(t, []rawReply{staged, staged, {Seq: 3}}, []rawReply{replies[idx[0]], replies[idx[1]], replies[idx[2]]})
	require.Equal(t, []string{"a1", "a2", "a3"}, storedIDs(t, s))

	// Pipelined batches, each expecting the end of the one before.
	p = newPipeline(t, nc)
	b2 := sendBatch(t, p, "A.e", "b2", []string{"a4", "a5"}, 3)
	b3 := sendBatch(t, p, "A.e", "b3", []string{"a6", "a7", "a8"}, 5)
	replies = p.wait(t)
	require.Equal(t, rawReply{Seq: 5}, replies[b2[1]], "%s", p.dump())
	require.Equal(t, rawReply{Seq: 8}, replies[b3[2]], "%s", p.dump())

	// Another writer's message between two batches: the next one is
	// refused whole, at its commit.
	p = newPipeline(t, nc)
	b4 := sendBatch(t, p, "A.e", "b4", []string{"a9"}, 8)
	require.NoError(t, nc.Publish("A.other", []byte("foreign")))
	b5 := sendBatch(t, p, "A.e", "b5", []string{"a10", "a11"}, 9)
	replies = p.wait(t)
	require.Equal(t, rawReply{Seq: 9}, replies[b4[0]])
	require.Equal(t, staged, replies[b5[0]])
	require.Equal(t, 10071, replies[b5[1]].ErrCode, "%s", replies[b5[1]])
	require.Equal(t, uint64(10), lastSeq(t, s), "nothing of the refused batch is stored")

	// Only the first message may expect a last sequence.
	p = newPipeline(t, nc)
	p.publish(t, "A.e", batchMsg("a12", "b6", 1, false, nil))
	p.publish(t, "A.e", batchMsg("a13", "b6", 2, true, nats.Header{jetstream.ExpectedLastSeqHeader: {"11"}}))
	replies = p.wait(t)
	require.Equal(t, 10164, replies[1].ErrCode, "%s", replies[1])

	// No expected last message id in a batch.
	p = newPipeline(t, nc)
	p.publish(t, "A.e", batchMsg("a12", "b7", 1, true, nats.Header{jetstream.ExpectedLastMsgIDHeader: {"a9"}}))
	replies = p.wait(t)
	require.Equal(t, 10177, replies[0].ErrCode, "%s", replies[0])

	// An id in the duplicate window, or twice in the batch: refused whole.
	p = newPipeline(t, nc)
	dup := sendBatch(t, p, "A.e", "b8", []string{"a12", "a2", "a13"}, -1)
	twice := sendBatch(t, p, "A.e", "b9", []string{"a14", "a15", "a14"}, -1)
	replies = p.wait(t)
	require.Equal(t, 10201, replies[dup[2]].ErrCode, "%s", replies[dup[2]])
	require.Equal(t, 10201, replies[twice[2]].ErrCode, "%s", replies[twice[2]])
	require.Equal(t, uint64(10), lastSeq(t, s), "nothing of either batch is stored")

	// The duplicate probe.
	r := NewStreamReader(nc, js, "A", 10*time.Second)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	seq, found, err := r.DuplicateOf(ctx, "A.e", "a2", replicas > 1)
	require.NoError(t, err)
	require.True(t, found)
	require.Equal(t, uint64(2), seq)
	_, found, err = r.DuplicateOf(ctx, "A.e", "a14", replicas > 1)
	require.NoError(t, err)
	require.False(t, found)
	require.Equal(t, uint64(10), lastSeq(t, s), "the probes store nothing")
	require.Equal(t, []string{"a1", "a2", "a3", "a4", "a5", "a6", "a7", "a8", "a9", "-"}, storedIDs(t, s))

	// Committed by a message that is not stored (eob).
	p = newPipeline(t, nc)
	p.publish(t, "A.e", batchMsg("a14", "b11", 1, false, nil))
	p.publish(t, "A.e", nats.Header{headerBatchID: {"b11"}, headerBatchSeq: {"2"}, headerBatchCommit: {"eob"}})
	replies = p.wait(t)
	require.Equal(t, []rawReply{staged, {Seq: 11}}, replies, "%s", p.dump())
	require.Equal(t, []string{"a1", "a2", "a3", "a4", "a5", "a6", "a7", "a8", "a9", "-", "a14"}, storedIDs(t, s))

	if replicas > 1 {
		// The stream is still healthy: a last message id expectation never
		// reached it.
		p = newPipeline(t, nc)
		idx = sendBatch(t, p, "A.e", "b12", []string{"a15"}, 11)
		require.Equal(t, rawReply{Seq: 12}, p.wait(t)[idx[0]])
	}
}

// TestJetStreamAtomicBatchLimits: a batch over the server's max_batch_size
// is refused at its commit with the limit in the description (10199); a
// batch whose earlier copy was left without a commit, sent again under the
// same id, is refused once as incomplete (10176; the server drops the
// abandoned copy) and stored when sent again; a stream with persist_mode
// async cannot allow atomic batches.
func TestJetStreamAtomicBatchLimits(t *testing.T) {
	ns := testenv.StartNATS(t, testenv.WithNATSConfig(func(o *server.Options) { o.JetStreamLimits.MaxBatchSize = 5 }))
	nc := ns.Connect(t)
	js, err := jetstream.New(nc)
	require.NoError(t, err)
	s := atomicStream(t, js, "L", 1)
	p := newPipeline(t, nc)
	p.ready(t, "L.probe")

	idx := sendBatch(t, p, "L.e", "big", []string{"l1", "l2", "l3", "l4", "l5", "l6"}, -1)
	replies := p.wait(t)
	last := replies[idx[len(idx)-1]]
	require.Equal(t, 10199, last.ErrCode, "%s", p.dump())
	n, ok := BatchLimit(&jetstream.APIError{ErrorCode: jetstream.ErrorCode(last.ErrCode), Description: last.Desc})
	require.True(t, ok, "%q", last.Desc)
	require.Equal(t, 5, n)
	require.Equal(t, uint64(0), lastSeq(t, s))

	// Left without a commit, then sent again under the same id.
	p = newPipeline(t, nc)
	p.publish(t, "L.e", batchMsg("m1", "again", 1, false, nil))
	p.publish(t, "L.e", batchMsg("m2", "again", 2, false, nil))
	retry := sendBatch(t, p, "L.e", "again", []string{"m1", "m2", "m3"}, -1)
	replies = p.wait(t)
	require.Equal(t, 10176, replies[retry[2]].ErrCode, "%s", p.dump())
	require.Equal(t, uint64(0), lastSeq(t, s))
	p = newPipeline(t, nc)
	retry = sendBatch(t, p, "L.e", "again", []string{"m1", "m2", "m3"}, -1)
	require.Equal(t, rawReply{Seq: 3}, p.wait(t)[retry[2]])

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err = js.CreateStream(ctx, jetstream.StreamConfig{
		Name: "ASYNC", Subjects: []string{"async.>"}, Storage: jetstream.FileStorage,
		PersistMode: jetstream.AsyncPersistMode, AllowAtomicPublish: true,
	})
	require.ErrorContains(t, err, "async persist mode is not supported with atomic batch publish")
}
