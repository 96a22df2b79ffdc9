package parley_test

import (
	"context"
	"log/slog"
	"os"

	"google.golang.org/protobuf/proto"

	"github.com/parleyrpc/parley/runtime/parley"
)

// Interceptors are where the onMessageReceived, onMessageSent and onError
// hooks of other libraries live: one function sees the request, the
// response and the error of every call, on either side.
func ExampleInterceptor() {
	hooks := func(next parley.UnaryFunc) parley.UnaryFunc {
		return func(ctx context.Context, req proto.Message) (proto.Message, error) {
			ci, _ := parley.CallInfoFromContext(ctx)
			// onMessageReceived (server) / onMessageSent (client):
			slog.Info("call", "method", ci.Spec.Procedure, "side", ci.Side)
			res, err := next(ctx, req)
			if err != nil {
				// onError:
				slog.Warn("call failed", "method", ci.Spec.Procedure, "code", parley.CodeOf(err))
			}
			return res, err
		}
	}
	logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	srv := parley.NewServer(
		parley.WithInterceptors(hooks, parley.NewLogInterceptor(logger)),
		parley.WithLogger(logger), // the runtime's own messages: panics, slow consumers, ...
	)
	_ = srv
}

// Events go to targets: a connection, a user's devices, a room, everyone,
// optionally except one connection. Generated publishers wrap Publish.
func ExampleServer_Publish() {
	srv := parley.NewServer()
	spec := &parley.MethodSpec{Procedure: "/chat.v1.ChatEvents/MessagePosted"}
	var msg proto.Message // a *chatv1.ChatMessage
	ctx := context.Background()
	if msg != nil {
		_ = srv.Publish(ctx, parley.ToRoom("lobby").Except("sender-conn-id"), spec, msg)
	}
}
