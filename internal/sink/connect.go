package sink

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"

	"github.com/outbox-relay/outbox-relay/internal/metrics"
)

// Connection is a NATS connection made by Connect, with its JetStream
// context and what it last failed to connect with.
type Connection struct {
	*nats.Conn
	JetStream jetstream.JetStream
	cfg       Config
	// connectErr is the latest failure to connect that the client reports
	// only to its ReconnectErrHandler: the first attempt's and later dial
	// failures. The client clears its LastError when it starts retrying.
	connectErr atomic.Pointer[error]
	// disconnected is closed, and replaced, at every disconnect.
	discMu       sync.Mutex
	disconnected chan struct{}
}

// Disconnected returns a channel closed at the next disconnect. A publish
// sent before it will get no PubAck: the reply subject's interest is gone
// with the connection, whether or not the server stored the message.
func (c *Connection) Disconnected() <-chan struct{} {
	c.discMu.Lock()
	defer c.discMu.Unlock()
	return c.disconnected
}

func (c *Connection) signalDisconnect() {
	c.discMu.Lock()
	defer c.discMu.Unlock()
	close(c.disconnected)
	c.disconnected = make(chan struct{})
}

// Connect dials NATS and returns the connection and its JetStream context.
// It never fails because the servers are down: the client keeps trying to
// (re)connect forever, with jitter, and publishes wait for it. It fails only
// on a configuration the client rejects.
func Connect(cfg Config, log *zap.Logger, m *metrics.Metrics) (*Connection, error) {
	c := &Connection{cfg: cfg, disconnected: make(chan struct{})}
	opts := []nats.Option{
		nats.Name("outbox-relay"),
		nats.Timeout(cfg.ConnectTimeout),
		nats.RetryOnFailedConnect(true),
		nats.MaxReconnects(-1),
		// The client's default pings every 2 minutes would leave a server
		// gone silent undetected for several minutes.
		nats.PingInterval(10 * time.Second),
		nats.MaxPingsOutstanding(3),
		nats.ReconnectWait(cfg.ReconnectWait),
		// No buffering while reconnecting: a publish made then would be
		// sent after the reconnect, long after the pump gave up on it and
		// published the event again (harmless for the stream, whose
		// expectations refuse one of the two, but wasted, and a full copy
		// of up to 8 MB of payloads). Publishes fail at once instead.
		nats.ReconnectBufSize(-1),
		// By default the client gives up for good after the same server
		// rejects its credentials twice, and the connection is closed
		// while the relay keeps running: it would never recover, not even
		// once the server's credentials are rotated to match. Keep
		// retrying like any other outage; the cause is reported by
		// NotConnectedCause.
		nats.IgnoreAuthErrorAbort(),
		nats.ReconnectJitter(cfg.ReconnectWait/2, cfg.ReconnectWait),
		nats.ConnectHandler(func(*nats.Conn) {
			c.connectErr.Store(nil)
			m.SinkConnected.Set(1)
			log.Info("nats connected")
		}),
		nats.ReconnectHandler(func(*nats.Conn) {
			c.connectErr.Store(nil)
			m.SinkConnected.Set(1)
			log.Info("nats reconnected")
		}),
		nats.ReconnectErrHandler(func(_ *nats.Conn, err error) {
			if err != nil {
				c.connectErr.Store(&err)
			}
		}),
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) {
			m.SinkConnected.Set(0)
			c.signalDisconnect()
			if err != nil {
				log.Warn("nats disconnected", zap.Error(err))
			}
		}),
		nats.ClosedHandler(func(*nats.Conn) {
			m.SinkConnected.Set(0)
		}),
		nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) {
			log.Warn("nats error", zap.Error(err))
		}),
	}
	auth, err := authOptions(cfg)
	if err != nil {
		return nil, err
	}
	opts = append(opts, auth...)
	nc, err := nats.Connect(cfg.NATSURL, opts...)
	if err != nil {
		return nil, fmt.Errorf("connect to nats: %w", redact(err, cfg))
	}
	if nc.IsConnected() {
		m.SinkConnected.Set(1)
	}
	// Publishing goes through Sink, not the JetStream context's async
	// publish; the context serves API requests (stream info, reads).
	js, err := jetstream.New(nc, jetstream.WithDefaultTimeout(cfg.RequestTimeout))
	if err != nil {
		nc.Close()
		return nil, fmt.Errorf("open jetstream: %w", err)
	}
	c.Conn, c.JetStream = nc, js
	return c, nil
}

func authOptions(cfg Config) ([]nats.Option, error) {
	var opts []nats.Option
	if cfg.User != "" {
		opts = append(opts, nats.UserInfo(cfg.User, cfg.Password))
	}
	if cfg.Token != "" {
		opts = append(opts, nats.Token(cfg.Token))
	}
	if cfg.CredsFile != "" {
		opts = append(opts, nats.UserCredentials(cfg.CredsFile))
	}
	if cfg.NKeySeedFile != "" {
		o, err := nats.NkeyOptionFromSeed(cfg.NKeySeedFile)
		if err != nil {
			return nil, fmt.Errorf("nats-nkey-file: %w", err)
		}
		opts = append(opts, o)
	}
	if cfg.TLSCAFile != "" {
		opts = append(opts, nats.RootCAs(cfg.TLSCAFile))
	}
	if cfg.TLSCertFile != "" {
		opts = append(opts, nats.ClientCert(cfg.TLSCertFile, cfg.TLSKeyFile))
	}
	return opts, nil
}

// redact removes secrets from an error's text: client errors can quote the
// URL, and a URL can carry a password or token (nats://user:password@host,
// nats://token@host), so both the configured secrets and those embedded in
// the configured URLs are replaced.
func redact(err error, cfg Config) error {
	msg := err.Error()
	clean := msg
	for _, secret := range secrets(cfg) {
		clean = strings.ReplaceAll(clean, secret, "REDACTED")
	}
	if clean == msg {
		return err
	}
	return errors.New(clean)
}

// secrets lists what must never be shown: the password, the token, and the
// secret part of each URL's user information, raw and unescaped. The URLs
// are taken apart by hand because the ones that matter most here are those
// net/url rejects, whose text the parse error quotes.
func secrets(cfg Config) []string {
	var out []string
	add := func(s string) {
		if s != "" {
			out = append(out, s)
		}
	}
	add(cfg.Password)
	add(cfg.Token)
	for _, u := range strings.Split(cfg.NATSURL, ",") {
		_, rest, ok := strings.Cut(strings.TrimSpace(u), "://")
		if !ok {
			rest = strings.TrimSpace(u)
		}
		// The last "@" ends the user information even when the secret
		// holds characters ("/", "?", "#") that would end the host part of
		// a well-formed URL; NATS URLs have no path that could hold one.
		at := strings.LastIndex(rest, "@")
		if at < 0 {
			continue
		}
		userinfo := rest[:at]
		secret := userinfo // nats://token@host
		if _, password, ok := strings.Cut(userinfo, ":"); ok {
			secret = password
		}
		add(secret)
		if unescaped, err := url.PathUnescape(secret); err == nil && unescaped != secret {
			add(unescaped)
		}
	}
	// Longest first, so a secret containing another is replaced whole.
	slices.SortFunc(out, func(a, b string) int { return len(b) - len(a) })
	return out
}

// NotConnectedCause explains why the connection is not connected, or returns
// nil when it is. While the client is (re)connecting in the background,
// requests simply time out; the actual cause (a TLS handshake failure, a
// rejected password, a refused dial) is only kept by the client. The text is
// redacted.
func (c *Connection) NotConnectedCause() error {
	if c == nil || c.Conn == nil || c.IsConnected() {
		return nil
	}
	last := c.LastError()
	if last == nil {
		if p := c.connectErr.Load(); p != nil {
			last = *p
		}
	}
	if last == nil {
		return fmt.Errorf("nats not connected (%s)", c.Status())
	}
	return fmt.Errorf("nats not connected: %w", redact(last, c.cfg))
}

// withCause adds the connection's NotConnectedCause to err when there is one.
func (c *Connection) withCause(err error) error {
	if cause := c.NotConnectedCause(); cause != nil {
		return fmt.Errorf("%w (%w)", err, cause)
	}
	return err
}

// StreamState is what preflight learned about the stream.
type StreamState struct {
	Subjects        []string
	DuplicateWindow time.Duration
	Replicas        int
	MaxMsgSize      int32
	Created         bool
	// PersistMode is the stream's persist_mode: jetstream.AsyncPersistMode
	// acknowledges writes before they are stored, and is refused.
	PersistMode jetstream.PersistModeType
	// AllowAtomic and AllowBatched are the stream's allow_atomic and
	// allow_batched; ServerVersion is the connected server's release.
	AllowAtomic, AllowBatched bool
	ServerVersion             string
}

// ErrConfig marks a stream problem only a change of configuration fixes.
var ErrConfig = errors.New("configuration error")

// EnsureStream checks that the stream exists and captures every subject in
// want (which may hold wildcards), creating it when allowed, and that some
// stream captures cfg.DeadLetterSubject when it is set. It refuses a stream
// with persist_mode async. With cfg.Atomic a stream it creates allows atomic
// batches, and it refuses a stream that does not or a server older than
// MinAtomicServer. It warns when the stream's duplicate window is
// short or its acknowledgements are not durable against a host crash.
// Creating a stream whose subjects overlap another stream's is a
// configuration error naming the subject and the other stream.
func (c *Connection) EnsureStream(ctx context.Context, cfg Config, want []string, log *zap.Logger) (StreamState, error) {
	js := c.JetStream
	rctx, cancel := context.WithTimeout(ctx, cfg.RequestTimeout)
	defer cancel()
	var created bool
	stream, err := js.Stream(rctx, cfg.Stream)
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		if !cfg.CreateStream {
			return StreamState{}, fmt.Errorf("stream: %q does not exist; create it to capture %s, or pass --create-stream: %w",
				cfg.Stream, strings.Join(want, ", "), ErrConfig)
		}
		stream, err = js.CreateStream(rctx, jetstream.StreamConfig{
			Name:       cfg.Stream,
			Subjects:   cfg.StreamSubjects,
			Storage:    jetstream.FileStorage,
			Duplicates: cfg.DuplicateWindow,
			Replicas:   cfg.Replicas,

			AllowAtomicPublish: cfg.Atomic,
			AllowBatchPublish:  cfg.PublishMode == PublishBatch,
		})
		var apiErr *jetstream.APIError
		if errors.As(err, &apiErr) && apiErr.ErrorCode == errCodeStreamSubjectOverlap {
			return StreamState{}, overlapError(ctx, js, cfg, err)
		}
		if err != nil {
			return StreamState{}, fmt.Errorf("create stream %q: %w", cfg.Stream, err)
		}
		created = true
		log.Info("stream created", zap.String("stream", cfg.Stream))
	}
	if err != nil {
		return StreamState{}, fmt.Errorf("look up stream %q: %w", cfg.Stream, c.withCause(err))
	}
	sc := stream.CachedInfo().Config
	state := StreamState{
		Subjects: sc.Subjects, DuplicateWindow: sc.Duplicates, Replicas: sc.Replicas, MaxMsgSize: sc.MaxMsgSize,
		Created: created, PersistMode: sc.PersistMode,
		AllowAtomic: sc.AllowAtomicPublish, AllowBatched: sc.AllowBatchPublish, ServerVersion: c.ConnectedServerVersion(),
	}
	var missing []string
	for _, w := range want {
		if !Captures(sc.Subjects, w) {
			missing = append(missing, w)
		}
	}
	if len(missing) > 0 {
		return state, fmt.Errorf("stream: %q (subjects %s) does not capture %s; add them to the stream or change --subject-template: %w",
			cfg.Stream, strings.Join(sc.Subjects, ", "), strings.Join(missing, ", "), ErrConfig)
	}
	if sc.PersistMode == jetstream.AsyncPersistMode {
		return state, fmt.Errorf("stream: %q has persist_mode async: the server acknowledges writes before it stores them, so the slot would move past events a NATS restart can lose; "+
			"recreate the stream without persist_mode (the default) and see the README on durability: %w", cfg.Stream, ErrConfig)
	}
	if cfg.PublishMode == PublishBatch {
		if err := checkFastBatch(cfg.Stream, sc); err != nil {
			return state, err
		}
	}
	if cfg.Atomic {
		if err := checkAtomic(cfg.Stream, sc, state.ServerVersion, cfg.DeadLetterSubject); err != nil {
			return state, err
		}
	}
	if dl := cfg.DeadLetterSubject; dl != "" && !Captures(sc.Subjects, dl) {
		others, err := Overlaps(ctx, js, []string{dl}, cfg.RequestTimeout)
		if err != nil {
			return state, fmt.Errorf("look up the stream of the dead-letter subject %q: %w", dl, c.withCause(err))
		}
		if len(others) == 0 {
			return state, fmt.Errorf("dead-letter-subject: no stream captures the dead-letter subject %q, so a poison event could never be dead-lettered; add it to the subjects of stream %q or another, or change --dead-letter-subject: %w",
				dl, cfg.Stream, ErrConfig)
		}
	}
	if sc.Duplicates < 2*time.Minute {
		log.Warn("stream duplicate window is short; replays after a longer outage are caught only by the relay's stream position check",
			zap.String("stream", cfg.Stream), zap.Duration("duplicate_window", sc.Duplicates))
	}
	if sc.Replicas < 3 {
		log.Warn("stream has fewer than 3 replicas: a PubAck is durable against a NATS host crash only with R3 or a server that syncs every write (sync_interval: always)",
			zap.String("stream", cfg.Stream), zap.Int("replicas", sc.Replicas))
	}
	return state, nil
}

// errCodeStreamSubjectOverlap is JetStream's JSStreamSubjectOverlapErr:
// "subjects overlap with an existing stream".
const errCodeStreamSubjectOverlap jetstream.ErrorCode = 10065

// overlapError explains a stream that could not be created because its
// subjects overlap others, naming each subject and stream; createErr is the
// server's refusal, kept when the streams cannot be looked up.
func overlapError(ctx context.Context, js jetstream.JetStream, cfg Config, createErr error) error {
	overlaps, err := Overlaps(ctx, js, cfg.StreamSubjects, cfg.RequestTimeout)
	if err == nil && len(overlaps) == 0 {
		err = errors.New("none found")
	}
	if err != nil {
		return fmt.Errorf("create stream %q with subjects %s: %w (looking up which overlap: %w): %w",
			cfg.Stream, strings.Join(cfg.StreamSubjects, ", "), createErr, err, ErrConfig)
	}
	texts := make([]string, len(overlaps))
	for i, o := range overlaps {
		texts[i] = o.String()
	}
	return fmt.Errorf("stream: cannot create %q: %s; set --stream-subjects, --dead-letter-subject or --subject-template so that no two streams claim a subject: %w",
		cfg.Stream, strings.Join(texts, "; "), ErrConfig)
}
