package main

import (
	"context"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"

	"github.com/outbox-relay/outbox-relay/internal/e2e"
)

// TestRelayDeliversEveryCommittedEventOnceInCommitOrder writes thousands of
// events in transactions of 1, 10 and 1000 rows from concurrent writers,
// with rolled-back transactions and writes to another table mixed in, and
// checks the stream against the recorded commit order.
func TestRelayDeliversEveryCommittedEventOnceInCommitOrder(t *testing.T) {
	f := newFixture(t)
	relay := f.startRelay(t)

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var wg sync.WaitGroup
	errs := make(chan error, 4)
	for w := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(w), 7))
			for i := range 60 {
				size := []int{1, 1, 10, 10, 1000}[rng.IntN(5)]
				if size == 1000 && i%3 != 0 {
					size = 10
				}
				rollback := rng.IntN(8) == 0
				if _, err := f.writer.Write(ctx, e2e.SampleEvents(size, 200, tagf("w%d-%d", w, i)), rollback); err != nil {
					errs <- err
					return
				}
				if rng.IntN(4) == 0 {
					if err := f.writer.WriteOther(ctx, 20, "noise"); err != nil {
						errs <- err
						return
					}
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		require.NoError(t, err)
	}
	expected := f.writer.Committed(t)
	require.Greater(t, len(expected), 2000)
	f.waitStream(t, len(expected), 90*time.Second)
	msgs := f.verify(t)

	// The message itself: subject, headers and body as documented.
	first := msgs[0]
	require.Equal(t, "outbox.order.created", first.Subject)
	require.NotEmpty(t, first.Header.Get(jetstream.MsgIDHeader))
	require.Equal(t, "order", first.Header.Get("Outbox-Aggregate-Type"))
	require.Equal(t, "created", first.Header.Get("Outbox-Event-Type"))
	require.NotEmpty(t, first.Header.Get("Outbox-Aggregate-Id"))
	_, err := time.Parse(time.RFC3339Nano, first.Header.Get("Outbox-Created-At"))
	require.NoError(t, err)
	require.Contains(t, string(first.Data), `"pad"`)

	code, err := relay.Stop(30 * time.Second)
	require.NoError(t, err)
	require.Equal(t, 0, code, "SIGTERM exits 0")
	require.Contains(t, relay.Logs(), "final status sent")
}
