package relay_test

import (
	"errors"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/outbox-relay/outbox-relay/internal/relay"
)

// A row read without its payload (larger than any message: see
// cdc.Event.PayloadOmitted) is poison too_large, and its dead letter says
// how large the payload was, with the row's headers kept.
func TestRowReadWithoutItsPayload(t *testing.T) {
	t.Parallel()
	mp := testMapper(t, testOrigin)
	ev := pumpEvent(1, 1)
	ev.Payload, ev.PayloadOmitted = nil, 5<<20
	ev.Headers = []byte(`{"traceparent": "00-abc-01"}`)
	_, err := mp.Message(&ev)
	var poison *relay.PoisonError
	require.True(t, errors.As(err, &poison), "%v", err)
	assert.Equal(t, "too_large", poison.Reason)
	assert.Contains(t, poison.Detail, "5242880")

	dl := mp.DeadLetter(&ev, "outbox_dead_letter", poison, 1<<20)
	assert.Empty(t, dl.Data)
	assert.Equal(t, "5242880", dl.Header.Get(relay.HeaderPayloadOmitted))
	assert.Equal(t, "00-abc-01", dl.Header.Get("traceparent"))
	assert.True(t, relay.Fits(dl, 1<<20))
}
