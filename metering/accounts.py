"""Accounts: creation with a rate card, the account view, customer tokens."""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import AsyncIterator
from typing import Any

from metering import fields
from metering.errors import UnknownAccount, raise_refusal
from metering.keys import all_shards, token_key
from metering.rate_card import RateCard
from metering.store import Store

CONCURRENT_CALLS_MAX = 10_000
TOKEN_LABEL_LENGTH_MAX = 100
# Longer bearer tokens are refused unread (issued ones are 43 characters).
TOKEN_LENGTH_MAX = 256


@dataclasses.dataclass(frozen=True, slots=True)
class AccountView:
    account_id: str
    balance_micros: int
    reserved_micros: int
    seq: int
    rate_card: RateCard
    max_concurrent_calls: int
    open_calls: int
    recharge: dict[str, Any]
    card: dict[str, Any] | None
    created_at_us: int
    alerts: dict[str, Any]

    @property
    def available_micros(self) -> int:
        return self.balance_micros - self.reserved_micros

    def as_dict(self) -> dict[str, Any]:
        return {
            "account_id": self.account_id,
            "balance_micros": self.balance_micros,
            "reserved_micros": self.reserved_micros,
            "available_micros": self.available_micros,
            "seq": self.seq,
            "rate_card": self.rate_card.as_dict(),
            "max_concurrent_calls": self.max_concurrent_calls,
            "open_calls": self.open_calls,
            "recharge": self.recharge,
            "card": self.card,
            "created_at_us": self.created_at_us,
            "alerts": self.alerts,
        }

    @classmethod
    def from_redis(cls, account_id: str, h: dict[str, str], open_calls: int) -> AccountView:
        card = None
        if h.get("card_payment_method_id"):
            card = {
                "brand": h.get("card_brand", ""),
                "last4": h.get("card_last4", ""),
                "exp_month": int(h.get("card_exp_month") or 0),
                "exp_year": int(h.get("card_exp_year") or 0),
            }
        pending = h.get("recharge_pending_since_us")
        return cls(
            account_id=account_id,
            balance_micros=int(h["balance"]),
            reserved_micros=int(h["reserved"]),
            seq=int(h["seq"]),
            rate_card=RateCard.from_redis(h),
            max_concurrent_calls=int(h.get("max_concurrent_calls") or 0),
            open_calls=open_calls,
            recharge={
                "enabled": h.get("recharge_enabled") == "1",
                "amount_micros": int(h["recharge_amount_micros"])
                if h.get("recharge_amount_micros")
                else None,
                "threshold_micros": int(h["recharge_threshold_micros"])
                if h.get("recharge_threshold_micros")
                else None,
                "failure_email": h.get("recharge_failure_email") or None,
                "pending": bool(pending),
                "pending_since_us": int(pending) if pending else None,
                "last_failure": h.get("recharge_last_failure") or None,
                "last_failure_at_us": _int_or_none(h.get("recharge_last_failure_at_us")),
                # Only meaningful while a recharge is pending.
                "next_attempt_at_us": _int_or_none(h.get("recharge_next_attempt_at_us"))
                if pending
                else None,
            },
            card=card,
            created_at_us=int(h.get("created_at_us") or 0),
            alerts={
                "low_balance_threshold_micros": int(h.get("alert_low_balance_micros") or 0),
                "email": h.get("alert_email") or None,
                "low_since_us": int(h["alert_low_since_us"])
                if h.get("alert_low_since_us")
                else None,
                "depleted_since_us": int(h["alert_zero_since_us"])
                if h.get("alert_zero_since_us")
                else None,
            },
        )


def _int_or_none(value: str | None) -> int | None:
    return int(value) if value else None


async def create_account(
    store: Store, account_id: str, rate_card: RateCard, max_concurrent_calls: int = 0
) -> tuple[AccountView, bool]:
    """Create an account at zero balance. Returns (account, created); repeating the
    same creation returns the account with created=False, a different one raises."""
    fields.account_id(account_id)
    fields.integer(max_concurrent_calls, "max_concurrent_calls", 0, CONCURRENT_CALLS_MAX)
    keys = store.account_keys(account_id)
    fingerprint = f"{rate_card.fingerprint()};{max_concurrent_calls}"
    pairs: list[Any] = []
    for name, value in rate_card.as_dict().items():
        pairs += [name, value]
    pairs += ["max_concurrent_calls", max_concurrent_calls]
    result = await store.scripts.create_account(
        store.redis,
        [keys.account, keys.shard.accounts],
        [account_id, fingerprint, store.settings.live_channel, *pairs],
    )
    raise_refusal(result, account_id, f"account {account_id}")
    return await get_account(store, account_id), result[1] == 0


async def get_account(store: Store, account_id: str) -> AccountView:
    fields.account_id(account_id)
    keys = store.account_keys(account_id)
    async with store.redis.pipeline(transaction=False) as pipe:
        pipe.hgetall(keys.account)
        pipe.scard(keys.calls)
        stored, open_calls = await pipe.execute()
    if not stored:
        raise UnknownAccount(f"no account {account_id!r}")
    return AccountView.from_redis(account_id, stored, open_calls)


async def account_ids_by_shard(store: Store) -> AsyncIterator[list[str]]:
    """Each non-empty shard's account ids, sorted, one shard at a time (so a
    caller pipelines per shard, which a cluster client serves from one node)."""
    for shard in all_shards(store.settings.shard_count):
        ids = sorted(await store.redis.smembers(shard.accounts))
        if ids:
            yield ids


async def list_accounts(store: Store, accounts_max: int = 100_000) -> list[AccountView]:
    """Every account (the ops view), bounded by accounts_max."""
    views: list[AccountView] = []
    async for ids in account_ids_by_shard(store):
        async with store.redis.pipeline(transaction=False) as pipe:
            for account_id in ids:
                keys = store.account_keys(account_id)
                pipe.hgetall(keys.account)
                pipe.scard(keys.calls)
            answers = await pipe.execute()
        for i, account_id in enumerate(ids):
            if answers[2 * i]:
                views.append(AccountView.from_redis(account_id, answers[2 * i], answers[2 * i + 1]))
            if len(views) >= accounts_max:
                return views
    return views


def token_digest(token: str) -> str:
    """The SHA-256 hex under which a customer token is stored (Redis and Postgres)."""
    return hashlib.sha256(token.encode()).hexdigest()


async def account_for_token(store: Store, token: str) -> str | None:
    """The account a customer token belongs to, or None."""
    if not token or len(token) > TOKEN_LENGTH_MAX:
        return None
    return await account_for_digest(store, token_digest(token))


async def account_for_digest(store: Store, digest: str) -> str | None:
    """The account of the customer token whose SHA-256 (hex) is `digest`, or None."""
    # The lookup is by SHA-256 digest, so its timing says nothing about the token.
    account_id: str | None = await store.redis.get(token_key(digest))
    return account_id
