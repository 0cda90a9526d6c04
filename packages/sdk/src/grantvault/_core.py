"""The protocol, written once: every operation is a generator that yields effects.

``App`` (async) and ``SyncApp`` (sync) drive the same generators; they differ only in how
they carry out an effect (``Send`` an HTTP request, ``Sleep``, ``GetUserToken``, ``Spawn`` a
background operation). Everything else (validation, signing, retries, polling loops, error
mapping, credential injection, audit rows) lives here, so the two clients cannot drift.

An operation receives the result of each effect from ``send()``, or the exception it raised
from ``throw()``: an ``httpx`` transport error surfaces inside the generator at the ``yield``
that asked for the request, where it is mapped to ``NetworkError`` / ``TimeoutError``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import time
import uuid
import webbrowser
from collections.abc import Callable, Generator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal, TypeVar
from urllib.parse import quote

import httpx
from pydantic import ValidationError

from grantvault import _validation as v
from grantvault._constants import (
    AUTH_POLL_HTTP_BUFFER,
    AUTH_POLL_SERVER_WAIT,
    MAX_RATE_LIMIT_RETRY_AFTER,
    SCOPE_REPORT_TIMEOUT,
)
from grantvault._context import current_audit_context
from grantvault._errors import error_from_response
from grantvault._injection import (
    Injection,
    ProviderRequest,
    audit_body,
    audit_response_headers,
    build_provider_request,
    parse_bearer_challenge,
    parse_token_answer,
)
from grantvault._retry import RetryPolicy, coerce_seconds, unanswered
from grantvault.enums import CallerType, HttpMethod
from grantvault.exceptions import (
    AlterSDKError,
    AlterValueError,
    BackendError,
    ConnectConfigError,
    ConnectDeniedError,
    ConnectFlowError,
    ConnectTimeoutError,
    NetworkError,
    ProviderAPIError,
    ProviderUnauthorizedError,
    RateLimitError,
    ScopeReauthRequiredError,
    TimeoutError,
)
from grantvault.models import (
    AuthResult,
    AuthSession,
    ConnectDelegation,
    ConnectFailedGrant,
    ConnectResult,
    ConnectSession,
    CreateGrantResult,
    GrantPolicy,
    RateLimitSnapshot,
    RetryInfo,
    RevokeGrantResult,
    UnifiedGrantListResult,
)
from grantvault.protocol.signing import (
    HEADER_ACTOR_ID,
    HEADER_CALLER,
    HEADER_CALLER_TYPE,
    HEADER_CONTEXT,
    sign_request,
)

T = TypeVar("T")
log = logging.getLogger("grantvault")

UserTokenGetter = Callable[[], Any]


# --- Effects -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Send:
    """Send one HTTP request with the vault client or the provider client."""

    target: Literal["vault", "provider"]
    method: str
    url: str
    headers: Mapping[str, str]
    content: bytes | None = None
    timeout: float | None = None


@dataclass(frozen=True)
class Sleep:
    """Wait this many seconds."""

    seconds: float


@dataclass(frozen=True)
class GetUserToken:
    """Call the configured ``user_token_getter`` (sync or async) and return its value."""


@dataclass(frozen=True)
class Spawn:
    """Run an operation in the background; it is awaited when the client closes."""

    op: Generator[Any, Any, None]


Effect = Send | Sleep | GetUserToken | Spawn
Op = Generator[Effect, Any, T]


class Clock:
    """Monotonic time, replaceable in tests so that polling loops run in no time."""

    def now(self) -> float:
        """Seconds on a monotonic clock."""
        return time.monotonic()

    def sleep(self, seconds: float) -> None:
        """Block for ``seconds`` (the sync client's waits)."""
        time.sleep(seconds)

    async def asleep(self, seconds: float) -> None:
        """Wait ``seconds`` without blocking the event loop (the async client's waits)."""
        await asyncio.sleep(seconds)


# --- Protocol constants ------------------------------------------------------------------

_PERMANENT_AUTH_POLL = frozenset({400, 401, 403, 404, 422})
_CONNECT_CONFIG_POLL_CODES = frozenset(
    {
        "connect_config_error",
        "invalid_redirect_uri",
        "invalid_client",
        "unauthorized_client",
        "provider_configuration_unavailable",
        "shared_dev_credential_unavailable",
        "managed_oauth_scope_approval_required",
    }
)
#: Identity-sync codes that arrive inside a poll answer, and the status they stand for.
_IDENTITY_SYNC_STATUS = {
    "service_unavailable": 503,
    "identity_provider_inactive": 409,
    "identity_group_name_ambiguous": 409,
}
_CLOSED = "This client is closed; create a new App to make requests."


def _uuid_or_none(value: str | None) -> str | None:
    try:
        return str(uuid.UUID(value)) if value and str(uuid.UUID(value)) == value else None
    except ValueError:
        return None


@dataclass
class Core:
    """State and operations shared by ``App`` and ``SyncApp`` (one per client)."""

    api_key: str = field(repr=False)
    base_url: str
    timeout: float
    caller: str | None
    caller_type: CallerType
    user_token_getter: UserTokenGetter | None
    retry: RetryPolicy
    logger: logging.Logger = log
    clock: Clock = field(default_factory=Clock)
    open_url: Callable[[str], bool] = webbrowser.open
    closed: bool = False
    actor_id: str | None = None
    last_retry_info: RetryInfo | None = None
    last_rate_limit: RateLimitSnapshot | None = None
    _warned_deprecated_key: bool = False

    # --- vault calls ------------------------------------------------------------------------

    def _headers(
        self,
        method: str,
        path: str,
        body: bytes,
        context: str | None,
        caller: str | None,
    ) -> dict[str, str]:
        actor: dict[str, str] = {}
        if caller is not None:
            actor[HEADER_CALLER] = caller
            actor[HEADER_CALLER_TYPE] = self.caller_type.value
        elif self.caller is not None:
            actor[HEADER_CALLER] = self.caller
            actor[HEADER_CALLER_TYPE] = self.caller_type.value
        if self.actor_id is not None and caller is None:
            actor[HEADER_ACTOR_ID] = self.actor_id
        if context:
            actor[HEADER_CONTEXT] = context
        headers = sign_request(self.api_key, method=method, target=path, body=body, actor=actor)
        headers.update(actor)
        if body:
            headers["Content-Type"] = "application/json"
        return headers

    def _observe(self, response: httpx.Response, *, cache_actor: bool) -> None:
        """Read the headers every vault answer may carry (actor id, budget, deprecation)."""
        actor = _uuid_or_none(response.headers.get(HEADER_ACTOR_ID))
        if cache_actor and actor is not None and self.actor_id is None:
            self.actor_id = actor
        limit = response.headers.get("x-ratelimit-limit")
        remaining = response.headers.get("x-ratelimit-remaining")
        reset = response.headers.get("x-ratelimit-reset")
        if limit and remaining and reset and (limit + remaining + reset).isdigit():
            with contextlib.suppress(ValueError, OverflowError, OSError):
                self.last_rate_limit = RateLimitSnapshot(
                    limit=int(limit),
                    remaining=int(remaining),
                    reset_at=datetime.fromtimestamp(int(reset[:12]), tz=UTC),
                )
        if (
            response.headers.get("x-alter-key-deprecated", "").lower() == "true"
            and not self._warned_deprecated_key
        ):
            self._warned_deprecated_key = True
            self.logger.warning("This API key is deprecated; rotate to its successor soon.")

    def vault_call(
        self,
        method: str,
        path: str,
        payload: Any = None,
        *,
        idempotent: bool,
        context: Mapping[str, str] | None = None,
        caller: str | None = None,
        timeout: float | None = None,
        raw: bool = False,
        resend_unanswered: bool = True,
    ) -> Op[httpx.Response]:
        """Sign and send one vault request, retrying per the retry policy.

        Returns the response; a status >= 400 raises the mapped exception unless ``raw``.

        Whatever the retry policy, a request whose connection closed before any byte of the
        answer arrived (:func:`unanswered`) is sent once more, signed afresh: that is a
        pooled keep-alive connection the server closed as idle just as the request went out,
        and the server never processed it (see ``_retry`` and docs/sdk.md for why this is
        safe per call). ``resend_unanswered=False`` for the one call where a server that died
        after committing could turn the resend into a duplicate (creating a grant).
        """
        if self.closed:
            raise AlterSDKError(_CLOSED)
        body = b"" if payload is None else json.dumps(payload, separators=(",", ":")).encode()
        context_value = v.context_header(context)
        attempt = 0
        resent = not resend_unanswered
        while True:
            headers = self._headers(method, path, body, context_value, caller)
            try:
                response: httpx.Response = yield Send(
                    "vault", method, path, headers, body or None, timeout
                )
            except httpx.HTTPError as exc:
                if not resent and unanswered(exc):
                    resent = True
                    self.logger.debug(
                        "resending %s %s: the connection closed before any answer",
                        method,
                        path,
                    )
                    continue
                delay = self.retry.delay_for_error(attempt, idempotent=idempotent)
                if delay is None:
                    raise _transport_error(exc, "the vault", self.base_url) from exc
                self.logger.debug("retrying %s %s after %s", method, path, type(exc).__name__)
                attempt += 1
                yield Sleep(delay)
                continue
            self._observe(response, cache_actor=caller is None)
            if response.status_code < 400:
                return response
            delay = self.retry.delay_for_status(
                attempt, response.status_code, response.headers, idempotent=idempotent
            )
            if delay is not None:
                self.logger.debug(
                    "retrying %s %s after HTTP %s", method, path, response.status_code
                )
                attempt += 1
                yield Sleep(delay)
                continue
            if raw:
                return response
            raise error_from_response(response.status_code, response.headers, response.content)

    @staticmethod
    def _json(response: httpx.Response, what: str) -> Any:
        try:
            return response.json()
        except ValueError:
            raise BackendError(
                f"The vault's {what} answer is not JSON.",
                {"status_code": response.status_code},
            ) from None

    def _user_token(self, explicit: str | None) -> Op[str | None]:
        """An explicit token wins; else the getter's (``None`` when there is no getter)."""
        if explicit is not None:
            return explicit
        if self.user_token_getter is None:
            return None
        token: str | None = yield GetUserToken()
        return token

    # --- request() ------------------------------------------------------------------------

    def request(
        self,
        method: HttpMethod | str,
        url: str,
        *,
        grant_id: str | None,
        provider: str | None,
        account: str | None,
        label: str | None,
        json: Any,
        extra_headers: dict[str, str] | None,
        query_params: dict[str, Any] | None,
        path_params: dict[str, str] | None,
        reason: str | None,
        context: dict[str, str] | None,
        body: bytes | None,
        caller: str | None,
        user_token: str | None,
        app_user_id: str | None,
    ) -> Op[httpx.Response]:
        """Retrieve the credential, call the provider with it, audit the call."""
        if self.closed:
            raise AlterSDKError(_CLOSED)
        method_name = _method(method)
        grant_id = _request_grant(grant_id, provider, account, label, app_user_id)
        content = _request_content(json, body)
        v.optional_text(reason, "reason", max_length=512)
        v.optional_text(user_token, "user_token", max_length=16_384)
        if caller is not None:
            v.caller_label(caller, "caller")
        headers = v.header_map(extra_headers)
        url = v.fill_path_params(url, path_params) if isinstance(url, str) else url
        final_url = v.provider_url(url, query_params)
        if context is None:
            context = current_audit_context()
        v.context_header(context)

        self.last_retry_info = None
        token = yield from self._user_token(user_token)
        optional = {
            "user_token": token,
            "app_user_id": app_user_id,
            "account": account,
            "label": label,
        }
        request = {"method": method_name, "url": final_url}
        payload = _token_payload(grant_id, provider, reason, request, optional)
        answer = yield from self.vault_call(
            "POST",
            "/sdk/token",
            payload,
            idempotent=False,
            context=context,
            caller=caller,
        )
        injection = parse_token_answer(self._json(answer, "token"))
        self.last_retry_info = injection.retry_info
        prepared = build_provider_request(
            injection,
            method=method_name,
            url=final_url,
            headers=headers,
            query_params=None,
            content=content,
            json_content=json is not None,
        )
        audit = {
            "grant_id": injection.grant_id,
            "provider_id": injection.provider_id,
            "token_generation": injection.token_generation,
            "method": method_name,
            "url": final_url,
            "request_headers": prepared.audit_headers,
            "request_body": json if json is not None else audit_body(content),
            "reason": reason,
            "context": dict(context) if context else None,
        }
        response = yield from self._send_to_provider(prepared, audit, context)
        if response.status_code >= 400:
            yield from self._provider_error(response, injection, method_name, final_url)
        response.retry_info = injection.retry_info  # type: ignore[attr-defined]
        return response

    def _send_to_provider(
        self,
        prepared: ProviderRequest,
        audit: dict[str, Any],
        context: Mapping[str, str] | None,
    ) -> Op[httpx.Response]:
        """Send the injected request; the audit row (sent in the background) notes the outcome."""
        started = self.clock.now()
        send_url = prepared.url
        if prepared.params:
            send_url = str(httpx.URL(send_url).copy_merge_params(prepared.params))
        try:
            response: httpx.Response = yield Send(
                "provider",
                prepared.method,
                send_url,
                prepared.headers,
                prepared.content,
            )
        except httpx.HTTPError as exc:
            latency = int((self.clock.now() - started) * 1000)
            note = "timeout" if isinstance(exc, httpx.TimeoutException) else "network"
            yield Spawn(
                self._audit_op(
                    {**audit, "response_status": 0, "response_headers": None, "latency_ms": latency,
                     "response_body": f"<transport error: {note}>"},
                    context,
                )
            )  # fmt: skip
            raise _transport_error(exc, "the provider", None, grant_id=audit["grant_id"]) from exc
        latency = int((self.clock.now() - started) * 1000)
        yield Spawn(
            self._audit_op(
                {
                    **audit,
                    "response_status": response.status_code,
                    "response_headers": audit_response_headers(response.headers),
                    "response_body": audit_body(response.content),
                    "latency_ms": latency,
                },
                context,
            )
        )
        return response

    def _provider_error(
        self, response: httpx.Response, injection: Injection, method: str, url: str
    ) -> Op[None]:
        status = response.status_code
        challenge_raw = response.headers.get("www-authenticate", "")
        challenge = parse_bearer_challenge(challenge_raw)
        body_text = audit_body(response.content)
        details: dict[str, Any] = {
            "grant_id": injection.grant_id,
            "provider_id": injection.provider_id,
            "method": method,
            "url": url,
        }
        if status == 403 and challenge.get("error") == "insufficient_scope":
            missing = challenge["scope"].split() if challenge.get("scope") else None
            yield Spawn(
                self._scope_report_op(injection.grant_id, status, missing, challenge_raw, url)
            )
            raise ScopeReauthRequiredError(
                "The provider says the grant lacks scopes (insufficient_scope); the user must "
                "connect again to grant them.",
                grant_id=injection.grant_id,
                provider_id=injection.provider_id,
                status_code=status,
                response_body=body_text,
                missing_scopes=missing,
                details={
                    **details,
                    "source": "provider_insufficient_scope",
                    "missing_scopes": missing,
                    "www_authenticate": challenge_raw or None,
                },
            )
        if status == 403 and injection.scope_mismatch:
            raise ScopeReauthRequiredError(
                "The provider refused (403) and the vault flags this grant's scopes as out of "
                "date; the user must connect again.",
                grant_id=injection.grant_id,
                provider_id=injection.provider_id,
                status_code=status,
                response_body=body_text,
                details={**details, "source": "backend_flag"},
            )
        if status == 401 and challenge.get("error") != "insufficient_scope":
            raise ProviderUnauthorizedError(
                "The provider rejected the credential (401): reconnect the OAuth grant, or "
                "store a valid key for the managed secret.",
                grant_id=injection.grant_id,
                provider_id=injection.provider_id,
                status_code=status,
                response_body=body_text,
                details={**details, "source": "provider_unauthorized"},
            )
        raise ProviderAPIError(
            f"The provider answered HTTP {status}.",
            status_code=status,
            response_body=body_text,
            details=details,
        )

    def _audit_op(self, row: dict[str, Any], context: Mapping[str, str] | None) -> Op[None]:
        """POST the provider-call row; failures are logged, never raised."""
        try:
            yield from self.vault_call(
                "POST",
                "/sdk/oauth/audit/api-call",
                row,
                idempotent=False,
                context=context,
            )
        except AlterSDKError as exc:
            self.logger.warning(
                "audit row for grant %s was not stored: %s", row.get("grant_id"), exc
            )

    def _scope_report_op(
        self, grant_id: str, status: int, missing: list[str] | None, raw: str, url: str
    ) -> Op[None]:
        """Tell the vault the grant's scopes drifted; best effort with a short timeout."""
        payload = {
            "provider_status_code": status,
            "provider_error_code": "insufficient_scope",
            "missing_scopes": [s[:256] for s in missing[:50]] if missing else None,
            "raw_www_authenticate": raw[:4096] if raw else None,
            "api_endpoint": url[:2048],
            "detection_source": "www_authenticate_rfc6750",
            "sdk_correlation_id": secrets.token_urlsafe(16),
        }
        path = f"/sdk/grants/{quote(grant_id, safe='')}/report-scope-mismatch"
        try:
            response = yield from self.vault_call(
                "POST",
                path,
                payload,
                idempotent=False,
                timeout=SCOPE_REPORT_TIMEOUT,
                raw=True,
            )
        except AlterSDKError as exc:
            self.logger.warning("scope-mismatch report for %s failed: %s", grant_id, exc)
            return
        if response.status_code >= 300:
            self.logger.warning(
                "scope-mismatch report for %s answered HTTP %s",
                grant_id,
                response.status_code,
            )

    # --- grants -----------------------------------------------------------------------------

    def list_grants(
        self,
        *,
        provider_id: str | None,
        status: str | None,
        account: str | None,
        label: str | None,
        end_user_token: str | None,
        limit: int,
        offset: int,
    ) -> Op[UnifiedGrantListResult]:
        """``POST /sdk/grants/list``; the getter's token scopes the list to one user."""
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= 1000:
            raise AlterValueError("limit must be an int between 1 and 1000")
        if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
            raise AlterValueError("offset must be an int >= 0")
        payload: dict[str, Any] = {"limit": limit, "offset": offset}
        for name, value in (
            ("provider_id", provider_id),
            ("status", status),
            ("account", account),
            ("label", label),
        ):
            if v.optional_text(value, name, max_length=255) is not None:
                payload[name] = value
        v.optional_text(end_user_token, "end_user_token", max_length=16_384)
        token = yield from self._user_token(end_user_token)
        if token is not None:
            payload["user_token"] = token
        response = yield from self.vault_call("POST", "/sdk/grants/list", payload, idempotent=True)
        return _parse(UnifiedGrantListResult, self._json(response, "grant list"))

    def revoke_grant(self, grant_id: str, *, reason: str | None) -> Op[RevokeGrantResult]:
        """Revoke a grant (scoped to the current user when a token getter is configured)."""
        grant_id = v.canonical_uuid(grant_id, "grant_id")
        payload: dict[str, Any] = {}
        if v.optional_text(reason, "reason", max_length=512) is not None:
            payload["reason"] = reason
        token = yield from self._user_token(None)
        if token is not None:
            payload["user_token"] = token
        response = yield from self.vault_call(
            "POST", f"/sdk/oauth/grants/{grant_id}/revoke", payload, idempotent=False
        )
        return _parse(RevokeGrantResult, self._json(response, "revoke"))

    def create_managed_secret_grant(
        self,
        managed_secret_id: str,
        *,
        principal: Any,
        grant_policy: Any,
        credential_id: str | None,
    ) -> Op[CreateGrantResult]:
        """Grant a principal the use of a managed secret."""
        from grantvault.models import (
            AgentPrincipal,
            GroupPrincipal,
            SystemPrincipal,
            UserPrincipal,
        )

        secret_id = v.canonical_uuid(managed_secret_id, "managed_secret_id")
        if not isinstance(
            principal, UserPrincipal | GroupPrincipal | SystemPrincipal | AgentPrincipal
        ):
            raise AlterValueError(
                "principal must be a UserPrincipal, GroupPrincipal, SystemPrincipal or "
                f"AgentPrincipal; got {type(principal).__name__}"
            )
        payload: dict[str, Any] = {
            "principal": principal.model_dump(mode="json"),
            "grant_policy": v.grant_policy(grant_policy) or {},
        }
        if credential_id is not None:
            payload["credential_id"] = v.canonical_uuid(credential_id, "credential_id")
        response = yield from self.vault_call(
            "POST",
            f"/sdk/managed-secrets/{secret_id}/grants",
            payload,
            idempotent=False,
            resend_unanswered=False,
        )
        return _parse(CreateGrantResult, self._json(response, "grant creation"))

    # --- Connect ----------------------------------------------------------------------------

    def create_connect_session(
        self,
        *,
        allowed_providers: list[str] | None,
        direct: bool,
        return_url: str | None,
        allowed_origin: str | None,
        metadata: dict[str, Any] | None,
        grant_policy: Any,
        required_scopes: dict[str, list[str]] | None,
        agent: str | None,
        user_token: str | None,
        requested_grant: dict[str, Any] | None,
        repair_grant_id: str | None,
        delegable: bool | None,
        scope_constraint: list[str] | None,
        switch_account: bool,
        allow_user_policy_rules: bool,
    ) -> Op[ConnectSession]:
        """``POST /sdk/oauth/connect/session``: a URL the user opens to connect providers."""
        distinct = _provider_count(allowed_providers)
        payload: dict[str, Any] = {
            "allowed_providers": list(allowed_providers) if allowed_providers else None,
            "return_url": v.optional_text(return_url, "return_url", max_length=2048),
            "allowed_origin": v.optional_text(allowed_origin, "allowed_origin", max_length=2048),
            "metadata": _connect_metadata(metadata),
        }
        payload.update(
            _connect_flags(
                direct=direct,
                switch_account=switch_account,
                allow_user_policy_rules=allow_user_policy_rules,
                distinct=distinct,
            )
        )
        policy = v.grant_policy(grant_policy)
        if policy:
            payload["grant_policy"] = policy
        if required_scopes is not None:
            payload["required_scopes"] = _required_scopes(required_scopes)
        if requested_grant is not None:
            payload["requested_grant"] = _requested_grant(requested_grant)
        if repair_grant_id is not None:
            payload["repair_grant_id"] = _repair_grant_id(
                repair_grant_id,
                distinct=distinct,
                combined=requested_grant is not None or agent is not None or switch_account,
            )
        if agent is not None:
            payload["agent"] = v.optional_text(agent, "agent", max_length=255)
        if delegable is not None:
            payload["delegable"] = v.flag(delegable, "delegable")
        if scope_constraint is not None:
            payload["scope_constraint"] = _scope_constraint(scope_constraint)
        v.optional_text(user_token, "user_token", max_length=16_384)
        token = yield from self._user_token(user_token)
        if token is not None:
            payload["user_token"] = token
        response = yield from self.vault_call(
            "POST", "/sdk/oauth/connect/session", payload, idempotent=False
        )
        return _parse(ConnectSession, self._json(response, "Connect session"))

    def connect(
        self,
        *,
        providers: list[str] | None,
        timeout: float,
        poll_interval: float,
        open_browser: bool,
        grant_policy: Any,
        allow_user_policy_rules: bool,
        direct: bool,
    ) -> Op[list[ConnectResult]]:
        """Create a session, open (or print) its URL, then poll until it completes."""
        v.positive_number(timeout, "timeout")
        v.positive_number(poll_interval, "poll_interval")
        v.flag(open_browser, "open_browser")
        session = yield from self.create_connect_session(
            allowed_providers=providers,
            direct=direct,
            return_url=None,
            allowed_origin=None,
            metadata=None,
            grant_policy=grant_policy,
            required_scopes=None,
            agent=None,
            user_token=None,
            requested_grant=None,
            repair_grant_id=None,
            delegable=None,
            scope_constraint=None,
            switch_account=False,
            allow_user_policy_rules=allow_user_policy_rules,
        )
        self._show_url(session.connect_url, "authorize", open_browser)
        results = yield from self.poll_connect_session(
            session.session_token,
            timeout=timeout,
            poll_interval=poll_interval,
            on_event=None,
        )
        return results

    def _show_url(self, url: str, verb: str, open_browser: bool) -> None:
        opened = False
        if open_browser:
            try:
                opened = bool(self.open_url(url))
            except Exception:  # a broken browser setup must not end the flow
                opened = False
        if not opened:
            print(f"Open this URL to {verb}: {url}", flush=True)  # noqa: T201

    def poll_connect_session(
        self,
        session_token: str,
        *,
        timeout: float,
        poll_interval: float,
        on_event: Callable[[dict[str, Any]], None] | None,
    ) -> Op[list[ConnectResult]]:
        """Poll ``/sdk/oauth/connect/session/poll`` every ``poll_interval`` until done."""
        _poll_inputs(session_token, timeout, poll_interval)
        if on_event is not None and not callable(on_event):
            raise AlterValueError("on_event must be callable")
        deadline = self.clock.now() + timeout
        saw_pending = False
        declined: set[str] = set()

        def timeout_details(reason: str, **extra: Any) -> dict[str, Any]:
            base = {"timeout": timeout, "reason": reason, **extra}
            if declined:
                base["declined_providers"] = sorted(declined)
            return base

        while True:
            if self.closed:
                raise AlterSDKError(_CLOSED)
            try:
                response = yield from self.vault_call(
                    "POST",
                    "/sdk/oauth/connect/session/poll",
                    {"session_token": session_token},
                    idempotent=False,
                )
            except RateLimitError as exc:
                remaining = deadline - self.clock.now()
                if remaining <= 0:
                    raise ConnectTimeoutError(
                        f"The Connect flow did not complete within {timeout:g} s: polling was "
                        "rate-limited for the rest of the budget (the user may still have "
                        "finished; poll again).",
                        timeout_details("rate_limited", retry_after=exc.retry_after),
                    ) from exc
                wait = max(float(exc.retry_after or 0), poll_interval)
                yield Sleep(min(wait, remaining))
                continue
            data = self._json(response, "Connect poll")
            results = _connect_poll_outcome(data, saw_pending, timeout_details)
            if results is not None:
                return results
            self._note_declined(data.get("declined_providers"), declined, on_event)
            saw_pending = True
            remaining = deadline - self.clock.now()
            if remaining <= 0:
                raise ConnectTimeoutError(
                    f"The Connect flow did not complete within {timeout:g} s.",
                    timeout_details("poll_deadline_elapsed"),
                )
            yield Sleep(min(poll_interval, remaining))

    def _note_declined(
        self,
        entries: Any,
        declined: set[str],
        on_event: Callable[[dict[str, Any]], None] | None,
    ) -> None:
        """Report each provider the user declined once (to ``on_event``); skip malformed ones."""
        for entry in entries or []:
            if not isinstance(entry, dict):
                continue
            provider_id, code = entry.get("provider_id"), entry.get("error_code")
            if not (isinstance(provider_id, str) and provider_id and isinstance(code, str)):
                continue
            if provider_id in declined:
                continue
            declined.add(provider_id)
            if on_event is None:
                continue
            at = entry.get("declined_at")
            try:
                on_event(
                    {
                        "type": "provider_declined",
                        "provider_id": provider_id,
                        "error_code": code,
                        "declined_at": at if isinstance(at, str) else None,
                    }
                )
            except Exception:
                self.logger.warning("on_event callback raised", exc_info=True)

    # --- sign-in (identity) -----------------------------------------------------------------

    def create_auth_session(self) -> Op[AuthSession]:
        """``POST /sdk/auth/session`` (body ``{}``, answered 201)."""
        response = yield from self.vault_call(
            "POST", "/sdk/auth/session", {}, idempotent=False, raw=True
        )
        if response.status_code != 201:
            if response.status_code >= 400:
                raise error_from_response(response.status_code, response.headers, response.content)
            raise BackendError(
                f"Unexpected sign-in session answer (HTTP {response.status_code}).",
                {"status_code": response.status_code},
            )
        return _parse(AuthSession, self._json(response, "sign-in session"))

    def poll_auth_session(
        self, session_token: str, *, timeout: float, poll_interval: float
    ) -> Op[AuthResult]:
        """Long-poll ``/sdk/auth/poll`` until the user signed in (or the deadline)."""
        _poll_inputs(session_token, timeout, poll_interval)
        deadline = self.clock.now() + timeout
        while True:
            if self.closed:
                raise AlterSDKError(_CLOSED)
            remaining = max(deadline - self.clock.now(), 0.0)
            wait_ms = int(min(remaining, AUTH_POLL_SERVER_WAIT) * 1000)
            payload: dict[str, Any] = {"session_token": session_token}
            if wait_ms > 0:
                payload["wait_ms"] = wait_ms
            data: Any = None
            try:
                response = yield from self.vault_call(
                    "POST",
                    "/sdk/auth/poll",
                    payload,
                    idempotent=False,
                    timeout=wait_ms / 1000 + AUTH_POLL_HTTP_BUFFER if wait_ms else None,
                    raw=True,
                )
            except NetworkError:
                response = None
            if response is not None:
                if response.status_code in _PERMANENT_AUTH_POLL:
                    raise error_from_response(
                        response.status_code, response.headers, response.content
                    )
                if response.status_code == 200:
                    data = self._json(response, "sign-in poll")
            result = _auth_poll_result(data)
            if result is not None:
                return result
            remaining = deadline - self.clock.now()
            if remaining <= 0:
                raise ConnectTimeoutError(
                    f"Sign-in did not complete within {timeout:g} s.",
                    {"timeout": timeout, "reason": "poll_deadline_elapsed"},
                )
            yield Sleep(min(poll_interval, remaining))

    def authenticate(self, *, timeout: float) -> Op[AuthResult]:
        """Sign the user in through the browser and install their token for later calls."""
        v.positive_number(timeout, "timeout")
        session = yield from self.create_auth_session()
        self._show_url(session.auth_url, "sign in", True)
        result = yield from self.poll_auth_session(
            session.session_token, timeout=timeout, poll_interval=2.0
        )
        if self.user_token_getter is not None:
            self.logger.warning("authenticate() replaced the configured user_token_getter.")
        token = result.user_token
        self.user_token_getter = lambda: token
        return result

    def verify_user_token(self, token: str) -> Op[str | None]:
        """The verified ``sub`` of ``token``, or ``None`` for any failure (never raises)."""
        if not isinstance(token, str) or not token.strip() or self.closed:
            return None
        try:
            response = yield from self.vault_call(
                "POST",
                "/sdk/auth/verify-token",
                {"token": token},
                idempotent=True,
                raw=True,
            )
        except AlterSDKError as exc:
            self.logger.warning("verify_user_token: rejecting the token (%s)", exc)
            return None
        if response.status_code != 200:
            if response.status_code != 401:
                self.logger.warning(
                    "verify_user_token: HTTP %s, rejecting the token",
                    response.status_code,
                )
            return None
        try:
            data = response.json()
        except ValueError:
            return None
        sub = data.get("sub") if isinstance(data, dict) else None
        return sub if isinstance(sub, str) and sub.strip() else None


# --- helpers -----------------------------------------------------------------------------


def _method(method: object) -> str:
    name = method.value if isinstance(method, HttpMethod) else str(method).upper()
    if name not in HttpMethod.__members__:
        raise AlterValueError(f"method must be one of {', '.join(HttpMethod)}; got {method!r}")
    return name


def _transport_error(
    exc: httpx.HTTPError, who: str, base_url: str | None, grant_id: str | None = None
) -> NetworkError:
    details: dict[str, Any] = {"error_type": type(exc).__name__}
    if base_url:
        details["base_url"] = base_url
    if grant_id:
        details["grant_id"] = grant_id
    if isinstance(exc, httpx.TimeoutException):
        return TimeoutError(f"The request to {who} timed out.", details)
    return NetworkError(f"Could not reach {who}: {type(exc).__name__}.", details)


def _parse(model: type[T], data: Any) -> T:
    try:
        return model.model_validate(data)  # type: ignore[attr-defined, no-any-return]
    except ValidationError as exc:
        raise BackendError(
            f"The vault's answer does not match {model.__name__}.",
            {"validation_errors": exc.errors(include_url=False, include_input=False)},
        ) from None


def _poll_inputs(session_token: object, timeout: object, poll_interval: object) -> None:
    if not isinstance(session_token, str) or not session_token.strip():
        raise AlterValueError("session_token must be a non-empty string")
    v.positive_number(timeout, "timeout")
    v.positive_number(poll_interval, "poll_interval")


def _request_grant(
    grant_id: str | None,
    provider: str | None,
    account: str | None,
    label: str | None,
    app_user_id: str | None,
) -> str | None:
    """Check how ``request()`` names the grant; return the canonical ``grant_id`` if given."""
    if (grant_id is None) == (provider is None):
        raise AlterValueError("Pass exactly one of grant_id and provider.")
    if grant_id is not None:
        grant_id = v.canonical_uuid(grant_id, "grant_id")
    else:
        v.optional_text(provider, "provider", max_length=64)
    for name, value in (
        ("account", account),
        ("label", label),
        ("app_user_id", app_user_id),
    ):
        v.optional_text(value, name, max_length=255)
        if value is not None and provider is None:
            raise AlterValueError(f"{name} is only valid with provider=, not grant_id=.")
    return grant_id


def _request_content(json: Any, body: bytes | None) -> bytes | None:
    """The provider request's body bytes: ``json`` encoded, or ``body`` as given."""
    if json is not None and body is not None:
        raise AlterValueError("Pass json or body, not both.")
    if body is not None and not isinstance(body, bytes | bytearray):
        raise AlterValueError("body must be bytes")
    return v.json_body(json) if json is not None else (bytes(body) if body else None)


def _token_payload(
    grant_id: str | None,
    provider: str | None,
    reason: str | None,
    request: dict[str, str],
    optional: dict[str, str | None],
) -> dict[str, Any]:
    """The ``/sdk/token`` body: by grant id (with the user token only) or by provider."""
    if provider is None:
        payload: dict[str, Any] = {
            "grant_id": grant_id,
            "reason": reason,
            "request": request,
        }
        if optional.get("user_token") is not None:
            payload["user_token"] = optional["user_token"]
        return payload
    payload = {"provider_id": provider, "reason": reason, "request": request}
    payload.update({k: value for k, value in optional.items() if value is not None})
    return payload


def _provider_count(allowed_providers: object) -> int:
    """Check ``allowed_providers``; return how many distinct providers it names (0 for all)."""
    if allowed_providers is None:
        return 0
    if not isinstance(allowed_providers, list | tuple) or not all(
        isinstance(p, str) for p in allowed_providers
    ):
        raise AlterValueError("allowed_providers must be a list of provider ids")
    if not allowed_providers:
        raise AlterValueError("allowed_providers cannot be empty; omit it for all")
    if any(not p.strip() for p in allowed_providers):
        raise AlterValueError("allowed_providers entries must be non-empty")
    return len({p.strip().lower() for p in allowed_providers})


def _connect_flags(
    *, direct: bool, switch_account: bool, allow_user_policy_rules: bool, distinct: int
) -> dict[str, bool]:
    """The Connect session's flags, sent only when they differ from the vault's defaults."""
    flags: dict[str, bool] = {}
    if v.flag(direct, "direct"):
        if distinct != 1:
            raise AlterValueError("direct=True needs exactly one provider")
        flags["direct"] = True
    if v.flag(switch_account, "switch_account"):
        flags["switch_account"] = True
    if not v.flag(allow_user_policy_rules, "allow_user_policy_rules"):
        flags["allow_user_policy_rules"] = False
    return flags


def _required_scopes(value: object) -> dict[str, list[str]]:
    if not isinstance(value, Mapping) or not all(
        isinstance(k, str) and isinstance(s, list) and all(isinstance(x, str) for x in s)
        for k, s in value.items()
    ):
        raise AlterValueError("required_scopes must map provider ids to lists of scopes")
    return dict(value)


def _repair_grant_id(value: str, *, distinct: int, combined: bool) -> str:
    if distinct != 1:
        raise AlterValueError("repair_grant_id needs exactly one provider")
    if combined:
        raise AlterValueError(
            "repair_grant_id cannot be combined with requested_grant, agent or switch_account"
        )
    return v.canonical_uuid(value, "repair_grant_id")


def _connect_metadata(metadata: object) -> dict[str, str] | None:
    if metadata is None:
        return None
    if not isinstance(metadata, Mapping):
        raise AlterValueError("metadata must be a dict with ip_address / user_agent")
    unknown = sorted(str(k) for k in metadata if k not in {"ip_address", "user_agent"})
    if unknown:
        raise AlterValueError(f"metadata has unknown keys: {', '.join(unknown)}")
    out: dict[str, str] = {}
    for key, value in metadata.items():
        if value is None:
            continue
        if not isinstance(value, str):
            raise AlterValueError(f"metadata.{key} must be a string")
        out[key] = value
    return out


def _requested_grant(value: object) -> dict[str, Any]:
    if not isinstance(value, Mapping):
        raise AlterValueError("requested_grant must be a dict")
    unknown = set(value) - {"label", "restrictions"}
    if unknown:
        raise AlterValueError(f"requested_grant has unknown keys: {sorted(unknown)}")
    label = value.get("label")
    if not isinstance(label, str) or not label or len(label) > 255:
        raise AlterValueError("requested_grant['label'] must be a string of 1-255 characters")
    out: dict[str, Any] = {"label": label}
    restrictions = value.get("restrictions")
    if restrictions is not None:
        if not isinstance(restrictions, Mapping) or set(restrictions) - {
            "allowed_methods",
            "allowed_endpoints",
        }:
            raise AlterValueError(
                "requested_grant['restrictions'] takes allowed_methods and allowed_endpoints"
            )
        for key, items in restrictions.items():
            if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
                raise AlterValueError(f"restrictions[{key!r}] must be a list of strings")
        out["restrictions"] = dict(restrictions)
    return out


def _scope_constraint(value: object) -> list[str]:
    if not isinstance(value, list) or not value or len(value) > 100:
        raise AlterValueError("scope_constraint must be a list of 1-100 scopes")
    for scope in value:
        if (
            not isinstance(scope, str)
            or not scope
            or scope == "*"
            or len(scope) > 512
            or any(not ("\x21" <= c <= "\x7e") or c in '"\\' for c in scope)
        ):
            raise AlterValueError(f"scope_constraint has an invalid scope {scope!r}")
    return list(value)


def _connect_results(data: dict[str, Any]) -> list[ConnectResult]:
    raw_failed = data.get("failed_grants", [])
    if not isinstance(raw_failed, list):
        raise BackendError("The Connect poll answer has malformed failed_grants.")
    try:
        failed = [ConnectFailedGrant.model_validate(f) for f in raw_failed]
    except ValidationError:
        raise BackendError("The Connect poll answer has malformed failed_grants.") from None
    grants = data.get("grants", [])
    if not isinstance(grants, list):
        raise BackendError("The Connect poll answer has a malformed grants list.")
    results: list[ConnectResult] = []
    for grant in grants:
        if not isinstance(grant, dict) or not all(
            isinstance(grant.get(k), str) for k in ("grant_id", "provider_id")
        ):
            raise BackendError("A Connect poll grant lacks grant_id or provider_id.")
        try:
            policy = grant.get("grant_policy")
            delegation = grant.get("delegation")
            results.append(
                ConnectResult(
                    grant_id=grant["grant_id"],
                    provider_id=grant["provider_id"],
                    account_identifier=grant.get("account_identifier"),
                    scopes=grant.get("scopes") or [],
                    api_base_url=_https_origin(grant.get("api_base_url")),
                    operation=grant.get("operation") or "creation",
                    grant_policy=GrantPolicy.model_validate(policy) if policy else None,
                    failed_grants=failed,
                    delegation=ConnectDelegation.model_validate(delegation)
                    if delegation is not None
                    else None,
                )
            )
        except ValidationError:
            raise BackendError("A Connect poll grant is malformed.") from None
    if not results and failed:
        codes = {f.reason for f in failed}
        activation_only = codes <= {"not_selected", "activation_failed"}
        providers = ", ".join(f.provider_id for f in failed)
        raise ConnectFlowError(
            f"The connection was not completed ({providers}).",
            {
                "error_code": "grant_activation_failed"
                if activation_only
                else "grant_policy_application_failed",
                "failed_grants": [f.model_dump() for f in failed],
            },
        )
    return results


def _connect_poll_outcome(
    data: Any, saw_pending: bool, timeout_details: Callable[..., dict[str, Any]]
) -> list[ConnectResult] | None:
    """The results of a completed Connect poll, ``None`` while pending; raise for the rest."""
    status = data.get("status") if isinstance(data, dict) else None
    if not isinstance(status, str) or not status:
        raise BackendError("The Connect poll answer has no status.", {"field": "status"})
    if status == "completed":
        return _connect_results(data)
    if status == "error":
        raise _connect_poll_error(data.get("error"))
    if status == "expired":
        if saw_pending:
            raise ConnectTimeoutError(
                "The Connect session expired before the user finished.",
                timeout_details("session_expired"),
            )
        raise ConnectFlowError("The Connect session expired or was not found.")
    if status != "pending":
        raise ConnectFlowError(f"Unexpected Connect poll status {status!r}.", {"status": status})
    return None


def _auth_poll_result(data: Any) -> AuthResult | None:
    """The sign-in result of a poll answer, ``None`` while pending (or no answer); raise else."""
    if data is None:
        return None
    if not isinstance(data, dict):
        raise BackendError("The sign-in poll answer is not an object.")
    status = data.get("status")
    if status == "completed":
        user_token = data.get("user_token")
        if not isinstance(user_token, str) or not user_token:
            raise AlterSDKError("Sign-in completed but no user token was returned.")
        return AuthResult(user_token=user_token, user_info=data.get("user_info") or {})
    if status == "error":
        raise _auth_poll_error(data)
    if status == "expired":
        raise AlterSDKError("The sign-in session expired.")
    if status != "pending":
        raise AlterSDKError(f"Unexpected sign-in poll status {status!r}.")
    return None


def _auth_poll_error(data: dict[str, Any]) -> AlterSDKError:
    message = data.get("error_message")
    message = message if isinstance(message, str) and message else "unknown error"
    code = data.get("error_code")
    if not (isinstance(code, str) and code in _IDENTITY_SYNC_STATUS):
        return AlterSDKError(f"Sign-in failed: {message}")
    details: dict[str, Any] = {"error_code": code}
    retry = coerce_seconds(data.get("retry_after_seconds"), cap=MAX_RATE_LIMIT_RETRY_AFTER)
    if retry is not None:
        details["retry_after_seconds"] = retry
    return BackendError(f"Sign-in failed: {message}", details, _IDENTITY_SYNC_STATUS[code])


def _https_origin(value: object) -> str | None:
    if isinstance(value, str) and value.startswith("https://") and "/" not in value[8:]:
        return value
    return None


def _connect_poll_error(error: object) -> AlterSDKError:
    if not isinstance(error, dict):
        return BackendError("The Connect poll answer has a malformed error.", {"field": "error"})
    code, message = error.get("error_code"), error.get("error_message")
    if not isinstance(code, str) or not code.strip():
        return BackendError("The Connect poll error has no error_code.")
    text = message if isinstance(message, str) and message.strip() else code
    details: dict[str, Any] = {"error_code": code}
    retry = coerce_seconds(error.get("retry_after_seconds"), cap=MAX_RATE_LIMIT_RETRY_AFTER)
    if retry is not None:
        details["retry_after_seconds"] = retry
    if code == "connect_denied":
        return ConnectDeniedError(text, details)
    if code in _CONNECT_CONFIG_POLL_CODES:
        return ConnectConfigError(text, details)
    if code in _IDENTITY_SYNC_STATUS:
        return BackendError(text, details, _IDENTITY_SYNC_STATUS[code])
    return ConnectFlowError(text, details)
