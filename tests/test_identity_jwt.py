"""End-user JWT verification against the real OIDC peer: every case of security-cases §4F,
the JWKS cache rules, just-in-time users and group sync. SQLite and PostgreSQL."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import jwt
import pytest
import sqlalchemy as sa
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from grantvault.types.errors import ErrorCode
from grantvault_server.errors import VaultError
from grantvault_server.identity import jwks as jwks_module, verify
from grantvault_server.services.apps import App
from grantvault_server.services.identity import idp as idp_service
from grantvault_server.services.identity.service import resolve_user
from grantvault_server.services.vault import Vault
from grantvault_server.storage.tables import (
    app_group_members,
    app_groups,
    app_users,
    audit_events,
    identity_providers,
)

from .conftest import OPERATOR, make_app
from .peer import POST_CLIENT
from .test_identity_support import (
    FakeClock,
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


async def refused(
    vault: Vault, app: App, token: str, code: ErrorCode = ErrorCode.JWT_VALIDATION_ERROR
) -> VaultError:
    with pytest.raises(VaultError) as caught:
        await resolve_user(vault, app.id, token)
    assert caught.value.code is code, caught.value.message
    # The message says what to do and never quotes the token.
    assert not token or token[:40] not in caught.value.message
    return caught.value


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def fetches(vault: Vault, peer: IdpPeer) -> int:
    cache = vault.identity.jwks.get(f"{peer.issuer}/jwks")
    return 0 if cache is None else cache.fetch_count


# -- the happy path and what it creates -------------------------------------------------


async def test_real_id_token_creates_the_user_just_in_time(
    vault: Vault, app: App, idp_peer: IdpPeer
) -> None:
    token = idp_peer.id_token("bob")
    identity = await resolve_user(vault, app.id, token)
    assert identity.subject == "bob" and identity.groups == frozenset()
    assert uuid.UUID(identity.user_id)
    config = await idp_service.active_config(vault, app.id, fresh=True)
    assert config is not None and identity.idp_id == config.id
    # Same user again: same row; the mappings are locked by the first sign-in.
    assert (await resolve_user(vault, app.id, token)).user_id == identity.user_id
    async with vault.db.read() as conn:
        users = (await conn.execute(sa.select(app_users).where(app_users.c.app_id == app.id))).all()
        locked = (
            await conn.execute(sa.select(identity_providers.c.mappings_locked_at))
        ).scalar_one()
        events = (
            await conn.execute(
                sa.select(audit_events.c.event, audit_events.c.principal).where(
                    audit_events.c.chain == app.id
                )
            )
        ).all()
    assert [(u.subject, u.status) for u in users] == [("bob", "active")]
    assert locked is not None
    assert ("user.created", "user:bob") in [(e.event, e.principal) for e in events]


async def test_profile_and_groups_from_claims_synced_only_when_changed(
    vault: Vault, app: App, idp_peer: IdpPeer
) -> None:
    first = idp_peer.forge(
        idp_peer.claims(
            sub="carol",
            email="carol@example.test",
            name="Carol Tester",
            groups=["eng", "ops"],
        )
    )
    identity = await resolve_user(vault, app.id, first)
    assert identity.groups == {"eng", "ops"}
    assert (identity.email, identity.display_name) == ("carol@example.test", "Carol Tester")

    async def audit_count() -> int:
        async with vault.db.read() as conn:
            return int(
                (
                    await conn.execute(
                        sa.select(sa.func.count())
                        .select_from(audit_events)
                        .where(audit_events.c.chain == app.id)
                    )
                ).scalar_one()
            )

    before = await audit_count()
    again = idp_peer.forge(
        idp_peer.claims(sub="carol", groups="ops eng", email="carol@example.test")
    )
    assert (await resolve_user(vault, app.id, again)).groups == {"eng", "ops"}
    assert await audit_count() == before  # nothing changed: nothing written

    # A string claim (comma or space separated) works as well as a list.
    moved = idp_peer.forge(idp_peer.claims(sub="carol", groups="ops,sales", name="Carol T."))
    identity = await resolve_user(vault, app.id, moved)
    assert identity.groups == {"ops", "sales"} and identity.display_name == "Carol T."
    async with vault.db.read() as conn:
        members = (
            await conn.execute(
                sa.select(app_groups.c.external_id)
                .join(app_group_members, app_group_members.c.group_id == app_groups.c.id)
                .where(app_group_members.c.user_id == identity.user_id)
            )
        ).scalars()
        events = (
            await conn.execute(
                sa.select(audit_events.c.event, audit_events.c.details).where(
                    audit_events.c.chain == app.id, audit_events.c.seq > before
                )
            )
        ).all()
    assert sorted(members) == ["ops", "sales"]
    by_event = {e.event: e.details for e in events}
    assert by_event["group.member_added"]["groups"] == ["sales"]
    assert by_event["group.member_removed"]["groups"] == ["eng"]
    assert by_event["user.updated"]["changed"] == ["display_name"]  # names, not values
    assert "group.created" in by_event


async def test_verified_tokens_are_cached_for_the_hot_path(
    vault: Vault, app: App, idp_peer: IdpPeer, monkeypatch: pytest.MonkeyPatch
) -> None:
    token = idp_peer.id_token("dave")
    calls = []
    real = verify.verify_with_key

    def counting(*args: Any, **kwargs: Any) -> dict[str, Any]:
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(verify, "verify_with_key", counting)
    for _ in range(5):
        await resolve_user(vault, app.id, token)
    assert len(calls) == 1


async def test_no_idp_and_missing_user_claim(vault: Vault, idp_peer: IdpPeer, app: App) -> None:
    bare, _ = await make_app(vault)
    await refused(vault, bare, idp_peer.id_token(), ErrorCode.IDP_NOT_CONFIGURED)
    await refused(vault, app, idp_peer.forge(idp_peer.claims(sub=None)))
    await refused(vault, app, idp_peer.forge(idp_peer.claims(sub=["not", "a", "string"])))


# -- security-cases §4F -----------------------------------------------------------------


async def test_f1_alg_none(vault: Vault, app: App, idp_peer: IdpPeer) -> None:
    kid, _ = idp_peer.signing_key()
    payload = b64(json.dumps(idp_peer.claims()).encode())
    for alg in ("none", "None", "NONE"):
        header = b64(json.dumps({"alg": alg, "kid": kid, "typ": "JWT"}).encode())
        await refused(vault, app, f"{header}.{payload}.")
        await refused(vault, app, f"{header}.{payload}.c2ln")


async def test_f2_hs256_signed_with_the_public_key(
    vault: Vault, app: App, idp_peer: IdpPeer
) -> None:
    kid, private = idp_peer.signing_key()
    public = private.public_key()
    pem = public.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    jwk = json.dumps(
        {k: v for k, v in idp_peer.private_jwks()[0].items() if k in {"kty", "n", "e", "kid"}}
    ).encode()
    for secret in (pem, jwk):
        header = b64(json.dumps({"alg": "HS256", "kid": kid, "typ": "JWT"}).encode())
        body = b64(json.dumps(idp_peer.claims()).encode())
        signature = hmac.new(secret, f"{header}.{body}".encode(), hashlib.sha256).digest()
        await refused(vault, app, f"{header}.{body}.{b64(signature)}")


async def test_f3_wrong_issuer(vault: Vault, app: App, idp_peer: IdpPeer, tmp_path: Path) -> None:
    # Same key, the issuer spelled another way (a different issuer to OIDC).
    other = idp_peer.issuer.replace("127.0.0.1", "localhost")
    await refused(vault, app, idp_peer.forge(idp_peer.claims(iss=other)))
    await refused(vault, app, idp_peer.forge(idp_peer.claims(iss=idp_peer.issuer + "/")))
    # A real token of another real issuer.
    second = start_idp_peer(tmp_path)
    try:
        await refused(vault, app, second.id_token())
    finally:
        second.stop()


async def test_f4_audience_of_another_client(vault: Vault, app: App, idp_peer: IdpPeer) -> None:
    await refused(vault, app, idp_peer.id_token("erin", client=POST_CLIENT))
    await refused(vault, app, idp_peer.forge(idp_peer.claims(aud="someone-else")))
    await refused(vault, app, idp_peer.forge(idp_peer.claims(aud=None)))


async def test_f5_missing_exp_and_the_control(vault: Vault, app: App, idp_peer: IdpPeer) -> None:
    # The control: the same forging path with nothing wrong is accepted.
    assert (await resolve_user(vault, app.id, idp_peer.forge())).subject == "alice"
    await refused(vault, app, idp_peer.forge(idp_peer.claims(exp=None)))
    # ES256 (the peer's other key) verifies too; its kid cannot be used with RS256.
    assert (await resolve_user(vault, app.id, idp_peer.forge(alg="ES256"))).subject == "alice"


async def test_f6_times_beyond_the_leeway(vault: Vault, app: App, idp_peer: IdpPeer) -> None:
    now = int(time.time())
    leeway = verify.LEEWAY_S
    await refused(vault, app, idp_peer.forge(idp_peer.claims(exp=now - leeway - 5)))
    await refused(vault, app, idp_peer.forge(idp_peer.claims(nbf=now + leeway + 30)))
    await refused(vault, app, idp_peer.forge(idp_peer.claims(iat=now + leeway + 30)))
    # Within the leeway: accepted.
    ok = idp_peer.claims(exp=now - leeway + 20, nbf=now + leeway - 20, iat=now + leeway - 20)
    assert (await resolve_user(vault, app.id, idp_peer.forge(ok))).subject == "alice"


@pytest.mark.parametrize(("skew", "accepted"), [(600, False), (-420, False), (30, True)])
async def test_f6_skewed_issuer_clock(
    vault: Vault, tmp_path: Path, skew: int, accepted: bool
) -> None:
    # The peer's clock is off by `skew` seconds: its ID tokens (5-minute lifetime) are
    # issued in the future, or already expired, or within the leeway.
    peer = start_idp_peer(tmp_path, PEER_CLOCK_SKEW_S=skew)
    try:
        target, _ = await make_app(vault)
        await configure(vault, target, peer)
        token = peer.id_token("frank")
        if accepted:
            assert (await resolve_user(vault, target.id, token)).subject == "frank"
        else:
            error = await refused(vault, target, token)
            assert "expired" in error.message or "not valid yet" in error.message
    finally:
        peer.stop()


async def test_f7_id_token_and_access_token_are_not_interchangeable(
    vault: Vault, idp_peer: IdpPeer
) -> None:
    id_token = idp_peer.id_token("gina")
    access_token = idp_peer.user_access_token_jwt("gina")
    assert jwt.get_unverified_header(access_token)["typ"] == "at+jwt"
    for_ids, _ = await make_app(vault)
    await configure(vault, for_ids, idp_peer)  # aud = the client id: ID tokens
    for_api, _ = await make_app(vault)
    await configure(vault, for_api, idp_peer, audience="urn:peer:api")  # RFC 9068 tokens
    await refused(vault, for_ids, access_token)
    await refused(vault, for_api, id_token)
    # Each kind is accepted where it is expected.
    assert (await resolve_user(vault, for_ids.id, id_token)).subject == "gina"
    assert (await resolve_user(vault, for_api.id, access_token)).subject == "gina"
    # A token the client got for itself (client credentials: sub = client_id) names no
    # end user, whatever its audience (issue 9, item 8).
    machine = await refused(vault, for_api, idp_peer.access_token_jwt())
    assert "no end user" in machine.message
    # A logout token or other explicit type is refused even with the right audience.
    await refused(vault, for_ids, idp_peer.forge(typ="logout+jwt"))


class _AttackerJwks(BaseHTTPRequestHandler):
    hits: list[str] = []
    document = b"{}"

    def do_GET(self) -> None:
        type(self).hits.append(self.path)
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(type(self).document)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def attacker_server() -> Iterator[tuple[str, type[_AttackerJwks]]]:
    handler = type("Handler", (_AttackerJwks,), {"hits": []})
    server = HTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", handler
    finally:
        server.shutdown()
        server.server_close()


async def test_f8_jku_x5u_jwk_headers_are_ignored(
    vault: Vault, app: App, idp_peer: IdpPeer, attacker_server: tuple[str, Any]
) -> None:
    url, handler = attacker_server
    key = attacker_key()
    public_jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
    handler.document = json.dumps(
        {"keys": [{**public_jwk, "kid": "attacker", "alg": "RS256"}]}
    ).encode()
    claims = idp_peer.claims()
    for headers in (
        {"kid": "attacker", "jku": f"{url}/jwks.json"},
        {"kid": "attacker", "x5u": f"{url}/cert.pem"},
        {"kid": "attacker", "jwk": {**public_jwk, "kid": "attacker"}},
        # The peer's own kid, with the attacker's signature and key reference.
        {"kid": idp_peer.signing_key()[0], "jku": f"{url}/jwks.json"},
    ):
        await refused(vault, app, jwt.encode(claims, key, algorithm="RS256", headers=headers))
    assert handler.hits == []


async def test_f9_hostile_kids(vault: Vault, app: App, idp_peer: IdpPeer) -> None:
    FakeClock(vault)
    await resolve_user(vault, app.id, idp_peer.forge())  # warms the key cache
    warm = fetches(vault, idp_peer)
    key = attacker_key()
    for kid in (
        "../../../../dev/null",
        "/etc/passwd",
        "' OR '1'='1' --",
        "http://127.0.0.1:1/jwks",
        "x" * 257,
        "k" * 10_000,
    ):
        await refused(
            vault, app, jwt.encode(idp_peer.claims(), key, algorithm="RS256", headers={"kid": kid})
        )
    # The first unknown kid may refresh once (a new kid must verify at first sight); every
    # later one is within the unknown-kid cooldown: the whole batch cost one fetch.
    assert fetches(vault, idp_peer) <= warm + 1
    # Even an HS256 token "signed" with an empty key (what /dev/null would give) fails.
    await refused(
        vault,
        app,
        jwt.encode(
            idp_peer.claims(), "k" * 32, algorithm="HS256", headers={"kid": "../../dev/null"}
        ),
    )


async def test_f10_key_rotation_is_one_refresh(vault: Vault, tmp_path: Path) -> None:
    peer = start_idp_peer(tmp_path)
    try:
        FakeClock(vault)
        target, _ = await make_app(vault)
        await configure(vault, target, peer)
        old = peer.id_token("hank")
        await resolve_user(vault, target.id, old)
        assert fetches(vault, peer) == 1
        peer.peer.admin("rotate-keys")
        new = peer.id_token("hank")
        assert jwt.get_unverified_header(new)["kid"] != jwt.get_unverified_header(old)["kid"]
        # No clock step: a new kid refreshes at its first sight, whatever fetched the key
        # set just before (the unknown-kid cooldown counts only from unknown-kid refreshes).
        assert (await resolve_user(vault, target.id, new)).subject == "hank"
        assert fetches(vault, peer) == 2  # exactly one refresh
        # Old keys stay in the peer's JWKS (keep_old), so old tokens still verify.
        assert (await resolve_user(vault, target.id, old)).subject == "hank"
        assert fetches(vault, peer) == 2
    finally:
        peer.stop()


async def test_f11_a_flood_of_unknown_kids_fetches_once_per_cooldown(
    vault: Vault, app: App, idp_peer: IdpPeer
) -> None:
    clock = FakeClock(vault)
    await resolve_user(vault, app.id, idp_peer.forge())
    clock.advance(31)
    before = fetches(vault, idp_peer)
    key = attacker_key()
    claims = idp_peer.claims()
    started = time.perf_counter()
    for _ in range(1000):
        token = jwt.encode(claims, key, algorithm="RS256", headers={"kid": uuid.uuid4().hex})
        with pytest.raises(VaultError) as caught:
            await resolve_user(vault, app.id, token)
        assert caught.value.code is ErrorCode.JWT_VALIDATION_ERROR
    assert fetches(vault, idp_peer) == before + 1
    assert time.perf_counter() - started < 30
    clock.advance(31)
    await refused(vault, app, jwt.encode(claims, key, algorithm="RS256", headers={"kid": "again"}))
    assert fetches(vault, idp_peer) == before + 2


async def test_f12_jwks_down_cached_keys_still_verify(vault: Vault, tmp_path: Path) -> None:
    peer = start_idp_peer(tmp_path)
    try:
        clock = FakeClock(vault)
        target, _ = await make_app(vault)
        await configure(vault, target, peer)
        cold, _ = await make_app(vault)
        await configure(vault, cold, peer)
        token = peer.id_token("ivan")
        second = peer.forge(peer.claims(sub="ivan2"))
        await resolve_user(vault, target.id, token)
    finally:
        peer.stop()
    clock.advance(3600)  # the key cache expired and the JWKS endpoint is gone
    assert (await resolve_user(vault, target.id, second)).subject == "ivan2"
    assert (await resolve_user(vault, target.id, token)).subject == "ivan"
    assert fetches(vault, peer) == 2  # one failed refresh, then the cooldown holds
    await refused(
        vault,
        target,
        jwt.encode(peer.claims(), attacker_key(), algorithm="RS256", headers={"kid": "new"}),
    )
    # A vault that never saw the keys answers 503 (retry), not "bad token".
    vault.identity.jwks.clear()
    await refused(vault, cold, token, ErrorCode.IDP_UNAVAILABLE)


async def test_f13_removed_keys_stop_verifying_after_the_cache_expires(
    vault: Vault, tmp_path: Path
) -> None:
    peer = start_idp_peer(tmp_path)
    try:
        clock = FakeClock(vault)
        target, _ = await make_app(vault)
        await configure(vault, target, peer)
        old = peer.id_token("judy")
        await resolve_user(vault, target.id, old)
        peer.peer.admin("rotate-keys?keep_old=0")
        clock.advance(60)
        # Still within the cache's lifetime: the removed key is still trusted.
        assert (await resolve_user(vault, target.id, old)).subject == "judy"
        clock.advance(vault.identity.jwks_policy.ttl_s)
        await refused(vault, target, old)
        assert (await resolve_user(vault, target.id, peer.id_token("judy"))).subject == "judy"
    finally:
        peer.stop()


async def test_f14_oversized_and_malformed_tokens(
    vault: Vault, app: App, idp_peer: IdpPeer
) -> None:
    big = idp_peer.forge(idp_peer.claims(padding="x" * 20_000))
    started = time.perf_counter()
    error = await refused(vault, app, big)
    assert "16 KiB" in error.message
    await refused(vault, app, "a" * 1_000_000)
    assert time.perf_counter() - started < 1
    kid, key = idp_peer.signing_key()
    good = idp_peer.forge()
    header, payload, signature = good.split(".")
    for token in (
        "",
        "not-a-jwt",
        f"{header}.{payload}",
        f"{header}!.{payload}.{signature}",  # not base64url
        f"{header}.{payload}.{signature}.x.y",  # a JWE has five parts
        f"{b64(b'[1,2]')}.{payload}.{signature}",
        f"{b64(b'{not json')}.{payload}.{signature}",
    ):
        await refused(vault, app, token)
    # Duplicate JSON members, correctly signed with the peer's key: refused before use.
    exp = int(time.time()) + 300
    duplicated = (
        f'{{"iss":"{idp_peer.issuer}","aud":"vault-basic","sub":"alice","sub":"admin","exp":{exp}}}'
    ).encode()
    token = jwt.api_jws.PyJWS().encode(duplicated, key, algorithm="RS256", headers={"kid": kid})
    error = await refused(vault, app, token)
    assert "repeats" in error.message
    # crit extensions are refused.
    await refused(vault, app, idp_peer.forge(crit=["exp"]))


async def test_f15_discovery_issuer_must_match_exactly(vault: Vault, idp_peer: IdpPeer) -> None:
    target, _ = await make_app(vault)
    for issuer in (idp_peer.issuer + "/", idp_peer.issuer.replace("127.0.0.1", "localhost")):
        with pytest.raises(VaultError) as caught:
            await idp_service.set_idp(
                vault, target, OPERATOR, idp_service.IdpSettings(issuer=issuer, audience="x")
            )
        assert caught.value.code is ErrorCode.IDP_DISCOVERY_FAILED
    assert await idp_service.active_config(vault, target.id, fresh=True) is None
    with pytest.raises(VaultError) as caught:
        await idp_service.set_idp(
            vault,
            target,
            OPERATOR,
            idp_service.IdpSettings(issuer=idp_peer.issuer, audience="x", algorithms=("HS256",)),
        )
    assert caught.value.code is ErrorCode.INVALID_REQUEST


async def test_mappings_lock_after_the_first_sign_in(
    vault: Vault, app: App, idp_peer: IdpPeer
) -> None:
    def change(**kw: Any) -> idp_service.IdpSettings:
        return idp_service.IdpSettings(issuer=idp_peer.issuer, **kw)

    # Before any sign-in: free to change.
    await idp_service.set_idp(vault, app, OPERATOR, change(groups_claim="roles"))
    await resolve_user(vault, app.id, idp_peer.forge())
    with pytest.raises(VaultError) as caught:
        await idp_service.set_idp(vault, app, OPERATOR, change(user_id_claim="email"))
    assert caught.value.code is ErrorCode.IDP_MAPPINGS_LOCKED
    # The audience is not a mapping; the same settings again are not a change.
    await idp_service.set_idp(vault, app, OPERATOR, change(audience="vault-basic"))
    shown = await idp_service.set_idp(
        vault, app, OPERATOR, change(user_id_claim="email"), force=True
    )
    assert shown["claims"]["user_id"] == "email"
    identity = await resolve_user(
        vault, app.id, idp_peer.forge(idp_peer.claims(email="kim@example.test"))
    )
    assert identity.subject == "kim@example.test"
    async with vault.db.read() as conn:
        events = (
            (
                await conn.execute(
                    sa.select(audit_events.c.details).where(
                        audit_events.c.chain == app.id, audit_events.c.event == "idp.configured"
                    )
                )
            )
            .scalars()
            .all()
        )
    assert events[-1]["forced"] is True


async def test_the_algorithm_must_fit_the_key_its_kid_names(
    vault: Vault, app: App, idp_peer: IdpPeer
) -> None:
    es_kid, _ = idp_peer.signing_key("ES256")
    rs_kid, _ = idp_peer.signing_key("RS256")
    token = jwt.encode(
        idp_peer.claims(), attacker_key(), algorithm="RS256", headers={"kid": es_kid}
    )
    await refused(vault, app, token)
    # The peer's real EC key, announced as RS256 under the RSA key's kid: refused too.
    _, ec_key = idp_peer.signing_key("ES256")
    forged = jwt.encode(idp_peer.claims(), ec_key, algorithm="ES256", headers={"kid": rs_kid})
    await refused(vault, app, forged)


def test_only_public_signing_keys_of_sound_types_are_kept() -> None:
    rsa_public = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(attacker_key().public_key()))
    weak = json.loads(
        jwt.algorithms.RSAAlgorithm.to_jwk(
            rsa.generate_private_key(public_exponent=65537, key_size=1024).public_key()  # noqa: S505 - the weak key under test
        )
    )
    private = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(attacker_key()))
    keys = jwks_module.parse_key_set(
        {
            "keys": [
                {**rsa_public, "kid": "good"},
                {**rsa_public, "kid": "pinned", "alg": "PS256"},
                {**rsa_public, "kid": "enc", "use": "enc"},
                {**rsa_public, "kid": "hs", "alg": "HS256"},
                {**weak, "kid": "weak"},
                {**private, "kid": "private"},
                {"kty": "oct", "k": "c2VjcmV0", "kid": "oct"},
                {"kty": "EC", "crv": "P-256", "x": "bad", "y": "bad", "kid": "broken"},
                "not a key",
            ]
        }
    )
    assert set(keys) == {"good", "pinned"}
    assert keys["good"][0].algorithms == jwks_module.RSA_ALGORITHMS
    assert keys["pinned"][0].algorithms == {"PS256"}
