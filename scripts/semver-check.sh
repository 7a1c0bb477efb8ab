#!/usr/bin/env bash
# Checks that the kit's version says what its change did:
#
#   scripts/semver-check.sh [--baseline REV]
#
# Services take the kit from any commit of the template (scripts/update-kit),
# so every change to crates/mtls-kit is a release and changes its version.
#
# The baseline (the last release before the kit as it is now): the newest
# commit on the current branch (HEAD and its first parents) whose
# crates/mtls-kit differs from the working tree's. CHANGELOG.md (and a
# service's .installed record) are left out of that comparison, so fixing a
# changelog typo is no release. In CI the working tree is HEAD, so the
# baseline is the kit before the last commit that changed it; with
# uncommitted kit changes it is HEAD. --baseline REV names another.
#
# Against the baseline it checks that
# 1. the version changed. One exemption, for the change that started
#    versioning: against a baseline without CHANGELOG.md, the kit may keep
#    its version if nothing but its Cargo.toml changed (0.1.0 names the kit
#    as versioning found it);
# 2. crates/mtls-kit/CHANGELOG.md changed too and has a heading for the
#    version (`## X.Y.Z ...`);
# 3. the public API changed no more than the version bump allows:
#    cargo-semver-checks, with the baseline taken from git (no registry).
#    Before 1.0, 0.x -> 0.(x+1) may break and 0.x.y -> 0.x.(y+1) may not.
#
# All three run, and every problem found is reported before it fails. It
# installs cargo-semver-checks (from crates.io, pinned) when missing. It
# needs the repository's full history: a shallow clone is an error.
set -euo pipefail

CSC_VERSION=0.51.0
KIT=crates/mtls-kit
# The kit's public API as services see it: the default features, plus the
# test fixtures (`testing`) and OpenTelemetry (`otel`). `fips` is left out:
# it builds the same API on another crypto module, and needs CMake and Go.
FEATURES=(--default-features --features testing --features otel)

usage() { echo "usage: scripts/semver-check.sh [--baseline REV]" >&2; exit 2; }
log() { echo "[semver-check] $*"; }
fail() { echo "[semver-check] FAILED: $*" >&2; exit 1; }
problems=()
problem() { echo "[semver-check] problem: $*" >&2; problems+=("$*"); }

baseline=
while [ $# -gt 0 ]; do
  case "$1" in
    --baseline) [ $# -ge 2 ] || usage; baseline=$2; shift 2 ;;
    -h|--help) usage ;;
    *) echo "semver-check: unknown argument: $1" >&2; usage ;;
  esac
done

cd "$(dirname "$0")/.."
root=$PWD
git rev-parse --git-dir >/dev/null 2>&1 || fail "$root is not a git repository: the baseline comes from its history"
if [ "$(git rev-parse --is-shallow-repository)" = true ]; then
  fail "$root is a shallow clone: the kit's previous release may not be in it. Clone with full history, or run: git fetch --unshallow"
fi

# The version of the kit in a tree-ish (or the working tree with "").
kit_version() {
  local manifest
  if [ -z "$1" ]; then manifest=$(cat "$KIT/Cargo.toml"); else manifest=$(git show "$1:$KIT/Cargo.toml"); fi
  printf '%s' "$manifest" | python3 -c '
import sys, tomllib
try:
    print(tomllib.loads(sys.stdin.read())["package"]["version"])
except Exception as e:
    sys.exit(f"no [package] version: {e}")'
}

# "mode object path" for every kit file but the changelog and the record.
signature() {
  git ls-tree -r "$1" -- "$KIT" |
    awk -F '\t' -v cl="$KIT/CHANGELOG.md" -v rec="$KIT/.installed" \
      '$2 != cl && $2 != rec { split($1, a, " "); print a[1], a[3], $2 }'
}

tmp=$(mktemp -d "${TMPDIR:-/tmp}/semver-check.XXXXXX")
trap 'rm -rf "$tmp"' EXIT

# The working tree's kit as a tree object, in a temporary index and object
# directory: untracked files count, the repository is left as it was.
objects=$(git rev-parse --path-format=absolute --git-path objects)
export GIT_INDEX_FILE=$tmp/index GIT_OBJECT_DIRECTORY=$tmp/objects GIT_ALTERNATE_OBJECT_DIRECTORIES=$objects
mkdir -p "$tmp/objects"
git read-tree HEAD
git add --all -- "$KIT"
work_tree=$(git write-tree)
work_sig=$(signature "$work_tree")
unset GIT_INDEX_FILE GIT_OBJECT_DIRECTORY GIT_ALTERNATE_OBJECT_DIRECTORIES

if [ -z "$baseline" ]; then
  if [ "$(signature HEAD)" != "$work_sig" ]; then
    baseline=$(git rev-parse HEAD)
  else
    # The commits that touched the kit, newest first: the first whose parent
    # has another kit is where the current kit began.
    while read -r commit; do
      parent=$(git rev-parse --verify --quiet "$commit^1") || continue
      if [ "$(signature "$parent")" != "$work_sig" ]; then baseline=$parent; break; fi
    done < <(git rev-list --first-parent HEAD -- "$KIT")
  fi
  if [ -z "$baseline" ]; then
    log "no commit on this branch has another kit: nothing to compare against"
    exit 0
  fi
else
  baseline=$(git rev-parse --verify --quiet "$baseline^{commit}") || fail "no such revision: $baseline"
fi

version=$(kit_version "")
base_version=$(kit_version "$baseline")
log "kit $version (working tree) against the baseline $(git log -1 --format='%h of %cs, "%s"' "$baseline"), kit $base_version"
changed=$( { diff <(signature "$baseline") <(printf '%s\n' "$work_sig") || true; } |
  sed -n 's/^[<>] [0-9]* [0-9a-f]* //p' | sort -u)
if [ -z "$changed" ]; then
  log "the kit did not change since the baseline"
fi

# 1. The version changed.
versioned=true
git cat-file -e "$baseline:$KIT/CHANGELOG.md" 2>/dev/null || versioned=false
newer=$(python3 - "$base_version" "$version" <<'EOF'
import re, sys
def key(v):
    m = re.match(r"^(\d+)\.(\d+)\.(\d+)(?:-([0-9A-Za-z.-]+))?", v)
    if not m:
        sys.exit(f"not a semver version: {v}")
    pre = m.group(4)
    return (int(m.group(1)), int(m.group(2)), int(m.group(3)), (1,) if pre is None else (0, pre))
a, b = key(sys.argv[1]), key(sys.argv[2])
print("newer" if b > a else "same" if b == a else "older")
EOF
)
if [ -n "$changed" ]; then
  echo "$changed" | sed 's/^/[semver-check]   changed since the baseline: /'
  if [ "$newer" = older ]; then
    problem "the kit's version went back from $base_version to $version ($KIT/Cargo.toml)"
  elif [ "$newer" = same ] && [ "$versioned" = false ] && [ "$changed" = "$KIT/Cargo.toml" ]; then
    log "the baseline predates the kit's versioning (no $KIT/CHANGELOG.md) and only the manifest changed: $version may stay"
  elif [ "$newer" = same ]; then
    problem "$KIT changed since the baseline but its version is still $version: set the next version in $KIT/Cargo.toml (0.x.y -> 0.x.(y+1) for a compatible change, 0.(x+1).0 for a breaking one) and give $KIT/CHANGELOG.md an entry for it"
  fi

  # 2. The changelog changed and names the version.
  if [ ! -f "$KIT/CHANGELOG.md" ]; then
    problem "$KIT changed since the baseline but has no CHANGELOG.md"
  elif git cat-file -e "$baseline:$KIT/CHANGELOG.md" 2>/dev/null &&
       git show "$baseline:$KIT/CHANGELOG.md" | cmp -s - "$KIT/CHANGELOG.md"; then
    problem "$KIT changed since the baseline but $KIT/CHANGELOG.md did not: say what changed, why, and what a service must do"
  elif ! grep -Eq "^## \[?${version//./\\.}\]?( |$)" "$KIT/CHANGELOG.md"; then
    problem "$KIT/CHANGELOG.md has no entry for $version: rename '## Unreleased' to '## $version (YYYY-MM-DD)' and put an empty '## Unreleased' back on top"
  fi
  [ ${#problems[@]} -gt 0 ] || log "version and changelog: ok ($base_version -> $version)"
fi

# 3. The public API, with cargo-semver-checks.
if ! cargo semver-checks --version 2>/dev/null | grep -qF " $CSC_VERSION"; then
  log "installing cargo-semver-checks $CSC_VERSION (once; from crates.io, about 6 minutes on 2 cores)"
  # Its release profile asks for LTO and one codegen unit, which makes the
  # install minutes slower for no gain in a CI check.
  CARGO_PROFILE_RELEASE_LTO=off CARGO_PROFILE_RELEASE_CODEGEN_UNITS=16 \
    cargo install --locked --quiet cargo-semver-checks --version "$CSC_VERSION"
fi
log "cargo semver-checks: the public API of $base_version ($(git rev-parse --short "$baseline")) against $version"
if ! cargo semver-checks check-release --package mtls-kit --baseline-rev "$baseline" "${FEATURES[@]}"; then
  problem "the kit's public API changed more than $base_version -> $version allows (cargo-semver-checks' report above): bump the version in $KIT/Cargo.toml as it says, or keep the old API (a deprecated re-export) for one version"
fi
if [ ${#problems[@]} -gt 0 ]; then
  echo "[semver-check] FAILED, ${#problems[@]} problem(s):" >&2
  printf '[semver-check]   - %s\n' "${problems[@]}" >&2
  exit 1
fi
log "ok"
