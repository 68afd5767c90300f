package main

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"

	"github.com/outbox-relay/outbox-relay/internal/e2e"
	"github.com/outbox-relay/outbox-relay/internal/testenv"
)

// runSplit runs the relay binary to completion with exactly env (no
// defaults; set-but-empty variables stay so) and returns its exit code,
// stdout and stderr apart.
func runSplit(t *testing.T, bin string, env map[string]string, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := relayCommand(ctx, t, bin, env, args...)
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	return exitCode(t, cmd.Run(), args), out.String(), errOut.String()
}

// relayedThenStopped is a fixture whose relay published n events and was
// stopped.
func relayedThenStopped(t *testing.T, n int) *fixture {
	t.Helper()
	f := newFixture(t)
	relay := f.startRelay(t)
	f.write(t, n, "before")
	f.waitStream(t, n, time.Minute)
	_, err := relay.Stop(30 * time.Second)
	require.NoError(t, err)
	return f
}

// exitError returns the error of the JSON entry that ends logs: the one
// that explains why the relay exited.
func exitError(t *testing.T, logs string) string {
	t.Helper()
	var entry struct {
		Level, Error string
	}
	require.NoError(t, json.Unmarshal([]byte(lastLine(logs)), &entry), "the last line is JSON: %q", lastLine(logs))
	require.Equal(t, "error", entry.Level)
	return entry.Error
}

// lastLine returns the last non-empty line of s.
func lastLine(s string) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	return lines[len(lines)-1]
}

// TestExitIsExplained covers how the relay says why it exits: with
// --log-format=json (the default) as a JSON error entry on stderr, with the
// event's id and position when an event is the cause (trial O6), and with
// --log-format=console without colour codes when stderr is no terminal (O7).
func TestExitIsExplained(t *testing.T) {
	t.Parallel()
	f := newFixture(t)

	t.Run("configuration error in JSON", func(t *testing.T) {
		code, _, stderr := runSplit(t, f.bin, f.env("RELAY_TABLE", "nope"), "run")
		require.Equal(t, 1, code, stderr)
		require.Contains(t, exitError(t, stderr), `"public"."nope" does not exist`)
	})

	t.Run("console without colours", func(t *testing.T) {
		code, _, stderr := runSplit(t, f.bin, f.env("RELAY_TABLE", "nope", "RELAY_LOG_FORMAT", "console"), "run")
		require.Equal(t, 1, code, stderr)
		require.NotContains(t, stderr, "\x1b[", "no ANSI escape codes in a file or pipe")
		require.Contains(t, lastLine(stderr), "ERROR")
		require.Contains(t, lastLine(stderr), `nope\" does not exist`)
	})

	t.Run("poison event in JSON with its id and position", func(t *testing.T) {
		relay := f.startRelay(t)
		ids := writeRows(t, f, goodEvent(1), e2e.Event{AggregateType: "bad.type", AggregateID: "x", EventType: "created", Payload: `{}`})
		code, err := relay.Wait(60 * time.Second)
		require.NoError(t, err)
		require.Equal(t, 1, code)
		var entry map[string]any
		line := lastLine(relay.Logs())
		require.NoError(t, json.Unmarshal([]byte(line), &entry), "the last line is JSON: %q", line)
		require.Equal(t, "error", entry["level"])
		require.Equal(t, ids[1], entry["event_id"])
		require.Regexp(t, `^[0-9A-F]+/[0-9A-F]+$`, entry["lsn"])
		require.Contains(t, entry["error"], "invalid_subject")
	})
}

// TestCommandLine covers the command line itself: `relay --help` lists the
// commands, no flag says its default twice (trial S2), and a RELAY_*
// variable set to the empty string means empty where a setting allows it
// (W21), while for the others it stays "unset".
func TestCommandLine(t *testing.T) {
	t.Parallel()
	bin := e2e.BuildRelay(t)

	t.Run("relay --help lists the commands", func(t *testing.T) {
		code, stdout, stderr := runSplit(t, bin, nil, "--help")
		require.Equal(t, 0, code, stderr)
		for _, command := range []string{"relay check", "relay status", "relay run", "relay version"} {
			require.Contains(t, stdout, command)
		}
	})

	t.Run("each default stated once", func(t *testing.T) {
		code, stdout, stderr := runSplit(t, bin, nil, "run", "--help")
		require.Equal(t, 0, code)
		help := stdout + stderr
		require.Contains(t, help, "-create-publication")
		require.NotContains(t, help, "(default true) (default true)")
		require.Contains(t, help, "(default true)")
		require.Contains(t, help, "(default false)", "a false default is stated too")
	})

	t.Run("empty environment variables", func(t *testing.T) {
		f := newFixture(t)
		f.pg.Exec(t, f.db, `CREATE TABLE plain (id uuid PRIMARY KEY DEFAULT gen_random_uuid(), aggregate_type text NOT NULL,
			aggregate_id text NOT NULL, event_type text NOT NULL, payload jsonb NOT NULL)`)
		env := f.env("RELAY_TABLE", "plain", "RELAY_PUBLICATION", "plain", "RELAY_SLOT", "plain",
			"RELAY_COLUMN_HEADERS", "", "RELAY_COLUMN_CREATED_AT", "")
		code, stdout, stderr := runSplit(t, f.bin, env, "check")
		require.Equal(t, 0, code, "RELAY_COLUMN_HEADERS= and RELAY_COLUMN_CREATED_AT= mean no such column:\n%s%s", stdout, stderr)

		// Empty where empty is no valid value: the default applies.
		env["RELAY_STREAM"], env["RELAY_LOG_LEVEL"] = "", ""
		code, stdout, stderr = runSplit(t, f.bin, env, "check")
		require.Equal(t, 0, code, "%s%s", stdout, stderr)
		require.Contains(t, stdout, `stream "OUTBOX"`)
	})
}

// stoppedOnPoison is a fixture whose relay, under the default policy,
// stopped on a poison event among rows; it returns the rows' ids.
func stoppedOnPoison(t *testing.T, rows ...e2e.Event) (*fixture, []string) {
	t.Helper()
	f := newFixture(t)
	relay := f.startRelay(t)
	ids := writeRows(t, f, rows...)
	code, err := relay.Wait(60 * time.Second)
	require.NoError(t, err)
	require.Equal(t, 1, code, "the relay stops on the poison event")
	return f, ids
}

// TestCheckReportsWhatRunWouldFailOn: `relay check` fails on what `relay
// run` would fail on or never get past: a publication the role may not
// create (trial S5), a dropped slot that run refuses to recreate (C16), a
// poison event at the head of the slot that run would stop on at every
// start (W12); and it prints warnings as warnings (O8). `relay status`
// reports the poison event as a problem too.
func TestCheckReportsWhatRunWouldFailOn(t *testing.T) {
	t.Parallel()

	t.Run("publication the role may not create", func(t *testing.T) {
		t.Parallel()
		f := newFixture(t)
		f.pg.Exec(t, f.db, `CREATE ROLE plain_relay LOGIN REPLICATION; GRANT SELECT ON events TO plain_relay`)
		env := f.env("RELAY_POSTGRES_URL", strings.Replace(f.pg.URL(f.db), "postgres@", "plain_relay@", 1))
		code, out := runCommand(t, f.bin, env, "check")
		require.Equal(t, 1, code, out)
		require.Contains(t, out, `publication: "outbox_relay" does not exist and role "plain_relay" may not create it`)
		require.Contains(t, out, `GRANT CREATE ON DATABASE "app" TO "plain_relay"`)
		require.Contains(t, out, `owned by "postgres"`)
		require.NotContains(t, out, `publication "outbox_relay": missing`, "the publication is not reported as fine")
	})

	t.Run("dropped slot", func(t *testing.T) {
		t.Parallel()
		f := relayedThenStopped(t, 3)
		f.pg.Exec(t, f.db, `SELECT pg_drop_replication_slot('outbox_relay')`)
		code, out := runCommand(t, f.bin, f.env(), "check")
		require.Equal(t, 1, code, out)
		require.Contains(t, out, `slot: "outbox_relay" does not exist and relay run will refuse to create it`)
		require.Contains(t, out, "slot recovery")
		require.NotContains(t, out, `slot "outbox_relay": missing, will be created on start`)
	})

	t.Run("poison event at the head", func(t *testing.T) {
		t.Parallel()
		f, ids := stoppedOnPoison(t, goodEvent(1), e2e.Event{AggregateType: "bad.type", AggregateID: "x", EventType: "created", Payload: `{}`}, goodEvent(3))
		code, out := runCommand(t, f.bin, f.env(), "check")
		require.Equal(t, 1, code, out)
		require.Contains(t, out, "poison event "+ids[1])
		require.Contains(t, out, "invalid_subject")
		require.Contains(t, out, "warn  stream \"OUTBOX\": fewer than 3 replicas", "a warning reads as one")
		require.NotContains(t, out, "ok    warning")

		code, out = runCommand(t, f.bin, f.env(), "status")
		require.Equal(t, 1, code, out)
		require.Contains(t, out, "consistency:         PROBLEM")
		require.Contains(t, out, "poison event "+ids[1])

		// Under --on-poison=dead-letter the same event is no problem.
		code, out = runCommand(t, f.bin, f.env("RELAY_ON_POISON", "dead-letter"), "check")
		require.Equal(t, 0, code, out)
		require.Contains(t, out, "will be dead-lettered")
	})

	t.Run("too large at the head", func(t *testing.T) {
		t.Parallel()
		big := goodEvent(2)
		big.Payload = `{"pad": "` + strings.Repeat("x", 1200<<10) + `"}`
		f, ids := stoppedOnPoison(t, goodEvent(1), big)
		code, out := runCommand(t, f.bin, f.env(), "check")
		require.Equal(t, 1, code, out)
		require.Contains(t, out, "poison event "+ids[1])
		require.Contains(t, out, "too_large")
	})
}

// TestStatusTellsTheTruth: `relay status` does not say "consistency: ok"
// when another writer shares the stream (trial C19), and fails when the
// outbox table is missing (C6).
func TestStatusTellsTheTruth(t *testing.T) {
	t.Parallel()
	f := relayedThenStopped(t, 3)
	code, out := runCommand(t, f.bin, f.env(), "status")
	require.Equal(t, 0, code, out)
	require.Contains(t, out, "consistency:         ok")

	t.Run("missing table", func(t *testing.T) {
		code, out := runCommand(t, f.bin, f.env("RELAY_TABLE", "nope"), "status")
		require.Equal(t, 1, code, out)
		require.Contains(t, out, `"public"."nope" does not exist`)
	})

	t.Run("shared stream", func(t *testing.T) {
		// Another relay's message and a plain publish.
		foreign := nats.NewMsg("outbox.order.created")
		foreign.Header.Set("Outbox-Origin", "123/other/slot")
		foreign.Header.Set("Outbox-Commit-Lsn", "0/1")
		foreign.Header.Set("Outbox-Commit-Index", "0")
		foreign.Data = []byte("{}")
		js, err := jetstream.New(f.nc)
		require.NoError(t, err)
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_, err = js.PublishMsg(ctx, foreign)
		require.NoError(t, err)
		_, err = js.Publish(ctx, "outbox.order.created", []byte("{}"))
		require.NoError(t, err)
		code, out := runCommand(t, f.bin, f.env(), "status")
		require.Equal(t, 0, code, out)
		require.Contains(t, out, "consistency:         shared", "sharing is supported, but not reported as ok")
		require.NotContains(t, out, "consistency:         ok")
		require.Contains(t, out, "123/other/slot")
		require.Contains(t, out, "1 without Outbox-Origin")
	})
}

// readmeSQL returns the first SQL block after marker in the README.
func readmeSQL(t *testing.T, marker string) string {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(e2e.RepoRoot(), "README.md"))
	require.NoError(t, err)
	_, rest, ok := strings.Cut(string(data), marker)
	require.True(t, ok, "README has %q", marker)
	_, rest, ok = strings.Cut(rest, "```sql\n")
	require.True(t, ok)
	block, _, ok := strings.Cut(rest, "```")
	require.True(t, ok)
	return block
}

// TestRoleSetupAsDocumented sets the role up exactly as the README says,
// for a table outside the public schema (trial S4), on a server whose
// pg_hba.conf refuses the role physical replication connections: the
// relay needs none (C5). A role without REPLICATION gets the right hint
// from `relay check`, not one about pg_hba.conf replication lines (C4).
func TestRoleSetupAsDocumented(t *testing.T) {
	t.Parallel()
	f := newFixture(t, testenv.WithPostgresHBA(
		"host replication relay 127.0.0.1/32 reject",
		"host replication norepl 127.0.0.1/32 reject",
	))
	f.pg.Exec(t, f.db, `CREATE SCHEMA billing; CREATE TABLE billing.events (LIKE public.events INCLUDING ALL)`)
	f.pg.Exec(t, f.db, readmeSQL(t, "Role privileges"))
	asRole := func(role string) string { return strings.Replace(f.pg.URL(f.db), "postgres@", role+"@", 1) }

	t.Run("no replication line needed", func(t *testing.T) {
		// The role may not open a physical replication connection...
		cfg, err := pgconn.ParseConfig(asRole("relay"))
		require.NoError(t, err)
		cfg.RuntimeParams["replication"] = "true"
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_, err = pgconn.ConnectConfig(ctx, cfg)
		require.ErrorContains(t, err, "pg_hba.conf rejects replication connection")

		// ... and the relay works.
		env := f.env("RELAY_POSTGRES_URL", asRole("relay"), "RELAY_TABLE", "billing.events", "RELAY_CREATE_PUBLICATION", "false")
		code, out := runCommand(t, f.bin, env, "check")
		require.Equal(t, 0, code, out)
		relay := f.startRelay(t, "RELAY_POSTGRES_URL", asRole("relay"), "RELAY_TABLE", "billing.events", "RELAY_CREATE_PUBLICATION", "false")
		f.pg.Exec(t, f.db, `INSERT INTO billing.events (aggregate_type, aggregate_id, event_type, payload) VALUES ('order', '1', 'created', '{}')`)
		f.waitStream(t, 1, time.Minute)
		_, err = relay.Stop(30 * time.Second)
		require.NoError(t, err)
	})

	t.Run("hint for a role without REPLICATION", func(t *testing.T) {
		f.pg.Exec(t, f.db, `CREATE ROLE norepl LOGIN; GRANT USAGE ON SCHEMA billing TO norepl; GRANT SELECT ON billing.events TO norepl`)
		env := f.env("RELAY_POSTGRES_URL", asRole("norepl"), "RELAY_TABLE", "billing.events", "RELAY_CREATE_PUBLICATION", "false",
			"RELAY_SLOT", "other")
		code, out := runCommand(t, f.bin, env, "check")
		require.Equal(t, 1, code, out)
		require.Contains(t, out, "ALTER ROLE <role> REPLICATION")
		require.NotContains(t, out, "replication line", "pg_hba.conf replication lines have nothing to do with it")
	})
}
