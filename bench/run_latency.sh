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
# shellcheck source=scripts/lib.sh
. "$root/scripts/lib.sh"
build_release
# shellcheck source=examples/testbed.sh
. "$root/examples/testbed.sh"
testbed_init "trun$$"

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
testbed_hub 249 '{"Network":"10.5.0.0/16","Backend":{"Type":"vxlan"}}'
testbed_host 1
export TARTAN_API_SOCKET=$work/host1/tartan.sock
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
tag=$tb_tag
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
