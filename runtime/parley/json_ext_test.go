package parley_test

import (
	"encoding/json"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/parleyrpc/parley/runtime/parley"
)

// jsonPeer speaks parley.v1+json by hand, as a client without protobuf
// would.
type jsonPeer struct{ ws *websocket.Conn }

func dialJSON(t *testing.T, url string) *jsonPeer {
	t.Helper()
	d := websocket.Dialer{Subprotocols: []string{parley.SubprotocolJSON}}
	ws, _, err := d.Dial(url, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = ws.Close() })
	p := &jsonPeer{ws: ws}
	p.send(t, `{"hello":{}}`)
	if f := p.read(t); f["welcome"] == nil {
		t.Fatalf("no welcome: %v", f)
	}
	return p
}

func (p *jsonPeer) send(t *testing.T, frame string) {
	t.Helper()
	if err := p.ws.WriteMessage(websocket.TextMessage, []byte(frame)); err != nil {
		t.Fatal(err)
	}
}

func (p *jsonPeer) read(t *testing.T) map[string]map[string]any {
	t.Helper()
	_ = p.ws.SetReadDeadline(time.Now().Add(5 * time.Second))
	_, b, err := p.ws.ReadMessage()
	if err != nil {
		t.Fatal(err)
	}
	var f map[string]map[string]any
	if err := json.Unmarshal(b, &f); err != nil {
		t.Fatalf("%s: %v", b, err)
	}
	return f
}

// A body left out of a parley.v1+json frame (no "json" field) is the
// empty message, as a payload left out is in parley.v1+proto: in a unary
// Call, in a server-streaming Call and in a StreamItem alike.
func TestJSONFrameWithoutBodyCarriesTheEmptyMessage(t *testing.T) {
	_, url := newStreamServer(t)
	p := dialJSON(t, url)

	p.send(t, `{"call":{"id":"1","method":"/test.Streams/Unary"}}`)
	if f := p.read(t); f["reply"] == nil || f["reply"]["id"] != "1" {
		t.Fatalf("unary call without a body: got %v, want its reply", f)
	}

	// Count sends Ms (0 here) items, then its Reply.
	p.send(t, `{"call":{"id":"3","method":"/test.Streams/Count"}}`)
	if f := p.read(t); f["reply"] == nil || f["reply"]["id"] != "3" {
		t.Fatalf("server-streaming call without a body: got %v, want its reply", f)
	}

	// Sum joins the items' texts with commas.
	p.send(t, `{"call":{"id":"5","method":"/test.Streams/Sum"}}`)
	p.send(t, `{"item":{"id":"5"}}`)
	p.send(t, `{"item":{"id":"5","json":{"text":"b"}}}`)
	p.send(t, `{"end":{"id":"5"}}`)
	f := p.read(t)
	if f["reply"] == nil || f["reply"]["id"] != "5" {
		t.Fatalf("stream item without a body: got %v, want the reply", f)
	}
	if got, _ := f["reply"]["json"].(map[string]any); got["text"] != ",b" {
		t.Fatalf("reply %v, want text \",b\"", f["reply"]["json"])
	}
}
