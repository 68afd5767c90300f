package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/outbox-relay/outbox-relay/internal/e2e"
	"github.com/outbox-relay/outbox-relay/internal/testenv"
)

// runCommand runs the relay binary to completion with env and returns its
// exit code and combined output.
func runCommand(t *testing.T, bin string, env map[string]string, args ...string) (int, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := relayCommand(ctx, t, bin, env, args...)
	out, err := cmd.CombinedOutput()
	return exitCode(t, err, args), string(out)
}

// relayCommand is the relay binary with args and exactly env, plus PATH and a
// free HTTP address.
func relayCommand(ctx context.Context, t *testing.T, bin string, env map[string]string, args ...string) *exec.Cmd {
	t.Helper()
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Env = []string{"PATH=/usr/bin:/bin", fmt.Sprintf("RELAY_HTTP_ADDR=127.0.0.1:%d", testenv.FreePort(t))}
	for k, v := range env {
		cmd.Env = append(cmd.Env, k+"="+v)
	}
	return cmd
}

// exitCode is the exit code of a command that ran with outcome err.
func exitCode(t *testing.T, err error, args []string) int {
	t.Helper()
	var exitErr *exec.ExitError
	if errors.As(err, &exitErr) {
		return exitErr.ExitCode()
	}
	if err != nil {
		t.Fatalf("run relay %v: %v", args, err)
	}
	return 0
}

// writeRows commits one transaction per event, each possibly poison.
func writeRows(t *testing.T, f *fixture, events ...e2e.Event) []string {
	t.Helper()
	var ids []string
	for _, ev := range events {
		got, err := f.writer.Write(context.Background(), []e2e.Event{ev}, false)
		require.NoError(t, err)
		ids = append(ids, got...)
	}
	return ids
}

func goodEvent(i int) e2e.Event {
	return e2e.Event{AggregateType: "order", AggregateID: fmt.Sprint(i), EventType: "created", Payload: fmt.Sprintf(`{"i": %d}`, i)}
}

// TestPoisonEventStopsTheRelay: under the default policy a row JetStream can
// never accept stops the relay with an error naming it, after every earlier
// event is stored, and nothing after it is published.
func TestPoisonEventStopsTheRelay(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	relay := f.startRelay(t)
	bad := e2e.Event{AggregateType: "bad.type", AggregateID: "x", EventType: "created", Payload: `{}`}
	ids := writeRows(t, f, goodEvent(1), goodEvent(2), goodEvent(3), bad, goodEvent(5), goodEvent(6))

	code, err := relay.Wait(60 * time.Second)
	require.NoError(t, err, "the relay stops on a poison event")
	require.Equal(t, 1, code)
	require.Contains(t, relay.Logs(), ids[3], "the error names the event")
	require.Contains(t, relay.Logs(), "invalid_subject")
	msgs := e2e.ReadStream(t, f.nc, "OUTBOX")
	require.Equal(t, ids[:3], e2e.IDs(msgs), "everything before the poison event is stored, nothing after")

	// Started again, it stops again on the same event: nothing is skipped.
	again := e2e.StartRelay(t, f.bin, f.env())
	code, err = again.Wait(60 * time.Second)
	require.NoError(t, err)
	require.Equal(t, 1, code)
	require.Contains(t, again.Logs(), ids[3])
}

// TestPoisonEventsGoToTheDeadLetterSubject: with --on-poison=dead-letter an
// invalid subject token and a payload over the server's max payload are
// published to the dead-letter subject with the reason, counted, and the
// relay goes on.
func TestPoisonEventsGoToTheDeadLetterSubject(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	relay := f.startRelay(t, "RELAY_ON_POISON", "dead-letter")
	huge := `{"pad": "` + strings.Repeat("x", 1200*1024) + `"}`
	ids := writeRows(t, f,
		goodEvent(1),
		e2e.Event{AggregateType: "bad.type", AggregateID: "x", EventType: "created", Payload: `{"bad": 1}`},
		goodEvent(3),
		e2e.Event{AggregateType: "order", AggregateID: "big", EventType: "created", Payload: huge},
		goodEvent(5),
	)
	f.waitStream(t, 5, time.Minute)
	msgs := f.verify(t)
	require.Equal(t, ids, e2e.IDs(msgs))

	invalid := msgs[1]
	require.Equal(t, "outbox_dead_letter.outbox_relay.outbox._._", invalid.Subject, "the default dead-letter subject")
	require.Contains(t, invalid.Header.Get("Outbox-Poison-Reason"), "invalid_subject")
	require.JSONEq(t, `{"bad": 1}`, string(invalid.Data), "the event goes unchanged")
	require.Equal(t, "bad.type", invalid.Header.Get("Outbox-Aggregate-Type"))

	big := msgs[3]
	require.Equal(t, "outbox_dead_letter.outbox_relay.outbox._._", big.Subject)
	require.Contains(t, big.Header.Get("Outbox-Poison-Reason"), "too_large")
	require.Equal(t, "outbox.order.created", big.Header.Get("Outbox-Original-Subject"))
	require.NotEmpty(t, big.Header.Get("Outbox-Payload-Omitted"))

	metrics := relay.Metrics()
	require.Equal(t, 1.0, metrics[`outbox_relay_pump_poison_events_total{reason="invalid_subject"}`])
	require.Equal(t, 1.0, metrics[`outbox_relay_pump_poison_events_total{reason="too_large"}`])
	require.Equal(t, 2.0, metrics["outbox_relay_pump_dead_lettered_total"])
	require.False(t, relay.Exited())
}

// TestExactlyOncePastTheDuplicateWindow kills the relay before it reported
// anything to PostgreSQL and keeps it down longer than the stream's 1-second
// duplicate window: everything since the slot's creation is sent again, and
// the stream must still hold each event once.
func TestExactlyOncePastTheDuplicateWindow(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	// A long status interval keeps the slot's confirmed position at its
	// start, so the restart replays everything.
	relay := f.startRelay(t, "RELAY_DUPLICATE_WINDOW", "1s", "RELAY_STATUS_INTERVAL", "50s")
	for i := range 10 {
		f.write(t, 20, tagf("before-%d", i))
	}
	f.waitStream(t, 200, time.Minute)
	relay.Kill()
	// Let the duplicate window pass: from now on JetStream alone would
	// store every replayed event again.
	time.Sleep(2 * time.Second)
	f.write(t, 50, "after")

	second := f.startRelay(t, "RELAY_DUPLICATE_WINDOW", "1s")
	f.waitStream(t, 250, time.Minute)
	require.Eventually(t, func() bool {
		return second.Metrics()["outbox_relay_pump_skipped_total"] >= 200
	}, 30*time.Second, 100*time.Millisecond, "the replayed events are skipped")
	f.verify(t)
	require.Zero(t, second.Metrics()["outbox_relay_sink_duplicates_total"], "no replay even reached JetStream's dedup")
}

// TestStandbyTakesOver runs two relays on one slot: one leads, the other
// stands by without touching the slot, and takes over when the leader is
// killed.
func TestStandbyTakesOver(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	leader := f.startRelay(t)
	standby := e2e.StartRelay(t, f.bin, f.env())
	require.Eventually(t, func() bool {
		code, body := standby.Get("/readyz")
		return code == 200 && strings.Contains(body, `"role":"standby"`)
	}, 30*time.Second, 50*time.Millisecond, "the second relay stands by, and is ready")
	code, _ := standby.Get("/healthz")
	require.Equal(t, 200, code, "a standby is healthy")
	require.Equal(t, 0.0, standby.Metrics()["outbox_relay_leader"])
	require.Equal(t, 1.0, leader.Metrics()["outbox_relay_leader"])

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	done := f.produce(ctx, 1500, "ha")
	f.waitStream(t, 300, time.Minute)
	leader.Signal(syscall.SIGKILL)
	killed := time.Now()
	require.Eventually(t, func() bool {
		code, body := standby.Get("/readyz")
		return code == 200 && strings.Contains(body, `"role":"leader"`)
	}, 30*time.Second, 50*time.Millisecond, "the standby takes over")
	takeover := time.Since(killed)
	t.Logf("takeover after SIGKILL: %s", takeover)
	require.Less(t, takeover, 15*time.Second)
	<-done
	f.waitStream(t, len(f.writer.Committed(t)), time.Minute)
	f.verify(t)
	require.Equal(t, 1.0, standby.Metrics()["outbox_relay_leader"])
}

// TestPreflightExplainsEveryProblem: a server without wal_level=logical, a
// missing table or column, and a role without REPLICATION are each reported
// naming the setting and the fix, all at once, by `relay check` and by
// `relay run`, which exits 1 instead of retrying.
func TestPreflightExplainsEveryProblem(t *testing.T) {
	t.Parallel()
	bin := e2e.BuildRelay(t)
	nats := testenv.StartNATS(t)

	t.Run("wal_level and missing table", func(t *testing.T) {
		t.Parallel()
		pg := testenv.StartPostgres(t, testenv.WithPostgresConfig("wal_level", "replica"))
		pg.CreateDatabase(t, "app")
		env := map[string]string{"RELAY_POSTGRES_URL": pg.URL("app"), "RELAY_NATS_URL": nats.URL(), "RELAY_CREATE_STREAM": "true"}
		code, out := runCommand(t, bin, env, "check")
		require.Equal(t, 1, code, out)
		require.Contains(t, out, "wal_level")
		require.Contains(t, out, "wal_level = logical")
		require.Contains(t, out, `"public"."events" does not exist`)
		code, out = runCommand(t, bin, env, "run")
		require.Equal(t, 1, code, out)
		require.Contains(t, out, "wal_level")
	})
	t.Run("missing column and role without REPLICATION", func(t *testing.T) {
		t.Parallel()
		pg := testenv.StartPostgres(t)
		pg.CreateDatabase(t, "app")
		pg.Exec(t, "app", `CREATE TABLE events (id uuid PRIMARY KEY, aggregate_type text, aggregate_id text, payload jsonb, headers jsonb, created_at timestamptz);
			CREATE ROLE app_user LOGIN; GRANT SELECT ON events TO app_user;`)
		url := strings.Replace(pg.URL("app"), "postgres@", "app_user@", 1)
		env := map[string]string{"RELAY_POSTGRES_URL": url, "RELAY_NATS_URL": nats.URL(), "RELAY_CREATE_STREAM": "true"}
		code, out := runCommand(t, bin, env, "check")
		require.Equal(t, 1, code, out)
		require.Contains(t, out, "REPLICATION")
		require.Contains(t, out, "event_type")
		code, out = runCommand(t, bin, env, "run")
		require.Equal(t, 1, code, out)
		require.Contains(t, out, "event_type")
	})
	t.Run("bad configuration names each setting", func(t *testing.T) {
		t.Parallel()
		code, out := runCommand(t, bin, map[string]string{"RELAY_STATUS_INTERVAL": "often", "RELAY_ON_POISON": "ignore"}, "run")
		require.Equal(t, 1, code, out)
		for _, want := range []string{"status-interval", "postgres-url: required", "nats-url: required"} {
			require.Contains(t, out, want)
		}
		code, out = runCommand(t, bin, map[string]string{"RELAY_ON_POISON": "ignore", "RELAY_SUBJECT_TEMPLATE": "a.{nope}"}, "run")
		require.Equal(t, 1, code, out)
		require.Contains(t, out, "on-poison")
		require.Contains(t, out, "subject-template")
	})
}

// TestCheckAndStatus: on a healthy setup `relay check` passes and `relay
// status` shows the slot and the stream agreeing.
func TestCheckAndStatus(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	code, out := runCommand(t, f.bin, f.env(), "check")
	require.Equal(t, 0, code, out)
	require.Contains(t, out, "will be created on start")

	relay := f.startRelay(t)
	f.write(t, 10, "status")
	f.waitStream(t, 10, 30*time.Second)
	code, out = runCommand(t, f.bin, f.env(), "status")
	require.Equal(t, 0, code, out)
	for _, want := range []string{"slot outbox_relay", "active:              true", "wal_status:          reserved", "messages:            10", "consistency:         ok"} {
		require.Contains(t, out, want)
	}
	_, _ = relay.Stop(30 * time.Second)
	code, out = runCommand(t, f.bin, f.env(), "check")
	require.Equal(t, 0, code, out)
	require.Contains(t, out, "all checks passed")
}

// TestSecretsNeverReachLogsOrOutput runs against a server that requires a
// password, with a wrong one and then the right one: neither appears in
// logs, errors or `relay status`.
func TestSecretsNeverReachLogsOrOutput(t *testing.T) {
	t.Parallel()
	const password = "s3cret-Pa55word"
	const wrong = "wr0ng-Pa55word"
	f := newFixture(t, testenv.WithPostgresHBA("host all all 127.0.0.1/32 scram-sha-256", "host replication all 127.0.0.1/32 scram-sha-256"))
	f.pg.Exec(t, f.db, `CREATE ROLE relay LOGIN REPLICATION PASSWORD '`+password+`'; GRANT SELECT ON events TO relay; ALTER TABLE events OWNER TO relay; GRANT CREATE ON DATABASE app TO relay;`)
	withPassword := func(p string) string {
		return strings.Replace(f.pg.URL(f.db), "postgres@", "relay:"+p+"@", 1)
	}

	bad := e2e.StartRelay(t, f.bin, f.env("RELAY_POSTGRES_URL", withPassword(wrong)))
	require.Eventually(t, func() bool { return strings.Count(bad.Logs(), "failed, retrying") >= 2 }, 30*time.Second, 100*time.Millisecond,
		"a wrong password is retried with backoff")
	require.False(t, bad.Exited())
	_, _ = bad.Stop(30 * time.Second)
	require.NotContains(t, bad.Logs(), wrong)
	require.Contains(t, bad.Logs(), "password authentication failed", "the error is clear")

	good := f.startRelay(t, "RELAY_POSTGRES_URL", withPassword(password))
	f.write(t, 3, "secret")
	f.waitStream(t, 3, 30*time.Second)
	code, out := runCommand(t, f.bin, f.env("RELAY_POSTGRES_URL", withPassword(password)), "status")
	require.Equal(t, 0, code, out)
	_, body := good.Get("/metrics")
	_, _ = good.Stop(30 * time.Second)
	for _, text := range []string{good.Logs(), out, body} {
		require.NotContains(t, text, password)
	}
	// The password can also come from a file, as Kubernetes Secrets mount.
	code, out = runCommand(t, f.bin, f.env("RELAY_POSTGRES_URL", strings.Replace(f.pg.URL(f.db), "postgres@", "relay@", 1),
		"RELAY_POSTGRES_PASSWORD_FILE", writeSecretFile(t, password+"\n")), "check")
	require.Equal(t, 0, code, out)
	require.NotContains(t, out, password)
}

func writeSecretFile(t *testing.T, content string) string {
	t.Helper()
	path := t.TempDir() + "/password"
	require.NoError(t, os.WriteFile(path, []byte(content), 0o600))
	return path
}
