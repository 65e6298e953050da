"""The simulation that hunts money bugs: model-based runs against the real
gateway, Redis, Postgres, ledger writer, recharge worker and local Stripe, with
time, retries, faults and hostile input. `python -m sim --help`."""
