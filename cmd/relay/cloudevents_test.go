package main

import (
	"context"
	"encoding/json"
	"net/url"
	"sync"
	"testing"
	"time"

	cejsm "github.com/cloudevents/sdk-go/protocol/nats_jetstream/v2"
	cloudevents "github.com/cloudevents/sdk-go/v2"
	"github.com/nats-io/nats.go"
	"github.com/stretchr/testify/require"

	"github.com/outbox-relay/outbox-relay/internal/e2e"
	"github.com/outbox-relay/outbox-relay/outbox"
)

// TestCloudEventsWithTheGoSDK reads what the relay publishes with
// --cloudevents through the CloudEvents Go SDK's NATS JetStream protocol, as
// a CloudEvents consumer would, and gets back exactly the events written:
// id, source, type (from the template), time (created_at), subject
// (aggregate id), data content type, data, and the row's headers as
// extensions (the W3C trace context among them). A value the binding makes
// percent-encode (the aggregate id with a space and a non-ASCII letter)
// comes back percent-encoded: the SDK (v2.16) does not decode header
// values, so the consumer does.
func TestCloudEventsWithTheGoSDK(t *testing.T) {
	f := newFixture(t)
	relay := f.startRelay(t, "RELAY_CLOUDEVENTS", "true", "RELAY_CLOUDEVENTS_TYPE", "com.example.{aggregate_type}.{event_type}")
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	var (
		mu  sync.Mutex
		got = map[string][]cloudevents.Event{}
	)
	consumer, err := cejsm.NewConsumerFromConn(f.nc, "OUTBOX", "outbox.>", nil, []nats.SubOpt{nats.DeliverAll(), nats.AckExplicit()})
	require.NoError(t, err)
	client, err := cloudevents.NewClient(consumer)
	require.NoError(t, err)
	receiving, stopReceiving := context.WithCancel(ctx)
	received := make(chan error, 1)
	go func() {
		received <- client.StartReceiver(receiving, func(_ context.Context, ev cloudevents.Event) {
			mu.Lock()
			defer mu.Unlock()
			got[ev.ID()] = append(got[ev.ID()], ev)
		})
	}()
	t.Cleanup(func() {
		stopReceiving()
		<-received
	})

	traced, _ := e2e.TracedContext()
	w, err := outbox.New()
	require.NoError(t, err)
	created := time.Date(2026, 12, 1, 9, 30, 15, 123456000, time.UTC)
	events := []outbox.Event{
		{AggregateType: "order", AggregateID: "o-1", EventType: "created", Payload: json.RawMessage(`{"order": "o-1", "total": 70}`)},
		{
			AggregateType: "order", AggregateID: "o-1", EventType: "paid", Payload: json.RawMessage(`{"amount": 70}`), CreatedAt: created,
			Headers: map[string]string{"tenant": "acme", "X-Request-Id": "r-1"},
		},
		{AggregateType: "payment", AggregateID: "p 2 ü", EventType: "captured", Payload: json.RawMessage(`[1, "two", null]`)},
	}
	tx, err := f.pg.Connect(t, f.db).Begin(ctx)
	require.NoError(t, err)
	ids, err := w.Write(traced, outbox.Pgx(tx), events...)
	require.NoError(t, err)
	require.NoError(t, tx.Commit(ctx))

	require.Eventually(t, func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(got) == len(ids)
	}, 30*time.Second, 50*time.Millisecond, "the SDK receives every event")
	msgs := e2e.ReadStream(t, f.nc, "OUTBOX")
	require.Len(t, msgs, len(ids), "nothing else on the stream")

	mu.Lock()
	defer mu.Unlock()
	for i, id := range ids {
		require.Len(t, got[id], 1, "event %d received once", i)
		ev := got[id][0]
		want := events[i]
		require.NoError(t, ev.Validate())
		require.Equal(t, "1.0", ev.SpecVersion())
		require.Equal(t, "/outbox-relay/app/public.events", ev.Source(), "the default source")
		require.Equal(t, "com.example."+want.AggregateType+"."+want.EventType, ev.Type())
		subject, err := url.PathUnescape(ev.Subject())
		require.NoError(t, err)
		require.Equal(t, want.AggregateID, subject)
		require.Equal(t, "application/json", ev.DataContentType())
		require.JSONEq(t, string(want.Payload), string(ev.Data()))
		if !want.CreatedAt.IsZero() {
			require.True(t, want.CreatedAt.Equal(ev.Time()), "time is created_at: %s", ev.Time())
		} else {
			require.WithinDuration(t, time.Now(), ev.Time(), time.Minute)
		}
		ext := ev.Extensions()
		require.Equal(t, e2e.Traceparent, ext["traceparent"])
		require.Equal(t, e2e.Tracestate, ext["tracestate"])
		require.Equal(t, e2e.Baggage, ext["baggage"])
		if want.Headers != nil {
			require.Equal(t, "acme", ext["tenant"])
			require.Len(t, ext, 4, "X-Request-Id is no CloudEvents attribute name: a plain header, no extension")
			require.Equal(t, "r-1", msgs[i].Header.Get("X-Request-Id"))
		} else {
			require.Len(t, ext, 3)
		}
	}
	require.Equal(t, "p%202%20%C3%BC", got[ids[2]][0].Subject(), "percent-encoded, as the binding requires")

	code, err := relay.Stop(30 * time.Second)
	require.NoError(t, err)
	require.Equal(t, 0, code)
}
