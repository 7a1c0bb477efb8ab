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
root=$PWD
log() { echo "[test-node] $*" >&2; }

missing=()
command -v protoc >/dev/null 2>&1 || missing+=(protobuf-compiler)
command -v node >/dev/null 2>&1 || missing+=(nodejs)
command -v npm >/dev/null 2>&1 || missing+=(npm)
if [ ${#missing[@]} -gt 0 ]; then
  log "installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if [ -z "${MTLS_BIN_DIR:-}" ]; then
  log "MTLS_BIN_DIR unset: cargo build --locked --bins"
  cargo build --locked --bins
  export MTLS_BIN_DIR=$root/target/debug
fi

cd examples/node
log "node $(node --version), npm $(npm --version), $(protoc --version)"
npm ci --no-audit --no-fund --loglevel=error
rm -rf dist   # no stale compiled tests
npm test
