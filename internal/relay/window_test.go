package relay

import (
	"math/rand/v2"
	"strconv"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/outbox-relay/outbox-relay/internal/cdc"
)

// TestWindowKeepsOrder drives the ring and a plain slice with the same random
// pushes and drops, across wrap-arounds and growth, and compares them.
func TestWindowKeepsOrder(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	w := newWindow(4)
	var model []string
	next := 0
	for range 5000 {
		switch op := rng.IntN(10); {
		case op < 5:
			id := strconv.Itoa(next)
			next++
			w.Push(inflight{ev: cdc.Event{ID: id}})
			model = append(model, id)
		case op < 9:
			k := rng.IntN(3)
			w.Drop(k)
			model = model[min(k, len(model)):]
		default:
			w.Clear()
			model = nil
		}
		require.Equal(t, len(model), w.Len())
		for i, id := range model {
			require.Equal(t, id, w.At(i).ev.ID)
		}
	}
}
