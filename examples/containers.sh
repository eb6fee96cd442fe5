#!/usr/bin/env bash
# The README's two-host walk-through, run for real on one machine: two hosts
# (network namespaces) on a simulated underlay with etcd, an agent on each,
# a busybox image imported on each, a container run on each, and one pinging
# the other across hosts over the VXLAN overlay. Everything is torn down at
# the end; nothing outside the namespaces it creates is touched.
#
#   examples/containers.sh       (as root; installs what is missing, builds tartan)
set -euo pipefail

# shellcheck source=scripts/lib.sh
. "$(dirname "$0")/../scripts/lib.sh"
root=$tartan_root
need_root containers
need_packages etcd-server etcd-client iproute2 iputils-ping busybox-static tar
build_release

# shellcheck source=examples/testbed.sh
. "$root/examples/testbed.sh"
testbed_init "tctr$$"
say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
run() { printf '\033[2m%s$ %s\033[0m\n' "$1" "${*:2}"; "${@:2}"; }

say "underlay 10.241.0.0/24 with etcd on 10.241.0.254:2379, network 10.5.0.0/16 (vxlan)"
testbed_hub 241 '{"Network":"10.5.0.0/16","Backend":{"Type":"vxlan"}}'
say "two hosts, an agent on each"
testbed_host 1
testbed_host 2

say "an image: a busybox root filesystem as a tarball"
mkdir -p "$work/rootfs/bin" "$work/rootfs/etc"
cp "$(command -v busybox)" "$work/rootfs/bin/busybox"
for applet in sh ping ip hostname cat sleep echo; do ln -s busybox "$work/rootfs/bin/$applet"; done
tar -C "$work/rootfs" -cf "$work/busybox.tar" .
for h in 1 2; do run "host$h" on "$h" import "$work/busybox.tar" busybox; done
run host1 on 1 images

say "a container on each host"
run host1 on 1 run -d --name web busybox sleep 3600
run host2 on 2 run -d --name db busybox sleep 3600
run host1 on 1 ps
run host2 on 2 ps
web=$(on 1 inspect web | python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["network"]["ip_address"])')
db=$(on 2 inspect db | python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["network"]["ip_address"])')

say "web ($web, host 1) pings db ($db, host 2) across the overlay"
for _ in $(seq 50); do on 1 exec web ping -c 1 -W 1 "$db" >/dev/null 2>&1 && break; sleep 0.2; done
run host1 on 1 exec web ping -c 3 "$db"
run host2 on 2 exec db sh -c 'hostname; cat /etc/hosts | tail -1'

say "foreground run: output and exit code"
set +e
run host2 on 2 run --rm busybox sh -c "ping -c 1 -W 1 $web >/dev/null && echo reached web; exit 3"
echo "exit code: $?"
set -e

say "stop and remove"
run host1 on 1 stop -t 1 web
run host1 on 1 ps -a
run host1 on 1 rm web
run host2 on 2 rm -f db
