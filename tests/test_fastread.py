"""The prepared hot-path reads return exactly what SQLAlchemy returns, on both backends."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from grantvault_server.auth.api_keys import hash_key
from grantvault_server.services import (
    apps as app_service,
    grants as grant_service,
    secrets as secret_service,
)
from grantvault_server.services.apps import _KEY_BY_HASH
from grantvault_server.services.tokens import _BY_GRANT_ID
from grantvault_server.services.vault import Vault
from tests.conftest import OPERATOR, make_app


async def test_prepared_reads_match_sqlalchemy(vault: Vault) -> None:
    app, key = await make_app(vault)
    [info] = await app_service.list_keys(vault, app)
    await app_service.set_key_expiry(
        vault, app, info.id, datetime.now(UTC) + timedelta(days=3), OPERATOR
    )
    secret = await secret_service.create_secret(vault, app, OPERATOR, template="datadog")
    await secret_service.set_credential(
        vault, app, secret, {"token": "dd-123456", "application_key": "ak-1"}, OPERATOR
    )
    grant = await grant_service.create_grant(
        vault,
        app,
        secret,
        OPERATOR,
        principal_type="group",
        principal_id="eng",
        policy=grant_service.GrantPolicy(max_ttl_seconds=60),
    )
    async with vault.db.read() as conn:
        for prepared, params in (
            (_KEY_BY_HASH, {"key_hash": hash_key(key)}),
            (_BY_GRANT_ID, {"app_id": app.id, "grant_id": grant["grant_id"]}),
        ):
            fast = await prepared.first(conn, params)
            slow = (await conn.execute(prepared.statement, params)).first()
            assert slow is not None and fast is not None
            assert tuple(fast) == tuple(slow)
            assert [type(v) for v in fast] == [type(v) for v in slow]
            assert fast._fields == tuple(slow._fields)
        assert await _BY_GRANT_ID.first(conn, {"app_id": app.id, "grant_id": "nope"}) is None
