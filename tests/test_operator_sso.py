"""Single sign-on for operators (issue 12) through the real OIDC peer, in process, on SQLite
and PostgreSQL.

The test plays the browser: it opens ``/portal/sso/start`` on the vault, follows the peer's
redirects (the peer logs in ``login_hint``, whose ID token carries the groups given in
``PEER_USER_GROUPS_JSON``) and carries the answer back to ``/portal/sso/callback`` with the
vault's cookie jar. Tokens that the peer would never issue (another audience, another
issuer) are forged with the peer's own signing key, so only what the test changed is wrong.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx
import pytest
import sqlalchemy as sa
from pydantic import SecretStr

from grantvault_server.app import create_app
from grantvault_server.config import Settings
from grantvault_server.services import operator_sso
from grantvault_server.services.vault import Vault
from grantvault_server.storage.tables import audit_events, operators

from .peer import BASIC_CLIENT, DEFAULT_REDIRECT_URIS, VAULT_BASE_URL, follow_to, query_of
from .test_identity_support import IdpPeer, start_idp_peer

CALLBACK = VAULT_BASE_URL + operator_sso.CALLBACK_PATH
GROUPS = {
    "alice": ["vault-owners"],
    "bob": ["vault-auditors", "unrelated"],
    "dave": ["vault-auditors", "vault-owners"],
    "carol": ["unmapped"],
}
ROLE_MAP = {"vault-owners": "owner", "vault-auditors": "auditor", "vault-admins": "admin"}


@pytest.fixture(scope="module")
def sso_peer(tmp_path_factory: pytest.TempPathFactory) -> Iterator[IdpPeer]:
    peer = start_idp_peer(
        tmp_path_factory.mktemp("sso"),
        PEER_REDIRECT_URIS=" ".join((*DEFAULT_REDIRECT_URIS, CALLBACK)),
        PEER_USER_GROUPS_JSON=json.dumps(GROUPS),
    )
    try:
        yield peer
    finally:
        peer.stop()


@pytest.fixture
def settings(settings: Settings, sso_peer: IdpPeer) -> Settings:
    settings.public_base_url = VAULT_BASE_URL
    settings.operator_sso_issuer = sso_peer.issuer
    settings.operator_sso_client_id = BASIC_CLIENT[0]
    settings.operator_sso_client_secret = SecretStr(BASIC_CLIENT[1])
    settings.operator_sso_role_map = dict(ROLE_MAP)  # type: ignore[arg-type]
    return settings


@pytest.fixture
async def web(vault: Vault) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=create_app(vault=vault)), base_url="http://testserver"
    ) as client:
        yield client


def local(url: str) -> str:
    assert url.startswith(VAULT_BASE_URL), url
    return url[len(VAULT_BASE_URL) :]


async def to_idp(web: httpx.AsyncClient, user: str) -> tuple[str, dict[str, str]]:
    """Start at the vault; returns the callback URL the peer sends back (not yet visited)
    and the authorization request's parameters."""
    started = await web.get("/portal/sso/start")
    assert started.status_code == 303, started.text
    cookie = started.headers["set-cookie"]
    assert "HttpOnly" in cookie and "samesite=lax" in cookie.lower() and "/portal/sso" in cookie
    url = started.headers["location"]
    params = query_of(url)
    assert params["code_challenge_method"] == "S256" and params["nonce"] and params["state"]
    return follow_to(f"{url}&{urlencode({'login_hint': user})}", CALLBACK), params


async def sso(web: httpx.AsyncClient, user: str) -> httpx.Response:
    callback, _ = await to_idp(web, user)
    return await web.get(local(callback))


async def operator_row(vault: Vault, name: str) -> Any:
    async with vault.db.read() as conn:
        return (await conn.execute(sa.select(operators).where(operators.c.name == name))).first()


async def audit(vault: Vault, event: str) -> list[dict[str, Any]]:
    async with vault.db.read() as conn:
        rows = (
            (
                await conn.execute(
                    sa.select(audit_events)
                    .where(audit_events.c.event == event)
                    .order_by(audit_events.c.id)
                )
            )
            .mappings()
            .all()
        )
    return [dict(r) for r in rows]


async def all_audit_text(vault: Vault) -> str:
    async with vault.db.read() as conn:
        rows = (await conn.execute(sa.select(audit_events))).mappings().all()
    return json.dumps([dict(r) for r in rows], default=str)


async def test_login_page_offers_sso_only_when_configured(
    web: httpx.AsyncClient, vault: Vault
) -> None:
    page = await web.get("/portal/login")
    assert 'href="/portal/sso/start"' in page.text
    vault.settings.operator_sso_issuer = None
    page = await web.get("/portal/login")
    assert "/portal/sso/start" not in page.text
    refused = await web.get("/portal/sso/start")
    assert refused.status_code == 404 and "not configured" in refused.text


async def test_a_group_maps_to_a_role_and_the_operator_is_created_just_in_time(
    web: httpx.AsyncClient, vault: Vault, sso_peer: IdpPeer
) -> None:
    done = await sso(web, "alice")
    assert done.status_code == 200, done.text
    assert done.headers["refresh"] == "0; url=/portal/"
    assert "gv_portal_sso=" in done.headers.get("set-cookie", "")  # the flow cookie is cleared
    overview = await web.get("/portal/")
    assert overview.status_code == 200 and "alice" in overview.text
    row = await operator_row(vault, "alice")
    assert row.role == "owner" and row.password_hash is None
    assert row.sso_subject == f"{sso_peer.issuer} alice"
    created = await audit(vault, "operator.created")
    assert created[-1]["actor"]["type"] == "idp" and created[-1]["actor"]["subject"] == "alice"
    assert created[-1]["details"]["role"] == "owner"
    signed = await audit(vault, "operator.signed_in")
    assert signed[-1]["details"]["method"] == "sso"
    # The highest mapped role wins; unmapped groups are ignored.
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=create_app(vault=vault)), base_url="http://testserver"
    ) as other:
        assert (await sso(other, "dave")).status_code == 200
        assert (await sso(other, "bob")).status_code == 200
    assert (await operator_row(vault, "dave")).role == "owner"
    assert (await operator_row(vault, "bob")).role == "auditor"
    # Nothing secret reached the audit trail.
    text = await all_audit_text(vault)
    assert BASIC_CLIENT[1] not in text and "eyJ" not in text


async def test_a_name_taken_by_a_password_operator_is_not_taken_over(
    web: httpx.AsyncClient, vault: Vault
) -> None:
    from grantvault_server.services import operators as ops

    from .conftest import OPERATOR

    await ops.create_operator(vault, "alice", "auditor", actor=OPERATOR, password="x" * 8 + "-Z9q!")
    assert (await sso(web, "alice")).status_code == 200
    assert (await operator_row(vault, "alice")).sso_subject is None
    assert (await operator_row(vault, "alice-2")).role == "owner"


async def test_no_mapped_group_is_refused_with_a_clear_page_and_audited(
    web: httpx.AsyncClient, vault: Vault
) -> None:
    refused = await sso(web, "carol")
    assert refused.status_code == 403
    assert "none of your groups gives a role" in refused.text
    assert await operator_row(vault, "carol") is None
    failed = await audit(vault, "operator.sign_in_failed")
    assert failed[-1]["reason"] == "sso_no_role" and failed[-1]["outcome"] == "denied"
    assert failed[-1]["details"]["subject"] == "carol"
    assert (await web.get("/portal/")).status_code == 303  # no session


async def test_the_role_follows_the_idp_at_every_sign_in(
    web: httpx.AsyncClient, vault: Vault
) -> None:
    assert (await sso(web, "bob")).status_code == 200
    assert (await operator_row(vault, "bob")).role == "auditor"
    vault.settings.operator_sso_role_map = {"vault-auditors": "admin"}
    assert (await sso(web, "bob")).status_code == 200
    assert (await operator_row(vault, "bob")).role == "admin"
    updated = await audit(vault, "operator.updated")
    assert updated[-1]["details"]["role"] == "admin" and updated[-1]["actor"]["type"] == "idp"
    # Losing every mapped group ends SSO access (the account stays, at its last role).
    vault.settings.operator_sso_role_map = {"vault-owners": "owner"}
    assert (await sso(web, "bob")).status_code == 403


async def test_a_replayed_answer_and_another_browser_are_refused(
    web: httpx.AsyncClient, vault: Vault
) -> None:
    callback, _ = await to_idp(web, "alice")
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=create_app(vault=vault)), base_url="http://testserver"
    ) as stranger:
        other = await stranger.get(local(callback))
        assert other.status_code == 401 and "another browser" in other.text
    first = await web.get(local(callback))
    assert first.status_code == 200, first.text
    # The flow cookie was cleared with the first answer: the same answer again is refused.
    again = await web.get(local(callback))
    assert again.status_code == 401


async def test_a_replayed_state_is_refused_even_with_its_cookie(
    web: httpx.AsyncClient, vault: Vault
) -> None:
    callback, _ = await to_idp(web, "alice")
    flow = web.cookies.get("gv_portal_sso")
    assert flow
    assert (await web.get(local(callback))).status_code == 200
    replay = await web.get(local(callback), headers={"cookie": f"gv_portal_sso={flow}"})
    assert replay.status_code == 401 and "already used" in replay.text


async def test_an_answer_naming_another_issuer_is_refused(
    web: httpx.AsyncClient, vault: Vault
) -> None:
    callback, _ = await to_idp(web, "alice")
    tampered = callback.replace("iss=", "iss=http%3A%2F%2Fevil.example%2F&x=")
    refused = await web.get(local(tampered))
    assert refused.status_code == 401 and "another issuer" in refused.text


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"aud": "someone-else"}, "another audience"),
        ({"iss": "http://127.0.0.1:1/evil"}, "another issuer"),
        ({"nonce": "not-this-sign-in"}, "nonce"),
        ({"exp": int(time.time()) - 3600, "iat": int(time.time()) - 4000}, "expired"),
    ],
)
async def test_a_wrong_id_token_is_refused(
    web: httpx.AsyncClient,
    vault: Vault,
    sso_peer: IdpPeer,
    monkeypatch: pytest.MonkeyPatch,
    change: dict[str, Any],
    reason: str,
) -> None:
    started = await web.get("/portal/sso/start")
    params = query_of(started.headers["location"])
    claims = sso_peer.claims(sub="alice", nonce=params["nonce"], groups=["vault-owners"])
    claims.update(change)
    forged = sso_peer.forge(claims)

    async def exchange(*_: Any) -> str:
        return forged

    monkeypatch.setattr(operator_sso, "_exchange", exchange)
    answer = await web.get(
        "/portal/sso/callback?" + urlencode({"state": params["state"], "code": "c"})
    )
    assert answer.status_code == 401, answer.text
    assert reason in answer.text
    assert await operator_row(vault, "alice") is None
    assert "eyJ" not in answer.text


async def test_allowed_domains(
    web: httpx.AsyncClient, vault: Vault, sso_peer: IdpPeer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only a verified email in an allowed domain signs in (the ID token must carry ``email``
    and ``email_verified``; the peer's carry them only when forged here)."""
    vault.settings.operator_sso_allowed_domains = ["example.test"]
    refused = await sso(web, "alice")  # the peer's ID token has no email: refused
    assert refused.status_code == 403 and "email domain" in refused.text

    async def signed_with(email: str, verified: bool = True) -> httpx.Response:
        started = await web.get("/portal/sso/start")
        params = query_of(started.headers["location"])
        claims = sso_peer.claims(
            sub="alice",
            nonce=params["nonce"],
            groups=["vault-owners"],
            email=email,
            email_verified=verified,
        )
        forged = sso_peer.forge(claims)

        async def exchange(*_: Any) -> str:
            return forged

        monkeypatch.setattr(operator_sso, "_exchange", exchange)
        return await web.get(
            "/portal/sso/callback?" + urlencode({"state": params["state"], "code": "c"})
        )

    assert (await signed_with("alice@corp.example")).status_code == 403
    assert (await signed_with("alice@example.test", verified=False)).status_code == 403
    assert (await signed_with("alice@Example.Test")).status_code == 200


def test_role_for_takes_the_highest() -> None:
    role_map: Any = ROLE_MAP
    assert operator_sso.role_for(["vault-auditors", "vault-admins"], role_map) == "admin"
    assert operator_sso.role_for(["x"], role_map) is None
    assert operator_sso.groups_of({"groups": "vault-owners"}, "groups") == ["vault-owners"]
    assert operator_sso.groups_of({"groups": [1, "a"]}, "groups") == ["a"]


def test_settings_parse_the_role_map_and_domains(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GRANTVAULT_OPERATOR_SSO_ROLE_MAP", '{"g": "auditor"}')
    monkeypatch.setenv("GRANTVAULT_OPERATOR_SSO_ALLOWED_DOMAINS", "a.example, b.example")
    settings = Settings(data_dir=Path("unused"))
    assert settings.operator_sso_role_map == {"g": "auditor"}
    assert settings.operator_sso_allowed_domains == ["a.example", "b.example"]
    monkeypatch.setenv("GRANTVAULT_OPERATOR_SSO_ROLE_MAP", '{"g": "root"}')
    with pytest.raises(ValueError):
        Settings(data_dir=Path("unused"))
