package main

import (
	"io"
	"testing"

	"github.com/stretchr/testify/require"
)

// TestLeaderPostgresURL: the lease's URL defaults to --postgres-url, and
// --postgres-password goes into either, as it does into --postgres-url.
func TestLeaderPostgresURL(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		env  map[string]string
		want string
	}{
		{
			name: "default",
			env:  map[string]string{"RELAY_POSTGRES_URL": "postgres://relay@pooler:6432/app"},
			want: "postgres://relay@pooler:6432/app",
		},
		{
			name: "default with password",
			env:  map[string]string{"RELAY_POSTGRES_URL": "postgres://relay@pooler:6432/app", "RELAY_POSTGRES_PASSWORD": "s3cret"},
			want: "postgres://relay:s3cret@pooler:6432/app",
		},
		{
			name: "direct",
			env:  map[string]string{"RELAY_POSTGRES_URL": "postgres://relay@pooler:6432/app", "RELAY_LEADER_POSTGRES_URL": "postgres://relay@db:5432/app"},
			want: "postgres://relay@db:5432/app",
		},
		{
			name: "direct with password",
			env: map[string]string{
				"RELAY_POSTGRES_URL": "postgres://relay@pooler:6432/app", "RELAY_LEADER_POSTGRES_URL": "postgres://relay@db:5432/app",
				"RELAY_POSTGRES_PASSWORD": "s3cret",
			},
			want: "postgres://relay:s3cret@db:5432/app",
		},
		{
			name: "direct keyword/value with password",
			env: map[string]string{
				"RELAY_POSTGRES_URL": "postgres://relay@pooler:6432/app", "RELAY_LEADER_POSTGRES_URL": "host=db user=relay dbname=app",
				"RELAY_POSTGRES_PASSWORD": "it's",
			},
			want: `host=db user=relay dbname=app password='it\'s'`,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			env := map[string]string{"RELAY_NATS_URL": "nats://127.0.0.1:4222"}
			for k, v := range tt.env {
				env[k] = v
			}
			cfg, err := parseConfig("run", nil, func(k string) (string, bool) { v, ok := env[k]; return v, ok }, io.Discard)
			require.NoError(t, err)
			require.Equal(t, tt.want, cfg.election.PostgresURL)
		})
	}
	_, err := parseConfig("run", nil, func(k string) (string, bool) {
		v, ok := map[string]string{"RELAY_POSTGRES_URL": "postgres://relay@db/app", "RELAY_NATS_URL": "nats://x", "RELAY_LEADER_POSTGRES_URL": "postgres://relay:pw@db:notaport/app"}[k]
		return v, ok
	}, io.Discard)
	require.ErrorContains(t, err, "leader-postgres-url: cannot be parsed")
	require.NotContains(t, err.Error(), "pw@")
}

// TestServiceSideSettings: --cloudevents, its source and type template, and
// --otlp-traces-endpoint are checked up front, each problem naming its
// setting.
func TestServiceSideSettings(t *testing.T) {
	t.Parallel()
	base := map[string]string{"RELAY_POSTGRES_URL": "postgres://relay@db/app", "RELAY_NATS_URL": "nats://127.0.0.1:4222"}
	parse := func(extra map[string]string) (*config, error) {
		return parseConfig("run", nil, func(k string) (string, bool) {
			if v, ok := extra[k]; ok {
				return v, true
			}
			v, ok := base[k]
			return v, ok
		}, io.Discard)
	}
	cfg, err := parse(map[string]string{
		"RELAY_CLOUDEVENTS": "true", "RELAY_CLOUDEVENTS_SOURCE": "https://orders.example.com", "RELAY_CLOUDEVENTS_TYPE": "com.example.{event_type}",
		"RELAY_OTLP_TRACES_ENDPOINT": "http://collector:4318/v1/traces",
	})
	require.NoError(t, err)
	require.True(t, cfg.cloudEvents)
	require.Equal(t, "https://orders.example.com", cfg.cloudEventsSource)
	require.True(t, cfg.tracing.Enabled())

	cfg, err = parse(nil)
	require.NoError(t, err)
	require.False(t, cfg.cloudEvents, "off by default")
	require.Equal(t, "{aggregate_type}.{event_type}", cfg.cloudEventsType)
	require.False(t, cfg.tracing.Enabled(), "off by default")

	for _, tt := range []struct {
		env  map[string]string
		want string
	}{
		{map[string]string{"RELAY_CLOUDEVENTS_SOURCE": "/x"}, "cloudevents-source: set, but --cloudevents is off"},
		{map[string]string{"RELAY_CLOUDEVENTS": "true", "RELAY_CLOUDEVENTS_TYPE": "{kind}"}, "cloudevents-type: unknown placeholder {kind}"},
		{map[string]string{"RELAY_CLOUDEVENTS": "true", "RELAY_CLOUDEVENTS_SOURCE": "%zz"}, "cloudevents-source: \"%zz\" is not a URI reference"},
		{map[string]string{"RELAY_OTLP_TRACES_ENDPOINT": "collector:4318"}, "otlp-traces-endpoint"},
	} {
		_, err := parse(tt.env)
		require.ErrorContains(t, err, tt.want)
	}
}
