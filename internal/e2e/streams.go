package e2e

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"time"

	e2ev1 "github.com/parleyrpc/parley/internal/e2e/gen/e2e/v1"
	"github.com/parleyrpc/parley/internal/e2e/gen/e2e/v1/e2ev1parley"
	"github.com/parleyrpc/parley/runtime/parley"
)

// StreamService implements e2e.v1.StreamService. The zero value is ready.
type StreamService struct {
	mu       sync.Mutex
	outcomes map[string]*streamOutcome
}

type streamOutcome struct {
	done   chan struct{}
	result string
	items  int32
}

func (s *StreamService) outcomeFor(token string) *streamOutcome {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.outcomes == nil {
		s.outcomes = make(map[string]*streamOutcome)
	}
	o := s.outcomes[token]
	if o == nil {
		o = &streamOutcome{done: make(chan struct{})}
		s.outcomes[token] = o
	}
	return o
}

// record notes how the stream with token ended (once).
func (s *StreamService) record(token string, ctx context.Context, err error, items int32) {
	if token == "" {
		return
	}
	o := s.outcomeFor(token)
	result := "completed"
	if ctx.Err() != nil {
		result = parley.CodeOf(ctx.Err()).String()
	} else if err != nil {
		result = parley.CodeOf(err).String()
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	select {
	case <-o.done:
	default:
		o.result, o.items = result, items
		close(o.done)
	}
}

func failure(code, message string) error {
	var c parley.Code
	if err := c.UnmarshalText([]byte(code)); err != nil {
		return parley.NewError(parley.CodeInvalidArgument, err.Error())
	}
	return parley.NewError(c, message)
}

// Count streams the numbers the request asks for.
func (s *StreamService) Count(ctx context.Context, req *e2ev1.CountRequest, stream *parley.ServerStream[e2ev1.CountResponse]) (err error) {
	var sent int32
	defer func() { s.record(req.GetToken(), ctx, err, sent) }()
	for i := range req.GetCount() {
		if d := req.GetDelayMs(); d > 0 {
			t := time.NewTimer(time.Duration(d) * time.Millisecond)
			select {
			case <-t.C:
			case <-ctx.Done():
				t.Stop()
				return ctx.Err()
			}
		}
		if err := stream.Send(&e2ev1.CountResponse{N: req.GetFrom() + i}); err != nil {
			return err
		}
		sent++
	}
	if req.GetFailCode() != "" {
		return failure(req.GetFailCode(), req.GetFailMessage())
	}
	return nil
}

// Sum adds what it receives.
func (s *StreamService) Sum(ctx context.Context, stream *parley.ClientStream[e2ev1.SumRequest]) (*e2ev1.SumResponse, error) {
	res := &e2ev1.SumResponse{}
	for {
		req, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return res, nil
		}
		if err != nil {
			return nil, err
		}
		if req.GetFailCode() != "" {
			return nil, failure(req.GetFailCode(), fmt.Sprintf("failed after %d items", res.Count))
		}
		res.Sum += req.GetValue()
		res.Count++
	}
}

// Echo answers every item with itself.
func (s *StreamService) Echo(ctx context.Context, stream *parley.BidiStream[e2ev1.EchoItem, e2ev1.EchoItem]) (err error) {
	var token string
	var n int32
	defer func() { s.record(token, ctx, err, n) }()
	for {
		item, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		if n == 0 {
			token = item.GetToken()
		}
		n++
		if item.GetFailCode() != "" {
			return failure(item.GetFailCode(), "echo failed on "+item.GetText())
		}
		if err := stream.Send(item); err != nil {
			return err
		}
	}
}

// StreamOutcome waits for the stream with the token to end.
func (s *StreamService) StreamOutcome(ctx context.Context, req *e2ev1.StreamOutcomeRequest) (*e2ev1.StreamOutcomeResponse, error) {
	o := s.outcomeFor(req.GetToken())
	t := time.NewTimer(5 * time.Second)
	defer t.Stop()
	select {
	case <-o.done:
		return &e2ev1.StreamOutcomeResponse{Outcome: o.result, Items: o.items}, nil
	case <-t.C:
		return nil, parley.Errorf(parley.CodeNotFound, "no stream with token %q ended within 5s", req.GetToken())
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// PushService implements e2e.v1.PushService: it publishes events to, and
// calls, the calling connection.
type PushService struct {
	Events *e2ev1parley.ClientEventsPublisher
}

// Subscribe publishes req.Count Tick events to the caller.
func (s *PushService) Subscribe(ctx context.Context, req *e2ev1.SubscribeRequest) (*e2ev1.SubscribeResponse, error) {
	peer, ok := parley.PeerFromContext(ctx)
	if !ok {
		return nil, parley.NewError(parley.CodeInternal, "no peer")
	}
	for i := range req.GetCount() {
		if err := s.Events.Tick(ctx, parley.ToConn(peer.ID()), &e2ev1.TickEvent{Seq: i + 1}); err != nil {
			return nil, err
		}
	}
	return &e2ev1.SubscribeResponse{Published: req.GetCount()}, nil
}

// AskBack calls the caller's ClientEvents.Confirm.
func (s *PushService) AskBack(ctx context.Context, req *e2ev1.AskRequest) (*e2ev1.AskResponse, error) {
	peer, ok := parley.PeerFromContext(ctx)
	if !ok {
		return nil, parley.NewError(parley.CodeInternal, "no peer")
	}
	if ms := req.GetTimeoutMs(); ms > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, time.Duration(ms)*time.Millisecond)
		defer cancel()
	}
	res, err := e2ev1parley.NewClientEventsClient(peer).Confirm(ctx, &e2ev1.ConfirmRequest{Question: req.GetQuestion()})
	if err != nil {
		var perr *parley.Error
		if errors.As(err, &perr) {
			return &e2ev1.AskResponse{Error: perr.Code().String() + ": " + perr.Message()}, nil
		}
		return &e2ev1.AskResponse{Error: err.Error()}, nil
	}
	return &e2ev1.AskResponse{Answer: res.GetAnswer()}, nil
}
