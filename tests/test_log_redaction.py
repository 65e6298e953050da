"""Tokens never reach the gateway's log, even at info level where uvicorn logs
each websocket's path with its `?token=` query."""

from __future__ import annotations

from pathlib import Path

import httpx
import websockets

from devkit.testing import GatewayProcess
from tests.conftest import OPS, make_account, test_settings


async def test_websocket_tokens_are_redacted_from_the_log(tmp_path: Path) -> None:
    log_path = tmp_path / "gateway.log"
    gateway = GatewayProcess(test_settings(log_level="info"), log_path=log_path)
    try:
        async with httpx.AsyncClient(base_url=gateway.url) as http:
            account = await make_account(http, 1_000)
            r = await http.post(
                f"/v1/accounts/{account}/tokens", headers=OPS, json={"label": "dash"}
            )
            token = r.json()["token"]
        ws_url = gateway.url.replace("http", "ws") + f"/v1/accounts/{account}/live?token={token}"
        async with websockets.connect(ws_url) as ws:
            assert '"balance_micros"' in str(await ws.recv())
    finally:
        gateway.stop()
    log = log_path.read_text()
    assert f"/v1/accounts/{account}/live" in log  # the line is there ...
    assert "token=<redacted>" in log  # ... with the token cut out
    assert token not in log
