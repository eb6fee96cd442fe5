#!/usr/bin/env bash
# Attach and detach N network namespaces onto the node bridge with
# `tartan attach` / `detach` (the bridge driver), beside the same work done
# with plain `ip` commands, in one run; prints the medians per namespace.
#
#   sudo bench/attach_scale.sh [N]     (default 100; needs etcd, etcdctl, iproute2)
#
# tartan's time is the CLI's whole round trip for one namespace: process
# start, the gRPC call, the address booked and saved, the veth pair made with
# its container end inside the namespace, the address, the default route and
# the host end on the bridge. The agent's share is the handler's own time,
# from the elapsed_us of its "attached"/"detached" log lines; the rest is the
# CLI's process start, the connection and the HTTP/2 exchange. `ip`'s is the
# five commands that make the same (veth into the namespace, master, address,
# up, default route), with no address book.
#
# Times are read with bash's $EPOCHREALTIME: a `date` per sample would add
# its own fork and exec (1 to 4 ms on a busy machine) to every figure.
set -euo pipefail

count=${1:-100}
root=$(cd "$(dirname "$0")/.." && pwd)
[ "$(id -u)" -eq 0 ] || { echo "bench: run as root (it creates network namespaces)" >&2; exit 1; }
[ "${BASH_VERSINFO[0]}" -ge 5 ] || { echo "bench: needs bash 5 or later (\$EPOCHREALTIME)" >&2; exit 1; }
for tool in etcd etcdctl ip python3; do
  command -v "$tool" >/dev/null || { echo "bench: $tool is missing" >&2; exit 1; }
done
# shellcheck source=scripts/lib.sh
. "$root/scripts/lib.sh"
build_release
# shellcheck source=examples/testbed.sh
. "$root/examples/testbed.sh"
testbed_init "tatt$$"
testbed_hub 248 '{"Network":"10.5.0.0/16","SubnetLen":24,"Backend":{"Type":"vxlan"}}'
testbed_host 1
host=$tb_tag-host1
export TARTAN_API_SOCKET=$work/host1/tartan.sock
subnet=$(sed -n 's/^FLANNEL_SUBNET=//p' "$work/host1/subnet.env")
prefix=${subnet%.*}
gateway=${subnet%/*}

# us T0 T1: microseconds between two $EPOCHREALTIME readings, without a process.
us() { local a=${1/[.,]/} b=${2/[.,]/}; echo $(( 10#$b - 10#$a )); }
for i in $(seq "$count"); do tb_newns "$tb_tag-c$i"; done
: >"$work/attach.us"; : >"$work/detach.us"; : >"$work/ip-attach.us"; : >"$work/ip-detach.us"
for i in $(seq "$count"); do
  t0=$EPOCHREALTIME; "$tartan" attach "$tb_tag-c$i" >/dev/null; t1=$EPOCHREALTIME
  us "$t0" "$t1" >>"$work/attach.us"
done
for i in $(seq "$count"); do
  t0=$EPOCHREALTIME; "$tartan" detach "$tb_tag-c$i" >/dev/null; t1=$EPOCHREALTIME
  us "$t0" "$t1" >>"$work/detach.us"
done
# The same with ip, on addresses the agent has just given back.
for i in $(seq "$count"); do
  ns=$tb_tag-c$i addr=$prefix.$((i + 1))/24
  t0=$EPOCHREALTIME
  ip -n "$host" link add "ipb$i" type veth peer name eth0 netns "$ns"
  ip -n "$host" link set "ipb$i" master tartan0 up
  ip -n "$ns" addr add "$addr" dev eth0
  ip -n "$ns" link set eth0 up
  ip -n "$ns" route add default via "$gateway"
  t1=$EPOCHREALTIME
  us "$t0" "$t1" >>"$work/ip-attach.us"
done
for i in $(seq "$count"); do
  t0=$EPOCHREALTIME; ip -n "$host" link del "ipb$i"; t1=$EPOCHREALTIME
  us "$t0" "$t1" >>"$work/ip-detach.us"
done
left=$(ip -n "$host" -o link show | grep -c ' vt' || true)
python3 - "$work" "$count" "$left" <<'PY'
import re, statistics, sys
work, count, left = sys.argv[1], sys.argv[2], sys.argv[3]
def load(path):
    return [int(l) for l in open(f"{work}/{path}")]
def agent(event):
    # The handler's own time, from the agent's log lines, in request order.
    pattern = re.compile(rf" {event} .*elapsed_us=(\d+)")
    return [int(m.group(1)) for m in map(pattern.search, open(f"{work}/host1/agent.log")) if m]
def show(name, us):
    xs = sorted(x / 1000 for x in us)
    p90 = xs[int(len(xs) * 0.9) - 1]
    print(f"{name:<32} median {statistics.median(xs):6.2f} ms   p90 {p90:6.2f} ms   total {sum(xs) / 1000:6.2f} s")
print(f"{count} namespaces, 2 cores shared by everything:")
for verb, event in (("attach", "attached"), ("detach", "detached")):
    whole, handler = load(f"{verb}.us"), agent(event)
    if len(handler) != len(whole):
        sys.exit(f"bench: {len(handler)} '{event}' lines with elapsed_us in the agent's log for {len(whole)} {verb}es")
    show(f"tartan {verb} (CLI round trip)", whole)
    show(f"  agent's handler", handler)
    show(f"  CLI start and transport", [w - h for w, h in zip(whole, handler)])
show("ip, 5 commands", load("ip-attach.us"))
show("ip link del", load("ip-detach.us"))
print(f"host ends left by tartan after detach: {left}")
PY
