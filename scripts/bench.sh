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
# On a machine with a single CPU nothing is pinned (the ratios are then
# noisier); with more than two, the servers still get one CPU, as in the
# table's measurements.
set -euo pipefail
cd "$(dirname "$0")/.."
log() { echo "[bench] $*" >&2; }

profile=${BENCH_PROFILE:-release}
case $profile in
    release) cargo build --release --locked --bin server --bin loadbench ;;
    debug) cargo build --locked --bin server --bin loadbench ;;
    *) log "BENCH_PROFILE must be release or debug, not '$profile'"; exit 2 ;;
esac
bin=target/$profile

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
    --server "$bin/server" "${cpp_args[@]}" "$@"
