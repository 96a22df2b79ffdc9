package parley

import (
	"context"
	"log/slog"
	"time"

	"google.golang.org/protobuf/proto"
)

// NewLogInterceptor returns an interceptor that logs every call and event
// it sees with l: "parley: received" when a handler starts, "parley: sent"
// when a client call or a published event leaves, both at debug level with
// the method, side and call id, and each failure at warn level with its
// code. Install it on either side with WithInterceptors; the level of l's
// handler decides how quiet it is (the runtime's own logger, WithLogger,
// discards everything by default).
//
// It doubles as the example for the hooks other libraries call
// onMessageReceived, onMessageSent and onError: an interceptor sees the
// request before next and the response or error after it.
func NewLogInterceptor(l *slog.Logger) Interceptor {
	return func(next UnaryFunc) UnaryFunc {
		return func(ctx context.Context, req proto.Message) (proto.Message, error) {
			ci, _ := CallInfoFromContext(ctx)
			attrs := []any{"method", ci.Spec.Procedure, "side", ci.Side.String()}
			if ci.ID != 0 {
				attrs = append(attrs, "id", ci.ID)
			}
			if ci.Event {
				attrs = append(attrs, "event", true)
			}
			msg := "parley: sent"
			if ci.Side == SideServer && !ci.Event || ci.Side == SideClient && ci.Event {
				msg = "parley: received"
			}
			start := time.Now()
			l.DebugContext(ctx, msg, attrs...)
			res, err := next(ctx, req)
			if err != nil {
				l.WarnContext(ctx, "parley: call failed", append(attrs, "code", CodeOf(err).String(), "err", err, "elapsed", time.Since(start))...)
			}
			return res, err
		}
	}
}
