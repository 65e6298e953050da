"""Money from cards, through Stripe: the card on file, pay now, Stripe webhooks,
automatic recharge (settings and the worker) and the emails it sends.

Imports the core and `metering.ledger` (the Postgres pool); never `gateway`.
"""
