"""Request-body fields: what each route accepts, checked before any gRPC call.

Shaken Fist turns every top-level body key into a keyword argument, so an
unknown key is a 400; so is a wrong type. ``null`` means "not given". The
same declarations feed the OpenAPI document.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from dataclasses import field as dataclass_field
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
    # (21 octal digits hold any int64, which is what the mode travels as.)
    "mode": {"oneOf": [{"type": "integer"}, {"type": "string", "pattern": "^(0o)?[0-7]{1,21}$"}]},
}


# A namespace name (the control plane's rule), in a body field or the x-namespace metadata.
NAME_PATTERN = "^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$"
NAMESPACE: dict[str, Any] = {"pattern": NAME_PATTERN}
# The largest integer protobuf's int64 holds, and int32's.
INT64_MAX = 2**63 - 1
INT32_MAX = 2**31 - 1

# How deep a request body may nest arrays and objects (metadata travels as a
# protobuf Struct, whose parser stops at 100 levels).
MAX_DEPTH = 32


def check_json(value: Any) -> None:
    """A 400 unless every string in value is valid Unicode and it nests at most MAX_DEPTH deep."""
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError as exc:
                raise HttpError(
                    400, "request body holds a string that is not valid Unicode (a lone surrogate)"
                ) from exc
        elif isinstance(item, dict | list):
            if depth >= MAX_DEPTH:
                raise HttpError(400, f"request body is nested deeper than {MAX_DEPTH} levels")
            children = list(item.items()) if isinstance(item, dict) else [(None, v) for v in item]
            for key, child in children:
                stack.append((child, depth + 1))
                if key is not None:
                    stack.append((key, depth + 1))


@dataclass(frozen=True)
class Field:
    """One body field: name, kind (a key of KINDS), whether required, what it means."""

    name: str
    kind: str
    required: bool = False
    doc: str = ""
    # JSON-schema keywords the gateway enforces too: pattern, enum, minimum, maximum,
    # minLength, maxLength (on the value, or on the integer an intlike string holds);
    # others (items, properties, format) describe what the control plane checks.
    rules: dict[str, Any] = dataclass_field(default_factory=dict)
    # False: the rules are the control plane's to enforce (it says more about what is wrong).
    enforced: bool = True

    def schema(self) -> dict[str, Any]:
        """This field's JSON schema."""
        base = KINDS[self.kind]
        if self.kind == "intlike" and ("minimum" in self.rules or "maximum" in self.rules):
            # A string of digits is accepted too, but its bounds cannot be stated in a schema.
            out_int: dict[str, Any] = {"type": "integer", **self.rules}
            return {**out_int, **self._null(), "description": self.doc}
        if "oneOf" in base:
            one_of = []
            for option in base["oneOf"]:
                kept = {k: v for k, v in self.rules.items() if _applies(k, option["type"])}
                one_of.append({**option, **kept})
            out: dict[str, Any] = {"oneOf": one_of}
        else:
            out = {**base, **self.rules}
        return {**out, **self._null(), "description": self.doc}

    def _null(self) -> dict[str, Any]:
        # null means "not given": fine for an optional field, "missing" for a required one.
        return {} if self.required else {"nullable": True}


def _applies(keyword: str, json_type: str) -> bool:
    if keyword in ("minimum", "maximum"):
        return json_type == "integer"
    return keyword not in ("pattern", "minLength", "maxLength")


def enforce(name: str, value: Any, rules: dict[str, Any]) -> None:
    """A 400 naming the field unless value keeps the rules (see ``Field.rules``)."""
    if "enum" in rules and value not in rules["enum"]:
        allowed = ", ".join(repr(v) if v == "" else str(v) for v in rules["enum"])
        raise HttpError(400, f"{name} {value!r} must be one of: {allowed}"[:300])
    if isinstance(value, int) and not isinstance(value, bool):
        low, high = rules.get("minimum"), rules.get("maximum")
        if (low is not None and value < low) or (high is not None and value > high):
            raise HttpError(400, f"{name} must be between {low} and {high}")
    if isinstance(value, str):
        if len(value) < rules.get("minLength", 0):
            raise HttpError(400, f"{name} must not be empty")
        if "maxLength" in rules and len(value) > rules["maxLength"]:
            raise HttpError(400, f"{name} may have at most {rules['maxLength']} characters")
        if "pattern" in rules and not re.search(rules["pattern"], value):
            raise HttpError(400, f"{name} must match {rules['pattern']}"[:300])


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
        number = to_int(value, field.name)
        if field.enforced:
            enforce(field.name, number, field.rules)
        return number
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
    if field.enforced:
        enforce(field.name, value, field.rules)
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
        "properties": {f.name: f.schema() for f in fields},
        "required": [f.name for f in fields if f.required],
    }
