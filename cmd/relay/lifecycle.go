package main

import (
	"context"
	"errors"
	"fmt"

	"go.uber.org/zap"
)

// leaderRole is what this instance does in the leadership lifecycle.
type leaderRole int

const (
	// roleStandby waits for the lease (with election off it is won at
	// once).
	roleStandby leaderRole = iota
	// roleLeader holds the lease: it builds the pipeline and runs it.
	roleLeader
	// roleDraining stops the pipeline in order and gives the lease up.
	roleDraining
	// roleStopped is the end: nothing runs any more.
	roleStopped
)

func (r leaderRole) String() string {
	switch r {
	case roleStandby:
		return "standby"
	case roleLeader:
		return "leader"
	case roleDraining:
		return "draining"
	case roleStopped:
		return "stopped"
	}
	return fmt.Sprintf("role(%d)", int(r))
}

// transitions lists, for each role, the roles it may change to. A draining
// leader stands by again only when its lease was lost; anything else stops.
var transitions = map[leaderRole][]leaderRole{
	roleStandby:  {roleLeader, roleStopped},
	roleLeader:   {roleDraining},
	roleDraining: {roleStandby, roleStopped},
}

func allowed(from, to leaderRole) bool {
	for _, r := range transitions[from] {
		if r == to {
			return true
		}
	}
	return false
}

// ending is why a leadership term ends.
type ending int

const (
	// endShutdown: ctx is done (a signal).
	endShutdown ending = iota
	// endLost: the lease may have ended; another instance may lead.
	endLost
	// endFailed: the pipeline stopped on its own (an error no retry fixes).
	endFailed
)

func (e ending) String() string {
	switch e {
	case endShutdown:
		return "shutdown"
	case endLost:
		return "lost"
	case endFailed:
		return "failed"
	}
	return fmt.Sprintf("ending(%d)", int(e))
}

// endingOf decides why a term ends when the pipeline stopped or a signal
// came: a shutdown wins over a lost lease, and a lost lease over a failure,
// since whatever failed may have been cut short by losing the slot.
func endingOf(shutdown, lost bool) ending {
	switch {
	case shutdown:
		return endShutdown
	case lost:
		return endLost
	default:
		return endFailed
	}
}

// lease is held leadership (leader.Lease, or unelected when election is
// off).
type lease interface {
	// Lost is closed when the lease may have ended.
	Lost() <-chan struct{}
	// Err says why it was lost; nil while held.
	Err() error
	// Release gives the lease up and waits until it is.
	Release()
}

// unelected is the lease of an instance that runs without election: never
// lost, nothing to release.
type unelected struct{}

func (unelected) Lost() <-chan struct{} { return nil }
func (unelected) Err() error            { return nil }
func (unelected) Release()              {}

// lifecycle runs the instance's roles: standby until the lease is won,
// leader while the pipeline runs, draining while it stops in order, then
// standby again after a lost lease, or stopped.
type lifecycle struct {
	// elect blocks until the lease is won, or fails (ctx done, or a
	// configuration that can never lead).
	elect func(ctx context.Context) (lease, error)
	// build wires the pipeline; it gives up when ctx is done, which
	// happens when the lease is lost meanwhile.
	build func(ctx context.Context) (*pipeline, error)
	// fatal reports whether a lost lease's error means the instance must
	// stop rather than stand by again.
	fatal func(leaseErr error) bool
	// report is told every transition, to instrument it (health role,
	// leader gauge, metrics of a past leadership); why is meaningful for
	// roleDraining and what follows it.
	report func(to leaderRole, why ending)
	log    *zap.Logger

	role leaderRole
}

// to changes the role; a transition the table does not allow is a bug.
func (l *lifecycle) to(r leaderRole, why ending) {
	if !allowed(l.role, r) {
		panic(fmt.Sprintf("lifecycle: %s -> %s is not a transition", l.role, r))
	}
	l.role = r
	l.report(r, why)
}

// Run goes through the roles until ctx is done or a failure no standby can
// fix. It returns nil after a shutdown by ctx.
func (l *lifecycle) Run(ctx context.Context) error {
	l.role = roleStandby
	l.report(roleStandby, endShutdown)
	for {
		ls, err := l.elect(ctx)
		if err != nil {
			l.to(roleStopped, endingOf(ctx.Err() != nil, false))
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
		l.to(roleLeader, endShutdown)
		why, err := l.term(ctx, ls)
		switch {
		case why == endLost && l.fatal(ls.Err()):
			l.to(roleStopped, why)
			return errors.Join(ls.Err(), err)
		case why == endLost:
			l.log.Info("stepped down, standing by", zap.Error(err))
			l.to(roleStandby, why)
		default:
			l.to(roleStopped, why)
			if why == endShutdown && errors.Is(err, context.Canceled) {
				return nil
			}
			return err
		}
	}
}

// term is one leadership: build the pipeline, run it until ctx is done, the
// lease is lost or the pipeline stops on its own, then stop it in order and
// give the lease up.
func (l *lifecycle) term(ctx context.Context, ls lease) (ending, error) {
	p, err := l.buildUnlessLost(ctx, ls)
	if err != nil {
		why := l.drain(ctx, ls)
		ls.Release()
		return why, err
	}
	p.Start()
	select {
	case <-ctx.Done():
	case <-ls.Lost():
	case <-p.Done():
	}
	why := l.drain(ctx, ls)
	err = p.Stop()
	ls.Release()
	return why, err
}

// drain decides why the term ends and enters roleDraining.
func (l *lifecycle) drain(ctx context.Context, ls lease) ending {
	lost := false
	select {
	case <-ls.Lost():
		lost = true
		l.log.Warn("leadership lost, stepping down", zap.Error(ls.Err()))
	default:
	}
	why := endingOf(ctx.Err() != nil, lost)
	l.to(roleDraining, why)
	return why
}

// buildUnlessLost builds the pipeline, giving up when the lease is lost
// meanwhile.
func (l *lifecycle) buildUnlessLost(ctx context.Context, ls lease) (*pipeline, error) {
	bctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stop := make(chan struct{})
	defer close(stop)
	go func() {
		select {
		case <-ls.Lost():
			cancel()
		case <-stop:
		}
	}()
	return l.build(bctx)
}

// stage is a long-running part of the pipeline: it runs until ctx is done
// or it fails.
type stage interface {
	Run(ctx context.Context) error
}

// source is the stage that owns the replication connection (cdc.Reader).
type source interface {
	stage
	// Retire forbids new replication sessions and ending anyone else's;
	// the session the source has goes on until its ctx is done.
	Retire()
}

// stageFunc adapts a function to a stage.
type stageFunc func(ctx context.Context) error

func (f stageFunc) Run(ctx context.Context) error { return f(ctx) }

// pipeline is what runs while this instance leads: the reader, which owns
// the replication connection; the pump, which publishes what the reader
// hands it; and the slot monitor. Start runs them; Stop stops them in the
// order that loses nothing and leaves the slot to whoever leads next.
type pipeline struct {
	reader  source
	pump    stage
	monitor stage
	// janitor, when cleanup is on, deletes old outbox rows; nil otherwise.
	janitor stage
	// close releases what the stages shared (the publisher), once they
	// have all stopped.
	close func()

	stopReader, stopPump, stopMonitor, stopJanitor context.CancelFunc
	readerErr, pumpErr                             error
	readerDone, pumpDone, monitorDone, janitorDone chan struct{}
}

// Start runs the stages, each until Stop stops it or it ends on its own.
// Their contexts are their own: only Stop ends them, in order.
func (p *pipeline) Start() {
	var readerCtx, pumpCtx, monitorCtx context.Context
	readerCtx, p.stopReader = context.WithCancel(context.Background())
	pumpCtx, p.stopPump = context.WithCancel(context.Background())
	monitorCtx, p.stopMonitor = context.WithCancel(context.Background())
	p.readerDone, p.pumpDone, p.monitorDone = make(chan struct{}), make(chan struct{}), make(chan struct{})
	go func() {
		defer close(p.readerDone)
		p.readerErr = p.reader.Run(readerCtx)
	}()
	go func() {
		defer close(p.monitorDone)
		_ = p.monitor.Run(monitorCtx) // the monitor only reports
	}()
	go func() {
		defer close(p.pumpDone)
		p.pumpErr = p.pump.Run(pumpCtx)
	}()
	var janitorCtx context.Context
	janitorCtx, p.stopJanitor = context.WithCancel(context.Background())
	p.janitorDone = make(chan struct{})
	go func() {
		defer close(p.janitorDone)
		if p.janitor != nil {
			_ = p.janitor.Run(janitorCtx) // the janitor logs and counts its errors
		}
	}()
}

// Done is closed when the pump has stopped on its own: a poison event, or
// the reader ended (its events closed) on an error no retry fixes.
func (p *pipeline) Done() <-chan struct{} { return p.pumpDone }

// Stop stops the stages in order and returns what they failed with:
//
//  1. The janitor (with --retention) is told to stop, cancelling a
//     statement it has running: only the leader cleans. The reader is
//     retired: it starts no new replication session and ends
//     nobody else's, so that once this instance has lost its lease the new
//     leader keeps the slot (and after a shutdown no reconnect happens
//     while the rest winds down).
//  2. The pump stops taking events and lets its publishes in flight settle
//     within --shutdown-timeout, acknowledging those stored.
//  3. The reader sends its final status, confirming what the pump got
//     acknowledged, on the session it has, and closes it.
//  4. The slot monitor and the janitor stop, and the publisher is closed.
//
// The caller gives the lease up after Stop: until the reader has closed its
// session, a new leader would only have to end it.
func (p *pipeline) Stop() error {
	p.stopJanitor()
	p.reader.Retire()
	p.stopPump()
	<-p.pumpDone
	p.stopReader()
	<-p.readerDone
	p.stopMonitor()
	<-p.monitorDone
	<-p.janitorDone
	p.close()
	return errors.Join(p.pumpErr, p.readerErr)
}
