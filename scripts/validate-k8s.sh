#!/usr/bin/env bash
# Validates deploy/kubernetes/ offline: renders the kustomization with
# kubectl 1.20 (Debian's kubernetes-client, the oldest kustomize we support),
# validates every resource (built-in kinds against the Kubernetes API schema,
# strict; cert-manager kinds against cert-manager's CRD schemas), checks that
# the policy ConfigMap holds config/policy.json as it is (it comes in through
# the config/ base: there is no Kubernetes copy of the policy), that
# the SPIFFE IDs of the Certificates and the principals of the policy agree,
# checks the wiring (mounts, probes, shutdown timing) and that the metrics
# endpoint is exposed (SERVER_METRICS_LISTEN not loopback, containerPort 9464
# `metrics`) and admitted by the NetworkPolicy only from `monitoring`. Then it
# proves the checks bite: the self-test (pytest, deploy/kubernetes/tests/)
# feeds broken copies of the manifests and expects each one to fail.
#
# Usage: scripts/validate-k8s.sh [--no-self-test]
#
# Needs only Debian 12 with Python 3.11+ and apt; installs the rest:
#   - kubectl 1.20 from Debian's kubernetes-client package, unpacked into the
#     cache directory (not installed system-wide: a machine's own kubectl,
#     from another package, may own /usr/bin/kubectl);
#   - kubernetes-validate, jsonschema, pyyaml and pytest, pinned in
#     deploy/kubernetes/tools/requirements.txt, into a venv in the cache.
#
# Environment:
#   K8S_SCHEMAS_DIR      the shared schema folder (default: ../shared/k8s-schemas
#                        beside the repository, as in CI); cert-manager's CRDs
#                        are read from its cert-manager/ subfolder
#   K8S_SCHEMA_VERSION   Kubernetes API version to validate against (default
#                        1.35.0, the oldest minor still supported upstream on
#                        2026-12-01; bundled by kubernetes-validate 1.37.0)
#   VALIDATE_K8S_CACHE   where the tools go (default ~/.cache/validate-k8s)
#   KUBECTL              a kubectl to use instead of Debian's 1.20
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
kdir="$repo/deploy/kubernetes"
schemas=${K8S_SCHEMAS_DIR:-"$repo/../shared/k8s-schemas"}
crd_dir="$schemas/cert-manager"
k8s_version=${K8S_SCHEMA_VERSION:-1.35.0}
cache=${VALIDATE_K8S_CACHE:-"${XDG_CACHE_HOME:-$HOME/.cache}/validate-k8s"}
self_test=1
for arg in "$@"; do
  case "$arg" in
    --no-self-test) self_test=0 ;;
    -h|--help) sed -n '2,30p' "$0"; exit 0 ;;
    *) echo "unknown argument: $arg" >&2; exit 2 ;;
  esac
done

start=$(date +%s)
step() { echo; echo "== $*"; }
fail() { echo "validate-k8s: FAIL: $*" >&2; exit 1; }

[ -d "$crd_dir" ] || fail "no cert-manager CRD schemas in $crd_dir (set K8S_SCHEMAS_DIR)"
mkdir -p "$cache"

step "kubectl (kustomize)"
if [ -z "${KUBECTL:-}" ]; then
  KUBECTL="$cache/kubectl/usr/bin/kubectl"
  if [ ! -x "$KUBECTL" ]; then
    export DEBIAN_FRONTEND=noninteractive
    tmp=$(mktemp -d)
    # `apt-get download` needs package lists; fetch them once if it fails.
    if ! (cd "$tmp" && apt-get download -qq kubernetes-client >/dev/null 2>&1); then
      apt-get update -qq >/dev/null
      (cd "$tmp" && apt-get download -qq kubernetes-client >/dev/null)
    fi
    rm -rf "$cache/kubectl"
    dpkg-deb -x "$tmp"/kubernetes-client_*.deb "$cache/kubectl"
    rm -rf "$tmp"
  fi
fi
"$KUBECTL" version --client 2>/dev/null | head -1
export KUBECTL

step "Python tools (venv, pinned)"
venv="$cache/venv"
req="$kdir/tools/requirements.txt"
if [ ! -x "$venv/bin/python" ] || ! cmp -s "$req" "$venv/requirements.txt"; then
  rm -rf "$venv"
  python3 -m venv "$venv" || {
    # Debian's python3 without ensurepip.
    apt-get update -qq >/dev/null && apt-get install -y -qq python3-venv >/dev/null
    python3 -m venv "$venv"
  }
  "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$req"
  cp "$req" "$venv/requirements.txt"
fi
"$venv/bin/python" - "$k8s_version" <<'EOF'
import sys
from kubernetes_validate import utils
import kubernetes_validate.version as v
want = sys.argv[1]
have = utils.all_versions()
print(f"kubernetes-validate {v.__version__}: bundled API schemas {have[0]} to {have[-1]}")
if want not in have:
    sys.exit(f"Kubernetes {want} is not bundled (pin one of {have})")
EOF

step "render (kubectl kustomize deploy/kubernetes)"
rendered="$cache/rendered.yaml"
"$KUBECTL" kustomize "$kdir" >"$rendered" || fail "kustomize could not render $kdir"
echo "$(grep -c '^kind:' "$rendered") resources rendered"

step "validate (schemas, SPIFFE IDs vs policy, wiring)"
status=0
"$venv/bin/python" "$kdir/tools/validate_k8s.py" "$rendered" \
  --crd-dir "$crd_dir" --k8s-version "$k8s_version" \
  --expect-policy "$repo/config/policy.json" || status=1

if [ "$self_test" = 1 ]; then
  step "self-test: broken manifests must fail (pytest deploy/kubernetes/tests)"
  K8S_CRD_DIR="$crd_dir" K8S_SCHEMA_VERSION="$k8s_version" \
    "$venv/bin/python" -m pytest -q -p no:cacheprovider "$kdir/tests" || status=1
fi

echo
if [ "$status" = 0 ]; then
  echo "validate-k8s: OK in $(( $(date +%s) - start )) s"
else
  fail "see the problems above ($(( $(date +%s) - start )) s)"
fi
