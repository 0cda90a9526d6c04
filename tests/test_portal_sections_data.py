"""The portal's data pages (issue 12, item 4) in process, on SQLite and PostgreSQL: managed
secrets, grants, policies and the audit trail. Each page renders for an owner and an
auditor; forms work through the admin operations; a form without its CSRF token changes
nothing; an auditor sees no mutating control and is refused with an ``admin.refused`` row;
no credential value ever appears in a page after it is set.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from grantvault_server.services import apps as app_service
from grantvault_server.services.vault import Vault
from grantvault_server.services.vault_time import FakeClock
from tests.conftest import OPERATOR
from tests.test_portal import (
    audit_rows,
    browser,
    cheap_argon2,  # noqa: F401  (an autouse fixture: imported, it applies here too)
    make_operator,
    mutating_forms,
    post_form,
    signed_in,
)

CREDENTIAL = "sk-portal-very-secret-value-1234567890"
POLICY_OK = """description: Only GETs.
rules:
  methods: [GET]
"""
POLICY_BAD = """description: Broken.
rules:
  methods: [GET]
  no_such_rule: true
"""


@pytest.fixture
async def app(vault: Vault) -> Any:
    from grantvault_server.app import create_app

    return create_app(vault=vault)


@pytest.fixture
async def pair(
    vault: Vault, app: Any
) -> AsyncIterator[tuple[httpx.AsyncClient, httpx.AsyncClient]]:
    """App ``demo``; an owner's browser and an auditor's, both signed in."""
    await app_service.register_app(vault, "demo", OPERATOR)
    await make_operator(vault, "root", "owner")
    await make_operator(vault, "eve", "auditor")
    async with browser(app) as owner, browser(app) as auditor:
        await signed_in(owner, "root")
        await signed_in(auditor, "eve")
        yield owner, auditor


def _secret_id(location: str) -> str:
    match = re.search(r"/secrets/([^/?]+)", location)
    assert match, location
    return match.group(1)


async def _secret_with_credential(owner: httpx.AsyncClient) -> str:
    r = await post_form(
        owner,
        "/portal/apps/demo/secrets",
        "/portal/apps/demo/secrets",
        {"kind": "template", "template": "openai"},
    )
    assert r.status_code == 303, r.text
    secret = _secret_id(r.headers["location"])
    page = f"/portal/apps/demo/secrets/{secret}"
    r = await post_form(owner, page, f"{page}/credential", {"field_token": CREDENTIAL})
    assert r.status_code == 303 and "credential_set" in r.headers["location"], r.text
    return secret


async def test_secrets_create_set_and_delete_without_echo(
    vault: Vault, pair: tuple[httpx.AsyncClient, httpx.AsyncClient]
) -> None:
    owner, auditor = pair
    empty = await owner.get("/portal/apps/demo/secrets")
    assert empty.status_code == 200 and "No managed secrets yet" in empty.text
    assert "grantvault secrets create" in empty.text
    secret = await _secret_with_credential(owner)
    page = await owner.get(f"/portal/apps/demo/secrets/{secret}?done=credential_set")
    assert page.status_code == 200 and "Credential stored" in page.text
    assert 'type="password"' in page.text and "Replace credential" in page.text
    listed = await owner.get("/portal/apps/demo/secrets")
    assert "openai" in listed.text and "Set" in listed.text
    # The auditor sees it all and no form that changes anything.
    seen = await auditor.get(f"/portal/apps/demo/secrets/{secret}")
    assert seen.status_code == 200 and mutating_forms(seen.text) == []
    assert mutating_forms((await auditor.get("/portal/apps/demo/secrets")).text) == []
    for client in (owner, auditor):
        for url in ("/portal/apps/demo/secrets", f"/portal/apps/demo/secrets/{secret}"):
            assert CREDENTIAL not in (await client.get(url)).text
    # Delete: a confirmation naming the secret, then the POST.
    confirm = await owner.get(f"/portal/apps/demo/secrets/{secret}/delete")
    assert "Delete secret <code>openai</code>?" in confirm.text
    r = await post_form(
        owner,
        f"/portal/apps/demo/secrets/{secret}/delete",
        f"/portal/apps/demo/secrets/{secret}/delete",
    )
    assert r.status_code == 303 and r.headers["location"].endswith("done=secret_deleted")
    assert "No managed secrets yet" in (await owner.get("/portal/apps/demo/secrets")).text


async def test_secret_forms_need_csrf_and_auditors_are_refused(
    vault: Vault, pair: tuple[httpx.AsyncClient, httpx.AsyncClient]
) -> None:
    owner, auditor = pair
    r = await owner.post("/portal/apps/demo/secrets", data={"template": "openai"})
    assert r.status_code == 403 and "security token" in r.text
    assert "No managed secrets yet" in (await owner.get("/portal/apps/demo/secrets")).text
    secret = await _secret_with_credential(owner)
    refused = await post_form(
        auditor,
        "/portal/apps/demo/secrets",
        f"/portal/apps/demo/secrets/{secret}/credential",
        {"field_token": "other"},
    )
    assert refused.status_code == 403
    r = await post_form(
        auditor, "/portal/apps/demo/secrets", "/portal/apps/demo/secrets", {"template": "openai"}
    )
    assert r.status_code == 403
    operations = [r["details"]["operation"] for r in await audit_rows(vault, "admin.refused")]
    assert operations == ["secrets.set-credential", "secrets.create"]
    for row in await audit_rows(vault):
        assert CREDENTIAL not in str(row) and "other" not in str(row.get("details"))


async def _grant(owner: httpx.AsyncClient, secret: str) -> str:
    r = await post_form(
        owner,
        "/portal/apps/demo/grants",
        "/portal/apps/demo/grants",
        {"managed_secret_id": secret, "principal_type": "system", "label": "ci"},
    )
    assert r.status_code == 303, r.text
    match = re.search(r"/grants/([^/?]+)\?done=grant_created", r.headers["location"])
    assert match, r.headers["location"]
    return match.group(1)


async def test_grants_filter_detail_and_revoke(
    vault: Vault, pair: tuple[httpx.AsyncClient, httpx.AsyncClient]
) -> None:
    owner, auditor = pair
    empty = await owner.get("/portal/apps/demo/grants")
    assert "No grants yet" in empty.text and "add a managed secret" in empty.text
    secret = await _secret_with_credential(owner)
    grant = await _grant(owner, secret)
    listed = await owner.get("/portal/apps/demo/grants?status=active&principal=system")
    assert grant[:14] in listed.text and "openai" in listed.text
    none = await owner.get("/portal/apps/demo/grants?status=revoked")
    assert "No grant matches these filters" in none.text
    detail = await owner.get(f"/portal/apps/demo/grants/{grant}")
    assert detail.status_code == 200 and "Last used" in detail.text and "never" in detail.text
    assert f"/portal/apps/demo/audit?grant={grant}" in detail.text
    assert "No policy applies" in detail.text
    seen = await auditor.get(f"/portal/apps/demo/grants/{grant}")
    assert seen.status_code == 200 and mutating_forms(seen.text) == []
    assert mutating_forms((await auditor.get("/portal/apps/demo/grants")).text) == []
    refused = await post_form(
        auditor, f"/portal/apps/demo/grants/{grant}", f"/portal/apps/demo/grants/{grant}/revoke"
    )
    assert refused.status_code == 403
    nocsrf = await owner.post(f"/portal/apps/demo/grants/{grant}/revoke", data={})
    assert nocsrf.status_code == 403
    confirm = await owner.get(f"/portal/apps/demo/grants/{grant}/revoke")
    assert "Revoke the grant of <code>openai</code> to <code>system</code>?" in confirm.text
    r = await post_form(
        owner,
        f"/portal/apps/demo/grants/{grant}/revoke",
        f"/portal/apps/demo/grants/{grant}/revoke",
        {"reason": "rotated"},
    )
    assert r.status_code == 303 and r.headers["location"].endswith("done=grant_revoked")
    assert "Revoked" in (await owner.get(r.headers["location"])).text
    operations = [r["details"]["operation"] for r in await audit_rows(vault, "admin.refused")]
    assert operations == ["grants.revoke"]
    for url in ("/portal/apps/demo/grants", f"/portal/apps/demo/grants/{grant}"):
        assert CREDENTIAL not in (await owner.get(url)).text


async def test_policies_edit_with_errors_at_their_line_test_and_delete(
    vault: Vault, pair: tuple[httpx.AsyncClient, httpx.AsyncClient]
) -> None:
    owner, auditor = pair
    empty = await owner.get("/portal/apps/demo/policies")
    assert "No policies yet" in empty.text and "grantvault policies put" in empty.text
    bad = await post_form(
        owner,
        "/portal/apps/demo/policies",
        "/portal/apps/demo/policies",
        {"name": "gets", "source": POLICY_BAD},
    )
    assert bad.status_code == 422 and "line 4" in bad.text and "no_such_rule" in bad.text
    assert 'aria-invalid="true"' in bad.text and "Broken." in bad.text  # the text is kept
    syntax = await post_form(
        owner,
        "/portal/apps/demo/policies",
        "/portal/apps/demo/policies",
        {"name": "gets", "source": "rules: [\n  methods: ["},
    )
    assert syntax.status_code == 422 and "line " in syntax.text
    r = await post_form(
        owner,
        "/portal/apps/demo/policies",
        "/portal/apps/demo/policies",
        {"name": "gets", "source": POLICY_OK},
    )
    assert r.status_code == 303 and r.headers["location"].endswith("/gets?done=policy_saved")
    page = await owner.get("/portal/apps/demo/policies/gets")
    assert "Only GETs." in page.text and "version 1" in page.text
    assert "Create a grant" in page.text  # no grant to test with yet
    # A second version through the editor; an invalid edit keeps what was typed.
    edit = await post_form(
        owner,
        "/portal/apps/demo/policies/gets",
        "/portal/apps/demo/policies/gets",
        {"source": POLICY_BAD},
    )
    assert edit.status_code == 422 and "line 4" in edit.text
    saved = await post_form(
        owner,
        "/portal/apps/demo/policies/gets",
        "/portal/apps/demo/policies/gets",
        {"source": POLICY_OK.replace("[GET]", "[GET, HEAD]")},
    )
    assert saved.status_code == 303
    page = await owner.get("/portal/apps/demo/policies/gets?version=1")
    assert "version 1 of 2" in page.text and "?version=" not in page.text.split("Versions")[0]
    # Test a request (the auditor may: a read), with the editor's text as the candidate.
    grant = await _grant(owner, await _secret_with_credential(owner))
    for client in (owner, auditor):
        judged = await post_form(
            client,
            "/portal/apps/demo/policies/gets",
            "/portal/apps/demo/policies/gets/test",
            {
                "source": POLICY_OK,
                "grant_id": grant,
                "method": "POST",
                "url": "https://api.openai.com/v1/chat/completions",
            },
        )
        assert judged.status_code == 200 and "Denied" in judged.text, judged.text
        allowed = await post_form(
            client,
            "/portal/apps/demo/policies/gets",
            "/portal/apps/demo/policies/gets/test",
            {
                "source": POLICY_OK,
                "grant_id": grant,
                "method": "GET",
                "url": "https://api.openai.com/v1/models",
            },
        )
        assert allowed.status_code == 200 and "Allowed" in allowed.text
    # The auditor: a read-only editor, no save or delete; refused anyway.
    seen = await auditor.get("/portal/apps/demo/policies/gets")
    assert "readonly" in seen.text and "Save as version" not in seen.text
    assert [a for a in mutating_forms(seen.text) if not a.endswith("/test")] == [
        "/portal/apps/demo/policies/gets"
    ]  # the one form: its only button is "Test this request" (formaction)
    refused = await post_form(
        auditor,
        "/portal/apps/demo/policies/gets",
        "/portal/apps/demo/policies/gets",
        {"source": POLICY_OK},
    )
    assert refused.status_code == 403
    nocsrf = await owner.post("/portal/apps/demo/policies/gets/delete", data={})
    assert nocsrf.status_code == 403
    confirm = await owner.get("/portal/apps/demo/policies/gets/delete")
    assert "Delete policy <code>gets</code>?" in confirm.text
    r = await post_form(
        owner,
        "/portal/apps/demo/policies/gets/delete",
        "/portal/apps/demo/policies/gets/delete",
    )
    assert r.status_code == 303 and r.headers["location"].endswith("done=policy_deleted")
    assert "No policies yet" in (await owner.get("/portal/apps/demo/policies")).text
    operations = [r["details"]["operation"] for r in await audit_rows(vault, "admin.refused")]
    assert operations == ["policies.put"]


async def test_audit_filters_detail_csv_and_verify(
    vault: Vault, pair: tuple[httpx.AsyncClient, httpx.AsyncClient]
) -> None:
    owner, auditor = pair
    secret = await _secret_with_credential(owner)
    grant = await _grant(owner, secret)
    refused = await post_form(
        auditor, "/portal/apps/demo/grants", f"/portal/apps/demo/grants/{grant}/revoke"
    )
    assert refused.status_code == 403
    for client in (owner, auditor):
        page = await client.get("/portal/audit")
        assert (
            page.status_code == 200 and '<code class="ev-name">secret.created</code>' in page.text
        )
        assert 'value="system"' in page.text  # unscoped: the system chain is offered
        assert CREDENTIAL not in page.text
        denied = await client.get("/portal/audit?chain=system&outcome=denied")
        assert (
            '<code class="ev-name">admin.refused</code>' in denied.text
            and '<code class="ev-name">secret.created</code>' not in denied.text
        )
        by_actor = await client.get("/portal/audit?actor=eve")
        assert (
            '<code class="ev-name">admin.refused</code>' in by_actor.text
            and '<code class="ev-name">secret.created</code>' not in by_actor.text
        )
        app_page = await client.get(f"/portal/apps/demo/audit?grant={grant}")
        assert (
            app_page.status_code == 200
            and '<code class="ev-name">grant.created</code>' in app_page.text
        )
        assert '<code class="ev-name">secret.created</code>' not in app_page.text
        nothing = await client.get("/portal/apps/demo/audit?from=2000-01-01&to=2000-01-02")
        assert "No event matches these filters" in nothing.text
        exported = await client.get("/portal/apps/demo/audit/export.csv?event=grant.created")
        assert exported.status_code == 200
        assert exported.headers["content-type"].startswith("text/csv")
        assert exported.headers["content-disposition"].startswith("attachment;")
        lines = exported.text.strip().splitlines()
        assert lines[0].startswith("occurred_at,app,seq,event") and len(lines) == 2
        assert "grant.created" in lines[1] and CREDENTIAL not in exported.text
        verified = await post_form(client, "/portal/audit", "/portal/audit/verify")
        assert verified.status_code == 200 and "The chain is intact" in verified.text
        one = await post_form(client, "/portal/apps/demo/audit", "/portal/apps/demo/audit/verify")
        assert "The chain is intact" in one.text and "demo" in one.text
    assert (await owner.post("/portal/audit/verify", data={})).status_code == 403
    # A row's own page.
    rows = [r for r in await audit_rows(vault, "grant.created")]
    detail = await owner.get(f"/portal/audit/{rows[0]['chain']}/{rows[0]['seq']}")
    assert detail.status_code == 200 and "grant.created" in detail.text and grant in detail.text
    missing = await owner.get(f"/portal/audit/{rows[0]['chain']}/9999")
    assert missing.status_code == 404
    # Reading and verifying is the auditor's job: no refusal but the revoke above.
    operations = [r["details"]["operation"] for r in await audit_rows(vault, "admin.refused")]
    assert operations == ["grants.revoke"]


async def test_an_app_scoped_admin_reads_only_its_apps_audit(vault: Vault, app: Any) -> None:
    await app_service.register_app(vault, "demo", OPERATOR)
    await app_service.register_app(vault, "other", OPERATOR)
    await make_operator(vault, "ann", "admin", apps=["demo"])
    async with browser(app) as ann:
        await signed_in(ann, "ann")
        page = await ann.get("/portal/audit")
        assert page.status_code == 200 and 'value="system"' not in page.text
        assert (await ann.get("/portal/audit?chain=system")).status_code == 403
        for url in ("/portal/apps/other/secrets", "/portal/apps/other/audit"):
            assert (await ann.get(url)).status_code == 404


async def test_replacing_a_credential_or_deleting_a_secret_needs_sudo_mode(
    vault: Vault, pair: tuple[httpx.AsyncClient, httpx.AsyncClient], clock: FakeClock
) -> None:
    owner, _ = pair
    secret = await _secret_with_credential(owner)  # just signed in: the window is open
    page = f"/portal/apps/demo/secrets/{secret}"
    clock.advance(11 * 60)
    for action in (f"{page}/credential", f"{page}/delete"):
        asked = await post_form(owner, page, action, {"field_token": "tok-later-1234"})
        assert asked.status_code == 303, asked.text
        assert asked.headers["location"].startswith("/portal/sudo?next=%2Fportal%2Fapps%2Fdemo")
    still = await owner.get(page)
    assert still.status_code == 200 and "Replace credential" in still.text
    assert [r["event"] for r in await audit_rows(vault, "secret.credential_set")] == [
        "secret.credential_set"
    ]
