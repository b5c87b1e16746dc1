#!/usr/bin/env bash
# The Vagrant lab's checks, run from the host after `vagrant up` (in vagrant/): outbound and inbound interception on
# the app VM (meshctl from its .deb), a proxy restart under load with no failed connection, a reboot (capture back
# and in sync), `apt-get remove meshctl` (ruleset exactly as before install) and `apt-get purge meshctl` (nothing
# left but the meshproxy user). Prints PASS/FAIL per check and a summary; exit 1 on any failure. LAB_SSH_CONFIG
# (from `vagrant ssh-config`) makes each remote command a plain ssh (much faster).
set -uo pipefail
cd "$(dirname "$0")"
net=${LAB_NET:-192.168.77}
app_ip=$net.10 peer_ip=$net.20
pass=0 fail=0
results=()

on() { # on VM COMMAND...
  local vm=$1; shift
  if [ -n "${LAB_SSH_CONFIG:-}" ]; then ssh -F "$LAB_SSH_CONFIG" -o LogLevel=ERROR "$vm" -- "$*"
  else vagrant ssh "$vm" -c "$*" -- -o LogLevel=ERROR; fi
}
check() { # check NAME CONDITION-RESULT DETAIL
  if [ "$2" = 0 ]; then pass=$((pass + 1)); results+=("PASS  $1"); echo "PASS  $1"
  else fail=$((fail + 1)); results+=("FAIL  $1: $3"); echo "FAIL  $1: $3"; fi
}
outbound_accepted() { on app "curl -s http://127.0.0.1:15000/stats 2>/dev/null || node -e \"fetch('http://127.0.0.1:15000/stats').then(r=>r.text()).then(t=>process.stdout.write(t))\"" | node -e 'let s="";process.stdin.on("data",d=>s+=d).on("end",()=>{const j=JSON.parse(s);console.log(j.connections.accepted.outbound)})'; }

echo "== meshctl Vagrant lab: app $app_ip, peer $peer_ip"
status=$(on app 'sudo meshctl service status'); rc=$?
echo "$status" | sed 's/^/   /'
check "app: meshctl service status says PROTECTED after provisioning" $rc "exit $rc"

# Outbound: the app's client calls the peer; the proxy's counters and access log show the original destination.
before=$(outbound_accepted)
greeting=$(on app "lab-client $peer_ip 9000"); rc=$?
after=$(outbound_accepted)
journal=$(on app "sudo journalctl -u meshctl-proxy -o cat --no-pager | grep -c '\"originalDst\":\"$peer_ip:9000\"'")
[ $rc = 0 ] && [ "$greeting" = "peer saw $app_ip" ] && [ "$((after - before))" = 1 ] && [ "${journal:-0}" -ge 1 ]
check "outbound: app → peer:9000 goes through the proxy (original destination $peer_ip:9000 in the access log)" $? "greeting '$greeting', accepted $before→$after, log lines ${journal:-0}"

before=$(outbound_accepted)
greeting=$(on app "lab-client $peer_ip 9999"); rc=$?
after=$(outbound_accepted)
[ $rc = 0 ] && [ "$greeting" = "unmanaged saw $app_ip" ] && [ "$after" = "$before" ]
check "outbound: app → peer:9999 (excludePorts) goes direct" $? "greeting '$greeting', accepted $before→$after"

# Inbound: the peer calls the app's server; the app sees the proxy's passthrough source 127.0.0.6.
greeting=$(on peer "lab-client $app_ip 8080"); rc=$?
[ $rc = 0 ] && [ "$greeting" = "app saw 127.0.0.6" ]
check "inbound: peer → app:8080 goes through the proxy (the app sees 127.0.0.6)" $? "greeting '$greeting'"

# Proxy restart under load: a connection loop from the peer while systemd restarts the proxy.
on peer 'rm -f /tmp/lab-stop; (lab-client '"$app_ip"' 8080 loop /tmp/lab-stop > /tmp/lab-loop.json 2>&1 &)'
sleep 2
on app 'sudo systemctl restart meshctl-proxy'; rc_restart=$?
sleep 2
on peer 'touch /tmp/lab-stop'
sleep 1
loop=$(on peer 'for i in $(seq 1 50); do [ -s /tmp/lab-loop.json ] && break; sleep 0.2; done; cat /tmp/lab-loop.json')
echo "   loop during restart: $loop"
echo "$loop" | grep -q '"failed":0' && ! echo "$loop" | grep -q '"ok":0,' && [ $rc_restart = 0 ]
check "restart: systemctl restart meshctl-proxy under a connection loop, zero failed connections" $? "$loop"

# Reboot: capture comes back and is in sync.
on app 'sudo systemctl reboot' >/dev/null 2>&1
sleep 5
for i in $(seq 1 180); do on app true >/dev/null 2>&1 && break; sleep 2; done
for i in $(seq 1 60); do on app 'systemctl is-active meshctl-capture' 2>/dev/null | grep -qx active && break; sleep 2; done
status=$(on app 'sudo meshctl service status'); rc=$?
insync=$(on app 'sudo meshctl status --config /etc/meshctl/config.yaml'); rc2=$?
greeting=$(on peer "lab-client $app_ip 8080")
[ $rc = 0 ] && [ $rc2 = 0 ] && [ "$greeting" = "app saw 127.0.0.6" ]
check "reboot: after a reboot of the app VM capture is back, in sync, and intercepting" $? "service status exit $rc, status exit $rc2, greeting '$greeting'"

# Removal: the package's prerm stops capture (the ledger's rules go), then the proxy; ruleset exactly as before install.
out=$(on app 'sudo DEBIAN_FRONTEND=noninteractive apt-get remove -y meshctl'); rc=$?
diff=$(on app "{ sudo iptables-save; sudo ip6tables-save; } | grep -v '^#' | sed 's/ \\[[0-9]*:[0-9]*\\]\$//' | diff /var/lib/lab/rules-before.txt - && echo SAME")
units=$(on app 'systemctl list-unit-files "meshctl*" --no-legend | wc -l')
greeting=$(on peer "lab-client $app_ip 8080")
[ $rc = 0 ] && [ "$(echo "$diff" | tail -n1)" = SAME ] && [ "$units" = 0 ] && [ "$greeting" = "app saw $peer_ip" ]
check "remove: apt-get remove meshctl leaves the ruleset exactly as before install, no units, traffic direct" $? "exit $rc, diff: $diff, units $units, greeting '$greeting'"

# Purge: the config and the state go; the meshproxy user stays (Debian policy).
on app 'sudo DEBIAN_FRONTEND=noninteractive apt-get purge -y meshctl' >/dev/null; rc=$?
left=$(on app 'sudo find /etc /usr /var /run -xdev -name "*meshctl*" | head -n 5')
user=$(on app 'getent passwd meshproxy | cut -d: -f1')
[ $rc = 0 ] && [ -z "$left" ] && [ "$user" = meshproxy ]
check "purge: apt-get purge meshctl leaves no meshctl file or state, only the meshproxy user" $? "exit $rc, left: $left, user '$user'"

echo "== summary"
printf '%s\n' "${results[@]}"
echo "$pass passed, $fail failed"
[ "$fail" = 0 ]
