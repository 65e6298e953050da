"""The values a request carries, declared once as types.

Each is an `Annotated` type with msgspec constraints (pattern, bounds, length)
and, in `extra["rule"]`, what the value must be in the product's words. The
gateway's typed bodies (gateway/bodies.py) are built from these types: msgspec
decodes and validates a body against them, and the OpenAPI document is
generated from them. The domain checks values that reach it by another way
(tools, workers, its own entry points) against the same types with `check`,
so no rule is written twice.

Ids are restricted to characters that are safe in Redis keys, ledger rows and
the JSON the scripts publish, so nothing downstream has to escape them.

Every pattern ends in `$(?!\n)`: Python's `$` also matches before a final
newline (msgspec and `check` search with Python's `re`), so "acct\n" would
pass a plain `$`; ECMA-262 readers of the OpenAPI document read it the same way.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from typing import Annotated, Any

import msgspec
from msgspec import inspect

from metering.errors import InvalidRequest

AccountId = Annotated[
    str,
    msgspec.Meta(
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$(?!\n)",
        extra={"rule": "1-64 characters of letters, digits, '_', '.', '-'"},
    ),
]
# Request ids come from switches (SIP Call-IDs carry '@' and ':'); '|' and ','
# are refused because the scripts use them as separators.
RequestId = Annotated[
    str,
    msgspec.Meta(
        pattern=r"^[A-Za-z0-9_.:@+=/-]{1,128}$(?!\n)",
        extra={"rule": "1-128 characters of letters, digits and _.:@+=/-"},
    ),
]
PhoneNumber = Annotated[
    str,
    msgspec.Meta(
        pattern=r"^\+?[0-9]{3,20}$(?!\n)",
        extra={"rule": "a phone number: optional '+', 3-20 digits"},
    ),
]
Email = Annotated[
    str,
    msgspec.Meta(
        max_length=254,
        pattern=r"^[^@\s,;]{1,64}@[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)+$(?!\n)",
        extra={"rule": "an email address"},
    ),
]
# Integers a body may carry at all: JSON integers that fit Redis's and
# Postgres's 64-bit integers (a tighter bound is the field's own).
INT64_MAX = 2**63 - 1


def single_line(length_max: int, description: str | None = None) -> msgspec.Meta:
    """The constraints of a one-line string (no CR, LF or NUL) of at most
    `length_max` characters: `Annotated[str, single_line(200)]`."""
    return msgspec.Meta(
        max_length=length_max,
        pattern=r"^[^\r\n\x00]*$(?!\n)",
        description=description,
        extra={"rule": f"a single line of at most {length_max} characters"},
    )


def rule(kind: Any) -> str:
    """What a value of `kind` must be, in words (for error messages)."""
    return _rule(inspect.type_info(kind))


def _rule(info: inspect.Type) -> str:
    if isinstance(info, inspect.Metadata):
        said = (info.extra or {}).get("rule")
        return str(said) if said else _rule(info.type)
    if isinstance(info, inspect.IntType):
        low = info.ge if info.ge is not None else (info.gt + 1 if info.gt is not None else None)
        high = info.le if info.le is not None else (info.lt - 1 if info.lt is not None else None)
        if low is not None and high is not None:
            return f"an integer between {low} and {high}"
        if low is not None:
            return f"an integer of at least {low}"
        return "an integer"
    if isinstance(info, inspect.LiteralType):
        return "one of: " + ", ".join(str(v) for v in info.values)
    if isinstance(info, inspect.BoolType):
        return "true or false"
    if isinstance(info, inspect.StrType):
        if info.max_length is not None:
            return f"a string of at most {info.max_length} characters"
        return "a string"
    if isinstance(info, inspect.UnionType):
        kinds = [t for t in info.types if not isinstance(t, inspect.NoneType)]
        return " or ".join(_rule(t) for t in kinds)
    if isinstance(info, inspect.ListType):
        if info.max_length is not None:
            return f"a list of {info.min_length or 0} to {info.max_length} items"
        if info.min_length:
            return f"a list of at least {info.min_length} items"
        return "a list"
    if isinstance(info, inspect.StructType | inspect.DictType):
        return "an object"
    return "valid"


def _checker(info: inspect.Type) -> Callable[[Any], bool]:
    """A fast test of one value against a declared scalar type (no decoding)."""
    if isinstance(info, inspect.Metadata):
        return _checker(info.type)
    if isinstance(info, inspect.StrType):
        pattern = re.compile(info.pattern) if info.pattern else None
        low, high = info.min_length or 0, info.max_length

        def text_ok(value: Any) -> bool:
            return (
                isinstance(value, str)
                and low <= len(value)
                and (high is None or len(value) <= high)
                and (pattern is None or pattern.search(value) is not None)
            )

        return text_ok
    if isinstance(info, inspect.IntType):
        ge = info.ge if info.ge is not None else (info.gt + 1 if info.gt is not None else None)
        le = info.le if info.le is not None else (info.lt - 1 if info.lt is not None else None)

        def int_ok(value: Any) -> bool:
            # bool is an int in Python; a JSON true is not a quantity.
            return (
                isinstance(value, int)
                and not isinstance(value, bool)
                and (ge is None or value >= ge)
                and (le is None or value <= le)
            )

        return int_ok
    if isinstance(info, inspect.LiteralType):
        allowed = frozenset(info.values)
        return lambda value: isinstance(value, str | int) and value in allowed
    if isinstance(info, inspect.BoolType):
        return lambda value: isinstance(value, bool)
    raise TypeError(f"no scalar check for {info!r}")


class Check:
    """A compiled check of one declared type: `check(value, field)`."""

    __slots__ = ("ok", "must")

    def __init__(self, kind: Any) -> None:
        info = inspect.type_info(kind)
        self.ok = _checker(info)
        self.must = _rule(info)

    def __call__(self, value: Any, field: str) -> Any:
        if not self.ok(value):
            raise InvalidRequest(field, f"{field} must be {self.must}")
        return value


@functools.lru_cache(maxsize=256)
def _check_of(kind: Any) -> Check:
    return Check(kind)


def check(value: Any, kind: Any, field: str) -> Any:
    """`value` if it is a valid `kind`, else InvalidRequest naming `field`."""
    return _check_of(kind)(value, field)


# The domain's entry points, by the product's names for the values.


_ACCOUNT_ID = Check(AccountId)
_REQUEST_ID = Check(RequestId)
_PHONE_NUMBER = Check(PhoneNumber)
_EMAIL = Check(Email)


def account_id(value: Any, field: str = "account_id") -> str:
    return str(_ACCOUNT_ID(value, field))


def request_id(value: Any, field: str) -> str:
    return str(_REQUEST_ID(value, field))


def phone_number(value: Any, field: str = "number") -> str:
    return str(_PHONE_NUMBER(value, field))


def email(value: Any, field: str) -> str:
    return str(_EMAIL(value, field))


def integer(value: Any, field: str, minimum: int, maximum: int) -> int:
    """An integer within bounds known only at run time (settings, money limits)."""
    if not isinstance(value, int) or isinstance(value, bool):
        raise InvalidRequest(field, f"{field} must be an integer")
    if not minimum <= value <= maximum:
        raise InvalidRequest(field, f"{field} must be an integer between {minimum} and {maximum}")
    return value


def choice(value: Any, field: str, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise InvalidRequest(field, f"{field} must be one of: {', '.join(allowed)}")
    return str(value)


def text(value: Any, field: str, length_max: int) -> str:
    return str(check(value, _one_line(length_max), field))


@functools.lru_cache(maxsize=64)
def _one_line(length_max: int) -> Any:
    return Annotated[str, single_line(length_max)]


# ---- msgspec's validation errors in the product's words ----

_AT = re.compile(r" - at `\$(.*)`$")
_PATH_PART = re.compile(r"\.([A-Za-z_][A-Za-z0-9_]*)|\[(\d+)\]")


def join_path(path: str, name: str) -> str:
    """'rate_card' + 'sms_outbound_micros', 'items' + '[2].message_id'."""
    if not path or not name:
        return path or name
    return f"{path}{name}" if name[0] == "[" else f"{path}.{name}"


def split_error(message: str) -> tuple[str, str]:
    """msgspec's message -> (what it says, path of the value: 'a.b', 'items[3].x', '')."""
    found = _AT.search(message)
    if found is None:
        return message, ""
    return message[: found.start()], found.group(1).lstrip(".")


def type_at(root: Any, path: str) -> inspect.Type | None:
    """The declared type of the value at `path` inside `root` (through optional
    values, lists, and tagged unions of objects: the first member with that field)."""
    info: inspect.Type | None = inspect.type_info(root)
    for name, index in _PATH_PART.findall("." + path if path and path[0] != "[" else path):
        while isinstance(info, inspect.Metadata):
            info = info.type
        if info is None:
            return None
        members = tuple(
            m.type if isinstance(m, inspect.Metadata) else m
            for m in (info.types if isinstance(info, inspect.UnionType) else (info,))
        )
        if index:
            info = next((m.item_type for m in members if isinstance(m, inspect.ListType)), None)
            continue
        structs = [m for m in members if isinstance(m, inspect.StructType)]
        if structs and name == structs[0].tag_field:
            tags = ", ".join(str(m.tag) for m in structs)
            return inspect.Metadata(inspect.StrType(), extra={"rule": f"one of: {tags}"})
        info = next(
            (f.type for m in structs for f in m.fields if f.encode_name == name),
            None,
        )
        if info is None:
            return None
    return info


def field_names(info: inspect.Type | None) -> list[str]:
    while isinstance(info, inspect.Metadata):
        info = info.type
    if isinstance(info, inspect.StructType):
        return [f.encode_name for f in info.fields]
    return []


def invalid(exc: msgspec.ValidationError, root: Any, prefix: str = "") -> InvalidRequest:
    """The InvalidRequest for msgspec's error on a value decoded as `root`; the
    field is named by its path (`rate_card.sms_outbound_micros`, `items[2].message_id`)."""
    said, path = split_error(str(exc))
    if said.startswith(("Object missing required field `", "Object contains unknown field `")):
        name = said.split("`")[1]
        field = join_path(join_path(prefix, path), name)
        if said.startswith("Object missing"):
            return InvalidRequest(field, f"{field} is required")
        expected = ", ".join(field_names(type_at(root, path)))
        return InvalidRequest(field, f"unknown field {name!r}; expected: {expected}")
    field = join_path(prefix, path) or "body"
    info = type_at(root, path)
    must = _rule(info) if info is not None else "valid"
    return InvalidRequest(field, f"{field} must be {must}")
