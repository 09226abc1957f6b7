#!/usr/bin/env bash
# Start virtlogd and libvirtd if they are not running (there is no systemd here).
# When KVM is unusable (no vmx/svm flag), libvirtd runs in a private mount
# namespace where /dev/kvm is an inaccessible device node; otherwise it re-probes QEMU
# on every define (tens of seconds each), because its capability cache says
# "no KVM" while /dev/kvm looks usable.
set -euo pipefail

if virsh -c qemu:///system version >/dev/null 2>&1; then
  exit 0
fi
mkdir -p /run/libvirt
pgrep -x virtlogd >/dev/null || virtlogd -d
if [ -e /dev/kvm ] && ! grep -qE 'vmx|svm' /proc/cpuinfo; then
  # A device node QEMU's user cannot open, with a stable ctime (binding
  # /dev/null instead makes libvirt re-probe, as every guest start touches it).
  [ -c /run/minicloud-no-kvm ] || mknod -m 000 /run/minicloud-no-kvm c 1 3
  unshare -m --propagation private \
    sh -c 'mount --bind /run/minicloud-no-kvm /dev/kvm && exec libvirtd -d'
else
  libvirtd -d
fi
for _ in $(seq 1 50); do
  virsh -c qemu:///system version >/dev/null 2>&1 && exit 0
  sleep 0.2
done
echo "libvirtd did not come up" >&2
exit 1
