"""Shared pieces of the identity tests (no tests here): the real OIDC peer as the app's IdP,
logins by HTTP, and tokens signed with the peer's own keys.

The peer is started with ``PEER_JWKS_FILE``, so its private signing keys are on disk: tests
can sign tokens the peer never issued (a groups claim, no ``exp``, a future ``nbf``) with a
key that *is* in the peer's JWKS. Those are the controls that make the negative cases mean
something: the same forging path yields a token the vault accepts when nothing is wrong.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from grantvault_server.services.apps import App
from grantvault_server.services.identity import idp as idp_service
from grantvault_server.services.vault import Vault

from .conftest import OPERATOR
from .peer import BASIC_CLIENT, VAULT_BASE_URL, Peer, follow_to, query_of, start_peer

CALLBACK = f"{VAULT_BASE_URL}/sdk/auth/callback"


@dataclass
class IdpPeer:
    """A running peer whose private keys the test knows."""

    peer: Peer
    jwks_file: Path

    @property
    def issuer(self) -> str:
        return self.peer.issuer

    def private_jwks(self) -> list[dict[str, Any]]:
        keys: list[dict[str, Any]] = json.loads(self.jwks_file.read_text())["keys"]
        return keys

    def signing_key(self, alg: str = "RS256") -> tuple[str, Any]:
        """(kid, private key) of the peer's key for ``alg`` (the first, i.e. newest)."""
        for jwk in self.private_jwks():
            if jwk["alg"] == alg:
                return jwk["kid"], jwt.PyJWK(jwk).key
        raise AssertionError(f"the peer has no {alg} key")

    def claims(self, **overrides: Any) -> dict[str, Any]:
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": self.issuer,
            "aud": BASIC_CLIENT[0],
            "sub": "alice",
            "iat": now,
            "exp": now + 300,
        }
        claims.update(overrides)
        return {k: v for k, v in claims.items() if v is not None}

    def forge(
        self, claims: dict[str, Any] | None = None, *, alg: str = "RS256", **headers: Any
    ) -> str:
        """A token signed with the peer's real key (so only what the test changed is wrong)."""
        kid, key = self.signing_key(alg)
        return jwt.encode(
            claims if claims is not None else self.claims(),
            key,
            algorithm=alg,
            headers={"kid": kid, **headers},
        )

    def login(
        self,
        user: str = "alice",
        client: tuple[str, str] = BASIC_CLIENT,
        **extra: str,
    ) -> dict[str, Any]:
        """A real authorization-code + PKCE login at the peer; returns the token response."""
        verifier = secrets.token_urlsafe(48)
        challenge = (
            base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest())
            .rstrip(b"=")
            .decode()
        )
        params = {
            "response_type": "code",
            "client_id": client[0],
            "redirect_uri": CALLBACK,
            "scope": "openid email profile",
            "state": secrets.token_urlsafe(16),
            "nonce": secrets.token_urlsafe(16),
            "code_challenge": challenge,
            "code_challenge_method": "S256",
            "login_hint": user,
            **extra,
        }
        answer = query_of(follow_to(f"{self.issuer}/auth?{urlencode(params)}", CALLBACK))
        assert "code" in answer, answer
        response = httpx.post(
            f"{self.issuer}/token",
            data={
                "grant_type": "authorization_code",
                "code": answer["code"],
                "redirect_uri": CALLBACK,
                "code_verifier": verifier,
            },
            auth=client,
            timeout=10,
        )
        response.raise_for_status()
        tokens: dict[str, Any] = response.json()
        return tokens

    def id_token(self, user: str = "alice", client: tuple[str, str] = BASIC_CLIENT) -> str:
        token: str = self.login(user, client)["id_token"]
        return token

    def user_access_token_jwt(self, user: str = "alice") -> str:
        """An RFC 9068 JWT access token issued *for a user* (authorization code + resource):
        ``sub`` is the user, ``client_id`` the client."""
        verifier = secrets.token_urlsafe(48)
        challenge = (
            base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest())
            .rstrip(b"=")
            .decode()
        )
        params = {
            "response_type": "code",
            "client_id": BASIC_CLIENT[0],
            "redirect_uri": CALLBACK,
            "scope": "openid api:read",
            "state": secrets.token_urlsafe(16),
            "nonce": secrets.token_urlsafe(16),
            "code_challenge": challenge,
            "code_challenge_method": "S256",
            "login_hint": user,
            "resource": "urn:peer:api",
        }
        answer = query_of(follow_to(f"{self.issuer}/auth?{urlencode(params)}", CALLBACK))
        response = httpx.post(
            f"{self.issuer}/token",
            data={
                "grant_type": "authorization_code",
                "code": answer["code"],
                "redirect_uri": CALLBACK,
                "code_verifier": verifier,
                "resource": "urn:peer:api",
            },
            auth=BASIC_CLIENT,
            timeout=10,
        )
        response.raise_for_status()
        token: str = response.json()["access_token"]
        return token

    def access_token_jwt(self) -> str:
        """An RFC 9068 JWT access token (``typ: at+jwt``, ``aud: urn:peer:api``) the client
        got for itself (client credentials): ``sub`` is the client, no end user."""
        response = httpx.post(
            f"{self.issuer}/token",
            data={
                "grant_type": "client_credentials",
                "resource": "urn:peer:api",
                "scope": "api:read",
            },
            auth=BASIC_CLIENT,
            timeout=10,
        )
        response.raise_for_status()
        token: str = response.json()["access_token"]
        return token

    def stop(self) -> None:
        self.peer.stop()


def start_idp_peer(folder: Path, **env: str | int) -> IdpPeer:
    jwks_file = folder / f"jwks-{uuid.uuid4().hex[:8]}.json"
    peer = start_peer(PEER_JWKS_FILE=str(jwks_file), **env)
    return IdpPeer(peer, jwks_file)


@pytest.fixture(scope="session", name="idp_peer")
def idp_peer_fixture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[IdpPeer]:
    """One IdP for the tests that neither rotate its keys nor stop it."""
    peer = start_idp_peer(tmp_path_factory.mktemp("idp"))
    try:
        yield peer
    finally:
        peer.stop()


def attacker_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


async def configure(
    vault: Vault,
    app: App,
    peer: IdpPeer,
    *,
    audience: str = BASIC_CLIENT[0],
    groups_claim: str | None = "groups",
    signin: bool = False,
    **settings: Any,
) -> dict[str, Any]:
    result = await idp_service.set_idp(
        vault,
        app,
        OPERATOR,
        idp_service.IdpSettings(
            issuer=peer.issuer,
            audience=audience,
            groups_claim=groups_claim,
            signin_client_id=BASIC_CLIENT[0] if signin else None,
            signin_client_secret=BASIC_CLIENT[1] if signin else None,
            **settings,
        ),
    )
    return result


class FakeClock:
    """The identity state's monotonic clock, stepped by hand (cooldowns, TTLs)."""

    def __init__(self, vault: Vault) -> None:
        self.now = 1000.0
        vault.identity.clock = lambda: self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds
