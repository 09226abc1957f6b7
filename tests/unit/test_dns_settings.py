"""The control plane's DNS settings: the zone networks' names live in and upstream servers."""

from __future__ import annotations

import pytest

from controlplane.settings import Settings

PLAIN = {"MINICLOUD_PLAINTEXT": "1"}


def test_by_default_the_zone_is_minicloud_and_nothing_is_forwarded() -> None:
    """Without settings: zone minicloud, no upstream servers."""
    settings = Settings.from_env(PLAIN)
    assert (settings.dns_zone, settings.dns_upstream) == ("minicloud", ())


def test_zone_and_upstream_servers_come_from_the_environment() -> None:
    """MINICLOUD_DNS_ZONE (lower-cased, no trailing dot) and a comma list of upstream servers."""
    settings = Settings.from_env(
        {
            "MINICLOUD_DNS_ZONE": "Cloud.Example.",
            "MINICLOUD_DNS_UPSTREAM": "192.0.2.53, 2001:db8::1",
            **PLAIN,
        }
    )
    assert settings.dns_zone == "cloud.example"
    assert settings.dns_upstream == ("192.0.2.53", "2001:db8::1")


@pytest.mark.parametrize(
    ("env", "words"),
    [
        ({"MINICLOUD_DNS_ZONE": "bad_zone"}, "MINICLOUD_DNS_ZONE"),
        ({"MINICLOUD_DNS_ZONE": ""}, "MINICLOUD_DNS_ZONE"),
        ({"MINICLOUD_DNS_UPSTREAM": "dns.example"}, "MINICLOUD_DNS_UPSTREAM"),
    ],
)
def test_a_bad_zone_or_upstream_server_is_refused_at_load(env: dict[str, str], words: str) -> None:
    """A zone that is not a DNS name or an upstream that is not an IP address: ValueError."""
    with pytest.raises(ValueError, match=words):
        Settings.from_env({**env, **PLAIN})
