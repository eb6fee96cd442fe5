#!/usr/bin/env bash
# How long a starting vxlan agent takes to install routes, neighbours and FDB
# entries for N existing peer leases, and its memory; then whether a restart
# leaves the kernel untouched.
#
#   sudo bench/overlay_scale.sh [N]      (default 5000; needs etcd, etcdctl, iproute2)
#
# Everything runs in two network namespaces of its own (a hub with etcd and
# a bridge, and one host with the agent), removed at the end.
set -euo pipefail

N=${1:-5000}
root=$(cd "$(dirname "$0")/.." && pwd)
[ "$(id -u)" -eq 0 ] || { echo "bench: run as root (it creates network namespaces)" >&2; exit 1; }
# shellcheck source=scripts/lib.sh
. "$root/scripts/lib.sh"
build_release
tag=tbench$$
hub=$tag-hub
host=$tag-host
work=$(mktemp -d)
agent_pid=""
cleanup() {
  exec 2>/dev/null  # no job-control notices for the processes killed below
  [ -n "$agent_pid" ] && kill -9 "$agent_pid" 2>/dev/null || true
  for ns in "$host" "$hub"; do
    for pid in $(ip netns pids "$ns" 2>/dev/null); do kill -9 "$pid" 2>/dev/null || true; done
    ip netns del "$ns" 2>/dev/null || true
  done
  rm -rf "$work"
}
trap cleanup EXIT
now_ms() { echo $(( $(date +%s%N) / 1000000 )); }

ip netns add "$hub"
ip netns add "$host"
ip -n "$hub" link set lo up
ip -n "$host" link set lo up
ip -n "$hub" link add br0 type bridge
ip -n "$hub" addr add 10.241.0.254/16 dev br0
ip -n "$hub" link set br0 up
ip -n "$hub" link add v-host type veth peer name eth0 netns "$host"
ip -n "$hub" link set v-host master br0 up
ip -n "$host" addr add 10.241.0.1/16 dev eth0
ip -n "$host" link set eth0 up
ip -n "$host" route add default via 10.241.0.254

endpoint=http://10.241.0.254:2379
ip netns exec "$hub" etcd --name bench --data-dir "$work/etcd" \
  --listen-client-urls "$endpoint" --advertise-client-urls "$endpoint" \
  --listen-peer-urls http://10.241.0.254:2380 --initial-advertise-peer-urls http://10.241.0.254:2380 \
  --initial-cluster bench=http://10.241.0.254:2380 >"$work/etcd.log" 2>&1 &
export ETCDCTL_API=3
ctl() { ip netns exec "$hub" etcdctl --endpoints "$endpoint" "$@"; }
for _ in $(seq 100); do ctl endpoint health >/dev/null 2>&1 && break; sleep 0.1; done
prefix=/bench/network
ctl put "$prefix/config" '{"Network":"10.0.0.0/8","SubnetLen":24,"Backend":{"Type":"vxlan"}}' >/dev/null
lease_id=$(ctl lease grant 86400 | awk '{print $2}')
echo "writing $N vxlan leases ..."
seq 1 "$N" | xargs -P 8 -I{} sh -c '
  i={}; a=$((i / 256)); b=$((i % 256))
  ip netns exec '"$hub"' etcdctl --endpoints '"$endpoint"' put --lease='"$lease_id"' \
    "'"$prefix"'/subnets/10.$a.$b.0-24" \
    "{\"PublicIP\":\"10.241.$((a + 1)).$b\",\"PublicIPv6\":null,\"BackendType\":\"vxlan\",\"BackendData\":{\"VNI\":1,\"VtepMAC\":\"0e:00:00:00:$(printf %02x $a):$(printf %02x $b)\"}}" >/dev/null'

start_agent() {
  start=$(now_ms)
  ip netns exec "$host" "$tartan" agent --etcd-endpoints "$endpoint" --etcd-prefix "$prefix" \
    --state-dir "$work/state" --subnet-file "$work/subnet.env" --api-socket "$work/tartan.sock" \
    >>"$work/agent.log" 2>&1 &
  agent_pid=$!
}
wait_for_log() {
  for _ in $(seq 6000); do
    grep -q "$1" "$work/agent.log" && return 0
    kill -0 "$agent_pid" 2>/dev/null || { echo "agent exited:"; tail "$work/agent.log"; exit 1; }
    sleep 0.005
  done
  echo "timed out waiting for: $1"; tail "$work/agent.log"; exit 1
}
rss() { awk '/^(VmRSS|VmHWM)/ {printf "%s %d MiB  ", $1, $2/1024}' "/proc/$agent_pid/status"; }

start_agent
wait_for_log "reconciled the overlay peers=$N "
installed=$(( $(now_ms) - start ))
line=$(grep "reconciled the overlay peers=$N " "$work/agent.log" | head -n1)
routes=$(ip -n "$host" route show proto 84 | wc -l)
neigh=$(ip -n "$host" neigh show dev tartan.1 nud permanent | wc -l)
fdb=$(ip netns exec "$host" bridge fdb show dev tartan.1 | grep -c "dst ")
echo "first start: every entry installed ${installed} ms after exec"
echo "  agent's own pass: $(echo "$line" | grep -o 'elapsed_ms=[0-9]*')"
echo "  kernel: $routes routes (proto 84), $neigh permanent neighbours, $fdb FDB entries"
echo "  memory: $(rss)"

kill -TERM "$agent_pid"; wait "$agent_pid" || true
before=$(ip -n "$host" route show proto 84 | md5sum)
: >"$work/agent.log"
start_agent
wait_for_log "listed subnet leases peers=$N "
sleep 4
after=$(ip -n "$host" route show proto 84 | md5sum)
changes=$(grep -c "reconciled the overlay" "$work/agent.log" || true)
echo "restart: routes identical: $([ "$before" = "$after" ] && echo yes || echo NO); reconcile passes that changed anything: $changes"
echo "  memory: $(rss)"
