#!/usr/bin/env bash
# Supply-chain checks of the dependency graph, offline:
#
#   scripts/supply-chain.sh
#
# 1. `cargo audit`: Cargo.lock (and fuzz/Cargo.lock) against the RustSec
#    advisory database snapshot in ../shared/advisory-db.tar.gz (unpacked into
#    a scratch directory; the snapshot's date is printed, since advisories
#    published after it are not checked). ADVISORY_DB_TARBALL overrides the
#    path.
# 2. `cargo deny check licenses bans sources` with deny.toml: allowed
#    licences, banned crates (duplicates only warn), crates.io as the only
#    source. Advisories are left to cargo audit (cargo-deny wants a git
#    database it can fetch).
#
# Installs cargo-audit and cargo-deny at pinned versions if they are absent.
# Exits non-zero on any vulnerability, denied licence, banned crate or
# foreign source. Unmaintained/unsound/yanked notices are printed as
# warnings.
set -euo pipefail
cd "$(dirname "$0")/.."

CARGO_AUDIT_VERSION=0.22.2
CARGO_DENY_VERSION=0.20.2
db_tarball=${ADVISORY_DB_TARBALL:-../shared/advisory-db.tar.gz}

log() { echo "[supply-chain] $*" >&2; }
started=$(date +%s)

# --- tools -----------------------------------------------------------------

install() { # CRATE VERSION
    if ! cargo "${1#cargo-}" --version 2>/dev/null | grep -q " $2\$"; then
        log "installing $1 $2 (cargo install --locked; a few minutes the first time)"
        cargo install --locked --force "$1" --version "$2"
    fi
}
install cargo-audit "$CARGO_AUDIT_VERSION"
install cargo-deny "$CARGO_DENY_VERSION"
log "$(cargo audit --version), $(cargo deny --version)"

lockfiles=(Cargo.lock)
[ -f fuzz/Cargo.lock ] && lockfiles+=(fuzz/Cargo.lock)

# --- advisories --------------------------------------------------------------

[ -f "$db_tarball" ] || { log "no advisory database at $db_tarball"; exit 1; }
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
tar -xzf "$db_tarball" -C "$scratch"
db=$scratch
# The tarball holds the repository's files, possibly under one top directory.
if [ ! -d "$db/crates" ]; then
    inner=$(find "$db" -mindepth 2 -maxdepth 2 -type d -name crates -printf '%h\n' | head -1)
    [ -n "$inner" ] || { log "$db_tarball holds no advisory database"; exit 1; }
    db=$inner
fi
# The snapshot's date: the commit date its README (advisory-db.md beside the
# tarball) records, else the date of the newest advisory in it.
notes="${db_tarball%.tar.gz}.md"
db_date=$(sed -n 's/^- commit date: *\([0-9-]*\).*/\1/p' "$notes" 2>/dev/null | head -1)
if [ -z "$db_date" ]; then
    db_date=$(grep -rhoE '^date = "[0-9]{4}-[0-9]{2}-[0-9]{2}"' "$db/crates" | cut -d'"' -f2 | sort | tail -1)
fi
db_age=$((($(date +%s) - $(date -d "$db_date" +%s)) / 86400))
log "advisory database snapshot of $db_date ($db_age days old):" \
    "advisories published after that date are not checked"

failed=0
for lock in "${lockfiles[@]}"; do
    log "cargo audit: $lock"
    cargo audit --db "$db" --no-fetch --stale --file "$lock" || failed=1
done

# --- licences, bans, sources ----------------------------------------------------

for manifest in Cargo.toml fuzz/Cargo.toml; do
    [ -f "$manifest" ] || continue
    log "cargo deny: $manifest"
    cargo deny --manifest-path "$manifest" --locked --config deny.toml \
        check licenses bans sources || failed=1
done

log "done in $(($(date +%s) - started)) s"
if [ "$failed" -ne 0 ]; then
    log "FAILED: see the findings above; fix them or document an exception in deny.toml"
    exit 1
fi
log "passed"
