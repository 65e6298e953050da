"""`python -m sim`: run the simulation.

python -m sim                       # the CI profile with a random seed
python -m sim --seed 42             # replay seed 42 (the same operations)
python -m sim --profile long        # 30 minutes; --minutes / --steps change it
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import random
import sys
from pathlib import Path

from sim.plan import PROFILES
from sim.runner import Runner, default_database_url, result_json


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sim", description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=None, help="the run's seed (default: random)")
    parser.add_argument("--profile", choices=sorted(PROFILES), default="ci")
    parser.add_argument("--steps", type=int, default=None, help="run this many steps")
    parser.add_argument("--minutes", type=float, default=None, help="run this long instead")
    parser.add_argument(
        "--faults",
        default=None,
        help="comma-separated fault kinds (default: the profile's; 'none')",
    )
    parser.add_argument(
        "--waive",
        default="",
        help="comma-separated rules to look past (known open defects): ops_role, recharge_rules",
    )
    parser.add_argument(
        "--shrink-seconds",
        type=float,
        default=120.0,
        help="on a failure, look this long for the shortest failing sequence (0: do not)",
    )
    parser.add_argument("--json", type=Path, default=None, help="write the result here as JSON")
    parser.add_argument(
        "--database-url",
        default=default_database_url(),
        help="Postgres the run makes its own schema in (default: METERING_SIM_DATABASE_URL, "
        "else METERING_TEST_DATABASE_URL)",
    )
    args = parser.parse_args(argv)
    seed = args.seed if args.seed is not None else random.randrange(1, 2**31)
    profile = PROFILES[args.profile]
    changes: dict[str, object] = {}
    if args.steps is not None:
        changes.update(steps=args.steps, minutes=0.0)
    if args.minutes is not None:
        changes.update(minutes=args.minutes)
    if args.faults is not None:
        kinds = () if args.faults == "none" else tuple(args.faults.split(","))
        changes.update(faults=kinds)
    profile = dataclasses.replace(profile, **changes)
    print(f"[sim] seed {seed}, profile {profile.name}", flush=True)
    waived = frozenset(w for w in args.waive.split(",") if w)
    if waived:
        print(f"[sim] waiving: {', '.join(sorted(waived))}", flush=True)
    runner = Runner(
        seed,
        profile,
        args.database_url,
        log=_log,
        waived=waived,
        shrink_budget_s=args.shrink_seconds,
    )
    result = asyncio.run(runner.run())
    print(result.report(), flush=True)
    if args.json is not None:
        result_json(result, args.json)
    return 0 if result.ok else 1


def _log(line: str) -> None:
    print(line, flush=True)


if __name__ == "__main__":
    sys.exit(main())
