// Command client calls any method of a gRPC server over mutual TLS from
// Go, with JSON requests and no generated code: the messages are built at
// run time (dynamicpb) from a descriptor set made by protoc from the
// service's .proto files, and the call takes the method's own shape.
//
// From the repository root, with the server running:
//
//	protoc -I proto --include_imports --descriptor_set_out=/tmp/api.protoset $(find proto -name '*.proto')
//	go run ./examples/go/cmd/client --protoset /tmp/api.protoset methods
//	go run ./examples/go/cmd/client --protoset /tmp/api.protoset call /PACKAGE.SERVICE/METHOD '{"field": "value"}'
//	go run ./examples/go/cmd/client --identity reader health
//
// (or build it first; see examples/go/README.md for the offline GOPATH way).
package main

import (
	"context"
	"crypto/tls"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/types/dynamicpb"

	"example.org/mtls-template/examples/go/dyncall"
	"example.org/mtls-template/examples/go/mtls"
)

const usage = `usage: client [flags] COMMAND [ARGS]

commands:
  call METHOD [JSON...]        call /PACKAGE.SERVICE/METHOD with JSON requests (default
                               one {}; several for a client-streaming method); prints
                               each reply as a JSON line
  methods                      list the methods of the --protoset files
  health [--service S]         grpc.health.v1 Check; exit 0 only if SERVING
  handshake                    health, then print the negotiated TLS parameters

flags:
`

// repeated is a flag that may be given more than once.
type repeated []string

func (r *repeated) String() string     { return strings.Join(*r, ", ") }
func (r *repeated) Set(v string) error { *r = append(*r, v); return nil }

func main() {
	os.Exit(run(os.Args[1:]))
}

func run(argv []string) int {
	flags := flag.NewFlagSet("client", flag.ContinueOnError)
	flags.Usage = func() { fmt.Fprint(flags.Output(), usage); flags.PrintDefaults() }
	addr := flags.String("addr", "127.0.0.1:50051", "server address, host:port")
	serverName := flags.String("server-name", "localhost", "name the server's certificate must carry")
	certs := flags.String("certs", "certs", "directory of the development PKI")
	identity := flags.String("identity", "reader", "use CERTS/NAME.pem and CERTS/NAME.key")
	cert := flags.String("cert", "", "client certificate (PEM); overrides --identity")
	key := flags.String("key", "", "client private key (PEM); overrides --identity")
	ca := flags.String("ca", "", "CA bundle the server must chain to (default CERTS/ca.pem)")
	timeout := flags.Duration("timeout", 10*time.Second, "deadline for the call")
	var protosets, headers repeated
	flags.Var(&protosets, "protoset", "FileDescriptorSet file (protoc --include_imports --descriptor_set_out); repeatable")
	flags.Var(&headers, "header", "request metadata, 'key: value'; repeatable")
	if err := flags.Parse(argv); err != nil {
		return 2
	}
	args := flags.Args()
	if len(args) == 0 {
		flags.Usage()
		return 2
	}
	descriptors, err := dyncall.LoadDescriptorSets(protosets...)
	if err != nil {
		fmt.Fprintln(os.Stderr, "error:", err)
		return 2
	}
	if args[0] == "methods" {
		for _, m := range descriptors.Methods() {
			desc, _ := descriptors.Method(m)
			fmt.Printf("%s (%s)\n", m, dyncall.ShapeOf(desc))
		}
		return 0
	}
	md := metadata.MD{}
	for _, h := range headers {
		i := strings.Index(h, ":")
		if i < 0 {
			fmt.Fprintf(os.Stderr, "error: --header %q is not 'key: value'\n", h)
			return 2
		}
		md.Append(strings.TrimSpace(h[:i]), strings.TrimSpace(h[i+1:]))
	}
	o := mtls.Options{
		Addr:       *addr,
		ServerName: *serverName,
		Cert:       orDefault(*cert, filepath.Join(*certs, *identity+".pem")),
		Key:        orDefault(*key, filepath.Join(*certs, *identity+".key")),
		CA:         orDefault(*ca, filepath.Join(*certs, "ca.pem")),
	}
	ctx, cancel := context.WithTimeout(metadata.NewOutgoingContext(context.Background(), md), *timeout)
	defer cancel()
	conn, err := mtls.Dial(ctx, o)
	if err != nil {
		fmt.Fprintln(os.Stderr, "error:", err)
		return 1
	}
	defer conn.Close()
	if err := command(ctx, conn, descriptors, args[0], args[1:]); err != nil {
		if s, ok := status.FromError(err); ok {
			fmt.Fprintf(os.Stderr, "error: %s: %s\n", mtls.CodeName(s.Code()), s.Message())
		} else {
			fmt.Fprintln(os.Stderr, "error:", err)
		}
		return 1
	}
	return 0
}

func command(ctx context.Context, conn *mtls.Conn, descriptors *dyncall.Descriptors, name string, args []string) error {
	switch name {
	case "call":
		if len(args) == 0 {
			return fmt.Errorf("call METHOD [JSON...]")
		}
		return call(ctx, conn, descriptors, args[0], args[1:])
	case "health", "handshake":
		sub := flag.NewFlagSet(name, flag.ContinueOnError)
		service := sub.String("service", "", "service to check; empty for the server as a whole")
		if err := sub.Parse(args); err != nil {
			return err
		}
		var p peer.Peer
		reply, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{Service: *service}, grpc.Peer(&p))
		if err != nil {
			return err
		}
		fmt.Println(reply.Status)
		if name == "handshake" {
			printHandshake(conn, &p)
		}
		if reply.Status != healthpb.HealthCheckResponse_SERVING {
			return fmt.Errorf("not serving")
		}
		return nil
	}
	return fmt.Errorf("unknown command %q (try -h)", name)
}

// call sends JSON requests (one {} by default) to any method and prints
// each reply as JSON.
func call(ctx context.Context, conn *mtls.Conn, descriptors *dyncall.Descriptors, path string, jsons []string) error {
	method, err := descriptors.Method(path)
	if err != nil {
		return err
	}
	if len(jsons) == 0 {
		jsons = []string{"{}"}
	}
	var requests []interface{}
	for _, text := range jsons {
		request := dynamicpb.NewMessage(method.Input())
		if err := protojson.Unmarshal([]byte(text), request); err != nil {
			return fmt.Errorf("request %s: not a %s: %v", text, method.Input().FullName(), err)
		}
		requests = append(requests, request)
	}
	if !strings.HasPrefix(path, "/") {
		path = "/" + path
	}
	return dyncall.Call(ctx, conn, path, dyncall.ShapeOf(method), requests,
		func() interface{} { return dynamicpb.NewMessage(method.Output()) },
		func(reply interface{}) error {
			text, err := protojson.Marshal(reply.(*dynamicpb.Message))
			if err == nil {
				fmt.Println(string(text))
			}
			return err
		})
}

func printHandshake(conn *mtls.Conn, p *peer.Peer) {
	info, ok := p.AuthInfo.(credentials.TLSInfo)
	if !ok {
		fmt.Println("not a TLS connection")
		return
	}
	version := map[uint16]string{tls.VersionTLS12: "TLS 1.2", tls.VersionTLS13: "TLS 1.3"}[info.State.Version]
	fmt.Printf("tls=%s alpn=%s cipher=%s", version, info.State.NegotiatedProtocol, tls.CipherSuiteName(info.State.CipherSuite))
	if hello, err := conn.ServerHello(); err == nil {
		fmt.Printf(" group=%s hello_retry=%v", mtls.GroupName(hello.Group), hello.RetryRequest)
	}
	fmt.Println()
}

func orDefault(value, fallback string) string {
	if value != "" {
		return value
	}
	return fallback
}
