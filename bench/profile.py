"""`python -m bench.profile [--seconds N] [--workers N]`: where a gateway process
spends its time on the authorize path.

Starts a private redis-server and one gateway, drives POST /v1/messages with wrk
(hot account), samples the gateway with py-spy (`pip install py-spy`) for
`seconds`, and prints the functions holding the most samples, by own time and by
total time. The raw collapsed stacks go to bench/results/profile-<date>.txt
(loadable in speedscope or flamegraph.pl).
"""

from __future__ import annotations

import argparse
import collections
import datetime
import shutil
import subprocess
import sys
import threading
from pathlib import Path

from bench import tools
from bench.procs import SWITCH_TOKEN, start_gateway
from bench.scenarios import Run, seed
from devkit.testing import ROOT, RedisServer

TOP = 25
SAMPLE_RATE_HZ = 250


def frame_name(frame: str) -> str:
    # py-spy raw frames look like "function (path/to/file.py:123)"; keep file and function.
    name, _, where = frame.partition(" (")
    path = where.rstrip(")").rsplit(":", 1)[0]
    path = path.removeprefix(f"{ROOT}/")
    for marker in ("site-packages/", "python3.11/", "/gateway/", "/metering/", "/bench/"):
        if marker in path:
            kept = marker.strip("/") + "/" if marker.startswith("/") else ""
            path = kept + path.split(marker, 1)[1]
    return f"{path}:{name}"


AREAS = (
    ("gateway/", "gateway (the product's edge)"),
    ("metering/", "metering (the product's core)"),
    ("redis/", "redis-py client"),
    ("starlette/", "starlette"),
    ("uvicorn/", "uvicorn + httptools"),
    ("asyncio/runners.py", "event loop itself (uvloop, C: I/O, callbacks)"),
)


# Leaf frames whose own time is a socket write: the kernel's loopback TCP work
# (the receiver's side included) runs in the writing process's system call.
SOCKET_WRITES = (
    "uvicorn/protocols/http/httptools_impl.py:RequestResponseCycle.send",
    "metering/pipelining.py:RespConnection._write",
    "asyncio/streams.py:StreamWriter.writelines",
    "asyncio/streams.py:StreamWriter.write",
)


def area(frame: str) -> str:
    if frame in SOCKET_WRITES:
        return "socket writes (system calls: HTTP answers, Redis commands)"
    for prefix, label in AREAS:
        if frame.startswith(prefix):
            return label
    return "other Python (asyncio, stdlib)"


def summarize(collapsed: str) -> str:
    own: collections.Counter[str] = collections.Counter()
    areas: collections.Counter[str] = collections.Counter()
    total: collections.Counter[str] = collections.Counter()
    samples = 0
    for line in collapsed.splitlines():
        stack, _, count_s = line.rpartition(" ")
        if not stack:
            continue
        count = int(count_s)
        frames = [
            frame_name(f)
            for f in stack.split(";")
            if f and not f.startswith("process ") and not f.startswith("thread ")
        ]
        samples += count
        if frames:
            own[frames[-1]] += count
            areas[area(frames[-1])] += count
        for f in set(frames):
            total[f] += count
    out = [f"{samples} samples", "", "own time by area:"]
    out += [f"  {n / samples:6.1%}  {a}" for a, n in areas.most_common()]
    out += ["", "own time (the frame itself was running):"]
    out += [f"  {n / samples:6.1%}  {f}" for f, n in own.most_common(TOP)]
    out += ["", "total time (the frame was on the stack):"]
    out += [f"  {n / samples:6.1%}  {f}" for f, n in total.most_common(TOP)]
    return "\n".join(out)


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--idle", action="store_true", help="include idle (epoll) samples")
    parser.add_argument(
        "--summarize", type=Path, help="only summarize collapsed stacks written before"
    )
    args = parser.parse_args()
    if args.summarize:
        print(summarize(args.summarize.read_text()))
        return 0
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(py_spy).exists():
        print("py-spy is not installed: pip install py-spy", file=sys.stderr)
        return 2
    redis = RedisServer()
    out = (
        Path(__file__).resolve().parent
        / "results"
        / (f"profile-{datetime.datetime.now(datetime.UTC):%Y-%m-%dT%H%M}.txt")
    )
    try:
        run = Run(
            seconds=args.seconds,
            warmup_s=1,
            connections=args.connections,
            spread_accounts=1,
            database_url="",
            redis=redis,
        )
        seed(run, spread=False)
        gateway = start_gateway(run.settings(), 1)  # one worker: uvicorn serves in-process
        try:
            load = threading.Thread(
                target=tools.wrk,
                args=(
                    gateway.url,
                    "/v1/messages",
                    SWITCH_TOKEN,
                    1,
                    args.connections,
                    args.seconds + 2,
                ),
            )
            load.start()
            command = [
                py_spy,
                "record",
                "--pid",
                str(gateway.proc.pid),
                "--duration",
                str(args.seconds),
                "--rate",
                str(SAMPLE_RATE_HZ),
                "--format",
                "raw",
                "--output",
                str(out),
                "--nonblocking",
            ]
            if args.idle:
                command.append("--idle")
            subprocess.run(command, check=True, capture_output=True)
            load.join()
        finally:
            gateway.stop()
    finally:
        redis.stop()
    print(summarize(out.read_text()))
    print(f"\ncollapsed stacks: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
