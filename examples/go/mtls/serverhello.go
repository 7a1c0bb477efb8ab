package mtls

import (
	"bytes"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"sync"
)

// ServerHello is what a TLS 1.3 server chose for the key exchange.
type ServerHello struct {
	// Group is the named group of the server's key share.
	Group tls.CurveID
	// RetryRequest is true when the server first answered with a
	// HelloRetryRequest: none of the client's key shares suited it, so the
	// handshake took an extra round trip.
	RetryRequest bool
}

// GroupName names the groups a TLS 1.3 server may pick.
func GroupName(id tls.CurveID) string {
	switch id {
	case tls.X25519:
		return "X25519"
	case tls.CurveP256:
		return "secp256r1"
	case tls.CurveP384:
		return "secp384r1"
	case tls.CurveP521:
		return "secp521r1"
	case 0x11ec:
		return "X25519MLKEM768"
	}
	return fmt.Sprintf("0x%04x", uint16(id))
}

// The random value that marks a ServerHello as a HelloRetryRequest
// (RFC 8446, section 4.1.3).
var helloRetryRandom = []byte{
	0xcf, 0x21, 0xad, 0x74, 0xe5, 0x9a, 0x61, 0x11, 0xbe, 0x1d, 0x8c, 0x02, 0x1e, 0x65, 0xb8, 0x91,
	0xc2, 0xa2, 0x11, 0x16, 0x7a, 0xbb, 0x8c, 0x5e, 0x07, 0x9e, 0x09, 0xe2, 0xc8, 0xa8, 0x33, 0x9c,
}

const (
	recordHandshake        = 22
	recordChangeCipherSpec = 20
	handshakeServerHello   = 2
	extensionKeyShare      = 0x0033
)

var errNoServerHello = errors.New("no complete ServerHello seen on this connection")

// parseServerHello reads the plaintext records a TLS 1.3 server sends
// first: [HelloRetryRequest, ChangeCipherSpec,] ServerHello.
func parseServerHello(stream []byte) (ServerHello, error) {
	var handshake []byte
	for len(stream) >= 5 {
		kind, n := stream[0], int(stream[3])<<8|int(stream[4])
		if len(stream) < 5+n {
			break
		}
		if kind == recordHandshake {
			handshake = append(handshake, stream[5:5+n]...)
		} else if kind != recordChangeCipherSpec {
			break // encrypted from here on
		}
		stream = stream[5+n:]
	}
	var result ServerHello
	for len(handshake) >= 4 {
		kind, n := handshake[0], int(handshake[1])<<16|int(handshake[2])<<8|int(handshake[3])
		if len(handshake) < 4+n {
			break
		}
		body := handshake[4 : 4+n]
		handshake = handshake[4+n:]
		if kind != handshakeServerHello {
			continue
		}
		retry, group, err := keyShare(body)
		if err != nil {
			return ServerHello{}, err
		}
		result.Group = group
		if !retry {
			return result, nil
		}
		result.RetryRequest = true
	}
	return ServerHello{}, errNoServerHello
}

// keyShare returns whether body is a HelloRetryRequest, and the group of its
// key_share extension.
func keyShare(body []byte) (retry bool, group tls.CurveID, err error) {
	short := errors.New("truncated ServerHello")
	// legacy_version(2) random(32) session_id(1+n) cipher_suite(2) compression(1)
	if len(body) < 35 {
		return false, 0, short
	}
	retry = bytes.Equal(body[2:34], helloRetryRandom)
	rest := body[34:]
	sid := int(rest[0])
	if len(rest) < 1+sid+3+2 {
		return false, 0, short
	}
	rest = rest[1+sid+3:]
	exts := rest[2:]
	if len(exts) < int(rest[0])<<8|int(rest[1]) {
		return false, 0, short
	}
	for len(exts) >= 4 {
		kind, n := int(exts[0])<<8|int(exts[1]), int(exts[2])<<8|int(exts[3])
		if len(exts) < 4+n {
			return false, 0, short
		}
		if kind == extensionKeyShare && n >= 2 {
			return retry, tls.CurveID(int(exts[4])<<8 | int(exts[5])), nil
		}
		exts = exts[4+n:]
	}
	return false, 0, errors.New("ServerHello has no key_share: not TLS 1.3")
}

// helloRecorder keeps the first bytes the server sent on the most recent
// connection: enough for the plaintext part of a TLS 1.3 handshake.
type helloRecorder struct {
	mu  sync.Mutex
	buf []byte
}

const recordLimit = 8 << 10

func (r *helloRecorder) wrap(c net.Conn) net.Conn {
	r.mu.Lock()
	r.buf = nil
	r.mu.Unlock()
	return &recordingConn{Conn: c, r: r}
}

func (r *helloRecorder) bytes() []byte {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]byte(nil), r.buf...)
}

type recordingConn struct {
	net.Conn
	r    *helloRecorder
	seen int
}

func (c *recordingConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	if c.seen < recordLimit && n > 0 {
		keep := p[:n]
		if len(keep) > recordLimit-c.seen {
			keep = keep[:recordLimit-c.seen]
		}
		c.seen += len(keep)
		c.r.mu.Lock()
		c.r.buf = append(c.r.buf, keep...)
		c.r.mu.Unlock()
	}
	return n, err
}
