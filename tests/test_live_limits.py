"""Live socket limits per gateway process: a customer token, and an account over
all its tokens, hold at most so many sockets; customers together stop short of
the process limit, keeping room for ops. One token at its limit never keeps
another customer or ops out."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest
from websockets.asyncio.client import ClientConnection, connect

from devkit.testing import GatewayProcess
from metering.settings import Settings
from tests.conftest import make_account
from tests.test_live import (
    customer_token,
    next_frame,
    refused_code,
    wait_for_live_sockets,
    ws_url,
)

SOCKETS_MAX = 30
OPS_RESERVED = 5
PER_TOKEN = 4
PER_ACCOUNT = 6
OPS_TOKEN = "test-ops-token"


@pytest.fixture(scope="module")
def limited_gateway(settings: Settings) -> Iterator[GatewayProcess]:
    process = GatewayProcess(
        settings.replace(
            live_sockets_max=SOCKETS_MAX,
            live_ops_sockets_reserved=OPS_RESERVED,
            live_sockets_per_token_max=PER_TOKEN,
            live_sockets_per_account_max=PER_ACCOUNT,
        )
    )
    yield process
    process.stop()


class Sockets:
    """Open sockets that must each get their snapshot, closed at the end."""

    def __init__(self, gateway: GatewayProcess) -> None:
        self.gateway = gateway
        self.open: list[ClientConnection] = []

    async def watch(self, account_id: str | None, token: str) -> ClientConnection:
        path = f"/v1/accounts/{account_id}/live" if account_id else "/v1/ops/live"
        ws = await connect(ws_url(self.gateway, f"{path}?token={token}"))
        self.open.append(ws)
        frame = await next_frame(ws)
        assert frame["type"] == "snapshot", frame
        return ws

    async def refused(self, account_id: str | None, token: str) -> tuple[int, str]:
        path = f"/v1/accounts/{account_id}/live" if account_id else "/v1/ops/live"
        code, frames = await refused_code(ws_url(self.gateway, f"{path}?token={token}"))
        assert frames == [], "a refused socket was sent a balance"
        return code, path

    async def close_all(self) -> None:
        for ws in self.open:
            with contextlib.suppress(Exception):
                await ws.close()


@pytest.fixture
async def sockets(limited_gateway: GatewayProcess) -> AsyncIterator[Sockets]:
    s = Sockets(limited_gateway)
    yield s
    await s.close_all()


async def test_a_token_at_its_limit_keeps_neither_another_customer_nor_ops_out(
    limited_gateway: GatewayProcess, sockets: Sockets
) -> None:
    async with httpx.AsyncClient(base_url=limited_gateway.url) as http:
        greedy = await make_account(http, 1_000_000)
        other = await make_account(http, 1_000_000)
        greedy_token = await customer_token(http, greedy)
        greedy_second_token = await customer_token(http, greedy)
        other_token = await customer_token(http, other)
        for _ in range(PER_TOKEN):
            await sockets.watch(greedy, greedy_token)
        code, _ = await sockets.refused(greedy, greedy_token)
        assert code == 4429
        # Another customer, and ops on the customer's own account and on its channel.
        await sockets.watch(other, other_token)
        await sockets.watch(greedy, OPS_TOKEN)
        await sockets.watch(None, OPS_TOKEN)
        # The account's other token may add what the account allows, no more.
        for _ in range(PER_ACCOUNT - PER_TOKEN):
            await sockets.watch(greedy, greedy_second_token)
        code, _ = await sockets.refused(greedy, greedy_second_token)
        assert code == 4429
        # A socket closed is a slot freed.
        await sockets.open[0].close()
        await sockets.open[0].wait_closed()
        await sockets.watch(greedy, greedy_token)
        health = (await http.get("/healthz")).json()
        assert health["live_sockets"] == PER_ACCOUNT + 3


async def test_customers_stop_short_of_the_process_limit_and_ops_get_the_rest(
    limited_gateway: GatewayProcess, sockets: Sockets
) -> None:
    async with httpx.AsyncClient(base_url=limited_gateway.url) as http:
        await wait_for_live_sockets(limited_gateway, 0, 5)  # the last test's are gone
        customer_max = SOCKETS_MAX - OPS_RESERVED
        opened = 0
        while opened < customer_max:
            account_id = await make_account(http, 1_000_000)
            token = await customer_token(http, account_id)
            for _ in range(min(PER_TOKEN, customer_max - opened)):
                await sockets.watch(account_id, token)
                opened += 1
        late = await make_account(http, 1_000_000)
        code, _ = await sockets.refused(late, await customer_token(http, late))
        assert code == 1013
        for _ in range(OPS_RESERVED):
            await sockets.watch(None, OPS_TOKEN)
        code, _ = await sockets.refused(None, OPS_TOKEN)
        assert code == 1013
        assert (await http.get("/healthz")).json()["live_sockets"] == SOCKETS_MAX
