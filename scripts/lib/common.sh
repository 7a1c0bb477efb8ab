# Shared by the test and generation scripts (source it; it defines functions
# only). Each script installs what it needs, so it also runs on a fresh
# machine with only Rust, Python 3 and Debian's apt.

# install_debs PACKAGE...: installs the named Debian packages that are not
# installed yet (one apt-get update, only when something is missing).
install_debs() {
  local missing=() p
  for p in "$@"; do
    dpkg-query -W -f='${Status}\n' "$p" 2>/dev/null | grep -q '^install ok installed$' || missing+=("$p")
  done
  [ ${#missing[@]} -gt 0 ] || return 0
  echo "[$(basename "$0")] installing ${missing[*]} from Debian's packages (not installed yet)" >&2
  export DEBIAN_FRONTEND=noninteractive
  # Wait for another apt (say, unattended upgrades) rather than fail at once.
  apt-get -o DPkg::Lock::Timeout=300 update -qq
  apt-get -o DPkg::Lock::Timeout=300 install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# need_python_venv: the venv module with pip (Debian splits it out).
need_python_venv() {
  python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || install_debs python3-venv
}

# need_node: node and npm, from Debian unless some node is already on PATH.
need_node() {
  command -v node >/dev/null 2>&1 && command -v npm >/dev/null 2>&1 || install_debs nodejs npm
}

# ensure_bins ROOT: exports MTLS_BIN_DIR, building the binaries when unset.
ensure_bins() {
  if [ -z "${MTLS_BIN_DIR:-}" ]; then
    echo "[$(basename "$0")] MTLS_BIN_DIR unset: cargo build --locked --bins" >&2
    (cd "$1" && cargo build --locked --bins)
    export MTLS_BIN_DIR=$1/target/debug
  fi
}
