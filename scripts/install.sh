#!/usr/bin/env bash
# Builds tartan and installs it as a service on this host:
#   /usr/local/bin/tartan                 the binary
#   /etc/systemd/system/tartan.service    the unit (examples/systemd)
#   /etc/default/tartan                   its settings, only if not there yet
#
#   scripts/install.sh        (as root)
#
# It does not start the service: set TARTAN_ETCD_ENDPOINTS and friends in
# /etc/default/tartan first, then `systemctl enable --now tartan`.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
need_root install
build_release
install -D -m 0755 "$tartan" /usr/local/bin/tartan
install -D -m 0644 "$tartan_root/examples/systemd/tartan.service" /etc/systemd/system/tartan.service
if [ -e /etc/default/tartan ]; then
  echo "install: keeping the existing /etc/default/tartan"
else
  install -D -m 0644 "$tartan_root/examples/systemd/tartan.env" /etc/default/tartan
fi
if [ -d /run/systemd/system ]; then systemctl daemon-reload; fi
echo "install: /usr/local/bin/tartan ($(/usr/local/bin/tartan --version)); edit /etc/default/tartan, then: systemctl enable --now tartan"
