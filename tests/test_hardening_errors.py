"""Issue 9, item 5: the same fault gets the same answer on SQLite and PostgreSQL.

* a write the database refuses (a trigger, a constraint) is ``503 storage_unavailable`` on
  both backends (it was a 500 on SQLite and a 503 naming ``DBAPIError`` on PostgreSQL);
* a ciphertext whose key-term bytes were damaged is ``credential_corrupt``, not the
  retryable ``sealed``;
* a value no backend can hold alike (a lone surrogate) is ``invalid_request`` on both;
* storage messages never name exception classes.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa

from grantvault.types.errors import ErrorCode
from grantvault_server.app import create_app
from grantvault_server.errors import VaultError
from grantvault_server.services import grants as grant_service, secrets as secret_service
from grantvault_server.services.apps import App
from grantvault_server.services.vault import Vault
from grantvault_server.storage.db import Database
from grantvault_server.storage.tables import apps, audit_events, audit_heads, credentials
from tests.conftest import OPERATOR, SignedClient, make_app

URL = "https://api.openai.com/v1/chat/completions"
#: What a message must not contain: exception class names (``IntegrityError``, ``DBAPIError``,
#: ``OSError``, ``UniqueViolationError``, ...).
CLASS_NAME = re.compile(r"[A-Z][A-Za-z]*(Error|Exception)\b")


@pytest.fixture
async def raw_client(vault: Vault) -> AsyncIterator[httpx.AsyncClient]:
    """Like ``client``, but an unhandled exception comes back as the 500 a caller would see."""
    transport = httpx.ASGITransport(app=create_app(vault=vault), raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as c:
        yield c


async def _grant(vault: Vault, app: App) -> tuple[str, str]:
    secret = await secret_service.create_secret(vault, app, OPERATOR, template="openai")
    await secret_service.set_credential(vault, app, secret, {"token": "sk-test-123456"}, OPERATOR)
    grant = await grant_service.create_grant(vault, app, secret, OPERATOR, principal_type="system")
    async with vault.db.read() as conn:
        cred_id = (
            await conn.execute(sa.select(credentials.c.id).where(credentials.c.app_id == app.id))
        ).scalar_one()
    return str(grant["grant_id"]), str(cred_id)


async def _retrieve(client: httpx.AsyncClient, key: str, grant_id: str) -> httpx.Response:
    return await SignedClient(client, key).post(
        "/sdk/token", {"grant_id": grant_id, "request": {"method": "POST", "url": URL}}
    )


def _assert_storage_unavailable(response: httpx.Response) -> None:
    assert response.status_code == 503, response.text
    body = response.json()
    assert body["error"] == ErrorCode.STORAGE_UNAVAILABLE.value
    assert response.headers["retry-after"]
    assert not CLASS_NAME.search(body["message"]), body["message"]
    assert "sk-test" not in response.text


async def _refuse_audit_inserts(vault: Vault) -> None:
    """Make the database refuse every audit insert, each backend in its own idiom."""
    async with vault.db.write() as conn:
        if conn.dialect.name == "sqlite":
            await conn.execute(
                sa.text(
                    "CREATE TRIGGER gv_refuse BEFORE INSERT ON audit_events "
                    "BEGIN SELECT RAISE(ABORT, 'audit insert refused'); END"
                )
            )
        else:
            await conn.execute(
                sa.text(
                    "CREATE FUNCTION gv_refuse() RETURNS trigger AS $$ BEGIN "
                    "RAISE EXCEPTION 'audit insert refused'; END $$ LANGUAGE plpgsql"
                )
            )
            await conn.execute(
                sa.text(
                    "CREATE TRIGGER gv_refuse BEFORE INSERT ON audit_events "
                    "FOR EACH ROW EXECUTE FUNCTION gv_refuse()"
                )
            )


async def test_a_refused_audit_insert_is_503_on_both_backends(
    vault: Vault, raw_client: httpx.AsyncClient
) -> None:
    app, key = await make_app(vault)
    grant_id, _ = await _grant(vault, app)
    assert (await _retrieve(raw_client, key, grant_id)).status_code == 200  # the control
    await _refuse_audit_inserts(vault)
    response = await _retrieve(raw_client, key, grant_id)
    _assert_storage_unavailable(response)


async def test_an_audit_sequence_conflict_is_503_on_both_backends(
    vault: Vault, raw_client: httpx.AsyncClient
) -> None:
    app, key = await make_app(vault)
    grant_id, _ = await _grant(vault, app)
    # A row squatting on the next sequence number: the append's unique constraint fails.
    async with vault.db.write() as conn:
        head = (
            await conn.execute(sa.select(audit_heads).where(audit_heads.c.chain == app.id))
        ).one()
        row = dict(
            (
                await conn.execute(
                    sa.select(audit_events).where(
                        audit_events.c.chain == app.id, audit_events.c.seq == head.seq
                    )
                )
            )
            .mappings()
            .one()
        )
        row.pop("id")
        await conn.execute(sa.insert(audit_events).values(**{**row, "seq": head.seq + 1}))
    _assert_storage_unavailable(await _retrieve(raw_client, key, grant_id))


@pytest.mark.parametrize(
    "damage",
    [
        pytest.param(lambda b: b[:4] + bytes([b[4] ^ 0x06]) + b[5:], id="low-term-byte"),
        pytest.param(lambda b: b[:1] + bytes([b[1] ^ 0x80]) + b[2:], id="high-term-byte"),
        pytest.param(lambda b: b[:2] + bytes([b[2] ^ 0x01]) + b[3:], id="middle-term-byte"),
    ],
)
async def test_a_damaged_key_term_is_credential_corrupt_not_sealed(
    vault: Vault, raw_client: httpx.AsyncClient, damage: object
) -> None:
    app, key = await make_app(vault)
    grant_id, cred_id = await _grant(vault, app)
    async with vault.db.write() as conn:
        blob = (
            await conn.execute(
                sa.select(credentials.c.secret_ct).where(credentials.c.id == cred_id)
            )
        ).scalar_one()
        assert callable(damage)
        await conn.execute(
            sa.update(credentials)
            .where(credentials.c.id == cred_id)
            .values(secret_ct=damage(bytes(blob)))
        )
    response = await _retrieve(raw_client, key, grant_id)
    assert response.status_code == 500, response.text
    assert response.json()["error"] == ErrorCode.CREDENTIAL_CORRUPT.value
    assert "retry-after" not in response.headers  # not something a retry can fix
    assert vault.barrier.sealed_reason is None
    assert "sk-test" not in response.text


async def test_a_value_no_backend_can_store_is_invalid_request_on_both(vault: Vault) -> None:
    with pytest.raises(VaultError) as caught:
        async with vault.db.write() as conn:
            await conn.execute(
                sa.insert(apps).values(
                    id="lone-surrogate", name="a\ud800b", created_at=sa.func.now()
                )
            )
    assert caught.value.code is ErrorCode.INVALID_REQUEST
    assert not CLASS_NAME.search(caught.value.message), caught.value.message


async def test_an_unreachable_database_names_no_exception_class(
    backend: str, tmp_path: Path
) -> None:
    url = (
        f"sqlite:///{tmp_path / 'missing-folder' / 'vault.db'}"
        if backend == "sqlite"
        else "postgresql+asyncpg://postgres@127.0.0.1:1/nowhere"
    )
    db = Database(url)
    try:
        with pytest.raises(VaultError) as caught:
            async with db.read() as conn:
                await conn.execute(sa.text("SELECT 1"))
    finally:
        await db.dispose()
    assert caught.value.code is ErrorCode.STORAGE_UNAVAILABLE
    assert not CLASS_NAME.search(caught.value.message), caught.value.message
