"""The durable ledger in Postgres: the writer that moves entries from the shard
streams into `ledger_entries`, the account registry (durable accounts and
customer tokens, written before Redis), activity queries, lag, reconcile and
rebuild, the connection pool and the migrations.

Imports the core (`metering.*` modules); never `metering.payments` or `gateway`.
"""
