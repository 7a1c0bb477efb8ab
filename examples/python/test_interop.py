"""Interop: Python grpcio against the real Rust server, over mutual TLS.

The server binary (built by `cargo build --bins`; override the directory with
MTLS_BIN_DIR) is started on a free loopback port, with a development PKI made
for the test by the `certs` binary.
"""
import filecmp
import socket
import pathlib
import sys
import tempfile
import struct
import threading

import grpc
import pytest
from google.protobuf import descriptor_pool
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parent.parent
sys.path.insert(0, str(HERE))
from inventory.v1 import inventory_pb2, inventory_pb2_grpc  # noqa: E402
import generate  # noqa: E402
import realserver  # noqa: E402
from realserver import make_pki  # noqa: E402


@pytest.fixture(scope="module")
def server():
    """Starts the server; yields (address, certs directory)."""
    with realserver.running_server() as running:
        yield running


def connect(address, certs: pathlib.Path, identity: str, ca: pathlib.Path = None) -> grpc.Channel:
    credentials = grpc.ssl_channel_credentials(
        root_certificates=(ca or certs / "ca.pem").read_bytes(),
        private_key=(certs / f"{identity}.key").read_bytes(),
        certificate_chain=(certs / f"{identity}.pem").read_bytes(),
    )
    return grpc.secure_channel(address, credentials, options=[("grpc.ssl_target_name_override", "localhost")])


def test_generated_stubs_match_the_protos():
    with tempfile.TemporaryDirectory() as tmp:
        generate.generate(pathlib.Path(tmp))
        for name in ["inventory_pb2.py", "inventory_pb2.pyi", "inventory_pb2_grpc.py"]:
            fresh = pathlib.Path(tmp) / "inventory" / "v1" / name
            committed = HERE / "inventory" / "v1" / name
            assert filecmp.cmp(fresh, committed, shallow=False), f"{name} is stale: run python generate.py"


def test_allowed_calls_succeed(server):
    address, certs = server
    with connect(address, certs, "writer") as ch:
        stub = inventory_pb2_grpc.InventoryStub(ch)
        item = inventory_pb2.Item(sku="py-1", name="Python", quantity=7)
        stored = stub.PutItem(inventory_pb2.PutItemRequest(item=item), timeout=10)
        assert stored.updated_by == "spiffe://example.org/writer"
    with connect(address, certs, "reader") as ch:
        stub = inventory_pb2_grpc.InventoryStub(ch)
        got = stub.GetItem(inventory_pb2.GetItemRequest(sku="py-1"), timeout=10)
        assert (got.name, got.quantity) == ("Python", 7)
        listed = [i.sku for i in stub.ListItems(inventory_pb2.ListItemsRequest(sku_prefix="py-"), timeout=10)]
        assert listed == ["py-1"]


def test_denied_call_gets_permission_denied(server):
    address, certs = server
    with connect(address, certs, "reader") as ch:
        stub = inventory_pb2_grpc.InventoryStub(ch)
        with pytest.raises(grpc.RpcError) as denied:
            stub.Purge(inventory_pb2.PurgeRequest(), timeout=10)
        assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert denied.value.details() == "permission denied by authorization policy"


def test_certificate_from_another_ca_is_refused(server):
    address, certs = server
    with tempfile.TemporaryDirectory() as tmp:
        foreign = make_pki(pathlib.Path(tmp) / "other")
        # Trusts the real server, but presents a certificate the server's CA
        # never issued.
        with connect(address, foreign, "admin", ca=certs / "ca.pem") as ch:
            stub = inventory_pb2_grpc.InventoryStub(ch)
            with pytest.raises(grpc.RpcError) as refused:
                stub.GetItem(inventory_pb2.GetItemRequest(sku="x"), timeout=10)
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE, refused.value


def test_reflection_lists_services_and_describes_a_method(server):
    address, certs = server
    with connect(address, certs, "reader") as ch:
        database = ProtoReflectionDescriptorDatabase(ch)
        services = set(database.get_services())
        assert {"inventory.v1.Inventory", "grpc.health.v1.Health"} <= services
        pool = descriptor_pool.DescriptorPool(database)
        method = pool.FindMethodByName("inventory.v1.Inventory.ListItems")
        assert method.server_streaming and not method.client_streaming
        assert method.input_type.full_name == "inventory.v1.ListItemsRequest"
        assert method.output_type.full_name == "inventory.v1.Item"


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
    X25519 or P-256), and the call must succeed."""
    address, certs = server
    proxy = RecordingProxy(address)
    with connect(proxy.address, certs, "reader") as ch:
        stub = inventory_pb2_grpc.InventoryStub(ch)
        assert list(stub.ListItems(inventory_pb2.ListItemsRequest(sku_prefix="kx-"), timeout=10)) == []
    client_hellos = [body for t, body in handshake_messages(bytes(proxy.sent)) if t == 1]
    offered = offered_groups(client_hellos[0])
    expected = next(g for g in offered if g in KIT_GROUPS)
    chosen = list(selected_groups(bytes(proxy.received)))
    assert chosen, "no ServerHello with a key_share seen"
    assert chosen[-1] == (False, expected), (
        f"grpcio offered {[hex(g) for g in offered]}, server chose {[(r, hex(g)) for r, g in chosen]}")
    print(f"grpcio offered {[hex(g) for g in offered]}; negotiated {hex(expected)}")
