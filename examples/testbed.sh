# Sourced by examples/containers.sh and bench/run_latency.sh: a simulated
# underlay on this machine (a hub namespace with a bridge and etcd) and
# hosts (namespaces with an agent each), all removed on exit. Not a script
# of its own.
#
#   testbed_init TAG          a work dir and the cleanup trap
#   testbed_hub OCTET JSON    underlay 10.OCTET.0.0/24, etcd on .254, network config JSON
#   testbed_host N            host N at 10.OCTET.0.N with an agent; waits for its lease
#   on N ARGS...              the tartan CLI against host N's agent

testbed_init() {
  tb_tag=$1
  work=$(mktemp -d)
  tb_namespaces=()
  trap testbed_cleanup EXIT
}

testbed_cleanup() {
  exec 2>/dev/null
  # Containers outlive their agent by design: their supervisors go first.
  pkill -9 -f "$work/.*containers/" || true
  for ns in "${tb_namespaces[@]}"; do
    for pid in $(ip netns pids "$ns"); do kill -9 "$pid" || true; done
    ip netns del "$ns" || true
  done
  rm -rf "$work"
}

tb_newns() { ip netns add "$1"; ip -n "$1" link set lo up; tb_namespaces+=("$1"); }

testbed_hub() {
  tb_octet=$1
  local hub=$tb_tag-hub ip=10.$1.0.254
  endpoint=http://$ip:2379
  tb_newns "$hub"
  ip -n "$hub" link add br0 type bridge
  ip -n "$hub" addr add "$ip/24" dev br0
  ip -n "$hub" link set br0 up
  ip netns exec "$hub" etcd --name tb --data-dir "$work/etcd" \
    --listen-client-urls "$endpoint" --advertise-client-urls "$endpoint" \
    --listen-peer-urls "http://$ip:2380" --initial-advertise-peer-urls "http://$ip:2380" \
    --initial-cluster "tb=http://$ip:2380" >"$work/etcd.log" 2>&1 &
  for _ in $(seq 100); do
    ip netns exec "$hub" etcdctl --endpoints "$endpoint" endpoint health >/dev/null 2>&1 && break; sleep 0.1
  done
  ip netns exec "$hub" etcdctl --endpoints "$endpoint" put /coreos.com/network/config "$2" >/dev/null
}

testbed_host() {
  local n=$1 ns=$tb_tag-host$1
  tb_newns "$ns"
  ip -n "$tb_tag-hub" link add "v$n" type veth peer name eth0 netns "$ns"
  ip -n "$tb_tag-hub" link set "v$n" master br0 up
  ip -n "$ns" addr add "10.$tb_octet.0.$n/24" dev eth0
  ip -n "$ns" link set eth0 up
  ip -n "$ns" route add default via "10.$tb_octet.0.254"
  mkdir -p "$work/host$n"
  ip netns exec "$ns" "$tartan" agent --etcd-endpoints "$endpoint" --state-dir "$work/host$n/state" \
    --subnet-file "$work/host$n/subnet.env" --api-socket "$work/host$n/tartan.sock" >"$work/host$n/agent.log" 2>&1 &
  for _ in $(seq 200); do [ -f "$work/host$n/subnet.env" ] && return 0; sleep 0.05; done
  echo "testbed: the agent on host $n did not come up:" >&2
  tail -5 "$work/host$n/agent.log" >&2
  return 1
}

on() { local n=$1; shift; ip netns exec "$tb_tag-host$n" env TARTAN_API_SOCKET="$work/host$n/tartan.sock" "$tartan" "$@"; }
