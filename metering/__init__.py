"""The metering domain: knows nothing of HTTP and never imports `gateway`.

Layers, each importing only those above it:

- `metering` (this package's modules): the core, the hot money path. Settings,
  money and rate cards, the Redis key layout (`keys`), the Lua scripts
  (`lua/`, `scripts`) and their Python faces (`accounts`, `debits`, `credits`,
  `reservations`, `sweeper`), typed errors. Talks to Redis only; imports
  neither `ledger` nor `payments`.
- `metering.ledger`: the durable side in Postgres. The ledger writer, the
  account registry (durable accounts and tokens), activity, lag, reconcile,
  rebuild, migrations.
- `metering.payments`: Stripe. Card on file, pay now, webhooks, automatic
  recharge settings and worker, emails.
- `metering.tools`: the operator's command line (`python -m metering`).
"""
