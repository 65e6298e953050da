"""A real switch for the tests: Debian's Kamailio with integrations/kamailio/,
and SIPp callers and callees, each on loopback ports of its own and stopped by
the handle that started it (`./dev test` installs the packages when missing)."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

from devkit.testing import ROOT, stop_process

KAMAILIO_DIR = ROOT / "integrations" / "kamailio"
SIPP_DIR = KAMAILIO_DIR / "sipp"
KAMAILIO = "/usr/sbin/kamailio"
SIPP = "/usr/bin/sipp"
START_TIMEOUT_S = 15.0
RPC_TIMEOUT_S = 2.0


def require_sip_tools() -> None:
    missing = [path for path in (KAMAILIO, SIPP) if not os.path.exists(path)]
    if missing:
        raise RuntimeError(
            f"{', '.join(missing)} missing: apt-get install kamailio kamailio-utils-modules "
            "kamailio-extra-modules sip-tester (./dev test does)"
        )


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Kamailio:
    """kamailio.cfg on a free UDP port; its RPC socket, pid and log in `workdir`.
    `defines` override metering-params.cfg (strings are quoted here)."""

    def __init__(self, workdir: Path, **defines: str | int) -> None:
        require_sip_tools()
        self.port = free_udp_port()
        self.run_dir = workdir / f"kamailio-{self.port}"
        self.run_dir.mkdir(parents=True)
        self.log_path = self.run_dir / "kamailio.log"
        values: dict[str, str | int] = {
            "SIP_LISTEN": f"udp:127.0.0.1:{self.port}",
            "RUN_DIR": str(self.run_dir),
            "SIP_CHILDREN": 2,
            "METERING_ASYNC_WORKERS": 2,
            **defines,
        }
        argv = [KAMAILIO, "-f", str(KAMAILIO_DIR / "kamailio.cfg"), "-DD", "-E"]
        argv += ["-m", "64", "-M", "8"]
        for name, value in values.items():
            text = f'"{value}"' if isinstance(value, str) and name != "SIP_LISTEN" else value
            argv += ["-A", f"{name}={text}"]
        self.argv = argv
        self._client = self.run_dir / "rpc-client.sock"
        self.proc = self._start()

    def _start(self) -> subprocess.Popen[bytes]:
        with open(self.log_path, "ab") as log:
            proc = subprocess.Popen(self.argv, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"kamailio exited with {proc.returncode}:\n{self.log()[-3000:]}")
            with contextlib.suppress(OSError, TimeoutError):
                self.rpc("core.uptime")
                return proc
            if time.monotonic() > deadline:
                stop_process(proc)
                raise TimeoutError(f"kamailio did not start:\n{self.log()[-3000:]}")
            time.sleep(0.1)

    def rpc(self, method: str, *params: Any) -> Any:
        """One JSON-RPC command over Kamailio's datagram socket (jsonrpcs)."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
            with contextlib.suppress(FileNotFoundError):
                self._client.unlink()
            s.bind(str(self._client))
            s.settimeout(RPC_TIMEOUT_S)
            request = {"jsonrpc": "2.0", "method": method, "params": list(params), "id": 1}
            s.sendto(json.dumps(request).encode(), str(self.run_dir / "kamailio_rpc.sock"))
            answer = json.loads(s.recv(1 << 20))
        if "error" in answer:
            raise RuntimeError(f"{method}: {answer['error']}")
        return answer["result"]

    def table(self, name: str) -> dict[str, Any]:
        """The entries of one of metering.cfg's hash tables."""
        out: dict[str, Any] = {}
        for slot in self.rpc("htable.dump", name):
            for item in slot.get("slot", []):
                out[item["name"]] = item["value"]
        return out

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        stop_process(self.proc)


@dataclasses.dataclass
class CallLog:
    """What SIPp's scenarios logged, per SIP Call-ID: event -> clock (ms)."""

    events: dict[str, dict[str, int]]
    refusals: dict[str, int]  # Call-ID -> SIP status

    @classmethod
    def read(cls, *paths: Path) -> CallLog:
        events: dict[str, dict[str, int]] = {}
        refusals: dict[str, int] = {}
        for path in paths:
            if not path.exists():
                continue
            for line in path.read_text().splitlines():
                parts = line.split()
                if len(parts) < 3:
                    continue
                event, call_id, clock_ms = parts[0], parts[1], int(parts[2])
                events.setdefault(call_id, {})[event] = clock_ms
                if event == "refused":
                    refusals[call_id] = int(parts[3])
        return cls(events, refusals)

    def with_event(self, event: str) -> list[str]:
        return sorted(c for c, e in self.events.items() if event in e)

    def talk_ms(self, call_id: str) -> int:
        """Answer to BYE (sent by the caller, or received from the proxy) at the caller."""
        e = self.events[call_id]
        return e.get("hangup", e.get("cut", 0)) - e["answered"]


def scenario(workdir: Path, hold_ms: int, reinvite_at_ms: int = 0) -> Path:
    """caller.xml with its talk time filled in (and a re-INVITE spliced in)."""
    text = (SIPP_DIR / "caller.xml").read_text()
    reinvite = ""
    if reinvite_at_ms:
        reinvite = (SIPP_DIR / "reinvite.xml").read_text().split("\n", 1)[1]
        reinvite = reinvite.replace("@REINVITE_AT_MS@", str(reinvite_at_ms))
        hold_ms -= reinvite_at_ms
    text = text.replace("<!-- @REINVITE@ -->", reinvite).replace("@HOLD_MS@", str(hold_ms))
    path = workdir / f"caller-{hold_ms}-{reinvite_at_ms}.xml"
    path.write_text(text)
    return path


class Sipp:
    """One SIPp process (a callee server, or a caller placing calls)."""

    def __init__(self, workdir: Path, name: str, scenario_path: Path, *args: str) -> None:
        require_sip_tools()
        self.port = free_udp_port()
        self.log_path = workdir / f"{name}-{self.port}.log"
        self.out_path = workdir / f"{name}-{self.port}.out"
        argv = [SIPP, *args, "-sf", str(scenario_path), "-i", "127.0.0.1", "-p", str(self.port)]
        argv += ["-nostdin", "-trace_logs", "-log_file", str(self.log_path)]
        argv += ["-trace_err", "-error_file", str(workdir / f"{name}-{self.port}.err")]
        with open(self.out_path, "wb") as out:
            self.proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, cwd=workdir)

    @classmethod
    def callee(cls, workdir: Path, scenario_name: str = "callee.xml") -> Sipp:
        return cls(workdir, scenario_name.removesuffix(".xml"), SIPP_DIR / scenario_name)

    @classmethod
    def caller(
        cls,
        workdir: Path,
        kamailio: Kamailio,
        callee: Sipp,
        account_id: str,
        scenario_path: Path,
        calls: int = 1,
        rate_per_s: int = 10,
        timeout_s: int = 60,
    ) -> Sipp:
        return cls(
            workdir,
            "caller",
            scenario_path,
            f"127.0.0.1:{callee.port}",
            "-rsa",
            f"127.0.0.1:{kamailio.port}",
            "-key",
            "account",
            account_id,
            "-m",
            str(calls),
            "-l",
            str(calls),
            "-r",
            str(rate_per_s),
            "-timeout",
            f"{timeout_s}s",
        )

    def wait(self, timeout_s: float = 90.0) -> CallLog:
        """Until the caller placed all its calls; its log."""
        try:
            self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            stop_process(self.proc)
            raise
        return self.calls()

    def calls(self) -> CallLog:
        return CallLog.read(self.log_path)

    def stop(self) -> None:
        stop_process(self.proc)


def keep_logs(workdir: Path, into: Path) -> None:
    """Copy the run's logs next to the test's output for a failing run."""
    into.mkdir(parents=True, exist_ok=True)
    for path in workdir.rglob("*"):
        if path.suffix in {".log", ".out", ".err"}:
            shutil.copy(path, into / path.name)
