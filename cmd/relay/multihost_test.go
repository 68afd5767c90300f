package main

import (
	"fmt"
	"io"
	"slices"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/outbox-relay/outbox-relay/internal/cdc"
)

// TestMultiHostURL: a URL naming a primary and its standbys, with
// target_session_attrs=read-write, reaches every connection of the relay
// (replication, queries, leader lock) with all its hosts, also with the
// password given apart, so the relay follows a failover without a change of
// configuration (TestFailoverSlotFollowsThePromotedStandby runs one).
func TestMultiHostURL(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		env  map[string]string
	}{
		{name: "url", env: map[string]string{"RELAY_POSTGRES_URL": "postgres://relay:pw@db1:5432,db2:5433/app?target_session_attrs=read-write"}},
		{name: "password apart", env: map[string]string{
			"RELAY_POSTGRES_URL": "postgres://relay@db1:5432,db2:5433/app?target_session_attrs=read-write", "RELAY_POSTGRES_PASSWORD": "pw",
		}},
		{name: "keyword/value", env: map[string]string{
			"RELAY_POSTGRES_URL": "host=db1,db2 port=5432,5433 user=relay dbname=app target_session_attrs=read-write", "RELAY_POSTGRES_PASSWORD": "pw",
		}},
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
			for what, url := range map[string]string{"postgres-url": cfg.cdc.PostgresURL, "leader-postgres-url": cfg.election.PostgresURL} {
				conn, err := cdc.ParseURL(url)
				require.NoError(t, err, what)
				hosts := []string{fmt.Sprintf("%s:%d", conn.Host, conn.Port)}
				for _, fb := range conn.Fallbacks { // with and without TLS (sslmode=prefer)
					if h := fmt.Sprintf("%s:%d", fb.Host, fb.Port); !slices.Contains(hosts, h) {
						hosts = append(hosts, h)
					}
				}
				require.Equal(t, []string{"db1:5432", "db2:5433"}, hosts, what)
				require.Equal(t, "pw", conn.Password, what)
				require.NotNil(t, conn.ValidateConnect, "%s: target_session_attrs=read-write is kept", what)
			}
		})
	}
}
