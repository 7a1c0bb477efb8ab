#!/usr/bin/env python3
"""Calls the inventory service over mutual TLS from Python (grpcio).

Examples, from the repository root with the server running:

    python examples/python/client.py --identity writer put apple-1 Apple 3
    python examples/python/client.py --identity reader get apple-1
    python examples/python/client.py --identity reader demo

grpcio offers ALPN h2 and checks the server's certificate against --ca and
--server-name (the name the certificate must carry, whatever --addr says).
"""
import argparse
import pathlib
import sys

import grpc

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from inventory.v1 import inventory_pb2, inventory_pb2_grpc  # noqa: E402


def channel(args: argparse.Namespace) -> grpc.Channel:
    certs = pathlib.Path(args.certs)
    cert = pathlib.Path(args.cert) if args.cert else certs / f"{args.identity}.pem"
    key = pathlib.Path(args.key) if args.key else certs / f"{args.identity}.key"
    ca = pathlib.Path(args.ca) if args.ca else certs / "ca.pem"
    credentials = grpc.ssl_channel_credentials(
        root_certificates=ca.read_bytes(),
        private_key=key.read_bytes(),
        certificate_chain=cert.read_bytes(),
    )
    # The server's certificate must carry this name; the address may differ.
    options = [("grpc.ssl_target_name_override", args.server_name)]
    return grpc.secure_channel(args.addr, credentials, options=options)


def show(item: inventory_pb2.Item) -> None:
    print(f"sku={item.sku} name={item.name!r} quantity={item.quantity} updated_by={item.updated_by}")


def demo(stub: inventory_pb2_grpc.InventoryStub, timeout: float) -> int:
    """An allowed call (GetItem) and a denied one (Purge), for a reader."""
    try:
        stub.GetItem(inventory_pb2.GetItemRequest(sku="demo"), timeout=timeout)
        print("allowed: GetItem succeeded")
    except grpc.RpcError as e:
        if e.code() != grpc.StatusCode.NOT_FOUND:
            print(f"GetItem failed: {e.code().name}: {e.details()}", file=sys.stderr)
            return 1
        print("allowed: GetItem reached the handler (NOT_FOUND: no such item)")
    try:
        stub.Purge(inventory_pb2.PurgeRequest(), timeout=timeout)
    except grpc.RpcError as e:
        if e.code() == grpc.StatusCode.PERMISSION_DENIED:
            print(f"denied: Purge got PERMISSION_DENIED: {e.details()}")
            return 0
        print(f"Purge failed unexpectedly: {e.code().name}: {e.details()}", file=sys.stderr)
        return 1
    print("Purge was allowed; is this identity an admin?", file=sys.stderr)
    return 1


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--addr", default="127.0.0.1:50051")
    parser.add_argument("--server-name", default="localhost")
    parser.add_argument("--certs", default="certs", help="directory of the development PKI")
    parser.add_argument("--identity", default="reader", help="use CERTS/NAME.pem and CERTS/NAME.key")
    parser.add_argument("--cert", help="client certificate (PEM); overrides --identity")
    parser.add_argument("--key", help="client private key (PEM); overrides --identity")
    parser.add_argument("--ca", help="CA bundle the server must chain to (default CERTS/ca.pem)")
    parser.add_argument("--timeout", type=float, default=10.0)
    sub = parser.add_subparsers(dest="command", required=True)
    get = sub.add_parser("get")
    get.add_argument("sku")
    put = sub.add_parser("put")
    put.add_argument("sku")
    put.add_argument("name")
    put.add_argument("quantity", type=int)
    listing = sub.add_parser("list")
    listing.add_argument("--prefix", default="")
    sub.add_parser("demo", help="one allowed and one denied call")
    args = parser.parse_args(argv)

    with channel(args) as ch:
        stub = inventory_pb2_grpc.InventoryStub(ch)
        try:
            if args.command == "get":
                show(stub.GetItem(inventory_pb2.GetItemRequest(sku=args.sku), timeout=args.timeout))
            elif args.command == "put":
                item = inventory_pb2.Item(sku=args.sku, name=args.name, quantity=args.quantity)
                show(stub.PutItem(inventory_pb2.PutItemRequest(item=item), timeout=args.timeout))
            elif args.command == "list":
                request = inventory_pb2.ListItemsRequest(sku_prefix=args.prefix)
                for item in stub.ListItems(request, timeout=args.timeout):
                    show(item)
            else:
                return demo(stub, args.timeout)
        except grpc.RpcError as e:
            print(f"error: {e.code().name}: {e.details()}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
