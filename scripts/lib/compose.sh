# Shared by the docker-compose tests (scripts/compose-*.sh; source it, from
# the repository root). It defines functions only: getting Docker and
# docker-compose onto a bare Debian machine, starting dockerd if none
# answers, and building the Dockerfile's two base images from Debian
# packages when they are not present (there is no registry to pull from).
#
# The sourcing script defines `log` and `fail`, and the variables `work` (a
# scratch directory), `project` (the compose project name), `dockerd_pid`
# (empty) and `compose` (an empty array); `pick_compose` fills `compose`,
# `ensure_dockerd` sets `dockerd_pid` when it starts one.

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

pick_compose() { # COMPOSE_FILE...: sets compose=(... -p $project -f FILE...)
  if docker_cli compose version >/dev/null 2>&1; then
    compose=(docker_cli compose)
  else
    compose=(docker-compose)
  fi
  compose+=(-p "$project")
  local f
  for f in "$@"; do compose+=(-f "$f"); done
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

# wait_healthy CONTAINER...: until each reports healthy (60 s at most).
wait_healthy() {
  local c health
  for c in "$@"; do
    health=""
    for _ in $(seq 1 120); do
      health=$(docker_cli inspect -f '{{.State.Health.Status}}' "$c")
      [ "$health" = healthy ] && break
      sleep 0.5
    done
    [ "$health" = healthy ] || fail "container $c is $health, not healthy"
  done
}
