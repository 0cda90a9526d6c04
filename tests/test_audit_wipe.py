"""Issue 9, item 6: deleting an app's whole audit trail is tampering, not an empty chain.

An app's chain starts in the transaction that creates the app, so an existing app always
has a head and its ``app.created`` event. Wiping both used to make ``audit verify`` report
"0 events, intact" (and the next event silently started a fresh chain). SQLite and
PostgreSQL; the command line's exit code and ``--json`` report are checked too.
"""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest
import sqlalchemy as sa
from typer.testing import CliRunner

from grantvault.types.errors import ErrorCode
from grantvault_server.cli.main import cli
from grantvault_server.config import Settings
from grantvault_server.errors import VaultError
from grantvault_server.services import (
    apps as app_service,
    audit_log,
    grants as grant_service,
    secrets as secret_service,
)
from grantvault_server.services.vault import Vault
from grantvault_server.storage.tables import audit_events, audit_heads
from tests.conftest import OPERATOR, SignedClient, make_app

GONE = "the app exists but its audit chain is gone"


async def _wipe(vault: Vault, chain: str, *, reset_head: bool = False) -> None:
    async with vault.db.write() as conn:
        await conn.execute(sa.delete(audit_events).where(audit_events.c.chain == chain))
        if reset_head:  # keep a head, moved back to the genesis
            await conn.execute(
                sa.update(audit_heads)
                .where(audit_heads.c.chain == chain)
                .values(seq=0, hash="0" * 64)
            )
        else:
            await conn.execute(sa.delete(audit_heads).where(audit_heads.c.chain == chain))


def _cli(settings: Settings, *args: str) -> tuple[int, str]:
    """The ``grantvault`` command against the test's database (on a thread: it runs its own
    event loop)."""
    assert settings.database_url is not None and settings.master_key is not None
    env = {
        "GRANTVAULT_DATABASE_URL": settings.database_url,
        "GRANTVAULT_MASTER_KEY": settings.master_key.get_secret_value(),
        "GRANTVAULT_DATA_DIR": str(settings.data_dir),
    }
    result = CliRunner().invoke(cli, list(args), env=env)
    return result.exit_code, result.stdout


async def test_a_new_app_has_a_chain_from_its_creation(vault: Vault, settings: Settings) -> None:
    app, _ = await make_app(vault)
    report = await audit_log.verify(vault, app.name)
    assert report["ok"] is True
    (chain,) = report["chains"]
    assert chain["events"] == 2 and chain["head"]["seq"] == 2  # app.created, key.created
    code, out = await asyncio.to_thread(_cli, settings, "audit", "verify", "--app", app.name)
    assert code == 0 and "intact" in out


@pytest.mark.parametrize("reset_head", [False, True], ids=["head-deleted", "head-reset"])
async def test_a_wiped_chain_is_reported_as_tampering(
    vault: Vault, settings: Settings, reset_head: bool
) -> None:
    app, _ = await make_app(vault)
    other, _ = await make_app(vault)
    await _wipe(vault, app.id, reset_head=reset_head)

    report = await audit_log.verify(vault, app.name)
    assert report["ok"] is False
    (chain,) = report["chains"]
    assert chain["events"] == 0
    assert any(GONE in p["problem"] for p in chain["problems"]), chain
    # The whole-vault walk finds it too (it walks every app, not only chains with rows),
    # and the untouched app stays intact.
    everything = {c["chain"]: c for c in (await audit_log.verify(vault))["chains"]}
    assert everything[app.id]["problems"] and not everything[other.id]["problems"]

    code, out = await asyncio.to_thread(_cli, settings, "audit", "verify", "--app", app.name)
    assert code == 1, out
    assert "0 events, TAMPERED" in out and GONE in out
    code, out = await asyncio.to_thread(_cli, settings, "audit", "verify", "--json")
    assert code == 1
    parsed = json.loads(out)
    assert parsed["ok"] is False
    wiped = next(c for c in parsed["chains"] if c["chain"] == app.id)
    assert any(GONE in p["problem"] for p in wiped["problems"])


async def test_a_wiped_chain_is_not_started_again(vault: Vault, client: httpx.AsyncClient) -> None:
    """Writing on would start a fresh chain that verifies as intact and hides the wipe."""
    app, key = await make_app(vault)
    secret = await secret_service.create_secret(vault, app, OPERATOR, template="openai")
    await secret_service.set_credential(vault, app, secret, {"token": "sk-test-123456"}, OPERATOR)
    grant = await grant_service.create_grant(vault, app, secret, OPERATOR, principal_type="system")
    await _wipe(vault, app.id)

    with pytest.raises(VaultError) as caught:
        await app_service.create_key(vault, app, OPERATOR)
    assert caught.value.code is ErrorCode.AUDIT_UNAVAILABLE
    response = await SignedClient(client, key).post(
        "/sdk/token",
        {
            "grant_id": str(grant["grant_id"]),
            "request": {"method": "GET", "url": "https://api.openai.com/v1/models"},
        },
    )
    assert response.status_code == 503, response.text
    assert response.json()["error"] == ErrorCode.AUDIT_UNAVAILABLE.value
    assert "sk-test" not in response.text
    async with vault.db.read() as conn:
        rows = (
            await conn.execute(sa.select(sa.func.count()).where(audit_events.c.chain == app.id))
        ).scalar_one()
        head = (
            await conn.execute(sa.select(audit_heads).where(audit_heads.c.chain == app.id))
        ).first()
    assert rows == 0 and head is None
