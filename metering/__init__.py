"""The metering domain core: money, rates, Lua scripts and their Python faces,
ledger, recharge, payments, notifications, settings. Knows nothing of HTTP."""
