// Package interop tests the Go client against the real Rust server over
// mutual TLS: the policy's cases over the wire (policy_test.go), and the
// TLS checks, through the health service every server runs. Nothing here
// names the service's RPCs or messages.
package interop

import (
	"context"
	"crypto/tls"
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
)

// options connects with a certificate and key, trusting the server's CA.
func options(cert, key string) mtls.Options {
	return mtls.Options{
		Addr:       addr,
		ServerName: "localhost",
		Cert:       cert,
		Key:        key,
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

// healthIdentity is an identity a policy case allows the health check,
// else any client of the test PKI (its check may then be denied, which
// still proves the handshake).
func healthIdentity(t *testing.T) (cert, key string) {
	t.Helper()
	cases, err := loadCases(casesFile())
	if err != nil {
		t.Fatal(err)
	}
	if cert, key := allowedIdentity(cases, healthCheck); cert != "" {
		return cert, key
	}
	return anyIdentity(t, certs)
}

// reachedServer: the call got an answer from the server (allowed or denied
// by its policy), so the TLS handshake succeeded.
func reachedServer(err error) bool {
	return err == nil || status.Code(err) == codes.PermissionDenied
}

func TestCertificateFromAnotherCAIsRefused(t *testing.T) {
	foreign := filepath.Join(t.TempDir(), "other")
	if err := makePKI(foreign); err != nil {
		t.Fatal(err)
	}
	// Trusts the real server, but presents a certificate the server's CA
	// never issued.
	conn, ctx := dial(t, options(anyIdentity(t, foreign)))
	_, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{})
	if status.Code(err) != codes.Unavailable {
		t.Fatalf("health with a foreign certificate: %v, want UNAVAILABLE", err)
	}
	t.Logf("refused as expected: %v", err)
}

func TestWrongServerNameIsRefused(t *testing.T) {
	o := options(healthIdentity(t))
	o.ServerName = "not-the-server.example.org"
	conn, ctx := dial(t, o)
	_, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{})
	if status.Code(err) != codes.Unavailable || !strings.Contains(err.Error(), "not-the-server.example.org") {
		t.Fatalf("health with the wrong server name: %v, want UNAVAILABLE naming the name", err)
	}
	t.Logf("refused as expected: %v", err)
}

func TestHealthReportsServing(t *testing.T) {
	cases, err := loadCases(casesFile())
	if err != nil {
		t.Fatal(err)
	}
	cert, key := allowedIdentity(cases, healthCheck)
	if cert == "" {
		t.Skipf("no case of %s allows %s to an identity of the test PKI", casesFile(), healthCheck)
	}
	methods, err := servedMethods()
	if err != nil {
		t.Fatal(err)
	}
	conn, ctx := dial(t, options(cert, key))
	health := healthpb.NewHealthClient(conn)
	// The server as a whole, and each of its own services.
	for _, name := range append([]string{""}, ownServices(methods)...) {
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
	conn, ctx := dial(t, options(healthIdentity(t)))
	var p peer.Peer
	if _, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{}, grpc.Peer(&p)); !reachedServer(err) {
		t.Fatal(err)
	}
	info, ok := p.AuthInfo.(credentials.TLSInfo)
	if !ok {
		t.Fatalf("no TLS connection info (peer %+v)", p)
	}
	state := info.State
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
