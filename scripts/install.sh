#!/usr/bin/env bash
# Builds tartan and installs it as a service on this host:
#   /usr/local/bin/tartan                     the binary
#   /etc/systemd/system/tartan.service        the unit (examples/systemd)
#   /etc/default/tartan                       its settings (mode 0600: it may
#                                             hold the etcd password), only
#                                             if not there yet
#   /usr/local/share/doc/tartan/README.md     the unit's Documentation=
#
#   scripts/install.sh        (as root)
#
# DESTDIR=DIR installs under DIR instead of /, and TARTAN_BIN=FILE installs
# that binary instead of building one (both for packaging and tests).
#
# It does not start the service: set TARTAN_ETCD_ENDPOINTS and friends in
# /etc/default/tartan first, then `systemctl enable --now tartan`.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
need_root install
root=${DESTDIR:-}
if [ -n "${TARTAN_BIN:-}" ]; then
  tartan=$TARTAN_BIN
else
  build_release
fi
install -D -m 0755 "$tartan" "$root/usr/local/bin/tartan"
install -D -m 0644 "$tartan_root/examples/systemd/tartan.service" "$root/etc/systemd/system/tartan.service"
install -D -m 0644 "$tartan_root/README.md" "$root/usr/local/share/doc/tartan/README.md"
env_file=$root/etc/default/tartan
if [ -e "$env_file" ]; then
  echo "install: keeping the existing /etc/default/tartan"
  # A password readable by others is a leak; an older install made it 0644.
  if grep -Eq '^[[:space:]]*(TARTAN_ETCD_PASSWORD|FLANNELD_ETCD_PASSWORD)=' "$env_file" &&
    [ "$(stat -c %a "$env_file")" != 600 ]; then
    chmod 0600 "$env_file"
    echo "install: /etc/default/tartan holds the etcd password: made it 0600"
  fi
else
  install -D -m 0600 "$tartan_root/examples/systemd/tartan.env" "$env_file"
fi
if [ -z "$root" ] && [ -d /run/systemd/system ]; then systemctl daemon-reload; fi
echo "install: $root/usr/local/bin/tartan ($("$root/usr/local/bin/tartan" --version)); edit /etc/default/tartan, then: systemctl enable --now tartan"
