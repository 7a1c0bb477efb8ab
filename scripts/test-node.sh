#!/usr/bin/env bash
# TypeScript interop test: the @grpc/grpc-js client in examples/node against
# the real server.
#
#   scripts/test-node.sh
#
# Installs what is missing from Debian's packages (protoc for the generated
# code check; Node.js and npm if there is no node), runs `npm ci` (pinned by
# package-lock.json), compiles with tsc and runs `node --test`. Uses the
# binaries in MTLS_BIN_DIR, or builds them with cargo when it is unset.
# Exits non-zero if anything fails.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=lib/common.sh
. scripts/lib/common.sh
root=$PWD
log() { echo "[test-node] $*" >&2; }

install_debs protobuf-compiler
need_node

ensure_bins "$root"

cd examples/node
log "node $(node --version), npm $(npm --version), $(protoc --version)"
npm ci --no-audit --no-fund --loglevel=error
rm -rf dist   # no stale compiled tests
npm test
