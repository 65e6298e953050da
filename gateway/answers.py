"""The answers of the API, each declared once as a msgspec Struct: the handler
encodes it and the OpenAPI document describes it (gateway/openapi.py). Money
is integer micro-units, durations integer seconds."""

from __future__ import annotations

from typing import Annotated, Self

import msgspec
from msgspec import Meta

from metering.credits import Credit
from metering.debits import Charge
from metering.rate_card import RateCard
from metering.reservations import CallCharge, Grant, Release

Micros = int
Seq = Annotated[int, Meta(description="The account's ledger sequence number of this change.")]
Item = Annotated[
    str,
    Meta(
        description="The billing item: sms_outbound, sms_inbound, ring_through_attempt, "
        "number_purchase, number_renewal."
    ),
]


class Answer(msgspec.Struct):
    """Base of every answer."""


class Error(Answer, omit_defaults=True):
    """Every error: a machine-readable code, a sentence, and the details of some
    codes (present only with them), e.g. `field` on 422 (which field:
    `rate_card.sms_outbound_micros`, `items[2].message_id`)."""

    error: Annotated[str, Meta(description="Machine-readable code.")]
    message: Annotated[str, Meta(description="What is wrong, in a sentence.")]
    field: Annotated[str | None, Meta(description="The field at fault (422).")] = None
    cost_micros: Annotated[Micros | None, Meta(description="402 insufficient_funds.")] = None
    available_micros: Annotated[Micros | None, Meta(description="402 insufficient_funds.")] = None
    limit: Annotated[int | None, Meta(description="429 concurrent_call_limit.")] = None
    state: Annotated[str | None, Meta(description="409 call_closed: the call's state.")] = None
    number: Annotated[str | None, Meta(description="402 number_suspended.")] = None
    retry_after_s: Annotated[
        int | None, Meta(description="429 too_many_auth_failures: seconds until a retry.")
    ] = None


class Charged(Answer):
    """The fields of every one-shot charge's answer."""

    item: Item
    charged_micros: Micros
    balance_micros: Micros
    reserved_micros: Micros
    available_micros: Micros
    seq: Seq

    @classmethod
    def of(cls, c: Charge, *ids: str) -> Self:
        """The answer to charge `c`, with the request's own ids after the charge's fields."""
        return cls(
            c.item,
            c.charged_micros,
            c.balance_micros,
            c.reserved_micros,
            c.balance_micros - c.reserved_micros,
            c.seq,
            *ids,
        )


class MessageCharged(Charged):
    """A text message charged (or the first answer again, for a repeated message_id)."""

    message_id: str


class AttemptCharged(Charged):
    """A ring-through attempt charged."""

    attempt_id: str


class PurchaseCharged(Charged):
    """A number purchase charged."""

    purchase_id: str
    number: str


class RenewalCharged(Charged):
    """A number renewal charged."""

    renewal_id: str
    number: str


class CallGrant(Answer):
    """Seconds granted to a call (reserve or extend): the switch may let the call
    run `granted_seconds` more, and must ask again within `validity_seconds`."""

    call_id: str
    granted_seconds: int
    total_granted_seconds: int
    max_seconds: int
    validity_seconds: int
    final: Annotated[bool, Meta(description="No further grant will be given.")]
    call_reserved_micros: Micros
    balance_micros: Micros
    reserved_micros: Micros
    available_micros: Micros

    @classmethod
    def of(cls, g: Grant) -> CallGrant:
        return cls(
            g.call_id,
            g.granted_seconds,
            g.total_granted_seconds,
            g.max_seconds,
            g.validity_seconds,
            g.final,
            g.reserved_for_call_micros,
            g.balance_micros,
            g.reserved_micros,
            g.balance_micros - g.reserved_micros,
        )


class CallCharged(Answer):
    """A call committed: its real duration charged, the rest of its reservation released."""

    call_id: str
    duration_seconds: int
    billed_seconds: int
    charged_micros: Micros
    capped: Annotated[bool, Meta(description="The charge was capped at what was reserved.")]
    correction_micros: Annotated[
        Micros,
        Meta(
            description="A late commit of an expired call: how the balance moved to correct "
            "the expiry's charge (a refund is positive); 0 for a commit in time."
        ),
    ]
    balance_micros: Micros
    reserved_micros: Micros
    available_micros: Micros
    seq: Seq

    @classmethod
    def of(cls, c: CallCharge) -> CallCharged:
        # From the domain's own view, so a field it adds fails here, not silently.
        return cls(**c.as_dict())


class CallReleased(Answer):
    """A call that never connected: its reservation released, nothing charged."""

    call_id: str
    charged_micros: Micros
    correction_micros: Annotated[
        Micros,
        Meta(description="A late release of an expired call: the expiry's charge refunded."),
    ]
    released_micros: Micros
    balance_micros: Micros
    reserved_micros: Micros
    available_micros: Micros

    @classmethod
    def of(cls, r: Release) -> CallReleased:
        return cls(**r.as_dict())


class TokenIssued(Answer):
    """A customer token, shown once."""

    account_id: str
    label: str
    token: Annotated[str, Meta(description="Bearer token for the account's dashboard.")]
    token_id: Annotated[
        str, Meta(description="Names the token later (list, revoke); signs in nothing.")
    ]


class TokenRecord(Answer):
    """A customer token on record (never the token itself)."""

    token_id: Annotated[str, Meta(description="The first 16 hex characters of its SHA-256.")]
    label: str
    created_at_us: int
    revoked_at_us: Annotated[int | None, Meta(description="null while the token works.")]


class TokenList(Answer):
    """Every token the account was issued, oldest first, revoked ones included."""

    account_id: str
    tokens: list[TokenRecord]


class FundsAdded(Answer):
    """Funds added (or the first answer again, for a repeated credit_id)."""

    credit_id: str
    credited_micros: Micros
    balance_micros: Micros
    reserved_micros: Micros
    available_micros: Micros
    seq: Seq

    @classmethod
    def of(cls, credit_id: str, c: Credit) -> FundsAdded:
        return cls(
            credit_id,
            c.credited_micros,
            c.balance_micros,
            c.reserved_micros,
            c.balance_micros - c.reserved_micros,
            c.seq,
        )


class RechargeState(Answer):
    """Automatic recharge settings and state."""

    enabled: bool
    amount_micros: Micros | None
    threshold_micros: Micros | None
    failure_email: str | None
    pending: Annotated[bool, Meta(description="A recharge was asked for and not settled.")]
    pending_since_us: int | None
    last_failure: Annotated[str | None, Meta(description="Why the last recharge failed.")]
    last_failure_at_us: int | None
    next_attempt_at_us: Annotated[
        int | None, Meta(description="When the pending recharge is tried again.")
    ]


class CardOnFile(Answer):
    """The card Stripe holds for the account (never its number)."""

    brand: str
    last4: str
    exp_month: int
    exp_year: int


class AlertState(Answer):
    """Low-balance alert settings and state."""

    low_balance_threshold_micros: Annotated[Micros, Meta(description="0: alert off.")]
    email: str | None
    low_since_us: Annotated[int | None, Meta(description="Below the threshold since.")]
    depleted_since_us: Annotated[int | None, Meta(description="At zero since.")]


class AccountAnswer(Answer):
    """An account: balance, reservations, rate card, recharge settings, card on file."""

    account_id: str
    balance_micros: Micros
    reserved_micros: Micros
    available_micros: Micros
    seq: Seq
    rate_card: RateCard
    max_concurrent_calls: Annotated[int, Meta(description="0 means no limit.")]
    open_calls: int
    recharge: RechargeState
    card: CardOnFile | None
    created_at_us: Annotated[int, Meta(description="Microseconds since the Unix epoch.")]
    alerts: AlertState


class MessageResult(Answer, tag_field="type", tag="message", omit_defaults=True):
    """A text message of a batch: `answer` (status 200) or `error`, as
    POST /v1/messages would have answered it."""

    status: int
    answer: MessageCharged | None = None
    error: Error | None = None


class AttemptResult(Answer, tag_field="type", tag="attempt", omit_defaults=True):
    """A ring-through attempt of a batch: `answer` (status 200) or `error`."""

    status: int
    answer: AttemptCharged | None = None
    error: Error | None = None


class DebitBatchCharged(Answer):
    """Each item's outcome, in the order of the request's items."""

    results: list[MessageResult | AttemptResult]
