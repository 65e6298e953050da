"""The benchmark harness runs end to end (CI runs only this short smoke; the
figures of a smoke run mean nothing, the real run is `python -m bench`)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

from devkit.testing import ROOT
from tests.conftest import TEST_DATABASE_URL

SMOKE_TIMEOUT_S = 240

MEASURED_KEYS = {
    "python_evalsha",
    "python_pipelined",
    "redis_benchmark",
    "bare",
    "authorize_hot_1",
    "authorize_spread_1",
    "authorize_hot_2",
    "authorize_spread_2",
    "authorize_open_2",
    "bare_open",
    "calls",
    "pg_hot_1",
    "pg_spread_1",
    "pg_hot_2",
    "pg_spread_2",
    "observed_off",
    "observed_on",
}


def test_bench_smoke_measures_every_scenario_and_writes_json(tmp_path: Path) -> None:
    # The harness starts its own redis-server; Postgres work stays in bench_* tables
    # of the test database.
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench",
            "--smoke",
            "--results-dir",
            str(tmp_path),
            "--database-url",
            TEST_DATABASE_URL,
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=SMOKE_TIMEOUT_S,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    files = list(tmp_path.glob("*-smoke.json"))
    assert len(files) == 1, files
    report = json.loads(files[0].read_text())

    rows = {r["key"]: r for r in report["results"] if r["key"]}
    assert MEASURED_KEYS <= set(rows), sorted(MEASURED_KEYS - set(rows))
    for key in MEASURED_KEYS:
        row = rows[key]
        assert row["status"] in ("ok", "errors"), row
        assert row["throughput_rps"] > 0, row
        assert 0 < row["p50_ms"] <= row["p99_ms"] <= row["p999_ms"], row
    # The ledger writer and live push are on this branch: measured, not skipped.
    for key in ("authorize_ledger_2", "ledger", "push"):
        assert rows[key]["status"] == "ok", rows[key]
        assert rows[key]["throughput_rps"] > 0 and rows[key]["errors"] == 0, rows[key]
    assert rows["ledger"]["requests"] > 0 and rows["ledger"]["lag_samples"] > 0
    assert rows["push"]["sockets"] > 0 and rows["push"]["missing_frames"] == 0
    # Every path answers without errors even in a smoke run.
    for key in MEASURED_KEYS:
        assert rows[key]["errors"] == 0, rows[key]
    # The Postgres design really wrote its ledger: a row per answered debit (plus
    # a few that were in flight when wrk stopped counting; a smoke run has no warm-up).
    for key in ("pg_hot_1", "pg_spread_2"):
        row = rows[key]
        assert row["requests"] <= row["ledger_rows"] <= row["requests"] * 1.05 + 64, row
    for row in report["results"]:
        if row["status"] == "skipped":
            assert row["reason"], row
    assert {r["name"] for r in report["targets"]} and report["ratios"]
    assert report["machine"]["cores"] >= 1 and len(report["machine"]["load_average_end"]) == 3
    assert report["commit"] and report["date"]
    assert "authorize / bare debit" in done.stdout
    # A batch row counts debits: every text of every answered batch charged
    # (`./dev test` installs wrk; without it the batches are skipped, saying so).
    for key in ("batch_1", "batch_2") if shutil.which("wrk") else ():
        assert rows[key]["status"] == "ok" and rows[key]["errors"] == 0, rows[key]
        row = rows[key]
        assert row["batch"] == 100 and row["charged"] >= (row["requests"] - row["errors"]) * 100
