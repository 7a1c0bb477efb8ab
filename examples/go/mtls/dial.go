// Package mtls dials a gRPC server over mutual TLS 1.3 with ALPN h2, and
// records which key exchange group the server chose.
package mtls

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"
	"os"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
)

// Options says where to connect and with which credentials. All fields are
// required.
type Options struct {
	// Addr is host:port. It may be an IP address: the server's certificate
	// is checked against ServerName, not against Addr.
	Addr string
	// ServerName is the DNS name the server's certificate must carry.
	ServerName string
	// Cert and Key are the client's certificate chain and private key (PEM
	// files). The server authorizes calls by this certificate's identity.
	Cert, Key string
	// CA is a PEM bundle; the server's certificate must chain to it.
	CA string
}

// TLSConfig builds the client side of mutual TLS: TLS 1.3 only, ALPN h2
// (gRPC over TLS requires it), and the server verified against CA and
// ServerName.
func TLSConfig(o Options) (*tls.Config, error) {
	pair, err := tls.LoadX509KeyPair(o.Cert, o.Key)
	if err != nil {
		return nil, fmt.Errorf("client certificate %s / key %s: %w", o.Cert, o.Key, err)
	}
	pem, err := os.ReadFile(o.CA)
	if err != nil {
		return nil, fmt.Errorf("CA bundle: %w", err)
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("CA bundle %s: no PEM certificates in it", o.CA)
	}
	return &tls.Config{
		Certificates: []tls.Certificate{pair},
		RootCAs:      roots,
		ServerName:   o.ServerName,
		MinVersion:   tls.VersionTLS13,
		NextProtos:   []string{"h2"},
	}, nil
}

// Conn is a gRPC client connection that also remembers the server's
// ServerHello from its latest TLS handshake.
type Conn struct {
	*grpc.ClientConn
	hello *helloRecorder
}

// Dial returns at once; the TLS handshake happens on the first call, and a
// handshake failure is that call's error (UNAVAILABLE).
func Dial(ctx context.Context, o Options) (*Conn, error) {
	cfg, err := TLSConfig(o)
	if err != nil {
		return nil, err
	}
	hello := &helloRecorder{}
	dialer := func(ctx context.Context, addr string) (net.Conn, error) {
		var d net.Dialer
		c, err := d.DialContext(ctx, "tcp", addr)
		if err != nil {
			return nil, err
		}
		return hello.wrap(c), nil
	}
	cc, err := grpc.DialContext(ctx, o.Addr,
		grpc.WithTransportCredentials(credentials.NewTLS(cfg)),
		grpc.WithContextDialer(dialer),
	)
	if err != nil {
		return nil, err
	}
	return &Conn{ClientConn: cc, hello: hello}, nil
}

// ServerHello reports what the server chose in the latest handshake on this
// connection. Go's tls.ConnectionState only exposes the group from Go 1.25
// (CurveID); this reads it from the ServerHello, which TLS 1.3 sends in
// the clear.
func (c *Conn) ServerHello() (ServerHello, error) {
	return parseServerHello(c.hello.bytes())
}
