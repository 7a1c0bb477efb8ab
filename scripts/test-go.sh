#!/usr/bin/env bash
# Go interop test: the Go client in examples/go against the real server.
#
#   scripts/test-go.sh
#
# The test proves every case of config/policy.test.json over the wire
# (MTLS_POLICY_CASES names another case file) and checks TLS; it needs no
# generated code. Installs what it needs from Debian's packages (Go 1.19,
# grpc-go, protobuf) and builds offline in GOPATH mode: no Go module proxy
# is needed. Uses the binaries in MTLS_BIN_DIR, or builds them with cargo
# when it is unset. Exits non-zero if anything fails.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=lib/common.sh
. scripts/lib/common.sh
root=$PWD
log() { echo "[test-go] $*" >&2; }

# golang-github-golang-protobuf-1-5-dev: grpc-go 1.33 decodes messages
# (its health client's, say) through github.com/golang/protobuf, and only
# its 1.4+ API handles protobuf-go 1.28 messages (1.3 panics on the first
# reply).
packages=(golang-go golang-google-grpc-dev golang-google-protobuf-dev golang-github-golang-protobuf-1-5-dev)
install_debs "${packages[@]}"

ensure_bins "$root"

# GOPATH mode wants the package at GOPATH/src/IMPORT/PATH: link the example
# there, in a throwaway GOPATH, and work through the link.
gopath=$(mktemp -d)
trap 'rm -rf "$gopath"' EXIT
module=$(sed -n 's/^module //p' examples/go/go.mod)
mkdir -p "$gopath/src/$(dirname "$module")"
ln -s "$root/examples/go" "$gopath/src/$module"
cd "$gopath/src/$module"
export GO111MODULE=off GOPATH="$gopath:/usr/share/gocode"
go version

unformatted=$(gofmt -l .)
[ -z "$unformatted" ] || { log "not gofmt-formatted: $unformatted"; exit 1; }
go vet ./...
set +e
go test -count=1 -v ./... 2>&1 | tee "$gopath/test.log"
status=${PIPESTATUS[0]}
set -e
# Tests and subtests (one per policy case); the skips say why above.
count() { grep -cE "^ *--- $1" "$gopath/test.log" || true; }
log "$(count PASS) passed, $(count FAIL) failed, $(count SKIP) skipped"
exit "$status"
