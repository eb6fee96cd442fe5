#!/usr/bin/env bash
# How long a starting agent takes to list and hold N existing peer leases,
# and how much memory it uses doing so.
#
#   bench/lease_scale.sh [N]        (default 2000; needs etcd and etcdctl)
#
# Starts a private etcd on a free loopback port, writes N flannel-format
# leases under a bench prefix, starts a release-built agent with a public IP
# of its own, and reports: time to READY (subnet file written), time until
# the agent has listed all N peers, resident memory (VmRSS, VmHWM), and the
# time one `tartan status -o json` takes (it looks up every peer's TTL).
set -euo pipefail

N=${1:-2000}
root=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=scripts/lib.sh
. "$root/scripts/lib.sh"
build_release
work=$(mktemp -d)
etcd_pid=""
agent_pid=""
cleanup() {
  [ -n "$agent_pid" ] && kill -9 "$agent_pid" 2>/dev/null || true
  [ -n "$etcd_pid" ] && kill -9 "$etcd_pid" 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
now_ms() { echo $(( $(date +%s%N) / 1000000 )); }

client_port=$(free_port)
peer_port=$(free_port)
endpoint=http://127.0.0.1:$client_port
etcd --name bench --data-dir "$work/etcd" \
  --listen-client-urls "$endpoint" --advertise-client-urls "$endpoint" \
  --listen-peer-urls "http://127.0.0.1:$peer_port" --initial-advertise-peer-urls "http://127.0.0.1:$peer_port" \
  --initial-cluster "bench=http://127.0.0.1:$peer_port" >"$work/etcd.log" 2>&1 &
etcd_pid=$!
export ETCDCTL_API=3
ctl() { etcdctl --endpoints "$endpoint" "$@"; }
for _ in $(seq 100); do ctl endpoint health >/dev/null 2>&1 && break; sleep 0.1; done
ctl endpoint health >/dev/null

prefix=/bench/network
ctl put "$prefix/config" '{"Network":"10.0.0.0/8","SubnetLen":24,"Backend":{"Type":"vxlan"}}' >/dev/null
lease_id=$(ctl lease grant 86400 | awk '{print $2}')
echo "writing $N leases ..."
seq 1 "$N" | xargs -P 8 -I{} sh -c '
  i={}; a=$((i / 256)); b=$((i % 256))
  etcdctl --endpoints '"$endpoint"' put --lease='"$lease_id"' \
    "'"$prefix"'/subnets/10.$a.$b.0-24" \
    "{\"PublicIP\":\"172.16.$a.$b\",\"PublicIPv6\":null,\"BackendType\":\"vxlan\",\"BackendData\":{\"VNI\":1,\"VtepMAC\":\"0e:00:00:00:$(printf %02x $a):$(printf %02x $b)\"}}" >/dev/null'
echo "leases in etcd: $(ctl get --prefix --keys-only "$prefix/subnets/" | grep -c subnets)"

start=$(now_ms)
TARTAN_LOG=info "$tartan" agent --etcd-endpoints "$endpoint" --etcd-prefix "$prefix" \
  --public-ip 192.0.2.1 --state-dir "$work/state" --subnet-file "$work/subnet.env" \
  --api-socket "$work/tartan.sock" >"$work/agent.log" 2>&1 &
agent_pid=$!
ready=""
listed=""
for _ in $(seq 3000); do
  [ -z "$ready" ] && [ -f "$work/subnet.env" ] && ready=$(( $(now_ms) - start ))
  if [ -z "$listed" ] && grep -q "listed subnet leases peers=$N " "$work/agent.log"; then
    listed=$(( $(now_ms) - start ))
  fi
  [ -n "$ready" ] && [ -n "$listed" ] && break
  kill -0 "$agent_pid" 2>/dev/null || { echo "agent exited:"; tail "$work/agent.log"; exit 1; }
  sleep 0.005
done
[ -n "$listed" ] || { echo "agent never listed $N peers:"; tail "$work/agent.log"; exit 1; }
rss_now() { awk '/^(VmRSS|VmHWM)/ {printf "%s %d MiB  ", $1, $2/1024}' "/proc/$agent_pid/status"; }
echo "agent ready (subnet file written): ${ready} ms"
echo "agent listed and holds $N peers:   ${listed} ms"
echo "memory after listing:              $(rss_now)"
t0=$(now_ms)
peers=$("$tartan" status -o json --api-socket "$work/tartan.sock" | python3 -c 'import json,sys; print(len(json.load(sys.stdin)["peers"]))')
echo "tartan status -o json:             $(( $(now_ms) - t0 )) ms for $peers peers"
sleep 2
echo "memory after status and 2 s idle:  $(rss_now)"
