"""A ledger entry in the customer's words: what it was, from its item and the
detail the script wrote (metering/ledger_entries.py). The pages show these;
nothing here decides money.

    "duration_s=150 billed_s=156" (call_outbound)
        Outgoing call, 2 min 30 s (billed 2 min 36 s)
    "expired billed_s=300" (call_inbound)
        Incoming call, 5 min charged: its end was never reported
    "+15550100" (number_purchase)       Phone number purchase: +15550100
    "pay_now: card payment pi_..."      Payment by card
    "automatic_recharge: ..."           Automatic recharge by card
    "ops_credit: goodwill"              Credit by support: goodwill
"""

from __future__ import annotations

import re

# Totals per billing item on the dashboard, in the product's words.
ITEM_NAMES: dict[str, str] = {
    "call_outbound": "Outgoing calls",
    "call_inbound": "Incoming calls",
    "sms_outbound": "Outgoing text messages",
    "sms_inbound": "Incoming text messages",
    "ring_through_attempt": "Ring-through connection attempts",
    "number_purchase": "Phone number purchases",
    "number_renewal": "Phone number renewals",
    "funds_added": "Funds added",
}
ONE = {
    "sms_outbound": "Outgoing text message",
    "sms_inbound": "Incoming text message",
    "ring_through_attempt": "Ring-through connection attempt",
    "number_purchase": "Phone number purchase",
    "number_renewal": "Phone number renewal",
}
CALLS = {"call_outbound": "Outgoing call", "call_inbound": "Incoming call"}
CREDIT_SOURCES = {
    "pay_now": "Payment by card",
    "automatic_recharge": "Automatic recharge by card",
    "ops_credit": "Credit by support",
}
SECONDS = re.compile(r"(duration_s|billed_s)=(\d+)")
PHONE = re.compile(r"\+?[0-9]{3,20}")


def duration_words(seconds: int) -> str:
    """150 -> '2 min 30 s'; 3600 -> '1 h'; 0 -> '0 s'."""
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    parts = [f"{hours} h"] if hours else []
    if minutes:
        parts.append(f"{minutes} min")
    if secs or not parts:
        parts.append(f"{secs} s")
    return " ".join(parts)


# An operator's correction (python -m metering adjust): its words and its reason.
ADJUSTMENTS = {
    "adjustment_added": "Balance adjustment (added)",
    "adjustment_taken": "Balance adjustment (taken)",
}


def describe(item: str, detail: str) -> str:
    """One activity line's words."""
    if item in CALLS:
        return _call(CALLS[item], detail)
    if item in ADJUSTMENTS:
        reason = detail.partition(":")[2].strip()
        return f"{ADJUSTMENTS[item]}: {reason}" if reason else ADJUSTMENTS[item]
    if item == "funds_added":
        source, _, reason = detail.partition(":")
        words = CREDIT_SOURCES.get(source.strip())
        if words is None:
            return "Funds added"
        reason = reason.strip()
        if source.strip() == "ops_credit" and reason:
            return f"{words}: {reason}"
        return words
    words = ONE.get(item, item.replace("_", " ").capitalize())
    number = PHONE.search(detail) if item.startswith("number_") else None
    return f"{words}: {number.group(0)}" if number else words


def _call(words: str, detail: str) -> str:
    seconds = {name: int(value) for name, value in SECONDS.findall(detail)}
    billed = seconds.get("billed_s")
    if detail.startswith("expired") and billed is not None:
        return f"{words}, {duration_words(billed)} charged: its end was never reported"
    duration = seconds.get("duration_s")
    if duration is None:
        return words
    text = f"{words}, {duration_words(duration)}"
    if billed is not None and billed != duration:
        text += f" (billed {duration_words(billed)})"
    if "capped" in detail.split():
        text += ", charge limited to the balance"
    return text
