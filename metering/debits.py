"""One-shot debits: texts, ring-through attempts, number purchases and renewals.

Each is one EVALSHA of debit.lua: rate, check `balance - reserved >= cost`,
charge, ledger entry, publish, remember the answer under the request id.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from metering import fields
from metering.burn import spend_key, spend_ttl_s
from metering.errors import MeteringError, raise_refusal
from metering.rate_card import ONE_SHOT_PRICE_FIELD
from metering.store import Store

DIRECTIONS = ("outbound", "inbound")
# Who renews a number: the number scheduler, or the switch through /v1/numbers/renewals.
RENEWAL_MODES = ("automatic", "switch")


@dataclasses.dataclass(frozen=True, slots=True)
class Charge:
    item: str
    charged_micros: int
    balance_micros: int
    reserved_micros: int
    seq: int
    replayed: bool

    def as_dict(self) -> dict[str, Any]:
        return {
            "item": self.item,
            "charged_micros": self.charged_micros,
            "balance_micros": self.balance_micros,
            "reserved_micros": self.reserved_micros,
            "available_micros": self.balance_micros - self.reserved_micros,
            "seq": self.seq,
        }


DebitCall = tuple[list[str], list[Any]]


def debit_call(
    store: Store,
    account_id: str,
    item: str,
    kind: str,
    request_id: str,
    fingerprint: str,
    detail: str = "",
    number: str = "",
    number_role: str = "",
    renewal_mode: str = "",
) -> DebitCall:
    """The KEYS and ARGV of debit.lua for one charge (lua/debit.lua's header);
    the bench's bare route and redis-benchmark send exactly these."""
    keys = store.account_keys(account_id)
    settings = store.settings
    return (
        [
            keys.account,
            keys.request(kind, request_id),
            keys.shard.ledger,
            keys.shard.recharge,
            keys.numbers,
            keys.shard.numbers,
            keys.shard.events,
            spend_key(settings, keys.shard),
        ],
        [
            account_id,
            item,
            ONE_SHOT_PRICE_FIELD[item],
            request_id,
            fingerprint,
            settings.idempotency_window_s,
            settings.ledger_backlog_max,
            settings.live_channel,
            detail,
            number,
            number_role,
            renewal_mode,
            spend_ttl_s(settings),
        ],
    )


def charge_of(result: list[Any], args: list[Any]) -> Charge:
    """debit.lua's answer to the call with `args` (debit_call's) as a Charge, or
    its refusal raised."""
    account_id, item, request_id = args[0], args[1], args[3]
    raise_refusal(result, account_id, f"{item} {request_id}")
    return Charge(
        item, int(result[2]), int(result[3]), int(result[4]), int(result[5]), result[1] == 1
    )


async def debit(store: Store, call: DebitCall) -> Charge:
    """Charge one billing item at the account's rate (`call` from debit_call);
    idempotent by (kind, request id), so a message id reused with the other
    direction is a conflict, not a second charge. A number named in a role
    (lua/_lib.lua number_refusal) is checked and recorded in the same script."""
    keys, args = call
    return charge_of(await store.scripts.debit(store.redis, keys, args), args)


def message_call(
    store: Store, account_id: str, message_id: str, direction: str, number: str | None = None
) -> DebitCall:
    """The script call of an outgoing or incoming text message (checked)."""
    fields.account_id(account_id)
    fields.request_id(message_id, "message_id")
    fields.choice(direction, "direction", DIRECTIONS)
    fingerprint = direction
    if number is not None:
        fields.phone_number(number)
        fingerprint = f"{direction};{number}"
    return debit_call(
        store,
        account_id,
        f"sms_{direction}",
        "message",
        message_id,
        fingerprint,
        number=number or "",
        number_role="use" if number else "",
    )


def attempt_call(store: Store, account_id: str, attempt_id: str) -> DebitCall:
    """The script call of one ring-through connection attempt (checked)."""
    fields.account_id(account_id)
    fields.request_id(attempt_id, "attempt_id")
    return debit_call(store, account_id, "ring_through_attempt", "attempt", attempt_id, "")


async def message(
    store: Store, account_id: str, message_id: str, direction: str, number: str | None = None
) -> Charge:
    """An outgoing or incoming text message; naming the account's number (sent from
    or to) refuses it while that number is suspended."""
    return await debit(store, message_call(store, account_id, message_id, direction, number))


async def ring_through_attempt(store: Store, account_id: str, attempt_id: str) -> Charge:
    """One connection attempt of a workflow's ring-through."""
    return await debit(store, attempt_call(store, account_id, attempt_id))


async def debit_many(store: Store, calls: list[DebitCall | Exception]) -> list[Charge | Exception]:
    """Several charges (each call from message_call or attempt_call, or the
    exception that building it raised), written to Redis at once and applied in
    order; each its Charge or its own error (a refusal, a timeout), in order."""
    ready = [c for c in calls if not isinstance(c, Exception)]
    answers = iter(await store.scripts.debit.run_many(store.redis, ready))
    out: list[Charge | Exception] = []
    for call in calls:
        if isinstance(call, Exception):
            out.append(call)
            continue
        answer = next(answers)
        if isinstance(answer, Exception):
            out.append(answer)
            continue
        try:
            out.append(charge_of(answer, call[1]))
        except MeteringError as refusal:
            out.append(refusal)
    return out


async def number_purchase(
    store: Store, account_id: str, purchase_id: str, number: str, renewal: str = "automatic"
) -> Charge:
    """Buy a number: charged, and held by the account from now on (active). The
    number scheduler renews it each period unless renewal is 'switch'."""
    fields.account_id(account_id)
    fields.request_id(purchase_id, "purchase_id")
    fields.phone_number(number)
    fields.choice(renewal, "renewal", RENEWAL_MODES)
    # The default mode keeps the fingerprint of the contract before renewal modes.
    fingerprint = number if renewal == "automatic" else f"{number};{renewal}"
    return await debit(
        store,
        debit_call(
            store,
            account_id,
            "number_purchase",
            "purchase",
            purchase_id,
            fingerprint,
            number,
            number=number,
            number_role="purchase",
            renewal_mode=renewal,
        ),
    )


async def number_renewal(
    store: Store, account_id: str, renewal_id: str, number: str, automatic: bool = False
) -> Charge:
    """A renewal pays one period of a held number (and makes a suspended one active
    again). The switch's renewals and the scheduler's (automatic) take this path;
    one the balance cannot pay is refused like any other debit."""
    fields.account_id(account_id)
    fields.request_id(renewal_id, "renewal_id")
    fields.phone_number(number)
    return await debit(
        store,
        debit_call(
            store,
            account_id,
            "number_renewal",
            "renewal",
            renewal_id,
            number,
            number,
            number=number,
            number_role="auto_renewal" if automatic else "renewal",
        ),
    )
