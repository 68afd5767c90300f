package main

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.uber.org/zap/zaptest"
)

// journal records what the fakes did, in order.
type journal struct {
	mu      sync.Mutex
	entries []string
}

func (j *journal) add(format string, args ...any) {
	j.mu.Lock()
	defer j.mu.Unlock()
	j.entries = append(j.entries, fmt.Sprintf(format, args...))
}

func (j *journal) all() []string {
	j.mu.Lock()
	defer j.mu.Unlock()
	return append([]string(nil), j.entries...)
}

// fakeLease is a lease the test loses by hand.
type fakeLease struct {
	j    *journal
	lost chan struct{}
	err  error
}

func (l *fakeLease) Lost() <-chan struct{} { return l.lost }

func (l *fakeLease) Err() error {
	select {
	case <-l.lost:
		return l.err
	default:
		return nil
	}
}

func (l *fakeLease) Release() { l.j.add("lease released") }

func (l *fakeLease) lose(err error) {
	l.err = err
	close(l.lost)
}

// fakeStage runs until its ctx is done, or until the test ends it with an
// error; the reader also records Retire.
type fakeStage struct {
	j       *journal
	name    string
	running chan struct{}
	fail    chan error
}

func newFakeStage(j *journal, name string) *fakeStage {
	return &fakeStage{j: j, name: name, running: make(chan struct{}), fail: make(chan error, 1)}
}

func (s *fakeStage) Run(ctx context.Context) error {
	close(s.running)
	select {
	case <-ctx.Done():
		s.j.add("%s stopped", s.name)
		return nil
	case err := <-s.fail:
		s.j.add("%s failed", s.name)
		return err
	}
}

func (s *fakeStage) Retire() { s.j.add("%s retired", s.name) }

// world is a lifecycle wired to fakes, one pipeline per term.
type world struct {
	j      *journal
	lc     *lifecycle
	leases chan *fakeLease
	terms  chan *fakeTerm
	roles  []string
	mu     sync.Mutex
}

type fakeTerm struct {
	reader, pump, monitor *fakeStage
}

func newWorld(t *testing.T, buildErr func(ctx context.Context) error) *world {
	w := &world{j: &journal{}, leases: make(chan *fakeLease, 4), terms: make(chan *fakeTerm, 4)}
	w.lc = &lifecycle{
		elect: func(ctx context.Context) (lease, error) {
			l := &fakeLease{j: w.j, lost: make(chan struct{})}
			select {
			case w.leases <- l:
				return l, nil
			case <-ctx.Done():
				return nil, ctx.Err()
			}
		},
		build: func(ctx context.Context) (*pipeline, error) {
			if buildErr != nil {
				if err := buildErr(ctx); err != nil {
					return nil, err
				}
			}
			term := &fakeTerm{newFakeStage(w.j, "reader"), newFakeStage(w.j, "pump"), newFakeStage(w.j, "monitor")}
			w.terms <- term
			return &pipeline{reader: term.reader, pump: term.pump, monitor: term.monitor, close: func() { w.j.add("publisher closed") }}, nil
		},
		fatal: func(err error) bool { return errors.Is(err, errNotDirect) },
		report: func(to leaderRole, why ending) {
			w.mu.Lock()
			defer w.mu.Unlock()
			if to == roleDraining || to == roleStopped || (to == roleStandby && len(w.roles) > 0) {
				w.roles = append(w.roles, to.String()+"("+why.String()+")")
				return
			}
			w.roles = append(w.roles, to.String())
		},
		log: zaptest.NewLogger(t),
	}
	return w
}

func (w *world) reported() []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return append([]string(nil), w.roles...)
}

// run starts the lifecycle and returns its result channel.
func (w *world) run(ctx context.Context) <-chan error {
	done := make(chan error, 1)
	go func() { done <- w.lc.Run(ctx) }()
	return done
}

func (w *world) nextTerm(t *testing.T) (*fakeLease, *fakeTerm) {
	t.Helper()
	var l *fakeLease
	select {
	case l = <-w.leases:
	case <-time.After(10 * time.Second):
		t.Fatal("no lease was won")
	}
	select {
	case term := <-w.terms:
		for _, s := range []*fakeStage{term.reader, term.pump, term.monitor} {
			select {
			case <-s.running:
			case <-time.After(10 * time.Second):
				t.Fatalf("%s was not started", s.name)
			}
		}
		return l, term
	case <-time.After(10 * time.Second):
		t.Fatal("no pipeline was built")
	}
	return nil, nil
}

func wait(t *testing.T, done <-chan error) error {
	t.Helper()
	select {
	case err := <-done:
		return err
	case <-time.After(10 * time.Second):
		t.Fatal("the lifecycle did not end")
	}
	return nil
}

var errNotDirect = errors.New("not a direct session")

// stopOrder is the order Stop takes the pipeline down in, then the lease.
var stopOrder = []string{"reader retired", "pump stopped", "reader stopped", "monitor stopped", "publisher closed", "lease released"}

// TestLifecycleStopOrder: however a leadership ends, the reader is retired
// before anything else stops (so a lost lease's slot is left alone at
// once), the pump settles before the reader sends its final status, and
// the lease goes last.
func TestLifecycleStopOrder(t *testing.T) {
	t.Parallel()
	poison := errors.New("poison event")
	tests := []struct {
		name    string
		end     func(cancel context.CancelFunc, l *fakeLease, term *fakeTerm)
		wantErr error
		journal []string
		roles   []string
	}{
		{
			name:    "shutdown",
			end:     func(cancel context.CancelFunc, _ *fakeLease, _ *fakeTerm) { cancel() },
			journal: stopOrder,
			roles:   []string{"standby", "leader", "draining(shutdown)", "stopped(shutdown)"},
		},
		{
			name: "pump fails",
			end:  func(_ context.CancelFunc, _ *fakeLease, term *fakeTerm) { term.pump.fail <- poison },
			// The pump is already down when the reader is retired.
			journal: []string{"pump failed", "reader retired", "reader stopped", "monitor stopped", "publisher closed", "lease released"},
			wantErr: poison,
			roles:   []string{"standby", "leader", "draining(failed)", "stopped(failed)"},
		},
		{
			name:    "lease found not direct",
			end:     func(_ context.CancelFunc, l *fakeLease, _ *fakeTerm) { l.lose(errNotDirect) },
			journal: stopOrder,
			wantErr: errNotDirect,
			roles:   []string{"standby", "leader", "draining(lost)", "stopped(lost)"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			w := newWorld(t, nil)
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			done := w.run(ctx)
			l, term := w.nextTerm(t)
			tt.end(cancel, l, term)
			err := wait(t, done)
			if tt.wantErr != nil {
				require.ErrorIs(t, err, tt.wantErr)
			} else {
				require.NoError(t, err)
			}
			require.Equal(t, tt.journal, w.j.all())
			require.Equal(t, tt.roles, w.reported())
		})
	}
}

// TestLifecycleStandsByAfterALostLease: a lost lease retires the reader
// first, stops the term in order and stands by for the next lease, which
// starts a new pipeline.
func TestLifecycleStandsByAfterALostLease(t *testing.T) {
	t.Parallel()
	w := newWorld(t, nil)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := w.run(ctx)
	l, _ := w.nextTerm(t)
	l.lose(errors.New("renewal timed out"))
	w.nextTerm(t)
	require.Equal(t, stopOrder, w.j.all(), "the first term stopped in order before the second began")
	cancel()
	require.NoError(t, wait(t, done))
	require.Equal(t, append(stopOrder, stopOrder...), w.j.all())
	require.Equal(t, []string{"standby", "leader", "draining(lost)", "standby(lost)", "leader", "draining(shutdown)", "stopped(shutdown)"}, w.reported())
}

// TestLifecycleLeaseLostWhileBuilding: a lease lost during preflight cuts
// the build short; nothing was started, so only the lease is given up.
func TestLifecycleLeaseLostWhileBuilding(t *testing.T) {
	t.Parallel()
	var lost sync.Once
	w := newWorld(t, nil)
	w.lc.build = func(ctx context.Context) (*pipeline, error) {
		first := false
		lost.Do(func() { first = true })
		if !first {
			return nil, errors.New("second build")
		}
		<-ctx.Done()
		return nil, ctx.Err()
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := w.run(ctx)
	l := <-w.leases
	l.lose(errors.New("renewal timed out"))
	err := wait(t, done)
	require.ErrorContains(t, err, "second build", "the second term's build failure stops the instance")
	require.Equal(t, []string{"lease released", "lease released"}, w.j.all())
	require.Equal(t, []string{"standby", "leader", "draining(lost)", "standby(lost)", "leader", "draining(failed)", "stopped(failed)"}, w.reported())
}

// TestLifecycleShutdownWhileStandingBy: a signal while standing by stops
// cleanly.
func TestLifecycleShutdownWhileStandingBy(t *testing.T) {
	t.Parallel()
	w := newWorld(t, nil)
	w.lc.elect = func(ctx context.Context) (lease, error) {
		<-ctx.Done()
		return nil, ctx.Err()
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := w.run(ctx)
	cancel()
	require.NoError(t, wait(t, done))
	require.Empty(t, w.j.all())
	require.Equal(t, []string{"standby", "stopped(shutdown)"}, w.reported())
}

// TestLifecycleTransitions: the table of transitions, exhaustively, and
// that a transition outside it is refused.
func TestLifecycleTransitions(t *testing.T) {
	t.Parallel()
	roles := []leaderRole{roleStandby, roleLeader, roleDraining, roleStopped}
	want := map[[2]leaderRole]bool{
		{roleStandby, roleLeader}:   true,
		{roleStandby, roleStopped}:  true,
		{roleLeader, roleDraining}:  true,
		{roleDraining, roleStandby}: true,
		{roleDraining, roleStopped}: true,
	}
	for _, from := range roles {
		for _, to := range roles {
			t.Run(from.String()+"->"+to.String(), func(t *testing.T) {
				t.Parallel()
				require.Equal(t, want[[2]leaderRole{from, to}], allowed(from, to))
				l := &lifecycle{role: from, report: func(leaderRole, ending) {}}
				if want[[2]leaderRole{from, to}] {
					require.NotPanics(t, func() { l.to(to, endShutdown) })
					require.Equal(t, to, l.role)
				} else {
					require.Panics(t, func() { l.to(to, endShutdown) })
				}
			})
		}
	}
}

// TestEndingOf: a shutdown wins over a lost lease, which wins over a
// failure.
func TestEndingOf(t *testing.T) {
	t.Parallel()
	tests := []struct {
		shutdown, lost bool
		want           ending
	}{
		{true, true, endShutdown},
		{true, false, endShutdown},
		{false, true, endLost},
		{false, false, endFailed},
	}
	for _, tt := range tests {
		require.Equal(t, tt.want, endingOf(tt.shutdown, tt.lost), "shutdown=%t lost=%t", tt.shutdown, tt.lost)
	}
}
