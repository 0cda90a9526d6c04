"""Token retrieval and grants over the signed protocol, on SQLite and PostgreSQL."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from grantvault_server.services import grants as grant_service, secrets as secret_service
from grantvault_server.services.apps import App
from grantvault_server.services.vault import Vault
from grantvault_server.storage.tables import audit_events
from tests.conftest import OPERATOR, SignedClient, make_app

URL = "https://api.openai.com/v1/chat/completions"


async def _grant(
    vault: Vault,
    app: App,
    *,
    template: str | None = "openai",
    values: dict[str, str] | None = None,
    **custom: Any,
) -> str:
    secret = await secret_service.create_secret(vault, app, OPERATOR, template=template, **custom)
    await secret_service.set_credential(
        vault, app, secret, values or {"token": "sk-test-abcdef123456"}, OPERATOR
    )
    result = await grant_service.create_grant(vault, app, secret, OPERATOR, principal_type="system")
    return str(result["grant_id"])


def _token_body(grant_id: str, url: str = URL, method: str = "POST") -> dict[str, Any]:
    return {"grant_id": grant_id, "reason": None, "request": {"method": method, "url": url}}


async def test_bearer_retrieval_and_audit_row(vault: Vault, client: httpx.AsyncClient) -> None:
    app, key = await make_app(vault)
    grant_id = await _grant(vault, app)
    r = await SignedClient(client, key).post(
        "/sdk/token", _token_body(grant_id, URL + "?api_key=leak")
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["access_token"] == "sk-test-abcdef123456"
    assert (body["injection_header"], body["injection_format"]) == (
        "Authorization",
        "Bearer {token}",
    )
    assert body["grant_id"] == grant_id and body["provider_id"] == "openai"
    assert r.headers["cache-control"] == "no-store"
    async with vault.db.read() as conn:
        row = (
            await conn.execute(
                sa.select(audit_events).where(
                    audit_events.c.grant_id == grant_id,
                    audit_events.c.event == "credential.retrieved",
                )
            )
        ).one()
    assert row.outcome == "success" and row.actor["key_prefix"] == key[:15]
    assert (
        row.method == "POST" and "leak" not in row.url and "sk-test" not in json.dumps(row.details)
    )


@pytest.mark.parametrize(
    ("custom", "values", "expected"),
    [
        (
            {
                "slug": "hdr",
                "injection": {"auth": "header", "header": "X-Api-Key", "format": "Key {token}"},
            },
            {"token": "k-123456"},
            {
                "access_token": "k-123456",
                "injection_header": "X-Api-Key",
                "injection_format": "Key {token}",
            },
        ),
        (
            {
                "slug": "qry",
                "injection": {
                    "auth": "query",
                    "query_param": "api_key",
                    "header": "X-Api-Key",
                    "format": "{token}",
                },
            },
            {"token": "q-123456"},
            {
                "additional_injections": [
                    {"target": "query_param", "key": "api_key", "value_source": "token"}
                ]
            },
        ),
        (
            {"slug": "basic", "injection": {"auth": "basic"}},
            {"username": "ACxyz", "password": "pw-123456"},
            {
                "access_token": base64.b64encode(b"ACxyz:pw-123456").decode(),
                "injection_format": "Basic {token}",
            },
        ),
        (
            {"slug": "aws", "injection": {"auth": "sigv4", "aws_region": "eu-west-1"}},
            {
                "access_key_id": "AKIDEXAMPLE",
                "secret_access_key": "wJalrXUtnFEMI/K7MDENG",
                "session_token": "tok",
            },
            {
                "access_token": "AKIDEXAMPLE",
                "injection_format": "AWS4-HMAC-SHA256",
                "additional_credentials": {
                    "secret_key": "wJalrXUtnFEMI/K7MDENG",
                    "session_token": "tok",
                    "region": "eu-west-1",
                },
            },
        ),
        (
            {
                "slug": "multi",
                "injection": {
                    "auth": "header",
                    "header": "DD-API-KEY",
                    "format": "{token}",
                    "fields": [{"name": "token"}, {"name": "app_key", "required": False}],
                    "extra": [
                        {"target": "header", "key": "DD-APPLICATION-KEY", "source": "app_key"}
                    ],
                },
            },
            {"token": "api-123456", "app_key": "app-654321"},
            {
                "additional_credentials": {"app_key": "app-654321"},
                "additional_injections": [
                    {
                        "target": "header",
                        "key": "DD-APPLICATION-KEY",
                        "value_source": "additional_credentials.app_key",
                    }
                ],
            },
        ),
    ],
    ids=["header", "query", "basic", "sigv4", "extra-header"],
)
async def test_injection_shapes(
    vault: Vault,
    client: httpx.AsyncClient,
    custom: dict[str, Any],
    values: dict[str, str],
    expected: dict[str, Any],
) -> None:
    app, key = await make_app(vault)
    grant_id = await _grant(
        vault, app, template=None, values=values, allowed_hosts=["api.example.com"], **custom
    )
    r = await SignedClient(client, key).post(
        "/sdk/token", _token_body(grant_id, "https://api.example.com/v1")
    )
    assert r.status_code == 200, r.text
    body = r.json()
    for field, value in expected.items():
        assert body[field] == value, field


@pytest.mark.parametrize(
    "url",
    [
        "https://api.github.com/user",
        "https://api.openai.com@evil.example/v1",
        "https://evil.example#@api.openai.com/",
        "https://api.openai.com.evil.example/",
        "http://api.openai.com/v1",
        "https://api.openai.com:8443/v1",
        "ftp://api.openai.com/",
        "https://127.0.0.1/",
        "https://169.254.169.254/latest/meta-data",
        "https://api.openai.com/v1\r\nX-Injected: 1",
        "https://api.openai.com\\@evil.example/",
        "https://xn--pi-openai-6we.com/",
        "https://api.openaı.com/v1",  # noqa: RUF001 - dotless i: IDNA 2003 and httpx disagree
        "https://api.open%61i.com/v1",
        "https://[::1]/v1",
        "https://api.openai.com:abc/v1",
    ],
)
async def test_blocked_destinations(vault: Vault, client: httpx.AsyncClient, url: str) -> None:
    app, key = await make_app(vault)
    grant_id = await _grant(vault, app)
    r = await SignedClient(client, key).post("/sdk/token", _token_body(grant_id, url))
    assert r.status_code == 422 and r.json()["error"] == "blocked_destination", r.text
    assert "access_token" not in r.json()


async def test_allowed_host_normalisation(vault: Vault, client: httpx.AsyncClient) -> None:
    app, key = await make_app(vault)
    grant_id = await _grant(vault, app)
    for url in (
        "https://API.OpenAI.com/v1/models",
        "https://api.openai.com./v1/models",
        "https://api.openai.com:443/v1",
    ):
        r = await SignedClient(client, key).post("/sdk/token", _token_body(grant_id, url))
        assert r.status_code == 200, (url, r.text)


async def test_revoked_and_expired_grants(vault: Vault, client: httpx.AsyncClient) -> None:
    app, key = await make_app(vault)
    sc = SignedClient(client, key)
    grant_id = await _grant(vault, app)
    r = await sc.post(f"/sdk/oauth/grants/{grant_id}/revoke", {"reason": "offboarding"})
    assert r.status_code == 200 and r.json()["success"] is True
    r = await sc.post("/sdk/token", _token_body(grant_id))
    assert r.status_code == 403 and r.json()["error"] == "grant_revoked"
    # Revoking again is idempotent and keeps the first time.
    again = await sc.post(f"/sdk/oauth/grants/{grant_id}/revoke", {})
    assert again.status_code == 200

    secret = await secret_service.create_secret(vault, app, OPERATOR, template="stripe")
    await secret_service.set_credential(vault, app, secret, {"token": "sk_test_123456"}, OPERATOR)
    r = await sc.post(
        f"/sdk/managed-secrets/{secret.id}/grants",
        {"principal": {"type": "system"}, "grant_policy": {"max_ttl_seconds": 1}},
    )
    assert r.status_code == 200, r.text
    expiring = r.json()["grant_id"]
    async with vault.db.write() as conn:
        from grantvault_server.storage.tables import grants

        await conn.execute(
            sa.update(grants)
            .where(grants.c.id == expiring)
            .values(expires_at=datetime.now(UTC) - timedelta(seconds=1))
        )
    r = await sc.post("/sdk/token", _token_body(expiring, "https://api.stripe.com/v1/charges"))
    assert r.status_code == 403 and r.json()["error"] == "grant_expired"
    # Denials are audited too.
    async with vault.db.read() as conn:
        outcomes = (
            await conn.execute(
                sa.select(audit_events.c.outcome, audit_events.c.reason).where(
                    audit_events.c.chain == app.id, audit_events.c.event == "credential.retrieved"
                )
            )
        ).all()
    assert ("denied", "grant_revoked") in outcomes and ("denied", "grant_expired") in outcomes


async def test_replacing_a_credential_keeps_grants_valid(
    vault: Vault, client: httpx.AsyncClient
) -> None:
    app, key = await make_app(vault)
    secret = await secret_service.create_secret(vault, app, OPERATOR, template="openai")
    await secret_service.set_credential(vault, app, secret, {"token": "sk-first-000000"}, OPERATOR)
    grant_id = (
        await grant_service.create_grant(vault, app, secret, OPERATOR, principal_type="system")
    )["grant_id"]
    first = (await SignedClient(client, key).post("/sdk/token", _token_body(grant_id))).json()
    await secret_service.set_credential(vault, app, secret, {"token": "sk-second-11111"}, OPERATOR)
    second = (await SignedClient(client, key).post("/sdk/token", _token_body(grant_id))).json()
    assert (first["access_token"], second["access_token"]) == ("sk-first-000000", "sk-second-11111")
    assert first["token_generation"] != second["token_generation"]


async def test_tenant_isolation(vault: Vault, client: httpx.AsyncClient) -> None:
    app_a, key_a = await make_app(vault)
    _, key_b = await make_app(vault)
    grant_a = await _grant(vault, app_a)
    secret_a = (await secret_service.list_secrets(vault, app_a))[0][0]
    b = SignedClient(client, key_b)
    r = await b.post("/sdk/token", _token_body(grant_a))
    assert r.status_code == 404 and r.json()["error"] == "grant_not_found"
    assert (await b.post("/sdk/grants/list", {"limit": 100, "offset": 0})).json()["total"] == 0
    r = await b.post(f"/sdk/oauth/grants/{grant_a}/revoke", {})
    assert r.status_code == 404
    r = await b.post(
        f"/sdk/managed-secrets/{secret_a.id}/grants", {"principal": {"type": "system"}}
    )
    assert r.status_code == 404 and r.json()["error"] == "secret_not_found"
    r = await b.post(
        "/sdk/oauth/audit/api-call",
        {
            "grant_id": grant_a,
            "provider_id": "openai",
            "method": "GET",
            "url": "https://x",
            "response_status": 200,
        },
    )
    assert r.status_code == 404
    # An unknown id answers exactly like another app's id (no existence oracle).
    unknown = await b.post("/sdk/token", _token_body("00000000-0000-4000-8000-000000000000"))
    assert unknown.json()["error"] == r.json()["error"] == "grant_not_found"
    # App A still works.
    assert (
        await SignedClient(client, key_a).post("/sdk/token", _token_body(grant_a))
    ).status_code == 200


async def test_provider_mode_resolves_system_grant_or_is_ambiguous(
    vault: Vault, client: httpx.AsyncClient
) -> None:
    app, key = await make_app(vault)
    sc = SignedClient(client, key)
    body = {"provider_id": "openai", "reason": None, "request": {"method": "GET", "url": URL}}
    r = await sc.post("/sdk/token", body)
    assert r.status_code == 404 and r.json()["provider_id"] == "openai"
    await _grant(vault, app)
    assert (await sc.post("/sdk/token", body)).status_code == 200
    secret = (await secret_service.list_secrets(vault, app))[0][0]
    await grant_service.create_grant(
        vault, app, secret, OPERATOR, principal_type="system", label="second"
    )
    r = await sc.post("/sdk/token", body)
    assert r.status_code == 409 and r.json()["error"] == "ambiguous_grant"
    assert len(r.json()["candidates"]) == 2
    assert (await sc.post("/sdk/token", {**body, "label": "second"})).status_code == 200


async def test_audit_write_failure_means_no_token(
    vault: Vault, client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    from grantvault.types.errors import ErrorCode
    from grantvault_server.audit import chain
    from grantvault_server.errors import VaultError

    app, key = await make_app(vault)
    grant_id = await _grant(vault, app)

    async def broken(*_args: object, **_kw: object) -> None:
        raise VaultError(ErrorCode.STORAGE_UNAVAILABLE, "audit store down")

    monkeypatch.setattr(chain, "append", broken)
    r = await SignedClient(client, key).post("/sdk/token", _token_body(grant_id))
    assert r.status_code == 503 and "access_token" not in r.text and "sk-test" not in r.text


@pytest.mark.parametrize(
    ("path", "payload"),
    [
        ("/sdk/token", {}),
        ("/sdk/token", {"grant_id": "not-a-uuid", "request": {"method": "GET", "url": URL}}),
        (
            "/sdk/token",
            {
                "grant_id": "00000000-0000-4000-8000-000000000000",
                "request": {"method": "BREW", "url": URL},
            },
        ),
        ("/sdk/token", {"request": {"method": "GET", "url": URL}}),
        (
            "/sdk/token",
            {
                "grant_id": "00000000-0000-4000-8000-000000000000",
                "provider_id": "x",
                "request": {"method": "GET", "url": URL},
            },
        ),
        (
            "/sdk/token",
            {
                "grant_id": "00000000-0000-4000-8000-000000000000",
                "request": {"method": "GET", "url": URL},
                "surprise": 1,
            },
        ),
        ("/sdk/token", [1, 2, 3]),
        ("/sdk/token", "sk-live-pasted-secret-value"),
        ("/sdk/grants/list", {"limit": 0}),
        ("/sdk/grants/list", {"limit": 5000}),
        ("/sdk/grants/list", {"status": "weird"}),
        ("/sdk/grants/list", {"user_token": "eyJ.x.y"}),
        ("/sdk/oauth/grants/not-a-grant/revoke", {"reason": "x" * 600}),
        ("/sdk/managed-secrets/nope/grants", {"principal": {"type": "robot"}}),
        (
            "/sdk/managed-secrets/nope/grants",
            {"principal": {"type": "system"}, "grant_policy": {"max_ttl_seconds": -5}},
        ),
        ("/sdk/oauth/audit/api-call", {"grant_id": "x"}),
        (
            "/sdk/token",
            {
                "grant_id": "00000000-0000-4000-8000-000000000000",
                "reason": "r" * 513,
                "request": {"method": "GET", "url": URL},
            },
        ),
        (
            "/sdk/token",
            {
                "grant_id": "00000000-0000-4000-8000-000000000000",
                "reason": "a\x00b",
                "request": {"method": "GET", "url": URL},
            },
        ),
        ("/sdk/grants/list", {"offset": 10**20}),
        ("/sdk/oauth/grants/%00/revoke", {}),
        (
            "/sdk/managed-secrets/nope/grants",
            {
                "principal": {"type": "system"},
                "grant_policy": {"expires_at": "2030-01-01T00:00:00"},
            },
        ),
        (
            "/sdk/managed-secrets/nope/grants",
            {"principal": {"type": "system"}, "grant_policy": {"max_ttl_seconds": 10**12}},
        ),
        (
            "/sdk/managed-secrets/nope/grants",
            {
                "principal": {"type": "system"},
                "grant_policy": {"expires_at": "9999-12-31T23:59:59-14:00"},
            },
        ),
    ],
)
async def test_bad_input_gets_a_clear_4xx(
    vault: Vault, client: httpx.AsyncClient, path: str, payload: Any
) -> None:
    _, key = await make_app(vault)
    r = await SignedClient(client, key).post(path, payload)
    assert 400 <= r.status_code < 500, (r.status_code, r.text)
    body = r.json()
    assert body["error"] and body["message"]
    assert "sk-live-pasted-secret-value" not in r.text


async def test_raw_garbage_bodies(vault: Vault, client: httpx.AsyncClient) -> None:
    _, key = await make_app(vault)
    sc = SignedClient(client, key)
    for body in (b"{not json", b"\xff\xfe\x00", b'{"a":' * 5000 + b"1" + b"}" * 5000):
        r = await client.post(
            "/sdk/token", content=body, headers=sc.headers("POST", "/sdk/token", body)
        )
        assert 400 <= r.status_code < 500, (body[:20], r.status_code, r.text[:200])


async def test_replayed_retrieval_is_refused_and_audited_once(
    vault: Vault, client: httpx.AsyncClient
) -> None:
    app, key = await make_app(vault)
    grant_id = await _grant(vault, app)
    sc = SignedClient(client, key)
    body = json.dumps(_token_body(grant_id), separators=(",", ":")).encode()
    headers = sc.headers("POST", "/sdk/token", body)
    first = await client.post("/sdk/token", content=body, headers=headers)
    again = await client.post("/sdk/token", content=body, headers=headers)
    assert first.status_code == 200
    assert again.status_code == 401 and again.json()["error"] == "replayed_request"
    assert "access_token" not in again.text
    async with vault.db.read() as conn:
        rows = (
            await conn.execute(
                sa.select(audit_events.c.outcome).where(
                    audit_events.c.grant_id == grant_id,
                    audit_events.c.event == "credential.retrieved",
                )
            )
        ).all()
    assert [r.outcome for r in rows] == ["success"]
    # A replayed *denied* request is refused as a replay too.
    bad = json.dumps(_token_body(grant_id, "https://evil.example/"), separators=(",", ":")).encode()
    bad_headers = sc.headers("POST", "/sdk/token", bad)
    assert (await client.post("/sdk/token", content=bad, headers=bad_headers)).json()[
        "error"
    ] == "blocked_destination"
    assert (await client.post("/sdk/token", content=bad, headers=bad_headers)).json()[
        "error"
    ] == "replayed_request"


async def test_concurrent_retrievals_share_commits_and_stay_exact(
    vault: Vault, client: httpx.AsyncClient
) -> None:
    import asyncio

    app, key = await make_app(vault)
    grant_id = await _grant(vault, app)
    sc = SignedClient(client, key)
    body = json.dumps(_token_body(grant_id), separators=(",", ":")).encode()
    signed = [sc.headers("POST", "/sdk/token", body) for _ in range(24)]
    # The same signed request three times inside one burst: only one may succeed.
    burst = [*signed, signed[0], signed[0]]
    before = vault.retrieval_writer.batches
    responses = await asyncio.gather(
        *(client.post("/sdk/token", content=body, headers=h) for h in burst)
    )
    codes = sorted(r.status_code for r in responses)
    assert codes == [200] * 24 + [401, 401]
    assert vault.retrieval_writer.batches - before < 24  # writes were grouped
    async with vault.db.read() as conn:
        count = (
            await conn.execute(
                sa.select(sa.func.count()).where(
                    audit_events.c.grant_id == grant_id,
                    audit_events.c.event == "credential.retrieved",
                )
            )
        ).scalar_one()
        assert count == 24
        assert await vault.audit.verify(conn, app.id) == []


async def test_several_credentials_need_a_choice(vault: Vault, client: httpx.AsyncClient) -> None:
    app, key = await make_app(vault)
    secret = await secret_service.create_secret(vault, app, OPERATOR, template="openai")
    first = await secret_service.set_credential(
        vault, app, secret, {"token": "sk-one-123456"}, OPERATOR
    )
    second = await secret_service.set_credential(
        vault, app, secret, {"token": "sk-two-123456"}, OPERATOR, add=True, label="backup"
    )
    sc = SignedClient(client, key)
    r = await sc.post(f"/sdk/managed-secrets/{secret.id}/grants", {"principal": {"type": "system"}})
    assert r.status_code == 409 and r.json()["error"] == "credential_id_required"
    assert {c["id"] for c in r.json()["details"]["credentials"]} == {first, second}
    r = await sc.post(
        f"/sdk/managed-secrets/{secret.id}/grants",
        {"principal": {"type": "system"}, "credential_id": second},
    )
    grant_id = r.json()["grant_id"]
    token = await sc.post("/sdk/token", _token_body(grant_id))
    assert token.json()["access_token"] == "sk-two-123456"


async def test_key_last_used_is_recorded(vault: Vault, client: httpx.AsyncClient) -> None:
    from grantvault_server.services import apps as app_service

    app, key = await make_app(vault)
    grant_id = await _grant(vault, app)
    assert (
        await SignedClient(client, key).post("/sdk/token", _token_body(grant_id))
    ).status_code == 200
    [info] = await app_service.list_keys(vault, app)
    assert info.last_used_at is not None


async def test_hostile_headers_get_4xx(vault: Vault, client: httpx.AsyncClient) -> None:
    app, key = await make_app(vault)
    grant_id = await _grant(vault, app)
    sc = SignedClient(client, key)
    body = json.dumps(_token_body(grant_id), separators=(",", ":")).encode()
    for name, value in (
        ("X-Alter-Timestamp", "\u00b2"),
        ("X-Alter-Signature", "\u00e9" * 64),
        ("X-Alter-Signature-V2", "zz"),
    ):
        headers = {**sc.headers("POST", "/sdk/token", body), name: value}
        r = await client.post(
            "/sdk/token", content=body, headers={k: v.encode() for k, v in headers.items()}
        )  # type: ignore[misc]
        assert r.status_code == 401, (name, r.status_code)
    deep = "[" * 2040 + "]" * 2040
    headers = {
        **sc.headers("POST", "/sdk/token", body, actor={"X-Alter-Context": deep}),
        "X-Alter-Context": deep,
    }
    assert (await client.post("/sdk/token", content=body, headers=headers)).status_code == 200


async def test_signed_attenuation_is_refused_not_ignored(
    vault: Vault, client: httpx.AsyncClient
) -> None:
    app, key = await make_app(vault)
    grant_id = await _grant(vault, app)
    sc = SignedClient(client, key)
    for kw in ({"scope_constraints": "grants:read"}, {"request_rule": "eyJydWxlX3R5cGUiOiJ4In0"}):
        r = await sc.post("/sdk/token", _token_body(grant_id), **kw)
        assert r.status_code == 400 and r.json()["error"] == "constraints_unsupported"
        assert "access_token" not in r.text


async def test_revocation_between_check_and_commit_refuses_the_token(
    vault: Vault, client: httpx.AsyncClient
) -> None:
    """A revocation that commits while a retrieval is in flight wins: no token leaves."""
    app, key = await make_app(vault)
    grant_id = await _grant(vault, app)
    body = json.dumps(_token_body(grant_id), separators=(",", ":")).encode()
    headers = SignedClient(client, key).headers("POST", "/sdk/token", body)
    original = vault.retrieval_writer.commit

    async def commit_after_revoke(write: Any) -> None:
        # The grant was read as active and every check passed; the revocation commits
        # before the retrieval's own write transaction starts.
        await grant_service.revoke_grant(vault, app, grant_id, OPERATOR)
        await original(write)

    vault.retrieval_writer.commit = commit_after_revoke  # type: ignore[method-assign]
    try:
        r = await client.post("/sdk/token", content=body, headers=headers)
    finally:
        del vault.retrieval_writer.commit
    assert (
        r.status_code == 403
        and r.json()["error"] == "grant_revoked"
        and "access_token" not in r.text
    )
    async with vault.db.read() as conn:
        rows = (
            await conn.execute(
                sa.select(audit_events.c.event, audit_events.c.outcome)
                .where(audit_events.c.grant_id == grant_id)
                .order_by(audit_events.c.seq)
            )
        ).all()
    assert [tuple(r) for r in rows][-2:] == [
        ("grant.revoked", "success"),
        ("credential.retrieved", "denied"),
    ]


async def test_hostile_context_header_does_not_fail_the_batch(
    vault: Vault, client: httpx.AsyncClient
) -> None:
    import asyncio

    app, key = await make_app(vault)
    grant_id = await _grant(vault, app)
    sc = SignedClient(client, key)
    body = json.dumps(_token_body(grant_id), separators=(",", ":")).encode()
    hostile = '{"x":"\\ud800"}'
    requests = [sc.headers("POST", "/sdk/token", body) for _ in range(8)]
    requests.append(
        {
            **sc.headers("POST", "/sdk/token", body, actor={"X-Alter-Context": hostile}),
            "X-Alter-Context": hostile,
        }
    )
    responses = await asyncio.gather(
        *(client.post("/sdk/token", content=body, headers=h) for h in requests)
    )
    assert [r.status_code for r in responses] == [200] * 9


async def test_post_call_rows_never_store_the_credential(
    vault: Vault, client: httpx.AsyncClient
) -> None:
    app, key = await make_app(vault)
    grant_id = await _grant(vault, app, values={"token": "sk-echoed-secret-987654"})
    r = await SignedClient(client, key).post(
        "/sdk/oauth/audit/api-call",
        {
            "grant_id": grant_id,
            "provider_id": "openai",
            "method": "POST",
            "url": "https://api.openai.com/v1/x",
            "request_headers": {"X-Debug": "Bearer sk-echoed-secret-987654"},
            "response_status": 401,
            "response_body": {
                "error": {"message": "Incorrect API key provided: sk-echoed-secret-987654"}
            },
        },
    )
    assert r.status_code == 202, r.text
    async with vault.db.read() as conn:
        row = (
            await conn.execute(
                sa.select(audit_events.c.details).where(
                    audit_events.c.grant_id == grant_id, audit_events.c.event == "provider.api_call"
                )
            )
        ).one()
    text = json.dumps(row.details)
    assert "sk-echoed-secret-987654" not in text and "[redacted]" in text
