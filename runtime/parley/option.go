package parley

import (
	"context"
	"crypto/tls"
	"log/slog"
	"net/http"
	"time"
)

// Defaults for the limits. Each has an option of the same name.
const (
	// DefaultMaxMessageBytes is the largest WebSocket message a side reads
	// or sends (see WithMaxMessageBytes). A bigger one received closes the
	// socket with 1009 (message too big) before it is read into memory.
	DefaultMaxMessageBytes = 4 << 20
	// DefaultMaxInFlight is how many calls a server runs at once per
	// connection. Clients learn it from Welcome and queue calls beyond it
	// themselves; a server answers excess calls with resource_exhausted.
	DefaultMaxInFlight = 128
	// DefaultSendQueueBytes bounds the encoded frames waiting to be
	// written on one connection.
	DefaultSendQueueBytes = 1 << 20
	// DefaultStreamBufferBytes bounds the stream items received and not
	// yet read on one connection, all its streams together.
	DefaultStreamBufferBytes = 32 << 20
	// DefaultWriteTimeout is how long one write to the socket may take
	// before the peer is deemed dead or too slow and the socket closes.
	DefaultWriteTimeout = 10 * time.Second
	// DefaultPingInterval is how often each side pings the other.
	DefaultPingInterval = 20 * time.Second
	// DefaultPongTimeout is how long after a ping's due time a side waits
	// for any pong before treating the peer as dead. A dead peer is thus
	// noticed within DefaultPingInterval + DefaultPongTimeout.
	DefaultPongTimeout = 10 * time.Second
	// DefaultHandshakeTimeout bounds the WebSocket upgrade plus the
	// Hello/Welcome exchange.
	DefaultHandshakeTimeout = 10 * time.Second
	// DefaultReadBufferSize is kept for compatibility; see
	// WithReadBufferSize.
	//
	// Deprecated: Parley reads frames itself, from 4 KiB blocks taken
	// from a pool only while they hold unread bytes; a connection keeps no
	// read buffer of its own.
	DefaultReadBufferSize = 512
	// DefaultCallTimeout is a client call's deadline when neither its
	// context nor its method's timeout_ms gives one.
	DefaultCallTimeout = 30 * time.Second
	// DefaultEventQueueBytes bounds the events a client received and its
	// handlers have not run yet (their payloads' bytes).
	DefaultEventQueueBytes = 1 << 20
	// DefaultMaxMetadataBytes bounds the metadata of a Call and of a
	// Hello a side accepts (see WithMaxMetadataBytes).
	DefaultMaxMetadataBytes = 64 << 10
	// DefaultMaxHandshakes bounds the handshakes a server runs at once
	// (see WithMaxHandshakes).
	DefaultMaxHandshakes = 256
)

// config is what both sides' options set.
type config struct {
	maxMessageBytes  int
	maxMetadataBytes int
	maxInFlight      int
	sendQueueBytes   int
	streamBufBytes   int64
	writeTimeout     time.Duration
	writeDelay       time.Duration
	pingInterval     time.Duration
	pongTimeout      time.Duration
	handshakeTimeout time.Duration
	streamWindow     uint32
	streamWinBytes   uint32
	maxStreams       int
	interceptors     []Interceptor
	logger           *slog.Logger

	// server only
	allowedOrigins []string
	authenticate   AuthenticateFunc
	broker         Broker
	resumeWindow   time.Duration
	resumeEvents   int
	resumeReplies  int // bytes
	resumeMemory   int // bytes; 0 for no bound
	maxHandshakes  int
	onOnline       func(userID string)
	onOffline      func(userID string)

	// client only
	callTimeout time.Duration
	eventQueue  int
	token       func(context.Context) (string, error)
	reconnect   *Backoff
	subprotocol string
	metadata    map[string]string
	header      http.Header
	tls         *tls.Config
	register    []func(Registrar)
}

func defaultConfig() config {
	return config{
		maxMessageBytes:  DefaultMaxMessageBytes,
		maxMetadataBytes: DefaultMaxMetadataBytes,
		maxInFlight:      DefaultMaxInFlight,
		sendQueueBytes:   DefaultSendQueueBytes,
		streamBufBytes:   DefaultStreamBufferBytes,
		writeTimeout:     DefaultWriteTimeout,
		pingInterval:     DefaultPingInterval,
		pongTimeout:      DefaultPongTimeout,
		handshakeTimeout: DefaultHandshakeTimeout,
		streamWindow:     DefaultStreamWindow,
		streamWinBytes:   DefaultStreamWindowBytes,
		resumeWindow:     DefaultResumeWindow,
		resumeEvents:     DefaultResumeEvents,
		resumeReplies:    DefaultResumeReplyBytes,
		resumeMemory:     DefaultResumeMemory,
		maxHandshakes:    DefaultMaxHandshakes,
		maxStreams:       DefaultMaxStreams,
		callTimeout:      DefaultCallTimeout,
		eventQueue:       DefaultEventQueueBytes,
		subprotocol:      SubprotocolProto,
		reconnect:        &DefaultBackoff,
		logger:           slog.New(slog.DiscardHandler),
	}
}

// ServerOption configures a Server.
type ServerOption interface{ applyToServer(*config) }

// ClientOption configures a client connection made by Dial.
type ClientOption interface{ applyToClient(*config) }

// Option configures either side.
type Option interface {
	ServerOption
	ClientOption
}

type option func(*config)

func (o option) applyToServer(c *config) { o(c) }
func (o option) applyToClient(c *config) { o(c) }

type serverOption func(*config)

func (o serverOption) applyToServer(c *config) { o(c) }

type clientOption func(*config)

func (o clientOption) applyToClient(c *config) { o(c) }

// WithMaxMessageBytes sets the largest WebSocket message this side reads
// and sends (DefaultMaxMessageBytes). It is advertised to the peer (a
// client's in Hello, a server's in Welcome), and each side sends nothing
// larger than its own limit or the peer's, whichever is smaller:
//
//   - a call too large fails at the caller with CodeResourceExhausted,
//     unsent (the socket and the other calls are unaffected);
//   - a stream item too large fails that SendMsg with
//     CodeResourceExhausted; the stream goes on;
//   - a reply (or error) too large goes as an Error with
//     CodeResourceExhausted naming its size; a resumed session replays
//     that error;
//   - an event too large is not sent to that connection (logged at Warn
//     once per event and connection); others still get it.
//
// A message larger than this side's limit that the peer sends anyway
// (a peer that ignores the advertised limit) closes the socket with 1009.
func WithMaxMessageBytes(n int) Option {
	return option(func(c *config) { c.maxMessageBytes = n })
}

// WithMaxMetadataBytes bounds the metadata this side accepts with a call
// (its keys' and values' bytes, all entries together), and a server the
// metadata and offsets of a Hello (DefaultMaxMetadataBytes). A call the
// handler would keep while it runs is no bigger in memory than
// WithMaxMessageBytes otherwise allows, whereas a map of many short
// entries takes several times its encoded size: 128 calls in flight with
// 4 MiB of it each held 3.2 GB. A call over the bound is answered with
// CodeResourceExhausted (the socket stays); a Hello over it is refused
// the same way and the socket closed with 1009. A server reads a Hello of
// at most twice n plus 4 KiB: a larger one is refused unread, with 1009
// alone.
func WithMaxMetadataBytes(n int) Option {
	return option(func(c *config) { c.maxMetadataBytes = n })
}

// WithMaxHandshakes bounds the WebSocket upgrades and Hello/Welcome
// exchanges a server runs at once (DefaultMaxHandshakes); n <= 0 sets no
// bound. Each holds a socket and up to a Hello's worth of memory before
// WithAuthenticate has seen it. A request beyond the bound waits for a
// place, holding only its HTTP connection, for half the handshake timeout
// (WithHandshakeTimeout) at most; then it is answered 503 Service
// Unavailable, with Retry-After, before the upgrade (a client that was
// connected before reconnects with its backoff).
func WithMaxHandshakes(n int) ServerOption {
	return serverOption(func(c *config) { c.maxHandshakes = n })
}

// metadataBytes is what metadata counts against WithMaxMetadataBytes.
func metadataBytes(md map[string]string) int {
	n := 0
	for k, v := range md {
		n += len(k) + len(v)
	}
	return n
}

// limitOnWire is a message limit as Hello and Welcome carry it.
func limitOnWire(n int) uint32 {
	return uint32(min(max(n, 0), 1<<32-1))
}

// WithSendQueueBytes bounds the encoded frames waiting to be written on
// one connection (DefaultSendQueueBytes).
func WithSendQueueBytes(n int) Option {
	return option(func(c *config) { c.sendQueueBytes = n })
}

// WithWriteTimeout sets how long one write may take (DefaultWriteTimeout).
// The deadline is renewed at most every d/2 (re-arming it per write costs
// a timer operation), so a write the peer does not take fails after
// between d/2 and d.
func WithWriteTimeout(d time.Duration) Option {
	return option(func(c *config) { c.writeTimeout = d })
}

// WithWriteDelay makes a connection's writer, when it starts after being
// idle, wait d for more frames before its first write, so that one write
// carries more frames, at the cost of up to d more latency per frame. Every
// write then happens in a writer goroutine of the connection's own: neither
// callers and handlers writing their own frames nor the Server's event
// flusher, which batch by themselves under load, are used. The default, 0,
// writes at once.
func WithWriteDelay(d time.Duration) Option {
	return option(func(c *config) { c.writeDelay = d })
}

// WithReadBufferSize has no effect.
//
// Deprecated: Parley reads frames itself, from 4 KiB blocks taken from a
// pool only while they hold unread bytes; a connection keeps no read
// buffer of its own. The option is kept so that code using it compiles.
func WithReadBufferSize(n int) Option {
	return option(func(*config) {})
}

// WithKeepalive sets how often this side pings (DefaultPingInterval) and
// how long it then waits for a pong (DefaultPongTimeout) before it treats
// the peer as dead and closes the socket. Bytes arriving from the peer
// count as a pong, so a message that takes longer than that to cross a
// slow link, with the peer's pong behind it, does not end the connection;
// nor does a large message this side sends, which holds back its own
// pings, as long as the peer pings (both Go sides do).
func WithKeepalive(pingInterval, pongTimeout time.Duration) Option {
	return option(func(c *config) { c.pingInterval, c.pongTimeout = pingInterval, pongTimeout })
}

// WithHandshakeTimeout bounds the upgrade plus the Hello/Welcome exchange
// (DefaultHandshakeTimeout).
func WithHandshakeTimeout(d time.Duration) Option {
	return option(func(c *config) { c.handshakeTimeout = d })
}

// WithInterceptors adds interceptors for unary calls and events; the first
// given runs outermost. On a Server they wrap handlers; on a client, round
// trips. Streams are not intercepted: a streaming handler must check for
// itself what the interceptors check (CallInfoFromContext and
// PrincipalFromContext work in it).
func WithInterceptors(interceptors ...Interceptor) Option {
	return option(func(c *config) { c.interceptors = append(c.interceptors, interceptors...) })
}

// WithLogger sets the structured logger. The default discards everything.
func WithLogger(l *slog.Logger) Option {
	return option(func(c *config) { c.logger = l })
}

// WithStreamBufferBytes bounds the bytes of stream items this side has
// received and the application has not read yet, on one connection, all
// its streams together (DefaultStreamBufferBytes). It is the backstop
// behind the stream windows (WithStreamWindow, WithStreamWindowBytes),
// which keep a sender that keeps to its credit within it at the defaults,
// unless many streams carry items near WithMaxMessageBytes at once (an
// item larger than the byte window goes alone), or the peer knows no byte
// credit. An item that would take a connection past the bound ends its
// stream with resource_exhausted (the peer's Send fails with it); the
// other streams carry on.
func WithStreamBufferBytes(n int) Option {
	return option(func(c *config) { c.streamBufBytes = int64(max(1, n)) })
}

// WithStreamWindow sets how many items this side accepts per stream before
// it grants the sender more (DefaultStreamWindow). It bounds a stream's
// receive buffer to that many items, and lets a stalled stream stall only
// itself. Credit goes back every half window the reader consumes; while
// the reader waits for items (or has drained its queue) its window doubles
// at each grant, so that round trips for credit do not hold back a fast
// stream; all of a connection's streams share 63 windows' worth of such
// growth (each live stream at most its share), a window grows only while,
// at the size of its stream's largest item, it stays within the stream's
// share of half of WithStreamBufferBytes, and a reader that falls behind
// never grows its window.
func WithStreamWindow(items int) Option {
	return option(func(c *config) { c.streamWindow = uint32(max(1, items)) })
}

// WithStreamWindowBytes sets how many bytes of items this side accepts per
// stream before it grants the sender more (DefaultStreamWindowBytes); an
// item's bytes are its frame's WebSocket message length. A sender may send
// while it has bytes left, so one item larger than the window still goes,
// alone. With WithStreamWindow it bounds a stream's buffer whatever its
// items' size: the item window limits streams of small items, this one
// streams of large ones, so that a sender keeping to its credit never
// takes the connection past WithStreamBufferBytes because its reader
// paused (at the defaults, 100 streams of items up to 64 KiB fit in the
// 32 MiB). It grows with the item window, while the reader keeps up, within
// the stream's share of half of WithStreamBufferBytes. Credit is granted
// every half window of bytes consumed, as well as every half window of
// items. 0 sets no byte window, as peers from before byte credit did.
func WithStreamWindowBytes(n int) Option {
	return option(func(c *config) { c.streamWinBytes = uint32(min(max(0, n), 1<<30)) })
}

// WithMaxStreams sets how many streams a server keeps open at once per
// connection (DefaultMaxStreams); more fail with resource_exhausted. A
// stream counts until its handler returns, or until its caller's Cancel
// arrives (the caller counts it no longer, and the handler is ending).
func WithMaxStreams(n int) ServerOption {
	return serverOption(func(c *config) { c.maxStreams = n })
}

// WithMaxInFlight sets how many calls a server runs at once per connection
// (DefaultMaxInFlight), and per session: unary calls outlive a dropped
// socket, and a resumed session's calls from its earlier sockets count
// too. Calls beyond it are answered with CodeResourceExhausted.
func WithMaxInFlight(n int) ServerOption {
	return serverOption(func(c *config) { c.maxInFlight = n })
}

// WithAllowedOrigins lets browsers on other origins connect. By default
// only same-origin upgrades (the Origin header's host equals the Host) and
// clients that send no Origin (non-browsers) are accepted; others get 403.
// Each entry is an origin such as "https://app.example.com", or "*" for any.
func WithAllowedOrigins(origins ...string) ServerOption {
	return serverOption(func(c *config) { c.allowedOrigins = append(c.allowedOrigins, origins...) })
}

// AuthenticateFunc decides who a connection is, once, during its
// handshake. It returns the principal, or an error to refuse the
// connection: the client then fails to connect with the error's code
// (CodeUnauthenticated unless the error is a *Error with another) and
// message.
type AuthenticateFunc func(ctx context.Context, req *AuthRequest) (*Principal, error)

// AuthRequest is what an AuthenticateFunc sees.
type AuthRequest struct {
	// HTTP is the WebSocket upgrade request: headers, cookies, remote
	// address. Its body is not readable.
	HTTP *http.Request
	// Metadata is the client's Hello metadata. Browsers cannot set headers
	// on a WebSocket, so tokens travel here ("authorization": "Bearer ...").
	Metadata map[string]string
}

// WithAuthenticate sets the hook that authenticates every connection. With
// none, connections have no principal.
func WithAuthenticate(fn AuthenticateFunc) ServerOption {
	return serverOption(func(c *config) { c.authenticate = fn })
}

// WithBroker sets the broker that shares events, presence and rooms between
// nodes. The default is a LocalBroker: one process, nothing to run.
func WithBroker(b Broker) ServerOption {
	return serverOption(func(c *config) { c.broker = b })
}

// WithResume sets how long the server keeps a dropped client's session
// for it to resume (DefaultResumeWindow) and how many recent events each
// session keeps to replay (DefaultResumeEvents; never more than the
// WithSendQueueBytes a replay goes into). A resumed session keeps its
// principal and rooms, gets the events it missed in order without
// duplicates, and has the calls it re-sends answered exactly once. A window
// of 0 turns resumption off: a session ends with its socket.
func WithResume(window time.Duration, events int) ServerOption {
	return serverOption(func(c *config) { c.resumeWindow, c.resumeEvents = window, events })
}

// WithResumeReplyBytes bounds, by their protobuf size, the replies a
// session keeps so that a call its client re-sends after a reconnect is
// answered without running again (DefaultResumeReplyBytes). Past it, the
// oldest replies kept are replaced by an error: a call re-sent for one of
// those (its reply lost with the connection) fails with CodeDataLoss
// instead of running twice. Errors count nothing.
func WithResumeReplyBytes(n int) ServerOption {
	return serverOption(func(c *config) { c.resumeReplies = n })
}

// WithResumeMemory bounds what the sessions waiting for their clients to
// resume them hold, all together (DefaultResumeMemory, 256 MiB): each its
// kept events and replies (see WithResume and WithResumeReplyBytes) and
// 2 KiB for itself. Sessions outlive their sockets for the resume window,
// so without it a client opening sessions and dropping their sockets in a
// loop, or many clients whose sessions each keep megabytes, would hold the
// server's memory for that long. When the waiting sessions hold more, the
// ones that have waited longest end, as if their window had passed, until
// the rest fit: their clients come back to new sessions (resumed = false)
// and resync. Sessions with a socket attached do not count. 0 sets no
// bound.
func WithResumeMemory(n int) ServerOption {
	return serverOption(func(c *config) { c.resumeMemory = n })
}

// WithPresenceHooks sets functions called when a user's first connection
// opens (online) and their last one closes (offline), across the cluster
// with a shared broker. They run one at a time, in the order the
// transitions happened, on a goroutine of their own; either may be nil.
// A panic in one is logged (WithLogger, at error level) and does not stop
// the server or the hooks after it. One that blocks holds up the hooks
// after it (not connections, calls or events): they wait in memory, one
// per transition, until it returns, so keep hooks quick and hand slow work
// to a goroutine of your own. Server.Shutdown waits for the hooks queued,
// within its ctx.
func WithPresenceHooks(online, offline func(userID string)) ServerOption {
	return serverOption(func(c *config) { c.onOnline, c.onOffline = online, offline })
}

// WithEventQueueBytes bounds the events a client has received and its
// handlers have not run yet, by their payloads' bytes
// (DefaultEventQueueBytes); one event is queued whatever its size. Handlers
// run one at a time, in order; once they fall that far behind, the client
// stops reading its socket until they catch up, so that the server's send
// queue fills instead of the client's memory (the server ends a connection
// whose queue stays full as a slow consumer, 4001, and the client resumes
// its session). Meanwhile replies to calls wait too. So an event handler
// that calls the server while more than the bound of events waits behind
// it gets no reply before its deadline (the reply is behind those events,
// which wait for the handler to return): the call fails with
// CodeDeadlineExceeded, though the server may have run it. A handler that
// calls the server during bursts makes the call on a goroutine of its own.
func WithEventQueueBytes(n int) ClientOption {
	return clientOption(func(c *config) { c.eventQueue = max(1, n) })
}

// WithCallTimeout sets a client call's deadline for when neither its
// context nor its method's timeout_ms gives one (DefaultCallTimeout).
func WithCallTimeout(d time.Duration) ClientOption {
	return clientOption(func(c *config) { c.callTimeout = d })
}

// WithJSON makes the client speak SubprotocolJSON instead of the default
// SubprotocolProto.
func WithJSON() ClientOption {
	return clientOption(func(c *config) { c.subprotocol = SubprotocolJSON })
}

// WithHelloMetadata sets the metadata the client sends in its Hello, which
// the server's authenticate hook reads.
func WithHelloMetadata(md map[string]string) ClientOption {
	return clientOption(func(c *config) { c.metadata = md })
}

// WithToken sets a function the client calls for a bearer token before
// every dial, the first and each reconnect, so a reconnect authenticates
// afresh. The token travels in the Hello's metadata as "authorization:
// Bearer <token>", where the server's authenticate hook reads it. An error
// from it fails the dial with CodeUnauthenticated, which on a reconnect
// closes the connection for good (retrying would not help), as a refusal
// by the server does.
func WithToken(token func(ctx context.Context) (string, error)) ClientOption {
	return clientOption(func(c *config) { c.token = token })
}

// WithReconnect sets the reconnection policy (DefaultBackoff).
func WithReconnect(b Backoff) ClientOption {
	return clientOption(func(c *config) { c.reconnect = &b })
}

// WithoutReconnect makes the connection close for good when its socket
// drops, failing calls in flight with CodeUnavailable.
func WithoutReconnect() ClientOption {
	return clientOption(func(c *config) { c.reconnect = nil })
}

// WithHTTPHeader adds headers to the WebSocket upgrade request.
func WithHTTPHeader(h http.Header) ClientOption {
	return clientOption(func(c *config) { c.header = h })
}

// WithHandlers registers the client's handlers (events and calls of
// services marked `implemented_by = CLIENT`) before Dial opens the socket:
// register is called once, with the connection, before its Hello goes.
// Events the server pushes as soon as a client connects (from its online
// hook, say) then reach their handler; registering after Dial returns
// races them, and an event that arrives first is dropped, for good:
//
//	conn, err := parley.Dial(ctx, url, parley.WithHandlers(func(r parley.Registrar) {
//		chatv1parley.RegisterChatEventsHandler(r, h)
//	}))
func WithHandlers(register func(Registrar)) ClientOption {
	return clientOption(func(c *config) { c.register = append(c.register, register) })
}

// WithTLSConfig sets the TLS configuration for wss:// URLs (the roots to
// trust, a client certificate). The default is Go's: the system's roots,
// and the URL's host as the server name.
func WithTLSConfig(cfg *tls.Config) ClientOption {
	return clientOption(func(c *config) { c.tls = cfg })
}
