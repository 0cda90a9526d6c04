"""The admin API (issue 12): operator tokens, roles, app scopes and refusals, on both backends.

Each area's operations have their own tests; these cover what every route shares.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from grantvault_server.app import create_app
from grantvault_server.services import operators as ops
from grantvault_server.services.vault import Vault
from grantvault_server.services.vault_time import FakeClock
from grantvault_server.storage.tables import audit_events
from tests.conftest import OPERATOR, OPERATOR_PASSWORD, bearer, make_app, token_for

PASSWORD = OPERATOR_PASSWORD


async def test_an_owner_manages_apps_and_keys(vault: Vault, admin: httpx.AsyncClient) -> None:
    token = await token_for(vault, "root", "owner")
    created = await admin.post("/admin/v1/apps", json={"name": "demo"}, headers=bearer(token))
    assert created.status_code == 200, created.text
    assert created.json()["name"] == "demo"
    key = await admin.post("/admin/v1/apps/demo/keys", json={"name": "ci"}, headers=bearer(token))
    assert key.status_code == 200 and key.json()["api_key"].startswith("alter_rk_")
    listed = await admin.get("/admin/v1/apps/demo/keys", headers=bearer(token))
    assert [k["key_id"] for k in listed.json()["keys"]] == [key.json()["key_id"]]
    assert key.json()["api_key"] not in listed.text  # shown once, never again
    async with vault.db.read() as conn:
        actor = (
            await conn.execute(
                sa.select(audit_events.c.actor).where(audit_events.c.event == "key.created")
            )
        ).scalar_one()
    actor = actor if isinstance(actor, dict) else __import__("json").loads(actor)
    assert actor["type"] == "operator_account" and actor["name"] == "root"


@pytest.mark.parametrize(
    ("header", "why"),
    [
        ({}, "Authorization: Bearer"),
        ({"Authorization": "Bearer gvat_unknown"}, "not valid"),
        ({"Authorization": "Basic abc"}, "Authorization: Bearer"),
        ({"Authorization": "Bearer alter_rk_xxxxxxxxxxxxxxxxxxxxxx_xxxxxx"}, "gvat_"),
    ],
)
async def test_requests_without_a_valid_token_get_401(
    vault: Vault, admin: httpx.AsyncClient, header: dict[str, str], why: str
) -> None:
    r = await admin.get("/admin/v1/apps", headers=header)
    assert r.status_code == 401 and r.json()["error"] == "invalid_token"
    assert why in r.json()["message"]


async def test_expired_and_revoked_tokens_are_refused(
    vault: Vault, admin: httpx.AsyncClient, clock: FakeClock
) -> None:
    await ops.create_operator(vault, "root", "owner", actor=OPERATOR, password=PASSWORD)
    info, token = await ops.create_token(
        vault, "root", "short", actor=OPERATOR, expires_in=timedelta(minutes=5)
    )
    assert (await admin.get("/admin/v1/apps", headers=bearer(token))).status_code == 200
    clock.advance(minutes=5)
    expired = await admin.get("/admin/v1/apps", headers=bearer(token))
    assert expired.status_code == 401 and "expired" in expired.json()["message"]
    info2, token2 = await ops.create_token(vault, "root", "other", actor=OPERATOR)
    await ops.revoke_token(vault, info2.id, actor=OPERATOR)
    revoked = await admin.get("/admin/v1/apps", headers=bearer(token2))
    assert revoked.status_code == 401 and "revoked" in revoked.json()["message"]
    del info


async def _refusals(vault: Vault) -> list[dict[str, Any]]:
    import json

    async with vault.db.read() as conn:
        rows = await conn.execute(
            sa.select(audit_events.c.actor, audit_events.c.details, audit_events.c.outcome).where(
                audit_events.c.event == "admin.refused"
            )
        )
        out = []
        for r in rows:
            details = r.details if isinstance(r.details, dict) else json.loads(r.details)
            actor = r.actor if isinstance(r.actor, dict) else json.loads(r.actor)
            out.append({"operation": details["operation"], "who": actor["name"], "o": r.outcome})
        return out


async def test_an_auditor_reads_but_changes_nothing(vault: Vault, admin: httpx.AsyncClient) -> None:
    app, _ = await make_app(vault, "shop")
    token = await token_for(vault, "audra", "auditor")
    assert (await admin.get("/admin/v1/apps/shop/keys", headers=bearer(token))).status_code == 200
    for method, path, body in [
        ("POST", "/admin/v1/apps", {"name": "other"}),
        ("POST", "/admin/v1/apps/shop/keys", {}),
    ]:
        r = await admin.request(method, path, json=body, headers=bearer(token))
        assert r.status_code == 403 and r.json()["error"] == "forbidden", r.text
    assert await _refusals(vault) == [
        {"operation": "apps.create", "who": "audra", "o": "denied"},
        {"operation": "keys.create", "who": "audra", "o": "denied"},
    ]
    del app


async def test_an_app_scoped_admin_cannot_see_other_apps(
    vault: Vault, admin: httpx.AsyncClient
) -> None:
    await make_app(vault, "mine")
    await make_app(vault, "theirs")
    token = await token_for(vault, "ann", "admin", apps=["mine"])
    listed = await admin.get("/admin/v1/apps", headers=bearer(token))
    assert [a["name"] for a in listed.json()["apps"]] == ["mine"]
    assert (
        await admin.post("/admin/v1/apps/mine/keys", json={}, headers=bearer(token))
    ).status_code == 200
    hidden = await admin.get("/admin/v1/apps/theirs/keys", headers=bearer(token))
    unknown = await admin.get("/admin/v1/apps/nope/keys", headers=bearer(token))
    assert hidden.status_code == unknown.status_code == 404
    assert hidden.json()["message"].replace("theirs", "X") == unknown.json()["message"].replace(
        "nope", "X"
    )
    refused = await admin.post("/admin/v1/apps", json={"name": "new"}, headers=bearer(token))
    assert refused.status_code == 403


async def test_unknown_inputs_are_refused_not_ignored(
    vault: Vault, admin: httpx.AsyncClient
) -> None:
    token = await token_for(vault, "root", "owner")
    r = await admin.post(
        "/admin/v1/apps", json={"name": "demo", "colour": "red"}, headers=bearer(token)
    )
    assert r.status_code == 422 and r.json()["error"] == "invalid_request"


def test_every_operation_is_in_the_openapi_document() -> None:
    from grantvault_server.services.admin.catalog import load_all

    spec = create_app().openapi()
    documented = {
        (method.upper(), path)
        for path, item in spec["paths"].items()
        for method, body in item.items()
        if "admin" in body.get("tags", [])
    }
    expected = {(op.method, "/admin/v1" + op.path) for op in load_all().values()}
    assert expected == documented
