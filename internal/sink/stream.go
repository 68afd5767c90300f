package sink

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nuid"
)

// StreamInfo is what the relay reads of its stream's state and settings.
type StreamInfo struct {
	// FirstSeq and LastSeq bound the sequences the stream has used; messages
	// between them may have been removed.
	FirstSeq, LastSeq uint64
	// Created tells a stream from another of the same name: sequences of
	// one mean nothing in the other.
	Created time.Time
	// Replicas, Retention ("limits", "workqueue" or "interest") and
	// Subjects are the stream's settings.
	Replicas  int
	Retention string
	Subjects  []string
}

// StreamReader reads one stream the way recovery needs it: always from the
// stream leader (never a direct get, which a lagging replica may answer with
// an older message or none), with a timeout per request.
type StreamReader struct {
	nc      *nats.Conn
	js      jetstream.JetStream
	stream  string
	timeout time.Duration
}

// NewStreamReader reads stream over nc.
func NewStreamReader(nc *nats.Conn, js jetstream.JetStream, stream string, timeout time.Duration) *StreamReader {
	return &StreamReader{nc: nc, js: js, stream: stream, timeout: timeout}
}

// ErrStreamMissing marks a stream that does not exist (any more).
var ErrStreamMissing = errors.New("stream does not exist")

// Info reads the stream's state and settings from its leader.
func (r *StreamReader) Info(ctx context.Context) (StreamInfo, error) {
	rctx, cancel := context.WithTimeout(ctx, r.timeout)
	defer cancel()
	s, err := r.js.Stream(rctx, r.stream)
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		return StreamInfo{}, fmt.Errorf("read stream %q: %w", r.stream, ErrStreamMissing)
	}
	if err != nil {
		return StreamInfo{}, fmt.Errorf("read stream %q: %w", r.stream, err)
	}
	info := s.CachedInfo()
	return StreamInfo{
		FirstSeq: info.State.FirstSeq, LastSeq: info.State.LastSeq, Created: info.Created,
		Replicas: info.Config.Replicas, Retention: retentionName(info.Config.Retention), Subjects: info.Config.Subjects,
	}, nil
}

func retentionName(p jetstream.RetentionPolicy) string {
	switch p {
	case jetstream.WorkQueuePolicy:
		return "workqueue"
	case jetstream.InterestPolicy:
		return "interest"
	}
	return "limits"
}

// msgGetResponse is JetStream's reply to STREAM.MSG.GET.
type msgGetResponse struct {
	Error   *jetstream.APIError `json:"error,omitempty"`
	Message *struct {
		Header []byte `json:"hdrs,omitempty"`
	} `json:"message,omitempty"`
}

// errCodeNoMessageFound is JetStream's JSNoMessageFoundErr.
const errCodeNoMessageFound jetstream.ErrorCode = 10037

// Header returns the headers of the message at seq, and false when the stream
// holds no message there (never stored, or removed since).
func (r *StreamReader) Header(ctx context.Context, seq uint64) (nats.Header, bool, error) {
	return r.get(ctx, r.stream, fmt.Sprintf(`{"seq":%d}`, seq))
}

// LastHeaderOf returns the headers of the last message on subject in stream,
// and false when there is none.
func (r *StreamReader) LastHeaderOf(ctx context.Context, stream, subject string) (nats.Header, bool, error) {
	req, err := json.Marshal(map[string]string{"last_by_subj": subject})
	if err != nil {
		return nil, false, err
	}
	return r.get(ctx, stream, string(req))
}

func (r *StreamReader) get(ctx context.Context, stream, request string) (nats.Header, bool, error) {
	rctx, cancel := context.WithTimeout(ctx, r.timeout)
	defer cancel()
	reply, err := r.nc.RequestWithContext(rctx, "$JS.API.STREAM.MSG.GET."+stream, []byte(request))
	if err != nil {
		return nil, false, fmt.Errorf("read message of stream %q: %w", stream, err)
	}
	var resp msgGetResponse
	if err := json.Unmarshal(reply.Data, &resp); err != nil {
		return nil, false, fmt.Errorf("read message of stream %q: invalid reply: %w", stream, err)
	}
	if resp.Error != nil {
		if resp.Error.ErrorCode == errCodeNoMessageFound {
			return nil, false, nil
		}
		if resp.Error.ErrorCode == jetstream.JSErrCodeStreamNotFound {
			return nil, false, fmt.Errorf("read message of stream %q: %w", stream, ErrStreamMissing)
		}
		return nil, false, fmt.Errorf("read message of stream %q: %w", stream, resp.Error)
	}
	if resp.Message == nil {
		return nil, false, fmt.Errorf("read message of stream %q: reply without a message", stream)
	}
	if len(resp.Message.Header) == 0 {
		return nats.Header{}, true, nil
	}
	h, err := nats.DecodeHeadersMsg(resp.Message.Header)
	if err != nil {
		return nil, false, fmt.Errorf("read message of stream %q: headers: %w", stream, err)
	}
	return h, true, nil
}

// LastMsgID asks the stream for the message id of the last message it
// stored, which JetStream keeps after the message itself is removed (by a
// work-queue or interest stream's consumers, say) until the server restarts;
// empty when the last message had no id or the server has forgotten it.
//
// There is no API for it: the question is a publish to subject (which the
// stream must capture) that expects an id no message has, which JetStream
// refuses naming the actual last id. Nothing is stored. Use it only on a
// stream with one replica: a replicated stream checks that expectation only
// when its replicas apply the message, and nats-server 2.15 stops the stream
// on such a mismatch (TestJetStreamReplicatedStreamsNeedSequenceOnly).
func (r *StreamReader) LastMsgID(ctx context.Context, subject string) (string, error) {
	rctx, cancel := context.WithTimeout(ctx, r.timeout)
	defer cancel()
	msg := nats.NewMsg(subject)
	msg.Header.Set(jetstream.ExpectedLastMsgIDHeader, "outbox-relay-probe-"+nuid.Next())
	msg.Header.Set(jetstream.ExpectedStreamHeader, r.stream)
	reply, err := r.nc.RequestMsgWithContext(rctx, msg)
	if err != nil {
		return "", fmt.Errorf("ask stream %q for its last message id: %w", r.stream, err)
	}
	_, err = decodeReply(reply, r.stream)
	var apiErr *jetstream.APIError
	if errors.As(err, &apiErr) && apiErr.ErrorCode == errCodeWrongLastMsgID {
		last, ok := strings.CutPrefix(apiErr.Description, "wrong last msg ID: ")
		if ok {
			return last, nil
		}
	}
	if err == nil {
		return "", fmt.Errorf("ask stream %q for its last message id: the probe was stored", r.stream)
	}
	return "", fmt.Errorf("ask stream %q for its last message id: %w", r.stream, err)
}

// errCodeWrongLastMsgID is JetStream's JSStreamWrongLastMsgIDErrF.
const errCodeWrongLastMsgID jetstream.ErrorCode = 10070

// StateStore keeps small records where stream retention cannot reach them:
// a JetStream key-value bucket. Reads go to the bucket's stream leader.
type StateStore struct {
	kv      jetstream.KeyValue
	reader  *StreamReader
	bucket  string
	timeout time.Duration
}

// OpenStateStore opens the key-value bucket, creating it with replicas when
// missing. With replicas 0 it creates nothing: a missing bucket holds no
// records, and Save fails.
func OpenStateStore(ctx context.Context, c *Connection, bucket string, replicas int, timeout time.Duration) (*StateStore, error) {
	rctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	kv, err := c.JetStream.KeyValue(rctx, bucket)
	if errors.Is(err, jetstream.ErrBucketNotFound) && replicas == 0 {
		return &StateStore{bucket: bucket, timeout: timeout}, nil
	}
	if errors.Is(err, jetstream.ErrBucketNotFound) {
		kv, err = c.JetStream.CreateKeyValue(rctx, jetstream.KeyValueConfig{
			Bucket:      bucket,
			Description: "outbox-relay high-water marks: the last event each relay stored in each stream",
			History:     1,
			Storage:     jetstream.FileStorage,
			Replicas:    replicas,
		})
		if errors.Is(err, jetstream.ErrBucketExists) {
			kv, err = c.JetStream.KeyValue(rctx, bucket)
		}
	}
	if err != nil {
		return nil, fmt.Errorf("open key-value bucket %q: %w", bucket, c.withCause(err))
	}
	return &StateStore{kv: kv, reader: NewStreamReader(c.Conn, c.JetStream, "KV_"+bucket, timeout), bucket: bucket, timeout: timeout}, nil
}

// Load returns the value of key, and false when it has none.
func (s *StateStore) Load(ctx context.Context, key string) ([]byte, bool, error) {
	if s.kv == nil {
		return nil, false, nil
	}
	// The record is the last message on the key's subject; reading it with
	// STREAM.MSG.GET asks the leader rather than any replica.
	rctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	reply, err := s.reader.nc.RequestWithContext(rctx, "$JS.API.STREAM.MSG.GET.KV_"+s.bucket,
		[]byte(fmt.Sprintf(`{"last_by_subj":"$KV.%s.%s"}`, s.bucket, key)))
	if err != nil {
		return nil, false, fmt.Errorf("read %q from bucket %q: %w", key, s.bucket, err)
	}
	var resp struct {
		Error   *jetstream.APIError `json:"error,omitempty"`
		Message *struct {
			Header []byte `json:"hdrs,omitempty"`
			Data   string `json:"data,omitempty"`
		} `json:"message,omitempty"`
	}
	if err := json.Unmarshal(reply.Data, &resp); err != nil {
		return nil, false, fmt.Errorf("read %q from bucket %q: invalid reply: %w", key, s.bucket, err)
	}
	if resp.Error != nil {
		if resp.Error.ErrorCode == errCodeNoMessageFound {
			return nil, false, nil
		}
		return nil, false, fmt.Errorf("read %q from bucket %q: %w", key, s.bucket, resp.Error)
	}
	if resp.Message == nil {
		return nil, false, nil
	}
	if len(resp.Message.Header) > 0 {
		// A deleted or purged key keeps a marker message.
		if h, err := nats.DecodeHeadersMsg(resp.Message.Header); err == nil && h.Get("KV-Operation") != "" {
			return nil, false, nil
		}
	}
	data, err := base64.StdEncoding.DecodeString(resp.Message.Data)
	if err != nil {
		return nil, false, fmt.Errorf("read %q from bucket %q: %w", key, s.bucket, err)
	}
	return data, true, nil
}

// Save stores value under key and waits for the bucket to acknowledge it.
func (s *StateStore) Save(ctx context.Context, key string, value []byte) error {
	if s.kv == nil {
		return fmt.Errorf("write %q to bucket %q: the bucket does not exist", key, s.bucket)
	}
	rctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	if _, err := s.kv.Put(rctx, key, value); err != nil {
		return fmt.Errorf("write %q to bucket %q: %w", key, s.bucket, err)
	}
	return nil
}

// Delete removes key.
func (s *StateStore) Delete(ctx context.Context, key string) error {
	if s.kv == nil {
		return nil
	}
	rctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	if err := s.kv.Delete(rctx, key); err != nil {
		return fmt.Errorf("delete %q from bucket %q: %w", key, s.bucket, err)
	}
	return nil
}
