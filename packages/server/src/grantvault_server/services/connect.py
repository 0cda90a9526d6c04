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

import logging
import re
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
from grantvault_server.outbound.urls import scheme_allowed
from grantvault_server.providers.oauth_schema import host_allowed
from grantvault_server.services import hosted_sessions as hosted, oauth_providers as providers
from grantvault_server.services.apps import App
from grantvault_server.services.grants import principal_label
from grantvault_server.services.oauth_tokens import store_new_tokens
from grantvault_server.services.vault import Vault
from grantvault_server.storage.db import Conn
from grantvault_server.storage.sql import for_update
from grantvault_server.storage.tables import (
    app_users,
    apps,
    connect_sessions,
    grants,
    oauth_flows,
)
from grantvault_server.timefmt import iso

log = logging.getLogger(__name__)

SESSION_TTL = timedelta(minutes=10)
#: Ten years: the longest grant lifetime anyone can choose.
MAX_TTL_S = 315_360_000
FLOW_TTL = timedelta(minutes=10)
TOKEN_PREFIX = "gvcs_"
#: Poll error codes the clients turn into ``ConnectConfigError``.
CONFIG_CODES = frozenset({"invalid_redirect_uri", "invalid_client", "unauthorized_client"})
CALLBACK_PATH = "/sdk/oauth/callback"
#: Connect sessions for the hosted-session engine.
KIND = hosted.SessionKind(connect_sessions, TOKEN_PREFIX, SESSION_TTL)


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
    if parts.scheme == "http" and not scheme_allowed(parts, allow_http_hosts):
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
    if parts.scheme == "http" and not scheme_allowed(parts, allow_http_hosts):
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
    return_url, origin = _check_request(vault, req)
    async with vault.db.read() as conn:
        configured = {c.provider_id: c for c in await providers.list_configs(conn, app.id)}
        chosen = _chosen_providers(configured, req.allowed_providers)
        required = _required_scopes(configured, chosen, req.required_scopes or {})
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
    new = hosted.new_session(KIND, vault.clock.now())
    grant_policy = None
    if req.max_ttl_seconds is not None or req.default_ttl_seconds is not None:
        grant_policy = {
            "max_ttl_seconds": req.max_ttl_seconds,
            "default_ttl_seconds": req.default_ttl_seconds,
        }
    async with vault.db.write() as conn:
        await conn.execute(
            sa.insert(connect_sessions).values(
                **new.columns(),
                app_id=app.id,
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
            )
        )
        record = _record(
            app.id,
            AuditEvent.CONNECT_SESSION_CREATED,
            Outcome.SUCCESS,
            actor,
            principal_label(principal.type, principal.id),
            details={"session_id": new.id, "allowed_providers": chosen},
        )
        await vault.audit.append(conn, [record])
    base = vault.settings.effective_public_base_url
    return {
        "session_token": new.token,
        "connect_url": f"{base}/connect/start?session={new.token}",
        "expires_in": int(SESSION_TTL.total_seconds()),
        "expires_at": iso(new.expires_at),
        "scope_constraint_warnings": [],
        "single_provider": len(chosen) == 1,
        "direct": req.direct or req.repair_grant_id is not None,
    }


def _check_request(vault: Vault, req: SessionRequest) -> tuple[str | None, str | None]:
    """The request's own checks: its return URL, its origin and its grant policy."""
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
    return return_url, origin


def _chosen_providers(
    configured: dict[str, providers.ProviderConfig], allowed: list[str] | None
) -> list[str]:
    """The session's providers: the ones asked for (each configured), else all of them."""
    if allowed is None:
        if not configured:
            raise VaultError(
                ErrorCode.PROVIDER_NOT_CONFIGURED,
                "This app has no OAuth provider configured; add one with "
                "`grantvault providers add`.",
            )
        return sorted(configured)
    chosen: list[str] = []
    for raw in allowed:
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
    return chosen


def _required_scopes(
    configured: dict[str, providers.ProviderConfig],
    chosen: list[str],
    asked: dict[str, list[str]],
) -> dict[str, list[str]]:
    """``required_scopes`` by provider, each within the registration's allowed scopes."""
    required: dict[str, list[str]] = {}
    for pid, scopes in asked.items():
        key = pid.lower()
        if key not in chosen:
            raise InvalidInput(f"required_scopes names {pid!r}, which this session does not allow.")
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
    return required


def _record(
    app_id: str,
    event: AuditEvent,
    outcome: Outcome,
    actor: dict[str, Any],
    principal: str,
    **fields: Any,
) -> AuditRecord:
    """One Connect audit row of the app's chain."""
    return AuditRecord(
        chain=app_id, event=event, outcome=outcome, actor=actor, principal=principal, **fields
    )


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
    where = [connect_sessions.c.app_id == app_id] if app_id is not None else []
    return await hosted.find(conn, connect_sessions.c.token_hash, token, *where)


def session_status(row: Any, now: datetime) -> str:
    return KIND.status(row, now)


async def poll_session(vault: Vault, app: App, token: str) -> dict[str, Any]:
    async with vault.db.read() as conn:
        row = await _session_by_token(conn, token, app.id)
    if row is None:
        raise VaultError(
            ErrorCode.SESSION_NOT_FOUND,
            "No Connect session with this token in this app; create a new session.",
        )
    status = session_status(row, vault.clock.now())
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


def _other_browser() -> FlowRefused:
    return FlowRefused(
        "session_in_other_browser",
        "This sign-in link was opened in another browser. Start again from the app.",
    )


def _expired() -> FlowRefused:
    return FlowRefused(
        "session_expired", "This sign-in link has expired. Start again from the app."
    )


async def open_session(vault: Vault, token: str, browser: str | None) -> tuple[Any, str | None]:
    """First visit with the session token: bind the browser. Returns (session, new cookie)."""
    async with vault.db.write() as conn:
        row = await _session_by_token(conn, token)
        if row is None:
            raise FlowRefused("session_not_found", "This sign-in link is not valid.")
        status = session_status(row, vault.clock.now())
        if status == "expired":
            raise _expired()
        if status != "pending":
            raise FlowRefused(
                "session_finished", "This sign-in link was already used.", session=row
            )
        hold = hosted.binding(row.browser_hash, browser)
        if hold is None:
            raise _other_browser()
        if hold.first and not await hosted.bind_browser(conn, KIND, row.id, hold):
            raise _other_browser()
    return row, hold.cookie


async def browser_session(vault: Vault, session_id: str, browser: str | None) -> Any:
    """The session behind a hosted page, only for the browser bound to it."""
    async with vault.db.read() as conn:
        row = await hosted.by_id(conn, KIND, session_id)
    if row is None or not hosted.matches(browser, row.browser_hash):
        raise FlowRefused(
            "session_not_found",
            "This page belongs to another browser session. Start again from the app.",
        )
    if session_status(row, vault.clock.now()) == "expired":
        raise _expired()
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


def _chosen_ttl(session: Any, ttl_seconds: int | None) -> int | None:
    """The grant lifetime the user picked, within the session's policy, or its default."""
    policy = session.grant_policy or {}
    max_ttl = policy.get("max_ttl_seconds")
    if ttl_seconds is not None:
        if (
            ttl_seconds <= 0
            or ttl_seconds > MAX_TTL_S
            or (max_ttl is not None and ttl_seconds > max_ttl)
        ):
            raise FlowRefused("invalid_ttl", "That access duration is not allowed here.")
        return ttl_seconds
    if max_ttl is not None:
        return int(policy.get("default_ttl_seconds") or max_ttl)
    return None


async def _startable_config(
    vault: Vault, session: Any, provider_id: str
) -> providers.ProviderConfig:
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
    return cfg


async def start_flow(vault: Vault, session: Any, provider_id: str, ttl_seconds: int | None) -> str:
    """Record one authorization attempt and return the provider's authorization URL."""
    if provider_id not in session.allowed_providers:
        raise FlowRefused("provider_not_allowed", "This provider is not part of this sign-in.")
    ttl_seconds = _chosen_ttl(session, ttl_seconds)
    cfg = await _startable_config(vault, session, provider_id)
    spec = cfg.spec
    scopes = requested_scopes(cfg, session)
    oidc = spec.issuer is not None and "openid" in scopes
    state, state_hash = hosted.new_state()
    nonce = hosted.new_secret(24) if oidc else None
    verifier, challenge = pkce_pair()
    use_pkce = spec.pkce != "unsupported"
    flow_id = str(uuid.uuid4())
    now = vault.clock.now()
    redirect_uri = f"{vault.settings.effective_public_base_url}{CALLBACK_PATH}"
    async with vault.db.write() as conn:
        await conn.execute(
            sa.insert(oauth_flows).values(
                id=flow_id,
                app_id=session.app_id,
                session_id=session.id,
                oauth_provider_id=cfg.id,
                state_hash=state_hash,
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


def _end_user(session: Any) -> tuple[dict[str, Any], str]:
    """The actor and principal label of the end user in a session's audit rows."""
    return (
        {"type": "end_user", "via": "connect"},
        principal_label(session.principal_type, session.principal_id),
    )


async def decline(vault: Vault, session: Any, provider_id: str, error_code: str) -> Any:
    """The user said no (here or at the provider): a declined provider, or the end."""
    now = vault.clock.now()
    result = dict(session.result or {})
    declined = list(result.get("declined_providers", []))
    declined.append({"provider_id": provider_id, "error_code": error_code, "declined_at": iso(now)})
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
        await hosted.settle(conn, KIND, session.id, values)
        if not remaining:
            record = _record(
                session.app_id,
                AuditEvent.CONNECT_FAILED,
                Outcome.DENIED,
                *_end_user(session),
                provider_id=provider_id,
                reason="connect_denied",
                details={"session_id": session.id},
            )
            await vault.audit.append(conn, [record])
        return await hosted.by_id(conn, KIND, session.id)


async def _fail_session(
    vault: Vault, session: Any, provider_id: str, code: str, message: str
) -> Any:
    result = dict(session.result or {})
    result["error"] = {"error_code": code, "error_message": message}
    values = {"status": "error", "result": result, "completed_at": vault.clock.now()}
    async with vault.db.write() as conn:
        await hosted.settle(conn, KIND, session.id, values)
        record = _record(
            session.app_id,
            AuditEvent.CONNECT_FAILED,
            Outcome.FAILURE,
            *_end_user(session),
            provider_id=provider_id,
            reason=code,
            details={"session_id": session.id},
        )
        await vault.audit.append(conn, [record])
        return await hosted.by_id(conn, KIND, session.id)


_ISS_SAFE = re.compile(r"^[\x21-\x7e]{1,2048}$")


async def _claim_callback(vault: Vault, state: str | None, browser: str | None) -> tuple[Any, Any]:
    """The flow and session of a callback of this browser, its state claimed exactly once."""
    if not state or len(state) > 200:
        raise FlowRefused("invalid_state", "This sign-in response is not for this vault.")
    now = vault.clock.now()
    async with vault.db.write() as conn:
        flow = await hosted.find(conn, oauth_flows.c.state_hash, state)
        if flow is None:
            raise FlowRefused("invalid_state", "This sign-in response is not for this vault.")
        session = await hosted.by_id(conn, KIND, flow.session_id)
        if session is None or not hosted.matches(browser, session.browser_hash):
            # Not the browser that started this sign-in (login CSRF / a stolen callback URL).
            raise FlowRefused(
                "browser_mismatch",
                "This sign-in response belongs to another browser session. Start again from the app.",
            )
        # Claim the callback before anything else: a replay finds it used.
        unclaimed = oauth_flows.c.used_at.is_(None)
        if not await hosted.claim_once(conn, oauth_flows, flow.id, unclaimed, {"used_at": now}):
            raise FlowRefused(
                "state_used", "This sign-in response was already used. Start again from the app."
            )
    if flow.expires_at <= now or session_status(session, now) != "pending":
        raise FlowRefused(
            "session_expired",
            "This sign-in took too long and expired. Start again from the app.",
            session=session,
        )
    return flow, session


def _check_issuer(spec: Any, iss: str | None, session: Any) -> None:
    """RFC 9207: the authorization response says who sent it. A response from another
    issuer is a mix-up attempt; refuse before the code goes anywhere."""
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


async def _provider_refused(
    vault: Vault, session: Any, cfg: providers.ProviderConfig, raw_error: str
) -> Any:
    """The provider answered with an ``error``: the user declined, or the setup is wrong.

    The provider's word, but anyone can put anything in a redirect: it goes on to the app's
    poll answer, the return URL and the page only as a filtered code (no markup, CR/LF or
    ESC), exactly like an error code from the token endpoint."""
    error = safe_error_code(raw_error, "invalid_error_code")
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


def _exchange_failure(exc: OAuthError) -> tuple[str, str]:
    """The session's error code and message for a failed exchange or account lookup."""
    if exc.error in CONFIG_CODES:
        return exc.error, f"The provider rejected this app's client registration ({exc.error})."
    if exc.transient:
        # Down, overloaded or hung (timed out): not the app's configuration. The session
        # ends here (the code cannot be exchanged twice); the user simply starts again.
        return (
            ErrorCode.PROVIDER_UNAVAILABLE.value,
            "The provider could not be reached to finish the sign-in; try again.",
        )
    return "connect_config_error", f"The provider did not complete the sign-in ({exc.error})."


@dataclass(frozen=True)
class _Connected:
    """What the provider's answer says: the tokens, and which account they are for."""

    tokens: TokenSet
    account: str
    display: str | None


async def _exchange(
    vault: Vault,
    cfg: providers.ProviderConfig,
    creds: Any,
    flow: Any,
    code: str,
    verifier: str | None,
) -> _Connected:
    """Exchange the code (once), check the ID token's nonce, find the account."""
    spec = cfg.spec
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
            now=vault.clock.time(),
        )
    try:
        account, display = await resolve_account(vault, cfg, tokens, claims)
    except ValueError:  # a provider-supplied value the spec refuses to put in a URL
        raise OAuthError("malformed_response", "unusable account lookup value") from None
    return _Connected(tokens, account, display)


async def _flow_config(vault: Vault, session: Any, flow: Any) -> tuple[Any, Any, str | None]:
    """The flow's provider configuration, client credentials and PKCE verifier."""
    async with vault.db.read() as conn:
        cfg = await providers.get_config_by_id(conn, session.app_id, flow.oauth_provider_id)
        creds = await providers.client_credentials(vault, conn, cfg)
        verifier = (
            await vault.barrier.decrypt_fresh(
                conn, flow.verifier_ct, verifier_aad(session.app_id, flow.id)
            )
        ).decode("ascii") or None
    return cfg, creds, verifier


async def finish_flow(vault: Vault, params: dict[str, str], browser: str | None) -> Any:
    """Handle the provider's redirect back to us. Returns the updated session row."""
    flow, session = await _claim_callback(vault, params.get("state"), browser)
    cfg, creds, verifier = await _flow_config(vault, session, flow)
    _check_issuer(cfg.spec, params.get("iss"), session)
    if "error" in params:
        return await _provider_refused(vault, session, cfg, params["error"])
    code = params.get("code")
    if not code or len(code) > 4096:
        raise FlowRefused(
            "invalid_response", "The provider sent no authorization code.", session=session
        )
    try:
        connected = await _exchange(vault, cfg, creds, flow, code, verifier)
    except OAuthError as exc:
        log.warning(
            "oauth code exchange failed",
            extra={"provider_id": cfg.provider_id, "oauth_error": exc.error, "status": exc.status},
        )
        error_code, message = _exchange_failure(exc)
        return await _fail_session(vault, session, cfg.provider_id, error_code, message)
    return await _store_grant(vault, session, cfg, flow, connected)


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
                now=vault.clock.time(),
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


async def _locked_pending_session(conn: Conn, session_id: str) -> Any:
    """Re-read (and on PostgreSQL lock) the session: another flow of the same session may
    have finished meanwhile, and its result must not be overwritten."""
    stmt = sa.select(connect_sessions).where(connect_sessions.c.id == session_id)
    fresh = (await conn.execute(for_update(conn, stmt))).first()
    if fresh is None or fresh.status != "pending":
        raise FlowRefused("session_finished", "This sign-in was already completed.")
    return fresh


async def _check_user_active(conn: Conn, session: Any) -> None:
    """A session made for an end user stores nothing once the app disabled that user."""
    if session.principal_type != "user":
        return
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


async def _repair_target(conn: Conn, session: Any, account: str) -> Any:
    """The grant a repair session reconnects: still there, and for the same account."""
    target = (
        await conn.execute(sa.select(grants).where(grants.c.id == session.repair_grant_id))
    ).first()
    if target is None or target.status == "revoked":
        raise FlowRefused("repair_target_gone", "The connection to repair was revoked meanwhile.")
    if target.account_identifier != account:
        raise FlowRefused(
            "account_mismatch",
            f"You signed in as a different account than the one being repaired "
            f"({target.account_identifier}). Sign in with that account.",
            session=session,
        )
    return target


async def _existing_grant(
    conn: Conn, session: Any, cfg: providers.ProviderConfig, account: str, now: datetime
) -> Any:
    """The principal's active, unexpired grant for this provider account, if any."""
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
        return None
    return target


@dataclass(frozen=True)
class _GrantValues:
    """The grant's fields as this connection sets them."""

    scopes: list[str]
    base_url: str | None
    expires_at: datetime | None
    policy: dict[str, Any]
    now: datetime


async def _reauthorize(
    conn: Conn, target: Any, connected: _Connected, values: _GrantValues
) -> None:
    """Give an existing grant the new connection's scopes and lifetime (never if revoked)."""
    reauthorized = await conn.execute(
        sa.update(grants)
        .where(grants.c.id == target.id, grants.c.status == "active")
        .values(
            status="active",
            scopes=values.scopes,
            account_display_name=connected.display,
            api_base_url=values.base_url,
            expires_at=values.expires_at if values.expires_at is not None else target.expires_at,
            policy=values.policy,
        )
    )
    if reauthorized.rowcount != 1:  # revoked meanwhile: never resurrect it
        raise FlowRefused("grant_revoked", "That connection was revoked meanwhile; start again.")


async def _insert_grant(
    conn: Conn,
    session: Any,
    cfg: providers.ProviderConfig,
    connected: _Connected,
    values: _GrantValues,
) -> str:
    grant_id = str(uuid.uuid4())
    await conn.execute(
        sa.insert(grants).values(
            id=grant_id,
            app_id=session.app_id,
            kind="oauth",
            oauth_provider_id=cfg.id,
            account_identifier=connected.account,
            account_display_name=connected.display,
            scopes=values.scopes,
            api_base_url=values.base_url,
            principal_type=session.principal_type,
            principal_id=session.principal_id,
            idp_id=session.idp_id,
            status="active",
            expires_at=values.expires_at,
            policy=values.policy,
            created_by="end_user",
            created_at=values.now,
        )
    )
    return grant_id


async def _complete_session(conn: Conn, session: Any, item: dict[str, Any], now: datetime) -> None:
    """Add the grant to the session's result and end the session."""
    result = dict(session.result or {})
    result["grants"] = [*result.get("grants", []), item]
    result["failed_grants"] = result.get("failed_grants", [])
    await conn.execute(
        sa.update(connect_sessions)
        .where(connect_sessions.c.id == session.id)
        .values(status="completed", result=result, completed_at=now)
    )


def _grant_records(
    session: Any, provider_id: str, item: dict[str, Any], event: AuditEvent
) -> list[AuditRecord]:
    actor = {"type": "end_user", "via": "connect", "session_id": session.id}
    label = principal_label(session.principal_type, session.principal_id)
    grant_id = item["grant_id"]
    details = {
        "account": item["account_identifier"],
        "scopes": item["scopes"],
        "operation": item["operation"],
    }
    return [
        _record(
            session.app_id,
            event,
            Outcome.SUCCESS,
            actor,
            label,
            grant_id=grant_id,
            provider_id=provider_id,
            details=details,
        ),
        _record(
            session.app_id,
            AuditEvent.CONNECT_COMPLETED,
            Outcome.SUCCESS,
            actor,
            label,
            grant_id=grant_id,
            provider_id=provider_id,
            details={"session_id": session.id},
        ),
    ]


def _grant_values(
    flow: Any, cfg: providers.ProviderConfig, tokens: TokenSet, now: datetime
) -> _GrantValues:
    expires_at = now + timedelta(seconds=flow.ttl_seconds) if flow.ttl_seconds else None
    return _GrantValues(
        scopes=list(tokens.scopes) if tokens.scopes is not None else list(flow.scopes),
        base_url=api_base_url(cfg, tokens),
        expires_at=expires_at,
        policy={"expires_at": iso(expires_at), "created_by": "end_user", "created_at": iso(now)},
        now=now,
    )


async def _store_grant(
    vault: Vault,
    session: Any,
    cfg: providers.ProviderConfig,
    flow: Any,
    connected: _Connected,
) -> Any:
    """Create the grant (or re-authorize the one it repairs or repeats), store its tokens,
    complete the session and audit both, in one transaction."""
    values = _grant_values(flow, cfg, connected.tokens, vault.clock.now())
    account = connected.account
    async with vault.db.write() as conn:
        session = await _locked_pending_session(conn, session.id)
        await _check_user_active(conn, session)
        if session.repair_grant_id is not None:
            target = await _repair_target(conn, session, account)
        else:
            target = await _existing_grant(conn, session, cfg, account, values.now)
        if target is not None:
            await _reauthorize(conn, target, connected, values)
            grant_id, operation, event = target.id, "reauth", AuditEvent.GRANT_REAUTHORIZED
        else:
            grant_id = await _insert_grant(conn, session, cfg, connected, values)
            operation, event = "creation", AuditEvent.GRANT_CREATED
        await store_new_tokens(vault, conn, session.app_id, grant_id, connected.tokens, values.now)
        item = {
            "grant_id": grant_id,
            "provider_id": cfg.provider_id,
            "account_identifier": account,
            "scopes": values.scopes,
            "api_base_url": values.base_url,
            "operation": operation,
            "grant_policy": values.policy,
        }
        await _complete_session(conn, session, item, values.now)
        await vault.audit.append(conn, _grant_records(session, cfg.provider_id, item, event))
        return await hosted.by_id(conn, KIND, session.id)


#: Finished and expired sessions are kept this long for the app's poll, then deleted.
SESSION_RETENTION = timedelta(days=1)


async def purge_sessions(vault: Vault) -> int:
    """Delete sessions (and their flows) that expired more than a day ago."""
    cutoff = vault.clock.now() - SESSION_RETENTION
    async with vault.db.write() as conn:
        purged = await hosted.purge(conn, KIND, cutoff)
        await conn.execute(sa.delete(oauth_flows).where(oauth_flows.c.expires_at < cutoff))
    return purged
