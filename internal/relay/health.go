package relay

import (
	"fmt"
	"sync"
	"time"
)

// Role is what this instance is doing.
type Role string

// Roles, in the order an instance goes through them.
const (
	RoleStarting  Role = "starting"
	RoleWaiting   Role = "waiting" // for PostgreSQL, to take part in the election
	RoleStandby   Role = "standby"
	RoleLeader    Role = "leader"
	RoleStopping  Role = "stopping"
	RoleUnhealthy Role = "failed"
)

// Probes are the readings health decisions are made from. Each function is
// safe for concurrent use.
type Probes struct {
	// Heartbeat is when the replication loop last showed it is alive.
	Heartbeat func() time.Time
	// OldestPending returns the commit time of the oldest event not yet
	// acknowledged, and whether there is one.
	OldestPending func() (time.Time, bool)
	// LastProgress is when an event was last acknowledged.
	LastProgress func() time.Time
	// PostgresUp and NATSUp report the connections' states.
	PostgresUp func() bool
	NATSUp     func() bool
}

// Health answers the liveness and readiness probes. Liveness fails only when
// a restart could help: the replication loop stopped answering, or events
// are pending while both servers are reachable and nothing has been
// acknowledged for StallTimeout. A server being down is not a reason to
// restart the relay; readiness reports it.
type Health struct {
	stallTimeout time.Duration
	beatTimeout  time.Duration

	mu         sync.Mutex
	role       Role
	since      time.Time
	probes     Probes
	attached   bool
	attachedAt time.Time
}

// NewHealth builds a Health in RoleStarting.
func NewHealth(stallTimeout, beatTimeout time.Duration) *Health {
	return &Health{stallTimeout: stallTimeout, beatTimeout: beatTimeout, role: RoleStarting, since: time.Now()}
}

// SetRole records what the instance is doing now.
func (h *Health) SetRole(r Role) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.role != r {
		h.role, h.since = r, time.Now()
	}
}

// Role returns what the instance is doing.
func (h *Health) Role() Role {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.role
}

// Attach installs the probes of the running pipeline; until then the relay
// is judged by its role alone.
func (h *Health) Attach(p Probes) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.probes, h.attached, h.attachedAt = p, true, time.Now()
}

// Live returns nil while the relay is alive, else why it is not.
func (h *Health) Live(now time.Time) error {
	h.mu.Lock()
	role, p, attached, attachedAt := h.role, h.probes, h.attached, h.attachedAt
	h.mu.Unlock()
	if role == RoleUnhealthy {
		return fmt.Errorf("relay stopped on an error")
	}
	if role != RoleLeader || !attached {
		return nil
	}
	if beat := p.Heartbeat(); now.Sub(beat) > h.beatTimeout {
		return fmt.Errorf("replication loop silent for %s", now.Sub(beat).Round(time.Second))
	}
	oldest, pending := p.OldestPending()
	if !pending || !p.PostgresUp() || !p.NATSUp() {
		return nil
	}
	// Progress is measured from the latest of the last ack, the oldest
	// pending commit and the pipeline's start: neither a fresh event after
	// a quiet hour nor a backlog found at startup is a stall.
	since := p.LastProgress()
	for _, t := range []time.Time{oldest, attachedAt} {
		if t.After(since) {
			since = t
		}
	}
	if stalled := now.Sub(since); stalled > h.stallTimeout {
		return fmt.Errorf("events pending and none acknowledged for %s while PostgreSQL and NATS are up", stalled.Round(time.Second))
	}
	return nil
}

// Ready returns nil while the relay does its job: a leader streaming with
// both servers up, or a standby ready to take over.
func (h *Health) Ready() error {
	h.mu.Lock()
	role, p, attached := h.role, h.probes, h.attached
	h.mu.Unlock()
	switch role {
	case RoleStandby:
		return nil
	case RoleLeader:
		if !attached {
			return fmt.Errorf("starting")
		}
		if !p.PostgresUp() {
			return fmt.Errorf("not streaming from PostgreSQL")
		}
		if !p.NATSUp() {
			return fmt.Errorf("not connected to NATS")
		}
		return nil
	case RoleWaiting:
		return fmt.Errorf("cannot reach PostgreSQL to stand by")
	default:
		return fmt.Errorf("%s", role)
	}
}
