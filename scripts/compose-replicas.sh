#!/usr/bin/env bash
# Multi-replica test of the docker-compose stack:
#
#   scripts/compose-replicas.sh
#
# Three server replicas behind the one service name `server`
# (docker-compose.yml + deploy/compose/replicas.yml, --scale server=3), and
# one load client calling them through the kit's balancing client at a
# steady 200 RPCs/s (half on the read path, half on the write path, see
# deploy/compose/replicas.yml) for the whole test. Checks:
#
#   1. the load spreads over all three replicas (each at least 20%);
#   2. a rolling restart (each replica in turn: SIGTERM with its drain, then
#      start, then healthy again) fails no RPC;
#   3. rotating the server certificate and the policy on all replicas fails
#      no RPC (and the replicas report the reload);
#   4. killing one replica with SIGKILL fails at most the RPCs in flight;
#
# and prints, per phase and in total, the RPCs, failures, retries and the
# per-replica split. Like compose-e2e.sh (whose setup it shares, from
# scripts/lib/compose.sh), it installs Docker if needed, never pulls, and
# tears everything down even when a check fails.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { echo "[compose-replicas] $*" >&2; }
fail() { log "FAILED: $*"; exit 1; }

started=$(date +%s)
work=$(mktemp -d)
project="mtlsreplicas$$"
dockerd_pid=""
compose=()

# shellcheck source=lib/compose.sh
. scripts/lib/compose.sh

cleanup() {
  local status=$?
  if [ ${#compose[@]} -gt 0 ]; then
    if [ $status -ne 0 ]; then
      log "logs of the failed run (last 200 lines):"
      "${compose[@]}" logs --no-color 2>/dev/null | tail -n 200 >&2 || true
    fi
    "${compose[@]}" down -v --remove-orphans >/dev/null 2>&1 || true
  fi
  if [ -n "$dockerd_pid" ]; then
    log "stopping the dockerd this script started"
    kill "$dockerd_pid" 2>/dev/null || true
    wait "$dockerd_pid" 2>/dev/null || true
  fi
  rm -rf "$work"
  if [ $status -eq 0 ]; then
    echo "compose-replicas: 1 passed, 0 failed"
  else
    echo "compose-replicas: 0 passed, 1 failed"
  fi
  exit $status
}
trap cleanup EXIT

# --- the load client's totals -------------------------------------------------

# The load client's latest running totals (its last JSON line on stdout).
totals() {
  docker_cli logs "$load" 2>/dev/null | grep '^{' | tail -n 1
}

# report NAME BEFORE AFTER: prints what happened between two totals, and
# sets phase_rpcs, phase_failures, phase_retries and phase_min_share (the
# smallest share, in %, of a replica that started the phase running).
report() {
  local out
  out=$(NAME=$1 BEFORE=$2 AFTER=$3 NAMES="$replica_names" python3 - <<'PY'
import json, os
before, after = json.loads(os.environ["BEFORE"]), json.loads(os.environ["AFTER"])
names = dict(l.split("=", 1) for l in os.environ["NAMES"].split())
d = {k: after[k] - before[k] for k in ("rpcs", "failures", "retries")}
split = {k: v - before["replicas"].get(k, 0) for k, v in after["replicas"].items()}
split = {k: v for k, v in split.items() if v}
rpcs = max(d["rpcs"], 1)
shares = ", ".join(f"{names.get(k, k)} {v} ({100 * v / rpcs:.1f}%)" for k, v in sorted(split.items(), key=lambda kv: names.get(kv[0], kv[0])))
codes = {k: v - before["failure_codes"].get(k, 0) for k, v in after["failure_codes"].items()}
codes = ", ".join(f"{k} {v}" for k, v in codes.items() if v) or "none"
secs = after["elapsed_secs"] - before["elapsed_secs"]
print(f"{os.environ['NAME']}: {d['rpcs']} RPCs in {secs:.0f} s, {d['failures']} failed ({codes}), {d['retries']} retried; by replica: {shares}")
minimum = min((100 * split.get(k, 0) / rpcs for k in names), default=0)
print(f"VARS {d['rpcs']} {d['failures']} {d['retries']} {minimum:.0f}")
PY
)
  echo "$out" | grep -v '^VARS ' | tee -a "$work/figures" >&2
  read -r _ phase_rpcs phase_failures phase_retries phase_min_share <<<"$(echo "$out" | grep '^VARS ')"
}

# let_load_run SECONDS: the load client keeps going meanwhile.
let_load_run() { sleep "$1"; }

# reloaded CONTAINER FILE: whether the replica logged a reload of FILE.
# (Through a file: with pipefail, `grep -q` ending a pipeline early can fail
# the pipeline with SIGPIPE although it matched.)
reloaded() {
  docker_cli logs "$1" 2>&1 | grep '"configuration reloaded"' >"$work/reloads" || true
  grep -q "$2" "$work/reloads"
}

# --- setup ------------------------------------------------------------------

ensure_packages
ensure_dockerd
pick_compose docker-compose.yml deploy/compose/replicas.yml
ensure_base_images
prepared=$(date +%s)

# The policy the replicas read, in a directory this test may rewrite. The
# servers run as uid 10001: the directory and file must be readable by it.
mkdir -p "$work/config"
cp config/policy.json "$work/config/policy.json"
chmod 755 "$work/config"
chmod 644 "$work/config/policy.json"
export REPLICAS_CONFIG_DIR="$work/config"
# A random host port per replica (three cannot share one).
export MTLS_HOST_PORT="" MTLS_METRICS_PORT=""

log "docker compose up --build --scale server=3 (${compose[0]})"
"${compose[@]}" up --build -d --scale server=3 pki server load >"$work/up.log" 2>&1 \
  || { cat "$work/up.log" >&2; fail "compose up"; }
up_done=$(date +%s)

mapfile -t servers < <("${compose[@]}" ps -q server)
[ ${#servers[@]} -eq 3 ] || fail "expected 3 server containers, found ${#servers[@]}"
load=$("${compose[@]}" ps -q load)
[ -n "$load" ] || fail "no load container"
wait_healthy "${servers[@]}"
# Each replica names itself by host name (its container id) in x-replica;
# the report shows the compose container names instead.
replica_names=""
for s in "${servers[@]}"; do
  replica_names+="$(docker_cli inspect -f '{{.Config.Hostname}}' "$s")=$(docker_cli inspect -f '{{.Name}}' "$s" | tr -d /) "
done
log "replicas healthy: $replica_names"

# Wait until the load client has reached all three replicas (it resolves
# the name every 2 s) before measuring the spread.
for _ in $(seq 1 60); do
  reached=$(totals | python3 -c 'import json,sys; print(len(json.load(sys.stdin)["replicas"]))' 2>/dev/null || echo 0)
  [ "$reached" -ge 3 ] && break
  sleep 0.5
done
[ "${reached:-0}" -ge 3 ] || fail "the load client never reached all three replicas: $(totals)"
first=$(totals)

# --- 1. spread --------------------------------------------------------------

before=$(totals)
let_load_run 10
report "spread" "$before" "$(totals)"
[ "$phase_failures" = 0 ] || fail "$phase_failures RPCs failed under steady load"
[ "$phase_min_share" -ge 20 ] || fail "a replica got only $phase_min_share% of the load"

# --- 2. rolling restart -----------------------------------------------------

before=$(totals)
for s in "${servers[@]}"; do
  name=$(docker_cli inspect -f '{{.Name}}' "$s" | tr -d /)
  t0=$(date +%s%N)
  docker_cli stop -t 10 "$s" >/dev/null        # SIGTERM: drain, then exit
  t1=$(date +%s%N)
  code=$(docker_cli inspect -f '{{.State.ExitCode}}' "$s")
  [ "$code" = 0 ] || fail "$name exited $code on SIGTERM"
  log "stopped $name in $(( (t1 - t0) / 1000000 )) ms (exit 0); starting it again"
  docker_cli start "$s" >/dev/null
  wait_healthy "$s"
  # Let the client find it again (its next resolution) before the next one.
  let_load_run 4
done
report "rolling restart" "$before" "$(totals)"
[ "$phase_failures" = 0 ] || fail "$phase_failures RPCs failed during the rolling restart"

# --- 3. certificate and policy rotation -------------------------------------

before=$(totals)
log "rotating the server certificate (same CA, new key) on the shared volume"
"${compose[@]}" run --rm --no-deps --entrypoint certs pki \
  --dir /app/certs server --server-name server >"$work/rotate.log" 2>&1 \
  || { cat "$work/rotate.log" >&2; fail "certs server"; }
log "rotating the policy (a renamed copy, same rules), written atomically"
python3 - "$work/config/policy.json" <<'PY'
import json, os, sys
path = sys.argv[1]
policy = json.load(open(path))
policy["name"] = policy["name"] + "-rotated"
tmp = path + ".tmp"
with open(tmp, "w") as f:
    json.dump(policy, f, indent=2)
os.chmod(tmp, 0o644)
os.rename(tmp, path)
PY
for s in "${servers[@]}"; do
  for _ in $(seq 1 60); do
    reloaded "$s" server.pem && reloaded "$s" policy.json && break
    sleep 0.5
  done
  reloaded "$s" server.pem || fail "$(docker_cli inspect -f '{{.Name}}' "$s") did not reload the certificate"
  reloaded "$s" policy.json || fail "$(docker_cli inspect -f '{{.Name}}' "$s") did not reload the policy"
done
log "every replica reloaded the certificate and the policy"
# A new connection (a full handshake) must verify the new certificate.
docker_cli exec "$load" client --identity reader health >/dev/null \
  || fail "a new connection after the rotation failed"
let_load_run 5
report "rotation" "$before" "$(totals)"
[ "$phase_failures" = 0 ] || fail "$phase_failures RPCs failed during the rotation"

# --- 4. one replica killed hard ---------------------------------------------

before=$(totals)
victim=${servers[0]}
victim_name=$(docker_cli inspect -f '{{.Name}}' "$victim" | tr -d /)
log "SIGKILL $victim_name"
docker_cli kill -s KILL "$victim" >/dev/null
let_load_run 6
after=$(totals)
report "SIGKILL of $victim_name" "$before" "$after"
peak=$(echo "$after" | python3 -c 'import json,sys; print(json.load(sys.stdin)["peak_in_flight"])')
killed_failures=$phase_failures
[ "$killed_failures" -le "$peak" ] \
  || fail "$killed_failures RPCs failed after the kill, more than were ever in flight ($peak)"

# --- totals -----------------------------------------------------------------

docker_cli stop -t 30 "$load" >/dev/null
final=$(totals)
report "whole run" "$first" "$final"
echo "$final" | grep -q '"final":true' || fail "the load client did not print its final totals"
finished=$(date +%s)

log "figures:"
sed 's/^/    /' "$work/figures" >&2
log "at most $peak RPCs were in flight at once; the kill failed $killed_failures"
log "timings: prepare $((prepared - started)) s, up --build $((up_done - prepared)) s, total $((finished - started)) s"
