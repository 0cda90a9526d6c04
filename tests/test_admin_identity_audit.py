"""The admin API's identity (``idp``, ``users``, ``groups``), audit and master-key routes
(issue 12), on SQLite and PostgreSQL.

For every route: owners and admins succeed; an auditor reads (audit list, export and verify
included) and is refused every change with a 403 and an ``admin.refused`` row; an app-scoped
admin cannot tell another app's identity objects from unknown ones; and no secret (the IdP
sign-in client's secret, a webhook secret after it was shown once) is in an answer or in the
audit trail.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from typer.testing import CliRunner

from grantvault_server.cli.main import cli
from grantvault_server.services.apps import App
from grantvault_server.services.identity import service as identity
from grantvault_server.services.vault import Vault
from grantvault_server.storage.tables import audit_events

from .conftest import bearer, make_app, token_for
from .peer import BASIC_CLIENT
from .test_identity_support import (
    IdpPeer,
    configure,
    idp_peer_fixture,  # noqa: F401 - the fixture
)

IMPORTED_WEBHOOK_SECRET = "whsec_" + "QkJD" * 11


def _json(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str) else value


async def audit_rows(vault: Vault) -> list[dict[str, Any]]:
    async with vault.db.read() as conn:
        rows = (await conn.execute(sa.select(audit_events).order_by(audit_events.c.id))).all()
    return [{**r._mapping, "actor": _json(r.actor), "details": _json(r.details)} for r in rows]


async def refusals(vault: Vault) -> list[dict[str, Any]]:
    return [
        {
            "operation": r["details"]["operation"],
            "who": r["actor"]["name"],
            "inputs": r["details"]["inputs"],
        }
        for r in await audit_rows(vault)
        if r["event"] == "admin.refused"
    ]


async def assert_nowhere(vault: Vault, *secrets: str) -> None:
    """None of ``secrets`` in any audit row (every column, as text)."""
    text = json.dumps(await audit_rows(vault), default=str)
    for secret in secrets:
        assert secret not in text


async def a_user(vault: Vault, app: App, peer: IdpPeer, sub: str, groups: list[str]) -> None:
    """``sub`` signs in once (created just in time, as the SDK would)."""
    await identity.resolve_user(vault, app.id, peer.forge(peer.claims(sub=sub, groups=groups)))


# --------------------------------------------------------------------------- identity


@pytest.mark.parametrize("role", ["owner", "admin"])
async def test_owners_and_admins_run_the_identity_operations(
    vault: Vault, admin: httpx.AsyncClient, idp_peer: IdpPeer, role: str
) -> None:
    app, _ = await make_app(vault, "shop")
    auth = bearer(await token_for(vault, "olga", role))
    base = "/admin/v1/apps/shop"

    found = await admin.post(f"{base}/idp/discover", json={"issuer": idp_peer.issuer}, headers=auth)
    assert found.status_code == 200, found.text
    assert found.json()["jwks_uri"] == f"{idp_peer.issuer}/jwks"
    assert found.json()["configured"] is False and found.json()["claims"]["user_id"] == "sub"
    r = await admin.get(f"{base}/idp", headers=auth)
    assert (r.status_code, r.json()["error"]) == (400, "idp_not_configured")

    body = {
        "issuer": idp_peer.issuer,
        "audience": BASIC_CLIENT[0],
        "groups_claim": "groups",
        "client_id": BASIC_CLIENT[0],
        "client_secret": BASIC_CLIENT[1],
    }
    r = await admin.put(f"{base}/idp", json=body, headers=auth)
    assert r.status_code == 200, r.text
    assert r.json()["signin"]["client_id"] == BASIC_CLIENT[0]
    assert r.json()["signin"]["client_secret_set"] is True
    assert BASIC_CLIENT[1] not in r.text
    shown = await admin.get(f"{base}/idp", headers=auth)
    assert shown.status_code == 200 and shown.json() == r.json()
    assert BASIC_CLIENT[1] not in shown.text
    found = await admin.post(f"{base}/idp/discover", json={"issuer": idp_peer.issuer}, headers=auth)
    assert found.json()["configured"] is True and found.json()["claims"]["groups"] == "groups"

    # The generated webhook secret is answered once, at creation, and never again.
    created = await admin.post(f"{base}/idp/webhook-secret", json={}, headers=auth)
    assert created.status_code == 200, created.text
    generated = created.json()["secret"]
    assert generated.startswith("whsec_")
    assert created.json()["url"].endswith(f"/webhooks/idp/{app.id}")
    shown = await admin.get(f"{base}/idp", headers=auth)
    assert shown.json()["webhook"]["secret_set"] is True and generated not in shown.text
    imported = await admin.post(
        f"{base}/idp/webhook-secret", json={"secret": IMPORTED_WEBHOOK_SECRET}, headers=auth
    )
    assert imported.status_code == 200 and imported.json()["secret"] is None
    assert IMPORTED_WEBHOOK_SECRET not in imported.text

    await a_user(vault, app, idp_peer, "lena", ["eng"])
    await a_user(vault, app, idp_peer, "auth0|team/ivan", ["eng", "ops"])
    users = await admin.get(f"{base}/users", params={"limit": 1}, headers=auth)
    assert users.status_code == 200, users.text
    assert (users.json()["total"], len(users.json()["users"]), users.json()["has_more"]) == (
        2,
        1,
        True,
    )
    groups = await admin.get(f"{base}/groups", headers=auth)
    assert [(g["external_id"], g["members"]) for g in groups.json()["groups"]] == [
        ("eng", 2),
        ("ops", 1),
    ]
    # A subject with a slash: it travels in the body, not in the path.
    off = await admin.post(
        f"{base}/users/disable",
        json={"subject": "auth0|team/ivan", "reason": "left"},
        headers=auth,
    )
    assert off.json() == {"subject": "auth0|team/ivan", "status": "disabled", "revoked_grants": []}
    disabled = await admin.get(f"{base}/users", params={"status": "disabled"}, headers=auth)
    assert [u["subject"] for u in disabled.json()["users"]] == ["auth0|team/ivan"]
    on = await admin.post(f"{base}/users/enable", json={"subject": "auth0|team/ivan"}, headers=auth)
    assert on.json() == {"subject": "auth0|team/ivan", "status": "active"}

    rows = await audit_rows(vault)
    by_operator = {r["event"] for r in rows if r["actor"].get("name") == "olga"}
    assert {
        "idp.configured",
        "idp.webhook_secret_created",
        "user.disabled",
        "user.enabled",
    } <= by_operator
    await assert_nowhere(vault, BASIC_CLIENT[1], generated, IMPORTED_WEBHOOK_SECRET)


async def test_an_auditor_reads_identity_but_changes_nothing(
    vault: Vault, admin: httpx.AsyncClient, idp_peer: IdpPeer
) -> None:
    app, _ = await make_app(vault, "shop")
    await configure(vault, app, idp_peer)
    await a_user(vault, app, idp_peer, "lena", ["eng"])
    auth = bearer(await token_for(vault, "audra", "auditor"))
    base = "/admin/v1/apps/shop"
    for path in ("idp", "users", "groups"):
        r = await admin.get(f"{base}/{path}", headers=auth)
        assert r.status_code == 200, (path, r.text)

    writes = [
        ("PUT", "idp", {"issuer": idp_peer.issuer, "client_id": "x", "client_secret": "cs-9f2"}),
        ("POST", "idp/discover", {"issuer": idp_peer.issuer}),
        ("POST", "idp/webhook-secret", {"secret": IMPORTED_WEBHOOK_SECRET}),
        ("POST", "idp/webhook-secret", {}),
        ("POST", "users/disable", {"subject": "lena"}),
        ("POST", "users/enable", {"subject": "lena"}),
    ]
    for method, path, body in writes:
        r = await admin.request(method, f"{base}/{path}", json=body, headers=auth)
        assert (r.status_code, r.json()["error"]) == (403, "forbidden"), (path, r.text)
    refused = await refusals(vault)
    assert [(r["operation"], r["who"]) for r in refused] == [
        ("idp.set", "audra"),
        ("idp.discover", "audra"),
        ("idp.webhook-secret", "audra"),
        ("idp.webhook-secret", "audra"),
        ("users.disable", "audra"),
        ("users.enable", "audra"),
    ]
    assert refused[0]["inputs"]["client_secret"] == "[redacted]"
    assert refused[2]["inputs"]["secret"] == "[redacted]"
    await assert_nowhere(vault, "cs-9f2", IMPORTED_WEBHOOK_SECRET)
    async with vault.db.read() as conn:
        events = set(
            (
                await conn.execute(
                    sa.select(audit_events.c.event).where(audit_events.c.chain == app.id)
                )
            ).scalars()
        )
    assert not events & {"user.disabled", "idp.webhook_secret_created"}


async def test_an_app_scoped_admin_cannot_see_another_apps_identity(
    vault: Vault, admin: httpx.AsyncClient, idp_peer: IdpPeer
) -> None:
    mine, _ = await make_app(vault, "mine")
    theirs, _ = await make_app(vault, "theirs")
    for app in (mine, theirs):
        await configure(vault, app, idp_peer)
        await a_user(vault, app, idp_peer, "lena", ["eng"])
    auth = bearer(await token_for(vault, "ann", "admin", apps=["mine"]))
    routes = [
        ("GET", "idp", None),
        ("GET", "users", None),
        ("GET", "groups", None),
        ("PUT", "idp", {"issuer": idp_peer.issuer}),
        ("POST", "idp/discover", {"issuer": idp_peer.issuer}),
        ("POST", "idp/webhook-secret", {}),
        ("POST", "users/disable", {"subject": "lena"}),
        ("POST", "users/enable", {"subject": "lena"}),
    ]
    for method, path, body in routes:
        own = await admin.request(method, f"/admin/v1/apps/mine/{path}", json=body, headers=auth)
        assert own.status_code == 200, (path, own.text)
        hidden = await admin.request(
            method, f"/admin/v1/apps/theirs/{path}", json=body, headers=auth
        )
        unknown = await admin.request(
            method, f"/admin/v1/apps/nope/{path}", json=body, headers=auth
        )
        assert hidden.status_code == unknown.status_code == 404, (path, hidden.text)
        assert hidden.json()["message"].replace("theirs", "X") == unknown.json()["message"].replace(
            "nope", "X"
        )
    async with vault.db.read() as conn:
        touched = (
            await conn.execute(
                sa.select(sa.func.count()).where(
                    audit_events.c.chain == theirs.id,
                    audit_events.c.event.in_(["user.disabled", "idp.webhook_secret_created"]),
                )
            )
        ).scalar_one()
    assert touched == 0


async def test_unknown_identity_inputs_are_refused(vault: Vault, admin: httpx.AsyncClient) -> None:
    await make_app(vault, "shop")
    auth = bearer(await token_for(vault, "root", "owner"))
    r = await admin.put(
        "/admin/v1/apps/shop/idp", json={"issuer": "https://x.example", "colour": 1}, headers=auth
    )
    assert (r.status_code, r.json()["error"]) == (422, "invalid_request")
    for flag in ({"force": 1}, {"no_signin": "yes"}):  # flags are booleans, nothing else
        r = await admin.put(
            "/admin/v1/apps/shop/idp", json={"issuer": "https://x.example", **flag}, headers=auth
        )
        assert r.status_code == 422, (flag, r.text)
    r = await admin.get("/admin/v1/apps/shop/users", params={"sort": "name"}, headers=auth)
    assert r.status_code == 422


# --------------------------------------------------------------------------- audit


async def _some_events(vault: Vault, admin: httpx.AsyncClient, auth: dict[str, str]) -> None:
    """A few key events in two apps (and operator events in the system chain)."""
    for app in ("mine", "theirs"):
        for name in ("a", "b", "c"):
            r = await admin.post(f"/admin/v1/apps/{app}/keys", json={"name": name}, headers=auth)
            assert r.status_code == 200, r.text


@pytest.mark.parametrize("role", ["owner", "admin", "auditor"])
async def test_audit_list_export_and_verify_for_every_role(
    vault: Vault, admin: httpx.AsyncClient, role: str
) -> None:
    await make_app(vault, "mine")
    await make_app(vault, "theirs")
    await _some_events(vault, admin, bearer(await token_for(vault, "root", "owner")))
    auth = bearer(await token_for(vault, "reader", role))

    listed = await admin.get("/admin/v1/audit", params={"limit": 1000}, headers=auth)
    assert listed.status_code == 200, listed.text
    everything = listed.json()["events"]
    assert {e["app"] for e in everything} == {"mine", "theirs", "system"}
    times = [(e["occurred_at"]) for e in everything]
    assert times == sorted(times, reverse=True)

    # Paged export: the pages, joined, are the list; the cursor is followed to the end.
    paged: list[dict[str, Any]] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"limit": 4, **({"cursor": cursor} if cursor else {})}
        page = await admin.get("/admin/v1/audit/export", params=params, headers=auth)
        assert page.status_code == 200, page.text
        paged += page.json()["events"]
        cursor = page.json()["next_cursor"]
        if cursor is None:
            break
    assert [(e["app_id"], e["seq"]) for e in paged] == [(e["app_id"], e["seq"]) for e in everything]

    filtered = await admin.get(
        "/admin/v1/audit",
        params={"app": "mine", "event": "key.created", "outcome": "success", "since": "1h"},
        headers=auth,
    )
    assert [e["app"] for e in filtered.json()["events"]] == ["mine"] * 4  # make_app's key too
    system = await admin.get("/admin/v1/audit", params={"app": "system"}, headers=auth)
    assert system.status_code == 200 and {e["app"] for e in system.json()["events"]} == {"system"}
    later = await admin.get(
        "/admin/v1/audit", params={"since": "2999-01-01T00:00:00Z"}, headers=auth
    )
    assert later.json() == {"events": []}

    report = await admin.post("/admin/v1/audit/verify", json={}, headers=auth)
    assert report.status_code == 200 and report.json()["ok"] is True
    assert {c["name"] for c in report.json()["chains"]} == {"mine", "theirs", "system"}
    anchored = await admin.post(
        "/admin/v1/audit/verify", json={"app": "mine", "anchor": report.json()}, headers=auth
    )
    assert anchored.json()["ok"] is True and [c["name"] for c in anchored.json()["chains"]] == [
        "mine"
    ]
    assert await refusals(vault) == []


async def test_audit_inputs_are_checked(vault: Vault, admin: httpx.AsyncClient) -> None:
    auth = bearer(await token_for(vault, "audra", "auditor"))
    cases: list[tuple[dict[str, str | int], str]] = [
        ({"event": "nope"}, "Unknown event"),
        ({"outcome": "maybe"}, "outcome"),
        ({"since": "yesterday"}, "since"),
        ({"limit": 0}, "limit"),
        ({"limit": 1001}, "limit"),
    ]
    for params, why in cases:
        r = await admin.get("/admin/v1/audit", params=params, headers=auth)
        assert (r.status_code, r.json()["error"]) == (422, "invalid_request"), params
        assert why in r.json()["message"]
    r = await admin.get("/admin/v1/audit/export", params={"cursor": "garbage"}, headers=auth)
    assert r.status_code == 422 and "cursor" in r.json()["message"]
    r = await admin.post("/admin/v1/audit/verify", json={"anchor": {"chains": [1]}}, headers=auth)
    assert r.status_code == 422 and "anchor" in r.json()["message"]


async def test_an_app_scoped_auditor_reads_only_its_apps_audit(
    vault: Vault, admin: httpx.AsyncClient
) -> None:
    mine, _ = await make_app(vault, "mine")
    await make_app(vault, "theirs")
    await _some_events(vault, admin, bearer(await token_for(vault, "root", "owner")))
    auth = bearer(await token_for(vault, "sam", "auditor", apps=["mine"]))

    listed = await admin.get("/admin/v1/audit", headers=auth)
    assert {e["app_id"] for e in listed.json()["events"]} == {mine.id}
    exported = await admin.get("/admin/v1/audit/export", headers=auth)
    assert {e["app_id"] for e in exported.json()["events"]} == {mine.id}
    report = await admin.post("/admin/v1/audit/verify", json={}, headers=auth)
    assert report.json()["ok"] is True
    assert [c["name"] for c in report.json()["chains"]] == ["mine"]

    for method, path, body in [
        ("GET", "/admin/v1/audit", {"app": "theirs"}),
        ("GET", "/admin/v1/audit/export", {"app": "theirs"}),
        ("POST", "/admin/v1/audit/verify", {"app": "theirs"}),
    ]:
        kw: dict[str, Any] = {"params": body} if method == "GET" else {"json": body}
        hidden = await admin.request(method, path, headers=auth, **kw)
        assert hidden.status_code == 404, hidden.text
    for method, path in [
        ("GET", "/admin/v1/audit"),
        ("GET", "/admin/v1/audit/export"),
        ("POST", "/admin/v1/audit/verify"),
    ]:
        kw = {"params": {"app": "system"}} if method == "GET" else {"json": {"app": "system"}}
        refused = await admin.request(method, path, headers=auth, **kw)
        assert (refused.status_code, refused.json()["error"]) == (403, "forbidden")
    assert [(r["operation"], r["who"]) for r in await refusals(vault)] == [
        ("audit.list", "sam"),
        ("audit.export", "sam"),
        ("audit.verify", "sam"),
    ]


# --------------------------------------------------------------------------- master key


@pytest.mark.parametrize("role", ["owner", "auditor"])
async def test_owners_and_auditors_read_the_master_key_status(
    vault: Vault, admin: httpx.AsyncClient, role: str
) -> None:
    auth = bearer(await token_for(vault, "kim", role))
    r = await admin.get("/admin/v1/master-key", headers=auth)
    assert r.status_code == 200, r.text
    status = r.json()
    assert status["key_id"] == vault.barrier.master.key_id
    assert status["active_term"] == vault.barrier.active_term
    assert status["terms"][0]["master_key_ids"] == [vault.barrier.master.key_id]
    assert status["rotation"] is None and status["restart_needed"] is False
    assert status["reencryption_pending"] is False and status["sealed"] is False
    assert status["last_rotated_at"] is None
    assert vault.settings.master_key is not None
    assert vault.settings.master_key.get_secret_value() not in r.text


@pytest.mark.parametrize(("role", "apps"), [("admin", None), ("auditor", ["mine"])])
async def test_app_admins_and_scoped_operators_may_not_read_the_master_key_status(
    vault: Vault, admin: httpx.AsyncClient, role: str, apps: list[str] | None
) -> None:
    await make_app(vault, "mine")
    auth = bearer(await token_for(vault, "al", role, apps=apps))
    r = await admin.get("/admin/v1/master-key", headers=auth)
    assert (r.status_code, r.json()["error"]) == (403, "forbidden")
    assert [(x["operation"], x["who"]) for x in await refusals(vault)] == [
        ("master-key.status", "al")
    ]


# --------------------------------------------------------------------------- the CLI


def test_rotation_commands_refuse_in_remote_mode(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GRANTVAULT_SERVER", "https://vault.example.test")
    monkeypatch.setenv("GRANTVAULT_TOKEN", "gvat_not_used")
    runner = CliRunner()
    for command in ("rotate", "retire-old"):
        result = runner.invoke(cli, ["master-key", command])
        assert result.exit_code == 2, result.output
        assert "server host" in result.stderr
    assert "server host" in runner.invoke(cli, ["master-key", "--help"]).stdout


def test_master_key_status_follows_a_rotation(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Locally, through the same operation: a rotation shows until the old key is retired."""
    for var in ("GRANTVAULT_DATABASE_URL", "GRANTVAULT_MASTER_KEY", "GRANTVAULT_MASTER_KEY_FILE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("GRANTVAULT_DATA_DIR", str(tmp_path / "data"))
    runner = CliRunner()

    def status() -> dict[str, Any]:
        result = runner.invoke(cli, ["master-key", "status", "--json"])
        assert result.exit_code == 0, result.stderr
        data: dict[str, Any] = json.loads(result.stdout)
        return data

    assert runner.invoke(cli, ["apps", "create", "demo"]).exit_code == 0
    before = status()
    assert before["rotation"] is None and before["key_source"] == "file"
    assert before["last_rotated_at"] is None
    cut = runner.invoke(cli, ["master-key", "rotate", "--stop-after", "0", "--json"])
    assert json.loads(cut.stdout)["complete"] is False
    assert status()["reencryption_pending"] is True  # the audit key is still on term 1
    rotated = json.loads(runner.invoke(cli, ["master-key", "rotate", "--json"]).stdout)
    assert rotated["complete"] is True and rotated["resumed"] is True
    during = status()
    assert during["key_id"] == rotated["new_key_id"] != before["key_id"]
    assert during["rotation"]["from_key_id"] == before["key_id"]
    assert during["rotation"]["to_key_id"] == rotated["new_key_id"]
    assert during["reencryption_pending"] is False and during["restart_needed"] is False
    assert {k for t in during["terms"] for k in t["master_key_ids"]} == {
        before["key_id"],
        rotated["new_key_id"],
    }
    assert runner.invoke(cli, ["master-key", "retire-old"]).exit_code == 0
    after = status()
    assert after["rotation"] is None and after["last_rotated_at"] is not None
    assert {k for t in after["terms"] for k in t["master_key_ids"]} == {rotated["new_key_id"]}
    human = runner.invoke(cli, ["master-key", "status"]).stdout
    assert rotated["new_key_id"] in human and "none in progress" in human
