"""A local Stripe-compatible server for tests and the demo: `localstripe` plus
the little it lacks, answering as Stripe's API documents.

    python -m tests.stripe_local --port 8420

Added on top of localstripe (which is imported, not copied):

- Idempotency keys (https://docs.stripe.com/api/idempotent_requests): a POST
  carrying `Idempotency-Key` is executed once; a repeat with the same key and
  the same parameters gets the saved answer with `Idempotent-Replayed: true`;
  the same key with other parameters is a 400 `idempotency_error`.
- Test controls under /_config (as localstripe's own webhook registration is):
  `POST /_config/lose_responses?count=N` makes the next N POSTs to
  /v1/payment_intents run and then answer 500 with `Stripe-Should-Retry: true`,
  as a response lost on the way back; `POST /_config/fail_requests?count=N&status=S`
  makes the next N POSTs to /v1/payment_intents answer S (a 5xx) without running,
  as Stripe failing before it charged; `GET /_config/counts` says how many
  PaymentIntents were really created (and how many answers are held).
- Webhook timing under the test's control: `POST /_config/deliveries?paused=1`
  keeps events from being sent (they are still created, listed by
  `GET /v1/events`); `POST /_config/events/{id}/resend` sends one event to every
  registered endpoint now, signed with the current time, as Stripe's own
  redelivery does, and answers the endpoints' statuses.
- `POST /_config/hold_intents?count=N` makes the next N POSTs to
  /v1/payment_intents run (the card is charged) and then hold their answer until
  `POST /_config/release_intents`: a caller stuck between charging and knowing.
- No pickle of the whole store to /tmp after every write: several servers run
  side by side on one machine, each in memory only.
- A card number typed with spaces ("4242 4242 4242 4242") into the card element
  is read as its digits, as Stripe's own card element sends it (localstripe's
  element passes the text through as typed).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import hmac
import json
import socket
import time
from typing import Any

import aiohttp
from aiohttp import web
from localstripe import resources, server, webhooks

# Keep the store in memory (see the module docstring).
resources.Store.dump_to_disk = lambda self: None  # type: ignore[method-assign]
_payment_method_init = resources.PaymentMethod.__init__


def _card_digits_only(self: Any, *args: Any, card: Any = None, **kwargs: Any) -> None:
    if isinstance(card, dict) and isinstance(card.get("number"), str):
        card = {**card, "number": "".join(card["number"].split())}
    _payment_method_init(self, *args, card=card, **kwargs)


resources.PaymentMethod.__init__ = _card_digits_only  # type: ignore[method-assign]

IDEMPOTENCY_KEYS_MAX = 100_000
IDEMPOTENCY_MISMATCH = (
    "Keys for idempotent requests can only be used with the same parameters "
    "they were first used with."
)
_saved: dict[tuple[str, str], tuple[bytes, int, bytes, str]] = {}
_locks: dict[tuple[str, str], asyncio.Lock] = {}
_controls: dict[str, int] = {
    "lose_responses": 0,
    "fail_requests": 0,
    "fail_status": 503,
    "payment_intents_created": 0,
    "deliveries_paused": 0,
    "hold_intents": 0,
    "held": 0,
}
_release = asyncio.Event()
_schedule_webhook = webhooks.schedule_webhook


def _maybe_schedule_webhook(event: Any) -> None:
    if not _controls["deliveries_paused"]:
        _schedule_webhook(event)


# localstripe's resources call the name they imported; route it through the pause.
resources.schedule_webhook = _maybe_schedule_webhook


@web.middleware
async def idempotency(request: web.Request, handler: Any) -> web.StreamResponse:
    key = request.headers.get("Idempotency-Key")
    creates_intent = request.method == "POST" and request.path == "/v1/payment_intents"
    if request.method != "POST" or not key or request.path.startswith("/_config/"):
        return await _counted(request, handler, creates_intent)
    if creates_intent and _controls["fail_requests"] > 0:
        # Before the idempotency record: Stripe failed without charging, so a
        # retry with the same key really runs.
        _controls["fail_requests"] -= 1
        return web.json_response(
            {"error": {"type": "api_error", "message": "failed before charging (test control)"}},
            status=_controls["fail_status"],
            headers={"Stripe-Should-Retry": "true"},
        )
    scope = (request.headers.get("Authorization", ""), key)
    body = await request.read()
    fingerprint = request.path.encode() + b"\n" + body
    lock = _locks.setdefault(scope, asyncio.Lock())
    async with lock:
        saved = _saved.get(scope)
        if saved is not None:
            saved_fingerprint, status, text, content_type = saved
            if saved_fingerprint != fingerprint:
                return web.json_response(
                    {
                        "error": {
                            "type": "idempotency_error",
                            "message": IDEMPOTENCY_MISMATCH,
                        }
                    },
                    status=400,
                )
            return web.Response(
                body=text,
                status=status,
                content_type=content_type,
                headers={"Idempotent-Replayed": "true", "Idempotency-Key": key},
            )
        response = await _counted(request, handler, creates_intent)
        if isinstance(response, web.Response) and response.body is not None:
            if len(_saved) >= IDEMPOTENCY_KEYS_MAX:
                _saved.pop(next(iter(_saved)))
            body_bytes = response.body if isinstance(response.body, bytes) else b""
            _saved[scope] = (
                fingerprint,
                response.status,
                body_bytes,
                response.content_type or "application/json",
            )
        if creates_intent and _controls["hold_intents"] > 0:
            _controls["hold_intents"] -= 1
            _controls["held"] += 1
            try:
                await _release.wait()
            finally:
                _controls["held"] -= 1
        if creates_intent and _controls["lose_responses"] > 0:
            _controls["lose_responses"] -= 1
            return web.json_response(
                {"error": {"type": "api_error", "message": "response lost (test control)"}},
                status=500,
                headers={"Stripe-Should-Retry": "true"},
            )
        return response


async def _counted(request: web.Request, handler: Any, creates_intent: bool) -> Any:
    try:
        response = await handler(request)
    except web.HTTPException as exc:
        response = exc
    if creates_intent:
        # Declined charges are created too (Stripe keeps the failed intent).
        _controls["payment_intents_created"] += 1
    return response


async def lose_responses(request: web.Request) -> web.Response:
    _controls["lose_responses"] = int(request.query.get("count", "1"))
    return web.Response()


async def fail_requests(request: web.Request) -> web.Response:
    _controls["fail_requests"] = int(request.query.get("count", "1"))
    _controls["fail_status"] = int(request.query.get("status", "503"))
    return web.Response()


async def counts(request: web.Request) -> web.Response:
    return web.json_response(
        {
            "payment_intents_created": _controls["payment_intents_created"],
            "held": _controls["held"],
        }
    )


async def deliveries(request: web.Request) -> web.Response:
    _controls["deliveries_paused"] = int(request.query.get("paused", "1"))
    return web.Response()


async def resend_event(request: web.Request) -> web.Response:
    event = resources.Event._api_retrieve(request.match_info["id"])
    payload = json.dumps(event._export(), indent=2, sort_keys=True).encode()
    timestamp = int(time.time())
    statuses = []
    async with aiohttp.ClientSession() as session:
        for hook in webhooks._webhooks.values():
            if hook.events is not None and event.type not in hook.events:
                continue
            mac = hmac.new(hook.secret.encode(), b"%d.%s" % (timestamp, payload), hashlib.sha256)
            headers = {
                "Content-Type": "application/json; charset=utf-8",
                "Stripe-Signature": f"t={timestamp},v1={mac.hexdigest()}",
            }
            async with session.post(hook.url, data=payload, headers=headers) as r:
                statuses.append({"status": r.status, "body": await r.text()})
    return web.json_response({"deliveries": statuses})


async def hold_intents(request: web.Request) -> web.Response:
    global _release
    _release = asyncio.Event()
    _controls["hold_intents"] = int(request.query.get("count", "1"))
    return web.Response()


async def release_intents(request: web.Request) -> web.Response:
    _controls["hold_intents"] = 0
    _release.set()
    return web.Response()


def _install(app: web.Application) -> None:
    # Outermost, around localstripe's error middleware, so errors are saved and replayed too.
    app.middlewares.insert(0, idempotency)
    app.router.add_post("/_config/lose_responses", lose_responses)
    app.router.add_post("/_config/fail_requests", fail_requests)
    app.router.add_get("/_config/counts", counts)
    app.router.add_post("/_config/deliveries", deliveries)
    app.router.add_post("/_config/events/{id}/resend", resend_event)
    app.router.add_post("/_config/hold_intents", hold_intents)
    app.router.add_post("/_config/release_intents", release_intents)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8420)
    parser.add_argument("--host", default="127.0.0.1")
    args = parser.parse_args()
    _install(server.app)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((args.host, args.port))
    print(json.dumps({"listening": f"http://{args.host}:{args.port}"}), flush=True)
    web.run_app(server.app, sock=sock, print=None, access_log=None)


if __name__ == "__main__":
    main()
