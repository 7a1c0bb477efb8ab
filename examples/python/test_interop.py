"""Interop: Python grpcio against the real Rust server, over mutual TLS.

The server binary (built by `cargo build --bins`; override the directory with
MTLS_BIN_DIR) is started on a free loopback port with the shipped
config/policy.json and a development PKI made for the test by the `certs`
binary. Nothing here names the service's RPCs or messages:

* every case of the policy's case file (config/policy.test.json, or
  MTLS_POLICY_CASES) is called over the wire, as the identity the case
  names, with an empty request message in the method's own call shape (the
  shapes come from `server methods --json`); a case that says deny must get
  PERMISSION_DENIED, one that says allow anything else;
* the TLS checks (a foreign CA's certificate refused, the key exchange) use
  the health service, which every server runs;
* reflection must describe every served method as the server binary lists it.
"""
import pathlib
import socket
import struct
import sys
import tempfile
import threading

import grpc
import pytest
from google.protobuf import descriptor_pool
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import policycases  # noqa: E402
import realserver  # noqa: E402
from realserver import make_pki  # noqa: E402

CASES = policycases.load_cases()
# Names of the cases selected and of those that ran (not skipped), for the
# "zero cases ran" check.
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


def connect(address, cert: pathlib.Path, key: pathlib.Path, ca: pathlib.Path) -> grpc.Channel:
    credentials = grpc.ssl_channel_credentials(
        root_certificates=ca.read_bytes(),
        private_key=key.read_bytes(),
        certificate_chain=cert.read_bytes(),
    )
    return grpc.secure_channel(address, credentials, options=[("grpc.ssl_target_name_override", "localhost")])


def _raw(message: bytes) -> bytes:
    return message


def call_empty(channel: grpc.Channel, method: policycases.Method, metadata=(), timeout=policycases.DEADLINE):
    """Calls `method` with an empty request message (zero bytes on the wire),
    in its own call shape; returns (status code, details)."""
    kwargs = dict(request_serializer=_raw, response_deserializer=_raw)
    options = dict(timeout=timeout, metadata=list(metadata))
    try:
        if not method.client_streaming and not method.server_streaming:
            channel.unary_unary(method.path, **kwargs)(b"", **options)
        elif not method.client_streaming:
            # Server streaming: read until the end.
            for _ in channel.unary_stream(method.path, **kwargs)(b"", **options):
                pass
        elif not method.server_streaming:
            # Client streaming: one message, half-close, await the reply.
            channel.stream_unary(method.path, **kwargs)(iter([b""]), **options)
        else:
            # Bidi: one message, half-close, read until the end.
            for _ in channel.stream_stream(method.path, **kwargs)(iter([b""]), **options):
                pass
    except grpc.RpcError as e:
        return e.code(), e.details()
    return grpc.StatusCode.OK, ""


def health_check(channel: grpc.Channel):
    """grpc.health.v1.Health/Check for the whole server, as raw bytes."""
    check = policycases.Method(policycases.HEALTH_CHECK, False, False, "", "")
    return call_empty(channel, check)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_policy_case(server, methods, case: policycases.Case):
    SELECTED.append(case.name)
    assert case.error is None, f"{case.name}: malformed case: {case.error}"
    address, certs = server
    method = methods.get(case.method)
    assert method is not None, f"{case.name}: {case.method} is not served (not in `server methods --json`)"
    found = case.client_cert(certs)
    if isinstance(found, str):
        pytest.skip(f"{case.name}: {found}")
    cert, key = found
    with connect(address, cert, key, certs / "ca.pem") as ch:
        if case.cert is not None:
            # A certificate from outside the test's PKI: unless the server
            # accepts it, nothing can be proved with it.
            code, details = health_check(ch)
            if code == grpc.StatusCode.UNAVAILABLE:
                pytest.skip(f"{case.name}: the server refuses {case.cert} (not issued by the test PKI's CA?): {details}")
        code, details = call_empty(ch, method, case.headers)
    RAN.append(case.name)
    where = f"{case.name}: {method.kind} {case.method} as {cert.name}"
    if case.expect == "deny":
        assert code == grpc.StatusCode.PERMISSION_DENIED, f"{where}: want PERMISSION_DENIED, got {code.name}: {details}"
    else:
        assert code != grpc.StatusCode.PERMISSION_DENIED, f"{where}: want allowed, got PERMISSION_DENIED: {details}"


def test_some_policy_case_ran():
    """Runs after the cases (pytest keeps file order): at least one case must
    have been called over the wire, or the test proved nothing."""
    if not SELECTED:
        pytest.skip("no policy case was selected (-k)")
    assert RAN, (f"none of the {len(CASES)} cases of {policycases.CASES_FILE} ran over the wire "
                 "(each was skipped or failed; see above)")


def test_certificate_from_another_ca_is_refused(server):
    address, certs = server
    with tempfile.TemporaryDirectory() as tmp:
        foreign = make_pki(pathlib.Path(tmp) / "other")
        cert, key = policycases.any_identity(foreign)
        # Trusts the real server, but presents a certificate the server's CA
        # never issued.
        with connect(address, cert, key, ca=certs / "ca.pem") as ch:
            code, details = health_check(ch)
        assert code == grpc.StatusCode.UNAVAILABLE, (code, details)


def test_reflection_describes_every_served_method(server, methods):
    address, certs = server
    identity = policycases.identity_allowed(CASES, policycases.REFLECTION_V1ALPHA, certs)
    if identity is None:
        pytest.skip(f"no case of {policycases.CASES_FILE} allows reflection v1alpha to an identity of the test PKI")
    with connect(address, *identity, certs / "ca.pem") as ch:
        database = ProtoReflectionDescriptorDatabase(ch)
        # Reflection describes the services it reflects, not itself.
        described = [m for m in methods.values() if not m.service.startswith("grpc.reflection.")]
        assert {m.service for m in described} <= set(database.get_services())
        pool = descriptor_pool.DescriptorPool(database)
        for m in described:
            found = pool.FindMethodByName(m.path[1:].replace("/", "."))
            assert (found.client_streaming, found.server_streaming) == (m.client_streaming, m.server_streaming), m
            assert (found.input_type.full_name, found.output_type.full_name) == (m.input, m.output), m


# TLS named groups (IANA), for the key exchange test.
X25519MLKEM768, X25519, SECP256R1 = 0x11EC, 0x001D, 0x0017
KIT_GROUPS = [X25519MLKEM768, X25519, SECP256R1]
HRR_RANDOM = bytes.fromhex("CF21AD74E59A6111BE1D8C021E65B891C2A211167ABB8C5E079E09E2C8A8339C")


class RecordingProxy:
    """A loopback TCP proxy that forwards one connection and keeps the bytes
    of each direction, so that the plaintext part of the TLS handshake
    (ClientHello, ServerHello) can be read afterwards."""

    def __init__(self, target):
        host, port = target.rsplit(":", 1)
        self.target = (host, int(port))
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.address = "127.0.0.1:%d" % self.listener.getsockname()[1]
        self.sent = bytearray()  # client -> server
        self.received = bytearray()  # server -> client
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        downstream, _ = self.listener.accept()
        upstream = socket.create_connection(self.target)
        threading.Thread(target=self._pump, args=(downstream, upstream, self.sent), daemon=True).start()
        self._pump(upstream, downstream, self.received)

    @staticmethod
    def _pump(src, dst, record):
        try:
            while data := src.recv(65536):
                record.extend(data)
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass


def handshake_messages(stream: bytes):
    """The plaintext handshake messages (type, body) at the start of one
    direction of a TLS connection, up to the first encrypted record."""
    data, i = b"", 0
    while i + 5 <= len(stream):
        content_type, length = stream[i], struct.unpack(">H", stream[i + 3:i + 5])[0]
        if content_type == 22:
            data += stream[i + 5:i + 5 + length]
        elif content_type != 20:  # ChangeCipherSpec is the compatibility dummy
            break
        i += 5 + length
    j = 0
    while j + 4 <= len(data):
        length = int.from_bytes(data[j + 1:j + 4], "big")
        yield data[j], data[j + 4:j + 4 + length]
        j += 4 + length


def extensions(body: bytes, offset: int):
    """The extensions of a hello message whose extension block starts at offset."""
    end = offset + 2 + struct.unpack(">H", body[offset:offset + 2])[0]
    i = offset + 2
    while i + 4 <= end:
        ext_type, length = struct.unpack(">HH", body[i:i + 4])
        yield ext_type, body[i + 4:i + 4 + length]
        i += 4 + length


def offered_groups(client_hello: bytes):
    """supported_groups of a ClientHello, in the client's order."""
    i = 2 + 32
    i += 1 + client_hello[i]  # session id
    i += 2 + struct.unpack(">H", client_hello[i:i + 2])[0]  # cipher suites
    i += 1 + client_hello[i]  # compression methods
    for ext_type, value in extensions(client_hello, i):
        if ext_type == 10:
            return [struct.unpack(">H", value[k:k + 2])[0] for k in range(2, len(value), 2)]
    return []


def selected_groups(server_stream: bytes):
    """(is_hello_retry_request, group) for each ServerHello the server sent."""
    for msg_type, body in handshake_messages(server_stream):
        if msg_type != 2:
            continue
        i = 2 + 32
        random = body[2:34]
        i += 1 + body[i] + 2 + 1  # session id, cipher suite, compression
        for ext_type, value in extensions(body, i):
            if ext_type == 51:
                yield random == HRR_RANDOM, struct.unpack(">H", value[:2])[0]


def test_key_exchange_with_grpcio(server):
    """grpcio (BoringSSL inside the wheel) cannot report the negotiated group,
    so read it off the wire: the server must pick the first group grpcio
    offers that the kit supports (X25519MLKEM768 when grpcio offers it, else
    X25519 or P-256), and the call must reach the server (a health check;
    the policy may allow or deny it, either proves the handshake)."""
    address, certs = server
    proxy = RecordingProxy(address)
    with connect(proxy.address, *policycases.any_identity(certs), certs / "ca.pem") as ch:
        code, details = health_check(ch)
    assert code in (grpc.StatusCode.OK, grpc.StatusCode.PERMISSION_DENIED), (code, details)
    client_hellos = [body for t, body in handshake_messages(bytes(proxy.sent)) if t == 1]
    offered = offered_groups(client_hellos[0])
    expected = next(g for g in offered if g in KIT_GROUPS)
    chosen = list(selected_groups(bytes(proxy.received)))
    assert chosen, "no ServerHello with a key_share seen"
    assert chosen[-1] == (False, expected), (
        f"grpcio offered {[hex(g) for g in offered]}, server chose {[(r, hex(g)) for r, g in chosen]}")
    print(f"grpcio offered {[hex(g) for g in offered]}; negotiated {hex(expected)}")
