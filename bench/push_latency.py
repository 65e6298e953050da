"""Push latency and sockets per process: how long from a debit's answer to its
frame on a live websocket, while one gateway process holds many sockets and
one socket never reads.

    python bench/push_latency.py --sockets 1000 --debits 1000
    python bench/push_latency.py --url http://127.0.0.1:8080 --sockets 2000

Without --url it starts its own `python -m gateway` on a free port, with the
METERING_* settings of the environment (METERING_REDIS_URL picks the Redis),
and stops it afterwards. It prints one JSON object.

The sockets are spread over --accounts accounts (default: one each, like
that many customers' dashboards); debits charge the first account, whose
first socket (the "reader") is measured per debit, and the time until every
socket watching it has the frame is measured too. --accounts 1 puts every
socket on the charged account: each debit then fans out to all of them. The
stuck socket (on the charged account) is a raw TCP websocket with a tiny
receive buffer that is never read.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import time
import uuid
from typing import Any

import httpx
from websockets.asyncio.client import ClientConnection, connect

from devkit.testing import RATE_CARD, GatewayProcess, open_stuck_socket
from metering.settings import Settings

CONNECT_BATCH = 100


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return round(ordered[min(len(ordered) - 1, max(0, int(len(ordered) * q) - 1))], 3)


async def run(args: argparse.Namespace) -> dict[str, Any]:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, args.sockets * 2 + 100)), hard))
    switch = {"Authorization": f"Bearer {args.switch_token}"}
    ops = {"Authorization": f"Bearer {args.ops_token}"}
    async with httpx.AsyncClient(base_url=args.url, timeout=30) as http:
        run_id = uuid.uuid4().hex[:8]
        account_ids = [f"bench-live-{run_id}-{i}" for i in range(max(1, args.accounts))]
        for i in range(0, len(account_ids), CONNECT_BATCH):
            for r in await asyncio.gather(
                *(
                    http.post(
                        "/v1/accounts", headers=ops, json={"account_id": a, "rate_card": RATE_CARD}
                    )
                    for a in account_ids[i : i + CONNECT_BATCH]
                )
            ):
                r.raise_for_status()
        account_id = account_ids[0]
        r = await http.post(
            f"/v1/accounts/{account_id}/credits",
            headers=ops,
            json={"credit_id": "bench", "amount_micros": 10_000_000_000, "reason": "bench"},
        )
        r.raise_for_status()
        r = await http.post(
            f"/v1/accounts/{account_id}/tokens", headers=ops, json={"label": "bench"}
        )
        token = r.json()["token"]
        path = f"/v1/accounts/{account_id}/live?token={token}"
        ws_base = args.url.replace("http://", "ws://")

        def ws_url(i: int) -> str:
            # Socket i watches account i mod accounts; the others use the ops token.
            if i % len(account_ids) == 0:
                return ws_base + path
            return (
                f"{ws_base}/v1/accounts/{account_ids[i % len(account_ids)]}/live?token="
                f"{args.ops_token}"
            )

        port = int(args.url.rsplit(":", 1)[1])
        stuck = open_stuck_socket(port, path) if args.stuck else None
        sockets: list[ClientConnection] = []
        t0 = time.perf_counter()
        for i in range(0, args.sockets, CONNECT_BATCH):
            batch = await asyncio.gather(
                *(
                    connect(ws_url(j), max_queue=None, ping_interval=None)
                    for j in range(i, min(i + CONNECT_BATCH, args.sockets))
                )
            )
            for ws in batch:
                snapshot = json.loads(await ws.recv())["account"]
                if snapshot["account_id"] == account_id:
                    base_seq = snapshot["seq"]
            sockets.extend(batch)
        watching = [ws for i, ws in enumerate(sockets) if i % len(account_ids) == 0]
        connect_s = time.perf_counter() - t0
        held = (await http.get("/healthz")).json().get("live_sockets")

        arrivals: list[dict[int, float]] = [{} for _ in watching]
        done = [asyncio.Event() for _ in range(args.debits + 1)]
        counts = [0] * (args.debits + 1)
        first_seq = [base_seq]  # nothing else charges this account

        async def read(i: int, ws: ClientConnection) -> None:
            async for raw in ws:
                frame = json.loads(raw)
                seq = frame.get("seq", 0)
                arrivals[i][seq] = time.perf_counter()
                k = seq - first_seq[0] if first_seq else -1
                if 0 <= k <= args.debits:
                    counts[k] += 1
                    if counts[k] == len(watching):
                        done[k].set()

        answered_at: list[float] = []
        seqs: list[int] = []
        readers = [asyncio.create_task(read(i, ws)) for i, ws in enumerate(watching)]
        for n in range(args.debits):
            r = await http.post(
                "/v1/messages",
                headers=switch,
                json={"account_id": account_id, "message_id": f"m{n}", "direction": "outbound"},
            )
            answered = time.perf_counter()
            r.raise_for_status()
            seq = r.json()["seq"]
            seqs.append(seq)
            answered_at.append(answered)
            await asyncio.wait_for(done[seq - first_seq[0]].wait(), 30)
        for task in readers:
            task.cancel()
        reader_ms = [
            max(0.0, arrivals[0][s] - a) * 1000 for s, a in zip(seqs, answered_at, strict=True)
        ]
        all_ms = [
            max(0.0, max(arr[s] for arr in arrivals) - a) * 1000
            for s, a in zip(seqs, answered_at, strict=True)
        ]
        for ws in sockets:
            await ws.close()
        if stuck is not None:
            stuck.close()
    return {
        "sockets_requested": args.sockets,
        "sockets_held_by_one_process": held,
        "accounts": len(account_ids),
        "sockets_watching_the_charged_account": len(watching),
        "connect_s": round(connect_s, 2),
        "stuck_socket": bool(args.stuck),
        "debits": args.debits,
        "push_ms_one_socket": {
            "p50": percentile(reader_ms, 0.5),
            "p99": percentile(reader_ms, 0.99),
            "max": round(max(reader_ms), 3),
        },
        "push_ms_every_socket": {
            "p50": percentile(all_ms, 0.5),
            "p99": percentile(all_ms, 0.99),
            "max": round(max(all_ms), 3),
        },
        "note": "debit answered -> frame received; every_socket waits for the last of them, "
        "all read by this one client process",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", help="a running gateway; default: start one")
    parser.add_argument("--sockets", type=int, default=1_000)
    parser.add_argument("--debits", type=int, default=1_000)
    parser.add_argument(
        "--accounts",
        type=int,
        default=0,
        help="accounts the sockets watch (default: one per socket)",
    )
    parser.add_argument(
        "--no-stuck",
        dest="stuck",
        action="store_false",
        help="leave out the socket that never reads",
    )
    parser.add_argument(
        "--switch-token", default=os.environ.get("METERING_SWITCH_TOKEN", "dev-switch-token")
    )
    parser.add_argument(
        "--ops-token", default=os.environ.get("METERING_OPS_TOKEN", "dev-ops-token")
    )
    args = parser.parse_args()
    args.accounts = args.accounts or args.sockets
    gateway = None
    if not args.url:
        # The configured servers and tokens (METERING_*), one worker on a free port;
        # every socket comes from this one address, many on one customer token.
        gateway = GatewayProcess(
            Settings.from_env().replace(
                workers=1,
                http_connections_per_client_max=0,
                live_sockets_per_token_max=args.sockets + 1,
                live_sockets_per_account_max=args.sockets + 1,
            )
        )
        args.url = gateway.url
    try:
        print(json.dumps(asyncio.run(run(args)), indent=2))
    finally:
        if gateway is not None:
            gateway.stop()


if __name__ == "__main__":
    main()
