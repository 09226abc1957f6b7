"""Shaken Fist's netdesc (compat doc §5.6) as a NetworkSpec, checked before any gRPC call.

A netdesc is ``{"network_uuid": UUID or name, "address": IPv4 or "none",
"macaddress": MAC, "model": NIC model, "float": bool}``; null means "the
default". The control plane checks the network, the address and the model;
here only shapes are checked, so a wrong type is a 400 naming the field.
"""

from __future__ import annotations

from typing import Any

from gateway.errors import HttpError
from protos import common_pb2

STRING_KEYS = ("network_uuid", "address", "macaddress", "model")
KEYS = (*STRING_KEYS, "float")
# The CLI's long form (-N float=true) may send float as a string.
TRUE, FALSE = ("true", "yes", "1"), ("false", "no", "0", "")


# What parse accepts, for the OpenAPI document.
SCHEMA = {
    "type": "object",
    "additionalProperties": False,
    "required": ["network_uuid"],
    "properties": {
        "network_uuid": {
            "type": "string",
            "description": "a network UUID or name",
            "pattern": "^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$",
        },
        "address": {"type": "string", "nullable": True, "format": "ipv4"},
        "macaddress": {
            "type": "string",
            "nullable": True,
            "pattern": "^([0-9a-fA-F]{2}:){5}[0-9a-fA-F]{2}$",
        },
        "model": {
            "nullable": True,
            "enum": [
                "virtio",
                "e1000",
                "rtl8139",
                "ne2k_pci",
                "pcnet",
                "i82551",
                "i82557b",
                "i82559er",
                "",
                None,
            ],
        },
        "float": {"type": "boolean", "nullable": True},
    },
}


def _float(value: Any, what: str) -> bool:
    if value is None or isinstance(value, bool):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in TRUE + FALSE:
        return value.strip().lower() in TRUE
    raise HttpError(400, f"{what}: float must be a boolean, not {value!r}"[:300])


def parse(item: Any, what: str = "network") -> common_pb2.NetworkSpec:
    """One netdesc as a NetworkSpec (400 for a wrong shape)."""
    if not isinstance(item, dict):
        raise HttpError(400, f"{what} must be an object (a netdesc)")
    unknown = sorted(str(k) for k in item if k not in KEYS)
    if unknown:
        raise HttpError(400, f"{what}: unexpected field(s) {', '.join(unknown)}"[:300])
    for key in STRING_KEYS:
        if item.get(key) is not None and not isinstance(item[key], str):
            raise HttpError(400, f"{what}: {key} must be a string")
    if not item.get("network_uuid"):
        raise HttpError(400, f"{what}: network specification is missing network_uuid")
    return common_pb2.NetworkSpec(
        network_uuid=item["network_uuid"],
        address=item.get("address") or "",
        macaddress=item.get("macaddress") or "",
        model=item.get("model") or "",
        float=_float(item.get("float"), what),
    )


def parse_all(items: list[Any]) -> list[common_pb2.NetworkSpec]:
    """The netdescs of an instance create, in order."""
    return [parse(item, f"network {index}") for index, item in enumerate(items)]
