package main

import (
	"cmp"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/outbox-relay/outbox-relay/internal/cdc"
	"github.com/outbox-relay/outbox-relay/internal/janitor"
	"github.com/outbox-relay/outbox-relay/internal/leader"
	"github.com/outbox-relay/outbox-relay/internal/relay"
	"github.com/outbox-relay/outbox-relay/internal/sink"
	"github.com/outbox-relay/outbox-relay/internal/tracing"
)

// config is everything the relay is told, gathered from flags, then RELAY_*
// variables, then defaults.
type config struct {
	cdc      cdc.Config
	sink     sink.Config
	pump     relay.Config
	election leader.Config
	tracing  tracing.Config

	cloudEvents       bool
	cloudEventsSource string
	cloudEventsType   string
	janitor           janitor.Config

	postgresPassword string
	table            string
	tableColumns     string
	messageID        string
	subjectTemplate  string
	streamSubjects   string
	template         relay.Template

	leaderElection bool
	httpAddr       string
	pprof          bool
	logLevel       string
	logFormat      string
	stallTimeout   time.Duration

	// snapshot is --initial-snapshot.
	snapshot     snapshotSetting
	snapshotText string

	// relay recover only.
	recoverPreviousSlot string
	recoverMaxTxnAge    time.Duration

	// relay replay only.
	replay replaySettings
}

// envName maps a flag name to its environment variable: --nats-url reads
// RELAY_NATS_URL, or the file named by RELAY_NATS_URL_FILE.
func envName(flagName string) string {
	return "RELAY_" + strings.ToUpper(strings.ReplaceAll(flagName, "-", "_"))
}

// newFlagSet defines every setting on fs, writing into c.
func newFlagSet(name string, c *config, out io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(out)
	s := func(p *string, name, def, usage string) { fs.StringVar(p, name, def, usage) }
	d := func(p *time.Duration, name string, def time.Duration, usage string) {
		fs.DurationVar(p, name, def, usage)
	}
	b := func(p *bool, name string, def bool, usage string) {
		if !def {
			// The flag package states only non-zero defaults.
			usage += " (default false)"
		}
		fs.BoolVar(p, name, def, usage)
	}
	i := func(p *int, name string, def int, usage string) { fs.IntVar(p, name, def, usage) }

	// PostgreSQL
	s(&c.cdc.PostgresURL, "postgres-url", "", "PostgreSQL connection URL, e.g. postgres://relay@db:5432/app?sslmode=verify-full (required; default none)")
	s(&c.postgresPassword, "postgres-password", "", "PostgreSQL password, overriding the URL's (and --leader-postgres-url's); use RELAY_POSTGRES_PASSWORD_FILE to read it from a file (default none)")
	s(&c.table, "table", "events", "outbox table, optionally schema-qualified; several comma-separated, or a pattern with * (\"*.outbox\": every schema's outbox table, also those created later; needs a publication FOR ALL TABLES)")
	s(&c.tableColumns, "table-columns", "", "column mapping of single tables of --table where it differs from the --column-* flags: \"<table>: <column>=<name> ...; <table>: ...\", columns id, aggregate-type, aggregate-id, event-type, payload, headers, created-at, alternatives separated by | (default none)")
	s(&c.messageID, "message-id", "", "what Nats-Msg-Id holds: id (the id column) or table-id (<schema>.<table>/<id>, for ids unique only per table); required with several tables (default id with one table)")
	s(&c.cdc.Columns.ID, "column-id", "id", "column holding the event id (becomes Nats-Msg-Id)")
	s(&c.cdc.Columns.AggregateType, "column-aggregate-type", "aggregate_type", "column holding the aggregate type")
	s(&c.cdc.Columns.AggregateID, "column-aggregate-id", "aggregate_id", "column holding the aggregate id")
	s(&c.cdc.Columns.EventType, "column-event-type", "event_type", "column holding the event type")
	s(&c.cdc.Columns.Payload, "column-payload", "payload", "column holding the message body")
	s(&c.cdc.Columns.Headers, "column-headers", "headers", "JSON object column of extra message headers; empty (also RELAY_COLUMN_HEADERS set to nothing) when the table has none")
	s(&c.cdc.Columns.CreatedAt, "column-created-at", "created_at", "column holding the creation time; empty (also RELAY_COLUMN_CREATED_AT set to nothing) when the table has none")
	s(&c.cdc.Publication, "publication", "outbox_relay", "publication of the outbox table")
	s(&c.cdc.Slot, "slot", "outbox_relay", "logical replication slot")
	b(&c.cdc.CreatePublication, "create-publication", true, "create the publication when missing")
	b(&c.cdc.CreateSlot, "create-slot", true, "create the slot when missing (never when the stream shows the slot was dropped)")
	s(&c.snapshotText, "initial-snapshot", "none", "when the relay creates its slot, first publish the rows already in the table: none, all, since:<RFC 3339 time or duration> (rows created since), or where:<SQL condition> (e.g. where:sent_at IS NULL, moving from a polling outbox); see the README's adopting an existing table")
	b(&c.cdc.FailoverSlot, "failover-slot", false, "create the slot as a failover slot that survives a failover to a standby (PostgreSQL 17+)")
	d(&c.cdc.StatusInterval, "status-interval", 2*time.Second, "how often the confirmed position is reported to PostgreSQL; keep below wal_sender_timeout")
	d(&c.cdc.ConnectTimeout, "connect-timeout", 10*time.Second, "timeout for connecting to PostgreSQL")
	d(&c.cdc.ReplicationTimeout, "replication-timeout", 0, "reconnect when nothing arrived on the replication connection for this long (a silent server or network); must be above the server's wal_sender_timeout (default 0: twice wal_sender_timeout, at least 1m)")
	d(&c.cdc.QueryTimeout, "query-timeout", 10*time.Second, "timeout for each PostgreSQL query")
	d(&c.cdc.SlotPollInterval, "slot-poll-interval", 15*time.Second, "how often the slot's retained WAL and status are read")
	d(&c.cdc.ReconnectMin, "reconnect-min", 250*time.Millisecond, "first delay before reconnecting to PostgreSQL")
	d(&c.cdc.ReconnectMax, "reconnect-max", 15*time.Second, "longest delay between reconnects to PostgreSQL")
	i(&c.cdc.EventBuffer, "event-buffer", 4096, "events buffered between reading and publishing")
	fs.Int64Var(&c.cdc.EventBufferBytes, "event-buffer-bytes", 64<<20, "bytes of events (payloads, headers, ids) read and not yet acknowledged by JetStream, wherever they wait; reading pauses above it, and one larger event passes alone")
	d(&c.cdc.PublicationCheckInterval, "publication-check-interval", time.Second, "how often the running relay checks that its publication is unchanged; the slot is confirmed only up to the last check")
	s(&c.cdc.MessagePrefix, "message-prefix", "", "also publish the logical decoding messages with exactly this prefix, written by pg_logical_emit_message(true, prefix, content) with a JSON object of the outbox's columns as content (default none: no messages)")
	s(&c.cdc.AcceptPublication, "accept-publication", "", "digest of a changed publication to accept, from the error that reported the change, after checking that no insert was skipped (default none)")

	// NATS
	s(&c.sink.NATSURL, "nats-url", "", "NATS server URL(s), comma-separated (required; default none)")
	s(&c.sink.User, "nats-user", "", "NATS user (default none)")
	s(&c.sink.Password, "nats-password", "", "NATS password; RELAY_NATS_PASSWORD_FILE reads it from a file (default none)")
	s(&c.sink.Token, "nats-token", "", "NATS token; RELAY_NATS_TOKEN_FILE reads it from a file (default none)")
	s(&c.sink.CredsFile, "nats-creds", "", "NATS credentials (.creds) file (default none)")
	s(&c.sink.NKeySeedFile, "nats-nkey-file", "", "NATS NKey seed file (default none)")
	s(&c.sink.TLSCAFile, "nats-tls-ca", "", "CA certificate file to verify NATS servers (default system roots)")
	s(&c.sink.TLSCertFile, "nats-tls-cert", "", "client certificate file for NATS (default none)")
	s(&c.sink.TLSKeyFile, "nats-tls-key", "", "client key file for NATS (default none)")
	s(&c.sink.Stream, "stream", "OUTBOX", "JetStream stream the events are stored in; others may write to it too (see --shared-stream)")
	s(&c.sink.StateBucket, "state-bucket", "outbox-relay", "JetStream key-value bucket holding each relay's high-water mark per stream, created when missing")
	b(&c.pump.SharedStream, "shared-stream", false, "on a replicated stream others write to, publish one message at a time from the start (otherwise only after another writer is seen; one-replica streams need no such care)")
	b(&c.sink.CreateStream, "create-stream", false, "create the stream when missing (file storage)")
	s(&c.streamSubjects, "stream-subjects", "", "comma-separated subjects for a stream the relay creates (default: the subject template's wildcard, plus the dead-letter subject)")
	d(&c.sink.DuplicateWindow, "duplicate-window", 2*time.Minute, "duplicate window of a stream the relay creates")
	i(&c.sink.Replicas, "stream-replicas", 1, "replicas of a stream the relay creates (3 for acknowledgements that survive a host crash)")
	s(&c.subjectTemplate, "subject-template", "outbox.{aggregate_type}.{event_type}", "subject of each event; placeholders {aggregate_type}, {aggregate_id}, {event_type}, {id}, {schema}, {table} (of the outbox table; \"message\" for a logical decoding message)")
	i(&c.pump.Window, "publish-window", 1024, "publishes in flight at once")
	i(&c.pump.AckEvery, "ack-every", 32, "in a burst, ask JetStream to acknowledge only every Nth message (and the last); each acknowledgement vouches for the messages before it, which carry the expected last sequence; 1 acknowledges every message")
	s(&c.sink.PublishMode, "publish-mode", sink.PublishAuto, "how bursts are published: batch (fast batches: one reply per burst; the stream must allow them: allow_batched, nats-server 2.14+), async (one publish per message), or auto (batch when the stream allows it, async otherwise; see the README)")
	d(&c.sink.PublishTimeout, "publish-timeout", 10*time.Second, "timeout for each PubAck")
	d(&c.sink.ConnectTimeout, "nats-connect-timeout", 5*time.Second, "timeout for connecting to a NATS server")
	d(&c.sink.RequestTimeout, "nats-request-timeout", 5*time.Second, "timeout for each JetStream API request")
	d(&c.sink.ReconnectWait, "nats-reconnect-wait", time.Second, "base delay between NATS reconnect attempts (jittered)")
	d(&c.pump.RetryMin, "retry-min", 100*time.Millisecond, "first delay before publishing again after a failure")
	d(&c.pump.RetryMax, "retry-max", 10*time.Second, "longest delay between publish retries")
	s(&c.pump.OnPoison, "on-poison", relay.OnPoisonStop, "what to do with an event JetStream can never accept: stop or dead-letter (relay replay: stop, or skip and list it)")
	b(&c.pump.Atomic, "atomic-transactions", false, "publish each committed transaction whole in an atomic batch (with the whole transactions waiting behind it): consumers see all of its events or none (nats-server 2.15.2 or later, a stream with allow_atomic; see the README)")
	i(&c.pump.BatchMaxMessages, "atomic-batch-max", 1000, "with --atomic-transactions, the most events in one atomic batch: at most the server's max_batch_size (1000 unless configured)")
	s(&c.pump.OnLargeTransaction, "on-large-transaction", relay.LargeTransactionStop, "with --atomic-transactions, what to do with a transaction of more events than --atomic-batch-max, or more bytes than half of --event-buffer-bytes: stop (with an error naming it) or split (consecutive batches, each atomic)")
	s(&c.pump.DeadLetterSubject, "dead-letter-subject", "", "subject poison events go to with --on-poison=dead-letter; some stream must capture it (default outbox_dead_letter.<slot>.<the subject template's wildcard with each * written _>, so that relays of different slots or templates differ, e.g. outbox_dead_letter.outbox_relay.outbox._._)")

	// Process
	b(&c.leaderElection, "leader-election", true, "let only one relay per slot run; others stand by and take over")
	d(&c.election.LeaseTimeout, "leader-lease-timeout", 5*time.Second, "how long a leader that went silent keeps leadership before a standby takes over")
	d(&c.election.PollInterval, "leader-poll-interval", time.Second, "how often a standby tries to take over")
	s(&c.election.PostgresURL, "leader-postgres-url", "", "PostgreSQL connection URL for the leader lock, a direct connection to the server, never through a pooler such as PgBouncer (default: --postgres-url)")
	d(&c.pump.ShutdownTimeout, "shutdown-timeout", 15*time.Second, "how long shutdown waits for publishes in flight")
	d(&c.stallTimeout, "stall-timeout", 2*time.Minute, "liveness fails when events are pending and none was acknowledged for this long while PostgreSQL and NATS are up")
	s(&c.httpAddr, "http-addr", ":8081", "address of the /metrics, /healthz and /readyz endpoints")
	b(&c.pprof, "pprof", false, "also serve Go's profiler under /debug/pprof/ on the HTTP address")
	s(&c.logLevel, "log-level", "info", "log level: debug, info, warn or error")
	s(&c.logFormat, "log-format", "json", "log format: json or console")

	// Cleanup
	d(&c.janitor.Retention, "retention", 0, "delete outbox rows older than this (by the created_at column; at least --recover-max-transaction-age), on the leader only: whole partitions of an outbox range-partitioned by created_at, other rows in small batches (default 0: never; see the README's cleaning up)")
	d(&c.janitor.Interval, "retention-interval", 5*time.Minute, "how often rows older than --retention are deleted")

	// relay recover
	s(&c.recoverPreviousSlot, "recover-previous-slot", "", "relay recover: the slot whose events the stream holds, when the slot to create is given another name (after a failover to a standby that lacked published WAL) (default: --slot)")
	d(&c.recoverMaxTxnAge, "recover-max-transaction-age", time.Hour, "relay recover, and an initial snapshot started over: the longest an outbox transaction stays open; rows created up to this long before the last event published are compared with the stream")

	// relay replay
	s(&c.replay.since, "replay-since", "", "relay replay: republish the rows created at or after this RFC 3339 time (default none)")
	s(&c.replay.until, "replay-until", "", "relay replay: republish the rows created before this RFC 3339 time (default none)")
	s(&c.replay.ids, "replay-ids", "", "relay replay: republish the rows with these ids, comma-separated (default none)")
	s(&c.replay.idsFile, "replay-ids-from", "", "relay replay: republish the rows with the ids in this file, separated by commas, spaces or line breaks (default none)")
	fs.Uint64Var(&c.replay.afterSeq, "replay-after-seq", 0, "relay replay: republish the rows created after the relay's message at this sequence of --stream (default 0: none)")
	s(&c.replay.subjectPrefix, "replay-subject-prefix", "", "relay replay: publish each event to this prefix, a dot, then its usual subject (default none: the usual subject)")
	s(&c.replay.subjectTemplate, "replay-subject-template", "", "relay replay: publish each event to this subject template instead, e.g. replay.{aggregate_type}.{event_type} (default none: --subject-template)")
	s(&c.replay.id, "replay-id", "", "relay replay: the replay's id, in each message id (<event id>/replay/<replay id>) and header Outbox-Replay: rerunning a replay with its id stores nothing twice within the stream's duplicate window (default: generated and printed)")
	b(&c.replay.dryRun, "replay-dry-run", false, "relay replay: count the rows and print the first messages, publishing nothing")

	// CloudEvents
	b(&c.cloudEvents, "cloudevents", false, "publish each event as a CloudEvent in binary content mode, per the CloudEvents NATS protocol binding (ce-* headers, the payload as the data)")
	s(&c.cloudEventsSource, "cloudevents-source", "", "ce-source of every event with --cloudevents (default /outbox-relay/<database>/<schema>.<table>, /outbox-relay/<database> with several tables)")
	s(&c.cloudEventsType, "cloudevents-type", "{aggregate_type}.{event_type}", "ce-type of each event with --cloudevents; placeholders {aggregate_type}, {aggregate_id}, {event_type}, {id}, e.g. com.example.{aggregate_type}.{event_type}")

	// Tracing
	s(&c.tracing.Endpoint, "otlp-traces-endpoint", "", "OTLP/HTTP URL to export a span per published event to, linked to the producer's span from the row's traceparent and sampled as it was, e.g. http://otel-collector:4318/v1/traces (default none: no spans)")
	return fs
}

// emptyAllowed lists the settings for which the empty string is a value of
// its own ("no such column") rather than "use the default": for these a
// RELAY_* variable set to nothing counts; for the others it is as if unset.
var emptyAllowed = map[string]bool{"column-headers": true, "column-created-at": true}

// parseConfig reads flags, then environment variables for every flag not
// given, and validates the result, reporting every problem at once.
func parseConfig(name string, args []string, lookupEnv func(string) (string, bool), out io.Writer) (*config, error) {
	c := &config{}
	fs := newFlagSet(name, c, out)
	fs.Usage = func() {
		fmt.Fprintf(out, "Usage: relay %s [flags]\n\nEvery flag can also be set with RELAY_<FLAG> (for example RELAY_NATS_URL),\nor RELAY_<FLAG>_FILE to read the value from a file. Flags win over the environment.\n\nFlags:\n", name)
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil, flagHelp
		}
		return nil, &flagError{err}
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected arguments: %s", strings.Join(fs.Args(), " "))
	}
	given := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { given[f.Name] = true })
	var errs []error
	fs.VisitAll(func(f *flag.Flag) {
		if given[f.Name] {
			return
		}
		value, ok, err := fromEnv(envName(f.Name), emptyAllowed[f.Name], lookupEnv)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", f.Name, err))
			return
		}
		if ok {
			if err := f.Value.Set(value); err != nil {
				errs = append(errs, fmt.Errorf("%s: %s=%q: %w", f.Name, envName(f.Name), redactIfSecret(f.Name, value), err))
			}
		}
	})
	errs = append(errs, c.finish())
	if name == "replay" {
		errs = append(errs, c.replay.finish(c.subjectTemplate))
	}
	return c, errors.Join(errs...)
}

// fromEnv reads name, or the file named by name_FILE. A variable set to the
// empty string counts as set only when empty is allowed.
func fromEnv(name string, empty bool, lookupEnv func(string) (string, bool)) (string, bool, error) {
	if v, ok := lookupEnv(name); ok && (v != "" || empty) {
		return v, true, nil
	}
	file, _ := lookupEnv(name + "_FILE")
	if file == "" {
		return "", false, nil
	}
	data, err := os.ReadFile(file)
	if err != nil {
		return "", false, fmt.Errorf("read %s_FILE: %w", name, err)
	}
	return strings.TrimRight(string(data), "\r\n"), true, nil
}

func redactIfSecret(flagName, value string) string {
	if strings.Contains(flagName, "password") || strings.Contains(flagName, "token") || strings.Contains(flagName, "url") {
		return "REDACTED"
	}
	return value
}

// finish derives settings and validates everything.
func (c *config) finish() error {
	var errs []error
	tables, err := cdc.ParseTables(c.table, c.cdc.Columns)
	errs = append(errs, err)
	if err := cdc.ApplyTableColumns(tables, c.tableColumns); err != nil {
		errs = append(errs, err)
	}
	c.cdc.Tables = tables
	if len(tables) > 0 {
		// The first table names the relay's tables where one name is
		// needed (the default CloudEvents source with one table).
		c.cdc.Schema, c.cdc.Table = tables[0].Schema, tables[0].Name
	}
	switch c.messageID {
	case "":
		if c.cdc.Several() {
			errs = append(errs, fmt.Errorf("message-id: required with several tables (--table=%s): set table-id, which makes Nats-Msg-Id <schema>.<table>/<id>, when ids may repeat across tables (a sequence per table), or id when they are unique across all of them (UUIDs); JetStream drops a message whose id it already holds", c.table))
		}
	case "id":
	case "table-id":
		c.cdc.QualifiedIDs = true
	default:
		errs = append(errs, fmt.Errorf("message-id: %q, must be id or table-id", c.messageID))
	}
	if c.postgresPassword != "" && c.cdc.PostgresURL != "" {
		withPassword, err := setPassword(c.cdc.PostgresURL, c.postgresPassword)
		if err != nil {
			errs = append(errs, err)
		}
		c.cdc.PostgresURL = withPassword
	}
	tmpl, err := relay.ParseTemplate(c.subjectTemplate)
	if err != nil {
		errs = append(errs, err)
	}
	c.template = tmpl
	if c.pump.DeadLetterSubject == "" && err == nil {
		c.pump.DeadLetterSubject = defaultDeadLetterSubject(c.cdc.Slot, tmpl)
	}
	if c.streamSubjects != "" {
		for _, subj := range strings.Split(c.streamSubjects, ",") {
			c.sink.StreamSubjects = append(c.sink.StreamSubjects, strings.TrimSpace(subj))
		}
	} else if err == nil {
		// The dead-letter subject too, whatever --on-poison says now: a
		// stream is created once, the policy may change later.
		c.sink.StreamSubjects = tmpl.StreamSubjects()
		if !sink.Captures(c.sink.StreamSubjects, c.pump.DeadLetterSubject) {
			c.sink.StreamSubjects = append(c.sink.StreamSubjects, c.pump.DeadLetterSubject)
		}
	}
	if c.pump.OnPoison == relay.OnPoisonDeadLetter {
		c.sink.DeadLetterSubject = c.pump.DeadLetterSubject
	}
	// Atomic batches: the stream must allow them, and the pump needs each
	// transaction's last event marked; an open batch may hold at most half
	// of what the reader holds unacknowledged, or reading would stall.
	c.sink.Atomic, c.cdc.MarkTxnEnd, c.pump.BatchMaxBytes = c.pump.Atomic, c.pump.Atomic, c.cdc.EventBufferBytes/2
	if c.pump.Atomic && c.sink.PublishMode == sink.PublishBatch {
		errs = append(errs, errors.New("publish-mode: batch and --atomic-transactions exclude each other: atomic batches are published as they are (use --publish-mode=auto or async)"))
	}
	c.cdc.TakeOverActiveSlot = c.leaderElection
	if c.election.PostgresURL == "" {
		c.election.PostgresURL = c.cdc.PostgresURL
	} else if c.leaderElection {
		if _, err := pgx.ParseConfig(c.election.PostgresURL); err != nil {
			errs = append(errs, errors.New("leader-postgres-url: cannot be parsed or used (check its syntax and the files it names)"))
		}
		if c.postgresPassword != "" {
			withPassword, err := setPassword(c.election.PostgresURL, c.postgresPassword)
			if err != nil {
				errs = append(errs, errors.New("leader-postgres-url: cannot be parsed as a URL"))
			}
			c.election.PostgresURL = withPassword
		}
	}
	c.election.ConnectTimeout = c.cdc.ConnectTimeout
	c.election.ReconnectMax = c.cdc.ReconnectMax
	switch c.logLevel {
	case "debug", "info", "warn", "error":
	default:
		errs = append(errs, fmt.Errorf("log-level: %q, must be debug, info, warn or error", c.logLevel))
	}
	if c.logFormat != "json" && c.logFormat != "console" {
		errs = append(errs, fmt.Errorf("log-format: %q, must be json or console", c.logFormat))
	}
	if c.stallTimeout <= 0 {
		errs = append(errs, fmt.Errorf("stall-timeout: %s, must be positive", c.stallTimeout))
	}
	snapshot, err := parseSnapshotSetting(c.snapshotText)
	if err != nil {
		errs = append(errs, err)
	}
	c.snapshot = snapshot
	if c.recoverPreviousSlot == "" {
		c.recoverPreviousSlot = c.cdc.Slot
	}
	if c.recoverMaxTxnAge <= 0 {
		errs = append(errs, fmt.Errorf("recover-max-transaction-age: %s, must be positive", c.recoverMaxTxnAge))
	}
	if c.httpAddr == "" {
		errs = append(errs, errors.New("http-addr: must not be empty"))
	}
	c.janitor.Schema, c.janitor.Table, c.janitor.CreatedAt = c.cdc.Schema, c.cdc.Table, c.cdc.Columns.CreatedAt
	if len(tables) > 0 {
		c.janitor.CreatedAt = tables[0].Columns.CreatedAt
	}
	if c.cdc.Several() {
		cdcCfg := c.cdc
		c.janitor.TablesSetting = c.table
		c.janitor.Tables = func(ctx context.Context, db *pgx.Conn) ([]janitor.Table, error) {
			tables, err := cdc.ResolveTables(ctx, db, cdcCfg)
			out := make([]janitor.Table, len(tables))
			for i, t := range tables {
				out[i] = janitor.Table{Schema: t.Schema, Name: t.Name, CreatedAt: t.Columns.CreatedAt}
			}
			return out, err
		}
	}
	c.janitor.BatchSize = janitor.DefaultBatchSize
	c.janitor.StatementTimeout = c.cdc.QueryTimeout
	c.janitor.LockTimeout = min(janitor.DefaultLockTimeout, c.cdc.QueryTimeout)
	if c.janitor.Enabled() && c.janitor.Retention < c.recoverMaxTxnAge {
		// relay recover compares the rows created that long before the
		// last published event with the stream.
		errs = append(errs, fmt.Errorf("retention: %s is below recover-max-transaction-age %s, whose rows relay recover reads after a lost slot", c.janitor.Retention, c.recoverMaxTxnAge))
	}
	errs = append(errs, c.cdc.Validate(), c.sink.Validate(), c.pump.Validate(), c.janitor.Validate())
	errs = append(errs, c.tracing.Validate())
	if c.cloudEvents {
		// The default source needs the database's name, known only once
		// connected; a stand-in checks the rest now.
		source := cmp.Or(c.cloudEventsSource, "/outbox-relay")
		if _, err := relay.NewCloudEvents(source, c.cloudEventsType); err != nil {
			errs = append(errs, err)
		}
	} else if c.cloudEventsSource != "" {
		errs = append(errs, errors.New("cloudevents-source: set, but --cloudevents is off"))
	}
	if c.leaderElection {
		errs = append(errs, c.election.Validate())
		if c.election.PollInterval >= c.election.LeaseTimeout {
			errs = append(errs, fmt.Errorf("leader-poll-interval: %s, must be below leader-lease-timeout %s", c.election.PollInterval, c.election.LeaseTimeout))
		}
	}
	return errors.Join(errs...)
}

// defaultDeadLetterSubject derives the dead-letter subject from the slot and
// the subject template, so that two relays sharing a NATS account do not
// both claim one subject: outbox_dead_letter.<slot>.<template wildcard, each
// * written _>. It has two more tokens than the template, so the template's
// own wildcard never captures it.
func defaultDeadLetterSubject(slot string, tmpl relay.Template) string {
	return "outbox_dead_letter." + slot + "." + strings.ReplaceAll(tmpl.Wildcard(), "*", "_")
}

// logFormatValid reports whether c names a log format, so that even a
// configuration error can be logged in it.
func (c *config) logFormatValid() bool {
	return c != nil && (c.logFormat == "json" || c.logFormat == "console")
}

// setPassword puts password into a URL or keyword/value connection string.
func setPassword(conn, password string) (string, error) {
	if strings.HasPrefix(conn, "postgres://") || strings.HasPrefix(conn, "postgresql://") {
		u, err := url.Parse(conn)
		if err != nil {
			return conn, errors.New("postgres-url: cannot be parsed as a URL")
		}
		user := ""
		if u.User != nil {
			user = u.User.Username()
		}
		u.User = url.UserPassword(user, password)
		return u.String(), nil
	}
	quoted := strings.NewReplacer(`\`, `\\`, `'`, `\'`).Replace(password)
	return conn + " password='" + quoted + "'", nil
}

// flagHelp reports that --help was asked for and answered.
var flagHelp = flag.ErrHelp

// flagError is a command line the flag package rejected and explained.
type flagError struct{ err error }

func (e *flagError) Error() string { return e.err.Error() }
func (e *flagError) Unwrap() error { return e.err }

func isFlagError(err error) bool {
	var fe *flagError
	return errors.As(err, &fe)
}
