"""The alert rules and the dashboard: `promtool check rules` and `promtool test
rules` (Debian's prometheus package, installed by `./dev test`), Prometheus's
configuration checked by promtool, every dashboard query parsed by promtool and
naming only metrics this service exports, and compose wiring them together."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from devkit.testing import ROOT
from metering.metrics import Metrics

PROMETHEUS = ROOT / "docker" / "prometheus"
DASHBOARD = ROOT / "docker" / "grafana" / "dashboards" / "metering.json"
# Gauges the gateway computes when scraped (metering/operations/status.py).
SCRAPE_GAUGES = {
    "metering_build_info",
    "metering_redis_up",
    "metering_postgres_up",
    "metering_ledger_entries_behind",
    "metering_ledger_oldest_entry_age_seconds",
    "metering_reservations_open",
    "metering_workers_alive",
    "metering_workers_stale",
    "metering_recharge_episodes",
    "metering_recharge_oldest_due_age_seconds",
}
METRIC_NAME = re.compile(r"\b(metering_[a-z_]+)\b")


def promtool() -> str:
    path = shutil.which("promtool")
    assert path, (
        "promtool is missing: `./dev test` installs Debian's prometheus package "
        "(apt-get install prometheus)"
    )
    return path


def run_promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [promtool(), *args], cwd=PROMETHEUS, capture_output=True, text=True, timeout=120
    )


def exported_names() -> set[str]:
    """Every sample name /metrics can carry."""
    names = set(SCRAPE_GAUGES)
    for family in Metrics().families():
        if family.kind == "histogram":
            names |= {family.name + s for s in ("_bucket", "_sum", "_count")}
        else:
            names.add(family.name)
    return names


def test_promtool_checks_the_alert_rules() -> None:
    done = run_promtool("check", "rules", "alerts.yml")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout


def test_promtool_unit_tests_of_the_alerts_pass() -> None:
    done = run_promtool("test", "rules", "alerts_test.yml")
    assert done.returncode == 0, done.stdout + done.stderr


def test_a_broken_rule_is_refused(tmp_path: Path) -> None:
    broken = tmp_path / "alerts.yml"
    broken.write_text((PROMETHEUS / "alerts.yml").read_text().replace("> 60", "> > 60", 1))
    done = subprocess.run(
        [promtool(), "check", "rules", str(broken)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode != 0 and "parse error" in (done.stdout + done.stderr)


def test_prometheus_configuration_is_valid(tmp_path: Path) -> None:
    config = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())
    assert config["rule_files"] == ["/etc/prometheus/alerts.yml"]
    # Checked where the rule file really is (in the container it is mounted).
    config["rule_files"] = [str(PROMETHEUS / "alerts.yml")]
    local = tmp_path / "prometheus.yml"
    local.write_text(yaml.safe_dump(config))
    done = subprocess.run(
        [promtool(), "check", "config", str(local)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_rules_name_only_exported_metrics() -> None:
    rules = yaml.safe_load((PROMETHEUS / "alerts.yml").read_text())
    exprs = [r["expr"] for g in rules["groups"] for r in g["rules"]]
    used = {name for e in exprs for name in METRIC_NAME.findall(e)}
    assert used and used <= exported_names(), used - exported_names()
    alerts = {r["alert"] for g in rules["groups"] for r in g["rules"]}
    # The alerts operators need (ledger lag, drift, recharge failures, 5xx, Redis, script latency).
    for expected in (
        "MeteringLedgerLagHigh",
        "MeteringReconcileDifferences",
        "MeteringRechargeFailures",
        "MeteringServerErrors",
        "MeteringRedisUnavailable",
        "MeteringScriptLatencyHigh",
    ):
        assert expected in alerts


def dashboard_queries() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]


def test_every_dashboard_query_parses_and_names_exported_metrics(tmp_path: Path) -> None:
    queries = dashboard_queries()
    assert len(queries) >= 20
    used = {name for q in queries for name in METRIC_NAME.findall(q)}
    assert used <= exported_names(), used - exported_names()
    # promtool parses PromQL in rule files: each query as a recording rule.
    as_rules = {
        "groups": [
            {
                "name": "dashboard",
                "rules": [{"record": f"dashboard:q{i}", "expr": q} for i, q in enumerate(queries)],
            }
        ]
    }
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(yaml.safe_dump(as_rules))
    done = subprocess.run(
        [promtool(), "check", "rules", str(path)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stdout + done.stderr


def compose_services() -> dict[str, Any]:
    from tests.test_docker import SECRETS, compose_config

    done = compose_config(SECRETS)
    assert done.returncode == 0, done.stderr
    return dict(json.loads(done.stdout)["services"])


@pytest.mark.parametrize("service", ["prometheus", "grafana"])
def test_compose_mounts_the_rules_and_the_dashboard(service: str) -> None:
    services = compose_services()
    for volume in services[service]["volumes"]:
        if volume["type"] == "bind":
            assert Path(volume["source"]).exists(), volume
            assert volume.get("read_only"), volume
    ports = services[service]["ports"]
    assert all(p.get("host_ip") == "127.0.0.1" for p in ports), ports  # not public


def test_prometheus_scrapes_every_worker_on_its_metrics_port() -> None:
    services = compose_services()
    config = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    workers = jobs["metering-workers"]["dns_sd_configs"][0]
    for name in workers["names"]:
        env = services[name]["environment"]
        assert int(env["METERING_WORKER_METRICS_PORT"]) == workers["port"], name
        assert env["METERING_WORKER_METRICS_HOST"] == "0.0.0.0"
    commands = {
        name: service["command"]
        for name, service in services.items()
        if (service.get("command") or [])[:3] == ["python", "-m", "metering"]
    }
    long_running = {n for n, c in commands.items() if c[3] != "migrate"}
    assert long_running == set(workers["names"])
    gateway = jobs["metering-gateway"]["dns_sd_configs"][0]
    assert gateway["names"] == ["gateway"] and gateway["port"] == 8080
