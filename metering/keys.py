"""Where everything lives in Redis.

An account belongs to one of `shard_count` shards by a stable hash of its id.
All keys of an account, and its shard's ledger, recharge and expiry keys, carry
the shard's hash tag `{sNNN}`, so every script touches one hash slot and runs
unchanged on Redis Cluster.

    m:{s042}:a:<account_id>          hash   balance, reserved, seq, rate card, recharge settings
    m:{s042}:calls:<account_id>      set    open call ids of the account
    m:{s042}:c:<account_id>:<call>   hash   one call's reservation and its answers
    m:{s042}:i:<account_id>:<kind>:<request_id>  string  first answer of a one-shot request
    m:{s042}:i:<account_id>:charge:<payment_intent>  string  the credit of one Stripe charge
                                            (never expires; rebuild restores it from the ledger)
    m:{s042}:accounts                set    account ids of the shard
    m:{s042}:ledger                  stream ledger entries not yet trimmed (see ledger_entries)
    m:{s042}:recharge                stream recharge requests (see payments/recharge_worker.py)
    m:{s042}:expiry                  zset   "<account_id>|<call_id>" scored by expiry in ms
                                            (written by lua/_lib.lua's expiry_member)
    m:{s042}:n:<account_id>          hash   numbers the account holds -> 'active' | 'suspended'
    m:{s042}:numbers                 stream purchases and switch renewals for the number scheduler
                                            (see numbers/intake.py)
    m:{s042}:events                  stream account events: low balance, payments (see events.py)
    m:{s042}:spend:<bucket>          hash   account id -> micros spent in the bucket (burn.py)
    m:token:<sha256 hex>             string account id of a customer token
    m:workers                        hash   "<kind>/<name>" -> JSON heartbeat of a worker
                                            (see heartbeats.py)
    m:reconcile:last                 string JSON summary of the continuous reconcile's
                                            last complete pass
    m:ledger_checked                 string the run id of the Redis server whose data the
                                            ledger check last brought in line with Postgres
                                            (see restart_fence.py)
"""

from __future__ import annotations

import functools
import zlib

PREFIX = "m:"
# Which Redis lifetime (server run id) the ledger check ran against.
LEDGER_CHECKED_KEY = PREFIX + "ledger_checked"


def shard_of(account_id: str, shard_count: int) -> int:
    """The account's shard: CRC-32 of its id, stable across processes and versions."""
    return zlib.crc32(account_id.encode()) % shard_count


def shard_tag(shard: int) -> str:
    return f"{{s{shard:03d}}}"


class ShardKeys:
    """The keys shared by all accounts of one shard."""

    __slots__ = ("shard", "tag", "accounts", "ledger", "recharge", "expiry", "numbers", "events")

    def __init__(self, shard: int) -> None:
        self.shard = shard
        self.tag = shard_tag(shard)
        base = PREFIX + self.tag
        self.accounts = base + ":accounts"
        self.ledger = base + ":ledger"
        self.recharge = base + ":recharge"
        self.expiry = base + ":expiry"
        self.numbers = base + ":numbers"
        self.events = base + ":events"

    def spend(self, bucket: int) -> str:
        """The spend counters of one time bucket (metering/burn.py)."""
        return f"{PREFIX}{self.tag}:spend:{bucket}"


@functools.lru_cache(maxsize=16_384)  # at most METERING_SHARD_COUNT's bound of shards
def shard_keys(shard: int) -> ShardKeys:
    """One shard's keys, built once per process (every request names its shard's)."""
    return ShardKeys(shard)


class AccountKeys:
    """The keys of one account (all in its shard's slot)."""

    __slots__ = ("account_id", "shard", "account", "calls", "numbers", "_base")

    def __init__(self, account_id: str, shard_count: int) -> None:
        self.account_id = account_id
        self.shard = shard_keys(shard_of(account_id, shard_count))
        self._base = PREFIX + self.shard.tag
        self.account = f"{self._base}:a:{account_id}"
        self.calls = f"{self._base}:calls:{account_id}"
        self.numbers = f"{self._base}:n:{account_id}"

    def call(self, call_id: str) -> str:
        return f"{self._base}:c:{self.account_id}:{call_id}"

    def request(self, kind: str, request_id: str) -> str:
        return f"{self._base}:i:{self.account_id}:{kind}:{request_id}"

    def charge_credit(self, payment_intent_id: str) -> str:
        """The first answer of the credit of one Stripe charge (kept forever)."""
        return self.request("charge", payment_intent_id)

    def call_keys(self, call_id: str) -> list[str]:
        """The keys every call script starts with: account, call, open calls, expiry."""
        return [self.account, self.call(call_id), self.calls, self.shard.expiry]


def all_shards(shard_count: int) -> list[ShardKeys]:
    return [ShardKeys(shard) for shard in range(shard_count)]


def split_expiry_member(member: str) -> tuple[str, str]:
    """(account_id, call_id) of an expiry zset member; account ids hold no '|'."""
    account_id, _, call_id = member.partition("|")
    return account_id, call_id


def token_key(token_sha256_hex: str) -> str:
    return f"{PREFIX}token:{token_sha256_hex}"


def workers_key() -> str:
    """The workers' heartbeats (metering/heartbeats.py); no hash tag: one key."""
    return f"{PREFIX}workers"


def reconcile_summary_key() -> str:
    return f"{PREFIX}reconcile:last"
