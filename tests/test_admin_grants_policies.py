"""The ``grants.*`` and ``policies.*`` admin operations (issue 12), on SQLite and PostgreSQL.

Every route: success for an owner and an admin, 403 with an ``admin.refused`` audit row for
an auditor's writes (an auditor reads and runs ``policies test``), another app's grants and
policies answering an app-scoped admin exactly like unknown ones, and a refused document
listing every problem. The CLI's remote mode is driven in-process through the same ASGI app
(its HTTP client is pointed at it), so local and remote output can be compared on one vault.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from click.testing import Result
from typer.testing import CliRunner

from grantvault_server.app import create_app
from grantvault_server.cli.main import cli
from grantvault_server.config import Settings
from grantvault_server.services import (
    grants as grant_service,
    policies as policy_service,
    secrets as secret_service,
)
from grantvault_server.services.apps import App
from grantvault_server.services.vault import Vault
from grantvault_server.storage.tables import audit_events
from tests.conftest import OPERATOR, OPERATOR_PASSWORD, bearer, make_app, token_for

PASSWORD = OPERATOR_PASSWORD
URL = "https://api.openai.com/v1/models"
OFFICE_HOURS = """\
description: OpenAI calls during Berlin office hours.
applies_to:
  secrets: [openai]
rules:
  time_windows:
    timezone: Europe/Berlin
    windows:
      - days: [mon, tue, wed, thu, fri]
        start: "09:00"
        end: "17:00"
"""
INVALID = (
    "descripton: typo\n"
    "rules:\n"
    "  ip_allow: [203.0.113.0/24, 10.0.0.1/8]\n"
    "  quota: {limit: 0, window: week, per: grant}\n"
)
INVALID_LOCS = {"descripton", "rules.ip_allow[1]", "rules.quota.limit", "rules.quota.window"}
MONDAY_EVENING = "2026-12-07T22:00:00+01:00"
MONDAY_MORNING = "2026-12-07T10:00:00+01:00"


async def _app_with_grant(vault: Vault, name: str) -> tuple[App, str, str]:
    """An app with an ``openai`` secret (credential set), a system grant on it and the
    office-hours policy: (app, managed_secret_id, grant_id)."""
    app, _ = await make_app(vault, name)
    secret = await secret_service.create_secret(vault, app, OPERATOR, template="openai")
    await secret_service.set_credential(
        vault, app, secret, {"token": "sk-test-abc123456"}, OPERATOR
    )
    made = await grant_service.create_grant(vault, app, secret, OPERATOR, principal_type="system")
    await policy_service.put_policy(
        vault,
        app,
        "office-hours",
        policy_service.parse_source(OFFICE_HOURS),
        actor=OPERATOR,
        source=OFFICE_HOURS,
    )
    return app, secret.id, str(made["grant_id"])


async def _refusals(vault: Vault) -> list[str]:
    async with vault.db.read() as conn:
        rows = await conn.execute(
            sa.select(audit_events.c.details, audit_events.c.outcome)
            .where(audit_events.c.event == "admin.refused")
            .order_by(audit_events.c.seq)
        )
        found = []
        for r in rows:
            details = r.details if isinstance(r.details, dict) else json.loads(r.details)
            assert r.outcome == "denied"
            found.append(str(details["operation"]))
        return found


# -- owners and admins ----------------------------------------------------------------------------


@pytest.mark.parametrize("role", ["owner", "admin"])
async def test_owners_and_admins_manage_grants(
    vault: Vault, admin: httpx.AsyncClient, role: str
) -> None:
    app, secret_id, first = await _app_with_grant(vault, "shop")
    auth = bearer(await token_for(vault, "pat", role))
    created = await admin.post(
        f"/admin/v1/secrets/{secret_id}/grants",
        json={"principal_type": "user", "principal_id": "alice", "label": "a", "ttl": "30d"},
        headers=auth,
    )
    assert created.status_code == 200, created.text
    grant = created.json()
    assert set(grant) == {
        "grant_id",
        "principal_type",
        "label",
        "created_at",
        "credential_id",
        "expires_at",
        "managed_secret_id",
    }
    assert (grant["principal_type"], grant["label"]) == ("user", "a") and grant["expires_at"]

    listed = await admin.get("/admin/v1/apps/shop/grants", headers=auth)
    assert listed.status_code == 200, listed.text
    body = listed.json()
    assert body["total"] == 2 and [g["grant_id"] for g in body["grants"]] == [
        first,
        grant["grant_id"],
    ]
    assert all(
        g["policies"] == [{"name": "office-hours", "version": 1, "conditional": False}]
        for g in body["grants"]
    )
    page = await admin.get(
        "/admin/v1/apps/shop/grants",
        params={"secret": "openai", "status": "active", "limit": 1, "offset": 1},
        headers=auth,
    )
    assert page.status_code == 200, page.text
    assert [g["grant_id"] for g in page.json()["grants"]] == [grant["grant_id"]]
    assert (page.json()["limit"], page.json()["has_more"]) == (1, False)

    revoked = await admin.post(
        f"/admin/v1/grants/{grant['grant_id']}/revoke", json={"reason": "done"}, headers=auth
    )
    assert revoked.status_code == 200, revoked.text
    assert revoked.json()["message"] == "Grant revoked." and revoked.json()["revoked_at"]
    again = await admin.post(f"/admin/v1/grants/{grant['grant_id']}/revoke", json={}, headers=auth)
    assert again.json()["message"] == "Grant was already revoked."
    gone = await admin.get("/admin/v1/apps/shop/grants?status=revoked", headers=auth)
    assert [g["grant_id"] for g in gone.json()["grants"]] == [grant["grant_id"]]

    # The audit rows name the operator account.
    async with vault.db.read() as conn:
        actors = [
            r.actor if isinstance(r.actor, dict) else json.loads(r.actor)
            for r in await conn.execute(
                sa.select(audit_events.c.actor).where(
                    audit_events.c.chain == app.id,
                    audit_events.c.event.in_(["grant.created", "grant.revoked"]),
                    audit_events.c.grant_id == grant["grant_id"],
                )
            )
        ]
    assert len(actors) == 2
    assert all(a["type"] == "operator_account" and a["name"] == "pat" for a in actors)


@pytest.mark.parametrize("role", ["owner", "admin"])
async def test_owners_and_admins_manage_policies(
    vault: Vault, admin: httpx.AsyncClient, role: str
) -> None:
    _, _, grant_id = await _app_with_grant(vault, "shop")
    auth = bearer(await token_for(vault, "pat", role))
    later = OFFICE_HOURS.replace('"17:00"', '"18:00"')
    put = await admin.put(
        "/admin/v1/apps/shop/policies/office-hours", json={"source": later}, headers=auth
    )
    assert put.status_code == 200, put.text
    assert set(put.json()) == {"policy_id", "name", "version"} and put.json()["version"] == 2
    as_json = await admin.put(
        "/admin/v1/apps/shop/policies/read-only",
        json={"document": {"rules": {"methods": ["GET"]}}},
        headers=auth,
    )
    assert as_json.status_code == 200 and as_json.json()["version"] == 1

    listed = await admin.get("/admin/v1/apps/shop/policies", headers=auth)
    assert [(p["name"], p["version"], p["rules"]) for p in listed.json()["policies"]] == [
        ("office-hours", 2, ["time_windows"]),
        ("read-only", 1, ["methods"]),
    ]
    shown = await admin.get("/admin/v1/apps/shop/policies/office-hours", headers=auth)
    assert shown.json()["source"] == later and shown.json()["version"] == 2
    older = await admin.get("/admin/v1/apps/shop/policies/office-hours?version=1", headers=auth)
    assert older.json()["source"] == OFFICE_HOURS
    built = await admin.get("/admin/v1/apps/shop/policies/read-only", headers=auth)
    assert built.json()["source"] is None
    assert built.json()["document"] == {"rules": {"methods": ["GET"]}}

    test = "/admin/v1/apps/shop/policy-test"
    call = {"grant_id": grant_id, "url": URL, "at": MONDAY_EVENING}
    denied = await admin.post(test, json=call, headers=auth)
    assert denied.status_code == 200, denied.text
    assert {k: denied.json()[k] for k in ("decision", "policy", "version", "rule", "code")} == {
        "decision": "deny",
        "policy": "office-hours",
        "version": 2,
        "rule": "time_windows",
        "code": "policy_violation",
    }
    allowed = await admin.post(test, json={**call, "at": MONDAY_MORNING}, headers=auth)
    assert allowed.json()["decision"] == "allow"
    assert allowed.json()["applied"] == [
        {"name": "office-hours", "version": 2},
        {"name": "read-only", "version": 1},
    ]
    # A candidate document in place of a stored one, judged and not stored.
    candidate = await admin.post(
        test,
        json={**call, "name": "office-hours", "source": OFFICE_HOURS.replace("17:00", "23:00")},
        headers=auth,
    )
    assert candidate.json()["decision"] == "allow" and candidate.json()["candidate"] == (
        "office-hours"
    )
    assert {"name": "office-hours", "version": None} in candidate.json()["applied"]
    posted = await admin.post(
        test, json={**call, "method": "POST", "at": MONDAY_MORNING}, headers=auth
    )
    assert (posted.json()["policy"], posted.json()["rule"]) == ("read-only", "methods")

    deleted = await admin.delete("/admin/v1/apps/shop/policies/office-hours", headers=auth)
    assert deleted.json() == {"name": "office-hours", "deleted": True, "version": 2}
    missing = await admin.get("/admin/v1/apps/shop/policies/office-hours", headers=auth)
    assert missing.status_code == 404 and missing.json()["error"] == "policy_not_found"
    kept = await admin.get("/admin/v1/apps/shop/policies/office-hours?version=2", headers=auth)
    assert kept.status_code == 200 and kept.json()["source"] == later


async def test_a_refused_document_lists_every_problem(
    vault: Vault, admin: httpx.AsyncClient
) -> None:
    _, _, grant_id = await _app_with_grant(vault, "shop")
    auth = bearer(await token_for(vault, "root", "owner"))
    put = "/admin/v1/apps/shop/policies/strict"
    bad = await admin.put(put, json={"source": INVALID}, headers=auth)
    assert bad.status_code == 422 and bad.json()["error"] == "invalid_request"
    assert {e["loc"] for e in bad.json()["errors"]} == INVALID_LOCS
    assert "(and 3 more)" in bad.json()["message"]
    syntax = await admin.put(put, json={"source": "rules: [\n  a: b\n"}, headers=auth)
    assert syntax.status_code == 422 and syntax.json()["errors"][0]["loc"].startswith("line 3")
    named = await admin.put(
        "/admin/v1/apps/shop/policies/Not%20A%20Name", json={"source": OFFICE_HOURS}, headers=auth
    )
    assert [e["loc"] for e in named.json()["errors"]] == ["name"]
    for both_or_neither in ({"source": OFFICE_HOURS, "document": {"rules": {}}}, {}):
        r = await admin.put(put, json=both_or_neither, headers=auth)
        assert r.status_code == 422 and "`source`" in r.json()["message"]
    unknown = await admin.put(put, json={"source": OFFICE_HOURS, "colour": "red"}, headers=auth)
    assert unknown.status_code == 422 and unknown.json()["error"] == "invalid_request"

    test = "/admin/v1/apps/shop/policy-test"
    call = {"grant_id": grant_id, "url": URL}
    candidate = await admin.post(
        test, json={**call, "name": "strict", "source": INVALID}, headers=auth
    )
    assert candidate.status_code == 422
    assert {e["loc"] for e in candidate.json()["errors"]} == INVALID_LOCS
    for extra, why in [
        ({"at": "2026-12-07T22:00:00"}, "no UTC offset"),
        ({"at": "tomorrow"}, "ISO 8601"),
        ({"ip": "10.0.0.300"}, "not an IPv4 or IPv6 address"),
        ({"name": "strict"}, "both its name and its document"),
        ({"source": OFFICE_HOURS}, "both its name and its document"),
    ]:
        r = await admin.post(test, json={**call, **extra}, headers=auth)
        assert r.status_code == 422 and why in r.json()["message"], (extra, r.text)
    unknown_grant = await admin.post(test, json={**call, "grant_id": "nope"}, headers=auth)
    assert unknown_grant.status_code == 404 and unknown_grant.json()["error"] == "grant_not_found"
    stored = await admin.get("/admin/v1/apps/shop/policies", headers=auth)
    assert [p["name"] for p in stored.json()["policies"]] == ["office-hours"]


# -- auditors -------------------------------------------------------------------------------------


async def test_an_auditor_reads_and_tests_but_changes_nothing(
    vault: Vault, admin: httpx.AsyncClient
) -> None:
    app, secret_id, grant_id = await _app_with_grant(vault, "shop")
    auth = bearer(await token_for(vault, "audra", "auditor"))
    for method, path, body in [
        ("GET", "/admin/v1/apps/shop/grants", None),
        ("GET", "/admin/v1/apps/shop/policies", None),
        ("GET", "/admin/v1/apps/shop/policies/office-hours", None),
        (
            "POST",
            "/admin/v1/apps/shop/policy-test",
            {"grant_id": grant_id, "url": URL, "at": MONDAY_MORNING},
        ),
    ]:
        r = await admin.request(method, path, json=body, headers=auth)
        assert r.status_code == 200, (path, r.text)
    writes = [
        ("POST", f"/admin/v1/secrets/{secret_id}/grants", {"principal_type": "system"}),
        ("POST", f"/admin/v1/grants/{grant_id}/revoke", {"reason": "x"}),
        # Refused for the role before the document is looked at (even an invalid one).
        ("PUT", "/admin/v1/apps/shop/policies/office-hours", {"source": INVALID}),
        ("DELETE", "/admin/v1/apps/shop/policies/office-hours", None),
    ]
    for method, path, body in writes:
        r = await admin.request(method, path, json=body, headers=auth)
        assert r.status_code == 403 and r.json()["error"] == "forbidden", (path, r.text)
    assert await _refusals(vault) == [
        "grants.create",
        "grants.revoke",
        "policies.put",
        "policies.delete",
    ]
    listed = await grant_service.list_grants(vault, app)
    assert [(g["grant_id"], g["status"]) for g in listed["grants"]] == [(grant_id, "active")]
    assert [(p.name, p.version) for p in await policy_service.list_policies(vault, app)] == [
        ("office-hours", 1)
    ]


# -- app scopes -----------------------------------------------------------------------------------


async def test_an_app_scoped_admin_sees_other_apps_objects_as_unknown(
    vault: Vault, admin: httpx.AsyncClient
) -> None:
    _, my_secret, my_grant = await _app_with_grant(vault, "mine")
    theirs, their_secret, their_grant = await _app_with_grant(vault, "theirs")
    auth = bearer(await token_for(vault, "ann", "admin", apps=["mine"]))

    async def same_as_unknown(
        method: str, hidden: str, unknown: str, body: Any, what: tuple[str, str]
    ) -> None:
        a = await admin.request(method, hidden, json=body, headers=auth)
        b = await admin.request(method, unknown, json=body, headers=auth)
        assert a.status_code == b.status_code == 404, (hidden, a.text, b.text)
        assert a.json()["error"] == b.json()["error"]
        assert a.json()["message"].replace(what[0], "X") == b.json()["message"].replace(
            what[1], "X"
        )

    apps_ = ("theirs", "nope")
    test_body = {"grant_id": their_grant, "url": URL}
    for method, template, body in [
        ("GET", "/admin/v1/apps/{}/grants", None),
        ("GET", "/admin/v1/apps/{}/policies", None),
        ("GET", "/admin/v1/apps/{}/policies/office-hours", None),
        ("PUT", "/admin/v1/apps/{}/policies/office-hours", {"source": OFFICE_HOURS}),
        ("DELETE", "/admin/v1/apps/{}/policies/office-hours", None),
        ("POST", "/admin/v1/apps/{}/policy-test", test_body),
    ]:
        await same_as_unknown(
            method, template.format(apps_[0]), template.format(apps_[1]), body, apps_
        )
    unknown_id = "00000000-0000-4000-8000-000000000000"
    await same_as_unknown(
        "POST",
        f"/admin/v1/grants/{their_grant}/revoke",
        f"/admin/v1/grants/{unknown_id}/revoke",
        {},
        (their_grant, unknown_id),
    )
    await same_as_unknown(
        "POST",
        f"/admin/v1/secrets/{their_secret}/grants",
        f"/admin/v1/secrets/{unknown_id}/grants",
        {"principal_type": "system"},
        (their_secret, unknown_id),
    )
    # A grant of this app tested in another app's name is not found there either.
    cross = await admin.post(
        "/admin/v1/apps/mine/policy-test", json={"grant_id": their_grant, "url": URL}, headers=auth
    )
    assert cross.status_code == 404 and cross.json()["error"] == "grant_not_found"
    # Their objects are untouched; their own app still works for the admin.
    listed = await grant_service.list_grants(vault, theirs)
    assert [(g["grant_id"], g["status"]) for g in listed["grants"]] == [(their_grant, "active")]
    assert [p.version for p in await policy_service.list_policies(vault, theirs)] == [1]
    assert await _refusals(vault) == []
    mine = await admin.post(
        f"/admin/v1/secrets/{my_secret}/grants", json={"principal_type": "system"}, headers=auth
    )
    assert mine.status_code == 200, mine.text
    revoked = await admin.post(f"/admin/v1/grants/{my_grant}/revoke", json={}, headers=auth)
    assert revoked.status_code == 200, revoked.text


# -- the CLI, locally and remotely ----------------------------------------------------------------


class _OnTheTestLoop(httpx.BaseTransport):
    """The remote CLI's HTTP client, served by the in-process app on the test's event loop
    (the CLI runs in a worker thread, so the loop is free to answer)."""

    def __init__(self, app: Any, loop: asyncio.AbstractEventLoop) -> None:
        self.inner = httpx.ASGITransport(app=app)
        self.loop = loop

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        body = request.read()

        async def send() -> tuple[int, list[tuple[str, str]], bytes]:
            forwarded = httpx.Request(
                request.method, request.url, headers=request.headers, content=body
            )
            response = await self.inner.handle_async_request(forwarded)
            content = await response.aread()
            headers = [
                (k, v)
                for k, v in response.headers.multi_items()
                if k.lower() not in {"content-encoding", "content-length", "transfer-encoding"}
            ]
            return response.status_code, headers, content

        status, headers, content = asyncio.run_coroutine_threadsafe(send(), self.loop).result(60)
        return httpx.Response(status, headers=headers, content=content, request=request)


@pytest.fixture
async def remote(
    vault: Vault, settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> list[str]:
    """The options that make a ``grantvault`` command remote (an owner's token), with the
    local database configured too, so each command can run both ways on one vault."""
    assert settings.master_key is not None
    monkeypatch.setenv("GRANTVAULT_DATABASE_URL", settings.effective_database_url)
    monkeypatch.setenv("GRANTVAULT_MASTER_KEY", settings.master_key.get_secret_value())
    monkeypatch.setenv("GRANTVAULT_DATA_DIR", str(settings.data_dir))
    monkeypatch.delenv("GRANTVAULT_SERVER", raising=False)
    monkeypatch.delenv("GRANTVAULT_TOKEN", raising=False)
    monkeypatch.setenv("COLUMNS", "400")
    monkeypatch.chdir(tmp_path)
    app = create_app(vault=vault)
    loop = asyncio.get_running_loop()
    real = httpx.Client

    def client(**kwargs: Any) -> httpx.Client:
        kwargs.pop("verify", None)
        return real(transport=_OnTheTestLoop(app, loop), **kwargs)

    monkeypatch.setattr("grantvault_server.cli._invoke.httpx.Client", client)
    token = await token_for(vault, "root", "owner")
    return ["--server", "http://testserver", "--token", token]


async def gv(*args: str, stdin: str | None = None) -> Result:
    return await asyncio.to_thread(CliRunner().invoke, cli, list(args), stdin)


async def both(remote: list[str], *args: str, stdin: str | None = None) -> tuple[Result, Result]:
    return await gv(*args, stdin=stdin), await gv(*remote, *args, stdin=stdin)


async def test_the_cli_prints_the_same_locally_and_remotely(
    vault: Vault, remote: list[str]
) -> None:
    _, secret_id, grant_id = await _app_with_grant(vault, "shop")
    (Path.cwd() / "bad.yaml").write_text(INVALID)
    (Path.cwd() / "later.yaml").write_text(OFFICE_HOURS.replace('"17:00"', '"18:00"'))
    reads = [
        ("grants", "list", "--app", "shop"),
        ("grants", "list", "--app", "shop", "--json"),
        ("policies", "list", "--app", "shop"),
        ("policies", "list", "--app", "shop", "--json"),
        ("policies", "show", "--app", "shop", "office-hours"),
        ("policies", "show", "--app", "shop", "office-hours", "--json"),
        ("policies", "show", "--app", "shop", "nope"),
    ]
    test = ("policies", "test", "--app", "shop", "--grant", grant_id, "--url", URL)
    for at in (MONDAY_EVENING, MONDAY_MORNING):
        reads += [(*test, "--at", at), (*test, "--at", at, "--json")]
    candidate = ("--at", "2026-12-07T17:30:00+01:00", "--file", "later.yaml")
    reads += [
        (*test, *candidate, "--name", "office-hours"),
        (*test, *candidate, "--name", "office-hours", "--json"),
        # Refused documents: every problem, printed in full, in both modes.
        ("policies", "put", "--app", "shop", "strict", "--file", "bad.yaml"),
        ("policies", "put", "--app", "shop", "strict", "--file", "bad.yaml", "--json"),
        (*test, "--file", "bad.yaml", "--name", "strict"),
        (*test, "--file", "bad.yaml", "--name", "strict", "--json"),
        # Usage errors stay exit 2, before anything is sent.
        (*test, "--at", "2026-12-07T22:00:00"),
        (*test, "--ip", "10.0.0.300"),
        ("grants", "create", "--secret", secret_id, "--ttl", "soon"),
    ]
    for args in reads:
        local, far = await both(remote, *args)
        assert (local.exit_code, local.stdout, local.stderr) == (
            far.exit_code,
            far.stdout,
            far.stderr,
        ), args
        assert local.exception is None or isinstance(local.exception, SystemExit), args
    refused = await gv(*remote, "policies", "put", "--app", "shop", "x", "--file", "bad.yaml")
    assert refused.exit_code == 1 and "invalid (4 problems)" in refused.stderr
    assert {line.split(": ", 1)[0].strip() for line in refused.stderr.splitlines()[1:]} == (
        INVALID_LOCS
    )

    # Writes: the same answer's shape either way, and each mode sees the other's change.
    made = [
        json.loads(r.stdout)
        for r in await both(
            remote, "grants", "create", "--secret", secret_id, "--principal", "system", "--json"
        )
    ]
    assert [set(m) for m in made] == [set(made[0])] * 2
    revoked = await gv(*remote, "grants", "revoke", made[0]["grant_id"], "--json")
    assert json.loads(revoked.stdout)["message"] == "Grant revoked."
    async with vault.db.read() as conn:
        actor = (
            await conn.execute(
                sa.select(audit_events.c.actor).where(
                    audit_events.c.event == "grant.revoked",
                    audit_events.c.grant_id == made[0]["grant_id"],
                )
            )
        ).scalar_one()
    actor = actor if isinstance(actor, dict) else json.loads(actor)
    assert (actor["type"], actor["name"], actor["via"]) == ("operator_account", "root", "token")
    again = await gv("grants", "revoke", made[0]["grant_id"])
    assert again.exit_code == 0 and again.stdout.startswith("Grant was already revoked.")
    put = await gv(*remote, "policies", "put", "--app", "shop", "office-hours", "-f", "later.yaml")
    assert put.exit_code == 0 and put.stdout.startswith("Stored policy office-hours v2;")
    deleted = await gv(*remote, "policies", "delete", "--app", "shop", "office-hours", "--json")
    assert json.loads(deleted.stdout) == {"name": "office-hours", "deleted": True, "version": 2}
    local_list = await gv("policies", "list", "--app", "shop", "--json")
    assert json.loads(local_list.stdout) == {"policies": []}
