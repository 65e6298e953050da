"""The emails the notifier sends from account events: one per low-balance
crossing, one when the balance reaches zero (with what is blocked), one when a
number is suspended (its first failed renewal) and one when it is released."""

from __future__ import annotations

import datetime
from email.message import EmailMessage
from typing import Any

from metering.money import format_usd
from metering.notify.outbox import AccountEvent
from metering.settings import Settings

BLOCKED = (
    "Until funds are added, this account can no longer:\n"
    "  - make or receive phone calls,\n"
    "  - buy phone numbers or renew the ones it holds (a number whose renewal cannot\n"
    "    be paid is suspended, and released after the grace period),\n"
    "  - send or receive text messages.\n"
)


def when(at_us: Any) -> str:
    if not isinstance(at_us, int):
        return "unknown"
    moment = datetime.datetime.fromtimestamp(at_us / 1_000_000, datetime.UTC)
    return moment.isoformat(timespec="seconds").replace("+00:00", " UTC")


def _numbers_line(numbers: dict[str, str]) -> str:
    if not numbers:
        return ""
    listed = ", ".join(f"{n} ({status})" for n, status in sorted(numbers.items()))
    return f"\nPhone numbers this account holds: {listed}.\n"


def event_message(
    settings: Settings, to: str, event: AccountEvent, numbers: dict[str, str]
) -> EmailMessage:
    """The email for one event (only for types where AccountEvent.sends_email)."""
    d, account = event.data, event.account_id
    if event.type == "balance.low":
        subject = f"Low balance on account {account}"
        text = (
            f"The balance of account {account} fell below your alert threshold of "
            f"{format_usd(d['threshold_micros'])} at {when(event.at_us)}: it is now "
            f"{format_usd(d['balance_micros'])}.\n\n"
            "Add funds from the billing page to keep calls, texts and numbers working.\n"
        )
    elif event.type == "balance.depleted":
        subject = f"Account {account} has no balance left"
        text = (
            f"The balance of account {account} reached {format_usd(d['balance_micros'])} "
            f"at {when(event.at_us)}.\n\n{BLOCKED}{_numbers_line(numbers)}\n"
            "Add funds from the billing page to unblock it.\n"
        )
    elif event.type == "number.renewal_failed":
        subject = f"Phone number {d['number']} suspended: its renewal could not be paid"
        text = (
            f"The renewal of {d['number']} on account {account} "
            f"({format_usd(d.get('cost_micros') or 0)}) could not be paid: the available "
            f"balance is {format_usd(d.get('available_micros') or 0)}.\n\n"
            f"The number is suspended: calls and texts to and from it are refused.\n"
            f"Next attempt: {when(d.get('next_attempt_at_us'))}.\n"
            f"If it is still unpaid at {when(d.get('release_at_us'))}, the number is released "
            "and the account no longer holds it.\n\nAdd funds to keep it.\n"
        )
    elif event.type == "number.released":
        subject = f"Phone number {d['number']} released"
        text = (
            f"The phone number {d['number']} was released from account {account} at "
            f"{when(d.get('released_at_us'))}: {d.get('reason', '')}.\n"
            "The account no longer holds it.\n"
        )
    else:
        raise ValueError(f"no email for {event.type}")
    message = EmailMessage()
    message["From"] = settings.smtp_sender
    message["To"] = to
    message["Subject"] = subject
    message["X-Metering-Event-Id"] = event.event_id
    message.set_content(text)
    return message
