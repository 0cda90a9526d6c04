"""The vault's clock: expiry is decided by ``vault.clock``, so a test moves time instead of
sleeping (and a grant, a key or a JWT expires exactly when that clock says so)."""

from __future__ import annotations

from datetime import timedelta

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from grantvault_server.identity import verify
from grantvault_server.identity.jwks import VerificationKey
from grantvault_server.services import apps as app_service
from grantvault_server.services.vault import Vault
from grantvault_server.services.vault_time import SYSTEM_CLOCK, FakeClock
from tests.conftest import OPERATOR, SignedClient, make_app
from tests.test_tokens import _token_body

STRIPE = "https://api.stripe.com/v1/charges"


def test_fake_clock_moves_only_forward_and_keeps_its_views_together() -> None:
    clock = FakeClock()
    now, wall, mono = clock.now(), clock.time(), clock.monotonic()
    assert clock.now() == now  # it does not move by itself
    clock.advance(90, minutes=1)
    assert clock.now() - now == timedelta(seconds=150)
    assert clock.time() - wall == pytest.approx(150)
    assert clock.monotonic() - mono == pytest.approx(150)
    with pytest.raises(ValueError):
        clock.advance(-1)


async def test_the_vault_reads_the_system_clock_unless_told(vault: Vault) -> None:
    assert vault.clock is SYSTEM_CLOCK


async def test_a_grant_expires_when_the_vault_clock_passes_its_ttl(
    vault: Vault, client: httpx.AsyncClient, clock: FakeClock
) -> None:
    app, key = await make_app(vault)
    sc = SignedClient(client, key)
    from grantvault_server.services import secrets as secret_service

    secret = await secret_service.create_secret(vault, app, OPERATOR, template="stripe")
    await secret_service.set_credential(vault, app, secret, {"token": "sk_test_123456"}, OPERATOR)
    r = await sc.post(
        f"/sdk/managed-secrets/{secret.id}/grants",
        {"principal": {"type": "system"}, "grant_policy": {"max_ttl_seconds": 60}},
    )
    assert r.status_code == 200, r.text
    grant_id = r.json()["grant_id"]
    assert (await sc.post("/sdk/token", _token_body(grant_id, STRIPE))).status_code == 200
    clock.advance(59)
    assert (await sc.post("/sdk/token", _token_body(grant_id, STRIPE))).status_code == 200
    clock.advance(2)
    r = await sc.post("/sdk/token", _token_body(grant_id, STRIPE))
    assert r.status_code == 403 and r.json()["error"] == "grant_expired"


async def test_an_api_key_expires_on_the_vault_clock(
    vault: Vault, client: httpx.AsyncClient, clock: FakeClock
) -> None:
    app, _ = await make_app(vault)
    _, key = await app_service.create_key(
        vault, app, OPERATOR, expires_at=clock.now() + timedelta(hours=1)
    )
    sc = SignedClient(client, key)
    assert (await sc.post("/sdk/grants/list", {})).status_code == 200
    clock.advance(hours=1, seconds=1)
    r = await sc.post("/sdk/grants/list", {})
    assert r.status_code == 401, r.text


def test_jwt_times_are_checked_against_the_given_clock() -> None:
    private = ec.generate_private_key(ec.SECP256R1())
    key = VerificationKey(kid=None, algorithms=frozenset({"ES256"}), key=private.public_key())
    policy = verify.VerifyPolicy(
        issuer="https://idp.example", audiences=("aud",), algorithms=frozenset({"ES256"})
    )
    clock = FakeClock()
    now = int(clock.time())
    claims = {"iss": "https://idp.example", "aud": "aud", "sub": "u", "iat": now, "exp": now + 300}
    token = jwt.encode(claims, private, algorithm="ES256")
    assert verify.verify_with_key(token, key, "ES256", policy, clock.time())["sub"] == "u"
    clock.advance(300 + verify.LEEWAY_S)
    with pytest.raises(verify.TokenRejected, match="expired"):
        verify.verify_with_key(token, key, "ES256", policy, clock.time())
    early = jwt.encode({**claims, "nbf": now + 120}, private, algorithm="ES256")
    with pytest.raises(verify.TokenRejected, match="not valid yet"):
        verify.verify_with_key(early, key, "ES256", policy, now)
