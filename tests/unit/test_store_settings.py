"""MINICLOUD_STORE: which store the control plane keeps its state in."""

from __future__ import annotations

from pathlib import Path

import pytest

from controlplane.settings import Settings, StoreLocation, parse_store

# These tests are about the store: TLS is turned off explicitly.
PLAIN = {"MINICLOUD_PLAINTEXT": "1"}


def test_default_is_rocksdb_under_the_data_dir() -> None:
    """Without MINICLOUD_STORE the state stays in RocksDB at data_dir/store, as before."""
    settings = Settings.from_env({"MINICLOUD_DATA_DIR": "/srv/cp", **PLAIN})
    assert settings.store_location() == StoreLocation("rocksdb", path=Path("/srv/cp/store"))


def test_rocksdb_at_a_path() -> None:
    """rocksdb:PATH puts the RocksDB directory at PATH."""
    assert parse_store("rocksdb:/data/db", Path("/x")) == StoreLocation(
        "rocksdb", path=Path("/data/db")
    )


def test_etcd_endpoints_with_and_without_scheme() -> None:
    """etcd:URL,URL gives host:port endpoints; https URLs mean TLS."""
    plain = parse_store("etcd:http://10.0.0.1:2379, 10.0.0.2:2379", Path("/x"))
    assert plain == StoreLocation("etcd", endpoints=("10.0.0.1:2379", "10.0.0.2:2379"))
    secure = parse_store("etcd:https://etcd-a:2379,https://etcd-b:2379/", Path("/x"))
    assert secure.endpoints == ("etcd-a:2379", "etcd-b:2379") and secure.tls


@pytest.mark.parametrize(
    "value",
    [
        "sqlite:/tmp/db",
        "rocksdb:",
        "etcd:",
        "etcd:ftp://h:1",
        "etcd:http://h",
        "etcd:http://h:port",
        "etcd:http://a:1,https://b:2",
    ],
)
def test_malformed_values_are_refused_at_load(value: str) -> None:
    """A malformed MINICLOUD_STORE fails when the settings load, saying what is wrong."""
    with pytest.raises(ValueError, match=r"MINICLOUD_STORE|etcd URL"):
        Settings.from_env({"MINICLOUD_STORE": value, **PLAIN})


def test_etcd_settings_from_the_environment() -> None:
    """The etcd prefix, TLS files and call timeout come from MINICLOUD_ETCD_*."""
    settings = Settings.from_env(
        {
            "MINICLOUD_STORE": "etcd:127.0.0.1:2379",
            "MINICLOUD_ETCD_PREFIX": "/cloud-a/",
            "MINICLOUD_ETCD_CA": "/etc/minicloud/ca.pem",
            "MINICLOUD_ETCD_TIMEOUT": "3",
            **PLAIN,
        }
    )
    assert (settings.etcd_prefix, settings.etcd_ca, settings.etcd_timeout) == (
        "/cloud-a/",
        "/etc/minicloud/ca.pem",
        3.0,
    )
