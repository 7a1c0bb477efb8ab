#!/usr/bin/env bash
# End-to-end test of the docker-compose stack, as a user runs it:
#
#   scripts/compose-e2e.sh
#
# It brings the stack up with --build, waits for the server's mTLS health
# check, checks the demo client's allowed and denied calls and the server's
# decision logs, checks the image (non-root, no keys), checks that
# `docker stop` on the server takes under 2 seconds, and tears everything
# down, even when a check fails.
#
# It works on a machine with no Docker engine running and no container
# registry: it installs what is missing from Debian's packages (docker.io,
# docker-compose, debootstrap), starts dockerd if none answers (and stops it
# afterwards), and builds the two base images from Debian packages when they
# are not present locally. It never pulls.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { echo "[compose-e2e] $*" >&2; }
fail() { log "FAILED: $*"; exit 1; }

started=$(date +%s)
work=$(mktemp -d)
project="mtlse2e$$"
dockerd_pid=""
compose=()

# --- tools -----------------------------------------------------------------

ensure_packages() {
  local need=()
  command -v dockerd >/dev/null 2>&1 || need+=(docker.io)
  [ -x /usr/bin/docker ] || need+=(docker.io)
  command -v docker-compose >/dev/null 2>&1 || need+=(docker-compose)
  command -v debootstrap >/dev/null 2>&1 || need+=(debootstrap)
  if [ ${#need[@]} -gt 0 ]; then
    log "installing ${need[*]} from Debian's packages"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
  fi
}

# Debian's docker 20.10 client; a newer client earlier on PATH may lack the
# plugins this needs.
docker_cli() {
  if [ -x /usr/bin/docker ]; then /usr/bin/docker "$@"; else docker "$@"; fi
}

ensure_dockerd() {
  if docker_cli info >/dev/null 2>&1; then
    return
  fi
  log "no Docker engine answers: starting dockerd"
  dockerd >"$work/dockerd.log" 2>&1 &
  dockerd_pid=$!
  for _ in $(seq 1 120); do
    if docker_cli info >/dev/null 2>&1; then
      return
    fi
    kill -0 "$dockerd_pid" 2>/dev/null || { cat "$work/dockerd.log" >&2; fail "dockerd exited"; }
    sleep 0.5
  done
  fail "dockerd did not answer within 60 s"
}

pick_compose() {
  if docker_cli compose version >/dev/null 2>&1; then
    compose=(docker_cli compose)
  else
    compose=(docker-compose)
  fi
  compose+=(-p "$project" -f docker-compose.yml)
}

# --- base images built from Debian packages --------------------------------

dockerfile_default() { # ARG default from the Dockerfile, the one source of truth
  sed -n "s/^ARG $1=//p" Dockerfile | head -n 1
}

debian_mirror() {
  local m
  m=$(grep -h '^URIs:' /etc/apt/sources.list.d/*.sources 2>/dev/null | grep -v security | awk '{print $2}' | head -n 1 || true)
  [ -n "$m" ] || m=$(grep -h '^deb ' /etc/apt/sources.list 2>/dev/null | grep -v security | awk '{print $2}' | head -n 1 || true)
  echo "${m:-http://deb.debian.org/debian}"
}

bootstrap() { # DIR [extra debootstrap args]
  local dir=$1; shift
  log "debootstrap bookworm (minbase) into $dir"
  debootstrap --variant=minbase "$@" bookworm "$dir" "$(debian_mirror)" >"$work/debootstrap.log" 2>&1 \
    || { tail -n 30 "$work/debootstrap.log" >&2; fail "debootstrap failed"; }
  rm -rf "$dir"/var/lib/apt/lists/* "$dir"/var/cache/apt/archives/*.deb
}

seed_runtime_image() {
  local name=$1 dir="$work/runtime-root"
  bootstrap "$dir"
  tar -C "$dir" -c . | docker_cli import -c 'CMD ["bash"]' - "$name" >/dev/null
  log "built $name from Debian packages"
}

seed_builder_image() {
  local name=$1 dir="$work/builder-root" sysroot
  bootstrap "$dir" --include=gcc,libc6-dev,pkg-config,ca-certificates
  # The host's own Rust toolchain (this machine has no other source of one).
  sysroot=$(rustc --print sysroot)
  mkdir -p "$dir/usr/local/rust" "$dir/usr/local/cargo"
  cp -a "$sysroot/." "$dir/usr/local/rust/"
  rm -rf "$dir/usr/local/rust/share/doc"
  # Extra CA certificates the host trusts (an egress proxy, a corporate CA):
  # without them cargo inside the build cannot fetch crates.
  if compgen -G "/usr/local/share/ca-certificates/*.crt" >/dev/null; then
    mkdir -p "$dir/usr/local/share/ca-certificates"
    cp /usr/local/share/ca-certificates/*.crt "$dir/usr/local/share/ca-certificates/"
    chroot "$dir" update-ca-certificates >/dev/null 2>&1 || fail "update-ca-certificates in the builder root"
  fi
  tar -C "$dir" -c . | docker_cli import \
    -c 'ENV PATH=/usr/local/cargo/bin:/usr/local/rust/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    -c 'ENV CARGO_HOME=/usr/local/cargo' \
    -c 'ENV RUSTUP_HOME=/usr/local/rustup' \
    -c 'CMD ["bash"]' - "$name" >/dev/null
  log "built $name from Debian packages and the host's Rust toolchain ($(rustc --version))"
}

ensure_base_images() {
  local rust runtime
  rust=$(dockerfile_default RUST_IMAGE)
  runtime=$(dockerfile_default RUNTIME_IMAGE)
  docker_cli image inspect "$runtime" >/dev/null 2>&1 || seed_runtime_image "$runtime"
  docker_cli image inspect "$rust" >/dev/null 2>&1 || seed_builder_image "$rust"
}

# --- teardown ---------------------------------------------------------------

cleanup() {
  local status=$?
  if [ ${#compose[@]} -gt 0 ]; then
    if [ $status -ne 0 ]; then
      log "logs of the failed run:"
      "${compose[@]}" logs --no-color >&2 2>/dev/null || true
    fi
    "${compose[@]}" down -v --remove-orphans >/dev/null 2>&1 || true
  fi
  if [ -n "$dockerd_pid" ]; then
    log "stopping the dockerd this script started"
    kill "$dockerd_pid" 2>/dev/null || true
    wait "$dockerd_pid" 2>/dev/null || true
  fi
  rm -rf "$work"
  # The runner's summary line comes last.
  if [ $status -eq 0 ]; then
    echo "compose-e2e: 1 passed, 0 failed"
  else
    echo "compose-e2e: 0 passed, 1 failed"
  fi
  exit $status
}
trap cleanup EXIT

# --- the test ---------------------------------------------------------------

ensure_packages
ensure_dockerd
pick_compose
ensure_base_images
prepared=$(date +%s)

# A random free host port, so a server already running here does not clash.
export MTLS_HOST_PORT="" MTLS_METRICS_PORT=""
log "docker compose up --build (${compose[0]})"
"${compose[@]}" up --build -d >"$work/up.log" 2>&1 || { cat "$work/up.log" >&2; fail "compose up"; }
up_done=$(date +%s)

server=$("${compose[@]}" ps -q server)
client=$("${compose[@]}" ps -q client)
[ -n "$server" ] && [ -n "$client" ] || fail "containers missing"

# Health: the compose health check speaks mTLS through the project's client.
health=""
for _ in $(seq 1 120); do
  health=$(docker_cli inspect -f '{{.State.Health.Status}}' "$server")
  [ "$health" = healthy ] && break
  sleep 0.5
done
[ "$health" = healthy ] || fail "server is $health, not healthy"
log "server is healthy"

client_status=$(docker_cli wait "$client")
client_log=$(docker_cli logs "$client" 2>&1)
echo "$client_log" | sed 's/^/    client | /' >&2
[ "$client_status" = 0 ] || fail "demo client exited $client_status"
echo "$client_log" | grep -qx 'SERVING' || fail "allowed call did not succeed"
echo "$client_log" | grep -q 'PERMISSION_DENIED (as expected)' || fail "denied call did not get PERMISSION_DENIED"
echo "$client_log" | grep -q 'compose demo: OK' || fail "demo did not finish"

server_log=$(docker_cli logs "$server" 2>&1)
echo "$server_log" | grep '"decision":"deny"' | grep '"method":"/grpc.health.v1.Health/Check"' \
  | grep -q '"peer":"spiffe://example.org/outsider"' || fail "no deny decision logged for the outsider's health check"
log "server logged the denial: $(echo "$server_log" | grep '"decision":"deny"' | head -n 1)"

# Metrics: published on the host's loopback, with the denial counted.
metrics_port=$("${compose[@]}" port server 9464 | awk -F: '{print $NF}')
metrics=$(python3 -c 'import sys, urllib.request; print(urllib.request.urlopen(sys.argv[1], timeout=5).read().decode())' \
  "http://127.0.0.1:$metrics_port/metrics") || fail "metrics endpoint not reachable on 127.0.0.1:$metrics_port"
echo "$metrics" | grep -qE '^mtls_authz_decisions_total\{[^}]*decision="deny"[^}]*\} 1$' \
  || fail "the denial is not in the metrics"
log "metrics on 127.0.0.1:$metrics_port count the denial"

# The image: non-root, and no keys or certificates in it.
[ "$(docker_cli exec "$server" id -u)" = 10001 ] || fail "server does not run as uid 10001"
image=$(sed -n 's/^ *image: *//p' docker-compose.yml | head -n 1)
leftovers=$(docker_cli run --rm --entrypoint sh "$image" -c \
  'ls -A /app/certs; find / -xdev -type f -name "*.key" 2>/dev/null; grep -rl "BEGIN .*PRIVATE KEY-----$" /app 2>/dev/null; true')
[ -z "$leftovers" ] || fail "the image holds key or certificate files: $leftovers"

# SIGTERM: a clean, quick exit, not the 10 s kill.
t0=$(date +%s%N)
docker_cli stop "$server" >/dev/null
t1=$(date +%s%N)
stop_ms=$(( (t1 - t0) / 1000000 ))
exit_code=$(docker_cli inspect -f '{{.State.ExitCode}}' "$server")
log "docker stop took ${stop_ms} ms; server exit code $exit_code"
[ "$stop_ms" -lt 2000 ] || fail "docker stop took ${stop_ms} ms (limit 2000)"
[ "$exit_code" = 0 ] || fail "server exited $exit_code on SIGTERM"
docker_cli logs "$server" 2>&1 | grep -q 'shutdown complete' || fail "server did not log a clean shutdown"

finished=$(date +%s)
log "timings: prepare $((prepared - started)) s, up --build $((up_done - prepared)) s, total $((finished - started)) s"
