"""`./dev run`, `./dev test` and `./dev stop`."""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import glob
import json
import os
import select
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from devkit.processes import (
    STOP_TIMEOUT_S,
    Children,
    DevError,
    Stop,
    free_port,
    raise_stop,
    say,
    wait_http,
    wait_port,
)
from devkit.servers import (
    dev_dir,
    ensure_postgres,
    ensure_redis,
    redis_binaries_dir,
    stop_left_servers,
    test_servers_dir,
)
from devkit.venv import ROOT, VENV_PY, ensure_python, ensure_venv, venv_env, venv_has_module

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
DEFAULT_DATABASE_URL = "postgresql://postgres@127.0.0.1:5432/metering"
DEFAULT_TEST_REDIS_URL = "redis://127.0.0.1:6379/15"
DEFAULT_TEST_DATABASE_URL = "postgresql://postgres@127.0.0.1:5432/metering_test"
DEFAULT_GATEWAY_PORT = 8080
DEFAULT_STRIPE_PORT = 8420
DEFAULT_SMTP_PORT = 8025
GATEWAY_START_TIMEOUT_S = 60.0
CHILD_POLL_S = 0.2


# Debian packages the suite needs beyond Python: each group is installed (as root,
# with apt-get) only when one of its files (glob patterns) is missing.
CHROMIUM_FILES = ("/usr/bin/chromium",)
SIP_TOOLS_PACKAGES = ("kamailio", "kamailio-utils-modules", "kamailio-extra-modules", "sip-tester")
# kamailio itself, http_client.so (utils modules), jansson.so (extra modules), sipp.
SIP_TOOLS_FILES = (
    "/usr/sbin/kamailio",
    "/usr/lib/*/kamailio/modules/http_client.so",
    "/usr/lib/*/kamailio/modules/jansson.so",
    "/usr/bin/sipp",
)
# wrk (HTTP load, the batches) and redis-benchmark (the EVALSHA ceiling).
BENCH_PACKAGES = ("wrk", "redis-tools")
BENCH_FILES = ("/usr/bin/wrk", "/usr/bin/redis-benchmark")
# promtool (Debian's prometheus package) checks and unit-tests the alert rules
# in docker/prometheus (tests/test_alert_rules.py); nothing of it is started.
PROMETHEUS_FILES = ("/usr/bin/promtool",)
_apt_updated = False


def ensure_debian_packages(packages: tuple[str, ...], files: tuple[str, ...], purpose: str) -> bool:
    """Install Debian's `packages` when one of `files` is missing; False when they
    cannot be had (not root, no apt-get, no mirror): the tests that need them say so."""
    global _apt_updated
    if all(glob.glob(f) for f in files):
        return True
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        say(
            f"{' '.join(packages)}: missing and cannot be installed here (needs root and "
            f"apt-get); {purpose} cannot run"
        )
        return False
    say(f"installing {' '.join(packages)} from Debian's packages for {purpose}")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    steps = [["apt-get", "install", "-y", "-q", "--no-install-recommends", *packages]]
    if not _apt_updated:
        steps.insert(0, ["apt-get", "update", "-q"])
    for argv in steps:
        done = subprocess.run(
            argv, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True
        )
        if done.returncode != 0:
            # Not fatal: every other test still runs; the tests that need these say so.
            sys.stderr.write(done.stdout[-2000:] + done.stderr[-2000:])
            say(f"warning: {' '.join(argv)} failed; {purpose} cannot run")
            return False
    _apt_updated = True
    return True


def ensure_chromium() -> str | None:
    """Debian's Chromium for the browser tests (never a browser download of a test tool)."""
    for candidate in ("/usr/bin/chromium", "/usr/bin/chromium-browser"):
        if Path(candidate).exists():
            return candidate
    if ensure_debian_packages(("chromium",), CHROMIUM_FILES, "the browser tests"):
        return "/usr/bin/chromium"
    return None


def cmd_test(args: argparse.Namespace) -> int:
    children = Children()
    signal.signal(signal.SIGTERM, raise_stop)
    try:
        ensure_venv()
        # Servers of their own (.dev/test/): stopping them at the end of the suite must
        # not take away the servers of a `./dev run` going on beside it.
        root = test_servers_dir()
        redis_url = ensure_redis(
            os.environ.get("METERING_TEST_REDIS_URL") or DEFAULT_TEST_REDIS_URL, children, root
        )
        database_url = ensure_postgres(
            os.environ.get("METERING_TEST_DATABASE_URL") or DEFAULT_TEST_DATABASE_URL,
            children,
            root,
        )
        extra = {"METERING_TEST_REDIS_URL": redis_url, "METERING_TEST_DATABASE_URL": database_url}
        chromium = ensure_chromium()
        if chromium:
            extra["METERING_TEST_CHROMIUM"] = chromium
        # Kamailio and SIPp for the real-switch test (tests/test_kamailio.py).
        ensure_debian_packages(SIP_TOOLS_PACKAGES, SIP_TOOLS_FILES, "the Kamailio test")
        ensure_debian_packages(("prometheus",), PROMETHEUS_FILES, "the alert rules check")
        # The bench smoke test's load tools (tests/test_bench_smoke.py).
        ensure_debian_packages(BENCH_PACKAGES, BENCH_FILES, "the bench smoke test")
        redis_bin = redis_binaries_dir()
        if redis_bin:
            extra["PATH"] = f"{redis_bin}{os.pathsep}{os.environ.get('PATH', '')}"
        say(f"pytest {' '.join(args.pytest_args)}".rstrip())
        # Same process group as us: a Ctrl-C in the terminal reaches pytest directly.
        pytest = subprocess.Popen(
            [str(VENV_PY), "-m", "pytest", *args.pytest_args], cwd=ROOT, env=venv_env(extra)
        )
        try:
            return pytest.wait()
        except (Stop, KeyboardInterrupt):
            pytest.send_signal(signal.SIGINT)
            with contextlib.suppress(subprocess.TimeoutExpired):
                pytest.wait(timeout=STOP_TIMEOUT_S)
            if pytest.poll() is None:
                pytest.kill()
            return 130
    except (DevError, OSError, subprocess.SubprocessError) as exc:
        say(f"error: {exc}")
        return 1
    except (Stop, KeyboardInterrupt):
        return 130
    finally:
        children.stop_all()


def metering_subcommands() -> set[str]:
    """The `python -m metering` subcommands that exist on this branch."""
    out = subprocess.run(
        [str(VENV_PY), "-c", "from metering.tools.cli import COMMANDS; print(*COMMANDS)"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=venv_env({}),
    ).stdout
    return set(out.split())


def hold_run_lock() -> object:
    """One `./dev run` per data directory; a second one refuses instead of fighting."""
    lock_path = dev_dir() / "run.lock"
    lock = open(lock_path, "a+")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.seek(0)
        raise DevError(
            f"another ./dev run is using {dev_dir()} (pid {lock.read().strip()}); "
            "stop it first (Ctrl-C in its terminal)"
        ) from None
    lock.seek(0)
    lock.truncate()
    lock.write(f"{os.getpid()}\n")
    lock.flush()
    return lock


# Workers `./dev run` starts, each with a metrics port of its own: (name, argv tail).
RUN_WORKERS = (
    ("ledger-writer", ("ledger-writer",)),
    ("recharge-worker", ("recharge-worker",)),
    ("number-scheduler", ("number-scheduler",)),
    ("notifier", ("notifier",)),
    ("reconcile", ("reconcile", "--continuous")),
)
# How long the demo may take to write its links before the summary goes without them.
DEMO_LINKS_TIMEOUT_S = 60.0


class Summary:
    """What `./dev run` prints last, once everything is up, and again on demand:
    Enter in its terminal, or SIGUSR1."""

    def __init__(self, gateway_url: str, env: dict[str, str]) -> None:
        self.gateway_url = gateway_url
        self.env = env
        self.workers: dict[str, int] = {}
        self.links: dict[str, str] = {}
        self.printed = False
        self.again = False

    def lines(self) -> list[str]:
        url, env = self.gateway_url, self.env
        ops = env.get("METERING_OPS_TOKEN", "dev-ops-token")
        switch = env.get("METERING_SWITCH_TOKEN", "dev-switch-token")
        out = [
            "ready; everything below stays up until Ctrl-C",
            f"  gateway        {url}  (API reference {url}/docs)",
            f"  health         {url}/livez  {url}/readyz   metrics {url}/metrics",
            f"  ops page       {url}/ops?token={ops}",
        ]
        out += [
            f"  dashboard      {account}: {url}/dashboard?account={account}&token={token}"
            for account, token in self.links.items()
        ]
        out += [
            f"  tokens         switch {switch}   ops {ops}",
            f"  ops status     curl -H 'Authorization: Bearer {ops}' {url}/v1/ops/status",
        ]
        out += [
            f"  {name:<14} http://127.0.0.1:{port}/metrics" for name, port in self.workers.items()
        ]
        if env.get("METERING_STRIPE_API_BASE"):
            out.append(f"  local stripe   {env['METERING_STRIPE_API_BASE']}")
        if env.get("METERING_SMTP_PORT"):
            out.append(f"  mail           {dev_dir() / 'mail' / 'new'}")
        out.append(f"press Enter (or kill -USR1 {os.getpid()}) to print this again")
        return out

    def show(self) -> None:
        for line in self.lines():
            say(line)
        self.printed = True
        self.again = False

    def ask_again(self, *_: object) -> None:
        self.again = True


def enter_pressed(stdin_open: bool) -> tuple[bool, bool]:
    """(pressed, still open): a line on a terminal's stdin, without waiting."""
    if not stdin_open:
        return False, False
    try:
        readable, _, _ = select.select([sys.stdin], [], [], 0)
    except (OSError, ValueError):
        return False, False
    if not readable:
        return False, True
    line = sys.stdin.readline()
    return bool(line), bool(line)  # '' is end of file: stop looking


def cmd_run(args: argparse.Namespace) -> int:
    children = Children()
    signal.signal(signal.SIGTERM, raise_stop)
    signal.signal(signal.SIGINT, raise_stop)
    signal.signal(signal.SIGHUP, raise_stop)
    try:
        _run_lock = hold_run_lock()  # held until this process exits
        ensure_venv()
        env = run_environment(children)
        py = str(VENV_PY)
        say("applying migrations")
        subprocess.run(
            [py, "-m", "metering", "migrate", "--create-database"], cwd=ROOT, env=env, check=True
        )
        commands = metering_subcommands()
        gateway_url = f"http://127.0.0.1:{env['METERING_PORT']}"
        summary = Summary(gateway_url, env)
        signal.signal(signal.SIGUSR1, summary.ask_again)
        gateway = children.start("gateway", [py, "-m", "gateway"], cwd=ROOT, env=env)
        for name, argv in RUN_WORKERS:
            if argv[0] not in commands:
                say(f"{name}: not on this branch yet (`python -m metering {argv[0]}`); skipped")
                continue
            port = free_port()
            summary.workers[name] = port
            children.start(
                name,
                [
                    py,
                    "-m",
                    "metering",
                    "--log-level",
                    env["METERING_LOG_LEVEL"],
                    *argv,
                    "--metrics-port",
                    str(port),
                ],
                cwd=ROOT,
                env=env,
            )
        wait_http(gateway_url + "/healthz", gateway, GATEWAY_START_TIMEOUT_S)
        say(f"gateway: {gateway_url}")
        links = dev_dir() / "demo-links.json"
        links.unlink(missing_ok=True)
        if not args.no_demo:
            children.start(
                "demo switch",
                [py, "-m", "devkit.demo", "--gateway-url", gateway_url, "--links-file", str(links)],
                cwd=ROOT,
                env=env,
                stdin=subprocess.DEVNULL,
            )
        links_deadline = time.monotonic() + (0 if args.no_demo else DEMO_LINKS_TIMEOUT_S)
        stdin_open = sys.stdin is not None and sys.stdin.isatty()
        while True:
            for name, code in children.exited():
                raise DevError(f"{name} exited with {code}; stopping everything")
            if not summary.printed:
                if links.exists():
                    summary.links = json.loads(links.read_text())
                if summary.links or time.monotonic() >= links_deadline:
                    summary.show()
            pressed, stdin_open = enter_pressed(stdin_open)
            if summary.printed and (pressed or summary.again):
                summary.show()
            time.sleep(CHILD_POLL_S)
    except DevError as exc:
        say(f"error: {exc}")
        return 1
    except subprocess.CalledProcessError as exc:
        say(f"error: {' '.join(map(str, exc.cmd))} exited with {exc.returncode}")
        return 1
    except (OSError, subprocess.SubprocessError) as exc:
        say(f"error: {exc}")
        return 1
    except (Stop, KeyboardInterrupt):
        say("stopping")
        return 0
    finally:
        # A second signal while stopping must not leave half the children running.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        children.stop_all()
        say("stopped everything started here")


def local_stripe_command() -> list[str] | None:
    """The payments tests' Stripe (localstripe plus idempotency keys, on 127.0.0.1)
    when the branch has it, else plain localstripe, else none."""
    if not venv_has_module("localstripe"):
        return None
    if (ROOT / "tests" / "stripe_local.py").exists():
        return [str(VENV_PY), "-m", "tests.stripe_local"]
    return [str(VENV_PY), "-m", "localstripe"]


def run_environment(children: Children) -> dict[str, str]:
    """METERING_* for every process of the run: servers found or started, free ports."""
    extra: dict[str, str] = {}
    extra["METERING_REDIS_URL"] = ensure_redis(
        os.environ.get("METERING_REDIS_URL") or DEFAULT_REDIS_URL, children, dev_dir()
    )
    extra["METERING_DATABASE_URL"] = ensure_postgres(
        os.environ.get("METERING_DATABASE_URL") or DEFAULT_DATABASE_URL, children, dev_dir()
    )
    if not os.environ.get("METERING_PORT"):
        extra["METERING_PORT"] = str(free_port(DEFAULT_GATEWAY_PORT))
    else:
        extra["METERING_PORT"] = os.environ["METERING_PORT"]
    extra.setdefault("METERING_LOG_LEVEL", os.environ.get("METERING_LOG_LEVEL", "warning"))
    # A terminal is read by people: plain lines unless asked for JSON.
    extra.setdefault("METERING_LOG_FORMAT", os.environ.get("METERING_LOG_FORMAT", "text"))
    # Locally, webhook receivers run on this machine: let customers register them.
    extra.setdefault(
        "METERING_WEBHOOK_PRIVATE_TARGETS", os.environ.get("METERING_WEBHOOK_PRIVATE_TARGETS", "1")
    )
    # Receipt links in emails point at this gateway.
    extra.setdefault(
        "METERING_PUBLIC_URL",
        os.environ.get("METERING_PUBLIC_URL") or f"http://127.0.0.1:{extra['METERING_PORT']}",
    )
    env = venv_env(extra)
    if not os.environ.get("METERING_STRIPE_API_BASE"):
        stripe = local_stripe_command()
        if stripe:
            port = free_port(DEFAULT_STRIPE_PORT)
            children.start(
                "local stripe",
                [*stripe, "--port", str(port)],
                cwd=ROOT,
                env=env,
                stdout=open(dev_dir() / "localstripe.log", "ab"),
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
            env["METERING_STRIPE_API_BASE"] = f"http://127.0.0.1:{port}"
            # The dashboard's card entry loads the local Stripe's copy of Stripe.js.
            env.setdefault("METERING_STRIPE_JS_URL", f"http://127.0.0.1:{port}/js.stripe.com/v3/")
            wait_port(port, "local stripe")
            say(f"local stripe: {env['METERING_STRIPE_API_BASE']}")
        else:
            say("local stripe: localstripe is not installed by pyproject.toml; skipped")
    if not os.environ.get("METERING_SMTP_PORT") and venv_has_module("aiosmtpd"):
        port = free_port(DEFAULT_SMTP_PORT)
        mail = dev_dir() / "mail"
        for sub in ("cur", "new", "tmp"):
            (mail / sub).mkdir(parents=True, exist_ok=True)
        children.start(
            "smtp sink",
            [
                str(VENV_PY),
                "-m",
                "aiosmtpd",
                "-n",
                "-l",
                f"127.0.0.1:{port}",
                "-c",
                "aiosmtpd.handlers.Mailbox",
                str(mail),
            ],
            cwd=ROOT,
            env=env,
            stdout=open(dev_dir() / "smtp.log", "ab"),
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        env["METERING_SMTP_HOST"] = "127.0.0.1"
        env["METERING_SMTP_PORT"] = str(port)
        say(f"smtp sink: 127.0.0.1:{port}, mail saved in {mail}/new")
    return env


def main(argv: list[str] | None = None, doc: str = "") -> int:
    parser = argparse.ArgumentParser(
        prog="./dev",
        description=doc.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Data directory: .dev/ (METERING_DEV_DIR). METERING_DEV_SERVERS=pip skips "
        "Debian's server binaries and uses the pip packages.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="set up and start the gateway with a live demo")
    run.add_argument("--no-demo", action="store_true", help="do not start the demo switch")
    test = sub.add_parser(
        "test",
        help="set up and run the whole test suite",
        description="Extra arguments go to pytest.",
    )
    test.add_argument("pytest_args", nargs=argparse.REMAINDER)
    sub.add_parser("stop", help="stop servers a killed ./dev left running in the data dir")
    # Options for pytest (`./dev test -x -k name`) are not ours: pass them through.
    args, unknown = parser.parse_known_args(argv)
    if args.command == "test":
        args.pytest_args = unknown + args.pytest_args
    elif unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    try:
        ensure_python()
    except DevError as exc:
        say(f"error: {exc}")
        return 1
    if args.command == "run":
        return cmd_run(args)
    if args.command == "test":
        return cmd_test(args)
    return stop_left_servers()
