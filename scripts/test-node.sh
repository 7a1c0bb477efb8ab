#!/usr/bin/env bash
# TypeScript interop test: the @grpc/grpc-js client in examples/node against
# the real server.
#
#   scripts/test-node.sh
#
# The test proves every case of config/policy.test.json over the wire
# (MTLS_POLICY_CASES names another case file) and checks TLS; it needs no
# generated code. Installs Node.js and npm from Debian's packages if there
# is no node, runs `npm ci` (pinned by package-lock.json), compiles with tsc
# and runs `node --test`. Uses the binaries in MTLS_BIN_DIR, or builds them
# with cargo when it is unset. Exits non-zero if anything fails.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=lib/common.sh
. scripts/lib/common.sh
root=$PWD
log() { echo "[test-node] $*" >&2; }

need_node

ensure_bins "$root"

cd examples/node
log "node $(node --version), npm $(npm --version)"
npm ci --no-audit --no-fund --loglevel=error
rm -rf dist   # no stale compiled tests
npm test
