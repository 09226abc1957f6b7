"""dnsmasq's command line and hosts files for a network, as the Linux driver renders them."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from common.nodewire.network import Lease, NetworkConfig
from nodeagent.network.linux import dhcp_hosts, dns_hosts, dnsmasq_argv
from nodeagent.network.protocol import NetworkError
from nodeagent.network.validation import check

FOLDER = Path("/var/lib/minicloud/node/networks/x")
CONFIG = NetworkConfig(
    uuid="0b8f5c1e-2f1d-4a39-9e55-6a3c0d1e2f30",
    vni=42,
    netblock="10.0.0.0/24",
    gateway="10.0.0.1",
    leases=(
        Lease("02:00:00:00:00:0A", "10.0.0.10", "web-1"),
        Lease("02:00:00:00:00:0b", "10.0.0.11", "bad_name"),
        Lease("02:00:00:00:00:0c", "10.0.0.12", "Web-1"),
        Lease("02:00:00:00:00:0d", "10.0.0.13", ""),
    ),
)
DNS = replace(CONFIG, provide_dns=True, dns_domain="team-a.minicloud")


def argv(config: NetworkConfig) -> list[str]:
    """The command line for a config."""
    return dnsmasq_argv(config, check(config), FOLDER)


def test_without_dns_dnsmasq_serves_only_dhcp() -> None:
    """A network without DNS runs dnsmasq with DNS off and hands out no DNS server."""
    args = argv(CONFIG)
    assert "--port=0" in args and "--no-resolv" in args and "--no-hosts" in args
    assert not [a for a in args if a.startswith(("--domain", "--server", "--addn-hosts"))]
    assert not [a for a in args if "dns-server" in a]
    assert f"--dhcp-hostsfile={FOLDER / 'dhcp-hosts'}" in args


def test_with_dns_the_domain_is_local_and_dhcp_hands_out_the_gateway() -> None:
    """With DNS, dnsmasq answers the network's domain from dns-hosts and is the DHCP DNS server."""
    args = argv(DNS)
    assert "--port=0" not in args
    assert "--domain=team-a.minicloud" in args and "--local=/team-a.minicloud/" in args
    assert "--no-resolv" in args and "--domain-needed" in args and "--bogus-priv" in args
    assert f"--addn-hosts={FOLDER / 'dns-hosts'}" in args
    assert "--dhcp-option=option:dns-server,10.0.0.1" in args


def test_nothing_is_forwarded_unless_upstream_servers_are_configured() -> None:
    """No --server without upstreams; one per upstream server when there are some."""
    assert not [a for a in argv(DNS) if a.startswith("--server")]
    upstream = replace(DNS, dns_upstream=("192.0.2.53", "2001:db8::53"))
    assert [a for a in argv(upstream) if a.startswith("--server")] == [
        "--server=192.0.2.53",
        "--server=2001:db8::53",
    ]


def test_dns_without_dhcp_runs_no_dhcp_server() -> None:
    """A network with DNS and no DHCP gets a DNS-only dnsmasq."""
    args = argv(replace(DNS, provide_dhcp=False))
    assert "--domain=team-a.minicloud" in args
    assert not [a for a in args if a.startswith("--dhcp")]


def test_dhcp_hosts_holds_each_lease_with_its_valid_hostname() -> None:
    """One mac,ip[,hostname] line per lease; MACs lower-cased, invalid hostnames left out."""
    assert dhcp_hosts(CONFIG) == (
        "02:00:00:00:00:0a,10.0.0.10,web-1\n"
        "02:00:00:00:00:0b,10.0.0.11\n"
        "02:00:00:00:00:0c,10.0.0.12,Web-1\n"
        "02:00:00:00:00:0d,10.0.0.13\n"
    )


def test_with_dns_names_are_left_out_of_dhcp_hosts() -> None:
    """With DNS, dhcp-hosts has no names (dnsmasq would keep serving a lease's name)."""
    assert dhcp_hosts(DNS) == (
        "02:00:00:00:00:0a,10.0.0.10\n"
        "02:00:00:00:00:0b,10.0.0.11\n"
        "02:00:00:00:00:0c,10.0.0.12\n"
        "02:00:00:00:00:0d,10.0.0.13\n"
    )
    assert "--dhcp-ignore-names" in argv(DNS)


def test_dns_hosts_names_each_instance_once_in_the_domain() -> None:
    """ip NAME.DOMAIN NAME per valid hostname; the first lease keeps a repeated name."""
    assert dns_hosts(DNS) == "10.0.0.10 web-1.team-a.minicloud web-1\n"
    assert dns_hosts(CONFIG) == ""


@pytest.mark.parametrize(
    ("changes", "words"),
    [
        ({"dns_domain": "team_a.minicloud"}, "DNS domain"),
        ({"dns_domain": ""}, "DNS domain"),
        ({"dns_upstream": ("dns.example",)}, "DNS upstream"),
    ],
)
def test_a_bad_dns_domain_or_upstream_is_refused_before_anything_changes(
    changes: dict[str, Any], words: str
) -> None:
    """The shared config check refuses them (not retryable)."""
    with pytest.raises(NetworkError, match=words) as err:
        check(replace(DNS, **changes))
    assert not err.value.retryable
