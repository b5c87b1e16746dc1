#!/bin/sh
# Provisions one lab VM from the synced packages (/opt/meshctl-deb: meshctl_*.deb) and lab files (/opt/meshctl-lab).
#   provision.sh app  APP_IP PEER_IP   meshctl from its .deb, run as a systemd service; a server app on :8080; the client
#   provision.sh peer APP_IP PEER_IP   servers on :9000 and :9999, the client
set -eu
role=$1 app_ip=$2 peer_ip=$3
debs=/opt/meshctl-deb
lab=/opt/meshctl-lab
export DEBIAN_FRONTEND=noninteractive

# node for the lab's own apps (any version: they use only node:net); meshctl brings its own runtime.
if ! command -v node >/dev/null 2>&1; then
  apt-get update -qq && apt-get install -y -qq nodejs >/dev/null
fi

install -d /opt/lab
install -m 0755 "$lab/lab-apps.mjs" /opt/lab/lab-apps.mjs
cat > /usr/local/bin/lab-client <<'SH'
#!/bin/sh
# lab-client HOST PORT [loop STOPFILE]: one connection (prints the server's greeting), or a loop (prints a JSON summary)
exec node /opt/lab/lab-apps.mjs client "$@"
SH
chmod 0755 /usr/local/bin/lab-client

server_unit() { # name port
  cat > "/etc/systemd/system/lab-$1.service" <<UNIT
[Unit]
Description=meshctl lab: $1 server on :$2
After=network.target
[Service]
DynamicUser=yes
ExecStart=/usr/bin/env node /opt/lab/lab-apps.mjs server $1 $2
Restart=always
[Install]
WantedBy=multi-user.target
UNIT
}

if [ "$role" = app ]; then
  server_unit app 8080
  # This provisioning SSH session predates the capture rules; meshctl's skip-midstream rule keeps it alive.
  systemctl daemon-reload
  systemctl enable --now lab-app.service
  # The ruleset before meshctl, for the uninstall check.
  install -d /var/lib/lab
  { iptables-save; ip6tables-save; } | grep -v '^#' | sed 's/ \[[0-9]*:[0-9]*\]$//' > /var/lib/lab/rules-before.txt
  # The newest package (versions in sort -V order); apt brings any dependency the box lacks.
  deb=$(for f in "$debs"/meshctl_*.deb; do [ -f "$f" ] && printf '%s %s\n' "$(dpkg-deb -f "$f" Version)" "$f"; done |
    sort -k1,1V | tail -n1 | cut -d' ' -f2-)
  [ -n "$deb" ] || { echo "provision: no meshctl_*.deb in LAB_DEB_DIR (synced to $debs): run npm run package first" >&2; exit 1; }
  apt-get install -y -qq "$deb" >/dev/null
  # The package's conffile takes the lab's config; `service install` then starts the packaged units.
  install -m 0644 "$lab/app-config.yaml" /etc/meshctl/config.yaml
  meshctl service install
  meshctl service status
else
  server_unit peer 9000
  server_unit unmanaged 9999
  systemctl daemon-reload
  systemctl enable --now lab-peer.service lab-unmanaged.service
fi
echo "provision: $role ready (app $app_ip, peer $peer_ip)"
