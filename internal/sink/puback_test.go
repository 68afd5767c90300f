package sink

import (
	"testing"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"
)

func TestDecodePubAck(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want Ack
		err  string
	}{
		{`{"stream":"OUTBOX","seq":12}`, Ack{Stream: "OUTBOX", Seq: 12}, ""},
		{`{"stream":"OUTBOX","seq":12,"duplicate":true}`, Ack{Stream: "OUTBOX", Seq: 12, Duplicate: true}, ""},
		{`{"stream":"OUTBOX","domain":"hub","seq":18446744073709551615}`, Ack{Stream: "OUTBOX", Seq: 18446744073709551615}, ""},
		{`{"stream":"OTHER","seq":1}`, Ack{Stream: "OTHER", Seq: 1}, ""},
		{` { "stream" : "OUTBOX", "seq" : 3 } `, Ack{Stream: "OUTBOX", Seq: 3}, ""},
		{`{"stream":"OUT\u0042OX","seq":3,"batch":"x"}`, Ack{Stream: "OUTBOX", Seq: 3}, ""},
		{`{"stream":"OUTBOX","seq":30,"batch":"b-1","count":10}`, Ack{Stream: "OUTBOX", Seq: 30, Count: 10}, ""},
		{`{"error":{"code":400,"err_code":10071,"description":"wrong last sequence: 5"},"stream":"OUTBOX","seq":0}`, Ack{}, "wrong last sequence: 5"},
		{`{"stream":"OUTBOX"}`, Ack{}, "invalid PubAck"},
		{`{"seq":4}`, Ack{}, "invalid PubAck"},
		{`{"stream":"OUTBOX","seq":-1}`, Ack{}, "invalid PubAck"},
		{`not json`, Ack{}, "invalid PubAck"},
		{``, Ack{}, "invalid PubAck"},
	} {
		got, err := decodePubAck([]byte(tc.in), "OUTBOX")
		if tc.err != "" {
			require.ErrorContains(t, err, tc.err, tc.in)
			continue
		}
		require.NoError(t, err, tc.in)
		require.Equal(t, tc.want, got, tc.in)
	}
	_, err := decodePubAck([]byte(`{"error":{"code":400,"err_code":10071,"description":"wrong last sequence: 5"}}`), "OUTBOX")
	var apiErr *jetstream.APIError
	require.ErrorAs(t, err, &apiErr)
	require.Equal(t, jetstream.JSErrCodeStreamWrongLastSequence, apiErr.ErrorCode)
	kind, class := Classify(err)
	require.Equal(t, "wrong_sequence", kind)
	require.ErrorIs(t, class, ErrWrongSequence)
}

// TestDecodePubAckFastAllocatesNothing: the common PubAck costs no
// allocation when it names the expected stream.
func TestDecodePubAckFastAllocatesNothing(t *testing.T) {
	data := []byte(`{"stream":"OUTBOX","seq":123456,"duplicate":true}`)
	allocs := testing.AllocsPerRun(100, func() {
		if _, err := decodePubAck(data, "OUTBOX"); err != nil {
			t.Fatal(err)
		}
	})
	require.Zero(t, allocs)
}

// FuzzDecodePubAck checks the hand-written decoder against encoding/json:
// whenever the fast path accepts an input, encoding/json decodes it to the
// same Ack.
func FuzzDecodePubAck(f *testing.F) {
	for _, s := range []string{
		`{"stream":"OUTBOX","seq":12}`, `{"stream":"OUTBOX","seq":12,"duplicate":true}`,
		`{"stream":"S","domain":"d","seq":1,"duplicate":false}`, `{"seq":01,"stream":"S"}`,
		`{"stream":"S","seq":1,"stream":"T"}`, `{"stream":"S","seq":1e3}`, `{"Stream":"S","seq":1}`,
		`{"error":{"code":503},"stream":"S","seq":1}`, `{"stream":"S","seq":18446744073709551616}`,
		`{"stream":"S","seq":30,"batch":"b","count":10}`, `{"stream":"S","seq":3,"count":1,"count":2}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		fast, ok := decodePubAckFast(data, "S")
		if !ok {
			_, _ = decodePubAck(data, "S")
			return
		}
		slow, err := decodePubAckSlow(data)
		if err != nil {
			t.Fatalf("fast path accepted %q, encoding/json refuses it: %v", data, err)
		}
		if fast != slow {
			t.Fatalf("%q: fast %+v, encoding/json %+v", data, fast, slow)
		}
	})
}
