"""`python -m devkit.demo`: a pretend call-control switch for the live demo of
`./dev run`.

It is only an HTTP client of the gateway (the switch contract v1): it creates a
few demo accounts with credit and a customer token each, prints the dashboard
and ops URLs, then keeps placing calls (reserve, extend, commit) and sending and
receiving texts so the balances move. Call time runs faster than the clock
(`--time-scale`), so a few seconds of wall time bill a few minutes.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import logging
import random
import signal
import time
import uuid
from pathlib import Path
from typing import Any

import httpx

from metering.settings import Settings

DEMO_ACCOUNTS = ("demo-alice", "demo-bob", "demo-carol")
DEMO_RATE_CARD = {
    "call_outbound_per_minute_micros": 120_000,
    "call_inbound_per_minute_micros": 40_000,
    "call_increment_seconds": 6,
    "call_minimum_seconds": 6,
    "sms_outbound_micros": 75_000,
    "sms_inbound_micros": 10_000,
    "ring_through_attempt_micros": 20_000,
    "number_purchase_micros": 1_000_000,
    "number_renewal_micros": 1_000_000,
}
INITIAL_CREDIT_MICROS = 30_000_000
# Below this available balance the demo tops the account up, so it runs forever.
TOP_UP_BELOW_MICROS = 10_000_000
TOP_UP_MICROS = 40_000_000
# Automatic recharge on two accounts, through the local Stripe: one card that pays,
# one that is refused (so the ops page shows a failed recharge and the SMTP sink
# gets the failure email). It triggers before the demo's own top-up would.
DEMO_CARDS = {"demo-alice": "pm_card_visa", "demo-carol": "pm_card_chargeCustomerFail"}
RECHARGE_AMOUNT_MICROS = 60_000_000
RECHARGE_THRESHOLD_MICROS = 20_000_000
RECHARGE_FAILURE_EMAIL = "billing-alerts@demo.example"
OPEN_CALLS_PER_ACCOUNT_MAX = 2
CALL_SECONDS_MAX = 900
REQUEST_TIMEOUT_S = 10.0
ERRORS_IN_A_ROW_MAX = 50


@dataclasses.dataclass
class OpenCall:
    account_id: str
    call_id: str
    started_at: float
    duration_seconds: int
    granted_seconds: int


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--gateway-url",
        default="",
        help="the gateway to drive (default http://METERING_HOST:METERING_PORT)",
    )
    parser.add_argument(
        "--interval-s", type=float, default=0.4, help="pause between two switch requests"
    )
    parser.add_argument(
        "--time-scale", type=float, default=60.0, help="billed call seconds per wall-clock second"
    )
    parser.add_argument(
        "--steps-max", type=int, default=0, help="stop after this many steps (0: run until stopped)"
    )
    parser.add_argument(
        "--links-file",
        default="",
        help="also write the dashboards' customer tokens here as JSON (./dev run prints "
        "them again with its summary)",
    )


async def run(args: argparse.Namespace, settings: Settings) -> int:
    """Set up the demo accounts, print where to look, then drive traffic until stopped."""
    base_url = args.gateway_url or f"http://{settings.host}:{settings.port}"
    # One log line per request would bury the URLs printed below.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    async with httpx.AsyncClient(base_url=base_url, timeout=REQUEST_TIMEOUT_S) as http:
        switch = DemoSwitch(http, settings, args.time_scale)
        tokens = await switch.set_up()
        print_urls(base_url, settings, tokens)
        if args.links_file:
            write_links(Path(args.links_file), tokens)
        steps = 0
        while not stop.is_set() and (args.steps_max == 0 or steps < args.steps_max):
            await switch.step()
            steps += 1
            try:
                await asyncio.wait_for(stop.wait(), args.interval_s)
            except TimeoutError:
                pass
        await switch.hang_up_all()
    return 0


def write_links(path: Path, tokens: dict[str, str]) -> None:
    """{account id: customer token}, written whole (a reader never sees half)."""
    partial = path.with_suffix(".tmp")
    partial.write_text(json.dumps(tokens))
    partial.replace(path)


def print_urls(base_url: str, settings: Settings, tokens: dict[str, str]) -> None:
    print("", flush=True)
    print("Demo switch is placing calls and sending texts for:", flush=True)
    for account_id, token in tokens.items():
        print(
            f"  dashboard {account_id}: {base_url}/dashboard?account={account_id}&token={token}",
            flush=True,
        )
    print(f"  ops page: {base_url}/ops?token={settings.ops_token}", flush=True)
    print(f"  switch token: {settings.switch_token}   ops token: {settings.ops_token}", flush=True)
    for account_id, token in tokens.items():
        print(f"  customer token {account_id}: {token}", flush=True)
    print("", flush=True)


class DemoSwitch:
    """The switch's side of the contract, with a few calls in flight at a time."""

    def __init__(self, http: httpx.AsyncClient, settings: Settings, time_scale: float) -> None:
        self.http = http
        self.switch = {"Authorization": f"Bearer {settings.switch_token}"}
        self.ops = {"Authorization": f"Bearer {settings.ops_token}"}
        self.time_scale = time_scale
        self.calls: list[OpenCall] = []
        self.errors_in_a_row = 0
        self.random = random.Random()

    async def set_up(self) -> dict[str, str]:
        """Create (or find again) the demo accounts, credit them once, issue tokens."""
        tokens: dict[str, str] = {}
        for account_id in DEMO_ACCOUNTS:
            r = await self.http.post(
                "/v1/accounts",
                headers=self.ops,
                json={"account_id": account_id, "rate_card": DEMO_RATE_CARD},
            )
            expect(r, 200, 201)
            # The same credit id every start: credited once, however often the demo runs.
            r = await self.http.post(
                f"/v1/accounts/{account_id}/credits",
                headers=self.ops,
                json={
                    "credit_id": "demo-initial-credit",
                    "amount_micros": INITIAL_CREDIT_MICROS,
                    "reason": "demo credit",
                },
            )
            expect(r, 200)
            r = await self.http.post(
                f"/v1/accounts/{account_id}/tokens",
                headers=self.ops,
                json={"label": "demo dashboard"},
            )
            expect(r, 201)
            tokens[account_id] = str(r.json()["token"])
            if account_id in DEMO_CARDS:
                await self.set_up_recharge(account_id, tokens[account_id], DEMO_CARDS[account_id])
        return tokens

    async def set_up_recharge(self, account_id: str, token: str, payment_method_id: str) -> None:
        """Card on file and automatic recharge, as the customer's dashboard would do it.
        Best effort: without payments (or a Stripe) the demo runs on top-ups alone."""
        customer = {"Authorization": f"Bearer {token}"}
        r = await self.http.put(
            f"/v1/accounts/{account_id}/card",
            headers=customer,
            json={"payment_method_id": payment_method_id},
        )
        if r.status_code != 200:
            print(
                f"demo switch: no card for {account_id} ({r.status_code}: {r.text[:200]})",
                flush=True,
            )
            return
        r = await self.http.put(
            f"/v1/accounts/{account_id}/recharge",
            headers=customer,
            json={
                "amount_micros": RECHARGE_AMOUNT_MICROS,
                "threshold_micros": RECHARGE_THRESHOLD_MICROS,
                "failure_email": RECHARGE_FAILURE_EMAIL,
                "enabled": True,
            },
        )
        if r.status_code != 200:
            print(
                f"demo switch: no automatic recharge for {account_id} ({r.status_code}: "
                f"{r.text[:200]})",
                flush=True,
            )

    async def step(self) -> None:
        """One switch action: finish a due call, extend one, start one, or a text."""
        try:
            await self._step()
            self.errors_in_a_row = 0
        except httpx.HTTPError as exc:
            # The gateway restarting is no reason to die; a gateway gone for good is.
            self.errors_in_a_row += 1
            print(f"demo switch: {exc!r}", flush=True)
            if self.errors_in_a_row >= ERRORS_IN_A_ROW_MAX:
                raise

    async def _step(self) -> None:
        now = time.monotonic()
        for call in list(self.calls):
            elapsed_s = int((now - call.started_at) * self.time_scale)
            if elapsed_s >= call.duration_seconds:
                await self.commit(call, call.duration_seconds)
                return
            if elapsed_s >= call.granted_seconds - 30:
                await self.extend(call)
                return
        account_id = self.random.choice(DEMO_ACCOUNTS)
        roll = self.random.random()
        if roll < 0.35 and self.open_calls(account_id) < OPEN_CALLS_PER_ACCOUNT_MAX:
            await self.reserve(account_id)
        elif roll < 0.85:
            direction = "outbound" if self.random.random() < 0.7 else "inbound"
            r = await self.http.post(
                "/v1/messages",
                headers=self.switch,
                json={
                    "account_id": account_id,
                    "message_id": new_id("sms"),
                    "direction": direction,
                },
            )
            await self.after_charge(account_id, r)
        else:
            r = await self.http.post(
                "/v1/ring-through-attempts",
                headers=self.switch,
                json={"account_id": account_id, "attempt_id": new_id("ring")},
            )
            await self.after_charge(account_id, r)

    def open_calls(self, account_id: str) -> int:
        return sum(1 for call in self.calls if call.account_id == account_id)

    async def reserve(self, account_id: str) -> None:
        call_id = new_id("call")
        direction = "outbound" if self.random.random() < 0.6 else "inbound"
        r = await self.http.post(
            "/v1/calls",
            headers=self.switch,
            json={"account_id": account_id, "call_id": call_id, "direction": direction},
        )
        if r.status_code == 200:
            self.calls.append(
                OpenCall(
                    account_id,
                    call_id,
                    time.monotonic(),
                    self.random.randint(20, CALL_SECONDS_MAX),
                    int(r.json()["granted_seconds"]),
                )
            )
        await self.after_charge(account_id, r)

    async def extend(self, call: OpenCall) -> None:
        r = await self.http.post(
            f"/v1/calls/{call.call_id}/extend",
            headers=self.switch,
            json={"account_id": call.account_id},
        )
        if r.status_code == 200:
            call.granted_seconds += int(r.json()["granted_seconds"])
        else:
            # Refused: the switch hangs up at the end of what was granted.
            await self.commit(call, min(call.duration_seconds, call.granted_seconds))
            await self.after_charge(call.account_id, r)

    async def commit(self, call: OpenCall, duration_seconds: int) -> None:
        self.calls.remove(call)
        r = await self.http.post(
            f"/v1/calls/{call.call_id}/commit",
            headers=self.switch,
            json={"account_id": call.account_id, "duration_seconds": duration_seconds},
        )
        expect(r, 200, 404)

    async def after_charge(self, account_id: str, r: httpx.Response) -> None:
        """Top the account up when it runs low, so the demo never stalls at zero."""
        expect(r, 200, 402, 429)
        body: dict[str, Any] = r.json()
        available = body.get("available_micros")
        if r.status_code == 402 or (isinstance(available, int) and available < TOP_UP_BELOW_MICROS):
            r = await self.http.post(
                f"/v1/accounts/{account_id}/credits",
                headers=self.ops,
                json={
                    "credit_id": new_id("topup"),
                    "amount_micros": TOP_UP_MICROS,
                    "reason": "demo top-up",
                },
            )
            expect(r, 200)

    async def hang_up_all(self) -> None:
        """On stop, bill the calls in flight for the time they ran."""
        now = time.monotonic()
        for call in list(self.calls):
            elapsed_s = int((now - call.started_at) * self.time_scale)
            with_grant = min(elapsed_s, call.granted_seconds)
            try:
                await self.commit(call, with_grant)
            except httpx.HTTPError:
                return


def new_id(kind: str) -> str:
    return f"demo-{kind}-{uuid.uuid4().hex[:16]}"


def expect(r: httpx.Response, *statuses: int) -> None:
    if r.status_code not in statuses:
        raise DemoError(f"{r.request.method} {r.request.url.path} -> {r.status_code}: {r.text}")


class DemoError(RuntimeError):
    """The gateway answered something the switch contract does not allow."""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devkit.demo", description=__doc__)
    add_arguments(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    return asyncio.run(run(args, Settings.from_env()))


if __name__ == "__main__":
    raise SystemExit(main())
