// Package rowheader holds the rule every entry of an outbox row's headers
// column must follow to travel as a NATS message header. The relay finds a
// row that breaks it poison; the outbox writer refuses such an entry before
// the row is ever committed. One rule, one place.
package rowheader

import (
	"fmt"
	"strings"
)

// Check explains why the header name: value cannot be carried as it is: a
// name that is not an RFC 7230 token, a name reserved for the relay and NATS
// (Nats-*, Outbox-*, in any case), or a value with a line break (NATS header
// values end at one). Silently dropping or changing such an entry would
// change the event.
func Check(name, value string) error {
	if !ValidName(name) {
		return fmt.Errorf("column headers: %q is not a valid header name", name)
	}
	lower := strings.ToLower(name)
	if strings.HasPrefix(lower, "nats-") || strings.HasPrefix(lower, "outbox-") {
		return fmt.Errorf("column headers: %q is reserved for the relay and NATS", name)
	}
	if strings.ContainsAny(value, "\r\n") {
		return fmt.Errorf("column headers: the value of %q contains a line break", name)
	}
	return nil
}

// ValidName accepts RFC 7230 token characters.
func ValidName(name string) bool {
	if name == "" {
		return false
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		if c <= ' ' || c >= 0x7f || strings.IndexByte("\"(),/:;<=>?@[\\]{}", c) >= 0 {
			return false
		}
	}
	return true
}
