"""The policy's test cases, to be proved over the wire by a client test.

Shared by the Python (grpcio) and grpcurl tests; the Go and TypeScript tests
do the same in their own language. Nothing here names the service: the
cases come from the case file, the methods and their call shapes from the
server binary.

* The case file: MTLS_POLICY_CASES, default config/policy.test.json (the
  file `server policy test` reads). Each case names the peer by `principals`
  or by `cert` (a PEM file, relative to the case file), a `method`, optional
  `headers` ("key: value") and `expect` ("allow" or "deny"). `rule` is not
  checked over the wire.
* The served methods: `MTLS_BIN_DIR/server methods --json`, run from the
  repository root (offline: no listener, no certificates).
* The client certificate of a case: a principal `spiffe://ANYTHING/NAME`
  is PKI/NAME.pem with PKI/NAME.key (the test's development PKI, made by the
  `certs` binary); a `cert` case uses that file and the `.key` beside it. A
  case that maps to no certificate is skipped, with the reason.
"""
import base64
import dataclasses
import json
import os
import pathlib
import re
import subprocess
from typing import List, Optional, Tuple

ROOT = pathlib.Path(__file__).resolve().parent.parent.parent
BIN = pathlib.Path(os.environ.get("MTLS_BIN_DIR", ROOT / "target" / "debug"))
CASES_FILE = pathlib.Path(os.environ.get("MTLS_POLICY_CASES", ROOT / "config" / "policy.test.json"))

# Deadline of each case's call, in seconds. A streaming handler that waits
# for more (a watch, say) ends with DEADLINE_EXCEEDED, which is not a denial.
DEADLINE = 5.0

HEALTH_CHECK = "/grpc.health.v1.Health/Check"
REFLECTION_V1ALPHA = "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"
# Services every server runs besides its own (the kit adds them).
KIT_SERVICES = {"grpc.health.v1.Health", "grpc.reflection.v1.ServerReflection",
                "grpc.reflection.v1alpha.ServerReflection"}

_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]*$")


@dataclasses.dataclass(frozen=True)
class Method:
    path: str
    client_streaming: bool
    server_streaming: bool
    input: str
    output: str

    @property
    def service(self) -> str:
        return self.path.split("/")[1]

    @property
    def kind(self) -> str:
        return {(False, False): "unary", (False, True): "server streaming",
                (True, False): "client streaming", (True, True): "bidi streaming"}[
            (self.client_streaming, self.server_streaming)]


@dataclasses.dataclass(frozen=True)
class Case:
    index: int
    name: str
    method: str
    expect: str
    # (key, value) pairs; a `-bin` key's value is the decoded bytes.
    headers: Tuple[Tuple[str, object], ...]
    # The "key: value" lines as the case file has them.
    raw_headers: Tuple[str, ...]
    principals: Tuple[str, ...]
    cert: Optional[pathlib.Path]
    # Why the case is malformed (a test failure), if it is.
    error: Optional[str] = None

    @property
    def id(self) -> str:
        return self.name

    def client_cert(self, pki: pathlib.Path):
        """(cert, key) paths for this case, or a string: why there are none."""
        if self.cert is not None:
            key = self.cert.with_suffix(".key")
            if not self.cert.is_file():
                return f"{self.cert}: no such certificate"
            if not key.is_file():
                return f"no key {key.name} beside the certificate {self.cert}"
            return self.cert, key
        names = {principal_name(p) for p in self.principals}
        if len(self.principals) != 1 or None in names:
            return (f"principals {list(self.principals)}: only one principal spiffe://.../NAME "
                    "maps to a certificate of the test PKI")
        name = names.pop()
        cert, key = pki / f"{name}.pem", pki / f"{name}.key"
        if not (cert.is_file() and key.is_file()):
            return f"the test PKI has no certificate for {self.principals[0]} (no {name}.pem and {name}.key)"
        return cert, key


def principal_name(principal: str) -> Optional[str]:
    """NAME of spiffe://ANYTHING/NAME, if it is one."""
    if not principal.startswith("spiffe://"):
        return None
    rest = principal[len("spiffe://"):]
    if "/" not in rest:
        return None
    name = rest.rsplit("/", 1)[1]
    return name if _NAME.match(name) else None


def parse_header(text: str):
    """'key: value' as the policy tools read it: the key trimmed and
    lower-cased, the value without its leading spaces; a `-bin` value is
    base64 and sent as the bytes it encodes."""
    if ":" not in text:
        raise ValueError(f"{text!r} is not key:value")
    key, value = text.split(":", 1)
    key, value = key.strip().lower(), value.lstrip()
    if key.endswith("-bin"):
        # Standard base64, padded or not, as gRPC accepts binary metadata.
        unpadded = value.rstrip("=")
        return key, base64.b64decode(unpadded + "=" * (-len(unpadded) % 4), validate=True)
    return key, value


def load_cases(path: pathlib.Path = CASES_FILE) -> List[Case]:
    """The cases of the case file; a malformed case becomes a Case whose
    `error` says why (its test fails). Unique, readable names for the report."""
    data = json.loads(path.read_text())
    cases, seen = [], {}
    for i, raw in enumerate(data.get("cases", [])):
        name = raw.get("name") or f"cases[{i}] {raw.get('method', '?')}"
        seen[name] = seen.get(name, 0) + 1
        if seen[name] > 1:
            name = f"{name} ({seen[name]})"
        error, headers = None, []
        try:
            headers = [parse_header(h) for h in raw.get("headers", [])]
        except (ValueError, TypeError) as e:
            error = f"headers: {e}"
        expect = raw.get("expect")
        if expect not in ("allow", "deny"):
            error = f"expect is {expect!r}, not 'allow' or 'deny'"
        if not isinstance(raw.get("method"), str):
            error = "no method"
        principals, cert = raw.get("principals"), raw.get("cert")
        if (principals is None) == (cert is None):
            error = "give exactly one of principals and cert"
        cases.append(Case(
            index=i, name=name, method=raw.get("method", ""), expect=expect, headers=tuple(headers),
            raw_headers=tuple(raw.get("headers", [])),
            principals=tuple(principals or ()),
            cert=(path.parent / cert) if cert is not None else None,
            error=error,
        ))
    return cases


def served_methods() -> dict:
    """{path: Method} for every method the server binary serves."""
    out = subprocess.run([str(BIN / "server"), "methods", "--json"], cwd=ROOT,
                         capture_output=True, text=True, timeout=60)
    if out.returncode != 0:
        raise RuntimeError(f"{BIN / 'server'} methods --json: exit {out.returncode}\n{out.stderr}")
    methods = json.loads(out.stdout)["methods"]
    return {m["path"]: Method(m["path"], bool(m["client_streaming"]), bool(m["server_streaming"]),
                              m["input"], m["output"]) for m in methods}


def own_services(methods: dict) -> List[str]:
    """The service's own services: every served one but health and reflection."""
    return sorted({m.service for m in methods.values()} - KIT_SERVICES)


def identity_allowed(cases: List[Case], method: str, pki: pathlib.Path):
    """(cert, key) of an identity of the test PKI that a case allows
    `method` (with no headers), or None."""
    for case in cases:
        if (case.error is None and case.cert is None and case.method == method and case.expect == "allow"
                and not case.headers):
            found = case.client_cert(pki)
            if not isinstance(found, str):
                return found
    return None


def any_identity(pki: pathlib.Path):
    """(cert, key) of some client of the test PKI (not the server, not the CA)."""
    for cert in sorted(pki.glob("*.pem")):
        key = cert.with_suffix(".key")
        if cert.stem not in ("ca", "server") and key.is_file():
            return cert, key
    raise RuntimeError(f"{pki}: no client certificate with its key")
