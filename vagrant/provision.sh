#!/bin/sh
# Provisions one lab VM from the synced meshctl tree at /opt/meshctl.
#   provision.sh app  APP_IP PEER_IP   meshctl as a systemd service, a server app on :8080, the client
#   provision.sh peer APP_IP PEER_IP   servers on :9000 and :9999, the client
set -eu
role=$1 app_ip=$2 peer_ip=$3
tree=/opt/meshctl

# Node >= 20: the box's (the offline lab box has it in /usr/local/bin), else Debian's when new enough.
node_ok() { command -v node >/dev/null 2>&1 && [ "$(node -p 'process.versions.node.split(".")[0]')" -ge 20 ]; }
if ! node_ok; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs >/dev/null
  node_ok || { echo "provision: meshctl needs Node.js >= 20; this box has $(node --version 2>/dev/null || echo none). Use a box with Node 20 (Debian trixie) or install it first." >&2; exit 1; }
fi
for tool in iptables ip; do command -v $tool >/dev/null || { DEBIAN_FRONTEND=noninteractive apt-get install -y -qq iptables iproute2 >/dev/null; break; }; done

install -d /opt/lab
install -m 0755 "$tree/vagrant/lab-apps.mjs" /opt/lab/lab-apps.mjs
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
  "$tree/bin/meshctl" service install --config "$tree/vagrant/app-config.yaml"
  "$tree/bin/meshctl" service status
else
  server_unit peer 9000
  server_unit unmanaged 9999
  systemctl daemon-reload
  systemctl enable --now lab-peer.service lab-unmanaged.service
fi
echo "provision: $role ready (app $app_ip, peer $peer_ip)"
