// Package testenv starts real PostgreSQL clusters and NATS JetStream servers
// for tests. Nothing here is a mock: every helper runs the genuine server,
// bound to 127.0.0.1 only, and registers t.Cleanup hooks that stop it and
// remove its files.
//
// Programs that are not tests, such as cmd/demo, use the same code through
// NewPostgres, NewNATS and PickFreePort, which return errors instead of
// failing a test and leave stopping to the caller's Close.
//
// PostgreSQL runs from the binaries found via PG_BIN, /usr/lib/postgresql/15/bin
// or pg_config. When the test process runs as root (which PostgreSQL refuses),
// initdb and postgres are started as the OS user "postgres".
//
// StartStandby makes a physical streaming standby of a running cluster (the
// low-level backup API and a file copy, a physical slot of its own,
// hot_standby_feedback on), whose WAL shipping can be paused (PauseWAL, so
// it lags) and which can be promoted (Promote) after the primary is stopped
// in immediate mode, the way a crash ends it.
//
// NATS runs in-process via github.com/nats-io/nats-server/v2/server. Set
// TESTENV_NATS_LOG=1 to see its log on stderr.
package testenv
