#!/usr/bin/env bash
# How soon a container's name resolves on another host: `tartan run -d
# --name NAME` on host 2, while a poller in host 1's namespace asks host 1's
# agent (its bridge address, port 53) for NAME every millisecond; the time
# from `run` returning to the first answer with an address, per name. Then
# from `rm -f` being started until the name is gone (`rm` frees the name
# before it returns), beside rm's own time.
#
#   sudo bench/dns.sh [N]     (default 20; needs etcd, etcdctl, iproute2, python3, busybox)
#
# The path measured: host 2's agent writes the container's addresses into
# the name's etcd record once it runs; host 1's agent sees it through its
# watch of the names and answers from its table.
set -euo pipefail

count=${1:-20}
root=$(cd "$(dirname "$0")/.." && pwd)
[ "$(id -u)" -eq 0 ] || { echo "bench: run as root (it creates network namespaces)" >&2; exit 1; }
[ "${BASH_VERSINFO[0]}" -ge 5 ] || { echo "bench: needs bash 5 or later (\$EPOCHREALTIME)" >&2; exit 1; }
for tool in etcd etcdctl ip python3 busybox; do
  command -v "$tool" >/dev/null || { echo "bench: $tool is missing" >&2; exit 1; }
done
# shellcheck source=scripts/lib.sh
. "$root/scripts/lib.sh"
build_release
# shellcheck source=examples/testbed.sh
. "$root/examples/testbed.sh"
testbed_init "tdns$$"
testbed_hub 121 '{"Network":"10.5.0.0/16","Backend":{"Type":"vxlan"}}'
# Host 1's agent gets no resolvers of its own (`ip netns exec` mounts this
# file as its /etc/resolv.conf): a name not on the fabric is refused at once
# (SERVFAIL) rather than after a forward to the machine's resolvers times out.
mkdir -p "/etc/netns/$tb_tag-host1"
echo "# no resolvers" >"/etc/netns/$tb_tag-host1/resolv.conf"
trap 'rm -rf "/etc/netns/$tb_tag-host1"; testbed_cleanup' EXIT
testbed_host 1
testbed_host 2
dns=$(sed -n 's/^FLANNEL_SUBNET=//p' "$work/host1/subnet.env")
dns=${dns%/*}

mkdir -p "$work/rootfs/bin"
cp "$(command -v busybox)" "$work/rootfs/bin/busybox"
ln -s busybox "$work/rootfs/bin/sleep"
tar -C "$work/rootfs" -cf "$work/image.tar" .
on 2 import "$work/image.tar" bench >/dev/null

# poll.py SERVER NAME WANT: asks for NAME's A record every millisecond until
# the answer is WANT ("address", or "gone": any answer without one); prints
# the wall-clock time then.
cat >"$work/poll.py" <<'PY'
import socket, struct, sys, time
server, name, want = sys.argv[1], sys.argv[2], sys.argv[3]
query = struct.pack(">HHHHHH", 0x7a7a, 0x0100, 1, 0, 0, 0)
query += b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\0"
query += struct.pack(">HH", 1, 1)
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.settimeout(0.001)
deadline = time.time() + 10
while time.time() < deadline:
    sock.sendto(query, (server, 53))
    try:
        reply = sock.recv(512)
    except socket.timeout:
        continue
    rcode, answers = reply[3] & 0x0F, struct.unpack(">H", reply[6:8])[0]
    found = rcode == 0 and answers > 0
    if found == (want == "address"):
        print(time.time())
        sys.exit(0)
    time.sleep(0.001)
sys.exit("no answer within 10 s")
PY

# waited PID: waits for a poller; on failure shows the agents' last words.
waited() {
  wait "$1" && return 0
  for n in 1 2; do echo "--- host $n's agent:" >&2; tail -5 "$work/host$n/agent.log" >&2; done
  return 1
}

# ms T0 T1: milliseconds between two wall-clock readings.
ms() { python3 -c "import sys; print(round((float(sys.argv[2]) - float(sys.argv[1])) * 1000, 2))" "$1" "$2"; }
: >"$work/up.ms"; : >"$work/gone.ms"; : >"$work/rm.ms"
for i in $(seq "$count"); do
  name=dns$i
  ip netns exec "$tb_tag-host1" python3 "$work/poll.py" "$dns" "$name" address >"$work/seen" &
  poller=$!
  sleep 0.1
  on 2 run -d --name "$name" bench sleep 1000 >/dev/null
  t0=$EPOCHREALTIME
  waited "$poller"
  ms "$t0" "$(cat "$work/seen")" >>"$work/up.ms"
  ip netns exec "$tb_tag-host1" python3 "$work/poll.py" "$dns" "$name" gone >"$work/seen" &
  poller=$!
  sleep 0.1
  t0=$EPOCHREALTIME
  on 2 rm -f "$name" >/dev/null
  t1=$EPOCHREALTIME
  waited "$poller"
  ms "$t0" "$(cat "$work/seen")" >>"$work/gone.ms"
  ms "$t0" "$t1" >>"$work/rm.ms"
done
python3 - "$work/up.ms" "$work/gone.ms" "$work/rm.ms" <<'PY'
import statistics, sys
for label, path in (
    ("resolvable after run", sys.argv[1]),
    ("gone after rm began", sys.argv[2]),
    ("rm itself", sys.argv[3]),
):
    xs = sorted(float(l) for l in open(path))
    p90 = xs[min(len(xs) - 1, int(len(xs) * 0.9))]
    print(f"{label:22} median {statistics.median(xs):7.2f} ms   p90 {p90:7.2f} ms   max {xs[-1]:7.2f} ms   ({len(xs)} names)")
print("target: resolvable on another host within 1000 ms of run")
PY
