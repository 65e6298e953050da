"""The printed table, the ratios, the targets, and the JSON file."""

from __future__ import annotations

import datetime
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

import orjson

from devkit.testing import ROOT

# (name, numerator key, denominator key): throughputs measured in the same run.
RATIOS = [
    ("authorize / bare debit (1 process each, hot)", "authorize_hot_1", "bare"),
    ("authorize, 2 processes / bare debit, 1 process (hot)", "authorize_hot_2", "bare"),
    (
        "authorize / redis-py EVALSHA ceiling (2 processes vs one Python client, hot)",
        "authorize_hot_2",
        "python_evalsha",
    ),
    (
        "gateway's pipelined client / redis-py, EVALSHA from Python (hot)",
        "python_pipelined",
        "python_evalsha",
    ),
    (
        "batch debits/s (2 processes) / redis-benchmark EVALSHA (hot)",
        "batch_2",
        "redis_benchmark",
    ),
    (
        "authorize / redis-benchmark EVALSHA (2 processes, hot)",
        "authorize_hot_2",
        "redis_benchmark",
    ),
    ("authorize / postgres-row-lock (1 process each, hot)", "authorize_hot_1", "pg_hot_1"),
    ("authorize / postgres-row-lock (2 processes each, hot)", "authorize_hot_2", "pg_hot_2"),
    (
        "authorize / postgres-row-lock (1 process each, 10,000 accounts)",
        "authorize_spread_1",
        "pg_spread_1",
    ),
    (
        "authorize / postgres-row-lock (2 processes each, 10,000 accounts)",
        "authorize_spread_2",
        "pg_spread_2",
    ),
]


def machine() -> dict[str, Any]:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu_model": model or platform.processor(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "kernel": platform.release(),
        "load_average_start": [round(x, 2) for x in os.getloadavg()],
    }


def commit() -> str:
    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=ROOT, capture_output=True, text=True
        ).stdout.strip()

    sha = git("rev-parse", "--short", "HEAD") or "unknown"
    dirty = git("status", "--porcelain", "--untracked-files=no")
    return sha + ("-dirty" if dirty else "")


# (name, numerator key, denominator key) of server CPU per request: less disturbed
# by the machine's other tenants than throughput, when the server is CPU-bound.
CPU_RATIOS = [
    (
        "request metrics and ids on / off, server CPU per request (1 process, hot)",
        "observed_on",
        "observed_off",
    ),
    ("bare debit / authorize, server CPU per request (1 process, hot)", "bare", "authorize_hot_1"),
    (
        "single debit / batched debit, server CPU per debit (2 processes, hot)",
        "authorize_hot_2",
        "batch_2",
    ),
]


def _by_key(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {r["key"]: r for r in rows if r.get("key") and r["status"] != "skipped"}


def ratios(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    found = _by_key(rows)
    out = []
    for name, top, bottom in RATIOS:
        if top in found and bottom in found and found[bottom]["throughput_rps"] > 0:
            value = found[top]["throughput_rps"] / found[bottom]["throughput_rps"]
            out.append({"name": name, "value": round(value, 3)})
        else:
            out.append({"name": name, "value": None})
    for name, top, bottom in CPU_RATIOS:
        cpu_top = found.get(top, {}).get("server_cpu_us_per_req")
        cpu_bottom = found.get(bottom, {}).get("server_cpu_us_per_req")
        value = round(cpu_top / cpu_bottom, 3) if cpu_top and cpu_bottom else None
        out.append({"name": name, "value": value})
    return out


def _target(
    name: str, value: float | None, goal: float, at_least: bool, unit: str, why_missing: str = ""
) -> dict[str, Any]:
    if value is None:
        return {
            "name": name,
            "goal": goal,
            "value": None,
            "verdict": "SKIPPED",
            "note": why_missing or "not measured in this run",
        }
    ok = value >= goal if at_least else value < goal
    gap = (goal - value) if at_least else (value - goal)
    note = "" if ok else f"missed by {gap:.3g}{unit} ({abs(gap) / goal:.1%} of the goal)"
    return {
        "name": name,
        "goal": goal,
        "value": round(value, 3),
        "verdict": "PASS" if ok else "MISS",
        "note": note,
    }


def targets(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    found = _by_key(rows)
    skipped = {r["key"]: r["reason"] for r in rows if r["status"] == "skipped" and r.get("key")}

    def ratio(top: str, bottom: str) -> float | None:
        if top in found and bottom in found and found[bottom]["throughput_rps"] > 0:
            return float(found[top]["throughput_rps"] / found[bottom]["throughput_rps"])
        return None

    def figure(key: str, field: str) -> float | None:
        return float(found[key][field]) if key in found and field in found[key] else None

    def cpu_cost(with_it: str, without: str) -> float | None:
        """What `with_it` adds to `without`'s server CPU per request, as a fraction."""
        on, off = figure(with_it, "server_cpu_us_per_req"), figure(without, "server_cpu_us_per_req")
        return (on - off) / off if on and off else None

    def throughput_cost(with_it: str, without: str) -> float | None:
        """What `with_it` takes from `without`'s throughput, as a fraction."""
        on, off = figure(with_it, "throughput_rps"), figure(without, "throughput_rps")
        return (off - on) / off if on and off else None

    return [
        _target(
            "1 process >= 1.3x the bare naive route (1 process)",
            ratio("authorize_hot_1", "bare"),
            1.3,
            True,
            "x",
        ),
        _target(
            "2 processes >= 2.0x the bare naive route's 1 process",
            ratio("authorize_hot_2", "bare"),
            2.0,
            True,
            "x",
        ),
        _target(
            "batch debits/s >= 0.5 of redis-benchmark's EVALSHA ceiling",
            ratio("batch_2", "redis_benchmark"),
            0.5,
            True,
            "",
            skipped.get("batch_2", ""),
        ),
        _target(
            "2 processes: p99 < 5 ms at half the peak rate (open loop)",
            figure("authorize_open_2", "p99_ms"),
            5.0,
            False,
            " ms",
        ),
        _target(
            ">= 5x postgres-row-lock on one hot account (1 process each)",
            ratio("authorize_hot_1", "pg_hot_1"),
            5.0,
            True,
            "x",
        ),
        _target(
            ">= 5x postgres-row-lock on one hot account (2 processes each)",
            ratio("authorize_hot_2", "pg_hot_2"),
            5.0,
            True,
            "x",
        ),
        _target(
            "ledger writer keeps up, entry lag p99 < 1 s",
            figure("ledger", "lag_p99_s"),
            1.0,
            False,
            " s",
            skipped.get("ledger", ""),
        ),
        _target(
            "push p99 < 50 ms with 1,000 sockets",
            figure("push", "p99_ms"),
            50.0,
            False,
            " ms",
            skipped.get("push", ""),
        ),
        _target(
            "request metrics and ids cost < 5% of a request's CPU (in process, ASGI + EVALSHA)",
            cpu_cost("observed_cpu_on", "observed_cpu_off"),
            0.05,
            False,
            "",
            skipped.get("observed_on", ""),
        ),
        _target(
            "request metrics and ids cost < 5% of a request's server CPU (1 process, hot)",
            cpu_cost("observed_on", "observed_off"),
            0.05,
            False,
            "",
            skipped.get("observed_on", ""),
        ),
        _target(
            "request metrics and ids cost < 5% of throughput (1 process, hot)",
            throughput_cost("observed_on", "observed_off"),
            0.05,
            False,
            "",
            skipped.get("observed_on", ""),
        ),
    ]


def table(rows: list[dict[str, Any]]) -> str:
    head = (
        f"{'scenario':<18} {'variant':<56} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} "
        f"{'p99.9 ms':>9} {'errors':>7} {'cpu µs':>7}  load"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        if r["status"] == "skipped":
            lines.append(f"{r['scenario']:<18} {r['variant']:<56} skipped: {r['reason']}")
            continue
        load = f"{r.get('tool', '')} {r.get('mode', '')}"
        cpu = f"{r['server_cpu_us_per_req']:.0f}" if r.get("server_cpu_us_per_req") else ""
        if r.get("offered_rps"):
            load += f" @{r['offered_rps']:.0f}/s"
        elif r.get("concurrency"):
            load += f" c={r['concurrency']}"
        lines.append(
            f"{r['scenario']:<18} {r['variant']:<56} {r['throughput_rps']:>9.0f} "
            f"{r['p50_ms']:>8.2f} {r['p99_ms']:>8.2f} {r['p999_ms']:>9.2f} "
            f"{r['errors']:>7} {cpu:>7}  {load}"
        )
    return "\n".join(lines)


def summary(report: dict[str, Any]) -> str:
    out = [table(report["results"]), "", "ratios (throughput, same run):"]
    for r in report["ratios"]:
        value = "n/a" if r["value"] is None else f"{r['value']:.2f}"
        out.append(f"  {r['name']:<62} {value}")
    out += ["", "targets:"]
    for t in report["targets"]:
        value = "n/a" if t["value"] is None else f"{t['value']:.3g}"
        out.append(f"  {t['verdict']:<8} {t['name']:<62} {value:>8}  {t['note']}")
    m = report["machine"]
    out += [
        "",
        f"machine: {m['cpu_model']}, {m['cores']} cores, load average "
        f"{m['load_average_start']} at start, {m['load_average_end']} at end; "
        f"commit {report['commit']}; {report['date']}",
    ]
    return "\n".join(out)


def write(report: dict[str, Any], results_dir: Path, smoke: bool) -> Path:
    results_dir.mkdir(parents=True, exist_ok=True)
    date = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d")
    name = f"{date}-{report['commit']}{'-smoke' if smoke else ''}.json"
    path = results_dir / name
    path.write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2))
    return path


def markdown(report: dict[str, Any]) -> str:
    """The figures as the README's table (`python -m bench.report FILE`)."""
    out = [
        "| scenario | variant | req/s | p50 ms | p99 ms | p99.9 ms | server CPU µs/req | load |",
        "|---|---|---:|---:|---:|---:|---:|---|",
    ]
    for r in report["results"]:
        if r["status"] == "skipped":
            out.append(f"| {r['scenario']} | {r['variant']} | skipped: {r['reason']} | | | | | |")
            continue
        load = f"{r.get('tool', '')} {r.get('mode', '')}"
        if r.get("offered_rps"):
            load += f" at {r['offered_rps']:.0f}/s"
        elif r.get("concurrency"):
            load += f", {r['concurrency']} conns"
        errors = f" ({r['errors']} errors)" if r.get("errors") else ""
        cpu = f"{r['server_cpu_us_per_req']:.0f}" if r.get("server_cpu_us_per_req") else ""
        out.append(
            f"| {r['scenario']} | {r['variant']}{errors} | {r['throughput_rps']:,.0f} | "
            f"{r['p50_ms']:.2f} | {r['p99_ms']:.2f} | {r['p999_ms']:.2f} | {cpu} | {load} |"
        )
    out += ["", "| ratio (throughput, same run) | value |", "|---|---:|"]
    for r in report["ratios"]:
        value = "n/a" if r["value"] is None else f"{r['value']:.2f}"
        out.append(f"| {r['name']} | {value} |")
    out += ["", "| target | goal | measured | verdict |", "|---|---:|---:|---|"]
    for t in report["targets"]:
        value = "n/a" if t["value"] is None else f"{t['value']:.3g}"
        verdict = t["verdict"] + (f": {t['note']}" if t["note"] else "")
        out.append(f"| {t['name']} | {t['goal']:g} | {value} | {verdict} |")
    m = report["machine"]
    out += [
        "",
        f"Machine: {m['cpu_model']}, {m['cores']} cores; load average "
        f"{m['load_average_start'][0]} at start, {m['load_average_end'][0]} at end; "
        f"commit {report['commit']}; {report['date']}; `{report['command']}`.",
    ]
    return "\n".join(out)


if __name__ == "__main__":
    import sys

    print(markdown(orjson.loads(Path(sys.argv[1]).read_bytes())))
