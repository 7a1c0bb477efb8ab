#!/usr/bin/env bash
# The performance suite in one command (see BENCHMARKS.md):
#
#   scripts/bench.sh                       # every row, 8 rounds each (~12 min)
#   scripts/bench.sh --only cpu,metrics    # some rows
#   scripts/bench.sh --rounds 3 --secs 1   # quicker, noisier
#
# It builds the service's server and the `loadbench` binary in release mode,
# builds the gRPC C++ reference server if its sources are there (the `cpp`
# row; set BENCH_CPP=0 to skip it), then runs `loadbench suite` with the
# servers pinned to CPU 0 and the load generator to CPU 1, and prints the
# ratios as Markdown. Extra arguments go to `loadbench suite`; its raw
# rounds land in target/loadbench/logs/results.json.
#
# BENCH_PROFILE=debug builds and runs unoptimised binaries instead: only for
# checking that the suite runs (CI does, with one short round), never for
# figures.
#
# The `fairness` row compares two builds of the server: the previous one
# (baseline) and this one (candidate). BENCH_BASELINE_REV=<git rev> gives
# the baseline: that revision is checked out in a git worktree,
# <target>/bench-baseline/src, and its `server` is built there (same
# profile, --locked, a target directory of its own: the first build is a
# full one, later ones rebuild what changed) and kept as
# <target>/bench-baseline/<profile>/server-<rev>, so a second run with the
# same revision builds nothing:
#
#   BENCH_BASELINE_REV=6e7bfed scripts/bench.sh --only fairness --rounds 4 --secs 3
#
# Without it, the row runs this build on both sides: its figures are then
# this build's alone, and the gap between the two columns is the noise.
# <target> is $CARGO_TARGET_DIR, or target.
#
# On a machine with a single CPU nothing is pinned (the ratios are then
# noisier); with more than two, the servers still get one CPU, as in the
# table's measurements.
set -euo pipefail
cd "$(dirname "$0")/.."
log() { echo "[bench] $*" >&2; }

profile=${BENCH_PROFILE:-release}
case $profile in
    release) profile_flag=(--release) ;;
    debug) profile_flag=() ;;
    *) log "BENCH_PROFILE must be release or debug, not '$profile'"; exit 2 ;;
esac
target=${CARGO_TARGET_DIR:-target}
cargo build "${profile_flag[@]}" --locked --bin server --bin loadbench
bin=$target/$profile

# The fairness row's baseline: the server of BENCH_BASELINE_REV, built in a
# worktree of its own (a shared target directory could hand back this
# build's binary for that one: cargo's freshness check compares file times).
baseline_args=()
if [ -n "${BENCH_BASELINE_REV:-}" ]; then
    rev=$(git rev-parse --verify --quiet "$BENCH_BASELINE_REV^{commit}") || {
        log "BENCH_BASELINE_REV=$BENCH_BASELINE_REV is not a commit of this repository"
        exit 2
    }
    short=$(git rev-parse --short=12 "$rev")
    base=$target/bench-baseline
    baseline_bin=$base/$profile/server-$short
    if [ -x "$baseline_bin" ]; then
        log "baseline server at $short: $baseline_bin (built before)"
    else
        mkdir -p "$base/$profile"
        base_abs=$(cd "$base" && pwd)
        if [ -e "$base/src/.git" ]; then
            git -C "$base/src" checkout --quiet --force --detach "$rev"
        else
            # --force: a worktree registered there before (and deleted with
            # the target directory) is taken over.
            git worktree add --quiet --force --detach "$base/src" "$rev"
        fi
        log "building the baseline server at $short in $base/src ($profile; the first time builds every dependency)"
        (cd "$base/src" && CARGO_TARGET_DIR=$base_abs/target \
            cargo build "${profile_flag[@]}" --locked --bin server)
        cp "$base/target/$profile/server" "$baseline_bin.tmp"
        mv "$baseline_bin.tmp" "$baseline_bin"
    fi
    baseline_args=(--baseline-server "$baseline_bin" --baseline-name "$(git rev-parse --short "$rev")")
else
    log "no BENCH_BASELINE_REV: the fairness row runs this build on both sides"
fi

cpp_args=()
cpp_src=${GRPC_CPP_PEER_SRC:-../shared/grpc-cpp-peer}
if [ "${BENCH_CPP:-1}" = 1 ] && [ -f "$cpp_src/build.sh" ]; then
    peer=target/grpc-cpp-peer
    if [ ! -x "$peer/authz_peer" ]; then
        log "building the gRPC C++ reference server from $cpp_src (about a minute)"
        if ! pkg-config --exists grpc++ 2>/dev/null; then
            apt-get update -qq
            DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
                g++ make pkg-config libgrpc++-dev libprotobuf-dev protobuf-compiler-grpc >/dev/null
        fi
        rm -rf "$peer" && mkdir -p "$peer" && cp -r "$cpp_src"/. "$peer"/
        (cd "$peer" && ./build.sh) >"$peer.build.log" 2>&1 || {
            log "the C++ peer did not build (log: $peer.build.log); its row is skipped"
        }
    fi
    [ -x "$peer/authz_peer" ] && cpp_args=(--cpp-peer "$peer/authz_peer")
else
    log "no gRPC C++ peer (BENCH_CPP=0 or no $cpp_src): the cpp row is skipped"
fi

pin=(--load-cpus 1)
server_cpus=0
if [ "$(nproc)" -lt 2 ]; then
    log "one CPU only: servers and load generator share it, unpinned"
    pin=()
    server_cpus=none
fi
log "$(date -u +%FT%TZ) on $(nproc) CPUs: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | xargs)"
exec "$bin/loadbench" "${pin[@]}" suite --server-cpus "$server_cpus" \
    --server "$bin/server" "${baseline_args[@]}" "${cpp_args[@]}" "$@"
