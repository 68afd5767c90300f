package main

import (
	"errors"
	"testing"

	"github.com/outbox-relay/outbox-relay/internal/relay"
)

// TestInProcessConfigsAreValid keeps the profiled in-process relay's settings
// in step with what the packages require: a setting added to cdc or sink
// without a value here would fail only at the end of a long benchmark run.
func TestInProcessConfigsAreValid(t *testing.T) {
	tmpl, err := relay.ParseTemplate("outbox.{aggregate_type}.{event_type}")
	if err != nil {
		t.Fatal(err)
	}
	cdcCfg, sinkCfg := inProcessConfigs("postgres://bench@127.0.0.1:5432/bench", "nats://127.0.0.1:4222", "BENCH", tmpl)
	if err := errors.Join(cdcCfg.Validate(), sinkCfg.Validate()); err != nil {
		t.Fatal(err)
	}
}
