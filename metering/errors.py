"""Typed errors of the domain. The gateway maps each to an HTTP status in one
table (gateway/errors.py); the Lua scripts return the `code` strings below."""

from __future__ import annotations

from typing import Any


class MeteringError(Exception):
    """Base: `code` is stable and machine-readable, the message is for people."""

    code = "error"

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.details = details


class InvalidRequest(MeteringError):
    code = "invalid_request"

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message, field=field)
        self.field = field


class UnknownAccount(MeteringError):
    code = "unknown_account"


class UnknownToken(MeteringError):
    code = "unknown_token"


class AccountExists(MeteringError):
    code = "account_exists"


class InsufficientFunds(MeteringError):
    code = "insufficient_funds"


class IdempotencyConflict(MeteringError):
    code = "idempotency_conflict"


class UnknownCall(MeteringError):
    code = "unknown_call"


class CallClosed(MeteringError):
    code = "call_closed"


class ConcurrentCallLimit(MeteringError):
    code = "concurrent_call_limit"


class CallExtendLimit(MeteringError):
    code = "call_extend_limit"


class CallDurationLimit(MeteringError):
    """The call's grant already reaches METERING_CALL_DURATION_S_MAX: no extend can
    add to it, whatever the balance."""

    code = "call_duration_limit"


class BalanceLimit(MeteringError):
    code = "balance_limit"


class LedgerBacklogFull(MeteringError):
    """The shard's ledger stream holds too many entries not yet in Postgres."""

    code = "ledger_backlog_full"


class UnknownNumber(MeteringError):
    """The account does not hold the phone number named."""

    code = "unknown_number"


class NumberSuspended(MeteringError):
    """The number's renewal could not be paid: calls and texts naming it are refused."""

    code = "number_suspended"


class Unavailable(MeteringError):
    """A dependency (Redis, Postgres, Stripe) did not answer."""

    code = "unavailable"


class DatabaseNotMigrated(Unavailable):
    """The Postgres database lacks tables this version needs: an operator must run
    the migrations (the message names the command)."""

    code = "database_not_migrated"


def raise_refusal(result: list[Any], account_id: str, subject: str = "") -> None:
    """Turn a script's refusal code into the typed error; return if it said 'ok'."""
    status = result[0]
    if status == "ok":
        return
    if status == "insufficient_funds":
        cost, available = int(result[2]), int(result[3])
        raise InsufficientFunds(
            f"account {account_id} has {available} micros available; {subject} needs {cost}",
            cost_micros=cost,
            available_micros=available,
        )
    if status == "unknown_account":
        raise UnknownAccount(f"no account {account_id!r}")
    if status == "idempotency_conflict":
        raise IdempotencyConflict(
            f"{subject} was already used with a different request body; "
            "a retry must repeat the first body exactly"
        )
    if status == "account_exists":
        raise AccountExists(
            f"account {account_id} already exists with another rate card or settings"
        )
    if status == "unknown_call":
        raise UnknownCall(f"no call {subject!r} on account {account_id}")
    if status == "call_closed":
        raise CallClosed(f"call {subject!r} is already {result[2]}", state=result[2])
    if status == "concurrent_call_limit":
        raise ConcurrentCallLimit(
            f"account {account_id} already has its limit of {result[2]} concurrent calls",
            limit=int(result[2]),
        )
    if status == "call_extend_limit":
        raise CallExtendLimit(f"call {subject!r} reached the limit of {result[2]} extensions")
    if status == "call_duration_limit":
        raise CallDurationLimit(
            f"call {subject!r} already has the longest grant a call may have "
            f"({result[2]} seconds); it cannot be extended",
            limit_seconds=int(result[2]),
        )
    if status == "balance_limit":
        raise BalanceLimit(
            f"the credit would take account {account_id} above the balance limit "
            f"of {result[2]} micros"
        )
    if status == "unknown_number":
        raise UnknownNumber(
            f"account {account_id} holds no phone number {result[2]}", number=result[2]
        )
    if status == "number_suspended":
        raise NumberSuspended(
            f"number {result[2]} of account {account_id} is suspended: its renewal could not "
            "be paid; add funds and it is renewed at the next retry",
            number=result[2],
        )
    if status == "ledger_backlog_full":
        raise LedgerBacklogFull(
            "the ledger writer is behind; charges are paused until it catches up"
        )
    raise AssertionError(f"unexpected script answer {result!r}")


# ---- payments ----


class CardDeclined(MeteringError):
    """Stripe refused the charge; nothing was credited. The message says why."""

    code = "card_declined"


class AuthenticationRequired(MeteringError):
    """The bank asks the customer to confirm the payment (3-D Secure). Nothing is
    charged yet: the browser confirms it with Stripe.js (confirmCardPayment and
    the client_secret in the answer), then sends the same payment again."""

    code = "authentication_required"


class NoCardOnFile(MeteringError):
    code = "no_card_on_file"


class PaymentFailed(MeteringError):
    """A payment id already used for a payment that failed: use a new id to try again."""

    code = "payment_failed"


class UnknownReceipt(MeteringError):
    """No such payment or recharge attempt on this account."""

    code = "unknown_receipt"


class WebhookRejected(MeteringError):
    """A Stripe webhook with a bad or missing signature or a stale timestamp."""

    code = "webhook_rejected"


class ChargeMismatch(MeteringError):
    """A Stripe charge that does not match the payment it names (another amount,
    kind or PaymentIntent): nothing is credited."""

    code = "charge_mismatch"
