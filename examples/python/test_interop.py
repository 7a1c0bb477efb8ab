"""Interop: Python grpcio against the real Rust server, over mutual TLS.

The server binary (built by `cargo build --bins`; override the directory with
MTLS_BIN_DIR) is started on a free loopback port, with a development PKI made
for the test by the `certs` binary.
"""
import filecmp
import pathlib
import sys
import tempfile

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
