// Command hello is Parley's smallest complete program: it serves
// hello.v1.GreeterService on a loopback port, dials it over one WebSocket
// and calls it with the generated client.
//
//	go run ./examples/hello -name Ada
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log"
	"net"
	"net/http"
	"time"

	hellov1 "github.com/parleyrpc/parley/examples/hello/gen/hello/v1"
	"github.com/parleyrpc/parley/examples/hello/gen/hello/v1/hellov1parley"
	"github.com/parleyrpc/parley/runtime/parley"
)

// greeter implements hellov1parley.GreeterServiceServer.
type greeter struct{}

func (greeter) SayHello(ctx context.Context, req *hellov1.SayHelloRequest) (*hellov1.SayHelloResponse, error) {
	if req.GetName() == "" {
		return nil, parley.NewError(parley.CodeInvalidArgument, "name is required")
	}
	return &hellov1.SayHelloResponse{Greeting: "Hello, " + req.GetName() + "!"}, nil
}

func main() {
	name := flag.String("name", "world", "who to greet")
	flag.Parse()
	if err := run(*name); err != nil {
		log.Fatal(err)
	}
}

func run(name string) error {
	// Server: register the implementation and mount the Server on a mux.
	srv := parley.NewServer()
	hellov1parley.RegisterGreeterServiceServer(srv, greeter{})
	mux := http.NewServeMux()
	mux.Handle("/parley", srv)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	hs := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = hs.Serve(ln) }()
	url := "ws://" + ln.Addr().String() + "/parley"
	fmt.Println("serving hello.v1.GreeterService at", url)

	// Client: one socket, a typed client on it.
	ctx := context.Background()
	conn, err := parley.Dial(ctx, url)
	if err != nil {
		return err
	}
	greeter := hellov1parley.NewGreeterServiceClient(conn)
	res, err := greeter.SayHello(ctx, &hellov1.SayHelloRequest{Name: name})
	if err != nil {
		return err
	}
	fmt.Println(res.GetGreeting())

	// Errors carry a code across the wire.
	_, err = greeter.SayHello(ctx, &hellov1.SayHelloRequest{})
	var perr *parley.Error
	if errors.As(err, &perr) {
		fmt.Printf("empty name: %v (code %d)\n", perr, perr.Code())
	}

	// Close the client, drain the server, stop HTTP.
	_ = conn.Close()
	shutdownCtx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if err := srv.Shutdown(shutdownCtx); err != nil {
		return err
	}
	return hs.Shutdown(shutdownCtx)
}
