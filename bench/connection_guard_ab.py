"""What the read deadlines and the per-address cap cost a debit: the gateway
served with gateway/connection_guard.py's protocol, then with uvicorn's plain
httptools protocol, alternately, `--rounds` times; each run is wrk (32
keep-alive connections, one hot account, `--seconds`) against one process on a
private redis-server, and reports the server's CPU per request (utime + stime
from /proc, steadier than req/s on a shared machine).

    python -m bench.connection_guard_ab --rounds 4 --seconds 6
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import uuid

import httpx

from devkit.testing import (
    RATE_CARD,
    ROOT,
    RedisServer,
    free_port,
    settings_env,
    stop_process,
    wait_for_http,
)
from metering.settings import Settings

SERVE = """
import sys, uvicorn
from gateway.__main__ import server_options
from gateway.workers import configure_logging
from metering.settings import Settings
settings = Settings.from_env()
configure_logging(settings.log_level)
options = server_options(settings)
if sys.argv[1] == "plain":
    options.update(http="httptools", ws="auto")
uvicorn.run("gateway.app:app_from_env", factory=True, **options)
"""


def cpu_s(pid: int) -> float:
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def one_run(settings: Settings, variant: str, seconds: int) -> dict[str, float]:
    port = free_port()
    env = settings_env(settings.replace(port=port, host="127.0.0.1", workers=1))
    proc = subprocess.Popen([sys.executable, "-c", SERVE, variant], cwd=ROOT, env=env)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_for_http(url + "/healthz", proc=proc)
        ops = {"Authorization": f"Bearer {settings.ops_token}"}
        httpx.post(
            f"{url}/v1/accounts",
            headers=ops,
            json={"account_id": "bench-hot", "rate_card": RATE_CARD},
        )
        httpx.post(
            f"{url}/v1/accounts/bench-hot/credits",
            headers=ops,
            json={"credit_id": uuid.uuid4().hex, "amount_micros": 10**12, "reason": "bench"},
        ).raise_for_status()
        before = cpu_s(proc.pid)
        out = subprocess.run(
            [
                "wrk",
                "-t1",
                "-c32",
                f"-d{seconds}s",
                "-s",
                str(ROOT / "bench" / "wrk_debit.lua"),
                url,
                "--",
                "/v1/messages",
                "1",
                settings.switch_token,
                uuid.uuid4().hex[:8],
            ],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        used = cpu_s(proc.pid) - before
        line = next(x for x in out.splitlines() if x.startswith("BENCH_JSON"))
        figures = json.loads(line.split(" ", 1)[1])
        requests = figures["requests"]
        assert figures["errors_status"] == 0, figures
        return {
            "req_s": round(requests / (figures["duration_us"] / 1e6)),
            "cpu_us_per_req": round(used / requests * 1e6, 1),
            "p50_ms": figures["p50_us"] / 1000,
        }
    finally:
        stop_process(proc)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--seconds", type=int, default=6)
    parser.add_argument(
        "--database-url",
        default=os.environ.get("METERING_DATABASE_URL", Settings.database_url),
    )
    args = parser.parse_args()
    redis = RedisServer()
    try:
        settings = Settings.from_env({}).replace(
            redis_url=redis.url,
            database_url=args.database_url,
            switch_token="bench-switch",
            ops_token="bench-ops",
            live_channel="m:live:guard-ab",
            http_connections_per_client_max=0,
        )
        runs: dict[str, list[dict[str, float]]] = {"guarded": [], "plain": []}
        for _ in range(args.rounds):
            for variant in runs:
                figures = one_run(settings, variant, args.seconds)
                runs[variant].append(figures)
                print(variant, figures, flush=True)
        print(
            json.dumps(
                {v: statistics.median(r["cpu_us_per_req"] for r in rs) for v, rs in runs.items()}
                | {"load_average": os.getloadavg()[0]}
            )
        )
    finally:
        redis.stop()


if __name__ == "__main__":
    main()
