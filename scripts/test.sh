#!/usr/bin/env bash
# The test suite, from a fresh Debian 12 machine: installs what the tests
# need, then runs cargo fmt --check, clippy -D warnings and every test.
#
#   scripts/test.sh              (as root: the tests create network namespaces)
#
# The integration tests start their own etcd on free ports and work only in
# network namespaces they create; a missing prerequisite fails, never skips.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
cd "$tartan_root"
need_root test

# What the tests run or observe with: etcd and etcdctl, ip, ping, nft,
# openssl (test certificates), python3, busybox-static (the containers'
# image), tar and gzip (image archives), script from bsdutils (a terminal
# for the run -t test), unshare and nsenter from
# util-linux, systemd-analyze (the unit is verified), and ovsdb-server,
# ovs-vswitchd, ovsdb-tool and ovs-vsctl from openvswitch-switch (the tests
# run a private switch of their own and leave any system one alone).
need_packages "${build_packages[@]}" \
  etcd-server etcd-client iproute2 iputils-ping procps openssl nftables python3 \
  busybox-static tar gzip bsdutils util-linux systemd openvswitch-switch
find_cargo

echo "test: $(etcd --version | head -n1); $(protoc --version); $(cargo --version)"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings

# Every test; then one line with the totals, counted from cargo's own lines.
log=$(mktemp)
trap 'rm -f "$log"' EXIT
set +e
cargo test --workspace --all-targets --locked 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
awk '/^test result:/ { passed += $4; failed += $6 } END { printf "%d passed, %d failed\n", passed, failed }' "$log"
exit "$status"
