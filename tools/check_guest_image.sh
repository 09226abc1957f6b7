#!/usr/bin/env bash
# Boot-check the minicloud guest image under TCG software emulation.
#
#   tools/check_guest_image.sh [IMAGE.qcow2]
#
# IMAGE defaults to the one tools/build_guest_image.py prints (built when not
# cached). Checks, each on a fresh qcow2 overlay:
#   1. plain QEMU (-accel tcg -m 512): "minicloud-guest: boot complete"
#      appears on the serial console; prints the seconds it took;
#   2. libvirt (domain type='qemu', serial console to a file, a qemu-ga
#      channel): the banner appears, qemu-ga answers guest-ping,
#      "virsh reboot --mode acpi" boots it again (banner twice),
#      "virsh shutdown --mode acpi" powers it off, and after a restart
#      "virsh shutdown --mode agent" powers it off too.
# Skips the libvirt part (with a note) when virsh cannot reach
# qemu:///system. Needs root. Exit status 0 when every check ran passed.
set -euo pipefail

BANNER="minicloud-guest: boot complete"
TIMEOUT=${CHECK_TIMEOUT:-120}
repo=$(cd "$(dirname "$0")/.." && pwd)
image=${1:-$(python3 "$repo/tools/build_guest_image.py")}
work=$(mktemp -d /var/tmp/minicloud-check.XXXXXX)
chmod 755 "$work" # QEMU under libvirt runs as another user
domain="minicloud-check-$$"
qemu_pid=
virsh=(virsh -q -c qemu:///system)
failures=0

cleanup() {
    if [ -n "$qemu_pid" ]; then kill "$qemu_pid" 2>/dev/null || true; fi
    if "${virsh[@]}" dominfo "$domain" >/dev/null 2>&1; then
        "${virsh[@]}" destroy "$domain" >/dev/null 2>&1 || true
        "${virsh[@]}" undefine "$domain" >/dev/null 2>&1 || true
    fi
    rm -rf "$work"
}
trap cleanup EXIT

now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }
pass() { echo "PASS: $*"; }
fail() {
    echo "FAIL: $*"
    failures=$((failures + 1))
}
banners() {
    local count
    count=$(grep -c "$BANNER" "$1" 2>/dev/null) || true
    echo "${count:-0}"
}

# wait_banners LOG COUNT: wait until the banner appears COUNT times in LOG.
wait_banners() {
    local deadline=$((SECONDS + TIMEOUT))
    while [ "$(banners "$1")" -lt "$2" ]; do
        [ "$SECONDS" -ge "$deadline" ] && return 1
        sleep 0.1
    done
}

overlay() {
    cp --reflink=auto "$image" "$work/base.qcow2"
    qemu-img create -q -f qcow2 -F qcow2 -b "$work/base.qcow2" "$work/$1"
}

check_plain_qemu() {
    overlay plain.qcow2
    local start
    start=$(now)
    qemu-system-x86_64 -accel tcg -m 512 -display none -monitor none \
        -serial "file:$work/plain.log" \
        -drive "file=$work/plain.qcow2,if=virtio" &
    qemu_pid=$!
    if wait_banners "$work/plain.log" 1; then
        pass "QEMU/TCG: banner after $(elapsed "$start") s (QEMU start to banner)"
    else
        fail "QEMU/TCG: no banner within $TIMEOUT s"
        tail -20 "$work/plain.log" || true
    fi
    kill "$qemu_pid" 2>/dev/null || true
    wait "$qemu_pid" 2>/dev/null || true
    qemu_pid=
}

domain_xml() {
    cat <<EOF
<domain type='qemu'>
  <name>$domain</name>
  <memory unit='MiB'>512</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64'>hvm</type><boot dev='hd'/></os>
  <features><acpi/><apic/></features>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>restart</on_reboot>
  <devices>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='$work/libvirt.qcow2'/>
      <target dev='vda' bus='virtio'/>
    </disk>
    <serial type='file'>
      <source path='$work/libvirt.log' append='on'/><target port='0'/>
    </serial>
    <channel type='unix'><target type='virtio' name='org.qemu.guest_agent.0'/></channel>
    <memballoon model='none'/>
  </devices>
</domain>
EOF
}

# wait_shut_off SECONDS: wait until the domain is shut off.
wait_shut_off() {
    local deadline=$((SECONDS + $1))
    until [ "$("${virsh[@]}" domstate "$domain" 2>/dev/null)" = "shut off" ]; do
        [ "$SECONDS" -ge "$deadline" ] && return 1
        sleep 0.2
    done
}

agent_ping() {
    local deadline=$((SECONDS + 30))
    until "${virsh[@]}" qemu-agent-command --timeout 5 "$domain" \
        '{"execute":"guest-ping"}' >/dev/null 2>&1; do
        [ "$SECONDS" -ge "$deadline" ] && return 1
        sleep 0.5
    done
}

check_libvirt() {
    overlay libvirt.qcow2
    domain_xml >"$work/domain.xml"
    "${virsh[@]}" define "$work/domain.xml" >/dev/null
    local start
    start=$(now)
    "${virsh[@]}" start "$domain" >/dev/null
    if wait_banners "$work/libvirt.log" 1; then
        pass "libvirt: banner after $(elapsed "$start") s (virsh start to banner)"
    else
        fail "libvirt: no banner within $TIMEOUT s"
        return
    fi
    start=$(now)
    if agent_ping; then
        pass "libvirt: qemu-ga answered guest-ping ($(elapsed "$start") s after the banner)"
    else
        fail "libvirt: qemu-ga did not answer guest-ping"
    fi
    start=$(now)
    "${virsh[@]}" reboot --mode acpi "$domain" >/dev/null
    if wait_banners "$work/libvirt.log" 2; then
        pass "libvirt: ACPI reboot, banner again after $(elapsed "$start") s"
    else
        fail "libvirt: no second banner after an ACPI reboot"
    fi
    start=$(now)
    "${virsh[@]}" shutdown --mode acpi "$domain" >/dev/null
    if wait_shut_off 30; then
        pass "libvirt: ACPI shutdown, shut off after $(elapsed "$start") s"
    else
        fail "libvirt: still running 30 s after an ACPI shutdown"
        "${virsh[@]}" destroy "$domain" >/dev/null 2>&1 || true
    fi
    "${virsh[@]}" start "$domain" >/dev/null
    if wait_banners "$work/libvirt.log" 3 && agent_ping; then
        start=$(now)
        "${virsh[@]}" shutdown --mode agent "$domain" >/dev/null
        if wait_shut_off 30; then
            pass "libvirt: agent shutdown, shut off after $(elapsed "$start") s"
        else
            fail "libvirt: still running 30 s after an agent shutdown"
        fi
    else
        fail "libvirt: no banner or agent after a restart"
    fi
}

echo "image: $image"
check_plain_qemu
if "${virsh[@]}" version >/dev/null 2>&1; then
    check_libvirt
    if [ "$failures" -gt 0 ] && [ -f "$work/libvirt.log" ]; then
        echo "--- libvirt serial console (last lines)"
        tail -30 "$work/libvirt.log"
    fi
else
    echo "SKIP: libvirt checks (virsh cannot reach qemu:///system)"
fi
[ "$failures" -eq 0 ]
