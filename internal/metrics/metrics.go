// Package metrics defines every metric the relay exports, on a registry of its
// own, and serves them over HTTP.
package metrics

import (
	"net/http"
	"runtime"
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

const namespace = "outbox_relay"

// PublishErrorKinds is the fixed label set of
// outbox_relay_sink_publish_errors_total{kind}.
var PublishErrorKinds = []string{"timeout", "no_responders", "wrong_sequence", "too_large", "connection", "server", "other"}

// PoisonReasons is the fixed label set of outbox_relay_pump_poison_events_total{reason}.
var PoisonReasons = []string{"invalid_subject", "too_large", "no_stream", "bad_row"}

// BlockedReasons is the fixed label set of outbox_relay_pump_blocked{reason}.
var BlockedReasons = []string{"stream_missing"}

// SlotWALStatuses is the fixed label set of outbox_relay_cdc_slot_wal_status{status}:
// the values of pg_replication_slots.wal_status, plus "missing" when the slot
// does not exist.
var SlotWALStatuses = []string{"reserved", "extended", "unreserved", "lost", "missing"}

// PublicationProblemKinds is the fixed label set of
// outbox_relay_cdc_publication_problems_total{kind}: "missing" (the
// publication did not exist at a WAL position) and "changed" (its catalog
// rows changed while the relay ran, or since it last ran).
var PublicationProblemKinds = []string{"missing", "changed"}

// TraceSpanOutcomes is the fixed label set of
// outbox_relay_trace_spans_total{outcome}.
var TraceSpanOutcomes = []string{"exported", "failed", "dropped"}

// IgnoredMessageReasons is the fixed label set of
// outbox_relay_cdc_messages_ignored_total{reason}: logical decoding messages
// with another prefix than --message-prefix, and non-transactional ones.
var IgnoredMessageReasons = []string{"other_prefix", "non_transactional"}

// latencyBuckets covers sub-millisecond publishes up to minutes-long outages.
var latencyBuckets = []float64{0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300}

// Metrics holds every metric of the relay. Build it with New; the zero value
// is not usable.
type Metrics struct {
	registry *prometheus.Registry

	// cdc: reading the replication slot.
	CDCEvents              prometheus.Counter
	CDCTransactions        prometheus.Counter
	CDCReconnects          prometheus.Counter
	CDCConnected           prometheus.Gauge
	CDCLagBytes            prometheus.Gauge
	CDCConfirmedLSN        prometheus.Gauge
	CDCServerWALEnd        prometheus.Gauge
	CDCLastCommitTimestamp prometheus.Gauge
	CDCLastSlotAdvance     prometheus.Gauge
	CDCSlotRetainedWAL     prometheus.Gauge
	CDCSlotSafeWALSize     prometheus.Gauge
	CDCSlotWALStatus       *prometheus.GaugeVec
	CDCSlotProblems        prometheus.Counter
	CDCPublicationProblems *prometheus.CounterVec
	CDCWaitingForStandby   prometheus.Gauge
	CDCMessagesIgnored     *prometheus.CounterVec

	// sink: JetStream publishing.
	SinkPublished       prometheus.Counter
	SinkDuplicates      prometheus.Counter
	SinkFastBatches     prometheus.Counter
	SinkPublishErrors   *prometheus.CounterVec
	SinkPublishDuration prometheus.Histogram
	SinkPublishedBytes  prometheus.Counter
	SinkInflight        prometheus.Gauge
	SinkConnected       prometheus.Gauge

	// pump: ordering, retries, poison handling.
	PumpRetries      prometheus.Counter
	PumpResyncs      prometheus.Counter
	PumpSkipped      prometheus.Counter
	PumpPoisonEvents *prometheus.CounterVec
	PumpDeadLettered prometheus.Counter
	PumpCommitToAck  prometheus.Histogram
	PumpLastProgress prometheus.Gauge
	// The stream high-water mark and other writers of the stream.
	PumpStreamShared      prometheus.Gauge
	PumpReordered         prometheus.Counter
	PumpUnverifiedReplays prometheus.Counter
	PumpMarkSaveErrors    prometheus.Counter
	PumpBlocked           *prometheus.GaugeVec
	// Atomic batches (--atomic-transactions).
	PumpSplitTransactions prometheus.Counter
	Leader                prometheus.Gauge

	// trace: the optional span export (--otlp-traces-endpoint).
	TraceSpans *prometheus.CounterVec

	// janitor: removing outbox rows older than the retention.
	JanitorRowsDeleted       prometheus.Counter
	JanitorPartitionsDropped prometheus.Counter
	JanitorErrors            prometheus.Counter
	JanitorLastSuccess       prometheus.Gauge
	JanitorLastRun           prometheus.Gauge

	// snapshot: the initial snapshot of an adopted table (--initial-snapshot).
	SnapshotSelectedRows prometheus.Gauge
	SnapshotDoneRows     prometheus.Gauge

	// oldestPending computes outbox_relay_cdc_oldest_pending_age_seconds
	// at scrape time; it changes with each leadership, while scrapes run.
	oldestPending atomic.Pointer[func() float64]
}

// New registers every metric, plus the Go, process and build-info collectors,
// on a fresh registry. version and commit label outbox_relay_build_info.
func New(version, commit string) *Metrics {
	reg := prometheus.NewRegistry()
	f := factory{reg: reg}
	m := &Metrics{
		registry: reg,

		CDCEvents:              f.counter("cdc", "events_total", "Outbox rows read from committed transactions (replays after a reconnect included)."),
		CDCTransactions:        f.counter("cdc", "transactions_total", "Committed transactions read that touched the outbox table."),
		CDCReconnects:          f.counter("cdc", "reconnects_total", "Replication sessions that ended with an error and were started again."),
		CDCConnected:           f.gauge("cdc", "connected", "1 while the replication connection to PostgreSQL is streaming, else 0."),
		CDCLagBytes:            f.gauge("cdc", "lag_bytes", "Server WAL end minus the confirmed position: WAL written that the relay has not confirmed."),
		CDCConfirmedLSN:        f.gauge("cdc", "confirmed_lsn_bytes", "Position confirmed to PostgreSQL (flush LSN) as a number."),
		CDCServerWALEnd:        f.gauge("cdc", "server_wal_end_bytes", "Server WAL end reported by the last keepalive or data message, as a number."),
		CDCLastCommitTimestamp: f.gauge("cdc", "last_commit_timestamp_seconds", "Commit time of the last outbox transaction read, in Unix seconds."),
		CDCLastSlotAdvance:     f.gauge("cdc", "last_slot_advance_timestamp_seconds", "When the confirmed position last moved forward, in Unix seconds."),
		CDCSlotRetainedWAL:     f.gauge("cdc", "slot_retained_wal_bytes", "WAL the slot makes PostgreSQL keep: pg_current_wal_lsn() - restart_lsn, polled."),
		CDCSlotSafeWALSize:     f.gauge("cdc", "slot_safe_wal_size_bytes", "pg_replication_slots.safe_wal_size: WAL that can still be written before the slot is lost (-1 when unlimited), polled."),
		CDCSlotWALStatus: f.gaugeVec("cdc", "slot_wal_status", "1 for the slot's current pg_replication_slots.wal_status (\"missing\" when the slot does not exist), 0 for the others.",
			"status"),
		CDCSlotProblems: f.counter("cdc", "slot_problems_total", "Times the slot was found missing, lost or inconsistent with the stream; the relay stops on each."),
		CDCPublicationProblems: f.counterVec("cdc", "publication_problems_total",
			"Times WAL was found decoded, or possibly decoded, without the publication covering the outbox, by kind (missing at a WAL position, changed); the relay stops on each.", "kind"),
		CDCWaitingForStandby: f.gauge("cdc", "waiting_for_standby",
			"1 while the slot's walsender holds changes back until a standby in synchronized_standby_slots confirms the WAL (PostgreSQL 17+), else 0."),

		CDCMessagesIgnored: f.counterVec("cdc", "messages_ignored_total",
			"Logical decoding messages read (with --message-prefix) and not published, by reason: another prefix, or non-transactional.", "reason"),

		SinkPublished:       f.counter("sink", "published_total", "Messages JetStream acknowledged as stored (duplicates excluded)."),
		SinkDuplicates:      f.counter("sink", "duplicates_total", "Publishes JetStream acknowledged as duplicates of a stored Nats-Msg-Id."),
		SinkFastBatches:     f.counter("sink", "fast_batches_total", "Fast batches (--publish-mode=batch) JetStream stored whole."),
		SinkPublishErrors:   f.counterVec("sink", "publish_errors_total", "Failed publishes by kind.", "kind"),
		SinkPublishDuration: f.histogram("sink", "publish_duration_seconds", "Time from handing a message to the client to its PubAck."),
		SinkPublishedBytes:  f.counter("sink", "published_bytes_total", "Payload bytes of messages JetStream acknowledged."),
		SinkInflight:        f.gauge("sink", "inflight_messages", "Publishes sent and not yet acknowledged."),
		SinkConnected:       f.gauge("sink", "connected", "1 while the NATS connection is up, else 0."),

		PumpRetries:      f.counter("pump", "retries_total", "Times the pump backed off and published again after a transient failure."),
		PumpResyncs:      f.counter("pump", "resyncs_total", "Times the pump re-read the stream's last stored position before publishing again."),
		PumpSkipped:      f.counter("pump", "skipped_total", "Replayed events skipped because the stream already holds them."),
		PumpPoisonEvents: f.counterVec("pump", "poison_events_total", "Events JetStream can never accept, by reason.", "reason"),
		PumpDeadLettered: f.counter("pump", "dead_lettered_total", "Poison events published to the dead-letter subject."),
		PumpCommitToAck:  f.histogram("pump", "commit_to_ack_seconds", "Time from the transaction's commit in PostgreSQL to the event's PubAck."),
		PumpLastProgress: f.gauge("pump", "last_progress_timestamp_seconds", "When the pump last had an event acknowledged, in Unix seconds."),
		PumpStreamShared: f.gauge("pump", "stream_shared", "1 once messages of other writers were seen on the stream after the relay's own, else 0."),
		PumpReordered: f.counter("pump", "reordered_total",
			"Events published out of commit order because another writer's message took their place in a burst on a replicated stream."),
		PumpUnverifiedReplays: f.counter("pump", "unverified_replays_total",
			"Events published again although the stream may hold them: their messages were removed (retention) before the relay could read them back."),
		PumpMarkSaveErrors: f.counter("pump", "mark_save_errors_total", "Failed writes of the high-water mark to the key-value bucket."),
		PumpBlocked: f.gaugeVec("pump", "blocked", "1 while publishing is held up by a problem that does not clear by itself (the reason), else 0.",
			"reason"),
		PumpSplitTransactions: f.counter("pump", "split_transactions_total",
			"Atomic batches a transaction too large for one was split into, besides its last (--on-large-transaction=split)."),
		Leader: f.gauge("", "leader", "1 while this instance holds the slot's leadership and relays, 0 while it stands by."),

		JanitorRowsDeleted:       f.counter("janitor", "rows_deleted_total", "Outbox rows older than --retention deleted (rows of dropped partitions excluded)."),
		JanitorPartitionsDropped: f.counter("janitor", "partitions_dropped_total", "Partitions of the outbox detached and dropped because their upper bound is older than --retention."),
		JanitorErrors:            f.counter("janitor", "errors_total", "Cleanup runs that ended with an error (retried at the next run)."),
		JanitorLastSuccess:       f.gauge("janitor", "last_success_timestamp_seconds", "When the last cleanup run without an error ended, in Unix seconds; 0 before the first."),
		JanitorLastRun:           f.gauge("janitor", "last_run_timestamp_seconds", "When the last cleanup run ended, with an error or not, in Unix seconds; 0 before the first."),
		TraceSpans: f.counterVec("trace", "spans_total",
			"Spans of published events (--otlp-traces-endpoint) by outcome: exported, failed (the collector refused them or was unreachable), dropped (the export queue was full).", "outcome"),

		SnapshotSelectedRows: f.gauge("snapshot", "selected_rows", "Rows the initial snapshot (--initial-snapshot) selected from the table; 0 when none ran in this process."),
		SnapshotDoneRows:     f.gauge("snapshot", "done_rows", "Rows of the initial snapshot stored on the stream so far (published, or found there from an earlier attempt)."),
	}
	for _, o := range TraceSpanOutcomes {
		m.TraceSpans.WithLabelValues(o)
	}
	for _, k := range PublishErrorKinds {
		m.SinkPublishErrors.WithLabelValues(k)
	}
	for _, r := range PoisonReasons {
		m.PumpPoisonEvents.WithLabelValues(r)
	}
	for _, s := range SlotWALStatuses {
		m.CDCSlotWALStatus.WithLabelValues(s)
	}
	for _, r := range BlockedReasons {
		m.PumpBlocked.WithLabelValues(r)
	}
	for _, k := range PublicationProblemKinds {
		m.CDCPublicationProblems.WithLabelValues(k)
	}
	for _, r := range IgnoredMessageReasons {
		m.CDCMessagesIgnored.WithLabelValues(r)
	}
	reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Namespace: namespace, Subsystem: "cdc", Name: "oldest_pending_age_seconds",
		Help: "Age of the oldest event read but not yet acknowledged by JetStream (since its commit); 0 when nothing is pending.",
	}, func() float64 {
		if f := m.oldestPending.Load(); f != nil {
			return (*f)()
		}
		return 0
	}))
	buildInfo := prometheus.NewGauge(prometheus.GaugeOpts{
		Namespace: namespace, Name: "build_info",
		Help:        "Always 1; labels carry the relay's version, commit and Go version.",
		ConstLabels: prometheus.Labels{"version": version, "commit": commit, "goversion": runtime.Version()},
	})
	buildInfo.Set(1)
	reg.MustRegister(buildInfo,
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
	)
	return m
}

// SetOldestPendingAge installs the function that computes
// outbox_relay_cdc_oldest_pending_age_seconds at scrape time, so the gauge is
// never stale; nil makes it 0. Safe to call while the registry is scraped.
func (m *Metrics) SetOldestPendingAge(f func() float64) {
	if f == nil {
		m.oldestPending.Store(nil)
		return
	}
	m.oldestPending.Store(&f)
}

// StepDown clears what only a leader can know (the slot's state, lag, work
// pending), so a standby does not report a former leadership's stale values.
func (m *Metrics) StepDown() {
	m.Leader.Set(0)
	m.SetOldestPendingAge(nil)
	m.CDCLagBytes.Set(0)
	m.CDCSlotRetainedWAL.Set(0)
	m.CDCSlotSafeWALSize.Set(0)
	m.CDCConnected.Set(0)
	m.CDCWaitingForStandby.Set(0)
	m.SinkInflight.Set(0)
	m.PumpStreamShared.Set(0)
	for _, s := range SlotWALStatuses {
		m.CDCSlotWALStatus.WithLabelValues(s).Set(0)
	}
	for _, r := range BlockedReasons {
		m.PumpBlocked.WithLabelValues(r).Set(0)
	}
}

// SetSlotWALStatus sets outbox_relay_cdc_slot_wal_status to 1 for status and
// 0 for every other known status.
func (m *Metrics) SetSlotWALStatus(status string) {
	for _, s := range SlotWALStatuses {
		v := 0.0
		if s == status {
			v = 1
		}
		m.CDCSlotWALStatus.WithLabelValues(s).Set(v)
	}
}

// Registry returns the registry every metric is registered on.
func (m *Metrics) Registry() *prometheus.Registry { return m.registry }

// Handler serves the registry in the Prometheus exposition formats.
func (m *Metrics) Handler() http.Handler {
	return promhttp.HandlerFor(m.registry, promhttp.HandlerOpts{Registry: m.registry})
}

type factory struct{ reg *prometheus.Registry }

func (f factory) counter(subsystem, name, help string) prometheus.Counter {
	c := prometheus.NewCounter(prometheus.CounterOpts{Namespace: namespace, Subsystem: subsystem, Name: name, Help: help})
	f.reg.MustRegister(c)
	return c
}

func (f factory) counterVec(subsystem, name, help string, labels ...string) *prometheus.CounterVec {
	c := prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: namespace, Subsystem: subsystem, Name: name, Help: help}, labels)
	f.reg.MustRegister(c)
	return c
}

func (f factory) gauge(subsystem, name, help string) prometheus.Gauge {
	g := prometheus.NewGauge(prometheus.GaugeOpts{Namespace: namespace, Subsystem: subsystem, Name: name, Help: help})
	f.reg.MustRegister(g)
	return g
}

func (f factory) gaugeVec(subsystem, name, help string, labels ...string) *prometheus.GaugeVec {
	g := prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: namespace, Subsystem: subsystem, Name: name, Help: help}, labels)
	f.reg.MustRegister(g)
	return g
}

func (f factory) histogram(subsystem, name, help string) prometheus.Histogram {
	h := prometheus.NewHistogram(prometheus.HistogramOpts{Namespace: namespace, Subsystem: subsystem, Name: name, Help: help, Buckets: latencyBuckets})
	f.reg.MustRegister(h)
	return h
}
