// Package interop tests the Go client against the real Rust server over
// mutual TLS: the same checks as examples/python/test_interop.py, plus the
// negotiated TLS parameters.
package interop

import (
	"bytes"
	"context"
	"crypto/tls"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	"example.org/mtls-template/examples/go/mtls"

	// The generated package, in a group of its own so that renaming it
	// keeps gofmt's import order.
	inventory "example.org/mtls-template/examples/go/inventory/v1"
)

func options(pki, identity string) mtls.Options {
	return mtls.Options{
		Addr:       addr,
		ServerName: "localhost",
		Cert:       filepath.Join(pki, identity+".pem"),
		Key:        filepath.Join(pki, identity+".key"),
		CA:         filepath.Join(certs, "ca.pem"),
	}
}

func dial(t *testing.T, o mtls.Options) (*mtls.Conn, context.Context) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	conn, err := mtls.Dial(ctx, o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn, ctx
}

func TestGeneratedCodeMatchesTheProtos(t *testing.T) {
	here := filepath.Join(root, "examples", "go")
	fresh := t.TempDir()
	if out, err := exec.Command(filepath.Join(here, "generate.sh"), fresh).CombinedOutput(); err != nil {
		t.Fatalf("generate.sh: %v\n%s", err, out)
	}
	generated := func(dir string) map[string][]byte {
		files := map[string][]byte{}
		_ = filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
			if err == nil && d.IsDir() && d.Name() != "." && strings.HasPrefix(d.Name(), ".") {
				return filepath.SkipDir
			}
			if err == nil && strings.HasSuffix(path, ".pb.go") {
				rel, _ := filepath.Rel(dir, path)
				files[rel], _ = os.ReadFile(path)
			}
			return nil
		})
		return files
	}
	want, got := generated(fresh), generated(here)
	if len(want) == 0 {
		t.Fatal("generate.sh produced no .pb.go files")
	}
	for name, content := range want {
		if !bytes.Equal(got[name], content) {
			t.Errorf("%s is stale or missing: run examples/go/generate.sh", name)
		}
	}
	for name := range got {
		if _, ok := want[name]; !ok {
			t.Errorf("%s is not generated from any .proto: run examples/go/generate.sh", name)
		}
	}
}

func TestAllowedCallsSucceed(t *testing.T) {
	writer, ctx := dial(t, options(certs, "writer"))
	w := inventory.NewInventoryClient(writer)
	stored, err := w.PutItem(ctx, &inventory.PutItemRequest{Item: &inventory.Item{Sku: "go-1", Name: "Go", Quantity: 7}})
	if err != nil {
		t.Fatal(err)
	}
	if stored.UpdatedBy != "spiffe://example.org/writer" {
		t.Errorf("updated_by = %q", stored.UpdatedBy)
	}

	// Client streaming.
	stream, err := w.ImportItems(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, sku := range []string{"go-3", "go-2"} {
		if err := stream.Send(&inventory.PutItemRequest{Item: &inventory.Item{Sku: sku, Name: "Gopher", Quantity: 1}}); err != nil {
			t.Fatal(err)
		}
	}
	summary, err := stream.CloseAndRecv()
	if err != nil {
		t.Fatal(err)
	}
	if summary.Imported != 2 {
		t.Errorf("imported = %d, want 2", summary.Imported)
	}

	reader, ctx := dial(t, options(certs, "reader"))
	r := inventory.NewInventoryClient(reader)
	got, err := r.GetItem(ctx, &inventory.GetItemRequest{Sku: "go-1"})
	if err != nil {
		t.Fatal(err)
	}
	if got.Name != "Go" || got.Quantity != 7 {
		t.Errorf("GetItem = %v", got)
	}

	// Server streaming, in SKU order.
	list, err := r.ListItems(ctx, &inventory.ListItemsRequest{SkuPrefix: "go-"})
	if err != nil {
		t.Fatal(err)
	}
	var skus []string
	for {
		item, err := list.Recv()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		skus = append(skus, item.Sku)
	}
	if strings.Join(skus, " ") != "go-1 go-2 go-3" {
		t.Errorf("ListItems = %v", skus)
	}
}

func TestAdminMayPurge(t *testing.T) {
	admin, ctx := dial(t, options(certs, "admin"))
	a := inventory.NewInventoryClient(admin)
	if _, err := a.PutItem(ctx, &inventory.PutItemRequest{Item: &inventory.Item{Sku: "go-purge", Name: "x", Quantity: 1}}); err != nil {
		t.Fatal(err)
	}
	purged, err := a.Purge(ctx, &inventory.PurgeRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if purged.Removed < 1 {
		t.Errorf("removed = %d, want at least 1", purged.Removed)
	}
}

func TestDeniedCallGetsPermissionDenied(t *testing.T) {
	reader, ctx := dial(t, options(certs, "reader"))
	_, err := inventory.NewInventoryClient(reader).Purge(ctx, &inventory.PurgeRequest{})
	s := status.Convert(err)
	if s.Code() != codes.PermissionDenied {
		t.Fatalf("Purge as reader: %v, want PERMISSION_DENIED", err)
	}
	if s.Message() != "permission denied by authorization policy" {
		t.Errorf("message = %q", s.Message())
	}

	// The outsider is denied everything, health included.
	outsider, ctx := dial(t, options(certs, "outsider"))
	_, err = healthpb.NewHealthClient(outsider).Check(ctx, &healthpb.HealthCheckRequest{})
	if status.Code(err) != codes.PermissionDenied {
		t.Errorf("health as outsider: %v, want PERMISSION_DENIED", err)
	}
}

func TestCertificateFromAnotherCAIsRefused(t *testing.T) {
	foreign := filepath.Join(t.TempDir(), "other")
	if err := makePKI(foreign); err != nil {
		t.Fatal(err)
	}
	// Trusts the real server, but presents a certificate the server's CA
	// never issued.
	conn, ctx := dial(t, options(foreign, "admin"))
	_, err := inventory.NewInventoryClient(conn).GetItem(ctx, &inventory.GetItemRequest{Sku: "x"})
	if status.Code(err) != codes.Unavailable {
		t.Fatalf("GetItem with a foreign certificate: %v, want UNAVAILABLE", err)
	}
	t.Logf("refused as expected: %v", err)
}

func TestWrongServerNameIsRefused(t *testing.T) {
	o := options(certs, "reader")
	o.ServerName = "not-the-server.example.org"
	conn, ctx := dial(t, o)
	_, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{})
	if status.Code(err) != codes.Unavailable || !strings.Contains(err.Error(), "not-the-server.example.org") {
		t.Fatalf("health with the wrong server name: %v, want UNAVAILABLE naming the name", err)
	}
	t.Logf("refused as expected: %v", err)
}

func TestHealthReportsServing(t *testing.T) {
	// The service's full name, from the generated descriptor.
	service := string((&inventory.GetItemRequest{}).ProtoReflect().Descriptor().ParentFile().Services().Get(0).FullName())
	conn, ctx := dial(t, options(certs, "reader"))
	health := healthpb.NewHealthClient(conn)
	for _, name := range []string{"", service} {
		reply, err := health.Check(ctx, &healthpb.HealthCheckRequest{Service: name})
		if err != nil {
			t.Fatalf("Check(%q): %v", name, err)
		}
		if reply.Status != healthpb.HealthCheckResponse_SERVING {
			t.Errorf("Check(%q) = %v", name, reply.Status)
		}
	}
}

func TestNegotiatesTLS13WithALPNh2(t *testing.T) {
	conn, ctx := dial(t, options(certs, "reader"))
	var p peer.Peer
	if _, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{}, grpc.Peer(&p)); err != nil {
		t.Fatal(err)
	}
	state := p.AuthInfo.(credentials.TLSInfo).State
	if state.Version != tls.VersionTLS13 {
		t.Errorf("TLS version = %#x, want TLS 1.3", state.Version)
	}
	if state.NegotiatedProtocol != "h2" {
		t.Errorf("ALPN = %q, want h2", state.NegotiatedProtocol)
	}
	hello, err := conn.ServerHello()
	if err != nil {
		t.Fatal(err)
	}
	// Go 1.19 offers X25519 first (with a key share) and then the NIST
	// curves; newer Go also offers X25519MLKEM768. The server must pick one
	// the client sent a key share for, so no HelloRetryRequest.
	switch mtls.GroupName(hello.Group) {
	case "X25519", "X25519MLKEM768":
	default:
		t.Errorf("key exchange group = %s, want X25519 or X25519MLKEM768", mtls.GroupName(hello.Group))
	}
	if hello.RetryRequest {
		t.Errorf("server sent a HelloRetryRequest for a client that offered %s", mtls.GroupName(hello.Group))
	}
	t.Logf("negotiated %s, ALPN %s, %s, key exchange %s", map[uint16]string{tls.VersionTLS13: "TLS 1.3"}[state.Version],
		state.NegotiatedProtocol, tls.CipherSuiteName(state.CipherSuite), mtls.GroupName(hello.Group))
}
