module github.com/parleyrpc/parley

go 1.26.7

require (
	github.com/bufbuild/protocompile v0.14.2-0.20261020145055-56248e843b50
	github.com/dave/jennifer v1.7.1
	github.com/google/go-cmp v0.7.0
	github.com/gorilla/websocket v1.5.3
	go.uber.org/goleak v1.3.0
	google.golang.org/protobuf v1.36.13-0.20261016172727-e9ee2a76ab8e
)

require (
	buf.build/gen/go/bufbuild/protodescriptor/protocolbuffers/go v1.36.12-20250109164928-1da0de137947.1 // indirect
	buf.build/gen/go/bufbuild/protovalidate/protocolbuffers/go v1.36.12-20260709200747-435963d16310.1 // indirect
	github.com/petermattis/goid v0.0.0-20260716134002-a9b348f0a2b9 // indirect
	github.com/rivo/uniseg v0.4.7 // indirect
	github.com/tidwall/btree v1.8.1 // indirect
	golang.org/x/exp v0.0.0-20260709172345-9ea1abe57597 // indirect
	golang.org/x/sync v0.22.0 // indirect
)
