"""An account's prices, in micro-units, as the design's rate card names them."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from metering import fields
from metering.errors import InvalidRequest
from metering.money import PRICE_MICROS_MAX

INCREMENT_S_MAX = 3_600


@dataclasses.dataclass(frozen=True, slots=True)
class RateCard:
    call_outbound_per_minute_micros: int
    call_inbound_per_minute_micros: int
    call_increment_seconds: int
    call_minimum_seconds: int
    sms_outbound_micros: int
    sms_inbound_micros: int
    ring_through_attempt_micros: int
    number_purchase_micros: int
    number_renewal_micros: int

    @classmethod
    def parse(cls, value: Any, field: str = "rate_card") -> RateCard:
        """Validate a rate card from a request body: every field present, integers in range."""
        if not isinstance(value, Mapping):
            raise InvalidRequest(field, f"{field} must be an object")
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(value) - set(names))
        if unknown:
            raise InvalidRequest(f"{field}.{unknown[0]}", f"{field} has no field {unknown[0]!r}")
        values: dict[str, int] = {}
        for name in names:
            path = f"{field}.{name}"
            if name not in value:
                raise InvalidRequest(path, f"{path} is required")
            if name == "call_increment_seconds":
                values[name] = fields.integer(value[name], path, 1, INCREMENT_S_MAX)
            elif name == "call_minimum_seconds":
                values[name] = fields.integer(value[name], path, 0, INCREMENT_S_MAX)
            else:
                values[name] = fields.integer(value[name], path, 0, PRICE_MICROS_MAX)
        return cls(**values)

    @classmethod
    def from_redis(cls, stored: Mapping[str, str]) -> RateCard:
        return cls(**{f.name: int(stored[f.name]) for f in dataclasses.fields(cls)})

    def as_dict(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    def fingerprint(self) -> str:
        return ",".join(str(getattr(self, f.name)) for f in dataclasses.fields(self))


# The price field a one-shot item reads from the rate card (in the Lua script).
ONE_SHOT_PRICE_FIELD: dict[str, str] = {
    "sms_outbound": "sms_outbound_micros",
    "sms_inbound": "sms_inbound_micros",
    "ring_through_attempt": "ring_through_attempt_micros",
    "number_purchase": "number_purchase_micros",
    "number_renewal": "number_renewal_micros",
}
