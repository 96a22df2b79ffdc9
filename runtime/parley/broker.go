package parley

import (
	"context"
	"slices"
	"sync"
)

// Broker connects the nodes of a cluster. It carries every published event
// to every node (each delivers it to its own connections the target
// reaches), and keeps presence and room membership shared, so several
// nodes behind one load balancer behave like one server. LocalBroker, the
// default, serves a single process and needs nothing.
//
// Implementations must be safe for concurrent use, and must deliver the
// events one node publishes in the order it published them.
type Broker interface {
	// Publish hands ev to every node's deliver function, this node's
	// included. It may return before delivery.
	Publish(ctx context.Context, ev *BrokerEvent) error
	// Subscribe sets this node's deliver function. A Server calls it once,
	// when it is created; deliver must not block for long.
	Subscribe(deliver func(*BrokerEvent)) error
	// Online records that connID of userID connected and reports whether it
	// is the user's first connection anywhere in the cluster.
	Online(ctx context.Context, userID, connID string) (first bool, err error)
	// Offline records that connID of userID closed and reports whether it
	// was the user's last.
	Offline(ctx context.Context, userID, connID string) (last bool, err error)
	// IsOnline reports whether userID has any connection in the cluster.
	IsOnline(ctx context.Context, userID string) (bool, error)
	// Join records m as a member of room.
	Join(ctx context.Context, room string, m Member) error
	// Leave removes m from room.
	Leave(ctx context.Context, room string, m Member) error
	// Members lists room's members across the cluster.
	Members(ctx context.Context, room string) ([]Member, error)
}

// BrokerEvent is an event on its way between nodes.
type BrokerEvent struct {
	// Target is who the event is for.
	Target Target
	// Method is the event's procedure, "/chat.v1.ChatEvents/MessagePosted".
	Method string
	// Payload is the event message, protobuf-encoded.
	Payload []byte
}

// Member is one connection in a room.
type Member struct {
	// ConnID is the connection, as Peer.ID.
	ConnID string
	// UserID is its principal's user, or "" when the server does not
	// authenticate.
	UserID string
}

// LocalBroker is the in-process Broker: one node, state in memory. The zero
// value is not usable; use NewLocalBroker.
type LocalBroker struct {
	deliver func(*BrokerEvent)

	mu    sync.Mutex
	users map[string]map[string]struct{} // user → connection ids
	rooms map[string]map[Member]struct{}
}

// NewLocalBroker returns an empty in-process broker.
func NewLocalBroker() *LocalBroker {
	return &LocalBroker{users: make(map[string]map[string]struct{}), rooms: make(map[string]map[Member]struct{})}
}

// Publish delivers ev at once, on the caller's goroutine.
func (b *LocalBroker) Publish(_ context.Context, ev *BrokerEvent) error {
	if b.deliver != nil {
		b.deliver(ev)
	}
	return nil
}

// Subscribe sets the delivery function.
func (b *LocalBroker) Subscribe(deliver func(*BrokerEvent)) error {
	b.deliver = deliver
	return nil
}

// Online records a connection.
func (b *LocalBroker) Online(_ context.Context, userID, connID string) (bool, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	conns := b.users[userID]
	if conns == nil {
		conns = make(map[string]struct{})
		b.users[userID] = conns
	}
	conns[connID] = struct{}{}
	return len(conns) == 1, nil
}

// Offline removes a connection.
func (b *LocalBroker) Offline(_ context.Context, userID, connID string) (bool, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	conns := b.users[userID]
	if _, ok := conns[connID]; !ok {
		return false, nil
	}
	delete(conns, connID)
	if len(conns) == 0 {
		delete(b.users, userID)
		return true, nil
	}
	return false, nil
}

// IsOnline reports whether the user has a connection.
func (b *LocalBroker) IsOnline(_ context.Context, userID string) (bool, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return len(b.users[userID]) > 0, nil
}

// Join adds a room member.
func (b *LocalBroker) Join(_ context.Context, room string, m Member) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	ms := b.rooms[room]
	if ms == nil {
		ms = make(map[Member]struct{})
		b.rooms[room] = ms
	}
	ms[m] = struct{}{}
	return nil
}

// Leave removes a room member.
func (b *LocalBroker) Leave(_ context.Context, room string, m Member) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	delete(b.rooms[room], m)
	if len(b.rooms[room]) == 0 {
		delete(b.rooms, room)
	}
	return nil
}

// Members lists a room's members, ordered by connection id.
func (b *LocalBroker) Members(_ context.Context, room string) ([]Member, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	ms := make([]Member, 0, len(b.rooms[room]))
	for m := range b.rooms[room] {
		ms = append(ms, m)
	}
	slices.SortFunc(ms, func(a, b Member) int {
		if a.ConnID < b.ConnID {
			return -1
		}
		if a.ConnID > b.ConnID {
			return 1
		}
		return 0
	})
	return ms, nil
}

var _ Broker = (*LocalBroker)(nil)
