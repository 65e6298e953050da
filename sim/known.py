"""Defects the simulation finds that are known and still open on this commit.

A check named here is still run, and what it finds is printed in the report as
KNOWN OPEN, but it does not fail the run. Each entry goes as soon as its fix
lands (the report says when a known-open check found nothing, so a stale entry
shows). Keep this list short: a check in it guards nothing.
"""

from __future__ import annotations

KNOWN_OPEN: dict[str, str] = {}
