package sink

import (
	"errors"
	"fmt"
	"time"
)

// Config configures the NATS side.
type Config struct {
	// NATSURL is one or more comma-separated server URLs.
	NATSURL string
	// Stream names the JetStream stream the outbox is published to.
	Stream string
	// StateBucket names the key-value bucket that keeps the relay's
	// high-water mark where the stream's retention cannot reach it.
	StateBucket string
	// CreateStream allows creating the stream when it is missing, with
	// StreamSubjects, DuplicateWindow and Replicas.
	CreateStream    bool
	StreamSubjects  []string
	DuplicateWindow time.Duration
	Replicas        int
	// DeadLetterSubject, when set, must be captured by some stream (this one
	// or another): poison events are published there.
	DeadLetterSubject string
	// Atomic publishes each transaction as an atomic batch: a stream the
	// relay creates allows them, and preflight refuses a stream that does
	// not or a server older than MinAtomicServer.
	Atomic bool
	// PublishMode is PublishAuto, PublishAsync or PublishBatch; FastBatch,
	// decided from it and the stream (UsesFastBatch), makes the Sink
	// publish in fast batches.
	PublishMode string
	FastBatch   bool
	// PublishTimeout bounds the wait for each PubAck.
	PublishTimeout time.Duration
	// ConnectTimeout bounds dialing a server; RequestTimeout bounds each
	// JetStream API request.
	ConnectTimeout time.Duration
	RequestTimeout time.Duration
	// ReconnectWait is the base delay between reconnect attempts (jittered).
	ReconnectWait time.Duration
	// Auth and TLS; file contents are read at connect time.
	User, Password string
	Token          string
	CredsFile      string
	NKeySeedFile   string
	TLSCAFile      string
	TLSCertFile    string
	TLSKeyFile     string
}

// Validate reports every problem of c at once, each naming the setting.
func (c Config) Validate() error {
	var errs []error
	if c.NATSURL == "" {
		errs = append(errs, errors.New("nats-url: required (RELAY_NATS_URL)"))
	}
	if c.Stream == "" {
		errs = append(errs, errors.New("stream: must not be empty"))
	}
	if !validBucket(c.StateBucket) {
		errs = append(errs, fmt.Errorf("state-bucket: %q is not a valid bucket name (letters, digits, - and _)", c.StateBucket))
	}
	for _, s := range c.StreamSubjects {
		if !ValidSubject(s, true) {
			errs = append(errs, fmt.Errorf("stream-subjects: %q is not a valid subject", s))
		}
	}
	if c.CreateStream && len(c.StreamSubjects) == 0 {
		errs = append(errs, errors.New("stream-subjects: needed to create the stream"))
	}
	switch c.PublishMode {
	case "", PublishAuto, PublishAsync, PublishBatch:
	default:
		errs = append(errs, fmt.Errorf("publish-mode: %q, must be auto, async or batch", c.PublishMode))
	}
	if c.DuplicateWindow <= 0 {
		errs = append(errs, fmt.Errorf("duplicate-window: %s, must be positive", c.DuplicateWindow))
	}
	if c.Replicas < 1 || c.Replicas > 5 {
		errs = append(errs, fmt.Errorf("stream-replicas: %d, must be 1 to 5", c.Replicas))
	}
	for name, d := range map[string]time.Duration{"publish-timeout": c.PublishTimeout, "nats-connect-timeout": c.ConnectTimeout, "nats-request-timeout": c.RequestTimeout, "nats-reconnect-wait": c.ReconnectWait} {
		if d <= 0 {
			errs = append(errs, fmt.Errorf("%s: %s, must be positive", name, d))
		}
	}
	if (c.TLSCertFile == "") != (c.TLSKeyFile == "") {
		errs = append(errs, errors.New("nats-tls-cert, nats-tls-key: set both or neither"))
	}
	return errors.Join(errs...)
}

// validBucket accepts what JetStream accepts as a key-value bucket name.
func validBucket(name string) bool {
	if name == "" {
		return false
	}
	for _, c := range name {
		letter := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z'
		if !letter && (c < '0' || c > '9') && c != '-' && c != '_' {
			return false
		}
	}
	return true
}
