package main

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"

	"github.com/outbox-relay/outbox-relay/internal/chaos"
	"github.com/outbox-relay/outbox-relay/internal/e2e"
	"github.com/outbox-relay/outbox-relay/internal/testenv"
)

// plainSubject is where the shared-stream scenario's application publishes:
// among the relay's own subjects.
const plainSubject = "outbox.plain.message"

// chaosShared: two services share one stream with an application that
// publishes plain messages to the same subjects.
func chaosShared(t *testing.T, s *scene) {
	s.result.Description = "two services, each with its own database, load and relay, share one stream (one replica, 1 s duplicate window) while an application publishes plain messages to the relay's subjects; the scene's relay and the other service's are killed and stopped, PostgreSQL and NATS restarted. The scene's events (and, checked the same way, the other service's) must be on the stream once each, in commit order, around everybody else's messages"
	s.result.Setup = "PostgreSQL (2 databases), 1 NATS server, 2 relays, 1 plain publisher"
	ns := testenv.StartNATS(t)
	s.nc = ns.Connect(t)
	js, err := jetstream.New(s.nc)
	require.NoError(t, err)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	_, err = js.CreateStream(ctx, jetstream.StreamConfig{
		Name: chaosStream, Subjects: []string{"outbox.*.*", "peer.*.*"}, Storage: jetstream.FileStorage, Duplicates: time.Second,
	})
	require.NoError(t, err)
	s.env["RELAY_NATS_URL"] = ns.URL()
	s.env["RELAY_CREATE_STREAM"] = "false"
	s.count = func() int { return ownCount(s.nc, "outbox.>", plainSubject) }
	s.stored = func(ctx context.Context) ([]string, error) { return storedUnder(ctx, s, "outbox.", plainSubject) }

	// The other service: its own database, load and relay.
	peer := startPeer(t, s)
	s.startRelay(nil, nil)
	s.settle()
	stopPlain := plainPublisher(t, s.nc, plainSubject, 5*time.Millisecond)
	s.startLoad()

	specs := []faultSpec{
		relaySigkill(),
		relaySigterm(),
		{"peer-sigkill", func(s *scene, f *chaos.Fault, inject, heal func() time.Time) {
			s.settle()
			f.Target = "the other service's relay"
			inject()
			peer.relay.Kill()
			time.Sleep(chaos.Between(s.rng, 0, time.Second))
			peer.relay = e2e.StartRelay(t, s.bin, peer.env)
			heal()
		}},
		{"postgres-fast-restart", pgRestart("fast")},
		natsRestart(ns),
	}
	s.runFaults(specs, s.plan.repeat)
	plain := stopPlain()
	s.result.Description += fmt.Sprintf(". The application published %d plain messages", plain)
	peer.check(t, s)
	s.finish()
}

// peer is the other service of the shared-stream scenario.
type peer struct {
	writer *e2e.Writer
	load   *chaos.Load
	env    map[string]string
	relay  *e2e.Relay
}

func startPeer(t *testing.T, s *scene) *peer {
	t.Helper()
	p := &peer{}
	s.pg.CreateDatabase(t, "peer")
	e2e.SetupOutbox(t, s.pg, "peer")
	p.writer = e2e.NewWriter(t, s.pg.AdminURL("peer"), s.plan.writers+2)
	p.env = map[string]string{}
	for k, v := range s.env {
		p.env[k] = v
	}
	p.env["RELAY_POSTGRES_URL"] = s.pg.URL("peer")
	p.env["RELAY_SLOT"] = "peer"
	p.env["RELAY_PUBLICATION"] = "peer_pub"
	p.env["RELAY_SUBJECT_TEMPLATE"] = "peer.{aggregate_type}.{event_type}"
	p.relay = e2e.StartRelay(t, s.bin, p.env)
	waitReady(t, p.relay)
	p.load = chaos.StartLoad(p.writer, chaos.LoadOptions{Writers: 2, Rate: s.plan.rate / 2, Seed: s.seed, Name: "peer"})
	return p
}

// check stops the other service's load and compares its events on the
// stream with its commit log.
func (p *peer) check(t *testing.T, s *scene) {
	t.Helper()
	p.load.Stop()
	expected := p.writer.Committed(t)
	deadline := time.Now().Add(s.plan.recoverTimeout)
	for ownCount(s.nc, "peer.>", "") < len(expected) && time.Now().Before(deadline) {
		time.Sleep(100 * time.Millisecond)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	stored, err := storedUnder(ctx, s, "peer.", "")
	require.NoError(t, err)
	v := e2e.Compare(expected, stored)
	if !v.OK() {
		s.problem("the other service's events: %s", v)
	}
	t.Logf("%s: the other service's events: %s", s.name, v)
}

// ownCount returns how many messages the stream holds under filter, leaving
// out the subject except.
func ownCount(nc *nats.Conn, filter, except string) int {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	js, err := jetstream.New(nc)
	if err != nil {
		return -1
	}
	st, err := js.Stream(ctx, chaosStream)
	if err != nil {
		return -1
	}
	info, err := st.Info(ctx, jetstream.WithSubjectFilter(filter))
	if err != nil {
		return -1
	}
	n := 0
	for subject, count := range info.State.Subjects {
		if subject != except {
			n += int(count)
		}
	}
	return n
}

// storedUnder reads the stream back and returns the ids of the messages
// whose subject starts with prefix, leaving out the subject except.
func storedUnder(ctx context.Context, s *scene, prefix, except string) ([]string, error) {
	msgs, err := e2e.ReadStreamContext(ctx, s.nc, chaosStream)
	if err != nil {
		return nil, err
	}
	msgs = slices.DeleteFunc(msgs, func(m e2e.StoredMessage) bool {
		return !strings.HasPrefix(m.Subject, prefix) || m.Subject == except
	})
	return e2e.IDs(msgs), nil
}

// chaosWorkQueue: a work-queue stream whose consumer removes every message
// it acknowledges, so the relay can never read its own messages back.
func chaosWorkQueue(t *testing.T, s *scene) {
	s.result.Description = "a work-queue stream (1 s duplicate window) whose consumer acknowledges, and so removes, every message right away: the relay can never read its own messages back; relay kills and stops, PostgreSQL and NATS restarts. The consumer must receive every event once, in commit order (redeliveries of one stream message count once)"
	s.result.Setup = "PostgreSQL, 1 NATS server, 1–2 relays, 1 consumer"
	ns := testenv.StartNATS(t)
	s.nc = ns.Connect(t)
	js, err := jetstream.New(s.nc)
	require.NoError(t, err)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	stream, err := js.CreateStream(ctx, jetstream.StreamConfig{
		Name: chaosStream, Subjects: []string{"outbox.*.*"}, Storage: jetstream.FileStorage, Duplicates: time.Second,
		Retention: jetstream.WorkQueuePolicy,
	})
	require.NoError(t, err)
	cons, err := stream.CreateOrUpdateConsumer(ctx, jetstream.ConsumerConfig{Durable: "worker", AckPolicy: jetstream.AckExplicitPolicy})
	require.NoError(t, err)
	var mu sync.Mutex
	received := map[uint64]string{} // by stream sequence: a redelivery is the same message
	cc, err := cons.Consume(func(m jetstream.Msg) {
		if md, err := m.Metadata(); err == nil {
			mu.Lock()
			received[md.Sequence.Stream] = m.Headers().Get(jetstream.MsgIDHeader)
			mu.Unlock()
		}
		_ = m.Ack()
	})
	require.NoError(t, err)
	t.Cleanup(cc.Stop)
	s.env["RELAY_NATS_URL"] = ns.URL()
	s.env["RELAY_CREATE_STREAM"] = "false"
	s.count = func() int {
		mu.Lock()
		defer mu.Unlock()
		return len(received)
	}
	s.stored = func(context.Context) ([]string, error) {
		time.Sleep(2 * time.Second) // anything later would be a duplicate
		mu.Lock()
		defer mu.Unlock()
		seqs := slices.Sorted(func(yield func(uint64) bool) {
			for seq := range received {
				if !yield(seq) {
					return
				}
			}
		})
		ids := make([]string, len(seqs))
		for i, seq := range seqs {
			ids[i] = received[seq]
		}
		return ids, nil
	}
	s.startRelay(nil, nil)
	s.settle()
	s.startLoad()
	specs := []faultSpec{
		relaySigkill(),
		relaySigterm(),
		{"postgres-crash-restart", pgRestart("immediate")},
		natsRestart(ns),
	}
	s.runFaults(specs, s.plan.repeat)
	s.finish()
}

// chaosPartitioned: the outbox is partitioned by created_at into ten-second
// partitions, so the load moves to a new partition every ten seconds; old
// ones are detached and dropped while the relay runs, new ones created.
func chaosPartitioned(t *testing.T, s *scene) {
	s.result.Description = "the outbox table is partitioned by created_at into ten-second partitions, as teams partition to drop old events; the load moves to a new partition every ten seconds while old partitions are detached and dropped (events of a dropped partition may still be unpublished: the relay reads them from the WAL) and new ones created, besides relay kills and stops and PostgreSQL and NATS restarts. The relay creates the publication (published via the partition root)"
	s.result.Setup = "PostgreSQL (partitioned outbox), 1 NATS server, 1–2 relays"
	ns := testenv.StartNATS(t)
	s.nc = ns.Connect(t)
	s.env["RELAY_NATS_URL"] = ns.URL()
	s.env["RELAY_CREATE_STREAM"] = "true"
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var b strings.Builder
	b.WriteString(`DROP TABLE events;
		CREATE TABLE events (
			id uuid NOT NULL DEFAULT gen_random_uuid(), aggregate_type text NOT NULL, aggregate_id text NOT NULL,
			event_type text NOT NULL, payload jsonb NOT NULL, headers jsonb,
			created_at timestamptz NOT NULL DEFAULT now(), PRIMARY KEY (id, created_at)
		) PARTITION BY RANGE (created_at);
		CREATE TABLE events_before PARTITION OF events FOR VALUES FROM ('2000-01-01') TO (date_trunc('minute', now()) - interval '1 minute');`)
	// One partition every ten seconds, from a minute ago for longer than
	// a full run lasts; a rotation adds one more at the end.
	const span = 10 * time.Second
	const partitions = 400
	for i := range partitions {
		fmt.Fprintf(&b, "\nCREATE TABLE events_p%04d PARTITION OF events FOR VALUES FROM (date_trunc('minute', now()) + interval '%d seconds') TO (date_trunc('minute', now()) + interval '%d seconds');",
			i, (i-6)*int(span.Seconds()), (i-5)*int(span.Seconds()))
	}
	_, err := s.admin.Exec(ctx, b.String())
	require.NoError(t, err)
	next := partitions // the index of the next partition a rotation creates
	s.startRelay(nil, nil)
	s.settle()
	s.startLoad()

	specs := []faultSpec{
		relaySigkill(),
		relaySigterm(),
		{"postgres-fast-restart", pgRestart("fast")},
		natsRestart(ns),
		{"partition-rotate", func(s *scene, f *chaos.Fault, inject, heal func() time.Time) {
			s.settle()
			rctx, rcancel := context.WithTimeout(context.Background(), time.Minute)
			defer rcancel()
			// The newest partition whose range has ended: it holds events
			// written seconds ago, which the relay may not have published
			// yet.
			var name string
			err := s.admin.QueryRow(rctx, `SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
				WHERE i.inhparent = 'events'::regclass AND c.relname LIKE 'events_p%'
				  AND (regexp_match(pg_get_expr(c.relpartbound, c.oid), 'TO \('' ?([^'']+)''\)'))[1]::timestamptz <= now()
				ORDER BY c.relname DESC LIMIT 1`).Scan(&name)
			require.NoError(t, err)
			f.Target = name
			inject()
			var rows int
			require.NoError(t, s.admin.QueryRow(rctx, fmt.Sprintf(`SELECT count(*) FROM %s`, name)).Scan(&rows))
			var end string
			require.NoError(t, s.admin.QueryRow(rctx, `SELECT max((regexp_match(pg_get_expr(c.relpartbound, c.oid), 'TO \('' ?([^'']+)''\)'))[1]::timestamptz)::text
				FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = 'events'::regclass`).Scan(&end))
			_, err = s.admin.Exec(rctx, fmt.Sprintf(`ALTER TABLE events DETACH PARTITION %s; DROP TABLE %s;
				CREATE TABLE events_p%04d PARTITION OF events FOR VALUES FROM ('%s') TO ('%s'::timestamptz + interval '10 seconds')`,
				name, name, next, end, end))
			require.NoError(t, err)
			f.Detail = fmt.Sprintf("detached and dropped it with %d events in it", rows)
			next++
			heal()
		}},
	}
	s.runFaults(specs, s.plan.repeat)
	s.finish()
}
