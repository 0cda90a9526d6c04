"""The Connect flow: sessions created by the app, completed by an end user in a browser.

Who may do what, and how each step is bound to the one before it:

* The app creates a session with a signed call and gets a bearer ``session_token`` (stored
  hashed, 10 minutes). The token opens the hosted pages once; the first browser to open it
  is bound to it by an HttpOnly cookie (stored hashed), and every later page and the OAuth
  callback require that cookie, so a leaked link or a forged callback in another browser
  does nothing.
* Each trip to the provider has its own ``state`` (stored hashed), PKCE verifier (stored
  encrypted), OIDC ``nonce`` and the exact redirect URI. A callback is exchanged at most once
  (an atomic ``used_at`` claim happens before the code is sent anywhere), the ``iss``
  parameter is checked against the provider's issuer (RFC 9207, the mix-up defence), and
  nothing is stored unless every check passed.
* The app learns the outcome by polling with its session token; the browser learns it from
  the result page, which redirects only to the session's own ``return_url`` and posts only to
  the session's own ``allowed_origin``.
"""

from __future__ import annotations

import hashlib
import logging
import re
import secrets
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import sqlalchemy as sa

from grantvault.types.errors import ErrorCode
from grantvault_server.audit.chain import AuditRecord
from grantvault_server.audit.events import AuditEvent, Outcome
from grantvault_server.crypto.barrier import aad_for
from grantvault_server.errors import InvalidInput, VaultError
from grantvault_server.oauth.client import (
    OAuthError,
    TokenSet,
    authorization_url,
    dotted,
    id_token_claims,
    pkce_pair,
    safe_error_code,
)
from grantvault_server.providers.oauth_schema import host_allowed
from grantvault_server.services import oauth_providers as providers
from grantvault_server.services.apps import App, _iso
from grantvault_server.services.grants import principal_label
from grantvault_server.services.oauth_tokens import store_new_tokens
from grantvault_server.services.vault import Vault
from grantvault_server.services.vault_time import utcnow
from grantvault_server.storage.db import Conn
from grantvault_server.storage.sql import for_update
from grantvault_server.storage.tables import (
    app_users,
    apps,
    connect_sessions,
    grants,
    oauth_flows,
)

log = logging.getLogger(__name__)

SESSION_TTL = timedelta(minutes=10)
#: Ten years: the longest grant lifetime anyone can choose.
MAX_TTL_S = 315_360_000
FLOW_TTL = timedelta(minutes=10)
TOKEN_PREFIX = "gvcs_"
#: Poll error codes the clients turn into ``ConnectConfigError``.
CONFIG_CODES = frozenset({"invalid_redirect_uri", "invalid_client", "unauthorized_client"})


def sha256(value: str) -> str:
    return hashlib.sha256(value.encode("utf-8")).hexdigest()


def verifier_aad(app_id: str, flow_id: str) -> bytes:
    return aad_for("oauth_flows", app_id, flow_id, "verifier_ct")


@dataclass(frozen=True)
class Principal:
    """Who the resulting grant belongs to: the app itself, or an end user of the app."""

    type: str = "system"
    id: str | None = None
    idp_id: str | None = None


# -- input checks ---------------------------------------------------------------------------


def check_return_url(url: str, allow_http_hosts: list[str]) -> str:
    """An absolute https URL (http only for operator-allowed test hosts), no credentials."""
    if len(url) > 2048 or any(ord(c) < 0x21 for c in url):
        raise InvalidInput("return_url must be an absolute URL of at most 2048 characters.")
    parts = urlsplit(url)
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise InvalidInput("return_url must be an absolute https URL.")
    if parts.scheme == "http" and parts.hostname not in allow_http_hosts:
        raise InvalidInput("return_url must use https.")
    if parts.username is not None or parts.password is not None:
        raise InvalidInput("return_url must not contain user information.")
    return url


def check_origin(origin: str, allow_http_hosts: list[str]) -> str:
    """An exact web origin (``scheme://host[:port]``), the only target of ``postMessage``."""
    origin = origin[:-1] if origin.endswith("/") else origin
    parts = urlsplit(origin)
    if (
        parts.scheme not in ("https", "http")
        or not parts.hostname
        or parts.path
        or parts.query
        or parts.fragment
        or "@" in parts.netloc
        or "*" in origin
    ):
        raise InvalidInput(
            "allowed_origin must be an exact origin such as https://app.example.com "
            "(no path, no wildcard)."
        )
    if parts.scheme == "http" and parts.hostname not in allow_http_hosts:
        raise InvalidInput("allowed_origin must use https.")
    return origin


@dataclass(frozen=True)
class SessionRequest:
    allowed_providers: list[str] | None = None
    return_url: str | None = None
    allowed_origin: str | None = None
    metadata: dict[str, Any] | None = None
    max_ttl_seconds: int | None = None
    default_ttl_seconds: int | None = None
    required_scopes: dict[str, list[str]] | None = None
    switch_account: bool = False
    repair_grant_id: str | None = None
    direct: bool = False


async def create_session(
    vault: Vault, app: App, actor: dict[str, Any], req: SessionRequest, principal: Principal
) -> dict[str, Any]:
    """Create a Connect session; returns the wire ``ConnectSession``."""
    allow_http = list(vault.settings.allow_http_hosts)
    return_url = check_return_url(req.return_url, allow_http) if req.return_url else None
    origin = check_origin(req.allowed_origin, allow_http) if req.allowed_origin else None
    if (
        req.max_ttl_seconds is not None
        and req.default_ttl_seconds is not None
        and req.default_ttl_seconds > req.max_ttl_seconds
    ):
        raise InvalidInput(
            "grant_policy.default_ttl_seconds cannot exceed grant_policy.max_ttl_seconds."
        )
    async with vault.db.read() as conn:
        configured = {c.provider_id: c for c in await providers.list_configs(conn, app.id)}
        if req.allowed_providers is None:
            chosen = sorted(configured)
            if not chosen:
                raise VaultError(
                    ErrorCode.PROVIDER_NOT_CONFIGURED,
                    "This app has no OAuth provider configured; add one with "
                    "`grantvault providers add`.",
                )
        else:
            chosen = []
            for raw in req.allowed_providers:
                pid = raw.strip().lower()
                if pid not in configured:
                    raise VaultError(
                        ErrorCode.PROVIDER_NOT_CONFIGURED,
                        f"Provider {pid!r} is not configured for this app; add it with "
                        "`grantvault providers add` or remove it from allowed_providers.",
                        provider_id=pid,
                    )
                if pid not in chosen:
                    chosen.append(pid)
        required: dict[str, list[str]] = {}
        for pid, scopes in (req.required_scopes or {}).items():
            key = pid.lower()
            if key not in chosen:
                raise InvalidInput(
                    f"required_scopes names {pid!r}, which this session does not allow."
                )
            cfg = configured[key]
            refused = [s for s in scopes if not cfg.scope_allowed(s)]
            if refused:
                raise VaultError(
                    ErrorCode.SCOPE_NOT_ALLOWED,
                    f"Scopes not allowed for {key}: {', '.join(refused)}. Add them to the "
                    "provider's allowed scopes first.",
                    provider_id=key,
                    scopes=refused,
                )
            required[key] = list(dict.fromkeys(scopes))
        if req.repair_grant_id is not None:
            if len(chosen) != 1:
                raise InvalidInput("repair_grant_id needs exactly one allowed provider.")
            if req.switch_account:
                raise InvalidInput("repair_grant_id cannot be combined with switch_account.")
            await _check_repair_target(
                conn, app, req.repair_grant_id, configured[chosen[0]], principal
            )
    if req.direct and len(chosen) != 1:
        raise InvalidInput("direct=True needs exactly one allowed provider.")
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    now = utcnow()
    expires_at = now + SESSION_TTL
    session_id = str(uuid.uuid4())
    grant_policy = None
    if req.max_ttl_seconds is not None or req.default_ttl_seconds is not None:
        grant_policy = {
            "max_ttl_seconds": req.max_ttl_seconds,
            "default_ttl_seconds": req.default_ttl_seconds,
        }
    async with vault.db.write() as conn:
        await conn.execute(
            sa.insert(connect_sessions).values(
                id=session_id,
                app_id=app.id,
                token_hash=sha256(token),
                status="pending",
                allowed_providers=chosen,
                return_url=return_url,
                allowed_origin=origin,
                metadata=req.metadata,
                grant_policy=grant_policy,
                required_scopes=required or None,
                switch_account=req.switch_account,
                repair_grant_id=req.repair_grant_id,
                principal_type=principal.type,
                principal_id=principal.id,
                idp_id=principal.idp_id,
                actor=actor,
                result={"direct": req.direct},
                created_at=now,
                expires_at=expires_at,
            )
        )
        await vault.audit.append(
            conn,
            [
                AuditRecord(
                    chain=app.id,
                    event=AuditEvent.CONNECT_SESSION_CREATED,
                    outcome=Outcome.SUCCESS,
                    actor=actor,
                    principal=principal_label(principal.type, principal.id),
                    details={"session_id": session_id, "allowed_providers": chosen},
                )
            ],
        )
    base = vault.settings.effective_public_base_url
    return {
        "session_token": token,
        "connect_url": f"{base}/connect/start?session={token}",
        "expires_in": int(SESSION_TTL.total_seconds()),
        "expires_at": _iso(expires_at),
        "scope_constraint_warnings": [],
        "single_provider": len(chosen) == 1,
        "direct": req.direct or req.repair_grant_id is not None,
    }


async def _check_repair_target(
    conn: Conn, app: App, grant_id: str, cfg: providers.ProviderConfig, principal: Principal
) -> None:
    row = (
        await conn.execute(
            sa.select(grants).where(grants.c.app_id == app.id, grants.c.id == grant_id)
        )
    ).first()
    if row is None or row.kind != "oauth":
        raise VaultError(
            ErrorCode.GRANT_NOT_FOUND, f"No OAuth grant {grant_id!r} in this app to repair."
        )
    if row.oauth_provider_id != cfg.id:
        raise InvalidInput("repair_grant_id belongs to another provider than allowed_providers.")
    if (row.principal_type, row.principal_id) != (principal.type, principal.id) or (
        row.idp_id is not None and row.idp_id != principal.idp_id
    ):
        raise VaultError(
            ErrorCode.GRANT_NOT_FOUND, f"No OAuth grant {grant_id!r} for this principal to repair."
        )
    if row.status == "revoked":
        raise VaultError(
            ErrorCode.GRANT_REVOKED,
            "A revoked grant cannot be repaired; start a new connection instead.",
            grant_id=grant_id,
        )


# -- polling -------------------------------------------------------------------------------


async def _session_by_token(conn: Conn, token: str, app_id: str | None = None) -> Any:
    if not token.startswith(TOKEN_PREFIX) or len(token) > 100:
        return None
    stmt = sa.select(connect_sessions).where(connect_sessions.c.token_hash == sha256(token))
    if app_id is not None:
        stmt = stmt.where(connect_sessions.c.app_id == app_id)
    return (await conn.execute(stmt)).first()


def session_status(row: Any, now: datetime) -> str:
    if row.status == "pending" and row.expires_at <= now:
        return "expired"
    return str(row.status)


async def poll_session(vault: Vault, app: App, token: str) -> dict[str, Any]:
    async with vault.db.read() as conn:
        row = await _session_by_token(conn, token, app.id)
    if row is None:
        raise VaultError(
            ErrorCode.SESSION_NOT_FOUND,
            "No Connect session with this token in this app; create a new session.",
        )
    status = session_status(row, utcnow())
    result = dict(row.result or {})
    answer: dict[str, Any] = {"status": status}
    if result.get("declined_providers"):
        answer["declined_providers"] = result["declined_providers"]
    if status == "completed":
        answer["grants"] = result.get("grants", [])
        answer["failed_grants"] = result.get("failed_grants", [])
    elif status == "error":
        answer["error"] = result.get("error")
    return answer


# -- the browser side ----------------------------------------------------------------------


class FlowRefused(Exception):
    """A browser step that must stop here; ``message`` is safe to show on the page."""

    def __init__(self, code: str, message: str, *, session: Any = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.session = session


async def open_session(vault: Vault, token: str, browser: str | None) -> tuple[Any, str | None]:
    """First visit with the session token: bind the browser. Returns (session, new cookie)."""
    async with vault.db.write() as conn:
        row = await _session_by_token(conn, token)
        if row is None:
            raise FlowRefused("session_not_found", "This sign-in link is not valid.")
        now = utcnow()
        status = session_status(row, now)
        if status == "expired":
            raise FlowRefused(
                "session_expired", "This sign-in link has expired. Start again from the app."
            )
        if status != "pending":
            raise FlowRefused(
                "session_finished", "This sign-in link was already used.", session=row
            )
        if row.browser_hash is not None:
            if browser is not None and sha256(browser) == row.browser_hash:
                return row, None
            raise FlowRefused(
                "session_in_other_browser",
                "This sign-in link was opened in another browser. Start again from the app.",
            )
        cookie = secrets.token_urlsafe(32)
        result = await conn.execute(
            sa.update(connect_sessions)
            .where(connect_sessions.c.id == row.id, connect_sessions.c.browser_hash.is_(None))
            .values(browser_hash=sha256(cookie))
        )
        if result.rowcount != 1:
            raise FlowRefused(
                "session_in_other_browser",
                "This sign-in link was opened in another browser. Start again from the app.",
            )
    return row, cookie


async def browser_session(vault: Vault, session_id: str, browser: str | None) -> Any:
    """The session behind a hosted page, only for the browser bound to it."""
    async with vault.db.read() as conn:
        row = (
            await conn.execute(
                sa.select(connect_sessions).where(connect_sessions.c.id == session_id)
            )
        ).first()
    if row is None or browser is None or row.browser_hash != sha256(browser):
        raise FlowRefused(
            "session_not_found",
            "This page belongs to another browser session. Start again from the app.",
        )
    status = session_status(row, utcnow())
    if status == "expired":
        raise FlowRefused(
            "session_expired", "This sign-in link has expired. Start again from the app."
        )
    return row


async def app_name(vault: Vault, session: Any) -> str:
    """The name of the app that created the session (shown on the consent page)."""
    async with vault.db.read() as conn:
        row = (
            await conn.execute(sa.select(apps.c.name).where(apps.c.id == session.app_id))
        ).first()
    return str(row.name) if row is not None else "An application"


async def session_configs(vault: Vault, session: Any) -> list[providers.ProviderConfig]:
    async with vault.db.read() as conn:
        out = []
        for pid in session.allowed_providers:
            cfg = await providers.get_config(conn, session.app_id, pid)
            if cfg is not None:
                out.append(cfg)
    return out


def requested_scopes(cfg: providers.ProviderConfig, session: Any) -> list[str]:
    scopes = list(cfg.spec.required_scopes) + list(cfg.default_scopes)
    scopes += list((session.required_scopes or {}).get(cfg.provider_id, []))
    return list(dict.fromkeys(scopes))


def ttl_choices(session: Any) -> tuple[list[int], int | None]:
    """TTL options (seconds) the consent page offers, and the preselected one."""
    policy = session.grant_policy or {}
    max_ttl = policy.get("max_ttl_seconds")
    default = policy.get("default_ttl_seconds")
    options = [3600, 86400, 7 * 86400, 30 * 86400, 90 * 86400, 365 * 86400]
    if max_ttl is not None:
        options = [o for o in options if o < max_ttl] + [max_ttl]
    if default is not None and default not in options:
        options.append(default)
    options = sorted(set(options))
    return options, default if default is not None else (max_ttl if max_ttl is not None else None)


async def start_flow(vault: Vault, session: Any, provider_id: str, ttl_seconds: int | None) -> str:
    """Record one authorization attempt and return the provider's authorization URL."""
    if provider_id not in session.allowed_providers:
        raise FlowRefused("provider_not_allowed", "This provider is not part of this sign-in.")
    max_ttl = (session.grant_policy or {}).get("max_ttl_seconds")
    if ttl_seconds is not None:
        if (
            ttl_seconds <= 0
            or ttl_seconds > MAX_TTL_S
            or (max_ttl is not None and ttl_seconds > max_ttl)
        ):
            raise FlowRefused("invalid_ttl", "That access duration is not allowed here.")
    elif max_ttl is not None:
        ttl_seconds = (session.grant_policy or {}).get("default_ttl_seconds") or max_ttl
    async with vault.db.read() as conn:
        cfg = await providers.get_config(conn, session.app_id, provider_id)
    if cfg is None:
        raise FlowRefused("provider_not_configured", "This provider is no longer configured.")
    try:
        cfg.check_schemes(vault.settings.allow_http_hosts)
    except OAuthError:
        raise FlowRefused(
            "connect_config_error",
            "This provider's sign-in address uses plain http, which this vault does not allow.",
        ) from None
    spec = cfg.spec
    scopes = requested_scopes(cfg, session)
    oidc = spec.issuer is not None and "openid" in scopes
    state = secrets.token_urlsafe(32)
    nonce = secrets.token_urlsafe(24) if oidc else None
    verifier, challenge = pkce_pair()
    use_pkce = spec.pkce != "unsupported"
    flow_id = str(uuid.uuid4())
    now = utcnow()
    redirect_uri = f"{vault.settings.effective_public_base_url}/sdk/oauth/callback"
    async with vault.db.write() as conn:
        await conn.execute(
            sa.insert(oauth_flows).values(
                id=flow_id,
                app_id=session.app_id,
                session_id=session.id,
                oauth_provider_id=cfg.id,
                state_hash=sha256(state),
                verifier_ct=vault.barrier.encrypt(
                    verifier.encode("ascii") if use_pkce else b"",
                    verifier_aad(session.app_id, flow_id),
                ),
                nonce=nonce,
                redirect_uri=redirect_uri,
                scopes=scopes,
                ttl_seconds=ttl_seconds,
                created_at=now,
                expires_at=min(now + FLOW_TTL, session.expires_at),
            )
        )
    return authorization_url(
        spec,
        cfg.authorize_url,
        client_id=cfg.client_id,
        redirect_uri=redirect_uri,
        scopes=scopes,
        state=state,
        code_challenge=challenge if use_pkce else None,
        nonce=nonce,
    )


async def decline(vault: Vault, session: Any, provider_id: str, error_code: str) -> Any:
    """The user said no (here or at the provider): a declined provider, or the end."""
    now = utcnow()
    result = dict(session.result or {})
    declined = list(result.get("declined_providers", []))
    declined.append(
        {"provider_id": provider_id, "error_code": error_code, "declined_at": _iso(now)}
    )
    result["declined_providers"] = declined
    remaining = [
        p for p in session.allowed_providers if p not in {d["provider_id"] for d in declined}
    ]
    values: dict[str, Any] = {"result": result}
    if not remaining:
        result["error"] = {
            "error_code": "connect_denied",
            "error_message": "The user declined to connect"
            + (f" {provider_id}." if len(session.allowed_providers) == 1 else " any provider."),
        }
        values.update(status="error", completed_at=now)
    async with vault.db.write() as conn:
        await conn.execute(
            sa.update(connect_sessions)
            .where(connect_sessions.c.id == session.id, connect_sessions.c.status == "pending")
            .values(**values)
        )
        if not remaining:
            await vault.audit.append(
                conn,
                [
                    AuditRecord(
                        chain=session.app_id,
                        event=AuditEvent.CONNECT_FAILED,
                        outcome=Outcome.DENIED,
                        actor={"type": "end_user", "via": "connect"},
                        principal=principal_label(session.principal_type, session.principal_id),
                        provider_id=provider_id,
                        reason="connect_denied",
                        details={"session_id": session.id},
                    )
                ],
            )
        row = (
            await conn.execute(
                sa.select(connect_sessions).where(connect_sessions.c.id == session.id)
            )
        ).first()
    return row


async def _fail_session(
    vault: Vault, session: Any, provider_id: str, code: str, message: str
) -> Any:
    now = utcnow()
    result = dict(session.result or {})
    result["error"] = {"error_code": code, "error_message": message}
    async with vault.db.write() as conn:
        await conn.execute(
            sa.update(connect_sessions)
            .where(connect_sessions.c.id == session.id, connect_sessions.c.status == "pending")
            .values(status="error", result=result, completed_at=now)
        )
        await vault.audit.append(
            conn,
            [
                AuditRecord(
                    chain=session.app_id,
                    event=AuditEvent.CONNECT_FAILED,
                    outcome=Outcome.FAILURE,
                    actor={"type": "end_user", "via": "connect"},
                    principal=principal_label(session.principal_type, session.principal_id),
                    provider_id=provider_id,
                    reason=code,
                    details={"session_id": session.id},
                )
            ],
        )
        return (
            await conn.execute(
                sa.select(connect_sessions).where(connect_sessions.c.id == session.id)
            )
        ).first()


_ISS_SAFE = re.compile(r"^[\x21-\x7e]{1,2048}$")


async def finish_flow(vault: Vault, params: dict[str, str], browser: str | None) -> Any:
    """Handle the provider's redirect back to us. Returns the updated session row."""
    state = params.get("state")
    if not state or len(state) > 200:
        raise FlowRefused("invalid_state", "This sign-in response is not for this vault.")
    now = utcnow()
    async with vault.db.write() as conn:
        flow = (
            await conn.execute(
                sa.select(oauth_flows).where(oauth_flows.c.state_hash == sha256(state))
            )
        ).first()
        if flow is None:
            raise FlowRefused("invalid_state", "This sign-in response is not for this vault.")
        session = (
            await conn.execute(
                sa.select(connect_sessions).where(connect_sessions.c.id == flow.session_id)
            )
        ).first()
        if session is None or browser is None or session.browser_hash != sha256(browser):
            # Not the browser that started this sign-in (login CSRF / a stolen callback URL).
            raise FlowRefused(
                "browser_mismatch",
                "This sign-in response belongs to another browser session. Start again from the app.",
            )
        # Claim the callback before anything else: a replay finds it used.
        claimed = await conn.execute(
            sa.update(oauth_flows)
            .where(oauth_flows.c.id == flow.id, oauth_flows.c.used_at.is_(None))
            .values(used_at=now)
        )
        if claimed.rowcount != 1:
            raise FlowRefused(
                "state_used", "This sign-in response was already used. Start again from the app."
            )
    if flow.expires_at <= now or session_status(session, now) != "pending":
        raise FlowRefused(
            "session_expired",
            "This sign-in took too long and expired. Start again from the app.",
            session=session,
        )
    async with vault.db.read() as conn:
        cfg = await providers.get_config_by_id(conn, session.app_id, flow.oauth_provider_id)
        creds = await providers.client_credentials(vault, conn, cfg)
        verifier = (
            await vault.barrier.decrypt_fresh(
                conn, flow.verifier_ct, verifier_aad(session.app_id, flow.id)
            )
        ).decode("ascii") or None
    spec = cfg.spec
    # RFC 9207: the authorization response says who sent it. A response from another
    # issuer is a mix-up attempt; refuse before the code goes anywhere.
    iss = params.get("iss")
    if iss is not None and (not _ISS_SAFE.match(iss) or spec.issuer is None or iss != spec.issuer):
        raise FlowRefused(
            "issuer_mismatch",
            "The sign-in response came from a different server than the one it was sent to. "
            "Nothing was stored. Start again from the app.",
            session=session,
        )
    if iss is None and spec.iss_parameter:
        raise FlowRefused(
            "issuer_missing",
            "The provider's response did not say who sent it. Nothing was stored.",
            session=session,
        )
    if "error" in params:
        # The provider's word, but anyone can put anything in a redirect: it goes on to the
        # app's poll answer, the return URL and the page only as a filtered code (no markup,
        # CR/LF or ESC), exactly like an error code from the token endpoint.
        error = safe_error_code(params["error"], "invalid_error_code")
        if error == "access_denied":
            return await decline(vault, session, cfg.provider_id, "access_denied")
        failure = error if error in CONFIG_CODES else "connect_config_error"
        return await _fail_session(
            vault,
            session,
            cfg.provider_id,
            failure,
            f"The provider refused the sign-in ({error}); check the provider configuration.",
        )
    code = params.get("code")
    if not code or len(code) > 4096:
        raise FlowRefused(
            "invalid_response", "The provider sent no authorization code.", session=session
        )
    try:
        tokens = await vault.oauth.exchange_code(
            spec,
            cfg.token_url,
            creds,
            code=code,
            redirect_uri=flow.redirect_uri,
            verifier=verifier,
        )
        claims = None
        if tokens.id_token is not None and flow.nonce is not None:
            claims = id_token_claims(
                tokens.id_token,
                issuer=spec.issuer,
                client_id=cfg.client_id,
                nonce=flow.nonce,
                leeway=vault.settings.clock_skew_seconds,
            )
        try:
            account, display = await resolve_account(vault, cfg, tokens, claims)
        except ValueError:  # a provider-supplied value the spec refuses to put in a URL
            raise OAuthError("malformed_response", "unusable account lookup value") from None
    except OAuthError as exc:
        log.warning(
            "oauth code exchange failed",
            extra={"provider_id": cfg.provider_id, "oauth_error": exc.error, "status": exc.status},
        )
        if exc.error in CONFIG_CODES:
            error_code = exc.error
            message = f"The provider rejected this app's client registration ({exc.error})."
        elif exc.transient:
            # Down, overloaded or hung (timed out): not the app's configuration. The session
            # ends here (the code cannot be exchanged twice); the user simply starts again.
            error_code = ErrorCode.PROVIDER_UNAVAILABLE.value
            message = "The provider could not be reached to finish the sign-in; try again."
        else:
            error_code = "connect_config_error"
            message = f"The provider did not complete the sign-in ({exc.error})."
        return await _fail_session(vault, session, cfg.provider_id, error_code, message)
    return await _store_grant(vault, session, cfg, flow, tokens, account, display)


async def resolve_account(
    vault: Vault,
    cfg: providers.ProviderConfig,
    tokens: TokenSet,
    claims: dict[str, Any] | None,
) -> tuple[str, str | None]:
    """Which account was connected, from the place the provider's spec names."""
    lookup = cfg.spec.account
    data: Any
    if lookup.source == "id_token":
        if claims is None and tokens.id_token is not None:
            claims = id_token_claims(
                tokens.id_token,
                issuer=cfg.spec.issuer,
                client_id=cfg.client_id,
                nonce=None,
                leeway=vault.settings.clock_skew_seconds,
            )
        data = claims or {}
    elif lookup.source == "token_response":
        data = tokens.extra
    else:
        url = cfg.url(lookup.url, api_base_url=api_base_url(cfg, tokens) or "")
        assert url is not None
        data = await vault.oauth.fetch_json(
            lookup.method, url, tokens.access_token, lookup.headers, lookup.body
        )
    ident = dotted(data, lookup.field)
    if ident is None and lookup.source == "id_token":
        ident = dotted(data, "sub")
    if ident is None or isinstance(ident, (dict, list)):
        raise OAuthError("account_unknown", "the provider did not say which account this is")
    display = dotted(data, lookup.display_field) if lookup.display_field else None
    return str(ident)[:320], (str(display)[:255] if display is not None else None)


def api_base_url(cfg: providers.ProviderConfig, tokens: TokenSet | None) -> str | None:
    """The connection's API origin: the provider may name one (Salesforce's instance_url),
    but only inside the spec's API hosts; it never widens where tokens may go."""
    if cfg.spec.api_base_url_from and tokens is not None:
        value = dotted(tokens.extra, cfg.spec.api_base_url_from)
        if isinstance(value, str):
            parts = urlsplit(value)
            host = (parts.hostname or "").lower()
            rules = [cfg.spec.render(h, cfg.params) if "{" in h else h for h in cfg.spec.api_hosts]
            if (
                parts.scheme == "https"
                and host
                and parts.username is None
                and not parts.path.strip("/")
                and (not rules or host_allowed(host, rules, parts.port))
            ):
                return f"https://{parts.netloc}"
            raise OAuthError(
                "malformed_response", "the provider named an API host outside its allowed hosts"
            )
    return cfg.url(cfg.spec.api_base_url)


async def _store_grant(
    vault: Vault,
    session: Any,
    cfg: providers.ProviderConfig,
    flow: Any,
    tokens: TokenSet,
    account: str,
    display: str | None,
) -> Any:
    now = utcnow()
    scopes = list(tokens.scopes) if tokens.scopes is not None else list(flow.scopes)
    expires_at = now + timedelta(seconds=flow.ttl_seconds) if flow.ttl_seconds else None
    base_url = api_base_url(cfg, tokens)
    actor = {"type": "end_user", "via": "connect", "session_id": session.id}
    async with vault.db.write() as conn:
        # Re-read (and on PostgreSQL lock) the session: another flow of the same session may
        # have finished meanwhile, and its result must not be overwritten.
        fresh = (
            await conn.execute(
                for_update(
                    conn, sa.select(connect_sessions).where(connect_sessions.c.id == session.id)
                )
            )
        ).first()
        if fresh is None or fresh.status != "pending":
            raise FlowRefused("session_finished", "This sign-in was already completed.")
        session = fresh
        if session.principal_type == "user":
            user = (
                await conn.execute(
                    sa.select(app_users.c.status).where(
                        app_users.c.app_id == session.app_id,
                        app_users.c.subject == session.principal_id,
                    )
                )
            ).first()
            if user is not None and user.status != "active":
                raise FlowRefused(
                    "user_disabled",
                    "This account was disabled by the application; nothing was stored.",
                )
        target = None
        if session.repair_grant_id is not None:
            target = (
                await conn.execute(sa.select(grants).where(grants.c.id == session.repair_grant_id))
            ).first()
            if target is None or target.status == "revoked":
                raise FlowRefused(
                    "repair_target_gone", "The connection to repair was revoked meanwhile."
                )
            if target.account_identifier != account:
                raise FlowRefused(
                    "account_mismatch",
                    f"You signed in as a different account than the one being repaired "
                    f"({target.account_identifier}). Sign in with that account.",
                    session=session,
                )
        else:
            target = (
                await conn.execute(
                    sa.select(grants).where(
                        grants.c.app_id == session.app_id,
                        grants.c.kind == "oauth",
                        grants.c.oauth_provider_id == cfg.id,
                        grants.c.principal_type == session.principal_type,
                        grants.c.principal_id.is_(None)
                        if session.principal_id is None
                        else grants.c.principal_id == session.principal_id,
                        grants.c.account_identifier == account,
                        grants.c.status == "active",
                        sa.or_(grants.c.idp_id.is_(None), grants.c.idp_id == session.idp_id)
                        if session.idp_id is not None
                        else grants.c.idp_id.is_(None),
                    )
                )
            ).first()
            if target is not None and target.expires_at is not None and target.expires_at <= now:
                target = None
        policy = {"expires_at": _iso(expires_at), "created_by": "end_user", "created_at": _iso(now)}
        if target is not None:
            grant_id = target.id
            operation = "reauth"
            reauthorized = await conn.execute(
                sa.update(grants)
                .where(grants.c.id == grant_id, grants.c.status == "active")
                .values(
                    status="active",
                    scopes=scopes,
                    account_display_name=display,
                    api_base_url=base_url,
                    expires_at=expires_at if expires_at is not None else target.expires_at,
                    policy=policy,
                )
            )
            if reauthorized.rowcount != 1:  # revoked meanwhile: never resurrect it
                raise FlowRefused(
                    "grant_revoked", "That connection was revoked meanwhile; start again."
                )
            event = AuditEvent.GRANT_REAUTHORIZED
        else:
            grant_id = str(uuid.uuid4())
            operation = "creation"
            await conn.execute(
                sa.insert(grants).values(
                    id=grant_id,
                    app_id=session.app_id,
                    kind="oauth",
                    oauth_provider_id=cfg.id,
                    account_identifier=account,
                    account_display_name=display,
                    scopes=scopes,
                    api_base_url=base_url,
                    principal_type=session.principal_type,
                    principal_id=session.principal_id,
                    idp_id=session.idp_id,
                    status="active",
                    expires_at=expires_at,
                    policy=policy,
                    created_by="end_user",
                    created_at=now,
                )
            )
            event = AuditEvent.GRANT_CREATED
        await store_new_tokens(vault, conn, session.app_id, grant_id, tokens, now)
        item = {
            "grant_id": grant_id,
            "provider_id": cfg.provider_id,
            "account_identifier": account,
            "scopes": scopes,
            "api_base_url": base_url,
            "operation": operation,
            "grant_policy": policy,
        }
        result = dict(session.result or {})
        result["grants"] = [*result.get("grants", []), item]
        result["failed_grants"] = result.get("failed_grants", [])
        await conn.execute(
            sa.update(connect_sessions)
            .where(connect_sessions.c.id == session.id)
            .values(status="completed", result=result, completed_at=now)
        )
        label = principal_label(session.principal_type, session.principal_id)
        await vault.audit.append(
            conn,
            [
                AuditRecord(
                    chain=session.app_id,
                    event=event,
                    outcome=Outcome.SUCCESS,
                    actor=actor,
                    principal=label,
                    grant_id=grant_id,
                    provider_id=cfg.provider_id,
                    details={"account": account, "scopes": scopes, "operation": operation},
                ),
                AuditRecord(
                    chain=session.app_id,
                    event=AuditEvent.CONNECT_COMPLETED,
                    outcome=Outcome.SUCCESS,
                    actor=actor,
                    principal=label,
                    grant_id=grant_id,
                    provider_id=cfg.provider_id,
                    details={"session_id": session.id},
                ),
            ],
        )
        return (
            await conn.execute(
                sa.select(connect_sessions).where(connect_sessions.c.id == session.id)
            )
        ).first()


#: Finished and expired sessions are kept this long for the app's poll, then deleted.
SESSION_RETENTION = timedelta(days=1)


async def purge_sessions(vault: Vault) -> int:
    """Delete sessions (and their flows) that expired more than a day ago."""
    cutoff = utcnow() - SESSION_RETENTION
    async with vault.db.write() as conn:
        result = await conn.execute(
            sa.delete(connect_sessions).where(connect_sessions.c.expires_at < cutoff)
        )
        await conn.execute(sa.delete(oauth_flows).where(oauth_flows.c.expires_at < cutoff))
    return int(result.rowcount or 0)
