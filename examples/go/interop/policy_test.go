package interop

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"example.org/mtls-template/examples/go/dyncall"
	"example.org/mtls-template/examples/go/mtls"
)

// The policy's test cases, proved over the wire: every case of the case
// file (config/policy.test.json, or MTLS_POLICY_CASES) is called as the
// identity it names, with an empty request message, in the method's own
// shape (from `server methods --json`). A case that says deny must get
// PERMISSION_DENIED; one that says allow, anything else.

const (
	healthCheck = "/grpc.health.v1.Health/Check"
	// Deadline of each case's call. A streaming handler that waits for more
	// (a watch, say) ends with DEADLINE_EXCEEDED, which is not a denial.
	caseDeadline = 5 * time.Second
)

// kitServices are served by every server besides its own services.
var kitServices = map[string]bool{
	"grpc.health.v1.Health":                    true,
	"grpc.reflection.v1.ServerReflection":      true,
	"grpc.reflection.v1alpha.ServerReflection": true,
}

// method is one entry of `server methods --json`.
type method struct {
	Path            string `json:"path"`
	ClientStreaming bool   `json:"client_streaming"`
	ServerStreaming bool   `json:"server_streaming"`
	Input           string `json:"input"`
	Output          string `json:"output"`
}

func (m method) shape() dyncall.Shape {
	return dyncall.Shape{ClientStreaming: m.ClientStreaming, ServerStreaming: m.ServerStreaming}
}

func (m method) service() string { return strings.Split(m.Path, "/")[1] }

// servedMethods runs the server binary's `methods --json`, from the
// repository root.
func servedMethods() (map[string]method, error) {
	cmd := exec.Command(filepath.Join(binDir, "server"), "methods", "--json")
	cmd.Dir = root
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("server methods --json: %v\n%s", err, stderr.String())
	}
	var manifest struct{ Methods []method }
	if err := json.Unmarshal(out, &manifest); err != nil {
		return nil, fmt.Errorf("server methods --json: %v", err)
	}
	methods := map[string]method{}
	for _, m := range manifest.Methods {
		methods[m.Path] = m
	}
	return methods, nil
}

// ownServices are the served services but health and reflection.
func ownServices(methods map[string]method) []string {
	seen := map[string]bool{}
	var names []string
	for _, m := range methods {
		if s := m.service(); !kitServices[s] && !seen[s] {
			seen[s] = true
			names = append(names, s)
		}
	}
	sort.Strings(names)
	return names
}

// policyCase is one case of the case file; `rule` is not checked over the
// wire.
type policyCase struct {
	Name       string    `json:"name"`
	Principals *[]string `json:"principals"`
	Cert       *string   `json:"cert"`
	Method     string    `json:"method"`
	Headers    []string  `json:"headers"`
	Expect     string    `json:"expect"`
}

// casesFile is MTLS_POLICY_CASES, else ROOT/config/policy.test.json.
func casesFile() string {
	if f := os.Getenv("MTLS_POLICY_CASES"); f != "" {
		abs, err := filepath.Abs(f)
		if err == nil {
			return abs
		}
		return f
	}
	return filepath.Join(root, "config", "policy.test.json")
}

// loadCases reads the case file, and names every case uniquely for the
// report.
func loadCases(path string) ([]policyCase, error) {
	text, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var file struct{ Cases []policyCase }
	if err := json.Unmarshal(text, &file); err != nil {
		return nil, fmt.Errorf("%s: %v", path, err)
	}
	seen := map[string]int{}
	for i := range file.Cases {
		c := &file.Cases[i]
		if c.Name == "" {
			c.Name = fmt.Sprintf("cases[%d] %s", i, c.Method)
		}
		seen[c.Name]++
		if n := seen[c.Name]; n > 1 {
			c.Name = fmt.Sprintf("%s (%d)", c.Name, n)
		}
	}
	return file.Cases, nil
}

var principalName = regexp.MustCompile(`^spiffe://.+/([A-Za-z0-9_][A-Za-z0-9._-]*)$`)

// clientCert maps a case to a certificate and key: a principal
// spiffe://ANYTHING/NAME is PKI/NAME.pem and PKI/NAME.key; a `cert` (relative
// to the case file) is that file and the .key beside it. skip says why
// there is none.
func (c policyCase) clientCert(pki, caseDir string) (cert, key, skip string) {
	if c.Cert != nil {
		cert = *c.Cert
		if !filepath.IsAbs(cert) {
			cert = filepath.Join(caseDir, cert)
		}
		key = strings.TrimSuffix(cert, filepath.Ext(cert)) + ".key"
		if _, err := os.Stat(cert); err != nil {
			return "", "", fmt.Sprintf("%s: no such certificate", cert)
		}
		if _, err := os.Stat(key); err != nil {
			return "", "", fmt.Sprintf("no key %s beside the certificate %s", filepath.Base(key), cert)
		}
		return cert, key, ""
	}
	var principals []string
	if c.Principals != nil {
		principals = *c.Principals
	}
	if len(principals) != 1 || principalName.FindStringSubmatch(principals[0]) == nil {
		return "", "", fmt.Sprintf("principals %q: only one principal spiffe://.../NAME maps to a certificate of the test PKI", principals)
	}
	name := principalName.FindStringSubmatch(principals[0])[1]
	cert, key = filepath.Join(pki, name+".pem"), filepath.Join(pki, name+".key")
	for _, f := range []string{cert, key} {
		if _, err := os.Stat(f); err != nil {
			return "", "", fmt.Sprintf("the test PKI has no certificate for %s (no %s.pem and %s.key)", principals[0], name, name)
		}
	}
	return cert, key, ""
}

// check says what is wrong with a case, if anything.
func (c policyCase) check() error {
	if (c.Principals == nil) == (c.Cert == nil) {
		return fmt.Errorf("give exactly one of principals and cert")
	}
	if c.Method == "" {
		return fmt.Errorf("no method")
	}
	if c.Expect != "allow" && c.Expect != "deny" {
		return fmt.Errorf("expect is %q, not allow or deny", c.Expect)
	}
	_, err := c.metadata()
	return err
}

// metadata is the case's headers ("key: value") as the policy tools read
// them: the key trimmed and lower-cased, the value without its leading
// spaces; a -bin value is base64, sent as the bytes it encodes.
func (c policyCase) metadata() (metadata.MD, error) {
	md := metadata.MD{}
	for _, h := range c.Headers {
		i := strings.Index(h, ":")
		if i < 0 {
			return nil, fmt.Errorf("header %q is not key:value", h)
		}
		key, value := strings.ToLower(strings.TrimSpace(h[:i])), strings.TrimLeft(h[i+1:], " \t")
		if strings.HasSuffix(key, "-bin") {
			// Standard base64, padded or not, as gRPC accepts it.
			decoded, err := base64.RawStdEncoding.DecodeString(strings.TrimRight(value, "="))
			if err != nil {
				return nil, fmt.Errorf("header %q: not base64", h)
			}
			value = string(decoded)
		}
		md.Append(key, value)
	}
	return md, nil
}

// allowedIdentity is the certificate and key of an identity of the test
// PKI that a case allows path with no headers, or "" when no case does.
func allowedIdentity(cases []policyCase, path string) (cert, key string) {
	for _, c := range cases {
		if c.check() == nil && c.Cert == nil && c.Method == path && c.Expect == "allow" && len(c.Headers) == 0 {
			if cert, key, skip := c.clientCert(certs, filepath.Dir(casesFile())); skip == "" {
				return cert, key
			}
		}
	}
	return "", ""
}

// anyIdentity is some client of a PKI (not the server, not the CA).
func anyIdentity(t *testing.T, pki string) (cert, key string) {
	t.Helper()
	pems, _ := filepath.Glob(filepath.Join(pki, "*.pem"))
	sort.Strings(pems)
	for _, pem := range pems {
		name := strings.TrimSuffix(filepath.Base(pem), ".pem")
		key := filepath.Join(pki, name+".key")
		if _, err := os.Stat(key); err == nil && name != "ca" && name != "server" {
			return pem, key
		}
	}
	t.Fatalf("%s: no client certificate with its key", pki)
	return "", ""
}

func TestPolicyCases(t *testing.T) {
	file := casesFile()
	cases, err := loadCases(file)
	if err != nil {
		t.Fatal(err)
	}
	methods, err := servedMethods()
	if err != nil {
		t.Fatal(err)
	}
	ran, skipped := 0, 0
	for _, c := range cases {
		c := c
		t.Run(c.Name, func(t *testing.T) {
			if err := c.check(); err != nil {
				t.Fatalf("malformed case: %v", err)
			}
			m, ok := methods[c.Method]
			if !ok {
				t.Fatalf("%s is not served (not in `server methods --json`)", c.Method)
			}
			cert, key, skip := c.clientCert(certs, filepath.Dir(file))
			if skip != "" {
				skipped++
				t.Skip(skip)
			}
			o := mtls.Options{Addr: addr, ServerName: "localhost", Cert: cert, Key: key, CA: filepath.Join(certs, "ca.pem")}
			conn, _ := dial(t, o)
			if c.Cert != nil {
				// A certificate from outside the test's PKI: unless the
				// server accepts it, nothing can be proved with it.
				ctx, cancel := context.WithTimeout(context.Background(), caseDeadline)
				err := dyncall.CallEmpty(ctx, conn, healthCheck, dyncall.Shape{})
				cancel()
				if status.Code(err) == codes.Unavailable {
					skipped++
					t.Skipf("the server refuses %s (not issued by the test PKI's CA?): %v", cert, err)
				}
			}
			md, _ := c.metadata()
			ctx, cancel := context.WithTimeout(metadata.NewOutgoingContext(context.Background(), md), caseDeadline)
			defer cancel()
			err := dyncall.CallEmpty(ctx, conn, c.Method, m.shape())
			ran++
			code := status.Code(err)
			where := fmt.Sprintf("%s %s as %s", m.shape(), c.Method, filepath.Base(cert))
			switch {
			case c.Expect == "deny" && code != codes.PermissionDenied:
				t.Errorf("%s: want PERMISSION_DENIED, got %s: %v", where, mtls.CodeName(code), err)
			case c.Expect == "allow" && code == codes.PermissionDenied:
				t.Errorf("%s: want allowed, got PERMISSION_DENIED: %v", where, err)
			default:
				t.Logf("%s: %s, as expected (%s)", where, mtls.CodeName(code), c.Expect)
			}
		})
	}
	if ran == 0 {
		t.Fatalf("none of the %d cases of %s ran over the wire (%d skipped; the rest failed)", len(cases), file, skipped)
	}
	t.Logf("%d of the %d cases of %s ran over the wire, %d skipped", ran, len(cases), file, skipped)
}
