"""Issue 9, items 5, 7 and 8 on the identity side, against the real OIDC peer, SQLite and
PostgreSQL:

* claims the storage cannot hold alike (NUL, lone surrogates) are refused before storage;
* a token signed with a key the IdP just rotated in verifies at first sight (the unknown-kid
  cooldown counts only from unknown-kid refreshes), while a flood of random kids still
  costs one fetch per cooldown;
* time claims are JSON numbers within the configured maximum lifetime;
* a client's own (client-credentials) token is not an end user;
* no request model reads a JSON boolean as a number (or a number as a boolean).
"""

from __future__ import annotations

import importlib
import json
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
import sqlalchemy as sa
from fastapi.routing import APIRoute
from pydantic import BaseModel, TypeAdapter

from grantvault.types.errors import ErrorCode
from grantvault_server import api as api_package
from grantvault_server.app import create_app
from grantvault_server.errors import VaultError
from grantvault_server.services import (
    apps as app_service,
    grants as grant_service,
    secrets as secret_service,
)
from grantvault_server.services.apps import App
from grantvault_server.services.identity.service import resolve_user
from grantvault_server.services.vault import Vault
from grantvault_server.storage.tables import app_users
from tests.conftest import OPERATOR, SignedClient, make_app
from tests.test_identity_support import (
    IdpPeer,
    attacker_key,
    configure,
    idp_peer_fixture,  # noqa: F401 - the fixture
    start_idp_peer,
)


@pytest.fixture
async def app(vault: Vault, idp_peer: IdpPeer) -> App:
    target, _ = await make_app(vault)
    await configure(vault, target, idp_peer)
    return target


async def refused(vault: Vault, app: App, token: str) -> str:
    with pytest.raises(VaultError) as caught:
        await resolve_user(vault, app.id, token)
    assert caught.value.code is ErrorCode.JWT_VALIDATION_ERROR, caught.value.message
    assert caught.value.status == 401
    return caught.value.message


def fetches(vault: Vault, peer: IdpPeer) -> int:
    cache = vault.identity.jwks.get(f"{peer.issuer}/jwks")
    return 0 if cache is None else cache.fetch_count


# -- item 5: claims the storage cannot hold ---------------------------------------------


@pytest.mark.parametrize(
    "claims",
    [
        {"sub": "mallory\x00admin"},
        {"sub": "mallory\ud800"},
        {"sub": "mallory\n"},
        {"sub": "carol", "email": "carol\x00@example.com"},
        {"sub": "carol", "email": "carol\udfff@example.com"},
        {"sub": "carol", "name": "Carol\x00"},
        {"sub": "carol", "name": "Carol \ud83d"},
        {"sub": "carol", "groups": ["ops\x00"]},
        {"sub": "carol", "groups": "ops \ud800"},
    ],
)
async def test_claims_with_nul_or_lone_surrogates_are_refused_before_storage(
    vault: Vault, app: App, idp_peer: IdpPeer, claims: dict[str, Any]
) -> None:
    message = await refused(vault, app, idp_peer.forge(idp_peer.claims(**claims)))
    assert "control characters" in message
    async with vault.db.read() as conn:
        users = (await conn.execute(sa.select(app_users.c.subject))).scalars().all()
    assert users == []
    # The control: the same claims without the bad characters are accepted.
    clean = {
        k: (v.replace("\x00", "").replace("\n", "") if isinstance(v, str) else v)
        for k, v in claims.items()
    }
    clean = json.loads(json.dumps(clean).replace("\\ud800", "").replace("\\udfff", ""))
    clean = json.loads(json.dumps(clean).replace("\\ud83d", "").replace("\\u0000", ""))
    accepted = await resolve_user(vault, app.id, idp_peer.forge(idp_peer.claims(**clean)))
    assert accepted.subject == clean["sub"]


async def test_verify_token_route_refuses_a_nul_subject_with_401(
    vault: Vault, client: httpx.AsyncClient, app: App, idp_peer: IdpPeer
) -> None:
    _, key = await app_service.create_key(vault, app, OPERATOR)
    token = idp_peer.forge(idp_peer.claims(sub="eve\x00"))
    response = await SignedClient(client, key).post("/sdk/auth/verify-token", {"token": token})
    assert response.status_code == 401, response.text
    assert response.json()["error"] == ErrorCode.JWT_VALIDATION_ERROR.value


# -- item 7: key rotation at the IdP -----------------------------------------------------


async def test_a_rotated_key_verifies_at_first_sight_and_random_kids_cost_one_fetch(
    vault: Vault, tmp_path: Path
) -> None:
    """Real peer, real clock: no clock is advanced past any cooldown."""
    peer = start_idp_peer(tmp_path)
    try:
        target, _ = await make_app(vault)
        await configure(vault, target, peer)
        old = peer.id_token("hank")
        assert (await resolve_user(vault, target.id, old)).subject == "hank"
        assert fetches(vault, peer) == 1  # the key set was just fetched
        peer.peer.admin("rotate-keys")
        new = peer.id_token("hank")
        assert jwt.get_unverified_header(new)["kid"] != jwt.get_unverified_header(old)["kid"]
        started = time.monotonic()
        assert (await resolve_user(vault, target.id, new)).subject == "hank"
        assert time.monotonic() - started < 5
        assert fetches(vault, peer) == 2  # exactly one refresh, at first sight
        # A flood of random kids right after: the unknown-kid cooldown now runs, no fetch.
        key = attacker_key()
        for _ in range(200):
            forged = jwt.encode(
                peer.claims(sub="x"), key, algorithm="RS256", headers={"kid": uuid.uuid4().hex}
            )
            await refused(vault, target, forged)
        assert fetches(vault, peer) == 2
        # Both keys keep verifying from the cache.
        assert (await resolve_user(vault, target.id, old)).subject == "hank"
        assert fetches(vault, peer) == 2
    finally:
        peer.stop()


async def test_a_flood_before_the_rotation_costs_one_fetch(
    vault: Vault, app: App, idp_peer: IdpPeer
) -> None:
    """Random kids right after a scheduled fetch still cost exactly one fetch in all."""
    await resolve_user(vault, app.id, idp_peer.forge())
    before = fetches(vault, idp_peer)
    key = attacker_key()
    for _ in range(300):
        forged = jwt.encode(
            idp_peer.claims(), key, algorithm="RS256", headers={"kid": uuid.uuid4().hex}
        )
        await refused(vault, app, forged)
    assert fetches(vault, idp_peer) == before + 1


# -- item 8: time claims, machine tokens ---------------------------------------------------


def _raw_token(peer: IdpPeer, payload_json: str) -> str:
    """A token signed by the peer's key over a payload written by hand (any JSON)."""
    kid, key = peer.signing_key()
    header = {"alg": "RS256", "kid": kid, "typ": "JWT"}
    return jwt.api_jws.encode(payload_json.encode(), key, algorithm="RS256", headers=header)


@pytest.mark.parametrize(
    "exp",
    [
        '"{soon}"',  # a numeric string
        "1000000000000",  # 10^12: year 33658
        "true",
        "1e999",  # Infinity once parsed; PyJWT alone raised an untyped OverflowError
        "null",
    ],
)
async def test_time_claims_must_be_numbers_within_the_lifetime(
    vault: Vault, app: App, idp_peer: IdpPeer, exp: str
) -> None:
    now = int(time.time())
    base = idp_peer.claims()
    base.pop("exp")
    payload = json.dumps(base)[:-1] + ', "exp": ' + exp.replace("{soon}", str(now + 300)) + "}"
    await refused(vault, app, _raw_token(idp_peer, payload))
    # The control: the same path with a number is accepted.
    good = json.dumps(base)[:-1] + f', "exp": {now + 300}' + "}"
    assert (await resolve_user(vault, app.id, _raw_token(idp_peer, good))).subject == "alice"


async def test_iat_and_nbf_must_be_numbers(vault: Vault, app: App, idp_peer: IdpPeer) -> None:
    now = int(time.time())
    await refused(vault, app, idp_peer.forge(idp_peer.claims(iat=str(now))))
    await refused(vault, app, idp_peer.forge(idp_peer.claims(nbf=False)))


async def test_the_maximum_lifetime_is_configurable(
    vault: Vault, app: App, idp_peer: IdpPeer, monkeypatch: pytest.MonkeyPatch
) -> None:
    now = int(time.time())
    week = idp_peer.forge(idp_peer.claims(exp=now + 7 * 86_400))
    message = await refused(vault, app, week)
    assert "GRANTVAULT_USER_TOKEN_MAX_LIFETIME_SECONDS" in message
    # Issued two days ago and valid a little longer: lives longer than a day.
    old = idp_peer.forge(idp_peer.claims(iat=now - 2 * 86_400, exp=now + 120))
    await refused(vault, app, old)
    monkeypatch.setattr(vault.settings, "user_token_max_lifetime_seconds", 8 * 86_400)
    assert (await resolve_user(vault, app.id, week)).subject == "alice"
    assert (await resolve_user(vault, app.id, old)).subject == "alice"
    monkeypatch.setattr(vault.settings, "user_token_max_lifetime_seconds", 300)
    hour = idp_peer.forge(idp_peer.claims(sub="bob", exp=now + 3600))
    await refused(vault, app, hour)


@pytest.mark.parametrize(
    "claims",
    [
        {"sub": "vault-basic", "client_id": "vault-basic"},  # RFC 9068 client credentials
        {"sub": "0oa1client", "cid": "0oa1client"},  # Okta
        {"sub": "my-client", "azp": "my-client"},
        {"sub": "abc@clients", "gty": "client-credentials"},  # Auth0
        {"sub": "abc@clients", "gty": ["client-credentials"]},
        {"sub": "5f3a", "idtyp": "app"},  # Entra ID app-only
        {"sub": "5f3a", "preferred_username": "service-account-ci"},  # Keycloak
    ],
)
async def test_machine_tokens_are_not_end_users(
    vault: Vault, app: App, idp_peer: IdpPeer, claims: dict[str, Any]
) -> None:
    message = await refused(vault, app, idp_peer.forge(idp_peer.claims(**claims)))
    assert "no end user" in message
    async with vault.db.read() as conn:
        assert (await conn.execute(sa.select(app_users.c.subject))).all() == []


async def test_a_user_access_token_is_an_end_user_and_the_clients_own_is_not(
    vault: Vault, idp_peer: IdpPeer
) -> None:
    api, _ = await make_app(vault)
    await configure(vault, api, idp_peer, audience="urn:peer:api")
    user_token = idp_peer.user_access_token_jwt("gina")
    assert (await resolve_user(vault, api.id, user_token)).subject == "gina"
    await refused(vault, api, idp_peer.access_token_jwt())


# -- item 8: booleans are never integers in a request body --------------------------------


def _routes(routes: Any) -> Any:
    for route in routes:
        if isinstance(route, APIRoute):
            yield route
        elif getattr(route, "original_router", None) is not None:  # an included router
            yield from _routes(route.original_router.routes)
        elif hasattr(route, "routes"):
            yield from _routes(route.routes)


def _request_models() -> list[tuple[str, Any]]:
    """Every request body: what FastAPI validates each route's body with, and every model of
    the API package (``/sdk/token`` parses its body itself, on the hot path)."""
    found: list[tuple[str, Any]] = [
        (route.path, param.field_info.annotation)
        for route in _routes(create_app().routes)
        for param in route.dependant.body_params
    ]
    package = Path(api_package.__file__).parent
    for module_file in sorted(package.glob("*.py")):
        if module_file.stem in {"__init__", "responses"}:  # responses are not requests
            continue
        module = importlib.import_module(f"{api_package.__name__}.{module_file.stem}")
        for name, value in vars(module).items():
            if (
                isinstance(value, type)
                and issubclass(value, BaseModel)
                and value.__module__ == module.__name__
            ):
                found.append((f"{module_file.stem}.{name}", value))
    return found


def _lax_nodes(schema: Any, path: str = "") -> list[str]:
    """Paths of int/float/bool nodes of a pydantic-core schema that are not strict."""
    lax = []
    if isinstance(schema, dict):
        kind = schema.get("type")
        if isinstance(kind, str) and kind in {"int", "bool", "float"} and not schema.get("strict"):
            lax.append(f"{path}:{kind}")
        for name, value in schema.items():
            lax += _lax_nodes(value, f"{path}/{name}")
    elif isinstance(schema, list):
        for i, value in enumerate(schema):
            lax += _lax_nodes(value, f"{path}[{i}]")
    return lax


def test_every_request_model_is_strict_about_numbers_and_booleans() -> None:
    models = _request_models()
    assert len(models) >= 10  # the walk found the bodies
    offenders = {}
    for path, annotation in models:
        schema = TypeAdapter(annotation).core_schema
        if lax := _lax_nodes(schema):
            offenders[path] = lax
    assert offenders == {}


async def test_booleans_are_refused_where_numbers_are_expected(
    vault: Vault, client: httpx.AsyncClient
) -> None:
    app, key = await make_app(vault)
    signed = SignedClient(client, key)
    secret = await secret_service.create_secret(vault, app, OPERATOR, template="openai")
    await secret_service.set_credential(vault, app, secret, {"token": "sk-test-123456"}, OPERATOR)
    path = f"/sdk/managed-secrets/{secret.id}/grants"
    for policy in ({"max_ttl_seconds": True}, {"default_ttl_seconds": True}):
        response = await signed.post(
            path, {"principal": {"type": "system"}, "grant_policy": policy}
        )
        assert response.status_code == 422, response.text
        assert response.json()["error"] == ErrorCode.INVALID_REQUEST.value
    grants = await grant_service.list_grants(vault, app)
    assert grants["total"] == 0  # no one-second grant was created
    for body in ({"offset": False}, {"limit": True}, {"limit": "5"}, {"offset": 1.5}):
        response = await signed.post("/sdk/grants/list", body)
        assert response.status_code == 422, (body, response.text)
    response = await signed.post("/sdk/auth/poll", {"session_token": "x", "wait_ms": True})
    assert response.status_code == 422, response.text
    response = await signed.post("/sdk/oauth/connect/session", {"switch_account": 1})
    assert response.status_code == 422, response.text
    # The controls: real numbers are accepted.
    response = await signed.post(
        path, {"principal": {"type": "system"}, "grant_policy": {"max_ttl_seconds": 3600}}
    )
    assert response.status_code == 200, response.text
    response = await signed.post("/sdk/grants/list", {"offset": 0, "limit": 5})
    assert response.status_code == 200, response.text
