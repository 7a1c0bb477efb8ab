"""A descriptor set (protoset) for grpcurl: the schema of every method the
server serves, so that grpcurl can call any of them without server
reflection (which the policy may deny to the caller).

* the service's own .proto files, every one under proto/, compiled with
  grpcio-tools' protoc (--include_imports);
* grpc.health.v1, from grpcio-health-checking's compiled descriptor;
* grpc.reflection.v1alpha, from grpcio-reflection's, and grpc.reflection.v1,
  which has the same messages under another package (grpcio-reflection
  ships only v1alpha), derived from it.

    python protoset.py OUT.protoset
"""
import pathlib
import sys
import tempfile

from google.protobuf import descriptor_pb2
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection_pb2
from grpc_tools import protoc

ROOT = pathlib.Path(__file__).resolve().parent.parent.parent
PROTO_ROOT = ROOT / "proto"


def _compiled(descriptor) -> descriptor_pb2.FileDescriptorProto:
    fd = descriptor_pb2.FileDescriptorProto()
    descriptor.CopyToProto(fd)
    return fd


def _renamed_package(fd: descriptor_pb2.FileDescriptorProto, old: str, new: str, name: str):
    """fd with its package `old` renamed `new` (in every type reference)."""
    out = descriptor_pb2.FileDescriptorProto()
    out.CopyFrom(fd)
    out.name, out.package = name, new
    out.ClearField("options")

    def fix(type_name: str) -> str:
        prefix = f".{old}."
        return f".{new}." + type_name[len(prefix):] if type_name.startswith(prefix) else type_name

    def fix_messages(messages):
        for m in messages:
            for field in m.field:
                if field.type_name:
                    field.type_name = fix(field.type_name)
            fix_messages(m.nested_type)

    fix_messages(out.message_type)
    for service in out.service:
        for method in service.method:
            method.input_type, method.output_type = fix(method.input_type), fix(method.output_type)
    return out


def build(out: pathlib.Path, proto_root: pathlib.Path = PROTO_ROOT) -> pathlib.Path:
    protos = sorted(str(p.relative_to(proto_root)) for p in proto_root.rglob("*.proto"))
    if not protos:
        raise RuntimeError(f"no .proto file under {proto_root}")
    include = pathlib.Path(protoc.__file__).parent / "_proto"
    with tempfile.TemporaryDirectory() as tmp:
        own = pathlib.Path(tmp) / "own.protoset"
        args = ["grpc_tools.protoc", f"-I{proto_root}", f"-I{include}", "--include_imports",
                f"--descriptor_set_out={own}", *protos]
        if protoc.main(args) != 0:
            raise RuntimeError(f"protoc failed on {proto_root}")
        files = descriptor_pb2.FileDescriptorSet.FromString(own.read_bytes())
    v1alpha = _compiled(reflection_pb2.DESCRIPTOR)
    extra = [
        _compiled(health_pb2.DESCRIPTOR),
        v1alpha,
        _renamed_package(v1alpha, "grpc.reflection.v1alpha", "grpc.reflection.v1",
                         "grpc/reflection/v1/reflection.proto"),
    ]
    names = {f.name for f in files.file}
    for fd in extra:
        if fd.name not in names:
            files.file.append(fd)
            names.add(fd.name)
    out.write_bytes(files.SerializeToString())
    return out


if __name__ == "__main__":
    print(build(pathlib.Path(sys.argv[1])))
