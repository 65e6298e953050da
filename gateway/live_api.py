"""Live websockets: an account's channel (its dashboard) and the ops channel.

    WS /v1/accounts/{account_id}/live   customer token of that account, or ops
    WS /v1/ops/live                     ops token

Token as `Authorization: Bearer <t>` or `?token=<t>`. A socket that may not
subscribe is accepted and closed at once with a 44xx code (see
gateway/live_hub.CLOSE_CODES); it is never sent a balance.

Frames (JSON text, money in integer micros):

    account channel  {"type": "snapshot", "account": <the GET /v1/accounts/{id} answer>}
                     {"type": "update", <the published change: account_id, event, item,
                      amount_micros, balance_micros, reserved_micros, available_micros,
                      seq, at_us, recharge_pending>}
    ops channel      {"type": "snapshot", "accounts": [<row>...], "first": bool,
                      "last": bool, "refresh": bool}   (chunked; repeated every
                      live_ops_refresh_s with refresh=true)
                     {"type": "updates", "updates": [<change>...]}

                     {"type": "burn", "window_s", "at_us", "total_micros_per_minute",
                      "rates": {<account_id>: <micros per minute>}}   (every
                      live_ops_burn_refresh_s; metering/burn.py)

Ops rows carry `burn_micros_per_minute`, the account's spend per minute over the
last burn_window_s as the server counts it (metering/burn.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from redis.exceptions import RedisError
from starlette.websockets import WebSocket, WebSocketDisconnect

from gateway.auth import (
    CUSTOMER,
    OPS,
    Caller,
    Forbidden,
    TooManyAuthFailures,
    Unauthorized,
    authenticate,
)
from gateway.live_hub import (
    CLOSE_CODES,
    CLOSE_FORBIDDEN,
    CLOSE_TOO_MANY,
    CLOSE_TOO_SLOW,
    CLOSE_TRY_LATER,
    CLOSE_UNAUTHORIZED,
    CLOSE_UNKNOWN_ACCOUNT,
    LiveHub,
    SocketRefused,
    Subscriber,
)
from metering import accounts
from metering.accounts import AccountView
from metering.errors import InvalidRequest, UnknownAccount
from metering.settings import Settings

ACCOUNT_ROLES = frozenset({CUSTOMER, OPS})
OPS_ROLES = frozenset({OPS})
# Not a close code on the wire: the client went away, nothing is left to send.
CLIENT_GONE = 0

OPENAPI_WEBSOCKETS = {
    "/v1/accounts/{account_id}/live": {
        "roles": ["customer", "ops"],
        "summary": "The account's live balance: a snapshot, then every change.",
    },
    "/v1/ops/live": {
        "roles": ["ops"],
        "summary": "Every account's live balance: chunked snapshot, then batched changes.",
    },
    "auth": "Authorization: Bearer <token> header, or ?token=<token> (browsers).",
    "close_codes": {str(code): text for code, text in CLOSE_CODES.items()},
}


async def account_live(ws: WebSocket) -> None:
    """One account's live channel."""
    settings: Settings = ws.state.settings
    hub: LiveHub = ws.state.live_hub
    account_id = ws.path_params["account_id"]
    caller = await _caller_or_refusal(ws, ACCOUNT_ROLES, account_id)
    await ws.accept()
    try:
        if isinstance(caller, SocketRefused):
            raise caller
        sub = hub.add(account_id, caller.token_id)
    except SocketRefused as refused:
        await _close(ws, refused.code, settings, refused.reason)
        return
    try:
        try:
            account = await accounts.get_account(ws.state.store, account_id)
        except (UnknownAccount, InvalidRequest):
            await _close(ws, CLOSE_UNKNOWN_ACCOUNT, settings)
            return
        except RedisError:
            await _close(ws, CLOSE_TRY_LATER, settings, "the balance store did not answer")
            return
        sub.set_floor(account_id, account.seq)
        if await _send(ws, sub, {"type": "snapshot", "account": account.as_dict()}, settings):
            await _pump(ws, sub, settings, [])
    finally:
        hub.remove(sub)


async def ops_live(ws: WebSocket) -> None:
    """Every account's live channel (the operations page)."""
    settings: Settings = ws.state.settings
    hub: LiveHub = ws.state.live_hub
    caller = await _caller_or_refusal(ws, OPS_ROLES, None)
    await ws.accept()
    try:
        if isinstance(caller, SocketRefused):
            raise caller
        sub = hub.add(None)
    except SocketRefused as refused:
        await _close(ws, refused.code, settings, refused.reason)
        return

    async def snapshot(refresh: bool) -> bool:
        try:
            views = await accounts.list_accounts(ws.state.store, settings.live_ops_accounts_max)
            burn = await hub.burn_rates(ws.state.store)
        except RedisError:
            return True  # keep the socket; the next refresh tries again
        return await _send_ops_snapshot(ws, sub, views, burn.rates, refresh, settings)

    async def burn_frame() -> bool:
        try:
            burn = await hub.burn_rates(ws.state.store)
        except RedisError:
            return True
        return await _send(ws, sub, {"type": "burn", **burn.as_dict()}, settings)

    try:
        if await snapshot(False):
            timers = [
                Timer(settings.live_ops_refresh_s, lambda: snapshot(True)),
                Timer(settings.live_ops_burn_refresh_s, burn_frame),
            ]
            await _pump(ws, sub, settings, timers)
    finally:
        hub.remove(sub)


@dataclasses.dataclass(slots=True)
class Timer:
    """Something an ops socket sends every period_s, between the live updates."""

    period_s: float
    run: Callable[[], Awaitable[bool]]  # False: the socket is done
    due: float = 0.0


async def _caller_or_refusal(
    ws: WebSocket, roles: frozenset[str], account_id: str | None
) -> Caller | SocketRefused:
    """The caller when it may subscribe, else why the socket is refused."""
    try:
        return await authenticate(ws, ws.state.settings, ws.state.store, roles, account_id)
    except Unauthorized:
        return SocketRefused(CLOSE_UNAUTHORIZED, CLOSE_CODES[CLOSE_UNAUTHORIZED])
    except Forbidden:
        return SocketRefused(CLOSE_FORBIDDEN, CLOSE_CODES[CLOSE_FORBIDDEN])
    except TooManyAuthFailures as exc:
        return SocketRefused(CLOSE_TOO_MANY, str(exc)[:120])
    except RedisError:
        return SocketRefused(CLOSE_TRY_LATER, "the balance store did not answer")


def _ops_row(view: AccountView, burn_micros_per_minute: int) -> dict[str, Any]:
    return {
        "account_id": view.account_id,
        "balance_micros": view.balance_micros,
        "reserved_micros": view.reserved_micros,
        "available_micros": view.available_micros,
        "seq": view.seq,
        "open_calls": view.open_calls,
        "recharge": view.recharge,
        "burn_micros_per_minute": burn_micros_per_minute,
    }


async def _send_ops_snapshot(
    ws: WebSocket,
    sub: Subscriber,
    views: list[AccountView],
    burn: dict[str, int],
    refresh: bool,
    settings: Settings,
) -> bool:
    chunk = settings.live_frame_accounts_max
    chunks = [views[i : i + chunk] for i in range(0, len(views), chunk)] or [[]]
    for i, part in enumerate(chunks):
        rows = []
        for view in part:
            sub.set_floor(view.account_id, view.seq)
            rows.append(_ops_row(view, burn.get(view.account_id, 0)))
        frame = {
            "type": "snapshot",
            "accounts": rows,
            "first": i == 0,
            "last": i == len(chunks) - 1,
            "refresh": refresh,
        }
        if not await _send(ws, sub, frame, settings):
            return False
    return True


async def _pump(ws: WebSocket, sub: Subscriber, settings: Settings, timers: list[Timer]) -> None:
    """Send pending frames until the client leaves or the socket must close.
    A reader task notices the client leaving; the sender never blocks the hub."""

    async def read_until_gone() -> None:
        with contextlib.suppress(Exception):
            while True:
                message = await ws.receive()
                if message["type"] == "websocket.disconnect":
                    break
        sub.close(CLIENT_GONE)

    reader = asyncio.create_task(read_until_gone())
    loop = asyncio.get_running_loop()
    for timer in timers:
        timer.due = loop.time() + timer.period_s
    try:
        while True:
            if not timers:
                await sub.wake.wait()
            else:
                # Timers fire on time even while updates keep the socket busy.
                now = loop.time()
                due = [t for t in timers if t.due <= now]
                for timer in due:
                    timer.due = now + timer.period_s
                if due:
                    if not all([await timer.run() for timer in due]):
                        break
                    continue
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(
                        sub.wake.wait(), min(t.due for t in timers) - loop.time()
                    )
                if not sub.wake.is_set():
                    continue
            if sub.close_code is not None:
                break
            if sub.account_id is not None:
                for text in sub.take(1):
                    if not await _send_text(ws, sub, text, settings):
                        break
            else:
                updates = sub.take(settings.live_frame_accounts_max)
                if updates and not await _send(
                    ws, sub, {"type": "updates", "updates": updates}, settings
                ):
                    break
    finally:
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reader
    # Leave the hub first: closing a stuck socket may itself wait for the timeout.
    ws.state.live_hub.remove(sub)
    if sub.close_code not in (None, CLIENT_GONE):
        await _close(ws, sub.close_code, settings)


async def _send(ws: WebSocket, sub: Subscriber, frame: dict[str, Any], settings: Settings) -> bool:
    return await _send_text(ws, sub, orjson.dumps(frame).decode(), settings)


async def _send_text(ws: WebSocket, sub: Subscriber, text: str, settings: Settings) -> bool:
    """Send one frame within live_send_timeout_s; False when the socket is done."""
    try:
        # asyncio.timeout, not wait_for: no extra task per frame on the fan-out path.
        async with asyncio.timeout(settings.live_send_timeout_s):
            await ws.send_text(text)
    except TimeoutError:
        sub.close(CLOSE_TOO_SLOW)
        return False
    except (WebSocketDisconnect, RuntimeError, OSError):
        sub.close(CLIENT_GONE)
        return False
    return True


async def _close(ws: WebSocket, code: int, settings: Settings, reason: str | None = None) -> None:
    # A stuck client's close frame may never leave either: bounded like a send.
    with contextlib.suppress(Exception):
        await asyncio.wait_for(
            ws.close(code, reason or CLOSE_CODES.get(code, "")), settings.live_send_timeout_s
        )
