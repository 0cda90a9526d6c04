"""The signed ``/sdk/*`` protocol, on SQLite and PostgreSQL: every signing rule and key state."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import httpx

from grantvault.protocol.key_format import mint_key
from grantvault_server.services import apps as app_service
from grantvault_server.services.vault import Vault
from tests.conftest import OPERATOR, SignedClient, make_app

LIST = {"limit": 10, "offset": 0}


async def test_valid_signed_request_is_accepted(vault: Vault, client: httpx.AsyncClient) -> None:
    _, key = await make_app(vault)
    r = await SignedClient(client, key).post("/sdk/grants/list", LIST)
    assert r.status_code == 200, r.text
    assert r.json()["grants"] == []
    assert r.headers["x-request-id"]


async def test_replayed_nonce_is_refused(vault: Vault, client: httpx.AsyncClient) -> None:
    _, key = await make_app(vault)
    sc = SignedClient(client, key)
    body = json.dumps(LIST, separators=(",", ":")).encode()
    headers = sc.headers("POST", "/sdk/grants/list", body)
    first = await client.post("/sdk/grants/list", content=body, headers=headers)
    again = await client.post("/sdk/grants/list", content=body, headers=headers)
    assert first.status_code == 200
    assert again.status_code == 401 and again.json()["error"] == "replayed_request"


async def test_replay_is_refused_by_another_replica(
    vault: Vault, client: httpx.AsyncClient, settings: object
) -> None:
    """The nonce lives in the database, so a second server process refuses the copy too."""
    from grantvault_server.app import create_app

    _, key = await make_app(vault)
    body = json.dumps(LIST, separators=(",", ":")).encode()
    headers = SignedClient(client, key).headers("POST", "/sdk/grants/list", body)
    other = await Vault.start(vault.settings, migrate_schema=False)
    try:
        transport = httpx.ASGITransport(app=create_app(vault=other))
        async with httpx.AsyncClient(transport=transport, base_url="http://replica") as replica:
            assert (
                await client.post("/sdk/grants/list", content=body, headers=headers)
            ).status_code == 200
            r = await replica.post("/sdk/grants/list", content=body, headers=headers)
    finally:
        await other.close()
    assert r.status_code == 401 and r.json()["error"] == "replayed_request"


async def test_timestamp_outside_skew_window_is_refused(
    vault: Vault, client: httpx.AsyncClient
) -> None:
    _, key = await make_app(vault)
    sc = SignedClient(client, key)
    for offset in (-301, 301):
        r = await sc.post("/sdk/grants/list", LIST, timestamp=int(time.time()) + offset)
        assert r.status_code == 401 and r.json()["error"] == "stale_request", offset
    # Inside the window is fine.
    assert (
        await sc.post("/sdk/grants/list", LIST, timestamp=int(time.time()) - 250)
    ).status_code == 200


async def test_tampered_body_path_and_query_are_refused(
    vault: Vault, client: httpx.AsyncClient
) -> None:
    _, key = await make_app(vault)
    sc = SignedClient(client, key)
    body = json.dumps(LIST, separators=(",", ":")).encode()
    tampered = json.dumps({"limit": 11, "offset": 0}, separators=(",", ":")).encode()

    # Body changed, content hash header left alone.
    r = await client.post(
        "/sdk/grants/list", content=tampered, headers=sc.headers("POST", "/sdk/grants/list", body)
    )
    assert r.status_code == 401 and r.json()["error"] == "invalid_signature"
    # Body and its hash changed, signature left alone.
    headers = sc.headers("POST", "/sdk/grants/list", body)
    import hashlib

    headers["X-Alter-Content-SHA256"] = hashlib.sha256(tampered).hexdigest()
    r = await client.post("/sdk/grants/list", content=tampered, headers=headers)
    assert r.status_code == 401 and r.json()["error"] == "invalid_signature"
    # Signed for one path, sent to another.
    r = await client.post(
        "/sdk/token", content=body, headers=sc.headers("POST", "/sdk/grants/list", body)
    )
    assert r.status_code == 401 and r.json()["error"] == "invalid_signature"
    # Query added after signing.
    r = await client.post(
        "/sdk/grants/list?x=1", content=body, headers=sc.headers("POST", "/sdk/grants/list", body)
    )
    assert r.status_code == 401 and r.json()["error"] == "invalid_signature"
    # Query signed in another order verifies (canonical sort), a changed value does not.
    ok = await client.post(
        "/sdk/grants/list?b=2&a=1",
        content=body,
        headers=sc.headers("POST", "/sdk/grants/list?a=1&b=2", body),
    )
    assert ok.status_code == 200, ok.text
    bad = await client.post(
        "/sdk/grants/list?b=3&a=1",
        content=body,
        headers=sc.headers("POST", "/sdk/grants/list?a=1&b=2", body),
    )
    assert bad.status_code == 401
    # Method changed.
    r = await client.put(
        "/sdk/grants/list", content=body, headers=sc.headers("POST", "/sdk/grants/list", body)
    )
    assert r.status_code in {401, 405}


async def test_actor_headers_are_bound_and_cannot_be_stripped(
    vault: Vault, client: httpx.AsyncClient
) -> None:
    _, key = await make_app(vault)
    sc = SignedClient(client, key)
    body = json.dumps(LIST, separators=(",", ":")).encode()
    actor = {"X-Alter-Caller": "report-bot", "X-Alter-Caller-Type": "service"}
    headers = {**sc.headers("POST", "/sdk/grants/list", body, actor=actor), **actor}
    assert (await client.post("/sdk/grants/list", content=body, headers=headers)).status_code == 200

    # Strip the actor headers (and the V2 header): the legacy check fails, the V2 digest covered them.
    stripped = {**sc.headers("POST", "/sdk/grants/list", body, actor=actor)}
    stripped.pop("X-Alter-Signature-V2")
    r = await client.post("/sdk/grants/list", content=body, headers=stripped)
    assert r.status_code == 401 and r.json()["error"] == "invalid_signature"

    # Change the caller after signing.
    changed = {
        **sc.headers("POST", "/sdk/grants/list", body, actor=actor),
        **actor,
        "X-Alter-Caller": "admin",
    }
    assert (await client.post("/sdk/grants/list", content=body, headers=changed)).status_code == 401

    # V2 header present but the legacy header holds the legacy digest: refused (both must be V2).
    legacy_only = sc.headers("POST", "/sdk/grants/list", body)
    mixed = {**sc.headers("POST", "/sdk/grants/list", body, actor=actor), **actor}
    mixed["X-Alter-Signature"] = legacy_only["X-Alter-Signature"]
    mixed["X-Alter-Nonce"] = legacy_only["X-Alter-Nonce"]
    assert (await client.post("/sdk/grants/list", content=body, headers=mixed)).status_code == 401


async def test_missing_or_malformed_auth(vault: Vault, client: httpx.AsyncClient) -> None:
    _, key = await make_app(vault)
    body = b"{}"
    r = await client.post("/sdk/grants/list", content=body)
    assert r.status_code == 401 and r.json()["error"] == "invalid_key"
    r = await client.post("/sdk/grants/list", content=body, headers={"x-api-key": "alter_rk_nope"})
    assert r.status_code == 401 and r.json()["error"] == "invalid_key"
    r = await SignedClient(client, mint_key("rk")).post("/sdk/grants/list", LIST)
    assert r.status_code == 401 and r.json()["error"] == "invalid_key"
    r = await client.post("/sdk/grants/list", content=body, headers={"x-api-key": key})
    assert r.status_code == 401 and r.json()["error"] == "invalid_signature"
    headers = SignedClient(client, key).headers("POST", "/sdk/grants/list", body)
    headers["X-Alter-Nonce"] = "not-hex"
    r = await client.post("/sdk/grants/list", content=body, headers=headers)
    assert r.status_code == 401 and "Nonce" in r.json()["message"]


async def test_key_states(vault: Vault, client: httpx.AsyncClient) -> None:
    app, _ = await make_app(vault)
    # Revoked.
    info, key = await app_service.create_key(vault, app, OPERATOR)
    assert (await SignedClient(client, key).post("/sdk/grants/list", LIST)).status_code == 200
    await app_service.revoke_key(vault, app, info.id, OPERATOR)
    r = await SignedClient(client, key).post("/sdk/grants/list", LIST)
    assert r.status_code == 401 and r.json()["error"] == "key_revoked"
    # Expired.
    info, key = await app_service.create_key(vault, app, OPERATOR)
    await app_service.set_key_expiry(
        vault, app, info.id, datetime.now(UTC) - timedelta(seconds=1), OPERATOR
    )
    r = await SignedClient(client, key).post("/sdk/grants/list", LIST)
    assert r.status_code == 401 and r.json()["error"] == "key_expired"
    # Rotated: old key works inside the overlap window, successor works, then grace ends.
    info, old = await app_service.create_key(vault, app, OPERATOR)
    new_info, new = await app_service.rotate_key(
        vault, app, info.id, OPERATOR, overlap=timedelta(hours=1)
    )
    assert (await SignedClient(client, old).post("/sdk/grants/list", LIST)).status_code == 200
    assert (await SignedClient(client, new).post("/sdk/grants/list", LIST)).status_code == 200
    keys = {k.id: k for k in await app_service.list_keys(vault, app)}
    assert keys[info.id].rotated_to_id == new_info.id
    assert keys[info.id].status(datetime.now(UTC)) == "rotating"
    info2, old2 = await app_service.create_key(vault, app, OPERATOR)
    await app_service.rotate_key(vault, app, info2.id, OPERATOR, overlap=timedelta(0))
    r = await SignedClient(client, old2).post("/sdk/grants/list", LIST)
    assert r.status_code == 401 and r.json()["error"] == "key_rotated_grace_expired"


async def test_keys_are_stored_hashed_with_visible_prefix(vault: Vault) -> None:
    import sqlalchemy as sa

    from grantvault_server.storage.tables import api_keys

    app, key = await make_app(vault)
    async with vault.db.read() as conn:
        row = (await conn.execute(sa.select(api_keys).where(api_keys.c.app_id == app.id))).one()
    assert key not in json.dumps([str(v) for v in row])
    assert key.startswith(row.key_prefix) and len(row.key_prefix) < len(key) // 2


async def test_unknown_route_and_method_get_envelopes(
    vault: Vault, client: httpx.AsyncClient
) -> None:
    r = await client.get("/sdk/nothing-here")
    assert r.status_code == 404 and r.json()["error"] == "not_found"
    r = await client.get("/sdk/token")
    assert r.status_code == 405 and r.json()["error"] == "method_not_allowed"


async def test_oversized_body_is_refused_fast(vault: Vault, client: httpx.AsyncClient) -> None:
    _, key = await make_app(vault)
    big = b"{" + b" " * (vault.settings.max_body_bytes + 10) + b"}"
    r = await client.post("/sdk/token", content=big, headers={"x-api-key": key})
    assert r.status_code == 413 and r.json()["error"] == "payload_too_large"


async def test_expired_nonces_are_purged_in_chunks(vault: Vault, client: httpx.AsyncClient) -> None:
    import sqlalchemy as sa

    from grantvault_server.services import nonces as nonce_service
    from grantvault_server.storage.tables import request_nonces

    app, key = await make_app(vault)
    [info] = await app_service.list_keys(vault, app)
    past = datetime.now(UTC) - timedelta(hours=1)
    async with vault.db.write() as conn:
        await conn.execute(
            sa.insert(request_nonces),
            [{"key_id": info.id, "nonce": f"{i:032x}", "expires_at": past} for i in range(4500)],
        )
    assert (await SignedClient(client, key).post("/sdk/grants/list", LIST)).status_code == 200
    removed = await nonce_service.purge_nonces(vault, datetime.now(UTC))
    assert removed == 4500
    async with vault.db.read() as conn:
        left = (
            await conn.execute(sa.select(sa.func.count()).select_from(request_nonces))
        ).scalar_one()
    assert left == 1  # the fresh nonce of the request above stays


async def test_oversized_chunked_body_is_refused(vault: Vault, client: httpx.AsyncClient) -> None:
    _, key = await make_app(vault)

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(20):
            yield b" " * 100_000

    r = await client.post("/sdk/token", content=chunks(), headers={"x-api-key": key})
    assert r.status_code == 413 and r.json()["error"] == "payload_too_large"
