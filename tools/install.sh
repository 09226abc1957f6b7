#!/usr/bin/env bash
# Install everything minicloud needs on a fresh Debian 12 machine (idempotent):
# apt packages, a virtualenv with the project, running virtlogd/libvirtd, and
# the guest image. Run as root. Prints the guest image path on the last line.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(
  qemu-system-x86 qemu-utils libvirt-daemon-system libvirt-dev libvirt-clients pkg-config
  debootstrap extlinux parted busybox-static cpio kmod e2fsprogs dosfstools
  qemu-guest-agent ovmf genisoimage
  iproute2 iptables dnsmasq-base
  etcd-server
)

missing=()
for pkg in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if ((${#missing[@]})); then
  echo "installing apt packages: ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q >&2
  apt-get install -y -q --no-install-recommends "${missing[@]}" >&2
fi

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv >&2
fi
stamp=.venv/.installed-$(sha256sum pyproject.toml | cut -c1-16)
if [ ! -e "$stamp" ]; then
  .venv/bin/pip install -q --upgrade pip >&2
  .venv/bin/pip install -q -e '.[dev,node]' >&2
  rm -f .venv/.installed-* && touch "$stamp"
fi

bash tools/start_libvirt.sh >&2
.venv/bin/python tools/build_guest_image.py
