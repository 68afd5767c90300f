package e2e

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"

	"github.com/outbox-relay/outbox-relay/internal/testenv"
)

func TestReadStreamReadsEveryMessageInOrder(t *testing.T) {
	ns := testenv.StartNATS(t)
	nc := ns.Connect(t)
	js, err := jetstream.New(nc)
	require.NoError(t, err)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	_, err = js.CreateStream(ctx, jetstream.StreamConfig{Name: "S", Subjects: []string{"s.>"}})
	require.NoError(t, err)
	const n = 2500
	for i := range n {
		_, err := js.Publish(ctx, fmt.Sprintf("s.%d", i%3), []byte(fmt.Sprint(i)))
		require.NoError(t, err)
	}
	msgs, err := ReadStreamContext(ctx, nc, "S")
	require.NoError(t, err)
	require.Len(t, msgs, n)
	for i, m := range msgs {
		require.Equal(t, uint64(i+1), m.Seq)
		require.Equal(t, fmt.Sprint(i), string(m.Data))
	}
}
