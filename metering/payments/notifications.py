"""Email over SMTP (aiosmtplib): the automatic recharge's failure notice and its
receipt, each with a link to the record (metering/payments/receipts.py)."""

from __future__ import annotations

from email.message import EmailMessage

import aiosmtplib

from metering.money import format_usd
from metering.settings import Settings


def recharge_failure_message(
    settings: Settings,
    to: str,
    account_id: str,
    amount_micros: int,
    reason: str,
    next_attempt: str,
    link: str = "",
) -> EmailMessage:
    """The notice: which account, how much, why, what happens next, and the link to
    the attempt's record."""
    message = EmailMessage()
    message["From"] = settings.smtp_sender
    message["To"] = to
    message["Subject"] = f"Automatic recharge failed for account {account_id}"
    message.set_content(
        f"The automatic recharge of {format_usd(amount_micros)} for account {account_id} "
        f"failed.\n\n"
        f"Account: {account_id}\n"
        f"Amount: {format_usd(amount_micros)} ({amount_micros} micros)\n"
        f"Reason: {reason}\n"
        f"Next attempt: {next_attempt}\n\n"
        "Replace the card on file or add funds from the billing page to keep the "
        "account able to make and receive calls and texts.\n"
        + (f"\nThe attempt's record: {link}\n" if link else "")
    )
    return message


def recharge_receipt_message(
    settings: Settings, to: str, account_id: str, amount_micros: int, card: str, link: str
) -> EmailMessage:
    """An automatic recharge succeeded: what was charged to which card, and the receipt."""
    message = EmailMessage()
    message["From"] = settings.smtp_sender
    message["To"] = to
    message["Subject"] = (
        f"Automatic recharge of {format_usd(amount_micros)} for account {account_id}"
    )
    message.set_content(
        f"Your balance fell below your recharge threshold, so {format_usd(amount_micros)} "
        f"was charged to your {card} and added to account {account_id}.\n\n"
        f"Receipt: {link}\n"
    )
    return message


async def send_email(settings: Settings, message: EmailMessage) -> None:
    """Send one message; raises aiosmtplib.SMTPException or OSError on failure."""
    await aiosmtplib.send(
        message,
        hostname=settings.smtp_host,
        port=settings.smtp_port,
        timeout=settings.smtp_timeout_s,
        start_tls=False,
        use_tls=False,
    )
