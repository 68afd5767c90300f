package main

import (
	"io"
	"testing"

	"github.com/stretchr/testify/require"
)

// TestAtomicTransactionsConfig: --atomic-transactions turns on the stream
// preflight for atomic batches, the reader's marking of each transaction's
// last event and a byte limit on a batch of half the event byte budget;
// --on-large-transaction takes stop or split.
func TestAtomicTransactionsConfig(t *testing.T) {
	t.Parallel()
	parse := func(env map[string]string) (*config, error) {
		env["RELAY_POSTGRES_URL"], env["RELAY_NATS_URL"] = "postgres://relay@db/app", "nats://127.0.0.1:4222"
		return parseConfig("run", nil, func(k string) (string, bool) { v, ok := env[k]; return v, ok }, io.Discard)
	}
	cfg, err := parse(map[string]string{})
	require.NoError(t, err)
	require.False(t, cfg.pump.Atomic || cfg.sink.Atomic || cfg.cdc.MarkTxnEnd, "off by default")

	cfg, err = parse(map[string]string{"RELAY_ATOMIC_TRANSACTIONS": "true", "RELAY_EVENT_BUFFER_BYTES": "1000000"})
	require.NoError(t, err)
	require.True(t, cfg.pump.Atomic && cfg.sink.Atomic && cfg.cdc.MarkTxnEnd)
	require.Equal(t, 1000, cfg.pump.BatchMaxMessages)
	require.Equal(t, int64(500000), cfg.pump.BatchMaxBytes)
	require.Equal(t, "stop", cfg.pump.OnLargeTransaction)

	_, err = parse(map[string]string{"RELAY_ATOMIC_TRANSACTIONS": "true", "RELAY_ON_LARGE_TRANSACTION": "ignore", "RELAY_ATOMIC_BATCH_MAX": "0"})
	require.ErrorContains(t, err, "on-large-transaction")
	require.ErrorContains(t, err, "atomic-batch-max")
}
