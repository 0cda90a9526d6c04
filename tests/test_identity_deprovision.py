"""Operating identity: ``grantvault idp|users|groups``, deprovisioning by command and by the
signed webhook, group removals, and the schema. SQLite and PostgreSQL.

CLI commands run in a worker thread (they start their own event loop and their own vault
on the same database), exactly as an operator's shell next to a running server.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from typer.testing import CliRunner

from grantvault.types.errors import ErrorCode
from grantvault_server.cli.main import cli
from grantvault_server.config import Settings
from grantvault_server.errors import VaultError
from grantvault_server.identity import webhook_signature
from grantvault_server.services import grants as grant_service, secrets as secret_service
from grantvault_server.services.apps import App
from grantvault_server.services.identity import service as identity
from grantvault_server.services.vault import Vault
from grantvault_server.storage import tables
from grantvault_server.storage.tables import (
    app_users,
    audit_events,
    grants,
    identity_providers,
)

from .conftest import OPERATOR, SignedClient, make_app
from .peer import BASIC_CLIENT
from .test_identity_support import (
    IdpPeer,
    configure,
    idp_peer_fixture,  # noqa: F401 - the fixture
)

runner = CliRunner()
IDENTITY_TABLES = {
    "identity_providers",
    "app_users",
    "app_groups",
    "app_group_members",
    "auth_sessions",
    "idp_webhook_deliveries",
}


@pytest.fixture
def shell(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    """The operator's environment: the same database and master key as the test vault."""
    assert settings.master_key is not None
    monkeypatch.setenv("GRANTVAULT_DATABASE_URL", settings.effective_database_url)
    monkeypatch.setenv("GRANTVAULT_MASTER_KEY", settings.master_key.get_secret_value())
    monkeypatch.setenv("GRANTVAULT_DATA_DIR", str(settings.data_dir))
    monkeypatch.setenv("GRANTVAULT_ALLOW_HTTP_HOSTS", "127.0.0.1")
    monkeypatch.setenv("GRANTVAULT_PUBLIC_BASE_URL", "https://vault.example.test")


async def grantvault(*args: str, stdin: str | None = None) -> tuple[int, str, str]:
    result = await asyncio.to_thread(runner.invoke, cli, list(args), stdin)
    return result.exit_code, result.stdout, result.stderr


async def grantvault_json(*args: str, stdin: str | None = None) -> dict[str, Any]:
    code, out, err = await grantvault(*args, "--json", stdin=stdin)
    assert code == 0, err
    data: dict[str, Any] = json.loads(out)
    return data


async def managed_grant(
    vault: Vault, app: App, principal_type: str, principal_id: str | None, slug: str
) -> str:
    secret = await secret_service.create_secret(vault, app, OPERATOR, template="openai", slug=slug)
    await secret_service.set_credential(
        vault, app, secret, {"token": f"sk-{slug}-123456"}, OPERATOR
    )
    result = await grant_service.create_grant(
        vault,
        app,
        secret,
        OPERATOR,
        principal_type=principal_type,
        principal_id=principal_id,
    )
    return str(result["grant_id"])


async def test_cli_configures_the_idp_and_lists_users_and_groups(
    vault: Vault, shell: None, idp_peer: IdpPeer
) -> None:
    app, _ = await make_app(vault)
    shown = await grantvault_json(
        "idp", "set", "--app", app.name, "--issuer", idp_peer.issuer, "--audience", "vault-basic",
        "--groups-claim", "groups", "--client-id", BASIC_CLIENT[0], "--client-secret-stdin",
        stdin=BASIC_CLIENT[1] + "\n",
    )  # fmt: skip
    assert shown["issuer"] == idp_peer.issuer and shown["jwks_uri"] == f"{idp_peer.issuer}/jwks"
    assert shown["signin"] == {
        "client_id": "vault-basic",
        "client_secret_set": True,
        "redirect_uri": "https://vault.example.test/sdk/auth/callback",
    }
    assert shown["claims"] == {
        "user_id": "sub",
        "groups": "groups",
        "email": "email",
        "name": "name",
    }
    code, out, _ = await grantvault("idp", "show", "--app", app.name)
    assert code == 0 and idp_peer.issuer in out and BASIC_CLIENT[1] not in out
    async with vault.db.read() as conn:
        stored = (
            await conn.execute(sa.select(identity_providers.c.signin_client_secret_ct))
        ).scalar_one()
    assert BASIC_CLIENT[1].encode() not in stored

    token = idp_peer.forge(idp_peer.claims(sub="lena", email="lena@example.test", groups=["eng"]))
    await identity.resolve_user(vault, app.id, token)
    users = await grantvault_json("users", "list", "--app", app.name)
    assert [(u["subject"], u["email"], u["groups"]) for u in users["users"]] == [
        ("lena", "lena@example.test", ["eng"])
    ]
    groups = await grantvault_json("groups", "list", "--app", app.name)
    assert [(g["external_id"], g["members"]) for g in groups["groups"]] == [("eng", 1)]

    # After the first sign-in the mappings are locked; --force changes them.
    code, _, err = await grantvault(
        "idp", "set", "--app", app.name, "--issuer", idp_peer.issuer, "--user-id-claim", "email"
    )
    assert code == 1 and "--force" in err
    forced = await grantvault_json(
        "idp", "set", "--app", app.name, "--issuer", idp_peer.issuer,
        "--user-id-claim", "email", "--force",
    )  # fmt: skip
    assert forced["claims"]["user_id"] == "email" and forced["signin"]["client_secret_set"]
    code, _, err = await grantvault(
        "idp", "set", "--app", app.name, "--issuer", "http://10.0.0.1/", "--audience", "x"
    )
    assert code == 1 and "https" in err


async def test_disabling_a_user_revokes_their_grants_and_refuses_their_tokens(
    vault: Vault, client: httpx.AsyncClient, shell: None, idp_peer: IdpPeer
) -> None:
    app, key = await make_app(vault)
    await configure(vault, app, idp_peer)
    token = idp_peer.forge(idp_peer.claims(sub="ivan", groups=["eng"]))
    assert (await identity.resolve_user(vault, app.id, token)).subject == "ivan"
    mine = await managed_grant(vault, app, "user", "ivan", "ivans")
    theirs = await managed_grant(vault, app, "user", "judy", "judys")
    group = await managed_grant(vault, app, "group", "eng", "engs")
    system = await managed_grant(vault, app, "system", None, "system")

    called: list[tuple[str, str]] = []

    async def revoke_at_providers(v: Vault, app_id: str, subject: str) -> None:
        called.append((app_id, subject))

    async def broken(v: Vault, app_id: str, subject: str) -> None:
        raise RuntimeError("provider down")

    identity.on_user_disabled.extend([broken, revoke_at_providers])
    try:
        result = await grantvault_json(
            "users", "disable", "ivan", "--app", app.name, "--reason", "left the company"
        )
    finally:
        identity.on_user_disabled.remove(broken)
        identity.on_user_disabled.remove(revoke_at_providers)
    assert result == {"subject": "ivan", "status": "disabled", "revoked_grants": [mine]}
    assert called == [(app.id, "ivan")]  # after the failing hook, still called

    with pytest.raises(VaultError) as caught:
        await identity.resolve_user(vault, app.id, token)
    assert (caught.value.code, caught.value.status) == (ErrorCode.USER_DISABLED, 403)
    async with vault.db.read() as conn:
        rows = {r.id: r for r in await conn.execute(sa.select(grants))}
        events = (
            await conn.execute(
                sa.select(audit_events.c.event, audit_events.c.principal, audit_events.c.grant_id)
                .where(audit_events.c.chain == app.id)
                .order_by(audit_events.c.seq)
            )
        ).all()
    assert rows[mine].status == "revoked" and rows[mine].revoke_reason == "left the company"
    assert rows[mine].revoked_at is not None
    assert {rows[g].status for g in (theirs, group, system)} == {"active"}
    assert ("user.disabled", "user:ivan", None) in events
    assert ("grant.revoked", "user:ivan", mine) in events
    # The grant stops working on the retrieval path too.
    r = await SignedClient(client, key).post(
        "/sdk/token",
        {
            "grant_id": mine,
            "reason": None,
            "request": {"method": "GET", "url": "https://api.openai.com/v1/models"},
        },
    )
    assert (r.status_code, r.json()["error"]) == (403, "grant_revoked")

    assert (await grantvault_json("users", "enable", "ivan", "--app", app.name))[
        "status"
    ] == "active"
    assert (await identity.resolve_user(vault, app.id, token)).subject == "ivan"
    async with vault.db.read() as conn:
        status = (
            await conn.execute(sa.select(grants.c.status).where(grants.c.id == mine))
        ).scalar_one()
    assert status == "revoked"  # re-enabling does not bring grants back


async def test_disabling_someone_not_seen_yet_refuses_their_first_token(
    vault: Vault, idp_peer: IdpPeer
) -> None:
    app, _ = await make_app(vault)
    await configure(vault, app, idp_peer)
    assert await identity.disable_user(vault, app.id, "kyle", OPERATOR) == []
    with pytest.raises(VaultError) as caught:
        await identity.resolve_user(vault, app.id, idp_peer.id_token("kyle"))
    assert caught.value.code is ErrorCode.USER_DISABLED
    async with vault.db.read() as conn:
        row = (await conn.execute(sa.select(app_users).where(app_users.c.subject == "kyle"))).one()
    assert row.status == "disabled"


def signed_headers(
    secret: str,
    body: bytes,
    *,
    delivery: str | None = None,
    at: int | None = None,
    svix: bool = False,
) -> dict[str, str]:
    delivery = delivery or f"msg_{uuid.uuid4().hex}"
    at = int(time.time()) if at is None else at
    prefix = "svix" if svix else "webhook"
    return {
        f"{prefix}-id": delivery,
        f"{prefix}-timestamp": str(at),
        f"{prefix}-signature": webhook_signature.sign(secret, delivery, at, body),
        "content-type": "application/json",
    }


async def test_webhook_deprovisioning_is_signed_fresh_and_once(
    vault: Vault, client: httpx.AsyncClient, shell: None, idp_peer: IdpPeer
) -> None:
    app, _ = await make_app(vault)
    await configure(vault, app, idp_peer)
    url = f"/webhooks/idp/{app.id}"
    body = json.dumps({"type": "user.disabled", "data": {"subject": "lena"}}).encode()
    guess = signed_headers("whsec_" + "A" * 43 + "=", body)
    r = await client.post(url, content=body, headers=guess)
    assert (r.status_code, r.json()["error"]) == (404, "not_found")  # no secret yet

    code, secret, err = await grantvault("idp", "webhook-secret", "--app", app.name)
    secret = secret.strip()
    assert code == 0 and secret.startswith("whsec_") and "shown once" in err
    assert f"https://vault.example.test/webhooks/idp/{app.id}" in err
    await identity.resolve_user(vault, app.id, idp_peer.forge(idp_peer.claims(sub="lena")))
    grant = await managed_grant(vault, app, "user", "lena", "lenas")

    async def lena_status() -> str:
        async with vault.db.read() as conn:
            return str(
                (
                    await conn.execute(
                        sa.select(app_users.c.status).where(app_users.c.subject == "lena")
                    )
                ).scalar_one()
            )

    r = await client.post(url, content=body)
    assert (r.status_code, r.json()["error"]) == (401, "invalid_signature")
    wrong = signed_headers("whsec_" + "A" * 43 + "=", body)
    r = await client.post(url, content=body, headers=wrong)
    assert (r.status_code, r.json()["error"]) == (401, "invalid_signature")
    tampered = signed_headers(secret, body)
    r = await client.post(url, content=body.replace(b"lena", b"lenb"), headers=tampered)
    assert (r.status_code, r.json()["error"]) == (401, "invalid_signature")
    stale = signed_headers(secret, body, at=int(time.time()) - 301)
    r = await client.post(url, content=body, headers=stale)
    assert (r.status_code, r.json()["error"]) == (401, "stale_request")
    future = signed_headers(secret, body, at=int(time.time()) + 301)
    assert (await client.post(url, content=body, headers=future)).status_code == 401
    assert await lena_status() == "active"

    good = signed_headers(secret, body)
    r = await client.post(url, content=body, headers=good)
    assert r.status_code == 200, r.text
    assert r.json() == {"status": "processed", "type": "user.disabled", "revoked_grants": 1}
    assert await lena_status() == "disabled"
    # Replayed after an operator re-enabled her: refused, and nothing happens again.
    await identity.enable_user(vault, app.id, "lena", OPERATOR)
    r = await client.post(url, content=body, headers=good)
    assert (r.status_code, r.json()["error"]) == (401, "replayed_request")
    assert await lena_status() == "active"
    async with vault.db.read() as conn:
        revoked = (
            await conn.execute(sa.select(grants.c.status).where(grants.c.id == grant))
        ).scalar_one()
    assert revoked == "revoked"

    # Clerk (Svix) shapes: svix-* headers, user.deleted with data.id.
    deleted = json.dumps(
        {"type": "user.deleted", "data": {"id": "lena", "object": "user"}}
    ).encode()
    r = await client.post(url, content=deleted, headers=signed_headers(secret, deleted, svix=True))
    assert r.status_code == 200 and await lena_status() == "deleted"
    other = json.dumps({"type": "session.created", "data": {}}).encode()
    r = await client.post(url, content=other, headers=signed_headers(secret, other))
    assert r.json() == {"status": "ignored", "type": "session.created"}
    r = await client.post(
        f"/webhooks/idp/{uuid.uuid4()}", content=body, headers=signed_headers(secret, body)
    )
    assert r.status_code == 404

    # An IdP-generated secret can be imported instead.
    imported = "whsec_" + "QkJC" * 11
    code, _, _ = await grantvault(
        "idp", "webhook-secret", "--app", app.name, "--from-stdin", stdin=imported
    )
    assert code == 0
    vault.identity.configs.clear()
    r = await client.post(url, content=other, headers=signed_headers(imported, other))
    assert r.status_code == 200
    assert (
        await client.post(url, content=other, headers=signed_headers(secret, other))
    ).status_code == 401


async def test_group_removal_by_webhook_applies_to_older_tokens(
    vault: Vault, client: httpx.AsyncClient, idp_peer: IdpPeer
) -> None:
    from grantvault_server.services.identity import idp as idp_service

    app, _ = await make_app(vault)
    await configure(vault, app, idp_peer)
    secret = await idp_service.set_webhook_secret(vault, app, OPERATOR)
    now = int(time.time())
    older = idp_peer.forge(idp_peer.claims(sub="mona", groups=["eng", "ops"], iat=now - 10))
    assert (await identity.resolve_user(vault, app.id, older)).groups == {"eng", "ops"}
    body = json.dumps(
        {"type": "group.member_removed", "data": {"subject": "mona", "group": "eng"}}
    ).encode()
    r = await client.post(
        f"/webhooks/idp/{app.id}", content=body, headers=signed_headers(secret, body)
    )
    assert r.status_code == 200, r.text
    # The token issued before the removal still lists eng: ignored for it.
    assert (await identity.resolve_user(vault, app.id, older)).groups == {"ops"}
    # A token issued after it means the IdP added her back.
    newer = idp_peer.forge(idp_peer.claims(sub="mona", groups=["eng", "ops"], iat=now + 5))
    assert (await identity.resolve_user(vault, app.id, newer)).groups == {"eng", "ops"}
    async with vault.db.read() as conn:
        row = (await conn.execute(sa.select(app_users).where(app_users.c.subject == "mona"))).one()
        events = (
            await conn.execute(
                sa.select(audit_events.c.event, audit_events.c.details).where(
                    audit_events.c.chain == app.id,
                    audit_events.c.event == "group.member_removed",
                )
            )
        ).all()
    assert row.group_removals == {} and sorted(row.groups) == ["eng", "ops"]
    assert events[0].details["groups"] == ["eng"]


async def test_identity_schema_matches_the_table_definitions(vault: Vault) -> None:
    def diff(connection: Any) -> list[Any]:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        return [
            d
            for d in compare_metadata(context, tables.metadata)
            if any(name in repr(d) for name in IDENTITY_TABLES)
        ]

    async with vault.db.read() as conn:
        assert await conn.run_sync(diff) == []
    encrypted = {c.name for c in tables.ENCRYPTED_COLUMNS}
    assert {
        "identity_providers.signin_client_secret_ct",
        "identity_providers.webhook_secret_ct",
        "auth_sessions.verifier_ct",
        "auth_sessions.user_token_ct",
    } <= encrypted


def test_identity_commands_have_help() -> None:
    for group in (["idp"], ["idp", "set"], ["users"], ["users", "disable"], ["groups"]):
        result = runner.invoke(cli, [*group, "--help"])
        assert result.exit_code == 0 and "Usage" in result.stdout, group
