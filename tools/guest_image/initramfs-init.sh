#!/bin/busybox sh
# /init of the minicloud guest initramfs (busybox-static only).
#
# Loads the kernel modules listed in /lib/modules/load-order (dependencies
# first, as written by build_guest_image.py), finds the root filesystem
# (root= from the kernel command line, LABEL=/UUID= resolved with findfs,
# then /dev/vda1, /dev/sda1, /dev/nvme0n1p1, /dev/xvda1 in turn), moves
# /dev, /proc and /sys onto it and switch_roots to its init.
# Kernel command line: root=, init= (default /usr/sbin/minicloud-init),
# minicloud.shell (a shell here, before switch_root, for debugging).

/bin/busybox mkdir -p /bin /proc /sys /dev /newroot
/bin/busybox --install -s /bin
export PATH=/bin

mount -t devtmpfs devtmpfs /dev
exec </dev/console >/dev/console 2>&1
mount -t proc proc /proc
mount -t sysfs sysfs /sys

log() { echo "minicloud-initramfs: $*"; }

while read -r module; do
    case "$module" in '' | '#'*) continue ;; esac
    insmod "/lib/modules/$module" || log "could not load $module"
done </lib/modules/load-order

root=
init=/usr/sbin/minicloud-init
debug_shell=
for arg in $(cat /proc/cmdline); do
    case "$arg" in
        root=*) root="${arg#root=}" ;;
        init=*) init="${arg#init=}" ;;
        minicloud.shell) debug_shell=1 ;;
    esac
done

resolve() {
    case "$1" in
        LABEL=* | UUID=*) findfs "$1" 2>/dev/null ;;
        *) echo "$1" ;;
    esac
}

# mount_root CANDIDATE...: mount the first candidate block device that holds
# an ext4 filesystem on /newroot.
mount_root() {
    for candidate in "$@"; do
        [ -b "$candidate" ] || continue
        if mount -t ext4 -o rw "$candidate" /newroot 2>/dev/null; then
            log "root filesystem is $candidate"
            return 0
        fi
    done
    return 1
}

# The named root alone for about 3 s, then the usual first partitions too.
tries=0
until mount_root "$(resolve "$root")" ${tries_fallback:+/dev/vda1 /dev/sda1 /dev/nvme0n1p1 /dev/xvda1}; do
    tries=$((tries + 1))
    [ "$tries" -ge 30 ] && tries_fallback=1
    if [ "$tries" -ge 150 ]; then
        log "no root filesystem found (root=$root); starting a shell"
        exec sh
    fi
    sleep 0.1
done

if [ -n "$debug_shell" ]; then
    log "minicloud.shell given: exit this shell to continue booting"
    sh
fi

if [ ! -e "/newroot$init" ] && [ ! -L "/newroot$init" ]; then
    log "$init is missing on the root filesystem; trying /sbin/init"
    init=/sbin/init
fi

mount -o move /dev /newroot/dev
mount -o move /proc /newroot/proc
mount -o move /sys /newroot/sys
exec switch_root /newroot "$init"
