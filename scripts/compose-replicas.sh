#!/usr/bin/env bash
# Multi-replica test of the docker-compose stack, under real concurrency:
#
#   scripts/compose-replicas.sh
#
# Three server replicas behind the one service name `server`, with their
# limits file on (docker-compose.yml + deploy/compose/replicas.yml, --scale
# server=3), and three load clients, one per development identity (writer,
# reader, admin), each keeping 32 calls in flight at all times (96 together)
# through the kit's balancing client, half on the read path and half on the
# write path (see deploy/compose/replicas.yml), for the whole test. Checks:
#
#   1. the load spreads over all three replicas (each at least 20%) and
#      nothing fails;
#   2. a rolling restart (each replica in turn: SIGTERM with its drain, then
#      start, healthy, and answering every load client again) fails no call;
#   3. rotating the server certificate and the policy on all replicas fails
#      no call (and the replicas report the reload);
#   4. killing one replica with SIGKILL fails only calls that were in flight
#      on it and could not be retried. Each load client lists every failed
#      call and every replica that left its balancer; every failure of the
#      phase must be a write (reads are retried elsewhere) whose connection
#      broke under it after the request may have left (which the retry rules
#      forbid retrying), that started before the killed replica left the
#      balancer and ended after the kill, and the killed replica must be the
#      only one any client lost. A call that was never sent, a read, a
#      deadline or a status from a server fails the phase.
#
# Counts of failures are checked, never latency or throughput. It prints,
# per phase and in total, the calls, failures (by code and kind), retries
# and the split by replica and by identity. When a check fails it still runs
# the remaining phases, then fails with every failed check listed. Like
# compose-e2e.sh (whose setup it shares, from scripts/lib/compose.sh), it
# installs Docker if needed, never pulls, and tears everything down whatever
# happens.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { echo "[compose-replicas] $*" >&2; }
fail() { log "FAILED: $*"; exit 1; }

started=$(date +%s)
work=$(mktemp -d)
project="mtlsreplicas$$"
dockerd_pid=""
compose=()
# The load clients: compose services calling as writer, reader and admin.
load_services=(load load-reader load-admin)
# Their containers, once up.
loads=()
# Checks that failed; the phases go on, and the run fails at the end.
failed_checks=()

# shellcheck source=lib/compose.sh
. scripts/lib/compose.sh

cleanup() {
  local status=$?
  if [ ${#compose[@]} -gt 0 ]; then
    if [ $status -ne 0 ]; then
      local c
      for c in "${loads[@]}"; do
        log "calls that failed, as $(container_name "$c" 2>/dev/null) logged them (the first 20):"
        docker_cli logs "$c" 2>&1 | grep '"load call failed"' | head -n 20 >&2 || true
      done
      log "logs of the failed run, without the load clients' totals (last 200 lines):"
      "${compose[@]}" logs --no-color 2>/dev/null | grep -v '"elapsed_secs"' | tail -n 200 >&2 || true
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

# check STATUS MESSAGE: records MESSAGE as a failed check unless STATUS is
# 0 (under `set -e`, take a command's status as `rc=0; cmd || rc=$?`).
check() {
  if [ "$1" != 0 ]; then
    log "CHECK FAILED: $2"
    failed_checks+=("$2")
  fi
}

# --- the load clients' totals -------------------------------------------------

# snapshot FILE: each load client's latest running totals (its last JSON
# line on stdout), one line per client: SERVICE JSON.
snapshot() {
  local i
  : >"$1"
  for i in "${!load_services[@]}"; do
    echo "${load_services[$i]} $(docker_cli logs "${loads[$i]}" 2>/dev/null | grep '^{' | tail -n 1)" >>"$1"
  done
}

# The phase report and checks, in one place (python3, standard library).
cat >"$work/phase.py" <<'PY'
"""phase.py NAME BEFORE AFTER [--zero] [--min-share PCT] [--kill IP UNIX]

Compares two snapshots (lines "SERVICE JSON") of the load clients' totals.
Prints the phase's figures, then one line "FAILED <why>" per failed check:
--zero: no call failed; --min-share: every replica answered at least PCT%
of the calls; --kill: the failures are only those a SIGKILL of the replica
at IP, at UNIX (wall clock, seconds, taken just before the kill), may cause.
"""
import json, os, sys

args = sys.argv[1:]
name, before_file, after_file = args[:3]
opts = args[3:]
names = dict(kv.split("=", 1) for kv in os.environ.get("REPLICA_NAMES", "").split())

def read(path):
    out = {}
    for line in open(path):
        service, _, text = line.strip().partition(" ")
        try:
            out[service] = json.loads(text)
        except ValueError:
            out[service] = None
    return out

before, after = read(before_file), read(after_file)
failed = []
rpcs = fails = retries = 0
split, codes, kinds, identities = {}, {}, {}, {}
secs = 0.0
for service, a in after.items():
    b = before.get(service)
    if a is None or b is None:
        failed.append(f"{service}: no totals")
        continue
    n = a["rpcs"] - b["rpcs"]
    rpcs += n
    fails += a["failures"] - b["failures"]
    retries += a["retries"] - b["retries"]
    identities[service] = n
    secs = max(secs, a["elapsed_secs"] - b["elapsed_secs"])
    for k, v in a["replicas"].items():
        split[k] = split.get(k, 0) + v - b["replicas"].get(k, 0)
    for field, into in (("failure_codes", codes), ("failure_kinds", kinds)):
        for k, v in a[field].items():
            into[k] = into.get(k, 0) + v - b[field].get(k, 0)

def label(k):
    return names.get(k, k)

answered = max(sum(split.values()), 1)
shares = ", ".join(f"{label(k)} {v} ({100 * v / answered:.1f}%)"
                   for k, v in sorted(split.items(), key=lambda kv: label(kv[0])) if v)
codes_text = ", ".join(f"{k} {v}" for k, v in codes.items() if v) or "none"
kinds_text = ", ".join(f"{k} {v}" for k, v in kinds.items() if v)
per_client = ", ".join(f"{s} {n}" for s, n in identities.items())
print(f"{name}: {rpcs} calls in {secs:.0f} s, {fails} failed ({codes_text}"
      + (f"; {kinds_text}" if kinds_text else "") + f"), {retries} retried; "
      f"by replica: {shares}; by load client: {per_client}")

if "--zero" in opts and fails:
    failed.append(f"{name}: {fails} calls failed ({codes_text})")

if "--min-share" in opts:
    pct = float(opts[opts.index("--min-share") + 1])
    for k in names:
        share = 100 * split.get(k, 0) / answered
        if share < pct:
            failed.append(f"{name}: {label(k)} answered {share:.1f}% of the calls (< {pct:.0f}%)")

if "--kill" in opts:
    i = opts.index("--kill")
    victim_ip, kill_unix = opts[i + 1], float(opts[i + 2])
    for service, a in after.items():
        b = before.get(service)
        if a is None or b is None:
            continue
        kill_at = kill_unix - a["started_unix"]
        t0 = b["elapsed_secs"]
        phase_failures = a["failures"] - b["failures"]
        listed = [f for f in a["failed"] if f["ended"] > t0]
        left = [l for l in a["left"] if l["at"] > t0]
        closed = a["connections_closed"] - b["connections_closed"]
        victim_left = [l["at"] for l in left if l["addr"].rsplit(":", 1)[0] == victim_ip]
        others = sorted({l["addr"] for l in left if l["addr"].rsplit(":", 1)[0] != victim_ip})
        writes_failed = sum(1 for f in listed if f["write"])
        print(f"  {service}: {phase_failures} failed ({writes_failed} writes, "
              f"{len(listed) - writes_failed} reads); left its balancer: "
              f"{', '.join(l['addr'] + ' at %.3f s' % l['at'] for l in left) or 'none'} "
              f"(kill at {kill_at:.3f} s); connections closed: {closed}")
        if len(listed) != phase_failures:
            failed.append(f"{name}: {service}: {phase_failures} failures, but {len(listed)} listed "
                          "(the list is full): cannot account for them")
        if others:
            failed.append(f"{name}: {service} lost replicas that were not killed: {', '.join(others)}")
        if closed != len(left):
            # A connection that closed and came back between two looks at
            # the balancer would leave no departure: count them too.
            failed.append(f"{name}: {service}: {closed} connections closed, but {len(left)} "
                          "replicas left the balancer")
        for f in listed:
            why = []
            if not f["write"]:
                why.append("a read (reads are retried on another replica)")
            if f["kind"] != "connection":
                why.append(f"of kind {f['kind']} (only a write whose connection broke after "
                           "it may have left cannot be retried)")
            if f["ended"] < kill_at:
                why.append(f"ended at {f['ended']:.3f} s, before the kill")
            if not victim_left:
                why.append("no connection to the killed replica closed")
            elif f["started"] > victim_left[0]:
                why.append(f"started at {f['started']:.3f} s, after the killed replica "
                           f"left the balancer ({victim_left[0]:.3f} s)")
            if why:
                failed.append(f"{name}: {service}: a failed call ({f['code']}) was " + "; ".join(why))

for why in failed:
    print(f"FAILED {why}")
PY

# phase NAME BEFORE AFTER [OPTIONS]: prints the figures (and keeps them for
# the end), and records every failed check.
phase() {
  local out line
  out=$(REPLICA_NAMES="$replica_names" python3 "$work/phase.py" "$@")
  while IFS= read -r line; do
    case "$line" in
      "FAILED "*) check 1 "${line#FAILED }" ;;
      *) echo "$line" | tee -a "$work/figures" >&2 ;;
    esac
  done <<<"$out"
}

# wait_answered_by HOSTNAME SINCE: until every load client has had answers
# from that replica after the snapshot SINCE (60 s at most).
wait_answered_by() {
  local host=$1 since=$2
  for _ in $(seq 1 120); do
    snapshot "$work/now"
    if python3 - "$host" "$since" "$work/now" <<'PY'
import json, sys
host, since, now = sys.argv[1:]
def read(path):
    return {l.split(" ", 1)[0]: json.loads(l.split(" ", 1)[1]) for l in open(path) if l.strip()}
try:
    b, a = read(since), read(now)
except ValueError:
    sys.exit(1)
sys.exit(0 if all(a[s]["replicas"].get(host, 0) > b[s]["replicas"].get(host, 0) for s in a) else 1)
PY
    then
      return 0
    fi
    sleep 0.5
  done
  return 1
}

# reloaded CONTAINER FILE: whether the replica logged a reload of FILE.
# (Through a file: with pipefail, `grep -q` ending a pipeline early can fail
# the pipeline with SIGPIPE although it matched.)
reloaded() {
  docker_cli logs "$1" 2>&1 | grep '"configuration reloaded"' >"$work/reloads" || true
  grep -q "$2" "$work/reloads"
}

container_name() { docker_cli inspect -f '{{.Name}}' "$1" | tr -d /; }

# --- setup ------------------------------------------------------------------

ensure_packages
ensure_dockerd
pick_compose docker-compose.yml deploy/compose/replicas.yml
ensure_base_images
prepared=$(date +%s)

# The policy and limits the replicas read, in a directory this test may
# rewrite. The servers run as uid 10001: the directory and files must be
# readable by it.
mkdir -p "$work/config"
cp config/policy.json "$work/config/policy.json"
if [ -f config/limits.json ]; then
  cp config/limits.json "$work/config/limits.json"
fi
chmod 755 "$work/config"
chmod 644 "$work/config"/*.json
export REPLICAS_CONFIG_DIR="$work/config"
# A random host port per replica (three cannot share one).
export MTLS_HOST_PORT="" MTLS_METRICS_PORT=""

log "docker compose up --build --scale server=3 (${compose[0]})"
"${compose[@]}" up --build -d --scale server=3 pki server "${load_services[@]}" >"$work/up.log" 2>&1 \
  || { cat "$work/up.log" >&2; fail "compose up"; }
up_done=$(date +%s)

mapfile -t servers < <("${compose[@]}" ps -q server)
[ ${#servers[@]} -eq 3 ] || fail "expected 3 server containers, found ${#servers[@]}"
for s in "${load_services[@]}"; do
  c=$("${compose[@]}" ps -q "$s")
  [ -n "$c" ] || fail "no $s container"
  loads+=("$c")
done
wait_healthy "${servers[@]}"
# Each replica names itself by host name (its container id) in x-replica;
# the report shows the compose container names instead.
replica_names=""
for s in "${servers[@]}"; do
  replica_names+="$(docker_cli inspect -f '{{.Config.Hostname}}' "$s")=$(container_name "$s") "
done
log "replicas healthy: $replica_names"

# Wait until every load client has reached all three replicas (each
# resolves the name every 2 s) before measuring the spread.
reached_all() {
  snapshot "$work/now"
  python3 - "$work/now" <<'PY'
import json, sys
try:
    totals = [json.loads(l.split(" ", 1)[1]) for l in open(sys.argv[1]) if l.strip()]
except ValueError:
    sys.exit(1)
sys.exit(0 if all(len(t["replicas"]) >= 3 for t in totals) else 1)
PY
}
for _ in $(seq 1 120); do
  reached_all && break
  sleep 0.5
done
reached_all || { cat "$work/now" >&2; fail "the load clients never all reached all three replicas"; }
snapshot "$work/first"

# --- 1. spread --------------------------------------------------------------

snapshot "$work/before"
sleep 10
snapshot "$work/after"
phase "spread" "$work/before" "$work/after" --zero --min-share 20

# --- 2. rolling restart -----------------------------------------------------

snapshot "$work/before"
for s in "${servers[@]}"; do
  name=$(container_name "$s")
  host=$(docker_cli inspect -f '{{.Config.Hostname}}' "$s")
  t0=$(date +%s%N)
  docker_cli stop -t 10 "$s" >/dev/null        # SIGTERM: drain, then exit
  t1=$(date +%s%N)
  code=$(docker_cli inspect -f '{{.State.ExitCode}}' "$s")
  check "$code" "$name exited $code on SIGTERM"
  log "stopped $name in $(( (t1 - t0) / 1000000 )) ms (exit $code); starting it again"
  docker_cli start "$s" >/dev/null
  wait_healthy "$s"
  # Every load client must be calling it again before the next one stops.
  snapshot "$work/healthy"
  wait_answered_by "$host" "$work/healthy" \
    || fail "not every load client reached $name again within 60 s"
done
snapshot "$work/after"
phase "rolling restart" "$work/before" "$work/after" --zero

# --- 3. certificate and policy rotation -------------------------------------

snapshot "$work/before"
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
  reloaded "$s" server.pem || fail "$(container_name "$s") did not reload the certificate"
  reloaded "$s" policy.json || fail "$(container_name "$s") did not reload the policy"
done
log "every replica reloaded the certificate and the policy"
# A new connection (a full handshake) must verify the new certificate.
rc=0
docker_cli exec "${loads[0]}" client --identity reader health >/dev/null || rc=$?
check "$rc" "a new connection after the rotation failed"
sleep 5
snapshot "$work/after"
phase "rotation" "$work/before" "$work/after" --zero

# --- 4. one replica killed hard ---------------------------------------------

snapshot "$work/before"
victim=${servers[0]}
victim_name=$(container_name "$victim")
victim_ip=$(docker_cli inspect -f '{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}' "$victim")
log "SIGKILL $victim_name ($victim_ip)"
kill_unix=$(date +%s.%N)
docker_cli kill -s KILL "$victim" >/dev/null
sleep 6
snapshot "$work/after"
phase "SIGKILL of $victim_name" "$work/before" "$work/after" --kill "$victim_ip" "$kill_unix"

# --- totals -----------------------------------------------------------------

docker_cli stop -t 30 "${loads[@]}" >/dev/null
snapshot "$work/final"
phase "whole run" "$work/first" "$work/final"
for i in "${!loads[@]}"; do
  rc=0
  grep -q '"final":true' <<<"$(grep "^${load_services[$i]} " "$work/final")" || rc=$?
  check "$rc" "${load_services[$i]} did not print its final totals"
done
finished=$(date +%s)

log "figures:"
sed 's/^/    /' "$work/figures" >&2
log "timings: prepare $((prepared - started)) s, up --build $((up_done - prepared)) s, total $((finished - started)) s"
if [ ${#failed_checks[@]} -gt 0 ]; then
  log "${#failed_checks[@]} checks failed:"
  printf '    %s\n' "${failed_checks[@]}" >&2
  exit 1
fi
