package relay

import "time"

// WithSerialSpell makes the pump's serial spells under contention last d
// (contentionSerial otherwise), so that a test sees one end.
func WithSerialSpell(c Config, d time.Duration) Config {
	c.serialSpell = d
	return c
}

// WithOneTransactionPerBatch makes the atomic mode publish each transaction
// as a batch of its own, never joining the next ones (see joinNext).
func WithOneTransactionPerBatch(c Config) Config {
	c.oneTxnPerBatch = true
	return c
}
