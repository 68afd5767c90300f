package deploy

// The relay's settings in the chart: every flag of `relay run` is either a
// value of the chart or left to extraEnv on purpose, the chart's defaults
// are the relay's own, and what the chart renders from every value is a
// configuration the relay accepts.

import (
	"bytes"
	"context"
	"errors"
	"maps"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

// flagsWithoutValue are the flags of `relay run` the chart has no value for,
// and why. A flag added to the relay must be given a value or listed here.
var flagsWithoutValue = map[string]string{
	"nats-tls-ca":                "a file: extraEnv with extraVolumes (README: TLS)",
	"nats-tls-cert":              "a file: extraEnv with extraVolumes (README: TLS)",
	"nats-tls-key":               "a file: extraEnv with extraVolumes (README: TLS)",
	"publish-window":             "tuning: extraEnv",
	"ack-every":                  "tuning: extraEnv",
	"event-buffer":               "tuning: extraEnv",
	"publish-timeout":            "timeout: extraEnv",
	"retry-min":                  "timeout: extraEnv",
	"retry-max":                  "timeout: extraEnv",
	"status-interval":            "timeout: extraEnv",
	"connect-timeout":            "timeout: extraEnv",
	"query-timeout":              "timeout: extraEnv",
	"replication-timeout":        "timeout: extraEnv",
	"slot-poll-interval":         "timeout: extraEnv",
	"reconnect-min":              "timeout: extraEnv",
	"reconnect-max":              "timeout: extraEnv",
	"publication-check-interval": "timeout: extraEnv",
	"nats-connect-timeout":       "timeout: extraEnv",
	"nats-request-timeout":       "timeout: extraEnv",
	"nats-reconnect-wait":        "timeout: extraEnv",
	"recover-previous-slot":      "relay recover only: its command line",
	"replay-since":               "relay replay only: its command line",
	"replay-until":               "relay replay only: its command line",
	"replay-ids":                 "relay replay only: its command line",
	"replay-ids-from":            "relay replay only: its command line",
	"replay-after-seq":           "relay replay only: its command line",
	"replay-subject-prefix":      "relay replay only: its command line",
	"replay-subject-template":    "relay replay only: its command line",
	"replay-id":                  "relay replay only: its command line",
	"replay-dry-run":             "relay replay only: its command line",
}

// relayEnv renders the outbox-relay chart with args and returns the
// environment of its relay container.
func relayEnv(t *testing.T, args ...string) map[string]string {
	t.Helper()
	out, stderr, err := runHelm(t, append([]string{"template", "rel", mainChart(t), "--namespace", namespace}, args...)...)
	if err != nil {
		t.Fatalf("helm template %v: %v\n%s", args, err, stderr)
	}
	r := decodeManifests(t, out)
	if len(r.deployments) != 1 {
		t.Fatalf("helm template %v: %d Deployments, want 1", args, len(r.deployments))
	}
	return envOf(r.deployments[0])
}

// TestHelmChartMapsEveryFlag: each flag of `relay run` reaches the relay
// from a value of the chart (extraEnv aside), or is listed in
// flagsWithoutValue.
func TestHelmChartMapsEveryFlag(t *testing.T) {
	t.Parallel()
	flags := relayFlags(t)
	noExtra := []string{"--set-json", "extraEnv=[]"}
	renders := [][]string{
		{"-f", ciValues("defaults-values.yaml")},
		{"-f", ciValues("settings-values.yaml")},
		{"-f", ciValues("existing-secret-values.yaml"), "--set", "nats.nkeySeedKey=seed", "--set", "nats.passwordKey=password"},
		{"-f", ciValues("monitoring-values.yaml")},
	}
	mapped := map[string]bool{}
	for _, args := range renders {
		for name := range relayEnv(t, append(slices.Clone(args), noExtra...)...) {
			if flag, ok := flagOf(name, flags); ok {
				mapped[flag] = true
			}
		}
	}
	for _, flag := range slices.Sorted(maps.Keys(flags)) {
		why, listed := flagsWithoutValue[flag]
		switch {
		case mapped[flag] && listed:
			t.Errorf("--%s has a value in the chart; remove it from flagsWithoutValue (%s)", flag, why)
		case !mapped[flag] && !listed:
			t.Errorf("--%s (%s) has no value in the chart: add one (values.yaml, values.schema.json, the env in _helpers.tpl, README.md, ci/settings-values.yaml and settingsEnv) or list it in flagsWithoutValue", flag, envOfFlag(flag))
		}
	}
	for flag := range flagsWithoutValue {
		if !flags[flag] {
			t.Errorf("flagsWithoutValue lists --%s, which relay run does not have", flag)
		}
	}
}

// TestHelmChartDefaultsAreTheRelays: with its default values the chart
// gives each setting the relay's own default, so installing it changes
// nothing but what the values say.
func TestHelmChartDefaultsAreTheRelays(t *testing.T) {
	t.Parallel()
	flags := relayFlags(t)
	env := relayEnv(t, "-f", ciValues("defaults-values.yaml"))
	for _, name := range slices.Sorted(maps.Keys(env)) {
		flag, ok := flagOf(name, flags)
		if !ok || name == "RELAY_POSTGRES_URL" || name == "RELAY_NATS_URL" { // required, no default
			continue
		}
		if want := flagDefaults[flag]; !sameSetting(env[name], want) {
			t.Errorf("the chart sets %s=%q by default; the relay's --%s defaults to %q", name, env[name], flag, want)
		}
	}
}

// sameSetting tells whether two texts of a setting mean the same value.
func sameSetting(a, b string) bool {
	if a == b {
		return true
	}
	if da, err := time.ParseDuration(a); err == nil {
		db, err := time.ParseDuration(b)
		return err == nil && da == db
	}
	if ba, err := strconv.ParseBool(a); err == nil {
		bb, err := strconv.ParseBool(b)
		return err == nil && ba == bb
	}
	return false
}

// TestHelmChartSettingsAcceptedByTheRelay: the environment the chart renders
// from every value (ci/settings-values.yaml) is a configuration the relay
// accepts: relay check gets past the configuration and fails only on the
// unreachable servers. The same environment with one conflicting variable
// more is refused as a configuration, so the check can tell.
func TestHelmChartSettingsAcceptedByTheRelay(t *testing.T) {
	t.Parallel()
	bin := relayBinary(t)
	env := relayEnv(t, "-f", ciValues("settings-values.yaml"))
	// Servers nobody answers on, and the secret file where the pod mounts it.
	env["RELAY_POSTGRES_URL"] = "postgres://relay@" + closedPort(t) + "/app?sslmode=disable"
	env["RELAY_LEADER_POSTGRES_URL"] = "postgres://relay@" + closedPort(t) + "/app?sslmode=disable"
	env["RELAY_NATS_URL"] = "nats://" + closedPort(t)
	secrets := 0
	for k, v := range env {
		if strings.HasPrefix(v, "/etc/outbox-relay/secrets/") {
			env[k] = secretFile(t, "pw-deploytest")
			secrets++
		}
	}
	if secrets != 1 {
		t.Fatalf("%d secret files in the environment, want the PostgreSQL password's alone", secrets)
	}
	for k, v := range map[string]string{
		"RELAY_CONNECT_TIMEOUT": "2s", "RELAY_QUERY_TIMEOUT": "2s", "RELAY_NATS_CONNECT_TIMEOUT": "2s", "RELAY_RECONNECT_MAX": "1s",
	} {
		env[k] = v
	}
	check := func(env map[string]string) (int, string) {
		ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
		defer cancel()
		cmd := exec.CommandContext(ctx, bin, "check")
		for k, v := range env {
			cmd.Env = append(cmd.Env, k+"="+v)
		}
		var out bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &out
		err := cmd.Run()
		if ctx.Err() != nil {
			t.Fatalf("relay check did not give up on unreachable servers within 90s:\n%s", out.String())
		}
		var exit *exec.ExitError
		if !errors.As(err, &exit) {
			t.Fatalf("relay check against nothing: %v, want a non-zero exit\n%s", err, out.String())
		}
		return exit.ExitCode(), out.String()
	}

	code, out := check(env)
	if strings.Contains(out, "invalid configuration") {
		t.Errorf("relay check refused the configuration the chart renders from ci/settings-values.yaml (exit %d):\n%s", code, out)
	}
	t.Logf("relay check with the chart's settings: exit %d: %s", code, firstLine(strings.TrimSpace(out)))

	env["RELAY_PUBLISH_MODE"] = "batch" // refused with --atomic-transactions
	code, out = check(env)
	if !strings.Contains(out, "invalid configuration") || !strings.Contains(out, "publish-mode") {
		t.Errorf("relay check with RELAY_PUBLISH_MODE=batch and atomic transactions: exit %d, want invalid configuration ... publish-mode:\n%s", code, out)
	}
}

func envOfFlag(flag string) string {
	return "RELAY_" + strings.ToUpper(strings.ReplaceAll(flag, "-", "_"))
}
