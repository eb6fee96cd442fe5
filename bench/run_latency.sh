#!/usr/bin/env bash
# Start-to-exit latency of a container: `tartan run --rm IMAGE true` on the
# overlay (vxlan) beside `crun run` of the same root filesystem, in one run,
# interleaved, and the ratio of the medians.
#
#   sudo bench/run_latency.sh [RUNS]     (default 50; needs etcd, etcdctl, iproute2, crun, busybox-static)
#
# tartan's time covers the whole CLI round trip: the gRPC call, the image
# lookup, the supervisor, namespaces, the veth pair and address on the node
# bridge, the overlay root filesystem, the command, the exit status, and the
# removal (interface, address, directory). crun's covers its namespaces and
# root filesystem; it sets up no network, and (like tartan) no cgroups.
set -euo pipefail

runs=${1:-50}
root=$(cd "$(dirname "$0")/.." && pwd)
[ "$(id -u)" -eq 0 ] || { echo "bench: run as root (it creates network namespaces)" >&2; exit 1; }
for tool in etcd etcdctl ip crun python3 busybox unshare; do
  command -v "$tool" >/dev/null || { echo "bench: $tool is missing" >&2; exit 1; }
done
cargo build --quiet --release -p tartan-agent --manifest-path "$root/Cargo.toml"
tartan=$root/target/release/tartan
tag=trun$$
work=$(mktemp -d)
namespaces=()
cleanup() {
  exec 2>/dev/null
  pkill -9 -f "$work/state/containers" || true
  for ns in "${namespaces[@]}"; do
    for pid in $(ip netns pids "$ns" 2>/dev/null); do kill -9 "$pid" 2>/dev/null || true; done
    ip netns del "$ns" 2>/dev/null || true
  done
  rm -rf "$work"
}
trap cleanup EXIT
newns() { ip netns add "$1"; ip -n "$1" link set lo up; namespaces+=("$1"); }

# The root filesystem both runtimes get.
mkdir -p "$work/bundle/rootfs/bin" "$work/bundle/rootfs/etc"
cp "$(command -v busybox)" "$work/bundle/rootfs/bin/busybox"
for applet in sh true; do ln -s busybox "$work/bundle/rootfs/bin/$applet"; done
(cd "$work/bundle" && crun spec)
python3 - "$work/bundle/config.json" <<'PY'
import json, sys
path = sys.argv[1]
spec = json.load(open(path))
spec["root"] = {"path": "rootfs", "readonly": False}
spec["process"]["args"] = ["true"]
spec["process"]["terminal"] = False
# No cgroups (tartan sets none either; crun also refuses this machine's hybrid hierarchy).
spec["linux"].pop("resources", None)
spec["linux"]["namespaces"] = [n for n in spec["linux"]["namespaces"] if n["type"] != "cgroup"]
json.dump(spec, open(path, "w"), indent=2)
PY

# One host with an agent on the vxlan backend, etcd in a hub namespace.
hub=$tag-hub host=$tag-h1 endpoint=http://10.249.0.254:2379
newns "$hub"
ip -n "$hub" link add br0 type bridge
ip -n "$hub" addr add 10.249.0.254/24 dev br0
ip -n "$hub" link set br0 up
ip netns exec "$hub" etcd --name b --data-dir "$work/etcd" \
  --listen-client-urls "$endpoint" --advertise-client-urls "$endpoint" \
  --listen-peer-urls http://10.249.0.254:2380 --initial-advertise-peer-urls http://10.249.0.254:2380 \
  --initial-cluster b=http://10.249.0.254:2380 >"$work/etcd.log" 2>&1 &
for _ in $(seq 100); do
  ip netns exec "$hub" etcdctl --endpoints "$endpoint" endpoint health >/dev/null 2>&1 && break; sleep 0.1
done
ip netns exec "$hub" etcdctl --endpoints "$endpoint" put /coreos.com/network/config \
  '{"Network":"10.5.0.0/16","Backend":{"Type":"vxlan"}}' >/dev/null
newns "$host"
ip -n "$hub" link add v1 type veth peer name eth0 netns "$host"
ip -n "$hub" link set v1 master br0 up
ip -n "$host" addr add 10.249.0.1/24 dev eth0
ip -n "$host" link set eth0 up
ip -n "$host" route add default via 10.249.0.254
ip netns exec "$host" "$tartan" agent --etcd-endpoints "$endpoint" --state-dir "$work/state" \
  --subnet-file "$work/subnet.env" --api-socket "$work/sock" >"$work/agent.log" 2>&1 &
for _ in $(seq 200); do [ -S "$work/sock" ] && [ -f "$work/subnet.env" ] && break; sleep 0.05; done
[ -f "$work/subnet.env" ] || { echo "bench: the agent did not come up:" >&2; tail -5 "$work/agent.log" >&2; exit 1; }
export TARTAN_API_SOCKET=$work/sock
tar -C "$work/bundle/rootfs" -cf "$work/image.tar" .
"$tartan" import "$work/image.tar" bench >/dev/null

# crun refuses this machine's hybrid cgroup hierarchy (controllers on the
# unified mount), so the timing loop runs in a private mount namespace
# without that mount; the tartan CLI there only talks to the agent's socket.
cat >"$work/loop.sh" <<'LOOP'
set -euo pipefail
if mountpoint -q /sys/fs/cgroup/unified; then umount /sys/fs/cgroup/unified; fi
now() { date +%s%N; }
# Warm both up once, then interleave.
"$tartan" run --rm bench true
crun --cgroup-manager=disabled run --bundle "$work/bundle" "$tag-warm"
: >"$work/tartan.ms"; : >"$work/crun.ms"
for i in $(seq "$runs"); do
  t0=$(now); "$tartan" run --rm bench true; t1=$(now)
  echo $(( (t1 - t0) / 1000 )) >>"$work/tartan.ms"
  t0=$(now); crun --cgroup-manager=disabled run --bundle "$work/bundle" "$tag-$i"; t1=$(now)
  echo $(( (t1 - t0) / 1000 )) >>"$work/crun.ms"
done
LOOP
export tartan work tag runs
unshare --mount --propagation private bash "$work/loop.sh"
leftover=$("$tartan" ps -a -q | wc -l)
python3 - "$work/tartan.ms" "$work/crun.ms" "$runs" "$leftover" <<'PY'
import statistics, sys
tartan = [int(l) / 1000 for l in open(sys.argv[1])]
crun = [int(l) / 1000 for l in open(sys.argv[2])]
def show(name, xs):
    xs = sorted(xs)
    p90 = xs[int(len(xs) * 0.9) - 1]
    print(f"{name:<34} median {statistics.median(xs):6.1f} ms   mean {statistics.mean(xs):6.1f} ms   p90 {p90:6.1f} ms")
print(f"{sys.argv[3]} runs each, interleaved, 2 cores shared by everything:")
show("tartan run --rm (overlay, vxlan)", tartan)
show("crun run (no network)", crun)
print(f"ratio of medians tartan/crun: {statistics.median(tartan) / statistics.median(crun):.2f}")
print(f"containers left behind by tartan: {sys.argv[4]}")
PY
