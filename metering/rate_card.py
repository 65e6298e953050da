"""An account's prices, in micro-units, as the design's rate card names them."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any

import msgspec

from metering import fields
from metering.money import PRICE_MICROS_MAX

INCREMENT_S_MAX = 3_600

Price = Annotated[int, msgspec.Meta(ge=0, le=PRICE_MICROS_MAX)]
PerMinute = Annotated[int, msgspec.Meta(ge=0, le=PRICE_MICROS_MAX, description="Per minute.")]


class RateCard(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """An account's prices in micro-units (1 USD = 1,000,000); calls are billed
    per started increment after the minimum."""

    call_outbound_per_minute_micros: PerMinute
    call_inbound_per_minute_micros: PerMinute
    call_increment_seconds: Annotated[
        int, msgspec.Meta(ge=1, le=INCREMENT_S_MAX, description="Billing increment.")
    ]
    call_minimum_seconds: Annotated[
        int, msgspec.Meta(ge=0, le=INCREMENT_S_MAX, description="Seconds billed at least.")
    ]
    sms_outbound_micros: Price
    sms_inbound_micros: Price
    ring_through_attempt_micros: Price
    number_purchase_micros: Price
    number_renewal_micros: Price

    @classmethod
    def parse(cls, value: Any, field: str = "rate_card") -> RateCard:
        """Validate a rate card given as a mapping (a tool's JSON file): every field
        present, integers in range; the error names `rate_card.<field>`."""
        try:
            return msgspec.convert(value, cls)
        except msgspec.ValidationError as exc:
            raise fields.invalid(exc, cls, field) from None

    @classmethod
    def from_redis(cls, stored: Mapping[str, str]) -> RateCard:
        return cls(*(int(stored[name]) for name in cls.__struct_fields__))

    def as_dict(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in self.__struct_fields__}

    def fingerprint(self) -> str:
        return ",".join(str(getattr(self, name)) for name in self.__struct_fields__)


# The price field a one-shot item reads from the rate card (in the Lua script).
ONE_SHOT_PRICE_FIELD: dict[str, str] = {
    "sms_outbound": "sms_outbound_micros",
    "sms_inbound": "sms_inbound_micros",
    "ring_through_attempt": "ring_through_attempt_micros",
    "number_purchase": "number_purchase_micros",
    "number_renewal": "number_renewal_micros",
}
