#!/usr/bin/env bash
# Prints the path of a cached Debian bookworm rootfs tarball (tar + zstd) for the systemd-nspawn system tests,
# building it with debootstrap when absent: minbase plus systemd as PID 1, iptables/nft and iproute2. The node
# binary and the meshctl tree are not in it: tests bind-mount the host's (same bookworm libc).
# Cache: $MESHCTL_TEST_CACHE (default /var/cache/meshctl-test), keyed by suite and package list; about 110 MB.
# Needs root, debootstrap and zstd (.ci/run installs them). Progress goes to stderr, the path to stdout.
set -euo pipefail

suite=bookworm
packages=systemd,systemd-sysv,dbus,iptables,iproute2,nftables,procps,libcap2-bin
cache=${MESHCTL_TEST_CACHE:-/var/cache/meshctl-test}
key=$(printf '%s %s' "$suite" "$packages" | sha256sum | cut -c1-12)
tarball="$cache/rootfs-$suite-$key.tar.zst"

if [ -s "$tarball" ]; then
  echo "$tarball"
  exit 0
fi

mirror=${MESHCTL_DEBIAN_MIRROR:-}
if [ -z "$mirror" ]; then
  mirror=$(awk '/^URIs:/ && !/security/ {print $2; exit}' /etc/apt/sources.list.d/*.sources 2>/dev/null || true)
  [ -n "$mirror" ] || mirror=$(awk '$1=="deb" && !/security/ {print $2; exit}' /etc/apt/sources.list 2>/dev/null || true)
  [ -n "$mirror" ] || mirror=http://deb.debian.org/debian
fi

mkdir -p "$cache"
# Test files run in parallel and several boot a container: one builds, the others wait for its tarball.
exec 9>"$cache/.build.lock"
flock 9
if [ -s "$tarball" ]; then
  echo "$tarball"
  exit 0
fi
work=$(mktemp -d "$cache/build.XXXXXX")
trap 'rm -rf "$work"' EXIT
start=$(date +%s)
echo "nspawn-rootfs: debootstrap $suite ($packages) from $mirror into $work/root" >&2
debootstrap --variant=minbase --include="$packages" "$suite" "$work/root" "$mirror" >"$work/debootstrap.log" 2>&1 || {
  tail -n 30 "$work/debootstrap.log" >&2
  echo "nspawn-rootfs: debootstrap failed (log above)" >&2
  exit 1
}
# The container's console stays quiet and its boot short: no getty, no apt timers.
for unit in console-getty.service getty@.service apt-daily.timer apt-daily-upgrade.timer; do
  ln -sf /dev/null "$work/root/etc/systemd/system/$unit"
done
rm -f "$work/root/etc/machine-id" && : >"$work/root/etc/machine-id"
tar -C "$work/root" --numeric-owner -cf - . | zstd -q -T0 -3 -o "$work/rootfs.tar.zst"
mv "$work/rootfs.tar.zst" "$tarball"
echo "nspawn-rootfs: built $tarball in $(( $(date +%s) - start )) s" >&2
echo "$tarball"
