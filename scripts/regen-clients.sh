#!/usr/bin/env bash
# Regenerates every committed client stub from the .proto files under proto/:
#
#   scripts/regen-clients.sh
#
#   examples/python  grpcio-tools, pinned in examples/python/requirements.txt
#                    (in examples/python/.venv, gitignored)
#   examples/go      protoc + protoc-gen-go + protoc-gen-go-grpc (Debian 12)
#   examples/node    protoc + ts-proto, pinned in examples/node/package-lock.json
#
# It names no .proto file: each generator compiles whatever is under proto/,
# and the previous generation is deleted first, so after a rename
# (scripts/new-service) nothing stale is left behind. Installs missing tools
# from Debian's packages, PyPI and npm. Each example's interop test checks
# that its committed stubs match a fresh generation.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=lib/common.sh
. scripts/lib/common.sh
log() { echo "[regen-clients] $*" >&2; }

install_debs protobuf-compiler protoc-gen-go protoc-gen-go-grpc
need_node
need_python_venv

log "Python (examples/python)"
venv=examples/python/.venv
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
"$venv/bin/pip" install --quiet --disable-pip-version-check -r examples/python/requirements.txt
# generate.py overwrites but never deletes: drop the old stubs first.
find examples/python -path '*/.*' -prune -o -type f \
  \( -name '*_pb2.py' -o -name '*_pb2.pyi' -o -name '*_pb2_grpc.py' \) -print |
  while IFS= read -r old; do
    rm -f "$old"
    rmdir -p --ignore-fail-on-non-empty "$(dirname "$old")" 2>/dev/null || true
  done
"$venv/bin/python" examples/python/generate.py

log "Go (examples/go)"
examples/go/generate.sh

log "TypeScript (examples/node)"
[ -x examples/node/node_modules/.bin/protoc-gen-ts_proto ] ||
  (cd examples/node && npm ci --no-audit --no-fund --loglevel=error)
examples/node/generate.sh

git status --short -- examples/python examples/go examples/node 2>/dev/null || true
