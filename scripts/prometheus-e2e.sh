#!/usr/bin/env bash
# Prometheus end-to-end test: a real Prometheus (Debian's package) scrapes
# the real server's metrics endpoint every second while allowed, denied and
# refused calls are made; the counters, the certificate expiry gauges and
# the alert rules are then checked through Prometheus' own query API.
#
#   scripts/prometheus-e2e.sh
#
# Installs `prometheus` (which brings promtool) and `openssl` from Debian's
# packages when missing. Debian's package enables a systemd unit, which does
# not start in a container (and must not be relied on): this script runs
# the prometheus binary itself, on 127.0.0.1 and a free port, with a
# generated config and a temporary storage directory. Uses the binaries in
# MTLS_BIN_DIR, or builds them with cargo when it is unset. Every wait has a
# deadline; nothing sleeps a fixed time. Exits non-zero if a check fails.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=lib/common.sh
. scripts/lib/common.sh
root=$PWD
started=$(date +%s)
log() { echo "[prometheus-e2e] $*" >&2; }

install_debs prometheus openssl
ensure_bins "$root"
bin=$MTLS_BIN_DIR

work=$(mktemp -d)
pids=()
cleanup() {
  local pid
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

# wait_for WHAT SECONDS COMMAND...: runs COMMAND until it succeeds, or fails
# after SECONDS.
wait_for() {
  local what=$1 deadline=$(($(date +%s) + $2))
  shift 2
  until "$@" >/dev/null 2>&1; do
    if [ "$(date +%s)" -ge "$deadline" ]; then
      log "timed out waiting for $what"
      return 1
    fi
    sleep 0.1
  done
}

# json_field FILE FIELD: the first value of FIELD in a JSON-lines log.
json_field() {
  python3 - "$1" "$2" <<'PY'
import json, sys
for line in open(sys.argv[1]):
    try:
        event = json.loads(line)
    except ValueError:
        continue
    if sys.argv[2] in event:
        print(event[sys.argv[2]])
        break
else:
    sys.exit(1)
PY
}

# A development PKI with 3-day certificates (so the 7-day expiry alert
# must go pending), and a second, unrelated PKI for a refused handshake.
"$bin/certs" --dir "$work/pki" init --days 3 >/dev/null 2>&1
"$bin/certs" --dir "$work/other" init >/dev/null 2>&1

log "starting the server (ports chosen by the kernel)"
LOG_FORMAT=json "$bin/server" --listen 127.0.0.1:0 --metrics-listen 127.0.0.1:0 \
  --cert "$work/pki/server.pem" --key "$work/pki/server.key" --client-ca "$work/pki/ca.pem" \
  --policy config/policy.json >"$work/server.log" 2>&1 &
pids+=($!)
wait_for "the server's metrics address in its log" 30 json_field "$work/server.log" metrics_addr
metrics_addr=$(json_field "$work/server.log" metrics_addr)
grpc_addr=$(json_field "$work/server.log" addr)
log "gRPC on $grpc_addr, metrics on http://$metrics_addr/metrics"

# A free loopback port for Prometheus (bound by the kernel, then released).
prom_port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
cp config/alerts.yml "$work/alerts.yml"
cat >"$work/prometheus.yml" <<YAML
global:
  scrape_interval: 1s
  evaluation_interval: 1s
rule_files:
  - $work/alerts.yml
scrape_configs:
  - job_name: mtls-server
    static_configs:
      - targets: ["$metrics_addr"]
YAML
promtool check config "$work/prometheus.yml" >/dev/null
promtool check rules config/alerts.yml
promtool test rules config/alerts.test.yml

log "starting $(prometheus --version 2>&1 | head -1) on 127.0.0.1:$prom_port"
prometheus --config.file="$work/prometheus.yml" --storage.tsdb.path="$work/data" \
  --web.listen-address="127.0.0.1:$prom_port" >"$work/prometheus.log" 2>&1 &
pids+=($!)
prom="http://127.0.0.1:$prom_port"
ready() { python3 -c "import urllib.request,sys; urllib.request.urlopen(sys.argv[1], timeout=2)" "$prom/-/ready"; }
wait_for "Prometheus to be ready" 60 ready

# query EXPR: the value of a PromQL expression with one result, or nothing.
query() {
  python3 - "$prom" "$1" <<'PY'
import json, sys, urllib.parse, urllib.request
url = sys.argv[1] + "/api/v1/query?" + urllib.parse.urlencode({"query": sys.argv[2]})
result = json.load(urllib.request.urlopen(url, timeout=5))["data"]["result"]
if len(result) == 1:
    print(result[0]["value"][1])
PY
}

passed=0
failed=0
# check WHAT EXPR EXPECTED: waits (bounded) until EXPR evaluates to EXPECTED.
check() {
  local what=$1 expr=$2 expected=$3 deadline=$(($(date +%s) + 30)) got=""
  while :; do
    got=$(query "$expr" || true)
    if [ "$got" = "$expected" ]; then
      log "ok: $what ($expr = $got)"
      passed=$((passed + 1))
      return 0
    fi
    if [ "$(date +%s)" -ge "$deadline" ]; then
      log "FAILED: $what: $expr = '${got}', expected '$expected'"
      failed=$((failed + 1))
      return 0
    fi
    sleep 0.2
  done
}

check "Prometheus scrapes the endpoint" 'up{job="mtls-server"}' 1

log "driving calls: allowed, denied, and a handshake with a certificate from another PKI"
client() { "$bin/client" --addr "$grpc_addr" --ca "$work/pki/ca.pem" --timeout-secs 5 "$@"; }
client --cert "$work/pki/reader.pem" --key "$work/pki/reader.key" health >/dev/null
client --cert "$work/pki/writer.pem" --key "$work/pki/writer.key" health >/dev/null
client --cert "$work/pki/outsider.pem" --key "$work/pki/outsider.key" --expect PERMISSION_DENIED health >/dev/null
if client --cert "$work/other/reader.pem" --key "$work/other/reader.key" health >/dev/null 2>&1; then
  log "FAILED: a client certificate from another PKI was accepted"
  failed=$((failed + 1))
fi

check "allowed RPCs counted" \
  'sum(grpc_server_handled_total{grpc_service="grpc.health.v1.Health",grpc_method="Check",grpc_code="OK"})' 2
check "denied RPC counted with its status" \
  'sum(grpc_server_handled_total{grpc_method="Check",grpc_code="PERMISSION_DENIED"})' 1
check "latency histogram observed every RPC" \
  'sum(grpc_server_handling_seconds_count{grpc_method="Check"})' 3
check "authorization denial counted by rule" \
  'sum(mtls_authz_decisions_total{decision="deny",rule="outsiders-get-nothing"})' 1
check "authorization allows counted" 'sum(mtls_authz_decisions_total{decision="allow"})' 2
# At least one: the client's channel may reconnect (and be refused again)
# before its call gives up.
check "refused handshake counted as unknown_ca" \
  'sum(mtls_tls_handshakes_total{outcome="failed",reason="unknown_ca"}) >= bool 1' 1
check "successful handshakes counted" 'sum(mtls_tls_handshakes_total{outcome="ok"})' 3

not_after=$(date -u -d "$(openssl x509 -in "$work/pki/server.pem" -noout -enddate | cut -d= -f2)" +%s)
check "server certificate expiry gauge equals openssl's notAfter" \
  'mtls_server_certificate_not_after_timestamp_seconds' "$not_after"
ca_not_after=$(date -u -d "$(openssl x509 -in "$work/pki/ca.pem" -noout -enddate | cut -d= -f2)" +%s)
check "client CA expiry gauge equals openssl's notAfter" \
  'max(mtls_client_ca_not_after_timestamp_seconds)' "$ca_not_after"
check "soonest expiry counts down to the server certificate (within a minute)" \
  "abs(mtls_certificates_soonest_expiry_seconds - ($not_after - time())) < bool 60" 1
policy_hash=$(sha256sum config/policy.json | cut -c1-16)
check "the policy in force is identified by name and hash" \
  "mtls_policy_in_force{sha256=\"$policy_hash\"}" 1
check "the 7-day expiry alert is pending or firing for 3-day certificates" \
  'count(ALERTS{alertname="MtlsCertificateExpiringSoon"})' 1

elapsed=$(($(date +%s) - started))
log "Prometheus $(prometheus --version 2>&1 | head -1 | awk '{print $3}'), ${elapsed}s"
echo "prometheus-e2e: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
