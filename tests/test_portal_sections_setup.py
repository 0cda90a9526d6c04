"""The portal's set-up pages (issue 12): OAuth providers, identity provider, users and groups,
personal API tokens; in process, on SQLite and PostgreSQL.

Each page renders for an owner and an auditor; its forms work through the admin operations;
a form without its CSRF token changes nothing; an auditor sees no mutating control and is
refused anyway with an ``admin.refused`` row; and no client secret, webhook secret or token
appears in a page after it was set or first shown.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from argon2 import PasswordHasher

from grantvault_server.app import create_app
from grantvault_server.services import apps as app_service, operators as ops
from grantvault_server.services.vault import Vault
from grantvault_server.services.vault_time import FakeClock
from tests.conftest import OPERATOR
from tests.peer import BASIC_CLIENT
from tests.test_admin_identity_audit import a_user
from tests.test_identity_support import (
    IdpPeer,
    configure,
    idp_peer_fixture,  # noqa: F401 - the fixture
)
from tests.test_portal import (
    audit_rows,
    browser,
    csrf_of,
    make_operator,
    mutating_forms,
    post_form,
    signed_in,
)

CLIENT_SECRET = "cs-very-secret-4711-do-not-show"


@pytest.fixture(autouse=True)
def cheap_argon2(monkeypatch: pytest.MonkeyPatch) -> None:
    """The cheapest Argon2id: these tests sign in often (see tests/test_portal.py)."""
    monkeypatch.setattr(
        ops, "_hasher", PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)
    )


@pytest.fixture
async def app(vault: Vault) -> Any:
    return create_app(vault=vault)


@pytest.fixture
async def web(app: Any) -> AsyncIterator[httpx.AsyncClient]:
    async with browser(app) as client:
        yield client


async def test_providers_page_registers_replaces_and_removes_without_echoing_the_secret(
    vault: Vault, web: httpx.AsyncClient
) -> None:
    await make_operator(vault, "root", "owner")
    await app_service.register_app(vault, "demo", OPERATOR)
    await signed_in(web, "root")
    page = await web.get("/portal/apps/demo/providers")
    assert page.status_code == 200, page.text
    assert "/connect/callback" in page.text or "callback" in page.text
    assert 'data-copy="redirect-uri"' in page.text
    assert "No OAuth provider is registered" in page.text
    assert 'aria-current="page">OAuth providers' in page.text
    assert re.search(r"Page 1 of [2-9]", page.text)  # the catalog comes in pages
    second = await web.get("/portal/apps/demo/providers?q=&page=2")
    assert second.status_code == 200 and "Page 2 of" in second.text
    searched = await web.get("/portal/apps/demo/providers?q=github")
    assert "GitHub" in searched.text and "Salesforce" not in searched.text

    added = await post_form(
        web,
        "/portal/apps/demo/providers",
        "/portal/apps/demo/providers",
        {
            "kind": "catalog",
            "provider": "github",
            "client_id": "gh-client-1",
            "client_secret": CLIENT_SECRET,
            "scopes": "read:user",
        },
    )
    assert added.status_code == 303, added.text
    listed = await web.get(added.headers["location"])
    assert "gh-client-1" in listed.text and CLIENT_SECRET not in listed.text
    assert ">set<" in listed.text
    # A form error keeps what was typed, except the secret.
    bad = await post_form(
        web,
        "/portal/apps/demo/providers",
        "/portal/apps/demo/providers",
        {"kind": "catalog", "provider": "github", "client_id": "x", "client_secret": CLIENT_SECRET},
    )
    assert bad.status_code in (400, 409), bad.text
    assert CLIENT_SECRET not in bad.text and "already_exists" in bad.text
    replaced = await post_form(
        web,
        "/portal/apps/demo/providers?provider=github",
        "/portal/apps/demo/providers",
        {
            "provider": "github",
            "client_id": "gh-client-2",
            "replace": "yes",
            "client_secret": "other-secret-99",
        },
    )
    assert replaced.status_code == 303, replaced.text
    after = (await web.get("/portal/apps/demo/providers")).text
    assert "gh-client-2" in after and "other-secret-99" not in after

    # Nothing is removed by a GET: the confirmation names it.
    confirm = await web.get("/portal/apps/demo/providers/github/remove")
    assert confirm.status_code == 200 and "Remove GitHub?" in confirm.text
    no_token = await web.post("/portal/apps/demo/providers/github/remove", data={})
    assert no_token.status_code == 403
    assert "gh-client-2" in (await web.get("/portal/apps/demo/providers")).text
    removed = await web.post(
        "/portal/apps/demo/providers/github/remove", data={"csrf": csrf_of(confirm.text)}
    )
    assert removed.status_code == 303
    assert "No OAuth provider is registered" in (await web.get(removed.headers["location"])).text
    rows = await audit_rows(vault)
    assert all(CLIENT_SECRET not in str(r) for r in rows)


async def test_identity_page_discovers_saves_and_shows_the_webhook_secret_once(
    vault: Vault, web: httpx.AsyncClient, idp_peer: IdpPeer
) -> None:
    await make_operator(vault, "root", "owner")
    await app_service.register_app(vault, "demo", OPERATOR)
    await signed_in(web, "root")
    base = "/portal/apps/demo/identity"
    page = await web.get(base)
    assert page.status_code == 200, page.text
    assert "No identity provider yet" in page.text and "Discover" in page.text
    assert 'aria-current="page">Identity' in page.text

    found = await post_form(web, base, f"{base}/discover", {"issuer": idp_peer.issuer})
    assert found.status_code == 200, found.text
    assert "What the vault found" in found.text and f"{idp_peer.issuer}/jwks" in found.text
    assert "No identity provider yet" in found.text  # nothing saved by Discover
    saved = await web.post(
        base,
        data={
            "csrf": csrf_of(found.text),
            "issuer": idp_peer.issuer,
            "audience": BASIC_CLIENT[0],
            "user_id_claim": "sub",
            "groups_claim": "groups",
            "email_claim": "email",
            "name_claim": "name",
            "client_id": BASIC_CLIENT[0],
            "client_secret": BASIC_CLIENT[1],
        },
    )
    assert saved.status_code == 303, saved.text
    shown = await web.get(saved.headers["location"])
    assert "identity provider is saved" in shown.text and idp_peer.issuer in shown.text
    assert BASIC_CLIENT[1] not in shown.text and ">set<" in shown.text

    created = await post_form(web, base, f"{base}/webhook-secret")
    assert created.status_code == 200, created.text
    secret = re.search(r'id="webhook-secret" class="secret-value">(whsec_[^<]+)<', created.text)
    assert secret, created.text
    assert 'data-copy="webhook-secret"' in created.text
    again = await web.get(base)
    assert secret.group(1) not in again.text and "Replace the signing secret" in again.text
    bad = await post_form(web, base, f"{base}/discover", {"issuer": "not a url"})
    assert bad.status_code == 400 and "idp_discovery_failed" in bad.text, bad.text
    rows = await audit_rows(vault)
    assert all(BASIC_CLIENT[1] not in str(r) and secret.group(1) not in str(r) for r in rows)


async def test_users_page_lists_filters_disables_and_enables_with_a_confirmation(
    vault: Vault, web: httpx.AsyncClient, idp_peer: IdpPeer
) -> None:
    await make_operator(vault, "root", "owner")
    demo = await app_service.register_app(vault, "demo", OPERATOR)
    await signed_in(web, "root")
    base = "/portal/apps/demo/users"
    empty = await web.get(base)
    assert empty.status_code == 200 and "Configure the identity provider" in empty.text
    await configure(vault, demo, idp_peer)
    none_yet = await web.get(base)
    assert "No users yet" in none_yet.text, none_yet.text
    await a_user(vault, demo, idp_peer, "lena", ["eng"])
    await a_user(vault, demo, idp_peer, "auth0|team/ivan", ["eng", "ops"])
    listed = (await web.get(base)).text
    assert "lena" in listed and "auth0|team/ivan" in listed and "ops" in listed
    filtered = (await web.get(f"{base}?q=ivan")).text
    assert "auth0|team/ivan" in filtered and ">lena<" not in filtered

    subject = "auth0|team/ivan"
    confirm = await web.get(f"{base}/disable", params={"subject": subject})
    assert confirm.status_code == 200 and "Disable" in confirm.text and subject in confirm.text
    no_token = await web.post(f"{base}/disable", data={"subject": subject})
    assert no_token.status_code == 403
    done = await web.post(
        f"{base}/disable",
        data={"subject": subject, "reason": "left", "csrf": csrf_of(confirm.text)},
    )
    assert done.status_code == 303, done.text
    disabled = (await web.get(f"{base}?status=disabled")).text
    assert subject in disabled and ">lena<" not in disabled and "left" in disabled
    enable = await web.get(f"{base}/enable", params={"subject": subject})
    back = await web.post(f"{base}/enable", data={"subject": subject, "csrf": csrf_of(enable.text)})
    assert back.status_code == 303
    events = [r["event"] for r in await audit_rows(vault) if r["event"].startswith("user.")]
    assert events[-2:] == ["user.disabled", "user.enabled"], events


async def test_tokens_page_creates_once_lists_prefixes_and_revokes(
    vault: Vault, web: httpx.AsyncClient, app: Any
) -> None:
    await make_operator(vault, "root", "owner")
    await make_operator(vault, "ann", "admin")
    await ops.create_token(vault, "ann", "laptop", actor=OPERATOR)
    await signed_in(web, "root")
    base = "/portal/account/tokens"
    page = await web.get(base)
    assert page.status_code == 200, page.text
    assert "No personal tokens yet" in page.text
    assert "Other operators" in page.text and "laptop" in page.text  # an owner sees all

    created = await post_form(web, base, base, {"name": "ci", "expires_in": "90d"})
    assert created.status_code == 200, created.text
    token = re.search(r'id="new-token" class="secret-value">(gvat_[^<]+)<', created.text)
    assert token, created.text
    assert "export GRANTVAULT_SERVER=http://127.0.0.1:" in created.text
    assert f"GRANTVAULT_TOKEN={token.group(1)}</code>" in created.text
    assert 'data-copy="new-token"' in created.text
    # The token works against the admin API, and the page never shows it again.
    async with browser(app) as api:
        r = await api.get("/admin/v1/apps", headers={"Authorization": f"Bearer {token.group(1)}"})
        assert r.status_code == 200, r.text
    (mine,) = [t for t in await ops.list_tokens(vault) if t.name == "ci"]
    listed = await web.get(base)
    assert token.group(1) not in listed.text and f"{mine.prefix}…" in listed.text
    confirm = await web.get(f"{base}/{mine.id}/revoke")
    assert confirm.status_code == 200 and mine.prefix in confirm.text and "ci" in confirm.text
    assert (await web.post(f"{base}/{mine.id}/revoke", data={})).status_code == 403
    revoked = await web.post(f"{base}/{mine.id}/revoke", data={"csrf": csrf_of(confirm.text)})
    assert revoked.status_code == 303
    assert "token is revoked" in (await web.get(revoked.headers["location"])).text
    async with browser(app) as api:
        r = await api.get("/admin/v1/apps", headers={"Authorization": f"Bearer {token.group(1)}"})
        assert r.status_code == 401
    rows = await audit_rows(vault)
    assert all(token.group(1) not in str(r) for r in rows)


async def test_an_auditor_sees_the_set_up_pages_and_can_change_nothing(
    vault: Vault, web: httpx.AsyncClient, idp_peer: IdpPeer
) -> None:
    await make_operator(vault, "root", "owner")
    await make_operator(vault, "eve", "auditor")
    demo = await app_service.register_app(vault, "demo", OPERATOR)
    await configure(vault, demo, idp_peer)
    await a_user(vault, demo, idp_peer, "lena", ["eng"])
    info, _ = await ops.create_token(vault, "root", "deploy", actor=OPERATOR)
    # root registers a provider through the portal, then eve looks.
    await signed_in(web, "root")
    added = await post_form(
        web,
        "/portal/apps/demo/providers",
        "/portal/apps/demo/providers",
        {"provider": "github", "client_id": "gh-1", "client_secret": CLIENT_SECRET},
    )
    assert added.status_code == 303, added.text
    await post_form(web, "/portal/", "/portal/logout")
    await signed_in(web, "eve")
    for path in (
        "/portal/apps/demo/providers",
        "/portal/apps/demo/providers/github/remove",
        "/portal/apps/demo/identity",
        "/portal/apps/demo/users",
        "/portal/apps/demo/users/disable?subject=lena",
    ):
        r = await web.get(path)
        assert r.status_code == 200, (path, r.text)
        assert mutating_forms(r.text) == [], path
        assert CLIENT_SECRET not in r.text
    tokens = await web.get("/portal/account/tokens")
    assert tokens.status_code == 200 and "deploy" not in tokens.text  # only an owner sees all
    assert mutating_forms(tokens.text) == ["/portal/account/tokens"]  # one's own, as the API

    token = csrf_of(tokens.text)
    refused = [
        ("/portal/apps/demo/providers", {"provider": "x", "client_id": "y"}, "providers.add"),
        ("/portal/apps/demo/providers/github/remove", {}, "providers.remove"),
        ("/portal/apps/demo/identity/discover", {"issuer": idp_peer.issuer}, "idp.discover"),
        ("/portal/apps/demo/identity", {"issuer": idp_peer.issuer}, "idp.set"),
        ("/portal/apps/demo/identity/webhook-secret", {}, "idp.webhook-secret"),
        ("/portal/apps/demo/users/disable", {"subject": "lena"}, "users.disable"),
        ("/portal/apps/demo/users/enable", {"subject": "lena"}, "users.enable"),
        (f"/portal/account/tokens/{info.id}/revoke", {}, "operators.token.revoke"),
    ]
    for action, data, _ in refused:
        r = await web.post(action, data={**data, "csrf": token})
        assert r.status_code == 403 and "forbidden" in r.text, (action, r.text)
    rows = await audit_rows(vault, "admin.refused")
    assert [r["details"]["operation"] for r in rows] == [op for *_, op in refused]
    assert all(r["actor"]["name"] == "eve" for r in rows)
    assert "gh-1" in (await web.get("/portal/apps/demo/providers")).text
    assert "No user matches" in (await web.get("/portal/apps/demo/users?status=disabled")).text
    (still,) = [t for t in await ops.list_tokens(vault) if t.name == "deploy"]
    assert still.revoked_at is None


async def test_changing_the_idp_and_minting_or_revoking_tokens_need_sudo_mode(
    vault: Vault, web: httpx.AsyncClient, clock: FakeClock, idp_peer: IdpPeer
) -> None:
    await make_operator(vault, "root", "owner")
    demo = await app_service.register_app(vault, "demo", OPERATOR)
    await configure(vault, demo, idp_peer)
    info, _ = await ops.create_token(vault, "root", "deploy", actor=OPERATOR)
    await signed_in(web, "root")
    clock.advance(11 * 60)  # signing in counted as sudo for 10 minutes
    identity, tokens = "/portal/apps/demo/identity", "/portal/account/tokens"
    for page, action, data in [
        (identity, identity, {"issuer": idp_peer.issuer, "audience": "other"}),
        (identity, f"{identity}/webhook-secret", {}),
        (tokens, tokens, {"name": "ci"}),
        (tokens, f"{tokens}/{info.id}/revoke", {}),
    ]:
        asked = await post_form(web, page, action, data)
        assert asked.status_code == 303, (action, asked.text)
        assert asked.headers["location"].startswith("/portal/sudo?next="), action
    assert [t.name for t in await ops.list_tokens(vault)] == ["deploy"]
    assert "other" not in (await web.get(identity)).text.split("Audience</dt>")[1][:80]
    # Discovering saves nothing, and reading needs no sudo.
    found = await post_form(web, identity, f"{identity}/discover", {"issuer": idp_peer.issuer})
    assert found.status_code == 200 and "What the vault found" in found.text


async def test_an_app_scoped_admin_does_not_see_another_apps_set_up(
    vault: Vault, web: httpx.AsyncClient
) -> None:
    await app_service.register_app(vault, "mine", OPERATOR)
    await app_service.register_app(vault, "theirs", OPERATOR)
    await make_operator(vault, "ann", "admin", apps=["mine"])
    await signed_in(web, "ann")
    for tab in ("providers", "identity", "users"):
        assert (await web.get(f"/portal/apps/mine/{tab}")).status_code == 200, tab
        hidden = await web.get(f"/portal/apps/theirs/{tab}")
        assert hidden.status_code == 404 and "not_found" in hidden.text, tab
    token = csrf_of((await web.get("/portal/apps/mine/providers")).text)
    r = await web.post(
        "/portal/apps/theirs/providers",
        data={"provider": "github", "client_id": "x", "csrf": token},
    )
    assert r.status_code in (403, 404), r.text
    tokens = await web.get("/portal/account/tokens")
    assert tokens.status_code == 200 and "Other operators" not in tokens.text
