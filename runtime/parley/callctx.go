package parley

import (
	"context"
	"sync"
	"time"

	"google.golang.org/protobuf/proto"
)

// callCtx is the context of one incoming unary call, and its bookkeeping,
// in a single allocation. The standard library's equivalent (a cancel
// context, a value for the CallInfo and a timer context) costs about ten
// allocations a call; this one makes its Done channel, timer and link to
// the connection's context only if the handler asks for Done.
//
// It ends when the call is cancelled (a Cancel frame, the connection
// closing, the call finishing) or its deadline passes.
type callCtx struct {
	ci          CallInfo
	parent      context.Context // the connection's context
	deadline    time.Time
	hasDeadline bool
	req         proto.Message
	abandoned   bool // guarded by endpoint.mu: the caller sent Cancel

	mu         sync.Mutex
	done       chan struct{}
	err        error
	timer      *time.Timer
	stopParent func() bool
}

func (c *callCtx) Deadline() (time.Time, bool) { return c.deadline, c.hasDeadline }

func (c *callCtx) Done() <-chan struct{} {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.done != nil {
		return c.done
	}
	c.done = make(chan struct{})
	c.checkLocked()
	if c.err != nil {
		close(c.done)
		return c.done
	}
	if c.hasDeadline {
		c.timer = time.AfterFunc(time.Until(c.deadline), func() { c.cancel(context.DeadlineExceeded) })
	}
	c.stopParent = context.AfterFunc(c.parent, func() { c.cancel(context.Canceled) })
	return c.done
}

func (c *callCtx) Err() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.checkLocked()
	return c.err
}

// checkLocked notices a passed deadline or a closed connection for
// callers who never asked for Done.
func (c *callCtx) checkLocked() {
	if c.err != nil {
		return
	}
	if c.hasDeadline && !time.Now().Before(c.deadline) {
		c.cancelLocked(context.DeadlineExceeded)
	} else if c.parent.Err() != nil {
		c.cancelLocked(context.Canceled)
	}
}

func (c *callCtx) Value(key any) any {
	if key == (callInfoKey{}) {
		return &c.ci
	}
	return c.parent.Value(key)
}

func (c *callCtx) cancel(err error) {
	c.mu.Lock()
	c.cancelLocked(err)
	c.mu.Unlock()
}

func (c *callCtx) cancelLocked(err error) {
	if c.err != nil {
		return
	}
	c.err = err
	if c.done != nil {
		close(c.done)
	}
	if c.timer != nil {
		c.timer.Stop()
	}
	if c.stopParent != nil {
		c.stopParent()
	}
}

func (c *callCtx) String() string { return "parley.callCtx(" + c.ci.Spec.Procedure + ")" }
