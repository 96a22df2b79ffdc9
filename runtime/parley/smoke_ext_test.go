package parley_test

import (
	"context"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	e2ev1 "github.com/parleyrpc/parley/internal/e2e/gen/e2e/v1"
	"github.com/parleyrpc/parley/runtime/parley"
	"go.uber.org/goleak"
)

var echoSpec = &parley.MethodSpec{Procedure: "/e2e.v1.EchoService/Echo"}

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

func TestSmoke(t *testing.T) {
	srv := parley.NewServer()
	srv.Register(parley.NewUnaryMethod(echoSpec, func(ctx context.Context, r *e2ev1.EchoRequest) (*e2ev1.EchoResponse, error) {
		return &e2ev1.EchoResponse{Text: r.Text}, nil
	}))
	hs := httptest.NewServer(srv)
	defer hs.Close()
	url := "ws" + strings.TrimPrefix(hs.URL, "http")
	for _, opts := range [][]parley.ClientOption{nil, {parley.WithJSON()}} {
		conn, err := parley.Dial(context.Background(), url, opts...)
		if err != nil {
			t.Fatal(err)
		}
		var wg sync.WaitGroup
		start := time.Now()
		for i := range 1000 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				res := new(e2ev1.EchoResponse)
				if err := conn.Invoke(context.Background(), echoSpec, &e2ev1.EchoRequest{Text: "hi" + string(rune('a'+i%26))}, res); err != nil {
					t.Error(err)
					return
				}
				if res.Text != "hi"+string(rune('a'+i%26)) {
					t.Errorf("got %q", res.Text)
				}
			}()
		}
		wg.Wait()
		t.Log(time.Since(start))
		if err := conn.Close(); err != nil {
			t.Fatal(err)
		}
	}
	if err := srv.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
}
