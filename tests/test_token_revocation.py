"""Customer tokens can be revoked, by ops over the API and by the operator's
command line: the token stops working at once (its open live sockets are
closed too), its record stays in Postgres, and a rebuild of a lost Redis
never brings it back."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from devkit.testing import GatewayProcess
from metering import accounts
from metering.accounts import token_digest
from metering.keys import token_key
from metering.ledger.rebuild import rebuild
from metering.ledger.registry import issue_customer_token
from tests.conftest import OPS, make_account
from tests.fixtures_ledger import LedgerWorld, Traffic, ledger_world
from tests.test_live import customer_token, next_frame, refused_code, ws_url


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def test_ops_revokes_one_token_and_its_open_sockets_close(
    http: httpx.AsyncClient, gateway: GatewayProcess
) -> None:
    account_id = await make_account(http, 1_000_000)
    r = await http.post(f"/v1/accounts/{account_id}/tokens", headers=OPS, json={"label": "laptop"})
    assert r.status_code == 201, r.text
    revoked, revoked_id = r.json()["token"], r.json()["token_id"]
    assert revoked_id == token_digest(revoked)[:16]
    kept = await customer_token(http, account_id)
    path = f"/v1/accounts/{account_id}"

    listing = (await http.get(f"{path}/tokens", headers=OPS)).json()
    assert [t["label"] for t in listing["tokens"]] == ["laptop", "dashboard"]
    assert all(t["revoked_at_us"] is None for t in listing["tokens"])
    assert revoked not in str(listing)  # tokens are shown once, at issue
    # A customer cannot list or revoke tokens, not even its own.
    assert (await http.get(f"{path}/tokens", headers=bearer(kept))).status_code == 403
    r = await http.delete(f"{path}/tokens/{revoked_id}", headers=bearer(revoked))
    assert r.status_code == 403

    async with connect(ws_url(gateway, f"{path}/live?token={revoked}")) as live:
        assert (await next_frame(live))["type"] == "snapshot"
        r = await http.delete(f"{path}/tokens/{revoked_id}", headers=OPS)
        assert r.status_code == 200, r.text
        assert r.json()["token_id"] == revoked_id and r.json()["revoked_at_us"] > 0
        # The open socket is closed at once, as unauthorized.
        with pytest.raises(ConnectionClosed) as closed:
            while True:
                await asyncio.wait_for(live.recv(), 5)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 4401

    assert (await http.get(path, headers=bearer(revoked))).status_code == 401
    code, frames = await refused_code(ws_url(gateway, f"{path}/live?token={revoked}"))
    assert (code, frames) == (4401, [])
    assert (await http.get(path, headers=bearer(kept))).status_code == 200
    listing = (await http.get(f"{path}/tokens", headers=OPS)).json()
    by_label = {t["label"]: t for t in listing["tokens"]}
    assert (
        by_label["laptop"]["revoked_at_us"] > 0 and by_label["dashboard"]["revoked_at_us"] is None
    )
    # Revoking again is harmless; an unknown id is a 404 naming it.
    assert (await http.delete(f"{path}/tokens/{revoked_id}", headers=OPS)).status_code == 200
    r = await http.delete(f"{path}/tokens/{'0' * 16}", headers=OPS)
    assert r.status_code == 404 and r.json()["error"] == "unknown_token", r.text


@pytest.fixture
async def world() -> AsyncIterator[LedgerWorld]:
    """A private Redis and Postgres schema for one test."""
    async with ledger_world() as w:
        yield w


async def test_revoked_tokens_stay_revoked_through_a_rebuild(world: LedgerWorld) -> None:
    traffic = Traffic(world.store, seed=3)
    (account_id,) = await traffic.make_accounts(world.pool, 1, 10_000_000)
    revoked = await issue_customer_token(world.store, world.pool, account_id, "stolen laptop")
    kept = await issue_customer_token(world.store, world.pool, account_id, "dashboard")
    every = await issue_customer_token(world.store, world.pool, account_id, "phone")

    listed = world.cli("tokens", "list", account_id)
    assert listed.returncode == 0, listed.stderr
    assert "stolen laptop" in listed.stdout and revoked not in listed.stdout
    out = world.cli("tokens", "revoke", account_id, token_digest(revoked)[:16])
    assert out.returncode == 0, out.stdout + out.stderr
    assert "revoked 1 token" in out.stdout
    assert await accounts.account_for_token(world.store, revoked) is None
    assert await accounts.account_for_token(world.store, kept) == account_id

    # A Redis restored from a copy older than the revocation still holds the token:
    # rebuild takes it away.
    await world.store.redis.set(token_key(token_digest(revoked)), account_id)
    report = await rebuild(world.store, world.conn)  # in-process: the command runs below
    assert report.revoked_tokens_removed == 1 and report.tokens_restored == 0
    assert await accounts.account_for_token(world.store, revoked) is None

    # Redis lost everything: rebuild restores the accounts and the live tokens only.
    await world.store.redis.flushdb()  # this test's own redis-server
    out = world.cli("rebuild")
    assert out.returncode == 0, out.stderr
    assert "2 customer tokens restored" in out.stdout, out.stdout
    assert await accounts.account_for_token(world.store, revoked) is None
    assert await accounts.account_for_token(world.store, kept) == account_id
    assert await accounts.account_for_token(world.store, every) == account_id

    # Every token of the account at once (a compromised account).
    out = world.cli("tokens", "revoke", account_id, "--all")
    assert out.returncode == 0 and "revoked 2 tokens" in out.stdout, out.stdout + out.stderr
    for token in (revoked, kept, every):
        assert await accounts.account_for_token(world.store, token) is None
    rows = await world.conn.fetch(
        "SELECT label FROM customer_tokens WHERE account_id = $1 AND revoked_at IS NOT NULL",
        account_id,
    )
    assert sorted(r["label"] for r in rows) == ["dashboard", "phone", "stolen laptop"]
    # An unknown token id says so and exits 4 (refused; README, exit codes).
    out = world.cli("tokens", "revoke", account_id, "f" * 16)
    assert out.returncode == 4 and f"has no token {'f' * 16}" in out.stderr
