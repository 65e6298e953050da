"""Money is an integer number of micro-units: 1 USD = 1,000,000 micros.

The Lua scripts do the arithmetic on the live path; they run on Lua doubles,
which are exact for integers below 2**53, so every amount is bounded well
below that here and checked again in the scripts.
"""

from __future__ import annotations

MICROS_PER_USD = 1_000_000
# Balances stay below 1e15 micros (1 billion USD): far inside 2**53 even after
# a multiplication by 60 in per-minute pricing is bounded (see lua/_lib.lua).
BALANCE_MICROS_MAX = 10**15
# One credit, payment or recharge: at most 10 million USD.
CREDIT_MICROS_MAX = 10**13
# One price on a rate card: at most 1,000 USD per item or per minute.
PRICE_MICROS_MAX = 10**9


def usd(amount_usd: int) -> int:
    """Whole dollars to micros (for defaults and tests; never for parsing input)."""
    return amount_usd * MICROS_PER_USD


def format_usd(amount_micros: int) -> str:
    """`12345678` -> `'$12.345678'` for messages; exact, no floats."""
    sign = "-" if amount_micros < 0 else ""
    whole, frac = divmod(abs(amount_micros), MICROS_PER_USD)
    text = f"{whole}.{frac:06d}".rstrip("0")
    if text.endswith("."):
        text += "00"
    elif len(text.split(".")[1]) == 1:
        text += "0"
    return f"{sign}${text}"
