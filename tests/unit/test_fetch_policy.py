"""The URL cache's address policy, URL checks, names and settings, without any network."""

from __future__ import annotations

import ipaddress

import pytest

from controlplane.services.urlcache import name_from_url
from controlplane.settings import Settings
from controlplane.urlfetch import FetchPolicy, check_url

POLICY = FetchPolicy(max_bytes=1)


@pytest.mark.parametrize(
    ("address", "why"),
    [
        ("127.0.0.1", "loopback"),
        ("127.255.0.9", "loopback"),
        ("::1", "loopback"),
        ("169.254.169.254", "link-local"),
        ("fe80::1%eth0", "link-local"),
        ("10.0.0.5", "private"),
        ("172.31.255.255", "private"),
        ("192.168.1.1", "private"),
        ("fd00::1", "private"),
        ("100.64.1.1", "shared"),
        ("0.0.0.0", "unspecified"),
        ("::", "unspecified"),
        ("224.0.0.1", "multicast"),
        ("255.255.255.255", "reserved"),
        ("::ffff:127.0.0.1", "loopback"),
        ("not-an-ip", "not an IP address"),
    ],
)
def test_special_addresses_are_refused_by_default(address: str, why: str) -> None:
    """Loopback, link-local, private, shared, unspecified, multicast and reserved: refused."""
    reason = POLICY.refusal(address)
    assert reason is not None and why in reason


@pytest.mark.parametrize("address", ["93.184.216.34", "2606:4700::1111", "8.8.8.8"])
def test_public_addresses_may_be_reached(address: str) -> None:
    """Global unicast addresses outside the cluster are fetched from."""
    assert POLICY.refusal(address) is None


def test_the_clusters_networks_are_refused_and_the_settings_move_the_lines() -> None:
    """Cluster networks are refused; allow lifts a default refusal; deny wins over allow."""
    cluster = [ipaddress.ip_network("203.0.113.0/24")]
    assert "cluster's own networks" in str(POLICY.refusal("203.0.113.9", cluster))
    loopback = ipaddress.ip_network("127.0.0.1/32")
    allowing = FetchPolicy(max_bytes=1, allow=(loopback,))
    assert allowing.refusal("127.0.0.1") is None
    assert allowing.refusal("127.0.0.2") is not None
    both = FetchPolicy(max_bytes=1, allow=(loopback,), deny=(loopback,))
    assert "settings" in str(both.refusal("127.0.0.1"))
    public = FetchPolicy(max_bytes=1, deny=(ipaddress.ip_network("8.8.0.0/16"),))
    assert public.refusal("8.8.8.8") is not None


@pytest.mark.parametrize(
    "url",
    [
        "ftp://example.com/x",
        "file:///etc/passwd",
        "example.com/x.img",
        "http://",
        "http://user:pw@example.com/x",
        "http://[::1/x",
        "https://example.com:99999/x",
    ],
)
def test_only_http_and_https_urls_with_a_host_are_taken(url: str) -> None:
    """Other schemes, no host, credentials in the URL and malformed URLs are refused."""
    with pytest.raises(ValueError):
        check_url(url)


def test_a_name_comes_from_the_last_path_segment_else_the_host() -> None:
    """The artifact is named after the file the URL names (made a valid name), else its host."""
    assert name_from_url("https://x.example/images/debian-12.qcow2?token=1") == "debian-12.qcow2"
    assert name_from_url("https://x.example/a/cirros%2D0.6.img") == "cirros-0.6.img"
    assert name_from_url("https://x.example/a/my%20disk (1).img") == "my-disk-1-.img"
    assert name_from_url("https://x.example/") == "x.example"
    assert name_from_url("https://x.example/" + "a" * 100) == "a" * 63
    assert name_from_url("https://_/...") == "image"


def test_fetch_settings_are_read_once_and_checked() -> None:
    """MINICLOUD_ARTIFACT_FETCH_* are parsed at load; a bad network refuses to start."""
    settings = Settings.from_env(
        {
            "MINICLOUD_ARTIFACT_FETCH_ALLOW": "127.0.0.1, 10.1.0.0/16",
            "MINICLOUD_ARTIFACT_FETCH_DENY": "",
            "MINICLOUD_ARTIFACT_FETCH_MAX_BYTES": "1000",
            "MINICLOUD_ARTIFACT_FETCH_TIMEOUT": "5",
            "MINICLOUD_PLAINTEXT": "1",
        }
    )
    assert settings.artifact_fetch_allow == ("127.0.0.1/32", "10.1.0.0/16")
    assert (settings.artifact_fetch_max_bytes, settings.artifact_fetch_timeout) == (1000, 5.0)
    with pytest.raises(ValueError, match="MINICLOUD_ARTIFACT_FETCH_DENY"):
        Settings.from_env({"MINICLOUD_ARTIFACT_FETCH_DENY": "nonsense", "MINICLOUD_PLAINTEXT": "1"})
