"""The benchmark harness: `python -m bench` (see bench/README.md).

It starts what it measures (its own redis-server, gateway processes, a bare
Starlette app, its own Postgres database), drives each with a load generator in
a separate process, and stops exactly what it started.
"""
