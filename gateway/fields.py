"""Request-body fields: what each route accepts, checked before any gRPC call.

Shaken Fist turns every top-level body key into a keyword argument, so an
unknown key is a 400; so is a wrong type. ``null`` means "not given". The
same declarations feed the OpenAPI document.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from gateway.errors import HttpError

# kind -> (JSON schema, description of what is accepted)
KINDS: dict[str, dict[str, Any]] = {
    "str": {"type": "string"},
    "int": {"type": "integer"},
    # An integer, or a string of digits (the CLI sends some numbers as strings).
    "intlike": {"oneOf": [{"type": "integer"}, {"type": "string", "pattern": "^-?[0-9]+$"}]},
    "bool": {"type": "boolean"},
    "list": {"type": "array"},
    "dict": {"type": "object"},
    "any": {},
    # A file mode: an integer (st_mode or permission bits) or an octal string.
    "mode": {"oneOf": [{"type": "integer"}, {"type": "string", "pattern": "^(0o)?[0-7]+$"}]},
}


@dataclass(frozen=True)
class Field:
    """One body field: name, kind (a key of KINDS), whether required, what it means."""

    name: str
    kind: str
    required: bool = False
    doc: str = ""


def to_int(value: Any, what: str) -> int:
    """An int from an int or a string of digits, or a 400 naming the field."""
    if isinstance(value, bool):
        raise HttpError(400, f"{what} must be an integer, not a boolean")
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            pass
    raise HttpError(400, f"{what} must be an integer, not {value!r}"[:300])


def to_mode(value: Any) -> int:
    """A file mode from an int or an octal string, or a 406 as Shaken Fist answers."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    if isinstance(value, str):
        try:
            return int(value.removeprefix("0o"), 8)
        except ValueError:
            pass
    raise HttpError(406, f"invalid mode: {value!r}"[:300])


def _check(field: Field, value: Any) -> Any:
    kind = field.kind
    if kind == "any":
        return value
    if kind == "intlike":
        return to_int(value, field.name)
    if kind == "mode":
        return to_mode(value)
    expected: type | tuple[type, ...] = {
        "str": str,
        "int": int,
        "bool": bool,
        "list": list,
        "dict": dict,
    }[kind]
    if not isinstance(value, expected) or (kind == "int" and isinstance(value, bool)):
        raise HttpError(400, f"{field.name} must be of type {kind}, not {type(value).__name__}")
    return value


def parse(body: Any, fields: tuple[Field, ...]) -> dict[str, Any]:
    """The body's fields checked against the declarations; absent and null ones omitted."""
    if body is None:
        body = {}
    if not isinstance(body, dict):
        raise HttpError(400, "the request body must be a JSON object")
    known = {f.name: f for f in fields}
    unknown = sorted(k for k in body if k not in known)
    if unknown:
        raise HttpError(400, f"unexpected field(s) in request: {', '.join(unknown)}"[:500])
    out: dict[str, Any] = {}
    for field in fields:
        value = body.get(field.name)
        if value is None:
            if field.required:
                raise HttpError(400, f"missing {field.name} in request")
            continue
        out[field.name] = _check(field, value)
    return out


def schema(fields: tuple[Field, ...]) -> dict[str, Any]:
    """A JSON schema for a body with these fields."""
    return {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            f.name: {**KINDS[f.kind], "nullable": True, "description": f.doc} for f in fields
        },
        "required": [f.name for f in fields if f.required],
    }
