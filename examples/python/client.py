#!/usr/bin/env python3
"""Calls any method of the server over mutual TLS from Python (grpcio), with JSON.

No generated code: the message classes are built at run time from the
service's .proto files (compiled by grpcio-tools' protoc into a descriptor
set), or, with --reflection, from what the server's reflection says. Each
call takes the method's own shape (unary, server, client or bidi
streaming). From the repository root, with the server running:

    python examples/python/client.py methods
    python examples/python/client.py --identity reader call /PACKAGE.SERVICE/METHOD '{"field": "value"}'
    python examples/python/client.py --identity reader --reflection call /grpc.health.v1.Health/Check

grpcio offers ALPN h2 and checks the server's certificate against --ca and
--server-name (the name the certificate must carry, whatever --addr says).
"""
import argparse
import pathlib
import sys
import tempfile

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool, json_format, message_factory

PROTO_ROOT = pathlib.Path(__file__).resolve().parent.parent.parent / "proto"


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


def pool_from_protos(proto_root: pathlib.Path) -> descriptor_pool.DescriptorPool:
    """Every .proto under proto_root (and its imports), compiled by protoc."""
    from grpc_tools import protoc  # only this way of finding schemas needs it

    protos = sorted(str(p.relative_to(proto_root)) for p in proto_root.rglob("*.proto"))
    if not protos:
        raise SystemExit(f"no .proto file under {proto_root}")
    include = pathlib.Path(protoc.__file__).parent / "_proto"
    with tempfile.TemporaryDirectory() as tmp:
        out = pathlib.Path(tmp) / "descriptors.protoset"
        args = ["grpc_tools.protoc", f"-I{proto_root}", f"-I{include}", "--include_imports",
                f"--descriptor_set_out={out}", *protos]
        if protoc.main(args) != 0:
            raise SystemExit(f"protoc failed on {proto_root}")
        files = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())
    pool = descriptor_pool.DescriptorPool()
    for file in files.file:  # protoc lists each file after its imports
        pool.AddSerializedFile(file.SerializeToString())
    return pool


def own_methods(pool: descriptor_pool.DescriptorPool, proto_root: pathlib.Path):
    """(path, method descriptor) of every method of the .proto files."""
    for proto in sorted(proto_root.rglob("*.proto")):
        file = pool.FindFileByName(str(proto.relative_to(proto_root)))
        for service in file.services_by_name.values():
            for method in service.methods:
                yield f"/{service.full_name}/{method.name}", method


def shape(method) -> str:
    return {(False, False): "unary", (False, True): "server streaming",
            (True, False): "client streaming", (True, True): "bidi streaming"}[
        (method.client_streaming, method.server_streaming)]


def call(ch: grpc.Channel, method, requests: list, timeout: float, metadata) -> None:
    """Calls in the method's shape and prints each reply as a JSON line."""
    request_class = message_factory.GetMessageClass(method.input_type)
    reply_class = message_factory.GetMessageClass(method.output_type)
    messages = [json_format.Parse(text, request_class()) for text in requests]
    path = f"/{method.containing_service.full_name}/{method.name}"
    kwargs = dict(request_serializer=lambda m: m.SerializeToString(), response_deserializer=reply_class.FromString)
    options = dict(timeout=timeout, metadata=metadata)
    show = lambda reply: print(json_format.MessageToJson(reply, indent=None))  # noqa: E731
    if not method.client_streaming and len(messages) != 1:
        raise SystemExit(f"{path} is {shape(method)}: give exactly one JSON request")
    if not method.client_streaming and not method.server_streaming:
        show(ch.unary_unary(path, **kwargs)(messages[0], **options))
    elif not method.client_streaming:
        for reply in ch.unary_stream(path, **kwargs)(messages[0], **options):
            show(reply)
    elif not method.server_streaming:
        show(ch.stream_unary(path, **kwargs)(iter(messages), **options))
    else:
        for reply in ch.stream_stream(path, **kwargs)(iter(messages), **options):
            show(reply)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--addr", default="127.0.0.1:50051")
    parser.add_argument("--server-name", default="localhost")
    parser.add_argument("--certs", default="certs", help="directory of the development PKI")
    parser.add_argument("--identity", default="reader", help="use CERTS/NAME.pem and CERTS/NAME.key")
    parser.add_argument("--cert", help="client certificate (PEM); overrides --identity")
    parser.add_argument("--key", help="client private key (PEM); overrides --identity")
    parser.add_argument("--ca", help="CA bundle the server must chain to (default CERTS/ca.pem)")
    parser.add_argument("--proto-dir", type=pathlib.Path, default=PROTO_ROOT,
                        help="the .proto files (default: the repository's proto/)")
    parser.add_argument("--reflection", action="store_true",
                        help="find the method through the server's reflection instead of the .proto files")
    parser.add_argument("--header", action="append", default=[], metavar="'KEY: VALUE'", help="request metadata")
    parser.add_argument("--timeout", type=float, default=10.0)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("methods", help="list the methods of the .proto files")
    calling = sub.add_parser("call", help="call a method with JSON requests; print each reply as JSON")
    calling.add_argument("method", help="/PACKAGE.SERVICE/METHOD")
    calling.add_argument("json", nargs="*", help="request messages (default one {}; several for client streaming)")
    args = parser.parse_args(argv)

    if args.command == "methods":
        for path, method in own_methods(pool_from_protos(args.proto_dir), args.proto_dir):
            print(f"{path} ({shape(method)})")
        return 0
    metadata = []
    for header in args.header:
        key, sep, value = header.partition(":")
        if not sep:
            parser.error(f"--header {header!r} is not 'key: value'")
        metadata.append((key.strip().lower(), value.strip()))
    full_name = args.method.lstrip("/").replace("/", ".")
    with channel(args) as ch:
        try:
            if args.reflection:
                from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
                    ProtoReflectionDescriptorDatabase,
                )
                pool = descriptor_pool.DescriptorPool(ProtoReflectionDescriptorDatabase(ch))
            else:
                pool = pool_from_protos(args.proto_dir)
            try:
                method = pool.FindMethodByName(full_name)
            except KeyError:
                print(f"error: {args.method}: no such method (see `methods`, or try --reflection)", file=sys.stderr)
                return 2
            call(ch, method, args.json or ["{}"], args.timeout, metadata)
        except grpc.RpcError as e:
            print(f"error: {e.code().name}: {e.details()}", file=sys.stderr)
            return 1
        except json_format.ParseError as e:
            print(f"error: request: {e}", file=sys.stderr)
            return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
