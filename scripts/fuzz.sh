#!/usr/bin/env bash
# Coverage-guided fuzzing of the security kit's parsers with AFL++ (through
# cargo-afl, on the stable toolchain):
#
#   scripts/fuzz.sh [SECONDS]          # each target for SECONDS (default 60)
#   FUZZ_EXECS=10000000 scripts/fuzz.sh   # each target for ~N executions instead
#   FUZZ_TARGETS="policy" scripts/fuzz.sh 30
#
# Targets (fuzz/fuzz_targets/, checks in fuzz/src/): `policy` (A43 policy
# JSON in, decisions checked against a naive evaluation), `identity`
# (certificate DER in, PeerIdentity out), `rfc2253` (DER Name or certificate
# in, OpenSSL-style RFC 2253 string out).
#
# Order of work: install what is missing (cargo-afl at a pinned version,
# which builds its own AFL++ from the crate's bundled sources; make and a C
# compiler from apt if absent), build the instrumented targets, replay every
# input under fuzz/regressions/<target>/ and the seed corpus through them,
# then fuzz each target in turn, starting from fuzz/corpus/<target>/.
#
# It prints, per target, executions, average exec/s, corpus size, edges
# found, crashes and hangs, and exits non-zero if a replayed input fails or
# fuzzing saved any crash or hang. Findings stay in fuzz/out/<target>/
# (gitignored); copy a crashing input to fuzz/regressions/<target>/ so that
# every later run replays it.
#
# Non-interactive and CI-safe: no UI, no CPU-governor or core_pattern
# changes, no CPU pinning (the machine is shared).
set -euo pipefail
cd "$(dirname "$0")/.."

CARGO_AFL_VERSION=0.18.2 # keep equal to the `afl` version in fuzz/Cargo.toml
seconds=${1:-60}
targets=${FUZZ_TARGETS:-policy identity rfc2253}
execs=${FUZZ_EXECS:-}
out=${FUZZ_OUT:-fuzz/out}
# Per-execution timeout in ms: an input slower than this is saved as a hang.
timeout_ms=${FUZZ_TIMEOUT_MS:-1000}

log() { echo "[fuzz] $*" >&2; }
started=$(date +%s)

# --- tools -----------------------------------------------------------------

if ! command -v make >/dev/null || ! command -v cc >/dev/null; then
    log "installing make and a C compiler (to build AFL++)"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends make gcc libc6-dev
fi
if ! cargo afl --version 2>/dev/null | grep -q "^cargo-afl $CARGO_AFL_VERSION "; then
    log "installing cargo-afl $CARGO_AFL_VERSION (builds AFL++ too; a few minutes)"
    cargo install --locked --force cargo-afl --version "$CARGO_AFL_VERSION"
fi
# cargo-afl builds AFL++ and its runtime when installed, for the toolchain of
# the day; after a toolchain upgrade the runtime must be rebuilt.
if ! config_out=$(cargo afl config --build 2>&1); then
    grep -q "already built" <<<"$config_out" || { echo "$config_out" >&2; exit 1; }
fi
log "$(cargo afl --version)"

# --- build -----------------------------------------------------------------

log "building the instrumented targets (fuzz/target)"
(cd fuzz && cargo afl build --release --locked --quiet)
bin=fuzz/target/release

# --- replay ----------------------------------------------------------------

failures=0
replay() { # TARGET FILE
    local rc=0
    timeout 10 "$bin/$1" <"$2" >/dev/null 2>"$out/replay.err" || rc=$?
    if [ "$rc" -ne 0 ]; then
        log "REPLAY FAILED ($1, exit $rc): $2"
        sed 's/^/    /' "$out/replay.err" | head -20 >&2
        failures=$((failures + 1))
    fi
}
mkdir -p "$out"
replayed=0
for t in $targets; do
    for f in fuzz/regressions/"$t"/* fuzz/corpus/"$t"/*; do
        [ -f "$f" ] || continue
        replay "$t" "$f"
        replayed=$((replayed + 1))
    done
done
log "replayed $replayed regression and seed inputs, $failures failed"

# --- fuzz ------------------------------------------------------------------

export AFL_NO_UI=1 AFL_SKIP_CPUFREQ=1 AFL_I_DONT_CARE_ABOUT_MISSING_CRASHES=1
export AFL_NO_AFFINITY=1 AFL_FAST_CAL=1 AFL_NO_CRASH_README=1
unset AFL_AUTORESUME

if [ -n "$execs" ]; then
    limit=(-E "$execs")
    log "fuzzing each of: $targets, for ~$execs executions"
else
    limit=(-V "$seconds")
    log "fuzzing each of: $targets, for $seconds s"
fi

afl_stat() { # FILE KEY
    awk -F' *: *' -v k="$2" '$1 == k { print $2 }' "$1"
}

printf '%-9s %12s %9s %7s %7s %8s %6s %7s\n' \
    target execs exec/s secs corpus edges crash hang >"$out/summary.txt"
found=0
for t in $targets; do
    dir="$out/$t"
    rm -rf "$dir"
    dict=()
    [ -f "fuzz/dict/$t.dict" ] && dict=(-x "fuzz/dict/$t.dict")
    log "$t: afl-fuzz (log in $dir.log)"
    rc=0
    cargo afl fuzz -i "fuzz/corpus/$t" -o "$dir" -t "$timeout_ms" "${limit[@]}" "${dict[@]}" \
        -- "$bin/$t" >"$dir.log" 2>&1 || rc=$?
    stats="$dir/default/fuzzer_stats"
    if [ "$rc" -ne 0 ] || [ ! -f "$stats" ]; then
        log "$t: afl-fuzz failed (exit $rc):"
        tail -30 "$dir.log" >&2
        failures=$((failures + 1))
        continue
    fi
    runtime=$(afl_stat "$stats" run_time)
    done_=$(afl_stat "$stats" execs_done)
    crashes=$(afl_stat "$stats" saved_crashes)
    hangs=$(afl_stat "$stats" saved_hangs)
    printf '%-9s %12s %9s %7s %7s %8s %6s %7s\n' "$t" "$done_" \
        "$((done_ / (runtime > 0 ? runtime : 1)))" "$runtime" \
        "$(afl_stat "$stats" corpus_count)" "$(afl_stat "$stats" edges_found)" \
        "$crashes" "$hangs" >>"$out/summary.txt"
    if [ "$crashes" -ne 0 ] || [ "$hangs" -ne 0 ]; then
        found=$((found + crashes + hangs))
        for f in "$dir"/default/crashes/id:* "$dir"/default/hangs/id:*; do
            [ -f "$f" ] && log "$t: FINDING $f"
        done
    fi
done

echo
cat "$out/summary.txt"
echo
log "done in $(($(date +%s) - started)) s"
if [ "$failures" -ne 0 ] || [ "$found" -ne 0 ]; then
    log "FAILED: $failures failed replays or runs, $found crashes or hangs" \
        "(reproduce: $bin/TARGET < FILE; keep the input under fuzz/regressions/TARGET/)"
    exit 1
fi
