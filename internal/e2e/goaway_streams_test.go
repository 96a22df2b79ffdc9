package e2e_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/parleyrpc/parley/internal/e2e"
	e2ev1 "github.com/parleyrpc/parley/internal/e2e/gen/e2e/v1"
	"github.com/parleyrpc/parley/internal/e2e/gen/e2e/v1/e2ev1parley"
	"github.com/parleyrpc/parley/internal/faultproxy"
	"github.com/parleyrpc/parley/runtime/parley"
)

// countingStreams is the e2e StreamService, counting the Count calls it
// serves.
type countingStreams struct {
	*e2e.StreamService
	served atomic.Int64
}

func (s *countingStreams) Count(ctx context.Context, req *e2ev1.CountRequest, stream *parley.ServerStream[e2ev1.CountResponse]) error {
	s.served.Add(1)
	return s.StreamService.Count(ctx, req, stream)
}

// TestServerStreamsOpenedDuringGoAwayOpenAgain: while a server shuts down
// behind a proxy that sends new connections to another, clients keep
// opening server streams. One whose call reaches the first server after
// its GoAway is refused unrun; it opens again on the next socket, as a
// unary call is sent again, so none fails.
func TestServerStreamsOpenedDuringGoAwayOpenAgain(t *testing.T) {
	type backend struct {
		srv     *parley.Server
		hs      *httptest.Server
		streams *countingStreams
	}
	newBackend := func() *backend {
		b := &backend{srv: parley.NewServer(), streams: &countingStreams{StreamService: &e2e.StreamService{}}}
		e2ev1parley.RegisterStreamServiceServer(b.srv, b.streams)
		b.hs = httptest.NewServer(b.srv)
		t.Cleanup(b.hs.Close)
		return b
	}
	a, b := newBackend(), newBackend()
	proxy, err := faultproxy.New(strings.TrimPrefix(a.hs.URL, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer proxy.Close()

	stop := make(chan struct{})
	var wg sync.WaitGroup
	var opened, failed atomic.Int64
	var firstErr atomic.Value
	for i := range 4 {
		opts := []parley.ClientOption{parley.WithReconnect(parley.Backoff{Initial: time.Millisecond, Max: 10 * time.Millisecond, Multiplier: 2})}
		if i%2 == 1 {
			opts = append(opts, parley.WithJSON())
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		conn, err := parley.Dial(ctx, "ws://"+proxy.Addr(), opts...)
		cancel()
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		client := e2ev1parley.NewStreamServiceClient(conn)
		for g := range 4 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for k := 0; ; k++ {
					select {
					case <-stop:
						return
					default:
					}
					err := countTo(client, int32(k%4))
					opened.Add(1)
					if err != nil {
						failed.Add(1)
						firstErr.CompareAndSwap(nil, fmt.Errorf("client %d/%d stream %d: %w", i, g, k, err))
					}
				}
			}()
		}
	}
	waitFor := func(what string, ok func() bool) {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for !ok() {
			if time.Now().After(deadline) {
				t.Fatalf("%s: not within 10s", what)
			}
			time.Sleep(time.Millisecond) // polling a counter, not standing in for an event
		}
	}
	waitFor("streams on the first server", func() bool { return a.streams.served.Load() >= 300 })
	proxy.SetBackend(strings.TrimPrefix(b.hs.URL, "http://"))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := a.srv.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	waitFor("streams on the second server", func() bool { return b.streams.served.Load() >= 300 })
	close(stop)
	wg.Wait()
	t.Logf("%d streams: %d served by the first server, %d by the second, %d failed", opened.Load(), a.streams.served.Load(), b.streams.served.Load(), failed.Load())
	if failed.Load() > 0 {
		t.Fatalf("%d streams failed; the first: %v", failed.Load(), firstErr.Load())
	}
}

// countTo opens a server stream of n items and reads it to its end.
func countTo(client e2ev1parley.StreamServiceClient, n int32) error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	st, err := client.Count(ctx, &e2ev1.CountRequest{Count: n})
	if err != nil {
		return err
	}
	for want := int32(0); ; want++ {
		res, err := st.Recv()
		if errors.Is(err, io.EOF) {
			if want != n {
				return fmt.Errorf("ended after %d items of %d", want, n)
			}
			return nil
		}
		if err != nil {
			return err
		}
		if res.GetN() != want {
			return fmt.Errorf("item %d, want %d", res.GetN(), want)
		}
	}
}
