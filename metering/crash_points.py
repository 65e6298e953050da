"""Named points in the crash windows of money paths, where a test can make the
process die as a power cut would.

A test sets METERING_CRASH_POINT to one name; a process of it that reaches the
point kills itself with SIGKILL (no handler, no cleanup, nothing flushed), so
what the next process finds is exactly what that crash leaves behind. In
production the setting is empty and a point costs one string comparison.
"""

from __future__ import annotations

import logging
import os
import signal

from metering.settings import Settings

log = logging.getLogger(__name__)

# Stripe answered that the card was charged; nothing of it is written yet.
CHARGED = "charge.charged"
# The charge is recorded in Postgres as succeeded; Redis has not credited it.
CHARGE_RECORDED = "charge.recorded"
# Redis credited the charge; Postgres does not yet say it is credited.
CHARGE_CREDITED = "charge.credited"
# A recharge request was read from its stream; no episode exists for it yet.
REQUEST_READ = "recharge.request_read"
# A card or recharge settings change is committed in Postgres; Redis lacks it.
SETTINGS_COMMITTED = "settings.committed"

POINTS = (CHARGED, CHARGE_RECORDED, CHARGE_CREDITED, REQUEST_READ, SETTINGS_COMMITTED)


def reached(settings: Settings, point: str) -> None:
    """Die here if the settings name this point."""
    if settings.crash_point == point:
        log.warning("crash point %s reached: killing this process", point)
        os.kill(os.getpid(), signal.SIGKILL)
