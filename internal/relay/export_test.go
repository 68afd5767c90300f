package relay

import "time"

// WithSerialSpell makes the pump's serial spells under contention last d
// (contentionSerial otherwise), so that a test sees one end.
func WithSerialSpell(c Config, d time.Duration) Config {
	c.serialSpell = d
	return c
}
