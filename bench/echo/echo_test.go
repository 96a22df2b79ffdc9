package echo

import (
	"context"
	"fmt"
	"runtime"
	"testing"
	"time"
)

// BenchmarkEcho is the table's matrix as a go test benchmark, for profiling
// one target at a time:
//
//	cd bench && go test ./echo -run '^$' -bench 'Echo/parley/c=64/' -benchmem -cpuprofile cpu.out -memprofile mem.out
//
// allocs/op and B/op are the whole process's: client and server together.
func BenchmarkEcho(b *testing.B) {
	ctx := context.Background()
	for _, name := range Names {
		b.Run(name, func(b *testing.B) {
			t, err := New(ctx, name)
			if err != nil {
				b.Fatal(err)
			}
			defer t.Close()
			for _, c := range []int{1, 64} {
				for _, size := range []int{16, 1024} {
					b.Run(fmt.Sprintf("c=%d/%dB", c, size), func(b *testing.B) {
						benchEcho(b, t, c, size)
					})
				}
			}
		})
	}
}

func benchEcho(b *testing.B, t *Target, concurrency, size int) {
	ctx := context.Background()
	payload := make([]byte, size)
	b.ReportAllocs()
	if concurrency == 1 {
		call := t.NewCaller(payload)
		b.ResetTimer()
		for b.Loop() {
			if err := call(ctx); err != nil {
				b.Fatal(err)
			}
		}
		return
	}
	b.SetParallelism(max(1, concurrency/runtime.GOMAXPROCS(0)))
	b.RunParallel(func(pb *testing.PB) {
		call := t.NewCaller(payload)
		for pb.Next() {
			if err := call(ctx); err != nil {
				b.Error(err)
				return
			}
		}
	})
}

// TestTargets checks every target echoes, concurrently, before anyone
// trusts its numbers.
func TestTargets(t *testing.T) {
	ctx := context.Background()
	for _, name := range Names {
		t.Run(name, func(t *testing.T) {
			tg, err := New(ctx, name)
			if err != nil {
				t.Fatal(err)
			}
			defer tg.Close()
			r, err := Run(ctx, tg, 8, 100, 20*time.Millisecond, 50*time.Millisecond)
			if err != nil {
				t.Fatal(err)
			}
			if r.Calls == 0 {
				t.Fatal("no calls completed")
			}
		})
	}
}
