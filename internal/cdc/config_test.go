package cdc

import (
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func validConfig() Config {
	return Config{
		PostgresURL:        "postgres://relay@localhost/app",
		Schema:             "public",
		Table:              "outbox",
		Columns:            testColumns,
		Publication:        "outbox_pub",
		Slot:               "outbox_slot",
		StatusInterval:     10 * time.Second,
		ConnectTimeout:     10 * time.Second,
		ReplicationTimeout: time.Minute,
		QueryTimeout:       30 * time.Second,
		SlotPollInterval:   30 * time.Second,
		ReconnectMin:       time.Second,
		ReconnectMax:       30 * time.Second,
		EventBuffer:        1024,
		EventBufferBytes:   64 << 20,

		PublicationCheckInterval: time.Second,
	}
}

// joined returns the errors errors.Join combined, one per problem.
func joined(t *testing.T, err error) []error {
	t.Helper()
	require.Error(t, err)
	j, ok := err.(interface{ Unwrap() []error })
	require.True(t, ok, "Validate must join its errors: %T", err)
	return j.Unwrap()
}

func TestConfigValidateOK(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name   string
		modify func(c *Config)
	}{
		{"defaults", func(*Config) {}},
		{"without optional columns", func(c *Config) { c.Columns.Headers, c.Columns.CreatedAt = "", "" }},
		{"slot of 63 characters", func(c *Config) { c.Slot = strings.Repeat("s", 63) }},
		{"slot with digits and underscores", func(c *Config) { c.Slot = "0_relay_1" }},
		{"reconnect min equals max", func(c *Config) { c.ReconnectMin, c.ReconnectMax = time.Second, time.Second }},
		{"event buffer of one", func(c *Config) { c.EventBuffer = 1 }},
		{"replication timeout derived", func(c *Config) { c.ReplicationTimeout = 0 }},
		{"publication of 63 bytes, any characters", func(c *Config) { c.Publication = "Out'box \"Pub\", é" + strings.Repeat("p", 45) }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			c := validConfig()
			tt.modify(&c)
			require.NoError(t, c.Validate())
		})
	}
}

func TestConfigValidateOneProblem(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		modify  func(c *Config)
		setting string // the prefix the one error must start with
	}{
		{"postgres url", func(c *Config) { c.PostgresURL = "" }, "postgres-url:"},
		{"table", func(c *Config) { c.Table = "" }, "table:"},
		{"schema", func(c *Config) { c.Schema = "" }, "table:"},
		{"empty slot", func(c *Config) { c.Slot = "" }, "slot:"},
		{"upper-case slot", func(c *Config) { c.Slot = "Outbox" }, "slot:"},
		{"slot with dash", func(c *Config) { c.Slot = "outbox-slot" }, "slot:"},
		{"slot with quote", func(c *Config) { c.Slot = "x'; DROP" }, "slot:"},
		{"slot of 64 characters", func(c *Config) { c.Slot = strings.Repeat("s", 64) }, "slot:"},
		{"slot with newline", func(c *Config) { c.Slot = "slot\n" }, "slot:"},
		{"publication", func(c *Config) { c.Publication = "" }, "publication:"},
		{"publication of 64 bytes", func(c *Config) { c.Publication = strings.Repeat("p", 64) }, "publication:"},
		{"publication with NUL", func(c *Config) { c.Publication = "a\x00b" }, "publication:"},
		{"column id", func(c *Config) { c.Columns.ID = "" }, "column-id:"},
		{"column aggregate type", func(c *Config) { c.Columns.AggregateType = "" }, "column-aggregate-type:"},
		{"column aggregate id", func(c *Config) { c.Columns.AggregateID = "" }, "column-aggregate-id:"},
		{"column event type", func(c *Config) { c.Columns.EventType = "" }, "column-event-type:"},
		{"column payload", func(c *Config) { c.Columns.Payload = "" }, "column-payload:"},
		{"status interval", func(c *Config) { c.StatusInterval = 0 }, "status-interval:"},
		{"negative status interval", func(c *Config) { c.StatusInterval = -time.Second }, "status-interval:"},
		{"connect timeout", func(c *Config) { c.ConnectTimeout = 0 }, "connect-timeout:"},
		{"replication timeout", func(c *Config) { c.ReplicationTimeout = -time.Second }, "replication-timeout:"},
		{"query timeout", func(c *Config) { c.QueryTimeout = -1 }, "query-timeout:"},
		{"slot poll interval", func(c *Config) { c.SlotPollInterval = 0 }, "slot-poll-interval:"},
		{"reconnect max below min", func(c *Config) { c.ReconnectMax = c.ReconnectMin / 2 }, "reconnect-max:"},
		{"event buffer", func(c *Config) { c.EventBuffer = 0 }, "event-buffer:"},
		{"negative event buffer", func(c *Config) { c.EventBuffer = -5 }, "event-buffer:"},
		{"event buffer bytes", func(c *Config) { c.EventBufferBytes = 0 }, "event-buffer-bytes:"},
		{"publication check interval", func(c *Config) { c.PublicationCheckInterval = 0 }, "publication-check-interval:"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			c := validConfig()
			tt.modify(&c)
			errs := joined(t, c.Validate())
			require.Len(t, errs, 1, "%v", errs)
			require.True(t, strings.HasPrefix(errs[0].Error(), tt.setting), "%q does not start with %q", errs[0], tt.setting)
		})
	}
}

func TestConfigValidateReportsAllProblems(t *testing.T) {
	t.Parallel()
	err := Config{}.Validate()
	errs := joined(t, err)
	var got []string
	for _, e := range errs {
		setting, _, ok := strings.Cut(e.Error(), ":")
		require.True(t, ok, "%q names no setting", e)
		got = append(got, setting)
	}
	require.ElementsMatch(t, []string{
		"postgres-url",
		"table", "table", // table and schema
		"slot",
		"publication",
		"column-id", "column-aggregate-type", "column-aggregate-id", "column-event-type", "column-payload",
		"status-interval", "connect-timeout", "query-timeout", "slot-poll-interval", "reconnect-min", "reconnect-max",
		"publication-check-interval", "event-buffer-bytes", "event-buffer",
	}, got)
	// The joined message lists them one per line.
	require.Len(t, strings.Split(err.Error(), "\n"), len(errs))
	require.Contains(t, err.Error(), "RELAY_POSTGRES_URL")
}

func TestConfigValidateReconnectBoth(t *testing.T) {
	t.Parallel()
	c := validConfig()
	c.ReconnectMin = time.Minute
	c.ReconnectMax = -time.Second
	errs := joined(t, c.Validate())
	var got []string
	for _, e := range errs {
		got = append(got, e.Error())
	}
	require.Len(t, got, 2, "%v", got)
	require.True(t, strings.HasPrefix(got[0], "reconnect-max: -1s, must be positive"), got[0])
	require.True(t, strings.HasPrefix(got[1], "reconnect-max: -1s is below reconnect-min 1m0s"), got[1])
}

func TestPublicationNamesOption(t *testing.T) {
	t.Parallel()
	tests := []struct{ name, want string }{
		{"outbox_relay", `'"outbox_relay"'`},
		{"OutboxPub", `'"OutboxPub"'`},
		{`Out'box "Pub", x\y`, `'"Out''box ""Pub"", x\y"'`},
	}
	for _, tt := range tests {
		require.Equal(t, tt.want, publicationNamesOption(tt.name), tt.name)
	}
}

func TestReplicationTimeout(t *testing.T) {
	t.Parallel()
	tests := []struct {
		configured, sender, want time.Duration
		err                      string
	}{
		{0, 60 * time.Second, 2 * time.Minute, ""},
		{0, 5 * time.Second, time.Minute, ""},
		{0, 0, time.Minute, ""}, // wal_sender_timeout disabled
		{90 * time.Second, 60 * time.Second, 90 * time.Second, ""},
		{60 * time.Second, 60 * time.Second, 0, "replication-timeout: 1m0s is not above the server's wal_sender_timeout 1m0s"},
		{30 * time.Second, 0, 30 * time.Second, ""},
	}
	for _, tt := range tests {
		got, err := replicationTimeout(tt.configured, tt.sender)
		if tt.err != "" {
			require.ErrorContains(t, err, tt.err)
			continue
		}
		require.NoError(t, err)
		require.Equal(t, tt.want, got)
	}
}

// TestVersionSupport is the rule for server_version_num: refused below 14,
// supported and tested from 14 to 18, run with a warning above.
func TestVersionSupport(t *testing.T) {
	t.Parallel()
	tests := []struct {
		version  int
		untested bool
		err      string
	}{
		{version: 90624, err: "PostgreSQL 9.6.24 (server_version_num 90624) is not supported; the relay needs PostgreSQL 14 or later"},
		{version: 130015, err: "PostgreSQL 13.15 (server_version_num 130015) is not supported; the relay needs PostgreSQL 14 or later"},
		{version: 139999, err: "PostgreSQL 13.9999"},
		{version: 140000},
		{version: 140023},
		{version: 150018},
		{version: 160014},
		{version: 170010},
		{version: 180004},
		{version: 189999},
		{version: 190000, untested: true},
		{version: 200001, untested: true},
	}
	for _, tt := range tests {
		t.Run(versionText(tt.version), func(t *testing.T) {
			t.Parallel()
			untested, err := versionSupport(tt.version)
			if tt.err != "" {
				require.ErrorContains(t, err, tt.err)
				return
			}
			require.NoError(t, err)
			require.Equal(t, tt.untested, untested)
		})
	}
	require.Equal(t, "PostgreSQL 19.2 is newer than the majors the relay is tested with (14 to 18); it runs, but check the release notes for changes to logical decoding and pgoutput",
		untestedVersion(190002))
}
