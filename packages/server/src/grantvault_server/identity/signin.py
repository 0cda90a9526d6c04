"""The sign-in broker behind the SDK's ``authenticate()``: the vault is the OIDC client.

Flow and the rule each step enforces:

1. ``POST /sdk/auth/session`` (signed by the app): a session with two random bearer values,
   stored only as SHA-256 hashes: the *session token* (the SDK polls with it) and the
   *start handle* (in ``auth_url``, for the user's browser). 10 minutes to live.
2. ``GET /sdk/auth/start?session=<handle>``: binds the session to this browser (a random
   HttpOnly cookie, hashed in the row; another browser cannot continue it), creates
   ``state``, a PKCE S256 verifier (stored encrypted) and a ``nonce``, and redirects (303)
   to the IdP's authorization endpoint.
3. ``GET /sdk/auth/callback``: the state must match a started session *of this browser*,
   unexpired; it is consumed atomically (a replayed callback fails); ``iss`` (RFC 9207) must
   be the issuer; the code is exchanged exactly once (bounded, no redirects); the ID token is
   verified like any user token, with ``aud`` = the vault's client id and the ``nonce``.
   The user is created or synced, and the ID token is stored encrypted for one pickup.
4. ``POST /sdk/auth/poll``: long-polls (at most 30 s); the completed result is handed out
   once and deleted.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import re
import secrets
import time
import uuid
from dataclasses import dataclass
from datetime import timedelta
from typing import Any
from urllib.parse import quote_plus, urlencode

import sqlalchemy as sa

from grantvault.types.errors import ErrorCode
from grantvault_server.audit.chain import AuditRecord
from grantvault_server.audit.events import AuditEvent, Outcome
from grantvault_server.crypto.barrier import BarrierError, aad_for
from grantvault_server.errors import VaultError
from grantvault_server.identity import users
from grantvault_server.identity.fetch import IdpFetchError, fetch_json
from grantvault_server.identity.idp import (
    CALLBACK_PATH,
    active_config,
    read_config,
    require_config,
    secret_aad,
)
from grantvault_server.identity.service import mapped_claims, verified_claims
from grantvault_server.identity.state import IdpConfig, identity_state
from grantvault_server.identity.verify import nonce_matches
from grantvault_server.services.apps import App, _iso
from grantvault_server.services.grants import principal_label
from grantvault_server.services.vault import Vault
from grantvault_server.services.vault_time import utcnow
from grantvault_server.storage.tables import auth_sessions, identity_providers

SESSION_TTL = timedelta(minutes=10)
MAX_WAIT_MS = 30_000
#: A poll re-reads the database at least this often (another replica may hold the callback).
POLL_RECHECK_S = 1.0
TOKEN_PREFIX = "gv_as_"
EXCHANGE_TIMEOUT_S = 10.0
_BEARER = re.compile(r"^[A-Za-z0-9_-]{20,128}$")
_LOGIN_HINT = re.compile(r"^[\x21-\x7e]{1,255}$")
PENDING = ("created", "started", "exchanging")


class SignInPageError(Exception):
    """A browser-facing refusal: ``status`` and a plain-text message safe to render."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class Redirect:
    url: str
    #: A new browser-binding cookie value to set, if this browser had none for the session.
    cookie: str | None


def _sha(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def _aad(app_id: str, session_id: str, column: str) -> bytes:
    return aad_for(auth_sessions.name, app_id, session_id, column)


def redirect_uri(vault: Vault) -> str:
    return vault.settings.effective_public_base_url + CALLBACK_PATH


def _not_configured(app: App) -> VaultError:
    return VaultError(
        ErrorCode.IDP_SIGNIN_NOT_CONFIGURED,
        "This app's identity provider has no sign-in client. Register the vault as an OIDC "
        "client at the IdP (redirect URI: see `grantvault idp show`) and run `grantvault idp "
        f"set --app {app.name} --issuer <issuer> --client-id <id> --client-secret-stdin`.",
    )


async def create_session(vault: Vault, app: App) -> dict[str, Any]:
    """Start a brokered sign-in; answers the ``/sdk/auth/session`` body."""
    config = require_config(await active_config(vault, app.id, fresh=True))
    endpoints = config.endpoints
    if not (
        config.signin_client_id
        and endpoints.get("authorization_endpoint")
        and endpoints.get("token_endpoint")
    ):
        raise _not_configured(app)
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    handle = secrets.token_urlsafe(32)
    now = utcnow()
    expires_at = now + SESSION_TTL
    async with vault.db.write() as conn:
        # Expired sessions of this app go first: the table stays as small as its live use.
        await conn.execute(
            sa.delete(auth_sessions).where(
                auth_sessions.c.app_id == app.id, auth_sessions.c.expires_at < now
            )
        )
        await conn.execute(
            sa.insert(auth_sessions).values(
                id=str(uuid.uuid4()),
                app_id=app.id,
                idp_id=config.id,
                token_hash=_sha(token),
                start_hash=_sha(handle),
                status="created",
                created_at=now,
                expires_at=expires_at,
            )
        )
    return {
        "session_token": token,
        "auth_url": f"{vault.settings.effective_public_base_url}/sdk/auth/start?"
        + urlencode({"session": handle}),
        "expires_in": int(SESSION_TTL.total_seconds()),
        "expires_at": _iso(expires_at),
    }


def _restart() -> str:
    return "Start the sign-in again from your app."


async def start(
    vault: Vault, handle: str | None, login_hint: str | None, cookie: str | None
) -> Redirect:
    """Bind the session to this browser and send it to the IdP (step 2)."""
    if not handle or not _BEARER.fullmatch(handle):
        raise SignInPageError(400, f"This sign-in link is not valid. {_restart()}")
    if login_hint is not None and not _LOGIN_HINT.fullmatch(login_hint):
        raise SignInPageError(400, "The login hint is not valid.")
    now = utcnow()
    async with vault.db.read() as conn:
        row = (
            await conn.execute(
                sa.select(auth_sessions).where(auth_sessions.c.start_hash == _sha(handle))
            )
        ).first()
        config = await read_config(conn, row.app_id) if row is not None else None
    if row is None:
        raise SignInPageError(400, f"This sign-in link is not valid or was used. {_restart()}")
    if row.expires_at <= now:
        raise SignInPageError(400, f"This sign-in link has expired. {_restart()}")
    if row.status not in ("created", "started"):
        raise SignInPageError(400, f"This sign-in link was already used. {_restart()}")
    new_cookie = None
    if row.browser_hash is None:
        new_cookie = secrets.token_urlsafe(32)
        browser_hash = _sha(new_cookie)
    elif cookie is not None and secrets.compare_digest(_sha(cookie), row.browser_hash):
        browser_hash = row.browser_hash
    else:
        raise SignInPageError(400, f"This sign-in link was opened in another browser. {_restart()}")
    if config is None or config.id != row.idp_id or not config.signin_client_id:
        raise SignInPageError(
            400, f"The app's identity provider changed since this sign-in began. {_restart()}"
        )
    endpoint = str(config.endpoints.get("authorization_endpoint") or "")
    if not endpoint:
        raise SignInPageError(400, "The app's identity provider has no sign-in endpoint.")
    state = secrets.token_urlsafe(32)
    verifier = secrets.token_urlsafe(48)
    nonce = secrets.token_urlsafe(24)
    async with vault.db.write() as conn:
        result = await conn.execute(
            sa.update(auth_sessions)
            .where(auth_sessions.c.id == row.id, auth_sessions.c.status.in_(["created", "started"]))
            .values(
                status="started",
                state_hash=_sha(state),
                browser_hash=browser_hash,
                nonce=nonce,
                verifier_ct=vault.barrier.encrypt(
                    verifier.encode(), _aad(row.app_id, row.id, "verifier_ct")
                ),
            )
        )
        if result.rowcount != 1:
            raise SignInPageError(400, f"This sign-in link was already used. {_restart()}")
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=")
    params = {
        "response_type": "code",
        "client_id": config.signin_client_id,
        "redirect_uri": redirect_uri(vault),
        "scope": "openid email profile",
        "state": state,
        "nonce": nonce,
        "code_challenge": challenge.decode(),
        "code_challenge_method": "S256",
    }
    if login_hint:
        params["login_hint"] = login_hint
    separator = "&" if "?" in endpoint else "?"
    return Redirect(endpoint + separator + urlencode(params), new_cookie)


class _Failed(Exception):
    """The sign-in failed after the state was consumed; the session records why."""

    def __init__(self, code: str, message: str, outcome: str = "error") -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.outcome = outcome


def _single(params: list[tuple[str, str]], name: str) -> str | None:
    values = [v for k, v in params if k == name]
    if len(values) > 1:
        raise SignInPageError(400, f"The sign-in answer repeats {name!r}. {_restart()}")
    return values[0] if values else None


async def callback(vault: Vault, params: list[tuple[str, str]], cookie: str | None) -> str:
    """Finish the sign-in at the redirect URI (step 3). Returns the outcome shown to the
    user: ``success``, ``denied`` or ``error``; refusals before the state is consumed raise
    :class:`SignInPageError` and leave the session untouched."""
    state = _single(params, "state")
    code = _single(params, "code")
    error = _single(params, "error")
    iss = _single(params, "iss")
    if not state:
        raise SignInPageError(400, f"The sign-in answer has no state. {_restart()}")
    if len(state) > 128 or (code is not None and len(code) > 2048):
        raise SignInPageError(400, f"The sign-in answer is malformed. {_restart()}")
    if (code is None) == (error is None):
        raise SignInPageError(
            400, f"The sign-in answer must carry either a code or an error. {_restart()}"
        )
    now = utcnow()
    async with vault.db.read() as conn:
        row = (
            await conn.execute(
                sa.select(auth_sessions).where(auth_sessions.c.state_hash == _sha(state))
            )
        ).first()
        config = await read_config(conn, row.app_id) if row is not None else None
    if row is None or row.status != "started":
        raise SignInPageError(
            400, f"This sign-in answer is unknown or was already used. {_restart()}"
        )
    if (
        cookie is None
        or row.browser_hash is None
        or not secrets.compare_digest(_sha(cookie), row.browser_hash)
    ):
        raise SignInPageError(400, f"This sign-in was started in another browser. {_restart()}")
    if row.expires_at <= now:
        raise SignInPageError(400, f"This sign-in has expired. {_restart()}")
    if config is None or config.id != row.idp_id:
        raise SignInPageError(
            400, f"The app's identity provider changed since this sign-in began. {_restart()}"
        )
    if iss is not None and iss != config.issuer:
        raise SignInPageError(400, f"The sign-in answer comes from another issuer. {_restart()}")
    if iss is None and config.endpoints.get("authorization_response_iss_parameter_supported"):
        raise SignInPageError(400, f"The sign-in answer lacks its issuer (iss). {_restart()}")
    async with vault.db.write() as conn:
        consumed = await conn.execute(
            sa.update(auth_sessions)
            .where(auth_sessions.c.id == row.id, auth_sessions.c.status == "started")
            .values(status="exchanging", state_hash=None)
        )
        if consumed.rowcount != 1:
            raise SignInPageError(400, f"This sign-in answer was already used. {_restart()}")
    try:
        if error is not None:
            if error == "access_denied":
                raise _Failed(
                    "access_denied", "The sign-in was declined at the identity provider.", "denied"
                )
            raise _Failed("idp_error", "The identity provider could not sign the user in.")
        assert code is not None
        identity, id_token = await _finish(vault, config, row, code)
    except _Failed as failed:
        await _settle(vault, row, status="error", code=failed.code, message=failed.message)
        return failed.outcome
    await _settle(
        vault,
        row,
        status="completed",
        token=id_token,
        user_info={
            "sub": identity.subject,
            "app_user_id": identity.user_id,
            **({"email": identity.email} if identity.email else {}),
            **({"name": identity.display_name} if identity.display_name else {}),
        },
        identity=identity,
    )
    return "success"


async def _client_secret(vault: Vault, config: IdpConfig) -> str | None:
    async with vault.db.read() as conn:
        blob = (
            await conn.execute(
                sa.select(identity_providers.c.signin_client_secret_ct).where(
                    identity_providers.c.id == config.id
                )
            )
        ).scalar_one_or_none()
        if blob is None:
            return None
        try:
            return (
                await vault.barrier.decrypt_fresh(
                    conn, blob, secret_aad(config.app_id, config.id, "signin_client_secret_ct")
                )
            ).decode()
        except BarrierError:
            raise _Failed(
                "idp_configuration", "The sign-in client's stored secret could not be read."
            ) from None


async def _finish(
    vault: Vault, config: IdpConfig, row: Any, code: str
) -> tuple[users.Identity, str]:
    """Exchange the code once, verify the ID token, and sync the user."""
    client_id = config.signin_client_id
    token_endpoint = config.endpoints.get("token_endpoint")
    if not client_id or not isinstance(token_endpoint, str):
        raise _Failed("idp_configuration", "The app's sign-in client is not configured.")
    async with vault.db.read() as conn:
        try:
            verifier = (
                await vault.barrier.decrypt_fresh(
                    conn, row.verifier_ct, _aad(row.app_id, row.id, "verifier_ct")
                )
            ).decode()
        except BarrierError:
            raise _Failed("internal_error", "The sign-in state could not be read.") from None
    secret = await _client_secret(vault, config)
    form = {
        "grant_type": "authorization_code",
        "code": code,
        "redirect_uri": redirect_uri(vault),
        "code_verifier": verifier,
    }
    headers: dict[str, str] = {}
    methods = config.endpoints.get("token_endpoint_auth_methods_supported") or [
        "client_secret_basic"
    ]
    if secret is None:
        form["client_id"] = client_id
    elif "client_secret_basic" in methods:
        # RFC 6749 2.3.1: both parts form-urlencoded before base64.
        pair = f"{quote_plus(client_id)}:{quote_plus(secret)}".encode()
        headers["Authorization"] = "Basic " + base64.b64encode(pair).decode()
    elif "client_secret_post" in methods:
        form.update(client_id=client_id, client_secret=secret)
    else:
        raise _Failed(
            "idp_configuration",
            "The identity provider supports neither client_secret_basic nor client_secret_post.",
        )
    try:
        answer = await fetch_json(
            token_endpoint,
            "token endpoint",
            method="POST",
            form=form,
            headers=headers,
            timeout_s=EXCHANGE_TIMEOUT_S,
            verify=vault.tls_context,
        )
    except IdpFetchError:
        raise _Failed(
            "idp_error", "The identity provider's token endpoint did not answer."
        ) from None
    body = answer.body if isinstance(answer.body, dict) else {}
    id_token = body.get("id_token")
    if answer.status != 200 or not isinstance(id_token, str):
        raise _Failed("idp_error", "The identity provider did not issue an ID token.")
    try:
        claims = await verified_claims(vault, config, id_token, audiences=(client_id,), cache=False)
        if not nonce_matches(claims, row.nonce or ""):
            raise _Failed("invalid_id_token", "The ID token does not belong to this sign-in.")
        aud = claims.get("aud")
        if isinstance(aud, list) and len(aud) > 1 and claims.get("azp") != client_id:
            raise _Failed("invalid_id_token", "The ID token was issued to another client.")
        identity = await users.sync_user(
            vault,
            config,
            mapped_claims(config, claims),
            {"type": "idp", "idp_id": config.id, "via": "signin"},
        )
    except VaultError as exc:
        if exc.code is ErrorCode.USER_DISABLED:
            raise _Failed("user_disabled", exc.message, "denied") from None
        if exc.code is ErrorCode.IDP_UNAVAILABLE:
            raise _Failed(
                "idp_error", "The identity provider's keys could not be fetched."
            ) from None
        raise _Failed("invalid_id_token", "The identity provider's ID token was refused.") from None
    return identity, id_token


async def _settle(
    vault: Vault,
    row: Any,
    *,
    status: str,
    code: str | None = None,
    message: str | None = None,
    token: str | None = None,
    user_info: dict[str, Any] | None = None,
    identity: users.Identity | None = None,
) -> None:
    async with vault.db.write() as conn:
        await conn.execute(
            sa.update(auth_sessions)
            .where(auth_sessions.c.id == row.id)
            .values(
                status=status,
                error_code=code,
                error_message=message,
                user_token_ct=vault.barrier.encrypt(
                    token.encode(), _aad(row.app_id, row.id, "user_token_ct")
                )
                if token is not None
                else None,
                user_info=user_info,
                verifier_ct=None,
                nonce=None,
            )
        )
        if identity is not None:
            await vault.audit.append(
                conn,
                [
                    AuditRecord(
                        chain=row.app_id,
                        event=AuditEvent.USER_SIGNED_IN,
                        outcome=Outcome.SUCCESS,
                        actor={"type": "idp", "idp_id": identity.idp_id, "via": "signin"},
                        principal=principal_label("user", identity.subject),
                        details={"user_id": identity.user_id, "session_id": row.id},
                    )
                ],
            )
    waiter = identity_state(vault).waiters.pop(row.id, None)
    if waiter is not None:
        waiter.set()


def _not_found() -> VaultError:
    return VaultError(
        ErrorCode.NOT_FOUND,
        "No sign-in session with that token in this app (it was collected, expired or never "
        "existed); start a new one.",
    )


async def _collect(vault: Vault, app: App, token_hash: str) -> tuple[str, dict[str, Any] | None]:
    """``(session id, None)`` while pending, else ``(session id, result)``, handed out once."""
    async with vault.db.read() as conn:
        row = (
            await conn.execute(
                sa.select(
                    auth_sessions.c.id, auth_sessions.c.status, auth_sessions.c.expires_at
                ).where(auth_sessions.c.token_hash == token_hash, auth_sessions.c.app_id == app.id)
            )
        ).first()
    if row is None:
        raise _not_found()
    if row.status in PENDING and row.expires_at > utcnow():
        return row.id, None
    session_id = row.id
    async with vault.db.write() as conn:
        row = (
            await conn.execute(sa.select(auth_sessions).where(auth_sessions.c.id == session_id))
        ).first()
        # Whoever deletes the row hands the result out; a concurrent poll finds nothing.
        deleted = await conn.execute(
            sa.delete(auth_sessions).where(auth_sessions.c.id == session_id)
        )
        if row is None or deleted.rowcount != 1:
            raise _not_found()
        if row.status in PENDING:
            return session_id, {"status": "expired"}
        if row.status == "error":
            return session_id, {
                "status": "error",
                "error_code": row.error_code,
                "error_message": row.error_message,
            }
        token = (
            await vault.barrier.decrypt_fresh(
                conn, row.user_token_ct, _aad(row.app_id, row.id, "user_token_ct")
            )
        ).decode()
    return session_id, {
        "status": "completed",
        "user_token": token,
        "user_info": row.user_info or {},
    }


async def poll(vault: Vault, app: App, session_token: str, wait_ms: int | None) -> dict[str, Any]:
    """The session's status; waits up to ``wait_ms`` (at most 30 s) while it is pending.

    A completed or failed session is handed out exactly once: the row is deleted in the
    transaction that reads it.
    """
    if not session_token.startswith(TOKEN_PREFIX) or not _BEARER.fullmatch(
        session_token.removeprefix(TOKEN_PREFIX)
    ):
        raise VaultError(
            ErrorCode.NOT_FOUND,
            "That is not a sign-in session token; use the session_token from /sdk/auth/session.",
        )
    token_hash = _sha(session_token)
    deadline = time.monotonic() + min(max(wait_ms or 0, 0), MAX_WAIT_MS) / 1000
    waiters = identity_state(vault).waiters
    while True:
        session_id, result = await _collect(vault, app, token_hash)
        if result is not None:
            waiters.pop(session_id, None)
            return result
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return {"status": "pending"}
        event = waiters.setdefault(session_id, asyncio.Event())
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(event.wait(), timeout=min(remaining, POLL_RECHECK_S))
