package sink

import (
	"encoding/json"
	"fmt"

	"github.com/nats-io/nats.go/jetstream"
)

// decodePubAck decodes JetStream's reply to a publish: an Ack, or the API
// error the server reports. stream is the name the Ack most likely carries;
// when it does, that string is reused instead of allocating a copy.
//
// The server writes PubAcks with encoding/json in one compact shape,
// {"stream":"S","domain":"D","seq":N,"duplicate":true} with the optional
// fields left out (an atomic batch's commit adds ,"batch":"B","count":N);
// decodePubAckFast reads that shape without allocating, and
// everything else (an error reply, escapes, white space, fields a later
// server adds) goes through encoding/json.
func decodePubAck(data []byte, stream string) (Ack, error) {
	ack, ok := decodePubAckFast(data, stream)
	if !ok {
		var err error
		if ack, err = decodePubAckSlow(data); err != nil {
			return Ack{}, err
		}
	}
	if ack.Stream == "" || ack.Seq == 0 {
		return Ack{}, fmt.Errorf("invalid PubAck %q", truncate(data, 200))
	}
	return ack, nil
}

// pubAckReply is the reply's full form, for encoding/json.
type pubAckReply struct {
	Error     *jetstream.APIError `json:"error,omitempty"`
	Stream    string              `json:"stream"`
	Seq       uint64              `json:"seq"`
	Duplicate bool                `json:"duplicate,omitempty"`
	Count     uint64              `json:"count,omitempty"`
}

func decodePubAckSlow(data []byte) (Ack, error) {
	var reply pubAckReply
	if err := json.Unmarshal(data, &reply); err != nil {
		return Ack{}, fmt.Errorf("invalid PubAck %q: %w", truncate(data, 200), err)
	}
	if reply.Error != nil {
		return Ack{}, reply.Error
	}
	return Ack{Stream: reply.Stream, Seq: reply.Seq, Duplicate: reply.Duplicate, Count: reply.Count}, nil
}

// decodePubAckFast decodes the compact shape, or reports !ok for anything
// else. It never disagrees with decodePubAckSlow when it reports ok.
func decodePubAckFast(data []byte, stream string) (Ack, bool) {
	var ack Ack
	var seenStream, seenSeq, seenDomain, seenDuplicate, seenBatch, seenCount bool
	i := 0
	if len(data) < 2 || data[0] != '{' {
		return Ack{}, false
	}
	i++
	for {
		key, next, ok := plainString(data, i)
		if !ok || next >= len(data) || data[next] != ':' {
			return Ack{}, false
		}
		i = next + 1
		// A repeated key is legal JSON whose meaning (the last wins)
		// encoding/json decides; leave it to encoding/json.
		switch string(key) {
		case "stream":
			v, next, ok := plainString(data, i)
			if !ok || seenStream {
				return Ack{}, false
			}
			seenStream = true
			if string(v) == stream {
				ack.Stream = stream
			} else {
				ack.Stream = string(v)
			}
			i = next
		case "domain":
			_, next, ok := plainString(data, i)
			if !ok || seenDomain {
				return Ack{}, false
			}
			seenDomain = true
			i = next
		case "seq":
			v, next, ok := plainUint(data, i)
			if !ok || seenSeq {
				return Ack{}, false
			}
			seenSeq = true
			ack.Seq = v
			i = next
		case "batch":
			_, next, ok := plainString(data, i)
			if !ok || seenBatch {
				return Ack{}, false
			}
			seenBatch = true
			i = next
		case "count":
			v, next, ok := plainUint(data, i)
			if !ok || seenCount {
				return Ack{}, false
			}
			seenCount = true
			ack.Count = v
			i = next
		case "duplicate":
			if seenDuplicate {
				return Ack{}, false
			}
			seenDuplicate = true
			switch {
			case hasPrefixAt(data, i, "true"):
				ack.Duplicate = true
				i += 4
			case hasPrefixAt(data, i, "false"):
				i += 5
			default:
				return Ack{}, false
			}
		default:
			return Ack{}, false
		}
		if i >= len(data) {
			return Ack{}, false
		}
		switch data[i] {
		case ',':
			i++
		case '}':
			if i != len(data)-1 {
				return Ack{}, false
			}
			return ack, true
		default:
			return Ack{}, false
		}
	}
}

// plainString reads a JSON string starting at data[i] that has no escapes
// and only printable ASCII, returning its contents and the index after it.
func plainString(data []byte, i int) ([]byte, int, bool) {
	if i >= len(data) || data[i] != '"' {
		return nil, 0, false
	}
	for j := i + 1; j < len(data); j++ {
		c := data[j]
		if c == '"' {
			return data[i+1 : j], j + 1, true
		}
		if c == '\\' || c < 0x20 || c >= 0x7f {
			return nil, 0, false
		}
	}
	return nil, 0, false
}

// plainUint reads a JSON unsigned integer (no sign, fraction, exponent or
// leading zero) starting at data[i] that fits in a uint64.
func plainUint(data []byte, i int) (uint64, int, bool) {
	start := i
	var v uint64
	for ; i < len(data) && data[i] >= '0' && data[i] <= '9'; i++ {
		d := uint64(data[i] - '0')
		if v > (1<<64-1-d)/10 {
			return 0, 0, false
		}
		v = v*10 + d
	}
	if i == start || (data[start] == '0' && i-start > 1) {
		return 0, 0, false
	}
	if i < len(data) && (data[i] == '.' || data[i] == 'e' || data[i] == 'E') {
		return 0, 0, false
	}
	return v, i, true
}

func hasPrefixAt(data []byte, i int, prefix string) bool {
	return len(data)-i >= len(prefix) && string(data[i:i+len(prefix)]) == prefix
}

func truncate(data []byte, n int) string {
	if len(data) <= n {
		return string(data)
	}
	return string(data[:n]) + "..."
}
