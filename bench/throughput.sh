#!/usr/bin/env bash
# iperf3 throughput between containers on two simulated hosts, for each
# backend (vxlan, host-gw, udp), beside the bare underlay between the two hosts, in one run;
# with vxlan, also over the weave-style L2 segment between the same containers.
#
#   sudo bench/throughput.sh [SECONDS]     (default 5; needs etcd, etcdctl, iproute2, iperf3)
#
# Every backend gets a fresh hub namespace (bridge + etcd) and two host
# namespaces with an agent each; one container per host is attached with
# `tartan attach`. Everything is removed at the end.
set -euo pipefail

secs=${1:-5}
root=$(cd "$(dirname "$0")/.." && pwd)
[ "$(id -u)" -eq 0 ] || { echo "bench: run as root (it creates network namespaces)" >&2; exit 1; }
for tool in etcd etcdctl ip iperf3 python3; do
  command -v "$tool" >/dev/null || { echo "bench: $tool is missing" >&2; exit 1; }
done
# shellcheck source=scripts/lib.sh
. "$root/scripts/lib.sh"
build_release
tag=ttput$$
work=$(mktemp -d)
namespaces=()
cleanup() {
  exec 2>/dev/null  # no job-control notices for the processes killed below
  for ns in "${namespaces[@]}"; do
    for pid in $(ip netns pids "$ns" 2>/dev/null); do kill -9 "$pid" 2>/dev/null || true; done
    ip netns del "$ns" 2>/dev/null || true
  done
  rm -rf "$work"
}
trap cleanup EXIT
newns() { ip netns add "$1"; ip -n "$1" link set lo up; namespaces+=("$1"); }

# iperf3 from namespace $1 to address $2; prints Gbit/s received.
iperf() {
  local server_ns=$3
  ip netns exec "$server_ns" iperf3 -s -1 -D -B "$2" >/dev/null 2>&1
  sleep 0.3
  ip netns exec "$1" iperf3 -c "$2" -t "$secs" -J |
    python3 -c 'import json,sys; print("%.2f" % (json.load(sys.stdin)["end"]["sum_received"]["bits_per_second"] / 1e9))'
}

run_backend() {
  local backend=$1 n=$2
  local hub=$tag-$n-hub endpoint=http://10.24$n.0.254:2379
  newns "$hub"
  ip -n "$hub" link add br0 type bridge
  ip -n "$hub" addr add "10.24$n.0.254/24" dev br0
  ip -n "$hub" link set br0 up
  ip netns exec "$hub" etcd --name b --data-dir "$work/etcd-$n" \
    --listen-client-urls "$endpoint" --advertise-client-urls "$endpoint" \
    --listen-peer-urls "http://10.24$n.0.254:2380" --initial-advertise-peer-urls "http://10.24$n.0.254:2380" \
    --initial-cluster "b=http://10.24$n.0.254:2380" >"$work/etcd-$n.log" 2>&1 &
  for _ in $(seq 100); do
    ip netns exec "$hub" etcdctl --endpoints "$endpoint" endpoint health >/dev/null 2>&1 && break; sleep 0.1
  done
  ip netns exec "$hub" etcdctl --endpoints "$endpoint" put /coreos.com/network/config \
    "{\"Network\":\"10.5.0.0/16\",\"Backend\":{\"Type\":\"$backend\"}}" >/dev/null
  for h in 1 2; do
    local ns=$tag-$n-h$h
    newns "$ns"
    ip -n "$hub" link add "v$h" type veth peer name eth0 netns "$ns"
    ip -n "$hub" link set "v$h" master br0 up
    ip -n "$ns" addr add "10.24$n.0.$h/24" dev eth0
    ip -n "$ns" link set eth0 up
    ip -n "$ns" route add default via "10.24$n.0.254"
    mkdir -p "$work/$n-$h"
    ip netns exec "$ns" "$tartan" agent --etcd-endpoints "$endpoint" --state-dir "$work/$n-$h/state" \
      --subnet-file "$work/$n-$h/subnet.env" --api-socket "$work/$n-$h/sock" >"$work/$n-$h/log" 2>&1 &
  done
  for h in 1 2; do
    for _ in $(seq 200); do [ -S "$work/$n-$h/sock" ] && [ -f "$work/$n-$h/subnet.env" ] && break; sleep 0.05; done
    newns "$tag-$n-c$h"
    "$tartan" attach "$tag-$n-c$h" --api-socket "$work/$n-$h/sock" >"$work/$n-$h/addr"
  done
  local a1 a2
  a1=$(cut -d/ -f1 "$work/$n-1/addr")
  a2=$(cut -d/ -f1 "$work/$n-2/addr")
  for _ in $(seq 100); do ip netns exec "$tag-$n-c1" ping -c1 -W1 "$a2" >/dev/null 2>&1 && break; sleep 0.1; done
  if [ "$n" = 1 ]; then
    echo "underlay  host1 -> host2:                 $(iperf "$tag-$n-h1" "10.24$n.0.2" "$tag-$n-h2") Gbit/s"
  fi
  local routed
  routed=$(iperf "$tag-$n-c1" "$a2" "$tag-$n-c2")
  printf '%-9s container -> container (MTU %s): %s Gbit/s\n' "$backend" \
    "$(grep FLANNEL_MTU "$work/$n-1/subnet.env" | cut -d= -f2)" "$routed"
  if [ "$backend" = vxlan ]; then
    # The same two containers on the L2 segment too: its own VXLAN device,
    # the peers found through the shared etcd.
    for h in 1 2; do
      "$tartan" attach "10.1.1.$h/24" "$tag-$n-c$h" --api-socket "$work/$n-$h/sock" >/dev/null
    done
    for _ in $(seq 300); do ip netns exec "$tag-$n-c1" ping -c1 -W1 10.1.1.2 >/dev/null 2>&1 && break; sleep 0.1; done
    local segment
    segment=$(iperf "$tag-$n-c1" 10.1.1.2 "$tag-$n-c2")
    printf '%-9s container -> container (MTU %s): %s Gbit/s (%.2f of vxlan)\n' "l2 seg" \
      "$(ip -n "$tag-$n-c1" -o link show ethwe | sed -n 's/.* mtu \([0-9]*\) .*/\1/p')" "$segment" \
      "$(python3 -c "print($segment / $routed if $routed else 0)")"
  fi
}

echo "iperf3, ${secs}s per run, 2 cores shared by everything:"
run_backend vxlan 1
run_backend host-gw 2
run_backend udp 3
