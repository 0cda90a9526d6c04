"""The admin API's ``secrets.*`` and ``providers.*`` routes (issue 12), on both backends.

Per route: an owner and an admin succeed; an auditor reads and is refused every change with
a 403 and an ``admin.refused`` row; an admin limited to one app cannot tell another app's
secrets and registrations from unknown ones. Throughout, no credential value or client
secret comes back in an answer or lands in an audit row.
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from grantvault_server.cli._invoke import local_principal
from grantvault_server.services import operators as ops
from grantvault_server.services.admin.catalog import find
from grantvault_server.services.admin.registry import OpContext
from grantvault_server.services.vault import Vault
from grantvault_server.storage.tables import audit_events
from tests.conftest import OPERATOR, OPERATOR_PASSWORD, make_app
from tests.peer import Peer

PASSWORD = OPERATOR_PASSWORD
API_KEY = "sk-admin-api-0123456789"
BASIC_PASSWORD = "twilio-pass-9876543210"
CLIENT_SECRET = "oauth-client-secret-5550123"
#: Every secret value these tests send; none may come back or be audited.
SECRET_VALUES = (API_KEY, BASIC_PASSWORD, CLIENT_SECRET)


class Api:
    """An operator's view of the admin API; remembers every answer for the secrecy check."""

    def __init__(self, client: httpx.AsyncClient, token: str) -> None:
        self.client = client
        self.headers = {"Authorization": f"Bearer {token}"}
        self.answers: list[str] = []

    async def __call__(
        self, method: str, path: str, body: dict[str, Any] | None = None
    ) -> httpx.Response:
        r = await self.client.request(method, "/admin/v1" + path, json=body, headers=self.headers)
        self.answers.append(r.text)
        return r


async def operator(
    vault: Vault, client: httpx.AsyncClient, name: str, role: str, apps: list[str] | None = None
) -> Api:
    await ops.create_operator(vault, name, role, actor=OPERATOR, password=PASSWORD, apps=apps)
    _, token = await ops.create_token(vault, name, "test", actor=OPERATOR)
    return Api(client, token)


def _json(value: Any) -> Any:
    return value if isinstance(value, dict | list) or value is None else json.loads(value)


async def audit_rows(vault: Vault) -> list[dict[str, Any]]:
    async with vault.db.read() as conn:
        rows = (await conn.execute(sa.select(audit_events).order_by(audit_events.c.id))).all()
    return [{**r._asdict(), "actor": _json(r.actor), "details": _json(r.details)} for r in rows]


async def assert_no_secret_anywhere(vault: Vault, *apis: Api) -> None:
    """No secret value in any answer any of ``apis`` received, nor in any audit column."""
    audit_text = json.dumps(await audit_rows(vault), default=str)
    for value in SECRET_VALUES:
        assert value not in audit_text
        for api in apis:
            for text in api.answers:
                assert value not in text


async def refusals(vault: Vault) -> list[tuple[str, str]]:
    return [
        (r["details"]["operation"], r["actor"]["name"])
        for r in await audit_rows(vault)
        if r["event"] == "admin.refused"
    ]


# --------------------------------------------------------------------------- secrets


@pytest.mark.parametrize("role", ["owner", "admin"])
async def test_owners_and_admins_manage_secrets(
    vault: Vault, admin: httpx.AsyncClient, role: str
) -> None:
    await make_app(vault, "shop")
    api = await operator(vault, admin, "ops", role)

    templates = await api("GET", "/secret-templates")
    assert templates.status_code == 200, templates.text
    assert "openai" in {t["slug"] for t in templates.json()["templates"]}

    created = await api("POST", "/apps/shop/secrets", {"template": "openai"})
    assert created.status_code == 200, created.text
    secret = created.json()
    assert secret["slug"] == "openai" and secret["has_credential"] is False
    sid = secret["managed_secret_id"]

    custom = await api(
        "POST",
        "/apps/shop/secrets",
        {
            "slug": "internal",
            "injection": {"auth": "header", "header": "X-Api-Key", "format": "{token}"},
            "allowed_hosts": ["api.internal.example"],
        },
    )
    assert custom.status_code == 200, custom.text
    assert custom.json()["auth"] == "header" and custom.json()["template"] is None

    stored = await api("POST", f"/secrets/{sid}/credential", {"value": API_KEY})
    assert stored.status_code == 200, stored.text
    assert stored.json()["managed_secret_id"] == sid
    credential_id = stored.json()["credential_id"]
    # Replacing keeps the credential id (grants keep working).
    again = await api("POST", f"/secrets/{sid}/credential", {"value": API_KEY + "x"})
    assert again.json()["credential_id"] == credential_id

    twilio = (await api("POST", "/apps/shop/secrets", {"template": "twilio"})).json()
    basic = await api(
        "POST",
        f"/secrets/{twilio['managed_secret_id']}/credential",
        {"values": {"username": "AC1", "password": BASIC_PASSWORD}},
    )
    assert basic.status_code == 200, basic.text
    bare = await api(
        "POST", f"/secrets/{twilio['managed_secret_id']}/credential", {"value": BASIC_PASSWORD}
    )
    assert bare.status_code == 422 and "JSON object" in bare.json()["message"]

    listed = await api("GET", "/apps/shop/secrets")
    assert listed.status_code == 200
    by_slug = {s["slug"]: s for s in listed.json()["secrets"]}
    assert set(by_slug) == {"openai", "internal", "twilio"}
    assert by_slug["openai"]["credential_ids"] == [credential_id]

    shown = await api("GET", f"/secrets/{sid}")
    assert shown.status_code == 200
    assert shown.json()["injection"]["auth"] == "bearer" and shown.json()["has_credential"]

    deleted = await api("DELETE", f"/secrets/{sid}")
    assert deleted.status_code == 200, deleted.text
    assert deleted.json() == {
        "managed_secret_id": sid,
        "deleted": True,
        "active_grants_removed": 0,
    }
    gone = await api("GET", f"/secrets/{sid}")
    assert gone.status_code == 404 and gone.json()["error"] == "secret_not_found"

    actors = {
        r["actor"]["name"]
        for r in await audit_rows(vault)
        if r["event"] in {"secret.created", "secret.credential_set", "secret.deleted"}
    }
    assert actors == {"ops"}
    await assert_no_secret_anywhere(vault, api)


async def test_credential_inputs_are_checked_without_echoing_them(
    vault: Vault, admin: httpx.AsyncClient
) -> None:
    await make_app(vault, "shop")
    api = await operator(vault, admin, "root", "owner")
    sid = (await api("POST", "/apps/shop/secrets", {"template": "openai"})).json()[
        "managed_secret_id"
    ]
    for body in [
        {},  # neither value nor values
        {"value": API_KEY, "values": {"token": API_KEY}},  # both
        {"value": API_KEY, "secret_value": API_KEY},  # an unknown field is refused, not ignored
        {"values": {"token": 12345, "colour": API_KEY}},
        {"value": 42},
    ]:
        r = await api("POST", f"/secrets/{sid}/credential", body)
        assert r.status_code == 422 and r.json()["error"] == "invalid_request", r.text
    listed = (await api("GET", "/apps/shop/secrets")).json()["secrets"]
    assert listed[0]["has_credential"] is False
    await assert_no_secret_anywhere(vault, api)


async def test_an_auditor_reads_secrets_but_changes_nothing(
    vault: Vault, admin: httpx.AsyncClient
) -> None:
    await make_app(vault, "shop")
    owner = await operator(vault, admin, "root", "owner")
    sid = (await owner("POST", "/apps/shop/secrets", {"template": "openai"})).json()[
        "managed_secret_id"
    ]
    auditor = await operator(vault, admin, "audra", "auditor")
    for path in ["/secret-templates", "/apps/shop/secrets", f"/secrets/{sid}"]:
        assert (await auditor("GET", path)).status_code == 200, path
    for method, path, body in [
        ("POST", "/apps/shop/secrets", {"template": "github"}),
        ("POST", f"/secrets/{sid}/credential", {"value": API_KEY}),
        ("POST", f"/secrets/{sid}/credential", {"values": {"token": API_KEY}}),
        ("DELETE", f"/secrets/{sid}", None),
    ]:
        r = await auditor(method, path, body)
        assert r.status_code == 403 and r.json()["error"] == "forbidden", r.text
    assert await refusals(vault) == [
        ("secrets.create", "audra"),
        ("secrets.set-credential", "audra"),
        ("secrets.set-credential", "audra"),
        ("secrets.delete", "audra"),
    ]
    refused = [r for r in await audit_rows(vault) if r["event"] == "admin.refused"]
    assert refused[1]["details"]["inputs"]["value"] == "[redacted]"
    assert refused[2]["details"]["inputs"]["values"] == "[redacted]"
    after = (await owner("GET", "/apps/shop/secrets")).json()["secrets"]
    assert [s["slug"] for s in after] == ["openai"] and after[0]["has_credential"] is False
    await assert_no_secret_anywhere(vault, owner, auditor)


async def test_an_app_scoped_admin_cannot_see_another_apps_secrets(
    vault: Vault, admin: httpx.AsyncClient
) -> None:
    await make_app(vault, "mine")
    await make_app(vault, "theirs")
    owner = await operator(vault, admin, "root", "owner")
    theirs = (await owner("POST", "/apps/theirs/secrets", {"template": "openai"})).json()[
        "managed_secret_id"
    ]
    ann = await operator(vault, admin, "ann", "admin", apps=["mine"])
    mine = await ann("POST", "/apps/mine/secrets", {"template": "openai"})
    assert mine.status_code == 200, mine.text
    stored = await ann(
        "POST", f"/secrets/{mine.json()['managed_secret_id']}/credential", {"value": API_KEY}
    )
    assert stored.status_code == 200

    unknown = "00000000-0000-4000-8000-000000000000"
    for method, path, body in [
        ("GET", "/secrets/{}", None),
        ("DELETE", "/secrets/{}", None),
        ("POST", "/secrets/{}/credential", {"value": API_KEY}),
    ]:
        hidden = await ann(method, path.format(theirs), body)
        missing = await ann(method, path.format(unknown), body)
        assert hidden.status_code == missing.status_code == 404, hidden.text
        assert hidden.json()["error"] == missing.json()["error"] == "secret_not_found"
        assert hidden.json()["message"].replace(theirs, "X") == missing.json()["message"].replace(
            unknown, "X"
        )
    for method, path, body in [
        ("GET", "/apps/{}/secrets", None),
        ("POST", "/apps/{}/secrets", {"template": "github"}),
    ]:
        hidden = await ann(method, path.format("theirs"), body)
        missing = await ann(method, path.format("nope"), body)
        assert hidden.status_code == missing.status_code == 404
        assert hidden.json()["message"].replace("theirs", "X") == missing.json()["message"].replace(
            "nope", "X"
        )
    # Nothing of theirs changed.
    shown = (await owner("GET", f"/secrets/{theirs}")).json()
    assert shown["has_credential"] is False
    assert [s["slug"] for s in (await owner("GET", "/apps/theirs/secrets")).json()["secrets"]] == [
        "openai"
    ]
    await assert_no_secret_anywhere(vault, owner, ann)


# --------------------------------------------------------------------------- providers


@pytest.mark.parametrize("role", ["owner", "admin"])
async def test_owners_and_admins_manage_providers(
    vault: Vault, admin: httpx.AsyncClient, role: str
) -> None:
    await make_app(vault, "shop")
    api = await operator(vault, admin, "ops", role)

    catalog = await api("GET", "/provider-catalog")
    assert catalog.status_code == 200
    google = catalog.json()["providers"]["google"]
    assert google["display_name"] and google["pkce"] in {"required", "supported", "unsupported"}

    added = await api(
        "POST",
        "/apps/shop/providers",
        {
            "provider": "google",
            "client_id": "cid.apps.example",
            "client_secret": CLIENT_SECRET,
            "scopes": ["openid", "email"],
        },
    )
    assert added.status_code == 200, added.text
    body = added.json()
    assert body["provider_id"] == "google" and body["client_secret_set"] is True
    assert body["default_scopes"] == ["openid", "email"]
    assert body["redirect_uri"].endswith("/sdk/oauth/callback")
    assert body["redirect_uri_derived"] is True

    twice = await api("POST", "/apps/shop/providers", {"provider": "google", "client_id": "other"})
    assert twice.status_code == 409
    replaced = await api(
        "POST",
        "/apps/shop/providers",
        {"provider": "google", "client_id": "other", "replace": True},
    )
    assert replaced.status_code == 200 and replaced.json()["id"] == body["id"]

    custom = await api(
        "POST",
        "/apps/shop/providers",
        {
            "provider": "corp",
            "client_id": "c",
            "client_secret": CLIENT_SECRET,
            "authorize_url": "https://sso.corp.example/authorize",
            "token_url": "https://sso.corp.example/token",
            "userinfo_url": "https://api.corp.example/me",
            "api_hosts": ["api.corp.example"],
            "display_name": "Corp",
        },
    )
    assert custom.status_code == 200, custom.text
    assert custom.json()["custom"] is True and custom.json()["api_hosts"] == ["api.corp.example"]
    half = await api(
        "POST",
        "/apps/shop/providers",
        {"provider": "half", "client_id": "c", "token_url": "https://sso.corp.example/token"},
    )
    assert half.status_code == 422 and "authorize URL" in half.json()["message"]

    listed = await api("GET", "/apps/shop/providers")
    assert listed.status_code == 200
    assert sorted(p["provider_id"] for p in listed.json()["providers"]) == ["corp", "google"]

    removed = await api("DELETE", "/apps/shop/providers/corp")
    assert removed.status_code == 200 and removed.json() == {"provider_id": "corp", "removed": True}
    again = await api("DELETE", "/apps/shop/providers/corp")
    assert again.status_code == 404

    configured = [r for r in await audit_rows(vault) if r["event"].startswith("oauth_provider.")]
    assert configured and {r["actor"]["name"] for r in configured} == {"ops"}
    await assert_no_secret_anywhere(vault, api)


async def test_an_oidc_provider_is_registered_through_discovery(
    vault: Vault, admin: httpx.AsyncClient, oauth_peer: Peer
) -> None:
    await make_app(vault, "shop")
    api = await operator(vault, admin, "root", "owner")
    added = await api(
        "POST",
        "/apps/shop/providers",
        {
            "provider": "peer",
            "client_id": "c",
            "client_secret": CLIENT_SECRET,
            "issuer": oauth_peer.issuer,
            "api_hosts": ["127.0.0.1"],
        },
    )
    assert added.status_code == 200, added.text
    assert added.json()["authorize_url"].startswith(oauth_peer.issuer)
    assert added.json()["default_scopes"] == ["openid"]
    failed = await api(
        "POST",
        "/apps/shop/providers",
        {"provider": "nowhere", "client_id": "c", "issuer": "http://10.0.0.1/realm"},
    )
    assert failed.status_code == 400 and failed.json()["error"] == "idp_discovery_failed"
    assert "GRANTVAULT_ALLOW_HTTP_HOSTS" in failed.json()["message"]
    await assert_no_secret_anywhere(vault, api)


async def test_an_auditor_reads_providers_but_changes_nothing(
    vault: Vault, admin: httpx.AsyncClient
) -> None:
    await make_app(vault, "shop")
    owner = await operator(vault, admin, "root", "owner")
    assert (
        await owner(
            "POST",
            "/apps/shop/providers",
            {"provider": "github", "client_id": "gh", "client_secret": CLIENT_SECRET},
        )
    ).status_code == 200
    auditor = await operator(vault, admin, "audra", "auditor")
    for path in ["/provider-catalog", "/apps/shop/providers"]:
        assert (await auditor("GET", path)).status_code == 200, path
    add = await auditor(
        "POST",
        "/apps/shop/providers",
        {"provider": "google", "client_id": "g", "client_secret": CLIENT_SECRET},
    )
    remove = await auditor("DELETE", "/apps/shop/providers/github")
    for r in (add, remove):
        assert r.status_code == 403 and r.json()["error"] == "forbidden", r.text
    assert await refusals(vault) == [("providers.add", "audra"), ("providers.remove", "audra")]
    refused = [r for r in await audit_rows(vault) if r["event"] == "admin.refused"]
    assert refused[0]["details"]["inputs"]["client_secret"] == "[redacted]"
    listed = (await owner("GET", "/apps/shop/providers")).json()["providers"]
    assert [p["provider_id"] for p in listed] == ["github"]
    await assert_no_secret_anywhere(vault, owner, auditor)


async def test_an_app_scoped_admin_cannot_see_another_apps_providers(
    vault: Vault, admin: httpx.AsyncClient
) -> None:
    await make_app(vault, "mine")
    await make_app(vault, "theirs")
    owner = await operator(vault, admin, "root", "owner")
    assert (
        await owner(
            "POST",
            "/apps/theirs/providers",
            {"provider": "github", "client_id": "gh", "client_secret": CLIENT_SECRET},
        )
    ).status_code == 200
    ann = await operator(vault, admin, "ann", "admin", apps=["mine"])
    assert (
        await ann("POST", "/apps/mine/providers", {"provider": "github", "client_id": "mine"})
    ).status_code == 200
    for method, path, body in [
        ("GET", "/apps/{}/providers", None),
        ("POST", "/apps/{}/providers", {"provider": "google", "client_id": "g"}),
        ("DELETE", "/apps/{}/providers/github", None),
    ]:
        hidden = await ann(method, path.format("theirs"), body)
        missing = await ann(method, path.format("nope"), body)
        assert hidden.status_code == missing.status_code == 404, hidden.text
        assert hidden.json()["message"].replace("theirs", "X") == missing.json()["message"].replace(
            "nope", "X"
        )
    assert [
        p["client_id"] for p in (await owner("GET", "/apps/theirs/providers")).json()["providers"]
    ] == ["gh"]
    await assert_no_secret_anywhere(vault, owner, ann)


# --------------------------------------------------------------------------- both modes


async def test_the_local_handler_answers_what_the_api_answers(
    vault: Vault, admin: httpx.AsyncClient
) -> None:
    """The CLI prints the handler's dictionary locally and the API's JSON remotely: for the
    read operations the two are the same object."""
    await make_app(vault, "shop")
    api = await operator(vault, admin, "root", "owner")
    sid = (await api("POST", "/apps/shop/secrets", {"template": "openai"})).json()[
        "managed_secret_id"
    ]
    await api(
        "POST",
        "/apps/shop/providers",
        {"provider": "github", "client_id": "gh", "client_secret": CLIENT_SECRET},
    )
    ctx = OpContext(vault=vault, principal=local_principal(), actor=OPERATOR)
    for name, values, path in [
        ("secrets.templates", {}, "/secret-templates"),
        ("secrets.list", {"app": "shop"}, "/apps/shop/secrets"),
        ("secrets.show", {"managed_secret_id": sid}, f"/secrets/{sid}"),
        ("providers.catalog", {}, "/provider-catalog"),
        ("providers.list", {"app": "shop"}, "/apps/shop/providers"),
    ]:
        op = find(name)
        local = await op.handler(ctx, op.params.model_validate(values))
        assert json.loads(json.dumps(local)) == local, name  # plain JSON, no default=str
        assert (await api("GET", path)).json() == local, name
