package stream

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"testing"

	benchv1 "github.com/parleyrpc/parley/bench/gen/bench/v1"
)

// BenchmarkStream is the stream table's matrix (servers in this process)
// as a go test benchmark, for profiling one case at a time:
//
//	cd bench && go test ./stream -run '^$' -bench 'Stream/parley/streams=1$' -benchmem -cpuprofile cpu.out
//
// An op is one 1 KiB item echoed; allocs/op and B/op are the whole
// process's, client and server together.
func BenchmarkStream(b *testing.B) {
	ctx := context.Background()
	for _, name := range Names {
		b.Run(name, func(b *testing.B) {
			t, err := New(ctx, name)
			if err != nil {
				b.Fatal(err)
			}
			defer t.Close()
			for _, streams := range []int{1, 64} {
				b.Run(fmt.Sprintf("streams=%d", streams), func(b *testing.B) {
					benchStream(b, t, streams, 1024)
				})
			}
		})
	}
}

// benchStream echoes b.N items spread over streams streams and waits for
// every echo.
func benchStream(b *testing.B, t *Target, streams, size int) {
	ctx := context.Background()
	req := &benchv1.EchoRequest{Data: make([]byte, size)}
	b.ReportAllocs()
	b.SetBytes(int64(size))
	b.ResetTimer()
	var wg sync.WaitGroup
	errs := make(chan error, 2*streams)
	for i := range streams {
		n := b.N / streams
		if i < b.N%streams {
			n++
		}
		s, err := t.Open(ctx)
		if err != nil {
			b.Fatal(err)
		}
		wg.Add(2)
		go func() {
			defer wg.Done()
			for range n {
				if err := s.Send(req); err != nil {
					errs <- err
					return
				}
			}
			if err := s.CloseSend(); err != nil {
				errs <- err
			}
		}()
		go func() {
			defer wg.Done()
			for got := 0; ; got++ {
				res, err := s.Recv()
				if errors.Is(err, io.EOF) {
					if got != n {
						errs <- fmt.Errorf("%d echoes, want %d", got, n)
					}
					return
				}
				if err != nil {
					errs <- err
					return
				}
				if len(res.Data) != size {
					errs <- fmt.Errorf("an echo of %d bytes, want %d", len(res.Data), size)
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		b.Fatal(err)
	}
}
