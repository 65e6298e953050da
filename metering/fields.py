"""Checks on the values a request carries, shared by every entry point.

Ids are restricted to characters that are safe in Redis keys, ledger rows and
the JSON the scripts publish, so nothing downstream has to escape them.
"""

from __future__ import annotations

import re
from typing import Any

from metering.errors import InvalidRequest

ACCOUNT_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
# Request ids come from switches (SIP Call-IDs carry '@' and ':'); '|' and ','
# are refused because the scripts use them as separators.
REQUEST_ID = re.compile(r"[A-Za-z0-9_.:@+=/-]{1,128}")
PHONE_NUMBER = re.compile(r"\+?[0-9]{3,20}")
EMAIL = re.compile(r"[^@\s,;]{1,64}@[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)+")


def account_id(value: Any, field: str = "account_id") -> str:
    if not isinstance(value, str) or not ACCOUNT_ID.fullmatch(value):
        raise InvalidRequest(
            field, f"{field} must be 1-64 characters of letters, digits, '_', '.', '-'"
        )
    return value


def request_id(value: Any, field: str) -> str:
    if not isinstance(value, str) or not REQUEST_ID.fullmatch(value):
        raise InvalidRequest(
            field, f"{field} must be 1-128 characters of letters, digits and _.:@+=/-"
        )
    return value


def integer(value: Any, field: str, minimum: int, maximum: int) -> int:
    # bool is an int in Python; a JSON true is not a quantity.
    if not isinstance(value, int) or isinstance(value, bool):
        raise InvalidRequest(field, f"{field} must be an integer")
    if not minimum <= value <= maximum:
        raise InvalidRequest(field, f"{field} must be between {minimum} and {maximum}")
    return value


def choice(value: Any, field: str, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise InvalidRequest(field, f"{field} must be one of: {', '.join(allowed)}")
    return str(value)


def text(value: Any, field: str, length_max: int) -> str:
    if not isinstance(value, str) or len(value) > length_max:
        raise InvalidRequest(field, f"{field} must be a string of at most {length_max} characters")
    if any(ch in value for ch in "\n\r\x00"):
        raise InvalidRequest(field, f"{field} must be a single line")
    return value


def phone_number(value: Any, field: str = "number") -> str:
    if not isinstance(value, str) or not PHONE_NUMBER.fullmatch(value):
        raise InvalidRequest(field, f"{field} must be a phone number: optional '+', 3-20 digits")
    return value


def email(value: Any, field: str) -> str:
    if not isinstance(value, str) or len(value) > 254 or not EMAIL.fullmatch(value):
        raise InvalidRequest(field, f"{field} must be an email address")
    return value
