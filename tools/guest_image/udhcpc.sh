#!/bin/sh
# busybox udhcpc event script: give the interface exactly what the DHCP server leased.
case "$1" in
    deconfig)
        ip link set "$interface" up
        ip -4 addr flush dev "$interface"
        ;;
    bound|renew)
        [ "$1" = bound ] && ip -4 addr flush dev "$interface"
        [ -n "$mtu" ] && ip link set "$interface" mtu "$mtu"
        ip addr replace "$ip/${mask:-$subnet}" dev "$interface"
        for gateway in $router; do
            # The first interface with a router keeps the default route.
            ip route add default via "$gateway" dev "$interface" 2>/dev/null
            break
        done
        if [ -n "$dns" ] && [ ! -s /etc/resolv.conf ]; then
            for server in $dns; do echo "nameserver $server"; done > /etc/resolv.conf
        fi
        ;;
esac
exit 0
