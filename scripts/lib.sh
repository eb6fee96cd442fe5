# Shared by the set-up scripts (scripts/test.sh, scripts/install.sh,
# examples/*.sh, bench/*.sh): install what is missing, find cargo, build.
# Sourced, not run. Everything here works as root on a fresh Debian 12
# machine without sudo.

tartan_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

# need_root WHO: one line and exit 1 unless we are root.
need_root() {
  [ "$(id -u)" -eq 0 ] || { echo "$1: run as root (it creates network namespaces and programs the kernel)" >&2; exit 1; }
}

# need_packages PKG...: installs the Debian packages that are not installed
# yet, with one `apt-get update` first; does nothing when all are present.
need_packages() {
  local missing=() pkg
  for pkg in "$@"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q '^install ok installed$' || missing+=("$pkg")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  command -v apt-get >/dev/null || { echo "setup: missing ${missing[*]}, and there is no apt-get to install them" >&2; exit 1; }
  echo "setup: installing ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q >&2
  apt-get install -y -q --no-install-recommends "${missing[@]}" >&2
}

# The packages building Tartan needs: etcd-client's build script compiles
# etcd's .proto files with protoc, which imports google/protobuf/*.proto
# from libprotobuf-dev.
build_packages=(protobuf-compiler libprotobuf-dev gcc libc6-dev pkg-config)

# find_cargo: puts cargo on PATH. rustup installs it under the installing
# user's home; under sudo that is not root's PATH, so look there too.
find_cargo() {
  command -v cargo >/dev/null && return 0
  local home dir
  for home in "$HOME" "$(getent passwd "${SUDO_USER:-}" 2>/dev/null | cut -d: -f6)"; do
    dir=$home/.cargo/bin
    if [ -n "$home" ] && [ -x "$dir/cargo" ]; then
      export PATH=$dir:$PATH
      [ "$home" = "$HOME" ] || export RUSTUP_HOME=${RUSTUP_HOME:-$home/.rustup}
      return 0
    fi
  done
  echo "setup: no Rust toolchain: install one with rustup (https://rustup.rs), Rust 1.88 or later, then run this again" >&2
  exit 1
}

# build_release: builds the tartan binary and sets $tartan to it. The first
# build compiles about 300 crates; cargo's progress shows.
build_release() {
  need_packages "${build_packages[@]}"
  find_cargo
  [ -x "$tartan_root/target/release/tartan" ] ||
    echo "setup: building tartan (release); the first build takes several minutes" >&2
  cargo build --release --locked -p tartan-agent --manifest-path "$tartan_root/Cargo.toml"
  tartan=$tartan_root/target/release/tartan
}
