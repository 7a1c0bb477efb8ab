#!/usr/bin/env bash
# Proves that a service made from an older template takes the current kit in
# one command (scripts/update-kit):
#
#   scripts/ci-update-kit.sh [OLD_REV]        (default: 798b0c1)
#
# 1. Makes a service from OLD_REV of this repository (git archive), renamed
#    with that revision's own scripts/new-service (order-book, trust domain
#    acme.internal; --no-regen: nothing is installed, and only the Rust side
#    is tested here), committed in a git repository of its own, as a team has
#    it.
# 2. Changes its API as a team would, with what OLD_REV offers: a CountItems
#    RPC in the proto, its handler, a policy rule, a policy test case and a
#    test that calls it over mutual TLS.
# 3. Runs this repository's scripts/update-kit with SOURCE = this repository.
#    OLD_REV's kit has no record, so update-kit must recognise it by content.
#    The service must pass fmt, clippy and `cargo test` with the new kit, and
#    nothing outside crates/mtls-kit and Cargo.lock may have changed.
# 4. Appends a comment to a kit file: update-kit must refuse, naming the
#    file; --force must put the kit back as the template has it.
#
# SOURCE is this repository's HEAD; when crates/mtls-kit has uncommitted
# changes, a throwaway clone with them committed stands in, so a developer
# tests the kit they have. Dependencies are compiled once, in the shared
# target directory (CARGO_TARGET_DIR, default this repository's target/):
# the old service rebuilds only its own crates and the kit. Temporary
# directories are removed on exit.
set -euo pipefail

usage() { echo "usage: scripts/ci-update-kit.sh [OLD_REV]" >&2; exit 2; }
case "${1:-}" in -h|--help) usage ;; esac
[ $# -le 1 ] || usage

root=$(cd "$(dirname "$0")/.." && pwd)
old_rev=${1:-798b0c1}
log() { echo "[ci-update-kit] $*"; }
fail() { echo "[ci-update-kit] FAILED: $*" >&2; exit 1; }
start=$(date +%s)

if [ "$(git -C "$root" rev-parse --is-shallow-repository)" = true ] &&
   ! git -C "$root" cat-file -e "$old_rev^{commit}" 2>/dev/null; then
  fail "$root is a shallow clone without $old_rev: fetch the full history (git fetch --unshallow)"
fi
git -C "$root" cat-file -e "$old_rev^{commit}" 2>/dev/null ||
  fail "$root has no revision $old_rev (the older template this test starts from)"

tmp=$(mktemp -d "${TMPDIR:-/tmp}/ci-update-kit.XXXXXX")
trap 'rm -rf "$tmp"' EXIT

# Compile into the shared target directory (CARGO_TARGET_DIR, default this
# repository's target/) as cargo's build-dir, so dependencies built there are
# reused; but give the final artifacts a directory of their own: the old
# service's `server`, `client` and `certs` would otherwise overwrite this
# repository's target/debug/server (and its tests would run this
# repository's, built for another service, when both build at once).
export CARGO_BUILD_BUILD_DIR=${CARGO_BUILD_BUILD_DIR:-${CARGO_TARGET_DIR:-$root/target}}
export CARGO_TARGET_DIR=$tmp/target
# The same profile settings as .ci/run, so the shared dependency builds are
# reused rather than rebuilt.
export CARGO_INCREMENTAL=${CARGO_INCREMENTAL:-0} CARGO_PROFILE_DEV_DEBUG=${CARGO_PROFILE_DEV_DEBUG:-line-tables-only}
export CARGO_TERM_COLOR=${CARGO_TERM_COLOR:-never}
svc=$tmp/order-book
update_kit=$root/scripts/update-kit
gitc() { git -c user.name=ci-update-kit -c user.email=ci-update-kit@localhost -c commit.gpgsign=false "$@"; }

# SOURCE: the repository itself, or a clone with the uncommitted kit.
template=$root
if [ -n "$(git -C "$root" status --porcelain -- crates/mtls-kit)" ]; then
  template=$tmp/template
  log "crates/mtls-kit has uncommitted changes: SOURCE is a clone of $root with them committed"
  git clone -q "$root" "$template"
  rm -rf "$template/crates/mtls-kit"
  (cd "$root" && git ls-files -z --cached --others --exclude-standard -- crates/mtls-kit |
     while IFS= read -r -d '' f; do if [ -e "$f" ]; then printf '%s\0' "$f"; fi; done |
     xargs -0 cp --parents -t "$template")
  gitc -C "$template" add -A crates/mtls-kit
  gitc -C "$template" commit -q -m "the working tree's crates/mtls-kit"
fi

log "1. a service made from $old_rev ($(git -C "$root" log -1 --format='%h %cs' "$old_rev")), renamed order-book"
mkdir -p "$svc"
git -C "$root" archive "$old_rev" | tar -x -C "$svc"
cd "$svc"
git init -q
gitc add -A && gitc commit -q -m "the template at $old_rev"
[ ! -e crates/mtls-kit/.installed ] || fail "$old_rev already has a kit record: pick an older revision"
python3 scripts/new-service order-book --trust-domain acme.internal --no-regen
gitc add -A && gitc commit -q -m "new-service order-book"

log "2. the team's own change: a CountItems RPC, its handler, a policy rule, tests"
python3 - <<'EOF'
import pathlib, re, sys

def edit(path, old, new):
    p = pathlib.Path(path)
    text = p.read_text()
    if old not in text:
        sys.exit(f"ci-update-kit: {path}: expected text not found: {old!r}")
    p.write_text(text.replace(old, new, 1))

proto = "proto/order_book/v1/order_book.proto"
edit(proto, "  rpc ImportItems(stream PutItemRequest) returns (ImportSummary);\n",
     "  rpc ImportItems(stream PutItemRequest) returns (ImportSummary);\n\n"
     "  // How many items there are.\n"
     "  rpc CountItems(CountItemsRequest) returns (CountItemsResponse);\n")
pathlib.Path(proto).write_text(pathlib.Path(proto).read_text()
    + "\nmessage CountItemsRequest {}\n\nmessage CountItemsResponse {\n  uint64 count = 1;\n}\n")

edit("src/handlers.rs", "impl OrderBook for OrderBookService {\n",
     "impl OrderBook for OrderBookService {\n"
     "    async fn count_items(\n"
     "        &self,\n"
     "        _req: Request<crate::proto::CountItemsRequest>,\n"
     "    ) -> Result<Response<crate::proto::CountItemsResponse>, Status> {\n"
     "        let items = self.items.read().unwrap_or_else(|p| p.into_inner());\n"
     "        Ok(Response::new(crate::proto::CountItemsResponse {\n"
     "            count: items.len() as u64,\n"
     "        }))\n"
     "    }\n\n")

# Readers may count; the rule count stays the same.
edit("config/policy.json", '"/order_book.v1.OrderBook/ListItems"]',
     '"/order_book.v1.OrderBook/ListItems", "/order_book.v1.OrderBook/CountItems"]')
edit("config/policy.test.json", '  "cases": [\n',
     '  "cases": [\n'
     '    {"name": "reader CountItems", "principals": ["spiffe://acme.internal/reader"], '
     '"method": "/order_book.v1.OrderBook/CountItems", "expect": "allow", "rule": "readers-read"},\n'
     '    {"name": "outsider CountItems", "principals": ["spiffe://acme.internal/outsider"], '
     '"method": "/order_book.v1.OrderBook/CountItems", "expect": "deny", "rule": "outsiders-get-nothing"},\n')
# The service's own tests count the served methods and the shipped cases.
edit("tests/policy_tool.rs", "checked against 9 served methods", "checked against 10 served methods")
edit("tests/policy_tool.rs", '"45 passed, 0 failed"', '"47 passed, 0 failed"')

pathlib.Path("tests/count_items.rs").write_text('''\
//! The team's own RPC, over mutual TLS with the shipped policy.

use mtls_kit::server::Limits;
use mtls_kit::testing::{TestPki, TestServer};
use order_book_service::proto::order_book_client::OrderBookClient;
use order_book_service::proto::{CountItemsRequest, Item, PutItemRequest};
use order_book_service::{services, DEV_IDENTITIES};
use tonic::Code;

const POLICY: &str = include_str!("../config/policy.json");

#[tokio::test]
async fn readers_count_and_outsiders_may_not() {
    let pki = TestPki::new(DEV_IDENTITIES.trust_domain);
    let server = TestServer::spawn(&pki, POLICY, services(&Limits::default())).await;
    let mut writer = OrderBookClient::new(server.connect(&pki.client("writer")).await.unwrap());
    let item = Item {
        sku: "a".into(),
        ..Default::default()
    };
    writer
        .put_item(PutItemRequest { item: Some(item) })
        .await
        .unwrap();

    let mut reader = OrderBookClient::new(server.connect(&pki.client("reader")).await.unwrap());
    let count = reader.count_items(CountItemsRequest {}).await.unwrap();
    assert_eq!(count.into_inner().count, 1);

    let mut outsider = OrderBookClient::new(server.connect(&pki.client("outsider")).await.unwrap());
    let denied = outsider
        .count_items(CountItemsRequest {})
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied);
}
''')
EOF
cargo fmt --all
gitc add -A && gitc commit -q -m "CountItems"

log "3. scripts/update-kit $template (recognition by content, then fmt, clippy, test)"
out=$tmp/update.log
if ! "$update_kit" "$template" 2>&1 | tee "$out"; then
  fail "update-kit did not bring the service from $old_rev to the current kit (output above)"
fi
grep -q "recognised by content" "$out" || fail "update-kit did not say it recognised $old_rev's kit by content"
[ -f crates/mtls-kit/.installed ] || fail "update-kit wrote no crates/mtls-kit/.installed"
outside=$(git status --porcelain --untracked-files=all | cut -c4- | grep -v -e '^crates/mtls-kit/' -e '^Cargo\.lock$' || true)
[ -z "$outside" ] || fail "update-kit changed files outside crates/mtls-kit and Cargo.lock: $outside"
gitc add -A && gitc commit -q -m "update-kit"

log "4. a hand-edited kit is refused, and --force overrides"
echo "// a hand edit" >> crates/mtls-kit/src/lib.rs
set +e
"$update_kit" "$template" --no-checks >"$out" 2>&1
status=$?
set -e
cat "$out"
[ "$status" -eq 1 ] || fail "update-kit exited $status on a hand-edited kit (expected 1, refused)"
grep -q "refused" "$out" || fail "update-kit did not say it refused"
grep -q "crates/mtls-kit/src/lib.rs" "$out" || fail "update-kit's refusal does not name crates/mtls-kit/src/lib.rs"
"$update_kit" "$template" --force --no-checks || fail "update-kit --force did not replace the hand-edited kit"
! grep -q "a hand edit" crates/mtls-kit/src/lib.rs || fail "--force left the hand edit in crates/mtls-kit/src/lib.rs"
"$update_kit" "$template" --no-checks >"$out" 2>&1 || { cat "$out"; fail "update-kit after --force"; }
grep -q "nothing to update" "$out" || { cat "$out"; fail "after --force the kit is not the template's"; }
[ -z "$(git status --porcelain)" ] || { git status --short; fail "after --force the kit differs from the first update"; }

log "passed in $(( $(date +%s) - start )) s"
