"""The mutation check: deliberate money bugs, each applied alone to a scratch copy
of this tree (never committed, never in a checkout anyone uses), then the CI
profile run against it. A mutation the simulation does not catch is a gap in the
simulation.

    python -m sim.mutations                   # every mutation, seed 1
    python -m sim.mutations credit_short_ttl --seed 7

Each copy is `git archive HEAD` of this repository, unpacked in a temporary
folder and edited there; its processes (gateways, workers) run from that folder.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from devkit.testing import ROOT


@dataclasses.dataclass(frozen=True)
class Mutation:
    name: str
    what: str
    edits: tuple[tuple[str, str, str], ...]  # (file, old text, new text)


MUTATIONS = (
    Mutation(
        "debit_no_available_check",
        "the debit's available check removed",
        (
            (
                "metering/lua/debit.lua",
                "if balance - reserved < cost or (cost == 0 and balance - reserved <= 0) then",
                "if false then",
            ),
        ),
    ),
    Mutation(
        "credit_short_ttl",
        "the idempotency record of a credit kept 1 s instead of the window",
        (
            (
                "metering/lua/credit.lua",
                "redis.call('SET', KEYS[2], answer, 'EX', ARGV[5])",
                "redis.call('SET', KEYS[2], answer, 'EX', 1)",
            ),
        ),
    ),
    Mutation(
        "xack_before_commit",
        "the ledger writer acknowledges a batch before its Postgres commit",
        (
            (
                "metering/ledger/writer.py",
                "        if by_key:\n            began = time.monotonic()\n",
                "        async with self.store.redis.pipeline(transaction=False) as pipe:\n"
                "            for stream, entry_id in batch.entries:\n"
                "                pipe.xack(stream, self.group, entry_id)\n"
                "            await pipe.execute()\n"
                "        if by_key:\n            began = time.monotonic()\n",
            ),
        ),
    ),
    Mutation(
        "sweeper_charges_twice",
        "the sweeper charges an expired call again (no open check, the call left due)",
        (
            (
                "metering/lua/expire_call.lua",
                "if c[1] ~= 'open' then\n  redis.call('ZREM', KEYS[4], member)\n"
                "  return {'not_due', 0}\nend",
                "if not c[1] then return {'not_due', 0} end",
            ),
            (
                "metering/lua/expire_call.lua",
                "'expired_charge', int(charge))",
                "'expired_charge', int(charge))\nredis.call('ZADD', KEYS[4], due_ms, member)",
            ),
        ),
    ),
    Mutation(
        "recharge_mark_never_cleared",
        "the recharge pending mark is never cleared (credit, end of episode, repair)",
        (
            (
                "metering/lua/credit.lua",
                "redis.call('HDEL', KEYS[1], 'recharge_pending_since_us', 'recharge_last_failure',",
                "redis.call('HDEL', KEYS[1], 'recharge_last_failure',",
            ),
            (
                "metering/lua/settle_recharge.lua",
                "  redis.call('HDEL', KEYS[1], 'recharge_pending_since_us')\n",
                "",
            ),
        ),
    ),
    Mutation(
        "rebuild_skips_existing",
        "rebuild leaves alone every account Redis still holds (even one behind Postgres)",
        (
            (
                "metering/ledger/recovery.py",
                '            if int(seq) >= int(row["last_seq"]):\n                continue',
                "            continue",
            ),
        ),
    ),
)


def scratch_copy(mutation: Mutation) -> Path:
    """This tree at HEAD, unpacked in a temporary folder, with the mutation applied."""
    folder = Path(tempfile.mkdtemp(prefix=f"sim-mutation-{mutation.name}-"))
    archive = subprocess.run(["git", "archive", "HEAD"], cwd=ROOT, capture_output=True, check=True)
    subprocess.run(["tar", "-x", "-C", str(folder)], input=archive.stdout, check=True)
    for file, old, new in mutation.edits:
        path = folder / file
        text = path.read_text()
        if text.count(old) != 1:
            raise SystemExit(f"{mutation.name}: {file} does not hold the text to change once")
        path.write_text(text.replace(old, new))
    return folder


def run_one(mutation: Mutation, seed: int, timeout_s: float) -> dict[str, object]:
    if not mutation.edits:
        return {"mutation": mutation.name, "what": mutation.what, "caught": None, "note": "n/a"}
    folder = scratch_copy(mutation)
    out = folder / "result.json"
    began = time.monotonic()
    try:
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "sim",
                "--profile",
                "ci",
                "--seed",
                str(seed),
                "--shrink-seconds",
                "0",
                "--json",
                str(out),
            ],
            cwd=folder,
            capture_output=True,
            text=True,
            timeout=timeout_s,
        )
        elapsed = time.monotonic() - began
        result = json.loads(out.read_text()) if out.exists() else {}
        failure = result.get("failure") or ""
        return {
            "mutation": mutation.name,
            "what": mutation.what,
            "caught": proc.returncode != 0 and bool(failure),
            "seed": seed,
            "seconds_to_catch": round(result.get("seconds", elapsed), 1),
            "steps": (result.get("stats") or {}).get("steps"),
            "check": failure.split("]")[0].lstrip("[") if failure else "",
            "failure": failure.splitlines()[0][:300] if failure else proc.stdout[-300:],
        }
    finally:
        subprocess.run(["rm", "-rf", str(folder)], check=False)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sim.mutations")
    parser.add_argument("names", nargs="*", help="mutations to run (default: all)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--timeout", type=float, default=600.0)
    args = parser.parse_args(argv)
    chosen = [m for m in MUTATIONS if not args.names or m.name in args.names]
    rows = []
    for m in chosen:
        row = run_one(m, args.seed, args.timeout)
        rows.append(row)
        print(json.dumps(row), flush=True)
    print("\n| mutation | caught | seed | time to catch | check |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['what']} | {r['caught']} | {r.get('seed', '')} | "
            f"{r.get('seconds_to_catch', '')} s | {r.get('check', '')} |"
        )
    return 0 if all(r["caught"] is not False for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
