"""Child processes and ports: every process `./dev` starts runs in its own
process group with a parent-death signal, and is stopped group by group."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path

PROBE_TIMEOUT_S = 2.0
SERVER_START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 10.0


def say(message: str) -> None:
    print(f"[dev] {message}", file=sys.stderr, flush=True)


class DevError(RuntimeError):
    """A set-up step failed; the message says what to do."""


class Children:
    """Every process started here, each in its own process group, stopped in reverse."""

    def __init__(self) -> None:
        self.started: list[tuple[str, subprocess.Popen[bytes], int]] = []

    def start(
        self, name: str, argv: list[str], *, stop_signal: int = signal.SIGTERM, **kwargs: object
    ) -> subprocess.Popen[bytes]:
        proc: subprocess.Popen[bytes] = subprocess.Popen(  # type: ignore[call-overload]
            argv, start_new_session=True, preexec_fn=die_with_parent(stop_signal), **kwargs
        )
        self.started.append((name, proc, stop_signal))
        return proc

    def exited(self) -> list[tuple[str, int]]:
        return [(name, p.returncode) for name, p, _ in self.started if p.poll() is not None]

    def stop_all(self) -> None:
        for name, proc, stop_signal in reversed(self.started):
            stop_group(name, proc, stop_signal)
        self.started.clear()


def die_with_parent(stop_signal: int) -> Callable[[], None]:
    """A preexec_fn: the child gets stop_signal if this script dies, even by SIGKILL,
    so a killed `./dev` leaves no server or gateway behind (Linux prctl). prctl is
    looked up here, in the parent: a child that already dropped root may not be able
    to import anything."""
    parent = os.getpid()
    prctl = None
    if sys.platform.startswith("linux"):
        import ctypes

        prctl = ctypes.CDLL(None, use_errno=True).prctl
    pr_set_pdeathsig = 1

    def arm() -> None:
        if prctl is not None:
            prctl(pr_set_pdeathsig, stop_signal, 0, 0, 0)
        if os.getppid() != parent:  # the parent died before prctl took effect
            os.kill(os.getpid(), stop_signal)

    return arm


def stop_group(name: str, proc: subprocess.Popen[bytes], stop_signal: int) -> None:
    """Stop one process group politely, then for sure; reap the leader."""
    pgid = proc.pid  # start_new_session made the child its group's leader
    # Postgres puts its backends in sessions of their own: remember the whole tree.
    tree = descendants(proc.pid)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, stop_signal)
    try:
        proc.wait(timeout=STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        say(f"{name} did not stop within {STOP_TIMEOUT_S:.0f}s; killing it")
    # Whatever is left in the group or the tree (workers, backends) goes too.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)
    for pid, started in tree:
        if process_start(pid) == started:  # the same process, not a reused pid
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=STOP_TIMEOUT_S)


def process_start(pid: int) -> str | None:
    """The start time of a process (field 22 of /proc/<pid>/stat), None when gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def descendants(root_pid: int) -> list[tuple[int, str]]:
    """(pid, start time) of every process below root_pid, from /proc."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry.name))
    found: list[tuple[int, str]] = []
    todo = list(children.get(root_pid, []))
    while todo:
        pid = todo.pop()
        started = process_start(pid)
        if started is not None:
            found.append((pid, started))
        todo.extend(children.get(pid, []))
    return found


class Stop(Exception):
    """SIGINT or SIGTERM arrived."""


def raise_stop(signum: int, frame: object) -> None:
    raise Stop(signal.Signals(signum).name)


def free_port(preferred: int | None = None) -> int:
    if preferred and port_is_free(preferred):
        return preferred
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_is_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie is not a running server.
    with contextlib.suppress(OSError):
        if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
            return False
    return True


def port_open(url: str, default_port: int) -> bool:
    u = urllib.parse.urlsplit(url)
    try:
        with socket.create_connection(
            (u.hostname or "127.0.0.1", u.port or default_port), timeout=PROBE_TIMEOUT_S
        ):
            return True
    except OSError:
        return False


def wait_http(url: str, proc: subprocess.Popen[bytes], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise DevError(f"{url}: the process exited with {proc.returncode} before answering")
        try:
            with urllib.request.urlopen(url, timeout=PROBE_TIMEOUT_S) as response:
                if response.status < 500:
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise DevError(f"{url} did not answer within {timeout_s:.0f}s")


def wait_port(port: int, name: str) -> None:
    deadline = time.monotonic() + SERVER_START_TIMEOUT_S
    while not port_open(f"tcp://127.0.0.1:{port}", port):
        if time.monotonic() > deadline:
            raise DevError(f"{name} did not listen on {port} within {SERVER_START_TIMEOUT_S:.0f}s")
        time.sleep(0.1)
