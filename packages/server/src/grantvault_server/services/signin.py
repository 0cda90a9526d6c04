"""The sign-in broker behind the SDK's ``authenticate()``: the vault is the OIDC client.

One of the two users of the hosted-session engine (:mod:`.hosted_sessions`; Connect is the
other): creation, the binding to the first browser, the state, the exactly-once callback
claim, the result and the long poll are the engine's; the IdP's steps are here.

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

import base64
import hashlib
import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlencode

import sqlalchemy as sa

from grantvault.types.errors import ErrorCode
from grantvault_server.audit.chain import AuditRecord
from grantvault_server.audit.events import AuditEvent, Outcome
from grantvault_server.crypto.barrier import BarrierError, aad_for
from grantvault_server.errors import VaultError
from grantvault_server.identity.claims import Identity
from grantvault_server.identity.state import IdpConfig
from grantvault_server.identity.verify import nonce_matches
from grantvault_server.outbound import oauth2
from grantvault_server.outbound.http import MAX_DOCUMENT_BYTES, OutboundError
from grantvault_server.outbound.urls import UrlRefused
from grantvault_server.services import hosted_sessions as hosted
from grantvault_server.services.apps import App
from grantvault_server.services.grants import principal_label
from grantvault_server.services.identity.idp import (
    CALLBACK_PATH,
    active_config,
    read_config,
    require_config,
    secret_aad,
)
from grantvault_server.services.identity.service import mapped_claims, verified_claims
from grantvault_server.services.identity.users import sync_user
from grantvault_server.services.vault import Vault
from grantvault_server.storage.tables import auth_sessions, identity_providers
from grantvault_server.timefmt import iso

SESSION_TTL = timedelta(minutes=10)
MAX_WAIT_MS = 30_000
#: A poll re-reads the database at least this often (another replica may hold the callback).
POLL_RECHECK_S = hosted.POLL_RECHECK_S
TOKEN_PREFIX = "gv_as_"
EXCHANGE_TIMEOUT_S = 10.0
_BEARER = re.compile(r"^[A-Za-z0-9_-]{20,128}$")
_LOGIN_HINT = re.compile(r"^[\x21-\x7e]{1,255}$")
PENDING = ("created", "started", "exchanging")
#: Sign-in sessions for the hosted-session engine.
KIND = hosted.SessionKind(auth_sessions, TOKEN_PREFIX, SESSION_TTL, frozenset(PENDING))


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
    new = hosted.new_session(KIND, vault.clock.now())
    handle = hosted.new_secret()
    async with vault.db.write() as conn:
        # Expired sessions of this app go first: the table stays as small as its live use.
        await hosted.purge(conn, KIND, new.created_at, auth_sessions.c.app_id == app.id)
        await conn.execute(
            sa.insert(auth_sessions).values(
                **new.columns(),
                app_id=app.id,
                idp_id=config.id,
                start_hash=hosted.digest(handle),
                status="created",
            )
        )
    return {
        "session_token": new.token,
        "auth_url": f"{vault.settings.effective_public_base_url}/sdk/auth/start?"
        + urlencode({"session": handle}),
        "expires_in": int(SESSION_TTL.total_seconds()),
        "expires_at": iso(new.expires_at),
    }


def _restart() -> str:
    return "Start the sign-in again from your app."


def _changed_idp() -> SignInPageError:
    return SignInPageError(
        400, f"The app's identity provider changed since this sign-in began. {_restart()}"
    )


async def _startable(
    vault: Vault, handle: str, cookie: str | None, now: datetime
) -> tuple[Any, IdpConfig, hosted.Binding]:
    """The session behind a start handle, still startable by this browser, and its IdP."""
    async with vault.db.read() as conn:
        row = await hosted.find(conn, auth_sessions.c.start_hash, handle)
        config = await read_config(conn, row.app_id) if row is not None else None
    if row is None:
        raise SignInPageError(400, f"This sign-in link is not valid or was used. {_restart()}")
    if row.expires_at <= now:
        raise SignInPageError(400, f"This sign-in link has expired. {_restart()}")
    if row.status not in ("created", "started"):
        raise SignInPageError(400, f"This sign-in link was already used. {_restart()}")
    hold = hosted.binding(row.browser_hash, cookie)
    if hold is None:
        raise SignInPageError(400, f"This sign-in link was opened in another browser. {_restart()}")
    if config is None or config.id != row.idp_id or not config.signin_client_id:
        raise _changed_idp()
    return row, config, hold


async def start(
    vault: Vault, handle: str | None, login_hint: str | None, cookie: str | None
) -> Redirect:
    """Bind the session to this browser and send it to the IdP (step 2)."""
    if not handle or not _BEARER.fullmatch(handle):
        raise SignInPageError(400, f"This sign-in link is not valid. {_restart()}")
    if login_hint is not None and not _LOGIN_HINT.fullmatch(login_hint):
        raise SignInPageError(400, "The login hint is not valid.")
    row, config, hold = await _startable(vault, handle, cookie, vault.clock.now())
    endpoint = str(config.endpoints.get("authorization_endpoint") or "")
    if not endpoint:
        raise SignInPageError(400, "The app's identity provider has no sign-in endpoint.")
    state, state_hash = hosted.new_state()
    verifier = hosted.new_secret(48)
    nonce = hosted.new_secret(24)
    values = {
        "status": "started",
        "state_hash": state_hash,
        "nonce": nonce,
        "verifier_ct": vault.barrier.encrypt(
            verifier.encode(), _aad(row.app_id, row.id, "verifier_ct")
        ),
    }
    startable = auth_sessions.c.status.in_(["created", "started"])
    async with vault.db.write() as conn:
        if not await hosted.bind_browser(conn, KIND, row.id, hold, startable, values=values):
            raise SignInPageError(400, f"This sign-in link was already used. {_restart()}")
    assert config.signin_client_id is not None
    url = _authorization_url(
        endpoint, config.signin_client_id, redirect_uri(vault), state, nonce, verifier, login_hint
    )
    return Redirect(url, hold.cookie)


def _authorization_url(
    endpoint: str,
    client_id: str,
    redirect_to: str,
    state: str,
    nonce: str,
    verifier: str,
    login_hint: str | None,
) -> str:
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=")
    params = {
        "response_type": "code",
        "client_id": client_id,
        "redirect_uri": redirect_to,
        "scope": "openid email profile",
        "state": state,
        "nonce": nonce,
        "code_challenge": challenge.decode(),
        "code_challenge_method": "S256",
    }
    if login_hint:
        params["login_hint"] = login_hint
    separator = "&" if "?" in endpoint else "?"
    return endpoint + separator + urlencode(params)


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


@dataclass(frozen=True)
class _Answer:
    """The IdP's redirect back, each parameter at most once."""

    state: str
    code: str | None
    error: str | None
    iss: str | None


def _answer(params: list[tuple[str, str]]) -> _Answer:
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
    return _Answer(state, code, error, iss)


async def _claim(vault: Vault, answer: _Answer, cookie: str | None) -> tuple[Any, IdpConfig]:
    """The session of this answer, checked, its state consumed exactly once."""
    now = vault.clock.now()
    async with vault.db.read() as conn:
        row = await hosted.find(conn, auth_sessions.c.state_hash, answer.state)
        config = await read_config(conn, row.app_id) if row is not None else None
    if row is None or row.status != "started":
        raise SignInPageError(
            400, f"This sign-in answer is unknown or was already used. {_restart()}"
        )
    if not hosted.matches(cookie, row.browser_hash):
        raise SignInPageError(400, f"This sign-in was started in another browser. {_restart()}")
    if row.expires_at <= now:
        raise SignInPageError(400, f"This sign-in has expired. {_restart()}")
    if config is None or config.id != row.idp_id:
        raise _changed_idp()
    if answer.iss is not None and answer.iss != config.issuer:
        raise SignInPageError(400, f"The sign-in answer comes from another issuer. {_restart()}")
    if answer.iss is None and config.endpoints.get(
        "authorization_response_iss_parameter_supported"
    ):
        raise SignInPageError(400, f"The sign-in answer lacks its issuer (iss). {_restart()}")
    started = auth_sessions.c.status == "started"
    consumed = {"status": "exchanging", "state_hash": None}
    async with vault.db.write() as conn:
        if not await hosted.claim_once(conn, auth_sessions, row.id, started, consumed):
            raise SignInPageError(400, f"This sign-in answer was already used. {_restart()}")
    return row, config


async def callback(vault: Vault, params: list[tuple[str, str]], cookie: str | None) -> str:
    """Finish the sign-in at the redirect URI (step 3). Returns the outcome shown to the
    user: ``success``, ``denied`` or ``error``; refusals before the state is consumed raise
    :class:`SignInPageError` and leave the session untouched."""
    answer = _answer(params)
    row, config = await _claim(vault, answer, cookie)
    try:
        if answer.error is not None:
            if answer.error == "access_denied":
                raise _Failed(
                    "access_denied", "The sign-in was declined at the identity provider.", "denied"
                )
            raise _Failed("idp_error", "The identity provider could not sign the user in.")
        assert answer.code is not None
        identity, id_token = await _finish(vault, config, row, answer.code)
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


async def _verifier(vault: Vault, row: Any) -> str:
    async with vault.db.read() as conn:
        try:
            return (
                await vault.barrier.decrypt_fresh(
                    conn, row.verifier_ct, _aad(row.app_id, row.id, "verifier_ct")
                )
            ).decode()
        except BarrierError:
            raise _Failed("internal_error", "The sign-in state could not be read.") from None


async def _exchange_code(
    vault: Vault, config: IdpConfig, client_id: str, token_endpoint: str, code: str, verifier: str
) -> str:
    """The sign-in's token-endpoint call: exchange the code once; returns the ID token."""
    secret = await _client_secret(vault, config)
    try:
        method = (
            oauth2.auth_method_for(config.endpoints.get("token_endpoint_auth_methods_supported"))
            if secret is not None
            else "client_secret_basic"  # a public client sends its id in the form
        )
    except oauth2.UnsupportedAuthMethods:
        raise _Failed(
            "idp_configuration",
            "The identity provider supports neither client_secret_basic nor client_secret_post.",
        ) from None
    try:
        answer = await oauth2.exchange_code(
            vault.http,
            token_endpoint,
            oauth2.ClientAuth(client_id, secret, method),
            code=code,
            redirect_uri=redirect_uri(vault),
            verifier=verifier,
            timeout_s=EXCHANGE_TIMEOUT_S,
            max_bytes=MAX_DOCUMENT_BYTES,
        )
        if 300 <= answer.status < 400:
            raise ValueError("redirects are not followed")
        parsed = answer.json()
    except (UrlRefused, OutboundError, ValueError, RecursionError):
        raise _Failed(
            "idp_error", "The identity provider's token endpoint did not answer."
        ) from None
    body = parsed if isinstance(parsed, dict) else {}
    id_token = body.get("id_token")
    if answer.status != 200 or not isinstance(id_token, str):
        raise _Failed("idp_error", "The identity provider did not issue an ID token.")
    return id_token


async def _finish(vault: Vault, config: IdpConfig, row: Any, code: str) -> tuple[Identity, str]:
    """Exchange the code once, verify the ID token, and sync the user."""
    client_id = config.signin_client_id
    token_endpoint = config.endpoints.get("token_endpoint")
    if not client_id or not isinstance(token_endpoint, str):
        raise _Failed("idp_configuration", "The app's sign-in client is not configured.")
    verifier = await _verifier(vault, row)
    id_token = await _exchange_code(vault, config, client_id, token_endpoint, code, verifier)
    return await _signed_in_user(vault, config, row, client_id, id_token), id_token


async def _signed_in_user(
    vault: Vault, config: IdpConfig, row: Any, client_id: str, id_token: str
) -> Identity:
    """Verify the ID token (this client, this sign-in's nonce) and sync its user."""
    try:
        claims = await verified_claims(vault, config, id_token, audiences=(client_id,), cache=False)
        if not nonce_matches(claims, row.nonce or ""):
            raise _Failed("invalid_id_token", "The ID token does not belong to this sign-in.")
        aud = claims.get("aud")
        if isinstance(aud, list) and len(aud) > 1 and claims.get("azp") != client_id:
            raise _Failed("invalid_id_token", "The ID token was issued to another client.")
        return await sync_user(
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


def _waiters(vault: Vault) -> hosted.Waiters:
    return hosted.Waiters(vault.identity.waiters)


async def _settle(
    vault: Vault,
    row: Any,
    *,
    status: str,
    code: str | None = None,
    message: str | None = None,
    token: str | None = None,
    user_info: dict[str, Any] | None = None,
    identity: Identity | None = None,
) -> None:
    token_ct = None
    if token is not None:
        token_ct = vault.barrier.encrypt(token.encode(), _aad(row.app_id, row.id, "user_token_ct"))
    values = {
        "status": status,
        "error_code": code,
        "error_message": message,
        "user_token_ct": token_ct,
        "user_info": user_info,
        "verifier_ct": None,
        "nonce": None,
    }
    async with vault.db.write() as conn:
        await hosted.settle(conn, KIND, row.id, values)
        if identity is not None:
            record = AuditRecord(
                chain=row.app_id,
                event=AuditEvent.USER_SIGNED_IN,
                outcome=Outcome.SUCCESS,
                actor={"type": "idp", "idp_id": identity.idp_id, "via": "signin"},
                principal=principal_label("user", identity.subject),
                details={"user_id": identity.user_id, "session_id": row.id},
            )
            await vault.audit.append(conn, [record])
    _waiters(vault).wake(row.id)


def _not_found() -> VaultError:
    return VaultError(
        ErrorCode.NOT_FOUND,
        "No sign-in session with that token in this app (it was collected, expired or never "
        "existed); start a new one.",
    )


async def _collect(vault: Vault, app: App, token: str) -> tuple[str, dict[str, Any] | None]:
    """``(session id, None)`` while pending, else ``(session id, result)``, handed out once."""
    async with vault.db.read() as conn:
        row = await hosted.find(
            conn, auth_sessions.c.token_hash, token, auth_sessions.c.app_id == app.id
        )
    if row is None:
        raise _not_found()
    if KIND.live(row, vault.clock.now()):
        return row.id, None
    session_id = row.id
    async with vault.db.write() as conn:
        row = await hosted.by_id(conn, KIND, session_id)
        # Whoever deletes the row hands the result out; a concurrent poll finds nothing.
        if not await hosted.hand_out_once(conn, KIND, session_id) or row is None:
            raise _not_found()
        if row.status in PENDING:
            return session_id, {"status": "expired"}
        if row.status == "error":
            return session_id, {
                "status": "error",
                "error_code": row.error_code,
                "error_message": row.error_message,
            }
        user_token = (
            await vault.barrier.decrypt_fresh(
                conn, row.user_token_ct, _aad(row.app_id, row.id, "user_token_ct")
            )
        ).decode()
    return session_id, {
        "status": "completed",
        "user_token": user_token,
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
    result = await hosted.long_poll(
        lambda: _collect(vault, app, session_token),
        _waiters(vault),
        hosted.wait_budget(wait_ms, MAX_WAIT_MS),
        POLL_RECHECK_S,
    )
    return result if result is not None else {"status": "pending"}
