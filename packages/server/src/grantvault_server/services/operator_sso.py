"""Single sign-on for operators (issue 12): the portal as an OIDC client of the owner's IdP.

Settings (``GRANTVAULT_OPERATOR_SSO_*``): the issuer, the portal's client id and secret, the
claim that lists groups, a map of groups to roles, and optionally the email domains allowed.

Flow and the rule each step enforces (the pieces are the sign-in broker's: OIDC discovery
(``outbound.oidc``), PKCE and the code exchange (``outbound.oauth2``), ID-token verification
(``identity.verify`` with the JWKS cache of ``vault.identity``)):

1. :func:`start`: a random ``state`` and ``nonce`` and a PKCE S256 verifier, sealed with the
   vault's barrier into a cookie of this browser (HttpOnly, ``SameSite=Lax`` so the IdP's
   redirect back carries it); nothing is stored server-side until the answer comes back.
   The flow lives :func:`flow_ttl` (10 minutes at most).
2. :func:`finish`: the answer's ``state`` must equal the one in this browser's cookie
   (another browser has another cookie, or none); the state is then claimed exactly once in
   the database (``request_nonces``, shared by every replica), so a replayed answer is
   refused; ``iss`` (RFC 9207), when sent, must be the issuer. The code is exchanged once
   with the verifier; the ID token must be signed by a key of the issuer's JWKS, with
   ``iss`` = the issuer, ``aud`` containing the client id (``azp`` = it when there are
   several), the flow's ``nonce``, and the usual time rules.
3. The groups claim is mapped to the **highest** role of the role map; no mapped group, an
   email outside the allowed domains, or a disabled operator: refused with a clear page and
   an ``operator.sign_in_failed`` audit row. The operator is found by ``sso_subject``
   (``"<issuer> <sub>"``) or created just in time (``operator.created``, the IdP as actor),
   and their role follows the IdP at every sign-in (``operator.updated``). A new operator
   never takes over an existing account of the same name: the name gets a suffix.

An SSO sign-in asks for no TOTP code: the IdP authenticated the operator (its own second
factor applies). The ID token and the client secret are never stored, logged or audited.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import re
import secrets
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlencode

import sqlalchemy as sa

from grantvault.types.errors import ErrorCode
from grantvault_server.audit.chain import AuditRecord
from grantvault_server.audit.events import SYSTEM_CHAIN, AuditEvent, Outcome
from grantvault_server.config import Settings
from grantvault_server.crypto.barrier import BarrierError, aad_for
from grantvault_server.errors import InvalidInput, VaultError
from grantvault_server.identity.discovery import check_algorithms
from grantvault_server.identity.verify import (
    IdpUnreachable,
    TokenRejected,
    VerifyPolicy,
    nonce_matches,
    verify_token,
)
from grantvault_server.outbound import oauth2
from grantvault_server.outbound.http import MAX_DOCUMENT_BYTES, OutboundError
from grantvault_server.outbound.oidc import DiscoveryError, discover
from grantvault_server.outbound.urls import UrlRefused
from grantvault_server.services import nonces, operators as operator_service
from grantvault_server.services.operators import ROLES, Operator, Role
from grantvault_server.services.vault import Vault
from grantvault_server.storage.tables import NO_APP, operators

CALLBACK_PATH = "/portal/sso/callback"
#: The namespace of claimed states in ``request_nonces`` (no API key has this id).
NONCE_KEY = "operator-sso"
MAX_FLOW = timedelta(minutes=10)
EXCHANGE_TIMEOUT_S = 10.0
SCOPE = "openid email profile"
_RANK: dict[str, int] = {"auditor": 0, "admin": 1, "owner": 2}
_NAME_CHARS = re.compile(r"[^a-z0-9._-]+")
MAX_COOKIE = 2048


class SsoRefused(Exception):
    """The sign-in cannot go on: ``error`` is what the page shows (never a token)."""

    def __init__(self, error: VaultError) -> None:
        super().__init__(error.message)
        self.error = error


def _refused(message: str, code: ErrorCode = ErrorCode.LOGIN_FAILED) -> SsoRefused:
    return SsoRefused(VaultError(code, message))


def _again(message: str) -> SsoRefused:
    return _refused(f"{message} Start again from the sign-in page.")


@dataclass(frozen=True)
class SsoConfig:
    issuer: str
    client_id: str
    groups_claim: str
    role_map: dict[str, Role]
    allowed_domains: frozenset[str]


def config_of(settings: Settings) -> SsoConfig | None:
    """The single sign-on configuration, or ``None`` when it is not set up."""
    if not settings.operator_sso_issuer or not settings.operator_sso_client_id:
        return None
    return SsoConfig(
        issuer=settings.operator_sso_issuer,
        client_id=settings.operator_sso_client_id,
        groups_claim=settings.operator_sso_groups_claim,
        role_map=dict(settings.operator_sso_role_map),
        allowed_domains=frozenset(
            d.lower().lstrip("@") for d in settings.operator_sso_allowed_domains
        ),
    )


def configured(settings: Settings) -> bool:
    return config_of(settings) is not None


def flow_ttl(vault: Vault) -> timedelta:
    """10 minutes, or less if claimed states are kept for less (twice the clock skew)."""
    return min(MAX_FLOW, timedelta(seconds=2 * vault.settings.clock_skew_seconds))


def redirect_uri(vault: Vault) -> str:
    return vault.settings.effective_public_base_url + CALLBACK_PATH


def _require(vault: Vault) -> SsoConfig:
    config = config_of(vault.settings)
    if config is None:
        raise _refused("Single sign-on is not configured on this vault.", ErrorCode.NOT_FOUND)
    return config


async def _provider(vault: Vault, config: SsoConfig) -> dict[str, Any]:
    try:
        return await discover(
            vault.http,
            config.issuer,
            required=("authorization_endpoint", "token_endpoint", "jwks_uri"),
        )
    except DiscoveryError:
        raise _refused(
            "The single sign-on provider could not be reached or is misconfigured; try again "
            "shortly or sign in with a password.",
            ErrorCode.IDP_UNAVAILABLE,
        ) from None


def _cookie_aad() -> bytes:
    return aad_for("operator_sso", NO_APP, "flow", "cookie")


@dataclass(frozen=True)
class Started:
    url: str
    #: The sealed flow, for the browser's cookie (opaque; the barrier's ciphertext).
    cookie: str


async def start(vault: Vault) -> Started:
    """Step 1: the IdP's authorization URL and the sealed flow for this browser's cookie."""
    config = _require(vault)
    doc = await _provider(vault, config)
    state = secrets.token_urlsafe(32)
    nonce = secrets.token_urlsafe(24)
    verifier, challenge = oauth2.pkce_pair()
    expires = vault.clock.time() + flow_ttl(vault).total_seconds()
    sealed = vault.barrier.encrypt(
        json.dumps({"s": state, "n": nonce, "v": verifier, "e": expires}).encode(),
        _cookie_aad(),
    )
    params = {
        "response_type": "code",
        "client_id": config.client_id,
        "redirect_uri": redirect_uri(vault),
        "scope": SCOPE,
        "state": state,
        "nonce": nonce,
        "code_challenge": challenge,
        "code_challenge_method": "S256",
    }
    endpoint = str(doc["authorization_endpoint"])
    url = endpoint + ("&" if "?" in endpoint else "?") + urlencode(params)
    return Started(url, base64.urlsafe_b64encode(sealed).decode().rstrip("="))


@dataclass(frozen=True)
class _Flow:
    state: str
    nonce: str
    verifier: str
    expires: float


def _open(vault: Vault, cookie: str | None) -> _Flow:
    if not cookie or len(cookie) > MAX_COOKIE:
        raise _again("This sign-in was started in another browser, or it expired.")
    try:
        blob = base64.urlsafe_b64decode(cookie + "=" * (-len(cookie) % 4))
        data = json.loads(vault.barrier.decrypt(blob, _cookie_aad()))
        flow = _Flow(str(data["s"]), str(data["n"]), str(data["v"]), float(data["e"]))
    except (BarrierError, binascii.Error, ValueError, KeyError, TypeError):
        raise _again("This sign-in was started in another browser, or it expired.") from None
    return flow


def _single(params: list[tuple[str, str]], name: str) -> str | None:
    values = [v for k, v in params if k == name]
    if len(values) > 1:
        raise _again(f"The sign-in answer repeats {name!r}.")
    return values[0] if values else None


@dataclass(frozen=True)
class Signed:
    """A finished single sign-on: the operator, who now gets a portal session."""

    operator: Operator
    created: bool


async def finish(
    vault: Vault, params: list[tuple[str, str]], cookie: str | None, *, address: str | None
) -> Signed:
    """Steps 2 and 3, at the redirect URI; raises :class:`SsoRefused` with the page's text."""
    config = _require(vault)
    state = _single(params, "state")
    code = _single(params, "code")
    error = _single(params, "error")
    iss = _single(params, "iss")
    flow = _open(vault, cookie)
    if not state or not hmac.compare_digest(state.encode(), flow.state.encode()):
        raise _again("This sign-in answer does not belong to this browser's sign-in.")
    if vault.clock.time() >= flow.expires:
        raise _again("This sign-in has expired.")
    claim = hashlib.sha256(f"operator-sso:{flow.state}".encode()).hexdigest()
    if not await nonces.claim_nonce(vault, NONCE_KEY, claim, vault.clock.now()):
        raise _again("This sign-in answer was already used.")
    if iss is not None and iss != config.issuer:
        raise _again("The sign-in answer comes from another issuer.")
    if error is not None or not code:
        raise _refused(
            "The identity provider did not sign you in"
            + (" (declined)." if error == "access_denied" else ".")
            + " Start again from the sign-in page.",
            ErrorCode.FORBIDDEN,
        )
    if len(code) > 2048:
        raise _again("The sign-in answer is malformed.")
    doc = await _provider(vault, config)
    id_token = await _exchange(vault, config, doc, code, flow.verifier)
    claims = await _verified(vault, config, doc, id_token, flow.nonce)
    return await _sign_in(vault, config, claims, address)


def _client_secret(vault: Vault) -> str | None:
    settings = vault.settings
    if settings.operator_sso_client_secret is not None:
        return settings.operator_sso_client_secret.get_secret_value()
    path = settings.operator_sso_client_secret_file
    if path is None:
        return None
    try:
        return path.read_text().strip()
    except OSError:
        raise _refused(
            "The single sign-on client secret file cannot be read; ask the vault's owner.",
            ErrorCode.IDP_UNAVAILABLE,
        ) from None


async def _exchange(
    vault: Vault, config: SsoConfig, doc: dict[str, Any], code: str, verifier: str
) -> str:
    secret = _client_secret(vault)
    try:
        method = (
            oauth2.auth_method_for(doc.get("token_endpoint_auth_methods_supported"))
            if secret is not None
            else "client_secret_basic"
        )
    except oauth2.UnsupportedAuthMethods:
        raise _refused(
            "The identity provider supports neither client_secret_basic nor client_secret_post.",
            ErrorCode.IDP_UNAVAILABLE,
        ) from None
    failed = _refused(
        "The identity provider did not issue an ID token; start again from the sign-in page.",
        ErrorCode.IDP_UNAVAILABLE,
    )
    try:
        answer = await oauth2.exchange_code(
            vault.http,
            str(doc["token_endpoint"]),
            oauth2.ClientAuth(config.client_id, secret, method),
            code=code,
            redirect_uri=redirect_uri(vault),
            verifier=verifier,
            timeout_s=EXCHANGE_TIMEOUT_S,
            max_bytes=MAX_DOCUMENT_BYTES,
        )
        body = answer.json() if answer.status == 200 else None
    except (UrlRefused, OutboundError, ValueError, RecursionError):
        raise failed from None
    id_token = body.get("id_token") if isinstance(body, dict) else None
    if not isinstance(id_token, str):
        raise failed
    return id_token


async def _verified(
    vault: Vault, config: SsoConfig, doc: dict[str, Any], id_token: str, nonce: str
) -> dict[str, Any]:
    algorithms = check_algorithms(doc.get("id_token_signing_alg_values_supported") or ["RS256"])
    policy = VerifyPolicy(
        issuer=config.issuer,
        audiences=(config.client_id,),
        algorithms=frozenset(algorithms or ("RS256",)),
        max_lifetime_s=vault.settings.user_token_max_lifetime_seconds,
    )
    try:
        claims = await verify_token(
            id_token,
            policy,
            vault.identity.jwks_for(str(doc["jwks_uri"])),
            None,
            now=vault.clock.time(),
        )
    except TokenRejected as exc:
        raise _again(f"The identity provider's ID token was refused: {exc}.") from None
    except IdpUnreachable:
        raise _refused(
            "The identity provider's signing keys could not be fetched; try again shortly.",
            ErrorCode.IDP_UNAVAILABLE,
        ) from None
    if not nonce_matches(claims, nonce):
        raise _again("The ID token does not belong to this sign-in (nonce).")
    aud = claims.get("aud")
    if isinstance(aud, list) and len(aud) > 1 and claims.get("azp") != config.client_id:
        raise _again("The ID token was issued to another client.")
    sub = claims.get("sub")
    if not isinstance(sub, str) or not 0 < len(sub) <= 255:
        raise _again("The ID token has no subject.")
    return claims


def groups_of(claims: dict[str, Any], claim: str) -> list[str]:
    """The groups the ID token lists (a list of strings, or one string)."""
    value = claims.get(claim)
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return [g for g in value if isinstance(g, str)][:200]
    return []


def role_for(groups: list[str], role_map: dict[str, Role]) -> Role | None:
    """The highest role any of ``groups`` maps to (``None``: no mapped group)."""
    best: Role | None = None
    for group in groups:
        role = role_map.get(group)
        if role is not None and (best is None or _RANK[role] > _RANK[best]):
            best = role
    return best


def _domain_ok(config: SsoConfig, claims: dict[str, Any]) -> bool:
    if not config.allowed_domains:
        return True
    email = claims.get("email")
    if not isinstance(email, str) or claims.get("email_verified") is not True or "@" not in email:
        return False
    return email.rsplit("@", 1)[1].lower() in config.allowed_domains


def _actor(config: SsoConfig, sub: str) -> dict[str, Any]:
    return {"type": "idp", "issuer": config.issuer, "subject": sub, "via": "operator_sso"}


async def _audit(
    vault: Vault,
    event: AuditEvent,
    actor: dict[str, Any],
    details: dict[str, Any],
    outcome: Outcome = Outcome.SUCCESS,
    reason: str | None = None,
) -> None:
    async with vault.db.write() as conn:
        await vault.audit.append(
            conn,
            [
                AuditRecord(
                    chain=SYSTEM_CHAIN,
                    event=event,
                    outcome=outcome,
                    actor=actor,
                    reason=reason,
                    details=details,
                    occurred_at=vault.clock.now(),
                )
            ],
        )


async def _refuse(
    vault: Vault,
    config: SsoConfig,
    sub: str,
    address: str | None,
    reason: str,
    message: str,
    groups: list[str],
) -> SsoRefused:
    await _audit(
        vault,
        AuditEvent.OPERATOR_SIGN_IN_FAILED,
        {"type": "anonymous", "address": address},
        {
            "step": "sso",
            "issuer": config.issuer,
            "subject": sub,
            "groups": groups[:20],
            "address": address,
        },
        Outcome.DENIED,
        reason,
    )
    return _refused(message, ErrorCode.FORBIDDEN)


def _base_name(claims: dict[str, Any], sub: str) -> str:
    for candidate in (claims.get("preferred_username"), claims.get("email"), sub):
        if isinstance(candidate, str) and candidate:
            text = candidate.split("@", 1)[0].lower()
            name = _NAME_CHARS.sub("-", text).strip("._-")[:56]
            if name and operator_service.NAME.match(name):
                return name
    return "sso-" + hashlib.sha256(sub.encode()).hexdigest()[:12]


async def _find(vault: Vault, subject: str) -> Any:
    async with vault.db.read() as conn:
        return (
            await conn.execute(sa.select(operators).where(operators.c.sso_subject == subject))
        ).first()


async def _create(
    vault: Vault, config: SsoConfig, claims: dict[str, Any], subject: str, role: Role
) -> Operator:
    base = _base_name(claims, str(claims["sub"]))
    actor = _actor(config, str(claims["sub"]))
    for attempt in range(20):
        name = base if attempt == 0 else f"{base}-{attempt + 1}"
        if attempt >= 10:
            name = f"{base}-{uuid.uuid4().hex[:6]}"
        try:
            return await operator_service.create_operator(
                vault, name, role, actor=actor, sso_subject=subject
            )
        except VaultError as exc:
            if exc.code is not ErrorCode.ALREADY_EXISTS:
                raise
            found = await _find(vault, subject)  # a concurrent first sign-in of the same person
            if found is not None:
                return operator_service.operator_from_row(found)
    raise _refused("No free operator name could be found; ask an owner.", ErrorCode.ALREADY_EXISTS)


async def _sign_in(
    vault: Vault, config: SsoConfig, claims: dict[str, Any], address: str | None
) -> Signed:
    sub = str(claims["sub"])
    subject = f"{config.issuer} {sub}"
    groups = groups_of(claims, config.groups_claim)
    if not _domain_ok(config, claims):
        raise await _refuse(
            vault,
            config,
            sub,
            address,
            "sso_domain_not_allowed",
            "Your account's email domain may not sign in to this vault.",
            groups,
        )
    role = role_for(groups, config.role_map)
    if role is None:
        raise await _refuse(
            vault,
            config,
            sub,
            address,
            "sso_no_role",
            "You signed in at the identity provider, but none of your groups gives a role in "
            "this vault. Ask the vault's owner to add you to a group mapped to a role.",
            groups,
        )
    row = await _find(vault, subject)
    created = row is None
    if row is None:
        op = await _create(vault, config, claims, subject, role)
    else:
        op = operator_service.operator_from_row(row)
    if op.disabled:
        raise await _refuse(
            vault,
            config,
            sub,
            address,
            "operator_disabled",
            "This operator account is disabled. Ask an owner.",
            groups,
        )
    if op.role != role:
        try:
            op = await operator_service.update_operator(
                vault, op.id, actor=_actor(config, sub), role=role
            )
        except InvalidInput:
            raise await _refuse(
                vault,
                config,
                sub,
                address,
                "last_owner",
                "Your groups at the identity provider no longer make you an owner, and you are "
                "the vault's last owner. Ask for the owner group back, or have another owner "
                "created first.",
                groups,
            ) from None
    await _record_success(vault, op, address, config)
    return Signed(op, created)


async def _record_success(
    vault: Vault, op: Operator, address: str | None, config: SsoConfig
) -> None:
    now: datetime = vault.clock.now()
    async with vault.db.write() as conn:
        await conn.execute(
            sa.update(operators).where(operators.c.id == op.id).values(last_login_at=now)
        )
        await vault.audit.append(
            conn,
            [
                AuditRecord(
                    chain=SYSTEM_CHAIN,
                    event=AuditEvent.OPERATOR_SIGNED_IN,
                    outcome=Outcome.SUCCESS,
                    actor={
                        "type": "operator_account",
                        "operator_id": op.id,
                        "name": op.name,
                        "via": "portal",
                    },
                    details={
                        "operator_id": op.id,
                        "method": "sso",
                        "issuer": config.issuer,
                        "role": op.role,
                        "address": address,
                    },
                    occurred_at=now,
                )
            ],
        )


__all__ = [
    "CALLBACK_PATH",
    "ROLES",
    "Signed",
    "SsoConfig",
    "SsoRefused",
    "Started",
    "config_of",
    "configured",
    "finish",
    "flow_ttl",
    "groups_of",
    "role_for",
    "start",
]
