package interop

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// The repository root and the directory holding the built binaries
// (MTLS_BIN_DIR, else ROOT/target/debug).
var root, binDir string

// The running server: its address and the PKI its clients use.
var addr, certs string

func TestMain(m *testing.M) {
	os.Exit(runWithServer(m))
}

func runWithServer(m *testing.M) int {
	// go test runs in this package's directory; resolve symlinks, as the
	// GOPATH build reaches it through one.
	here, err := os.Getwd()
	if err == nil {
		here, err = filepath.EvalSymlinks(here)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	root = filepath.Join(here, "..", "..", "..")
	binDir = os.Getenv("MTLS_BIN_DIR")
	if binDir == "" {
		binDir = filepath.Join(root, "target", "debug")
	}
	tmp, err := os.MkdirTemp("", "go-interop-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(tmp)
	certs = filepath.Join(tmp, "certs")
	if err := makePKI(certs); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	stop, err := startServer()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer stop()
	return m.Run()
}

// makePKI makes a development PKI (ca.pem, server.pem, and the client
// identities reader, writer, admin, outsider) with the certs binary.
func makePKI(dir string) error {
	out, err := exec.Command(filepath.Join(binDir, "certs"), "--dir", dir, "init").CombinedOutput()
	if err != nil {
		return fmt.Errorf("certs init: %v\n%s", err, out)
	}
	return nil
}

// startServer starts the real server on a free loopback port. It binds
// before it logs "listening", so the address it logs is ready: no sleeps.
func startServer() (stop func(), err error) {
	cmd := exec.Command(filepath.Join(binDir, "server"),
		"--listen", "127.0.0.1:0",
		// No fixed port: tests may run servers side by side.
		"--metrics-listen", "127.0.0.1:0",
		"--cert", filepath.Join(certs, "server.pem"),
		"--key", filepath.Join(certs, "server.key"),
		"--client-ca", filepath.Join(certs, "ca.pem"),
		"--policy", filepath.Join(root, "config", "policy.json"),
		"--log-format", "json",
	)
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "RUST_LOG=") {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	dieWithTest(cmd)
	stderr, err := cmd.StderrPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	lines := bufio.NewScanner(stderr)
	lines.Buffer(make([]byte, 64<<10), 1<<20)
	var seen []string
	for lines.Scan() {
		seen = append(seen, lines.Text())
		var event struct{ Message, Addr string }
		if json.Unmarshal(lines.Bytes(), &event) == nil && event.Message == "listening (mutual TLS)" {
			addr = event.Addr
			break
		}
	}
	if addr == "" {
		_ = cmd.Wait()
		return nil, fmt.Errorf("server did not start:\n%s", strings.Join(seen, "\n"))
	}
	go func() { _, _ = io.Copy(io.Discard, stderr) }()
	return func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		done := make(chan struct{})
		go func() { _ = cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(30 * time.Second):
			_ = cmd.Process.Kill()
		}
	}, nil
}
