"""The simulation's CI profile (sim/, `python -m sim --profile ci`): at least
5,000 steps against real processes it starts itself (redis-server with the
append-only file, two gateways, the ledger writer, the recharge worker, local
Stripe, an SMTP sink, TCP proxies in front of Postgres), with faults, hostile
input and the auditor's invariants. It prints its figures; a failure prints its
seed, the check, and the shortest failing sequence it found.

Set METERING_SIM_SEED to replay another seed (default 1).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

from devkit.testing import ROOT
from tests.conftest import TEST_DATABASE_URL

# The profile's own budget is about four minutes here; this bounds a hang.
TIMEOUT_S = 900


def test_simulation_ci_profile_finds_nothing() -> None:
    seed = os.environ.get("METERING_SIM_SEED", "1")
    out = Path(tempfile.mkstemp(prefix="sim-ci-", suffix=".json")[1])
    env = {**os.environ, "METERING_SIM_DATABASE_URL": TEST_DATABASE_URL}
    try:
        # A session of its own: a hang is stopped with everything the simulation
        # started (gateways, workers, Redis), not only the simulation itself.
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "sim",
                "--profile",
                "ci",
                "--seed",
                seed,
                "--shrink-seconds",
                "90",
                "--json",
                str(out),
            ],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        try:
            stdout, stderr = proc.communicate(timeout=TIMEOUT_S)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        print(stdout)
        assert proc.returncode == 0, stdout[-8000:] + stderr[-3000:]
        stats = json.loads(out.read_text())["stats"]
    finally:
        out.unlink(missing_ok=True)
    assert stats["steps"] >= 5_000
    assert sum(stats["faults"].values()) >= 10, stats["faults"]
    assert stats["fuzz_cases"] > 0 and stats["hostile_cases"] > 0
    assert stats["5xx"] == 0 and stats["changed_accounts_on_4xx"] == 0
