#!/usr/bin/env bash
# A three-host Tartan cluster on one machine, torn down at the end.
#
#   sudo examples/demo.sh [vxlan|host-gw|udp]        (default vxlan)
#
# Builds: a hub network namespace with a bridge (the "underlay"), etcd in the
# hub, three host namespaces with a veth each onto the bridge, and one
# `tartan agent` per host. Each agent leases a subnet and programs its host;
# one container (a network namespace) per host is plugged in with
# `tartan attach`, and the containers ping each other across hosts. The
# script also adds a hand-written flannel lease with etcdctl and shows it
# arriving as a peer. Nothing outside the namespaces it creates is touched.
# Run as root; installs what it needs that is missing (etcd, etcdctl,
# iproute2, ping, the build's packages) and builds tartan first.
set -euo pipefail

# shellcheck source=scripts/lib.sh
. "$(dirname "$0")/../scripts/lib.sh"
need_root demo
backend=${1:-vxlan}
case "$backend" in vxlan|host-gw|udp) ;; *) echo "demo: backend must be vxlan, host-gw or udp" >&2; exit 2 ;; esac
need_packages etcd-server etcd-client iproute2 iputils-ping python3
build_release

tag=tdemo$$
hub=$tag-hub
work=$(mktemp -d)
hosts=(h1 h2 h3)
containers=()
pids=()
cleanup() {
  # Agents first, with SIGTERM: a clean shutdown, as systemd would do it.
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  for ns in "${containers[@]}" "${hosts[@]/#/$tag-}" "$hub"; do
    for pid in $(ip netns pids "$ns" 2>/dev/null); do kill -9 "$pid" 2>/dev/null || true; done
    ip netns del "$ns" 2>/dev/null || true
  done
  rm -rf "$work"
}
trap cleanup EXIT
say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

say "underlay: namespace $hub with bridge br0 10.240.0.254/24"
ip netns add "$hub"
ip -n "$hub" link set lo up
ip -n "$hub" link add br0 type bridge
ip -n "$hub" addr add 10.240.0.254/24 dev br0
ip -n "$hub" link set br0 up

say "etcd on 10.240.0.254:2379 inside $hub"
endpoint=http://10.240.0.254:2379
ip netns exec "$hub" etcd --name demo --data-dir "$work/etcd" \
  --listen-client-urls "$endpoint" --advertise-client-urls "$endpoint" \
  --listen-peer-urls http://10.240.0.254:2380 --initial-advertise-peer-urls http://10.240.0.254:2380 \
  --initial-cluster demo=http://10.240.0.254:2380 >"$work/etcd.log" 2>&1 &
pids+=($!)
export ETCDCTL_API=3
ctl() { ip netns exec "$hub" etcdctl --endpoints "$endpoint" "$@"; }
for _ in $(seq 100); do ctl endpoint health >/dev/null 2>&1 && break; sleep 0.1; done
ctl put /coreos.com/network/config "{\"Network\":\"10.5.0.0/16\",\"Backend\":{\"Type\":\"$backend\"}}"

n=0
for h in "${hosts[@]}"; do
  n=$((n + 1))
  ns=$tag-$h
  say "host $h: namespace $ns, eth0 10.240.0.$n/24, agent"
  ip netns add "$ns"
  ip -n "$ns" link set lo up
  ip -n "$hub" link add "v-$h" type veth peer name eth0 netns "$ns"
  ip -n "$hub" link set "v-$h" master br0 up
  ip -n "$ns" addr add "10.240.0.$n/24" dev eth0
  ip -n "$ns" link set eth0 up
  ip -n "$ns" route add default via 10.240.0.254
  mkdir -p "$work/$h"
  ip netns exec "$ns" "$tartan" agent --etcd-endpoints "$endpoint" \
    --state-dir "$work/$h/state" --subnet-file "$work/$h/subnet.env" \
    --api-socket "$work/$h/tartan.sock" >"$work/$h/agent.log" 2>&1 &
  pids=($! "${pids[@]}")
done

for h in "${hosts[@]}"; do
  for _ in $(seq 100); do [ -f "$work/$h/subnet.env" ] && break; sleep 0.1; done
  say "$h subnet file"
  cat "$work/$h/subnet.env"
done

say "a hand-written flannel lease, put with etcdctl"
ctl put /coreos.com/network/subnets/10.5.200.0-24 \
  '{"PublicIP":"10.240.0.99","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"0e:aa:bb:cc:dd:ee"}}'
sleep 1

say "tartan status on h1"
ip netns exec "$tag-h1" "$tartan" status --api-socket "$work/h1/tartan.sock"
say "tartan status -o json on h3 (peers only)"
ip netns exec "$tag-h3" "$tartan" status -o json --api-socket "$work/h3/tartan.sock" |
  python3 -c 'import json,sys; [print(p["subnet"], p["public_ip"], p["backend_type"]) for p in json.load(sys.stdin)["peers"]]'

declare -A address
for h in "${hosts[@]}"; do
  c=$tag-c-$h
  ip netns add "$c"
  containers+=("$c")
  address[$h]=$("$tartan" attach "$c" --api-socket "$work/$h/tartan.sock")
  say "container $c on $h: tartan attach -> ${address[$h]}"
  ip -n "$c" -br addr show eth0
done

say "routes on h1 ($backend)"
ip -n "$tag-h1" route show

for from in "${hosts[@]}"; do
  for to in "${hosts[@]}"; do
    [ "$from" = "$to" ] && continue
    target=${address[$to]%/*}
    ok=no
    for _ in $(seq 20); do
      if ip netns exec "$tag-c-$from" ping -c 1 -W 1 "$target" >/dev/null 2>&1; then ok=yes; break; fi
      sleep 0.25
    done
    echo "ping from the container on $from to ${target} (on $to): $ok"
    [ "$ok" = yes ] || { echo "demo: the overlay does not work; agent log of $from:"; tail -n 20 "$work/$from/agent.log"; exit 1; }
  done
done

say "leases in etcd"
ctl get --prefix /coreos.com/network/subnets/
say "tearing down"
