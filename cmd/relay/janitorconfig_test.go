package main

import (
	"io"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// TestRetentionSetting: cleanup is off by default and turned on by
// --retention alone (flag or RELAY_RETENTION); a bad value, or a retention
// without a created_at column to clean up by, is refused naming the setting.
func TestRetentionSetting(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		args    []string
		env     map[string]string
		want    time.Duration
		wantErr string
	}{
		{name: "off by default"},
		{name: "flag", args: []string{"--retention=168h"}, want: 168 * time.Hour},
		{name: "environment", env: map[string]string{"RELAY_RETENTION": "72h"}, want: 72 * time.Hour},
		{name: "flag over environment", args: []string{"--retention=1h"}, env: map[string]string{"RELAY_RETENTION": "72h"}, want: time.Hour},
		{name: "not a duration", env: map[string]string{"RELAY_RETENTION": "a week"}, wantErr: `retention: RELAY_RETENTION="a week"`},
		{name: "negative", args: []string{"--retention=-1h"}, wantErr: "retention: -1h0m0s, must not be negative"},
		{name: "no created_at column", args: []string{"--retention=1h", "--column-created-at="}, wantErr: "retention: 1h0m0s needs the outbox's creation time, and the column mapping has none"},
		{name: "no created_at column from the environment", env: map[string]string{"RELAY_RETENTION": "1h", "RELAY_COLUMN_CREATED_AT": ""}, wantErr: "--column-created-at is empty"},
		{name: "no created_at column, cleanup off", args: []string{"--column-created-at="}},
		{name: "interval", args: []string{"--retention=1h", "--retention-interval=0s"}, wantErr: "retention-interval: 0s, must be positive"},
		{name: "shorter than relay recover reads", args: []string{"--retention=30m"}, wantErr: "retention: 30m0s is below recover-max-transaction-age 1h0m0s"},
		{name: "as long as relay recover reads", args: []string{"--retention=10m", "--recover-max-transaction-age=10m"}, want: 10 * time.Minute},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			env := map[string]string{"RELAY_POSTGRES_URL": "postgres://relay@db/app", "RELAY_NATS_URL": "nats://127.0.0.1:4222"}
			for k, v := range tt.env {
				env[k] = v
			}
			cfg, err := parseConfig("run", tt.args, func(k string) (string, bool) { v, ok := env[k]; return v, ok }, io.Discard)
			if tt.wantErr != "" {
				require.ErrorContains(t, err, tt.wantErr)
				return
			}
			require.NoError(t, err)
			require.Equal(t, tt.want, cfg.janitor.Retention)
			require.Equal(t, tt.want > 0, cfg.janitor.Enabled())
		})
	}
}

// TestPipelineStopsTheJanitor: the janitor runs with the leader's pipeline
// and has stopped before the pipeline's Stop returns, before the publisher
// is closed and the lease given up: a relay that no longer leads does not
// clean up.
func TestPipelineStopsTheJanitor(t *testing.T) {
	t.Parallel()
	j := &journal{}
	janitor := newFakeStage(j, "janitor")
	p := &pipeline{
		reader: newFakeStage(j, "reader"), pump: newFakeStage(j, "pump"), monitor: newFakeStage(j, "monitor"),
		janitor: janitor, close: func() { j.add("publisher closed") },
	}
	p.Start()
	select {
	case <-janitor.running:
	case <-time.After(10 * time.Second):
		t.Fatal("the janitor was not started")
	}
	require.NoError(t, p.Stop())
	entries := j.all()
	require.Contains(t, entries, "janitor stopped")
	require.Equal(t, "publisher closed", entries[len(entries)-1])
}
