package relay_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/jackc/pglogrepl"

	"github.com/outbox-relay/outbox-relay/internal/cdc"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/outbox-relay/outbox-relay/internal/relay"
	"github.com/outbox-relay/outbox-relay/internal/sink"
)

// publishMode is one of the pump's ways of publishing; every guarantee is
// tested in each (see forEachMode).
type publishMode struct {
	name   string
	atomic bool
	// joined lets an atomic batch take several whole transactions, as the
	// relay does; without it each transaction is a batch of its own.
	joined bool
	// batch publishes bursts in fast batches (sink.Config.FastBatch): the
	// fake stream models them (fakes_fast_test.go); the pump is as with
	// messages.
	batch bool
}

var publishModes = []publishMode{
	{name: "messages"},
	{name: "atomic", atomic: true},
	{name: "batch", batch: true},
	{name: "atomic-joined", atomic: true, joined: true},
}

// apply sets the mode in cfg.
func (m publishMode) apply(cfg relay.Config) relay.Config {
	if m.atomic {
		cfg.Atomic, cfg.BatchMaxMessages, cfg.OnLargeTransaction = true, 1000, relay.LargeTransactionStop
	}
	if m.atomic && !m.joined {
		cfg = relay.WithOneTransactionPerBatch(cfg)
	}
	return cfg
}

// storedBefore is how many events are stored when the pump stops at event
// at (1-based) of transactions of perTxn: those before it, or in the atomic
// mode those of the transactions before its own.
func (m publishMode) storedBefore(at, perTxn int) int {
	if m.atomic {
		return (at - 1) / perTxn * perTxn
	}
	return at - 1
}

// maxInFlight is the most publishes asking for a PubAck in flight at once
// with window: an atomic batch begun is finished, and before the first is
// stored every message asks for a reply.
func (m publishMode) maxInFlight(window, perTxn int) int {
	if m.atomic {
		return window + perTxn - 1
	}
	return window
}

// forEachMode runs f as a parallel subtest in every publishing mode.
func forEachMode(t *testing.T, f func(t *testing.T, mode publishMode)) {
	t.Helper()
	forModes(t, publishModes, f)
}

// forEachBurstMode runs f as a parallel subtest in the modes that publish
// bursts of messages, one per event: messages and batch.
func forEachBurstMode(t *testing.T, f func(t *testing.T, mode publishMode)) {
	t.Helper()
	forModes(t, []publishMode{publishModes[0], publishModes[2]}, f)
}

// forModes runs f as a parallel subtest in each of modes.
func forModes(t *testing.T, modes []publishMode, f func(t *testing.T, mode publishMode)) {
	t.Helper()
	for _, mode := range modes {
		t.Run(mode.name, func(t *testing.T) {
			t.Parallel()
			if mode.batch {
				fastBatchTests.Store(t.Name(), true)
			}
			f(t, mode)
		})
	}
}

// assertTransactionsWhole checks, for the atomic mode, that each batch of
// the relay's on the stream holds whole transactions, one or several (at
// most perTxn events when they are of one transaction; joined ones, at most
// the window), or, with split, that a run of consecutive batches of at most
// split events do (split -1: of any size): a batch starts where a
// transaction or the split part before it ends, a transaction in a batch
// starts at its first event, and a batch's messages are in order, together.
func assertTransactionsWhole(t *testing.T, stream *fakeStream, perTxn, split int) {
	t.Helper()
	var prev *storedMsg
	var prevPos cdc.Position
	size, txns := 0, 0
	for _, m := range stream.Messages() {
		pos, ours := relay.PositionFromHeader(m.Header, testOrigin)
		if !ours {
			continue
		}
		require.NotEmpty(t, m.Header.Get("Nats-Batch-Id"), "message %s of the atomic mode without a batch", m.ID)
		if m.Header.Get("Nats-Batch-Sequence") == "1" {
			if split == 0 || (split > 0 && size != split) || pos.CommitLSN != prevPos.CommitLSN {
				assert.Zero(t, pos.Index, "batch of message %s starts at its transaction's start", m.ID)
			}
			size, txns = 1, 1
		} else {
			require.NotNil(t, prev, "message %s continues a batch", m.ID)
			assert.Equal(t, prev.Header.Get("Nats-Batch-Id"), m.Header.Get("Nats-Batch-Id"), "message %s follows its batch's previous message", m.ID)
			if pos.CommitLSN != prevPos.CommitLSN {
				// The transaction before ended (the stream holds every
				// event in order: assertStream): this one joined.
				assert.Zero(t, pos.Index, "transaction of message %s joins its batch whole", m.ID)
				txns++
			}
			size++
		}
		switch {
		case split > 0:
			assert.LessOrEqual(t, size, split)
		case split == 0 && txns == 1:
			assert.LessOrEqual(t, size, perTxn)
		}
		prev, prevPos = &m, pos
	}
}

// The atomic mode publishes each transaction as one batch, in order, with
// one PubAck per transaction.
func TestPumpAtomicBatchPerTransaction(t *testing.T) {
	t.Parallel()
	for _, perTxn := range []int{1, 5, 37} {
		src := newFilledSource(pumpEvents(500, perTxn), true)
		stream := newFakeStream(t, true, false)
		cfg := publishModes[1].apply(pumpConfig(64))

		err, m := runPump(t, cfg, src, stream)
		require.NoError(t, err)

		assertStream(t, stream, pumpIDs(1, 500))
		assertAcked(t, src, pumpIDs(1, 500), perTxn)
		assertStoredAcked(t, stream, src)
		assertTransactionsWhole(t, stream, perTxn, 0)
		txns := (500 + perTxn - 1) / perTxn
		assert.Equal(t, txns, stream.Commits(), "one batch per transaction")
		// Until the first batch is stored (after reading the stream back)
		// every message asks for a reply, then only the commits.
		assert.LessOrEqual(t, stream.AckRequests(), txns+64+perTxn, "one PubAck per transaction")
		assert.Zero(t, retries(t, m))
	}
}

// assertDeadLetterElsewhereRefused checks that the atomic mode stopped at
// the first poison event (at) because the dead-letter subject is not in the
// stream (a dead letter takes its event's place in the transaction's
// batch), with the transactions before its own stored.
func assertDeadLetterElsewhereRefused(t *testing.T, err error, stream *fakeStream, src *fakeSource, at, perTxn int) {
	t.Helper()
	require.ErrorIs(t, err, relay.ErrPoison)
	assert.ErrorContains(t, err, "dead-letter-subject")
	stored := publishModes[1].storedBefore(at, perTxn)
	assertStream(t, stream, pumpIDs(1, stored))
	assertAcked(t, src, pumpIDs(1, stored), perTxn)
}

// A transaction larger than one atomic batch may be (the configured limit,
// the server's, or the byte limit): with the stop policy the pump stops at
// it, every earlier transaction stored and none of it; with split it is
// published in consecutive batches, each atomic, counted.
func TestPumpAtomicLargeTransaction(t *testing.T) {
	t.Parallel()
	const n, perTxn = 60, 20 // transactions 1-20, 21-40, 41-60
	for _, tc := range []struct {
		name      string
		policy    string
		configMax int   // --atomic-batch-max
		serverMax int   // the server's max_batch_size
		maxBytes  int64 // BatchMaxBytes
		split     int   // events per batch when split (-1: set by bytes)
	}{
		{name: "configured limit, stop", policy: relay.LargeTransactionStop, configMax: 8},
		{name: "configured limit, split", policy: relay.LargeTransactionSplit, configMax: 8, split: 8},
		{name: "the server's lower limit, stop", policy: relay.LargeTransactionStop, configMax: 1000, serverMax: 8},
		{name: "the server's lower limit, split", policy: relay.LargeTransactionSplit, configMax: 1000, serverMax: 8, split: 8},
		{name: "byte limit, stop", policy: relay.LargeTransactionStop, configMax: 1000, maxBytes: 2000},
		{name: "byte limit, split", policy: relay.LargeTransactionSplit, configMax: 1000, maxBytes: 2000, split: -1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			evs := pumpEvents(n, perTxn)
			// The first transaction is small enough: 5 events, then 15
			// single-event transactions.
			for i := range evs {
				evs[i].Position.CommitLSN *= 100
				if i < 20 {
					evs[i].TxnEnd = i >= 4
				}
				if i >= 5 && i < 20 {
					evs[i].Position = cdc.Position{CommitLSN: 100000 + pglogrepl.LSN(i)}
				}
			}
			src := newFilledSource(evs, true)
			stream := newFakeStream(t, true, false)
			if tc.serverMax > 0 {
				stream.SetMaxBatch(tc.serverMax)
			}
			cfg := publishModes[1].apply(pumpConfig(64))
			cfg.BatchMaxMessages, cfg.OnLargeTransaction, cfg.BatchMaxBytes = tc.configMax, tc.policy, tc.maxBytes

			err, m := runPump(t, cfg, src, stream)

			if tc.policy == relay.LargeTransactionStop {
				require.ErrorIs(t, err, relay.ErrLargeTransaction)
				assert.Contains(t, err.Error(), "--on-large-transaction=split")
				assertStream(t, stream, pumpIDs(1, 20))
				assert.ElementsMatch(t, pumpIDs(1, 20), src.AckedIDs(), "acked, each once")
				assert.Zero(t, metricValue(t, m, "outbox_relay_pump_split_transactions_total"))
				return
			}
			require.NoError(t, err)
			assertStream(t, stream, pumpIDs(1, n))
			assert.ElementsMatch(t, pumpIDs(1, n), src.AckedIDs(), "acked, each once")
			assertStoredAcked(t, stream, src)
			assertTransactionsWhole(t, stream, perTxn, tc.split)
			if tc.split > 0 {
				perLarge := (perTxn+tc.split-1)/tc.split - 1
				assert.Equal(t, float64(2*perLarge), metricValue(t, m, "outbox_relay_pump_split_transactions_total"))
			} else {
				assert.Positive(t, metricValue(t, m, "outbox_relay_pump_split_transactions_total"))
			}
		})
	}
}

// A batch JetStream refuses for an id in its duplicate window, whole and
// without saying which: the pump asks the stream about each id (storing
// nothing). A replay whose first events were stored by an earlier run is
// recognised as such (messages removed by retention, the mark lost, so
// nothing else tells); two events of one transaction with one id stop the
// pump, naming both.
func TestPumpAtomicDuplicateBatch(t *testing.T) {
	t.Parallel()
	t.Run("replay of a transaction partly stored", func(t *testing.T) {
		t.Parallel()
		stream := newFakeStream(t, true, true)
		stream.WorkQueue()
		// An earlier run (one message at a time) stored events 1-25 of
		// transactions of 10; a consumer removed them; the mark is lost.
		first := newFilledSource(pumpEvents(25, 10), true)
		err, _ := runPump(t, pumpConfig(8), first, stream)
		require.NoError(t, err)
		stream.marks.Clear()

		src := newFilledSource(pumpEvents(40, 10), true)
		cfg := publishModes[1].apply(pumpConfig(16))
		cfg.UncertainWait = time.Second
		err, m := runPump(t, cfg, src, stream)
		require.NoError(t, err)

		got := ownIDs(stream)
		assert.Equal(t, pumpIDs(1, 40), got, "every event once, in order")
		assertAcked(t, src, pumpIDs(1, 40), 10)
		assert.Positive(t, stream.probes, "the pump asked which ids are stored")
		assert.Equal(t, 25.0, skipped(t, m), "what the first run stored")
	})
	t.Run("two events of a transaction share an id", func(t *testing.T) {
		t.Parallel()
		evs := pumpEvents(30, 5)
		evs[13].ID = evs[11].ID
		src := newFilledSource(evs, true)
		stream := newFakeStream(t, true, false)
		err, _ := runPump(t, publishModes[1].apply(pumpConfig(16)), src, stream)
		require.Error(t, err)
		assert.Contains(t, err.Error(), "share the id "+evs[11].ID)
		assertStream(t, stream, pumpIDs(1, 10))
	})
}

// Shutdown while a transaction's batch is being sent: it is left without
// its commit, nothing of it stored or acknowledged; the next run publishes
// it whole.
func TestPumpAtomicShutdownMidBatch(t *testing.T) {
	t.Parallel()
	evs := pumpEvents(20, 10)
	src := newFakeSource(20)
	for _, ev := range evs[:15] {
		src.ch <- ev
	}
	stream := newFakeStream(t, true, false)
	p, _ := newTestPump(t, publishModes[1].apply(pumpConfig(64)), src, stream)
	ctx, cancel := context.WithCancel(t.Context())
	done := startRun(ctx, p)
	require.Eventually(t, func() bool { return stream.Publishes() == 15 }, 5*time.Second, time.Millisecond)
	require.Eventually(t, func() bool { return len(src.Acks()) == 10 }, 5*time.Second, time.Millisecond)
	cancel()
	require.NoError(t, waitRun(t, done, runDeadline))
	assertStream(t, stream, pumpIDs(1, 10))
	assertAcked(t, src, pumpIDs(1, 10), 10)

	again := newFilledSource(evs, true)
	err, m := runPump(t, publishModes[1].apply(pumpConfig(64)), again, stream)
	require.NoError(t, err)
	assertStream(t, stream, pumpIDs(1, 20))
	assertTransactionsWhole(t, stream, 10, 0)
	assert.Equal(t, 10.0, skipped(t, m))
}

// A late copy of a transaction's batch (sent by a relay that was killed, and
// stored only once the next relay had read the stream back) takes the place
// the next relay's copy expected: that copy is refused for ids already
// stored and the batches after it are stored. On a stream whose consumers
// remove messages at once (work queue) the copy cannot be read back: the
// pump asks the stream about the ids instead. No event is taken for a hole,
// none published out of order or twice. (Found by
// TestRetentionRemovesTheRelaysMessages run in the atomic mode: the refused
// events were published again out of order and, past the duplicate window,
// stored twice.)
func TestPumpAtomicLateCopyRemovedByRetention(t *testing.T) {
	t.Parallel()
	const n, perTxn = 60, 10
	evs := pumpEvents(n, perTxn)
	stream := newFakeStream(t, true, false)
	stream.WorkQueue()
	mp := testMapper(t, testOrigin)
	late := map[string]bool{}
	stream.SetScript(func(_ int, m sink.Message) fault {
		var i int
		if _, err := fmt.Sscanf(m.ID, "evt-%d", &i); err != nil || i < 21 || i > 30 || late[m.ID] {
			return fault{}
		}
		late[m.ID] = true
		ev := evs[i-1]
		cp, err := mp.Message(&ev)
		require.NoError(t, err)
		cp.Header = cloneHeader(cp.Header)
		return fault{foreign: &cp}
	})
	src := newFilledSource(evs, true)
	err, m := runPump(t, publishModes[1].apply(pumpConfig(64)), src, stream)
	require.NoError(t, err)
	assert.Equal(t, pumpIDs(1, n), ownIDs(stream), "every event once, in order")
	assertAcked(t, src, pumpIDs(1, n), perTxn)
	assert.Zero(t, metricValue(t, m, "outbox_relay_pump_reordered_total"), "no event taken for a hole")
	assert.Zero(t, metricValue(t, m, "outbox_relay_pump_stream_shared"))
}

// With transactions joined (as the relay runs), the events at hand when a
// batch starts go as few batches of whole transactions: far fewer batches
// than transactions, each at most half the window (the whole window when
// batches go one at a time, --shared-stream), in order, one PubAck each.
func TestPumpAtomicJoinsWholeTransactions(t *testing.T) {
	t.Parallel()
	joined := publishModes[3]
	for _, shared := range []bool{false, true} {
		for _, perTxn := range []int{1, 5, 37} {
			t.Run(fmt.Sprintf("%d per transaction, shared stream %t", perTxn, shared), func(t *testing.T) {
				t.Parallel()
				const n, window = 500, 64
				src := newFilledSource(pumpEvents(n, perTxn), true)
				stream := newFakeStream(t, true, false)
				cfg := joined.apply(pumpConfig(window))
				cfg.SharedStream = shared

				err, m := runPump(t, cfg, src, stream)
				require.NoError(t, err)

				assertStream(t, stream, pumpIDs(1, n))
				assertAcked(t, src, pumpIDs(1, n), perTxn)
				assertStoredAcked(t, stream, src)
				assertTransactionsWhole(t, stream, perTxn, 0)
				txns := (n + perTxn - 1) / perTxn
				// The first two batches go one transaction each (the
				// stream was just read back); then each takes what its
				// share of the window holds.
				share, inFlight := window/2, 2
				if shared {
					share, inFlight = window, 1
				}
				perBatch := max(share/perTxn*perTxn, perTxn)
				assert.LessOrEqual(t, stream.Commits(), 2+(n+perBatch-1)/perBatch+2, "batches of several transactions")
				if perTxn < share/2 {
					assert.Less(t, stream.Commits(), txns/2, "far fewer batches than transactions")
				}
				assert.LessOrEqual(t, stream.AckRequests(), 2*perTxn+stream.Commits(), "one PubAck per batch")
				assert.LessOrEqual(t, stream.MaxCommitsOutstanding(), inFlight, "batches in flight")
				assert.Zero(t, retries(t, m))
			})
		}
	}
}

// Batches in flight: while two committed batches await their PubAcks, the
// pump starts no third; the transactions at hand wait, and go as one batch
// once a PubAck comes. (Sending each as it came, the relay was held to the
// server's batches per second, a few hundred on a one-replica file stream,
// whatever the transactions' sizes.) The first two batches, right after the
// stream was read back, hold one transaction each.
func TestPumpAtomicBatchesInFlight(t *testing.T) {
	t.Parallel()
	const n = 20
	src := newFilledSource(pumpEvents(n, 1), false)
	stream := newFakeStream(t, true, false)
	hold := make(chan struct{})
	sc, _ := onReplies(func(k int, _ sink.Message) fault {
		if k <= 2 {
			return fault{hold: hold}
		}
		return fault{}
	})
	stream.SetScript(sc)
	p, _ := newTestPump(t, publishModes[3].apply(pumpConfig(64)), src, stream)
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	done := startRun(ctx, p)

	require.Eventually(t, func() bool { return stream.Publishes() == 2 }, 5*time.Second, time.Millisecond)
	assert.Never(t, func() bool { return stream.Publishes() > 2 }, 200*time.Millisecond, 5*time.Millisecond, "a third batch while two are in flight")
	assert.Empty(t, src.Acks())

	close(hold)
	require.Eventually(t, func() bool { return len(src.Acks()) == n }, 5*time.Second, time.Millisecond)
	src.Close()
	require.NoError(t, waitRun(t, done, runDeadline))
	stream.WaitHolds()
	assertStream(t, stream, pumpIDs(1, n))
	assertAcked(t, src, pumpIDs(1, n), 1)
	assertTransactionsWhole(t, stream, 1, 0)
	assert.Equal(t, 3, stream.Commits(), "the transactions that waited went as one batch")
	assert.Equal(t, 2, stream.MaxCommitsOutstanding())
}
