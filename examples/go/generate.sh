#!/usr/bin/env bash
# Regenerates the Go code in this directory from every .proto file under
# ../../proto, with protoc, protoc-gen-go and protoc-gen-go-grpc.
#
#   ./generate.sh            replace the committed code (deletes stale *.pb.go)
#   ./generate.sh OUT_DIR    write it somewhere else (the test compares)
#
# Each proto directory becomes a Go package at the same path under this
# module (proto/inventory/v1 -> MODULE/inventory/v1, package inventoryv1),
# so nothing here names a particular .proto file.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
proto_root=$(cd "$here/../../proto" && pwd)
out=${1:-$here}
module=$(sed -n 's/^module //p' "$here/go.mod")

mapfile -t protos < <(cd "$proto_root" && find . -name '*.proto' -printf '%P\n' | LC_ALL=C sort)
[ ${#protos[@]} -gt 0 ] || { echo "no .proto files under $proto_root" >&2; exit 1; }

maps=()
for p in "${protos[@]}"; do
  dir=$(dirname "$p")
  pkg=${dir//[\/.-]/}
  maps+=("--go_opt=M$p=$module/$dir;$pkg" "--go-grpc_opt=M$p=$module/$dir;$pkg")
done

if [ "$out" = "$here" ]; then
  # Drop the previous generation, so a renamed or removed .proto leaves
  # nothing behind.
  while IFS= read -r old; do
    rm -f "$old"
    rmdir -p --ignore-fail-on-non-empty "$(dirname "$old")" 2>/dev/null || true
  done < <(find "$here" -name '*.pb.go' -not -path '*/.*')
fi
mkdir -p "$out"
protoc -I "$proto_root" \
  --go_out="$out" --go_opt=paths=source_relative \
  --go-grpc_out="$out" --go-grpc_opt=paths=source_relative \
  "${maps[@]}" "${protos[@]}"
