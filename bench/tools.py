"""Running the load tools, each in its own process, and reading their figures.

- wrk (Debian's package) for closed-loop HTTP throughput over keep-alive
  connections, with bench/wrk_debit.lua making every message id unique;
- redis-benchmark for the same EVALSHA the Python client makes;
- bench/loadgen.py (Python, uvloop) for the open-loop latency runs, the call
  cycles and the Python-client EVALSHA ceiling.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import orjson

from devkit.testing import ROOT

WRK_SCRIPT = Path(__file__).resolve().parent / "wrk_debit.lua"
WRK_TIMEOUT_S = "5s"
TOOL_GRACE_S = 60
# redis-benchmark reads -r with atoi: stay below 2^31.
RANDOM_KEYSPACE = 1_000_000_000


class ToolMissing(RuntimeError):
    """A load tool from the distribution is not installed."""


def _run(argv: list[str], timeout_s: float) -> str:
    done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=timeout_s)
    if done.returncode != 0:
        raise RuntimeError(f"{argv[0]} exited {done.returncode}: {done.stderr.strip()[-500:]}")
    return done.stdout


def wrk(
    url: str,
    path: str,
    token: str,
    accounts: int,
    connections: int,
    seconds: int,
    batch: int = 0,
) -> dict[str, Any]:
    """Closed loop: `connections` keep-alive connections on one wrk thread for `seconds`
    (bench/loadgen.py's closed loop if wrk is not installed); with `batch`, each
    request is a POST /v1/debit-batches of that many texts."""
    if shutil.which("wrk") is None:
        if batch:
            raise ToolMissing("wrk is not installed (apt-get install wrk): needed for batches")
        # Slower than wrk (it may saturate first), but the harness still runs.
        host, _, port = url.removeprefix("http://").partition(":")
        return loadgen(
            {
                "mode": "debit-closed",
                "host": host,
                "port": int(port),
                "path": path,
                "token": token,
                "accounts": accounts,
                "concurrency": connections,
                "seconds": seconds,
            },
            seconds,
        )
    out = _run(
        [
            "wrk",
            "-t1",
            f"-c{connections}",
            f"-d{seconds}s",
            f"--timeout={WRK_TIMEOUT_S}",
            "-s",
            str(WRK_SCRIPT),
            url,
            "--",
            path,
            str(accounts),
            token,
            uuid.uuid4().hex[:8],
            str(batch),
        ],
        seconds + TOOL_GRACE_S,
    )
    line = next(x for x in out.splitlines() if x.startswith("BENCH_JSON "))
    raw = orjson.loads(line[len("BENCH_JSON ") :])
    seconds_measured = raw["duration_us"] / 1e6
    errors = sum(raw[k] for k in raw if k.startswith("errors_"))
    answered = raw["requests"] - raw["errors_status"]
    figures = {
        "tool": "wrk",
        "mode": "closed",
        "concurrency": connections,
        "requests": raw["requests"],
        "errors": errors,
        "seconds": round(seconds_measured, 3),
        # Answers that were not 2xx are errors, not throughput.
        "throughput_rps": round(answered / seconds_measured, 1),
        "p50_ms": raw["p50_us"] / 1000,
        "p99_ms": raw["p99_us"] / 1000,
        "p999_ms": raw["p999_us"] / 1000,
        "max_ms": raw["max_us"] / 1000,
    }
    if batch:
        # Throughput in debits (texts) per second; latencies are per request.
        figures["batch"] = batch
        figures["requests_per_s"] = figures["throughput_rps"]
        figures["throughput_rps"] = round(answered * batch / seconds_measured, 1)
    return figures


def loadgen(config: dict[str, Any], timeout_s: float) -> dict[str, Any]:
    """bench/loadgen.py in its own process; returns its figures."""
    out = _run(
        [sys.executable, "-m", "bench.loadgen", orjson.dumps(config).decode()],
        timeout_s + TOOL_GRACE_S,
    )
    result: dict[str, Any] = orjson.loads(out.strip().splitlines()[-1])
    result["tool"] = "bench.loadgen"
    result["mode"] = "open" if "rate_rps" in config else "closed"
    if "concurrency" in config:
        result["concurrency"] = config["concurrency"]
    return result


_PERCENTILE = re.compile(r"^\s*([\d.]+)% <= ([\d.]+) milliseconds", re.M)


def redis_benchmark(
    port: int, command: list[str], connections: int, requests: int, timeout_s: float
) -> dict[str, Any]:
    """`requests` commands over `connections` connections; __rand_int__ in an
    argument becomes a random number below RANDOM_KEYSPACE on every call, so
    request ids are unique but for rare birthday collisions (replays)."""
    if shutil.which("redis-benchmark") is None:
        raise ToolMissing("redis-benchmark is not installed (apt-get install redis-tools)")
    out = _run(
        [
            "redis-benchmark",
            "-h",
            "127.0.0.1",
            "-p",
            str(port),
            "-c",
            str(connections),
            "-n",
            str(requests),
            "-r",
            str(RANDOM_KEYSPACE),
            "--precision",
            "3",
            *command,
        ],
        timeout_s + TOOL_GRACE_S,
    )
    if "Error from server" in out:
        raise RuntimeError("redis-benchmark: " + out[out.index("Error from server") :][:300])
    rps_match = re.search(r"throughput summary: ([\d.]+) requests per second", out)
    table_match = re.search(r"avg\s+min\s+p50\s+p95\s+p99\s+max\s*\n\s*([\d.\s]+)", out)
    if rps_match is None or table_match is None:
        raise RuntimeError("redis-benchmark printed no summary: " + out[-300:])
    rps = float(rps_match.group(1))
    table = table_match.group(1).split()
    avg, _min, p50, _p95, p99, max_ms = map(float, table[:6])
    p999 = max_ms
    for pct, ms in _PERCENTILE.findall(out):
        if float(pct) >= 99.9:
            p999 = float(ms)
            break
    return {
        "tool": "redis-benchmark",
        "mode": "closed",
        "concurrency": connections,
        "requests": requests,
        "errors": 0,
        "throughput_rps": rps,
        "p50_ms": p50,
        "p99_ms": p99,
        "p999_ms": p999,
        "max_ms": max_ms,
    }
