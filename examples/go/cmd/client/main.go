// Command client calls the inventory service over mutual TLS from Go.
//
// From the repository root, with the server running:
//
//	go run ./examples/go/cmd/client --identity writer put apple-1 Apple 3
//	go run ./examples/go/cmd/client --identity reader get apple-1
//	go run ./examples/go/cmd/client --identity reader purge   # PERMISSION_DENIED, exit 1
//
// (or build it first; see examples/go/README.md for the offline GOPATH way).
package main

import (
	"context"
	"crypto/tls"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	"example.org/mtls-template/examples/go/mtls"

	// The generated package, in a group of its own so that renaming it
	// keeps gofmt's import order.
	inventory "example.org/mtls-template/examples/go/inventory/v1"
)

const usage = `usage: client [flags] COMMAND [ARGS]

commands:
  get SKU                      GetItem (read)
  put SKU NAME QUANTITY        PutItem (write)
  purge                        Purge (admin)
  list [--prefix P]            ListItems (server streaming)
  import SKU,NAME,QTY...       ImportItems (client streaming)
  health [--service S]         grpc.health.v1 Check; exit 0 only if SERVING
  handshake                    health, then print the negotiated TLS parameters

flags:
`

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
	if err := flags.Parse(argv); err != nil {
		return 2
	}
	args := flags.Args()
	if len(args) == 0 {
		flags.Usage()
		return 2
	}
	o := mtls.Options{
		Addr:       *addr,
		ServerName: *serverName,
		Cert:       orDefault(*cert, filepath.Join(*certs, *identity+".pem")),
		Key:        orDefault(*key, filepath.Join(*certs, *identity+".key")),
		CA:         orDefault(*ca, filepath.Join(*certs, "ca.pem")),
	}
	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()
	conn, err := mtls.Dial(ctx, o)
	if err != nil {
		fmt.Fprintln(os.Stderr, "error:", err)
		return 1
	}
	defer conn.Close()
	if err := call(ctx, conn, args[0], args[1:]); err != nil {
		if s, ok := status.FromError(err); ok {
			fmt.Fprintf(os.Stderr, "error: %s: %s\n", mtls.CodeName(s.Code()), s.Message())
		} else {
			fmt.Fprintln(os.Stderr, "error:", err)
		}
		return 1
	}
	return 0
}

func call(ctx context.Context, conn *mtls.Conn, command string, args []string) error {
	stub := inventory.NewInventoryClient(conn)
	switch command {
	case "get":
		if len(args) != 1 {
			return fmt.Errorf("get SKU")
		}
		item, err := stub.GetItem(ctx, &inventory.GetItemRequest{Sku: args[0]})
		if err == nil {
			show(item)
		}
		return err
	case "put":
		if len(args) != 3 {
			return fmt.Errorf("put SKU NAME QUANTITY")
		}
		quantity, err := strconv.ParseInt(args[2], 10, 64)
		if err != nil {
			return fmt.Errorf("QUANTITY %q is not a number", args[2])
		}
		item, err := stub.PutItem(ctx, &inventory.PutItemRequest{
			Item: &inventory.Item{Sku: args[0], Name: args[1], Quantity: quantity},
		})
		if err == nil {
			show(item)
		}
		return err
	case "purge":
		reply, err := stub.Purge(ctx, &inventory.PurgeRequest{})
		if err == nil {
			fmt.Printf("removed=%d\n", reply.Removed)
		}
		return err
	case "list":
		sub := flag.NewFlagSet("list", flag.ContinueOnError)
		prefix := sub.String("prefix", "", "SKU prefix; empty lists every item")
		if err := sub.Parse(args); err != nil {
			return err
		}
		stream, err := stub.ListItems(ctx, &inventory.ListItemsRequest{SkuPrefix: *prefix})
		if err != nil {
			return err
		}
		for {
			item, err := stream.Recv()
			if err == io.EOF {
				return nil
			}
			if err != nil {
				return err
			}
			show(item)
		}
	case "import":
		if len(args) == 0 {
			return fmt.Errorf("import SKU,NAME,QUANTITY...")
		}
		var items []*inventory.Item
		for _, raw := range args {
			parts := strings.SplitN(raw, ",", 3)
			if len(parts) != 3 {
				return fmt.Errorf("%q: expected SKU,NAME,QUANTITY", raw)
			}
			quantity, err := strconv.ParseInt(parts[2], 10, 64)
			if err != nil {
				return fmt.Errorf("%q: QUANTITY is not a number", raw)
			}
			items = append(items, &inventory.Item{Sku: parts[0], Name: parts[1], Quantity: quantity})
		}
		stream, err := stub.ImportItems(ctx)
		if err != nil {
			return err
		}
		for _, item := range items {
			if err := stream.Send(&inventory.PutItemRequest{Item: item}); err != nil {
				break // the status comes from CloseAndRecv
			}
		}
		reply, err := stream.CloseAndRecv()
		if err == nil {
			fmt.Printf("imported=%d\n", reply.Imported)
		}
		return err
	case "health", "handshake":
		sub := flag.NewFlagSet(command, flag.ContinueOnError)
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
		if command == "handshake" {
			printHandshake(conn, &p)
		}
		if reply.Status != healthpb.HealthCheckResponse_SERVING {
			return fmt.Errorf("not serving")
		}
		return nil
	}
	return fmt.Errorf("unknown command %q (try -h)", command)
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

func show(item *inventory.Item) {
	fmt.Printf("sku=%s name=%q quantity=%d updated_by=%s\n", item.Sku, item.Name, item.Quantity, item.UpdatedBy)
}

func orDefault(value, fallback string) string {
	if value != "" {
		return value
	}
	return fallback
}
