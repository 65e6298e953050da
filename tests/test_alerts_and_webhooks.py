"""Low-balance alerts and signed webhooks, end to end: debits through a real
gateway cross the customer's threshold, the notifier emails once per crossing
over real SMTP (aiosmtpd) even under 200 concurrent debits, and delivers the
events to an HTTP receiver the test runs, which checks the signature with the
README's own snippet; a failing receiver is retried, a hanging one does not
hold up the others, and an event is never recorded as delivered twice."""

from __future__ import annotations

import asyncio
import re
import threading
import time
from collections.abc import AsyncIterator, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from devkit.testing import RATE_CARD
from metering.ledger.database import create_pool
from metering.notify import webhooks
from metering.notify.notifier import Notifier, webhook_client
from metering.settings import Settings
from metering.store import open_store
from tests.conftest import OPS, SWITCH, make_account, test_settings
from tests.fixtures_payments import Mailbox

SMS = RATE_CARD["sms_outbound_micros"]
README = Path(__file__).resolve().parent.parent / "README.md"


def documented_verifier() -> Any:
    """The receiver's check exactly as the README shows it."""
    text = README.read_text()
    code = re.search(r"<!-- webhook-verify -->\n```python\n(.*?)```", text, re.S)
    assert code, "the README lost its webhook verification snippet"
    namespace: dict[str, Any] = {}
    exec(code.group(1), namespace)  # noqa: S102 - the documented snippet itself
    return namespace["verify_metering_signature"]


class Receiver:
    """A real HTTP server on a free port that records every delivery, verifies its
    signature, and answers 500 for the first `fail_first` deliveries of each event
    (or hangs `hang_s` seconds before answering)."""

    def __init__(self, secret: str = "", fail_first: int = 0, hang_s: float = 0.0) -> None:
        self.secret, self.fail_first, self.hang_s = secret, fail_first, hang_s
        self.verify = documented_verifier()
        self.seen: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers["Content-Length"]))
                event = orjson.loads(body)
                try:
                    receiver.verify(body, self.headers["Metering-Signature"], receiver.secret)
                    verified = True
                except ValueError:
                    verified = False
                with receiver.lock:
                    before = sum(1 for s in receiver.seen if s["id"] == event["id"])
                    code = 500 if before < receiver.fail_first else 200
                    if not verified:
                        code = 400
                    receiver.seen.append(
                        {
                            "id": event["id"],
                            "type": event["type"],
                            "code": code,
                            "verified": verified,
                            "at": time.monotonic(),
                            "body": body,
                            "signature": self.headers["Metering-Signature"],
                        }
                    )
                if receiver.hang_s:
                    time.sleep(receiver.hang_s)
                self.send_response(code)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def notify_settings(mailbox: Mailbox) -> Settings:
    return test_settings(
        smtp_port=mailbox.port,  # type: ignore[attr-defined]
        notifier_poll_interval_s=0.05,
        webhook_timeout_s=1.0,
        webhook_backoff_base_s=0.2,
        webhook_backoff_max_s=0.4,
        webhook_private_targets=True,
    )


@pytest.fixture
async def notifier(notify_settings: Settings) -> AsyncIterator[Notifier]:
    store = await open_store(notify_settings)
    pool = await create_pool(notify_settings)
    http = webhook_client(notify_settings)
    n = Notifier(store, pool, notify_settings, http, consumer="tests")
    await n.reader.ensure_groups()
    yield n
    for task in n.in_flight.values():
        task.cancel()
    await asyncio.gather(*n.in_flight.values(), return_exceptions=True)
    await http.aclose()
    await pool.close()
    await store.redis.aclose()


@pytest.fixture
def receivers() -> Iterator[list[Receiver]]:
    made: list[Receiver] = []
    yield made
    for r in made:
        r.stop()


async def run_notifier(n: Notifier, predicate: Any, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        await n.step()
        await n.start_deliveries()
        if predicate():
            return
        await asyncio.sleep(0.05)
    raise AssertionError("the notifier did not get there in time")


async def texts(http: httpx.AsyncClient, account: str, prefix: str, n: int) -> list[int]:
    async def one(i: int) -> int:
        r = await http.post(
            "/v1/messages",
            headers=SWITCH,
            json={"account_id": account, "message_id": f"{prefix}{i}", "direction": "outbound"},
        )
        return r.status_code

    return list(await asyncio.gather(*(one(i) for i in range(n))))


async def test_low_balance_email_once_per_crossing_under_200_concurrent_debits(
    http: httpx.AsyncClient, notifier: Notifier, mailbox: Mailbox
) -> None:
    account = await make_account(http, 200 * SMS)
    email = f"{account}@example.com"
    r = await http.put(
        f"/v1/accounts/{account}/alerts",
        headers=OPS,
        json={"low_balance_threshold_micros": 150 * SMS, "email": email},
    )
    assert r.status_code == 200, r.text
    assert await texts(http, account, "a", 200) == [200] * 200  # 200 -> 0 texts' worth

    await run_notifier(notifier, lambda: len(mailbox.to(email)) >= 2)
    for _ in range(10):  # more rounds send nothing more
        await notifier.step()
    subjects = sorted(m["Subject"] for m in mailbox.to(email))
    assert subjects == [
        f"Account {account} has no balance left",
        f"Low balance on account {account}",
    ]
    depleted = next(m for m in mailbox.to(email) if "no balance" in m["Subject"])
    body = depleted.get_payload()
    assert "can no longer" in body and "text messages" in body and "phone calls" in body

    # A credit above the threshold re-arms; the next crossing is one more email.
    r = await http.post(
        f"/v1/accounts/{account}/credits",
        headers=OPS,
        json={"credit_id": "again", "amount_micros": 160 * SMS, "reason": "t"},
    )
    assert r.status_code == 200
    assert await texts(http, account, "b", 20) == [200] * 20
    await run_notifier(notifier, lambda: len(mailbox.to(email)) >= 3)
    for _ in range(5):
        await notifier.step()
    assert len(mailbox.to(email)) == 3
    view = (await http.get(f"/v1/accounts/{account}", headers=OPS)).json()
    assert view["alerts"]["low_balance_threshold_micros"] == 150 * SMS


async def test_webhooks_are_signed_retried_and_succeed_once_per_event(
    http: httpx.AsyncClient,
    notifier: Notifier,
    notify_settings: Settings,
    receivers: list[Receiver],
) -> None:
    account = await make_account(http, 10 * SMS)
    flaky = Receiver(fail_first=2)
    receivers.append(flaky)
    reg = await webhooks.register(
        notifier.db,
        notify_settings,
        account,
        {"url": flaky.url, "events": ["balance.low", "balance.depleted"]},
    )
    flaky.secret = reg.secret
    r = await http.put(
        f"/v1/accounts/{account}/alerts",
        headers=OPS,
        json={"low_balance_threshold_micros": 5 * SMS},
    )
    assert r.status_code == 200
    assert await texts(http, account, "w", 10) == [200] * 10

    def both_delivered() -> bool:
        return sum(1 for s in flaky.seen if s["code"] == 200) >= 2

    await run_notifier(notifier, both_delivered)
    await asyncio.sleep(1.0)  # later rounds: nothing is sent again
    for _ in range(10):
        await notifier.start_deliveries()
        await asyncio.sleep(0.05)
    assert all(s["verified"] for s in flaky.seen)
    by_event: dict[str, list[int]] = {}
    for s in flaky.seen:
        by_event.setdefault(s["id"], []).append(s["code"])
    assert sorted(s["type"] for s in flaky.seen if s["code"] == 200) == [
        "balance.depleted",
        "balance.low",
    ]
    for codes in by_event.values():
        assert codes == [500, 500, 200]  # retried after failing, succeeded once
    listed = (await http.get(f"/v1/accounts/{account}/webhooks", headers=OPS)).json()
    deliveries = listed["webhooks"][0]["recent_deliveries"]
    assert sorted((d["status"], d["attempts"], d["last_status_code"]) for d in deliveries) == [
        ("succeeded", 3, 200),
        ("succeeded", 3, 200),
    ]
    assert "secret" not in listed["webhooks"][0]

    # The documented check refuses the same delivery under a wrong secret.
    delivered = flaky.seen[-1]
    flaky.verify(delivered["body"], delivered["signature"], reg.secret)
    with pytest.raises(ValueError):
        flaky.verify(delivered["body"], delivered["signature"], "whsec_wrong")
    with pytest.raises(ValueError):
        flaky.verify(delivered["body"] + b" ", delivered["signature"], reg.secret)


async def test_a_hanging_endpoint_does_not_hold_up_the_others(
    http: httpx.AsyncClient,
    notifier: Notifier,
    notify_settings: Settings,
    receivers: list[Receiver],
) -> None:
    hanging, healthy = Receiver(hang_s=3.0), Receiver()
    receivers += [hanging, healthy]
    account = await make_account(http, 10 * SMS)
    for receiver in (hanging, healthy):
        reg = await webhooks.register(
            notifier.db,
            notify_settings,
            account,
            {"url": receiver.url, "events": ["balance.depleted", "balance.low"]},
        )
        receiver.secret = reg.secret
    r = await http.put(
        f"/v1/accounts/{account}/alerts",
        headers=OPS,
        json={"low_balance_threshold_micros": 5 * SMS},
    )
    assert r.status_code == 200
    started = time.monotonic()
    assert await texts(http, account, "h", 10) == [200] * 10
    await run_notifier(notifier, lambda: len(healthy.seen) >= 2, timeout_s=5.0)
    # Both events reached the healthy endpoint well inside one hanging timeout each.
    assert healthy.seen[-1]["at"] - started < notify_settings.webhook_timeout_s + 1.5
    assert all(s["code"] == 200 for s in healthy.seen)
    failing = []
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and not failing:
        await notifier.start_deliveries()
        await asyncio.sleep(0.1)
        failing = [
            w
            for w in (await http.get("/v1/ops/webhooks?failing=1", headers=OPS)).json()["webhooks"]
            if w["url"] == hanging.url
        ]
    assert failing and failing[0]["last_error"], failing


async def test_customer_webhook_may_not_target_the_gateways_own_network(
    http: httpx.AsyncClient,
) -> None:
    account = await make_account(http)
    r = await http.post(
        f"/v1/accounts/{account}/webhooks",
        headers=OPS,
        json={"url": "http://127.0.0.1:6379/", "events": ["balance.low"]},
    )
    assert r.status_code == 422 and r.json()["field"] == "url", r.text
    r = await http.post(
        f"/v1/accounts/{account}/webhooks",
        headers=OPS,
        json={"url": "https://192.0.2.10/hook", "events": ["no.such"]},
    )
    assert r.status_code == 422 and r.json()["field"] == "events", r.text
