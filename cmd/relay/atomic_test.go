package main

import (
	"context"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"

	"github.com/outbox-relay/outbox-relay/internal/e2e"
	"github.com/outbox-relay/outbox-relay/internal/relay"
)

// watched is one message a consumer received, with what says which
// transaction it belongs to.
type watched struct {
	seq       uint64
	id        string
	batch     string
	batchSeq  string
	commitLSN string
}

// watchStream consumes the stream from the start with an ordered consumer,
// which rides out NATS restarts, recording every message in the order
// delivered.
func watchStream(t *testing.T, f *fixture) (received func() []watched) {
	t.Helper()
	js, err := jetstream.New(f.nc)
	require.NoError(t, err)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	t.Cleanup(cancel)
	var cons jetstream.Consumer
	require.Eventually(t, func() bool {
		cons, err = js.OrderedConsumer(ctx, "OUTBOX", jetstream.OrderedConsumerConfig{})
		return err == nil
	}, time.Minute, 100*time.Millisecond, "the relay creates the stream")
	var mu sync.Mutex
	var got []watched
	cc, err := cons.Consume(func(m jetstream.Msg) {
		meta, err := m.Metadata()
		if err != nil {
			return
		}
		h := m.Headers()
		mu.Lock()
		got = append(got, watched{
			seq: meta.Sequence.Stream, id: h.Get(jetstream.MsgIDHeader), batch: h.Get("Nats-Batch-Id"), batchSeq: h.Get("Nats-Batch-Sequence"),
			commitLSN: h.Get(relay.HeaderCommitLSN),
		})
		mu.Unlock()
	})
	require.NoError(t, err)
	t.Cleanup(cc.Stop)
	return func() []watched {
		mu.Lock()
		defer mu.Unlock()
		return append([]watched(nil), got...)
	}
}

// TestAtomicTransactionsAreNeverSeenInPart: with --atomic-transactions and
// a 1-second duplicate window, a consumer watches the stream while
// transactions of 1 to 400 events flow, the relay is killed (SIGKILL) in the
// middle of them, NATS is restarted, and the relay stays down past the
// duplicate window before it starts again. While the relay is down the
// consumer holds whole transactions only; in the end it received every
// transaction whole, each in one run of messages; the stream holds every
// event once, in commit order.
func TestAtomicTransactionsAreNeverSeenInPart(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	env := []string{"RELAY_ATOMIC_TRANSACTIONS", "true", "RELAY_DUPLICATE_WINDOW", "1s"}
	r := f.startRelay(t, env...)
	received := watchStream(t, f)

	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	sizes := []int{1, 400, 7, 150, 2, 300, 40}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := 0; i < 60 && ctx.Err() == nil; i++ {
			n := sizes[i%len(sizes)]
			_, err := f.writer.Write(ctx, e2e.SampleEvents(n, 256, tagf("atomic-%d", i)), false)
			if err != nil && ctx.Err() == nil {
				time.Sleep(100 * time.Millisecond)
			}
		}
	}()
	// What the consumer has received while the relay is down, each time.
	var snapshots [][]watched
	for round := range 2 {
		// Mid-flow: transactions of hundreds of events are being sent.
		f.waitStream(t, 1500*(round+1), time.Minute)
		r.Kill()
		require.Eventually(t, func() bool { return len(received()) == e2e.StreamCount(f.nc, "OUTBOX") }, time.Minute, 20*time.Millisecond,
			"the consumer catches up with the stream")
		snapshots = append(snapshots, received())
		f.nats.Stop(t)
		time.Sleep(500 * time.Millisecond)
		f.nats.Start(t)
		time.Sleep(2 * time.Second) // past the duplicate window
		r = f.startRelay(t, env...)
	}
	<-done
	want := f.writer.Committed(t)
	f.waitStream(t, len(want), 2*time.Minute)
	msgs := f.verify(t)

	// The size of each transaction, from the stream.
	size := map[string]int{}
	for _, m := range msgs {
		size[m.Header.Get(relay.HeaderCommitLSN)]++
	}
	// While the relay was down the consumer had whole transactions only.
	for k, snap := range snapshots {
		count := map[string]int{}
		for _, w := range snap {
			count[w.commitLSN]++
		}
		for lsn, n := range count {
			require.Equal(t, size[lsn], n, "with the relay down (kill %d), the consumer had %d of the %d events of the transaction committed at %s", k+1, n, size[lsn], lsn)
		}
	}
	require.Eventually(t, func() bool { return len(received()) >= len(want) }, time.Minute, 100*time.Millisecond,
		"the consumer receives every event")
	got := received()
	require.Len(t, got, len(want), "each message delivered once")
	for i := 0; i < len(got); {
		lsn := got[i].commitLSN
		j := i
		for j < len(got) && got[j].commitLSN == lsn {
			require.Equal(t, got[i].batch, got[j].batch, "message %s: one batch per transaction", got[j].id)
			j++
		}
		require.Equal(t, size[lsn], j-i, "the transaction committed at %s was seen in part: %d of its %d events in one run (from stream sequence %d)",
			lsn, j-i, size[lsn], got[i].seq)
		if got[i].batchSeq != "1" {
			// Joined to the transaction before, whole, in its batch
			// (the relay's batches take the transactions at hand).
			require.Positive(t, i, "the first message starts a batch")
			require.Equal(t, got[i-1].batch, got[i].batch, "message %s continues the batch of the message before", got[i].id)
			prev, _ := strconv.Atoi(got[i-1].batchSeq)
			require.Equal(t, strconv.Itoa(prev+1), got[i].batchSeq, "message %s follows the message before in its batch", got[i].id)
		}
		i = j
	}
	require.Zero(t, r.Metrics()["outbox_relay_pump_split_transactions_total"])
}

// TestAtomicTransactionsPreflightAndLimits: the atomic mode refuses a stream
// that does not allow atomic batches, naming the setting; a transaction of
// more events than --atomic-batch-max stops the relay naming it, with every
// earlier transaction on the stream and none of it; with
// --on-large-transaction=split it is published in consecutive batches.
func TestAtomicTransactionsPreflightAndLimits(t *testing.T) {
	t.Parallel()
	t.Run("stream without allow_atomic", func(t *testing.T) {
		t.Parallel()
		f := newFixture(t)
		js, err := jetstream.New(f.nc)
		require.NoError(t, err)
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		_, err = js.CreateStream(ctx, jetstream.StreamConfig{Name: "OUTBOX", Subjects: []string{"outbox.>"}, Storage: jetstream.FileStorage})
		require.NoError(t, err)
		r := e2e.StartRelay(t, f.bin, f.env("RELAY_ATOMIC_TRANSACTIONS", "true"))
		code, err := r.Wait(time.Minute)
		require.NoError(t, err)
		require.Equal(t, 1, code)
		require.Contains(t, unescaped(r.Logs()), "allow_atomic")
	})
	t.Run("large transaction", func(t *testing.T) {
		t.Parallel()
		f := newFixture(t)
		env := []string{"RELAY_ATOMIC_TRANSACTIONS", "true", "RELAY_ATOMIC_BATCH_MAX", "100"}
		r := f.startRelay(t, env...)
		first := f.write(t, 30, "small")
		f.waitStream(t, 30, time.Minute)
		f.write(t, 250, "large")
		code, err := r.Wait(time.Minute)
		require.NoError(t, err)
		require.Equal(t, 1, code, "the relay stops at the large transaction")
		logs := unescaped(r.Logs())
		require.Contains(t, logs, "--on-large-transaction=split")
		require.Equal(t, first, e2e.IDs(e2e.ReadStream(t, f.nc, "OUTBOX")), "nothing of the large transaction")

		r = f.startRelay(t, append(env, "RELAY_ON_LARGE_TRANSACTION", "split")...)
		f.waitStream(t, 280, time.Minute)
		msgs := f.verify(t)
		batches := map[string]int{}
		for _, m := range msgs[30:] {
			batches[m.Header.Get("Nats-Batch-Id")]++
		}
		require.Len(t, batches, 3, "100, 100 and 50 events")
		require.Equal(t, 2.0, r.Metrics()["outbox_relay_pump_split_transactions_total"])
		require.False(t, strings.Contains(r.Logs(), `"level":"error"`))
	})
}
