#!/usr/bin/env bash
# npm run lab:vagrant — the Vagrant lab end to end on this kind of machine (no KVM, no internet; LABS.md §3):
# installs vagrant + vagrant-libvirt + libvirt + qemu (Debian packages) when missing, builds an offline bookworm box
# (cached under $MESHCTL_TEST_CACHE), starts libvirtd by hand inside its own network namespace with /dev/kvm
# hidden (TCG), builds the Debian package (scripts/package-deb.sh) that provisioning installs, runs the shipped
# vagrant/Vagrantfile with LAB_* overrides, runs vagrant/lab-test.sh, and tears everything down (VMs, box, pool,
# daemons, namespace), also on failure. Needs root and an installed tree (npm ci: the package build uses its tools).
# The root network namespace is never touched: libvirt's bridges, dnsmasq and NAT rules live in the lab namespace.
set -euo pipefail
started=$(date +%s)
repo=$(cd "$(dirname "$0")/.." && pwd)
cache=${MESHCTL_TEST_CACHE:-/var/cache/meshctl-test}
ns=ms-virt
prefix=ms-lab-
pool=ms-lab-pool
mgmt=ms-lab-mgmt
private=ms-lab-private
export LAB_NET=${LAB_NET:-192.168.77}
log() { printf '[lab:vagrant %4ss] %s\n' "$(( $(date +%s) - started ))" "$*"; }

[ "$(id -u)" = 0 ] || { echo "lab:vagrant needs root (libvirtd, network namespaces): sudo npm run lab:vagrant" >&2; exit 1; }
[ -d "$repo/node_modules/typescript" ] || { echo "lab:vagrant builds the .deb from this checkout: run npm ci first" >&2; exit 1; }

packages=(vagrant vagrant-libvirt libvirt-daemon-system libvirt-daemon-driver-qemu dnsmasq-base qemu-system-x86 qemu-utils debootstrap zstd openssh-client rsync)
missing=()
for p in "${packages[@]}"; do dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p"); done
if [ "${#missing[@]}" -gt 0 ]; then
  log "installing ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# ---- the box: bookworm with a kernel, systemd-networkd (DHCP), sshd, the vagrant user and this host's node -------
vagrant_pub=$(ls /usr/share/rubygems-integration/all/gems/vagrant-*/keys/vagrant.pub | head -n1)
node_version=$(node --version)
box_key=$(printf '%s %s %s' bookworm-lab-box-v3 "$node_version" "$(sha256sum < "$vagrant_pub")" | sha256sum | cut -c1-12)
boxdir="$cache/vagrant-box-$box_key"
if [ ! -s "$boxdir/lab.box" ]; then
  log "building the offline box in $boxdir (debootstrap with a kernel: about 2 minutes)"
  mirror=$(awk '/^URIs:/ && !/security/ {print $2; exit}' /etc/apt/sources.list.d/*.sources 2>/dev/null || true)
  [ -n "$mirror" ] || mirror=$(awk '$1=="deb" && !/security/ {print $2; exit}' /etc/apt/sources.list 2>/dev/null || true)
  [ -n "$mirror" ] || mirror=http://deb.debian.org/debian
  build=$(mktemp -d /var/tmp/ms-box-build.XXXXXX)
  trap 'rm -rf "$build"' EXIT
  root="$build/root"
  debootstrap --variant=minbase \
    --include=systemd,systemd-sysv,dbus,iptables,iproute2,nftables,procps,udev,kmod,initramfs-tools,linux-image-amd64,openssh-server,sudo,rsync,ca-certificates \
    bookworm "$root" "$mirror" > "$build/debootstrap.log" 2>&1 || { tail -n 30 "$build/debootstrap.log"; exit 1; }
  chroot "$root" useradd -m -s /bin/bash vagrant
  install -d -m 0700 -o 1000 -g 1000 "$root/home/vagrant/.ssh"
  install -m 0600 -o 1000 -g 1000 "$vagrant_pub" "$root/home/vagrant/.ssh/authorized_keys"
  echo 'vagrant ALL=(ALL) NOPASSWD: ALL' > "$root/etc/sudoers.d/vagrant"; chmod 0440 "$root/etc/sudoers.d/vagrant"
  printf 'UseDNS no\n' > "$root/etc/ssh/sshd_config.d/lab.conf"
  # 99-: the .network files vagrant writes for the private network (50-vagrant-*) must win for eth1 and up.
  printf '[Match]\nName=en* eth*\n\n[Network]\nDHCP=ipv4\n' > "$root/etc/systemd/network/99-dhcp.network"
  chroot "$root" systemctl enable systemd-networkd.service >/dev/null 2>&1
  # Without its hostname in /etc/hosts every sudo waits on DNS (30 s and more under TCG).
  echo meshctl-lab > "$root/etc/hostname"
  printf '127.0.0.1 localhost\n127.0.1.1 meshctl-lab\n' > "$root/etc/hosts"
  printf '/dev/vda / ext4 defaults 0 1\n' > "$root/etc/fstab"
  install -m 0755 "$(command -v node)" "$root/usr/local/bin/node"
  # Every VM must get its own machine id (and so its own DHCP DUID): an empty /etc/machine-id, and D-Bus's copy
  # pointing at it (a shared /var/lib/dbus/machine-id gives both VMs one DUID, and the second one no lease).
  rm -f "$root/etc/machine-id" "$root/var/lib/dbus/machine-id"; : > "$root/etc/machine-id"
  ln -s /etc/machine-id "$root/var/lib/dbus/machine-id"
  cp "$root"/boot/vmlinuz-* "$build/vmlinuz"; cp "$root"/boot/initrd.img-* "$build/initrd.img"
  mkfs.ext4 -q -F -L labroot -d "$root" "$build/box.raw" 4G
  qemu-img convert -O qcow2 "$build/box.raw" "$build/box.img"
  printf '{"provider":"libvirt","format":"qcow2","virtual_size":4}\n' > "$build/metadata.json"
  printf 'Vagrant.configure("2") do |config|\n  config.vm.provider :libvirt do |lv|\n    lv.driver = "qemu"\n  end\nend\n' > "$build/Vagrantfile"
  tar -C "$build" -cf "$build/lab.box" metadata.json Vagrantfile box.img   # uncompressed: gzip costs ~30 s
  mkdir -p "$boxdir"
  mv "$build/vmlinuz" "$build/initrd.img" "$boxdir/"
  mv "$build/lab.box" "$boxdir/lab.box"
  rm -rf "$build"; trap - EXIT
  log "box built"
fi

# ---- libvirt in its own namespace; everything below is undone by cleanup() ----------------------------------------
scratch=$(mktemp -d /var/tmp/ms-vagrant.XXXXXX)
chmod 0755 "$scratch"
mkdir -p "$scratch/pool" "$scratch/serial" "$scratch/home" "$scratch/dot"
chmod 0777 "$scratch/serial"
cp "$boxdir/vmlinuz" "$boxdir/initrd.img" "$scratch/"; chmod 0644 "$scratch/vmlinuz" "$scratch/initrd.img"
export VAGRANT_HOME="$scratch/home" VAGRANT_DOTFILE_PATH="$scratch/dot" VAGRANT_CHECKPOINT_DISABLE=1 VAGRANT_BOX_UPDATE_CHECK_DISABLE=1
export VAGRANT_DEFAULT_PROVIDER=libvirt LAB_BOX=meshctl-lab/bookworm LAB_DRIVER=qemu LAB_KERNEL="$scratch/vmlinuz" LAB_INITRD="$scratch/initrd.img"
export LAB_CMDLINE='root=/dev/vda rw console=ttyS0 net.ifnames=0' LAB_POOL=$pool LAB_MGMT_NETWORK=$mgmt LAB_PRIVATE_NETWORK=$private LAB_PREFIX=$prefix LAB_SERIAL_DIR="$scratch/serial"
export LAB_MEMORY=${LAB_MEMORY:-768}
IN() { ip netns exec "$ns" "$@"; }
V() { (cd "$repo/vagrant" && IN vagrant "$@"); }

child=
killtree() { # a process and its descendants, children first (vagrant runs under a subshell and ip netns exec)
  local c
  for c in $(pgrep -P "$1"); do killtree "$c"; done
  kill "$1" 2>/dev/null
}
cleanup() {
  local rc=$?
  set +e
  trap - EXIT INT TERM
  log "cleaning up"
  [ -n "$child" ] && killtree "$child" && wait "$child" 2>/dev/null
  V destroy -f >/dev/null 2>&1
  V box remove -f meshctl-lab/bookworm >/dev/null 2>&1
  # Domains vagrant could not destroy (a failed up loses its state): libvirt keeps their definitions in /etc/libvirt.
  for dom in $(IN virsh -q list --all --name 2>/dev/null | grep "^$prefix"); do
    IN virsh -q destroy "$dom" >/dev/null 2>&1; IN virsh -q undefine "$dom" --nvram >/dev/null 2>&1 || IN virsh -q undefine "$dom" >/dev/null 2>&1
  done
  for vol in $(IN virsh -q vol-list "$pool" 2>/dev/null | awk '{print $1}'); do IN virsh -q vol-delete --pool "$pool" "$vol" >/dev/null 2>&1; done
  for net in $(IN virsh -q net-list --all --name 2>/dev/null); do
    case "$net" in "$mgmt"|"$private") IN virsh -q net-destroy "$net" >/dev/null 2>&1; IN virsh -q net-undefine "$net" >/dev/null 2>&1;; esac
  done
  IN virsh -q pool-destroy "$pool" >/dev/null 2>&1; IN virsh -q pool-undefine "$pool" >/dev/null 2>&1
  for pidfile in "$scratch/libvirtd.pid" "$scratch/virtlogd.pid"; do
    [ -s "$pidfile" ] && kill "$(cat "$pidfile")" 2>/dev/null
  done
  sleep 1
  for pid in $(ip netns pids "$ns" 2>/dev/null); do kill -9 "$pid" 2>/dev/null; done
  ip netns del "$ns" 2>/dev/null
  rm -rf /run/libvirt/network/"$mgmt"* /run/libvirt/network/"$private"*   # state our libvirtd kept for its networks
  rm -rf "$scratch"
  log "done in $(( $(date +%s) - started )) s"
  exit $rc
}
trap cleanup EXIT INT TERM

# The app VM installs meshctl from this .deb (gzip: xz would cost a minute more here, for nothing).
log "building the meshctl .deb"
mkdir -p "$scratch/deb"
bash "$repo/scripts/package-deb.sh" --out "$scratch/deb" --compression gzip --no-lintian >/dev/null
export LAB_DEB_DIR="$scratch/deb"

ip netns del "$ns" 2>/dev/null || true
ip netns add "$ns"
ip -n "$ns" link set lo up
log "starting virtlogd and libvirtd in namespace $ns (/dev/kvm hidden: TCG)"
IN virtlogd -d -p "$scratch/virtlogd.pid"
IN unshare -m sh -c "mount --bind /dev/null /dev/kvm 2>/dev/null; exec libvirtd -d -p '$scratch/libvirtd.pid'"
for i in $(seq 1 100); do IN virsh -q uri >/dev/null 2>&1 && break; sleep 0.2; done
IN virsh -q pool-define-as "$pool" dir --target "$scratch/pool" >/dev/null
IN virsh -q pool-start "$pool" >/dev/null
log "adding the box"
V box add --name meshctl-lab/bookworm "$boxdir/lab.box" >/dev/null

log "vagrant up (two VMs under TCG, provisioning runs meshctl service install on app)"
up_start=$(date +%s)
# In the background + wait, so Ctrl-C runs cleanup at once instead of after vagrant finishes.
V up --provider=libvirt > "$scratch/up.log" 2>&1 &
child=$!
if ! wait "$child"; then
  child=
  tr '\r' '\n' < "$scratch/up.log" | grep -v -e 'Progress:' -e '^/usr/share/rubygems' | tail -n 60
  for f in "$scratch"/serial/*.log; do [ -f "$f" ] && { echo "--- $f"; tail -n 30 "$f"; }; done
  exit 1
fi
child=
grep -E '^\s*(app|peer): (provision:|meshctl)' "$scratch/up.log" | sed 's/^/   /' || true
log "vagrant up done in $(( $(date +%s) - up_start )) s"

V ssh-config > "$scratch/ssh-config"
log "running vagrant/lab-test.sh"
test_start=$(date +%s)
set +e
child=
LAB_SSH_CONFIG="$scratch/ssh-config" IN "$repo/vagrant/lab-test.sh" &
child=$!
wait "$child"
rc=$?
child=
set -e
log "lab-test.sh finished in $(( $(date +%s) - test_start )) s: $([ $rc = 0 ] && echo PASS || echo FAIL)"
exit $rc
