"""Operating the service: the status report (ledger lag, worker heartbeats,
recharge backlog, versions), readiness, the figures /metrics computes when
scraped, and the continuous reconcile. Above the ledger, payments, numbers and
notify layers (it reads from all of them); the gateway and the command line use it.
"""
