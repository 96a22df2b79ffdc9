// Package e2e is the service every end-to-end test calls, from Go, Node and
// the browser: internal/e2e/cmd/e2eserver serves it.
package e2e

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	e2ev1 "github.com/parleyrpc/parley/internal/e2e/gen/e2e/v1"
	"github.com/parleyrpc/parley/runtime/parley"
	"google.golang.org/protobuf/types/known/emptypb"
)

// EchoService implements e2e.v1.EchoService. The zero value is ready.
type EchoService struct {
	mu       sync.Mutex
	outcomes map[string]*outcome
}

// outcome is what a Sleep call with a token ended with.
type outcome struct {
	started    chan struct{} // closed when the call's handler starts
	done       chan struct{}
	result     string
	deadlineMs int64
}

func (s *EchoService) outcomeFor(token string) *outcome {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.outcomes == nil {
		s.outcomes = make(map[string]*outcome)
	}
	o := s.outcomes[token]
	if o == nil {
		o = &outcome{started: make(chan struct{}), done: make(chan struct{})}
		s.outcomes[token] = o
	}
	return o
}

// Started is closed once the Sleep call with the token has started on the
// server: a test in the server's process waits on it before it acts on a
// call in flight (another call's reply proves nothing: the two were sent
// from different goroutines).
func (s *EchoService) Started(token string) <-chan struct{} { return s.outcomeFor(token).started }

// Echo returns its request, its text repeated req.Repeat times when that
// is more than 1.
func (s *EchoService) Echo(_ context.Context, req *e2ev1.EchoRequest) (*e2ev1.EchoResponse, error) {
	text := req.GetText()
	if n := req.GetRepeat(); n > 1 {
		text = strings.Repeat(text, int(n))
	}
	return &e2ev1.EchoResponse{Text: text, Data: req.GetData()}, nil
}

// Sleep waits for req.Ms or until ctx ends and records how it ended.
func (s *EchoService) Sleep(ctx context.Context, req *e2ev1.SleepRequest) (*e2ev1.SleepResponse, error) {
	var deadlineMs int64
	if dl, ok := ctx.Deadline(); ok {
		deadlineMs = time.Until(dl).Milliseconds()
	}
	var o *outcome
	if req.GetToken() != "" {
		o = s.outcomeFor(req.GetToken())
		s.mu.Lock()
		select {
		case <-o.started: // a token's call may run again (idempotent, re-sent)
		default:
			close(o.started)
		}
		s.mu.Unlock()
	}
	t := time.NewTimer(time.Duration(req.GetMs()) * time.Millisecond)
	defer t.Stop()
	result := "completed"
	select {
	case <-t.C:
	case <-ctx.Done():
		result = parley.CodeOf(ctx.Err()).String()
	}
	if o != nil {
		o.result, o.deadlineMs = result, deadlineMs
		close(o.done)
	}
	if result != "completed" {
		return nil, ctx.Err()
	}
	return &e2ev1.SleepResponse{DeadlineMs: deadlineMs}, nil
}

// SleepWithDefault is Sleep; its method has a 300 ms default deadline.
func (s *EchoService) SleepWithDefault(ctx context.Context, req *e2ev1.SleepRequest) (*e2ev1.SleepResponse, error) {
	return s.Sleep(ctx, req)
}

// Outcome waits for the Sleep call with the token to end.
func (s *EchoService) Outcome(ctx context.Context, req *e2ev1.OutcomeRequest) (*e2ev1.OutcomeResponse, error) {
	o := s.outcomeFor(req.GetToken())
	t := time.NewTimer(5 * time.Second)
	defer t.Stop()
	select {
	case <-o.done:
		return &e2ev1.OutcomeResponse{Outcome: o.result, DeadlineMs: o.deadlineMs}, nil
	case <-t.C:
		return nil, parley.Errorf(parley.CodeNotFound, "no Sleep call with token %q ended within 5s", req.GetToken())
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// Fail returns the error the request describes.
func (s *EchoService) Fail(_ context.Context, req *e2ev1.FailRequest) (*emptypb.Empty, error) {
	var code parley.Code
	if err := code.UnmarshalText([]byte(req.GetCode())); err != nil {
		return nil, parley.NewError(parley.CodeInvalidArgument, err.Error())
	}
	return nil, parley.NewError(code, req.GetMessage())
}

// Panic panics.
func (s *EchoService) Panic(context.Context, *emptypb.Empty) (*emptypb.Empty, error) {
	panic(errors.New("e2e: Panic was called"))
}

// String names the service in logs.
func (s *EchoService) String() string { return fmt.Sprintf("e2e.EchoService(%p)", s) }
