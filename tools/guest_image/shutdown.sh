#!/bin/sh
# poweroff, reboot, halt and shutdown for the minicloud guest image, which
# has no systemd: they ask PID 1 (minicloud-init) by signal, SIGTERM to
# reboot and SIGUSR2 to power off. halt powers off too. Times and messages
# given to shutdown (qemu-ga runs "shutdown -P +0 MESSAGE") are ignored: it
# happens now, or rather half a second after this command returns, so that
# a caller waiting for it (qemu-ga answering libvirt) hears of its success
# before PID 1 stops every process.
action=poweroff
[ "${0##*/}" = reboot ] && action=reboot
for argument in "$@"; do
    case "$argument" in
        -r | --reboot) action=reboot ;;
        -p | -P | -h | -H | --poweroff | --halt) action=poweroff ;;
        -c) echo "shutdown: nothing to cancel" >&2; exit 0 ;;
        --help) echo "usage: ${0##*/} [-r|-P|-h] [TIME] [MESSAGE]"; exit 0 ;;
    esac
done
if [ "$(id -u)" != 0 ]; then
    echo "${0##*/}: must be root" >&2
    exit 1
fi
signal=USR2
[ "$action" = reboot ] && signal=TERM
sync
(sleep 0.5 && kill -s "$signal" 1) </dev/null >/dev/null 2>&1 &
