"""``App`` (async) and ``SyncApp`` (sync): thin drivers over the protocol in ``_core``.

Each client owns two HTTP clients: one for the vault, which carries the API key, and one for
providers, which never does. Both pool connections. The drivers differ only in how they carry
out an effect; every method is ``driver.run(core.<operation>(...))``.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import os
import threading
from collections.abc import Awaitable, Callable, Generator
from concurrent.futures import Future, ThreadPoolExecutor, wait as wait_futures
from types import TracebackType
from typing import Any, Self

import httpx

from grantvault._constants import (
    CLOSE_DRAIN_TIMEOUT,
    DEFAULT_MAX_RETRIES,
    DEFAULT_TIMEOUT,
    ENV_ALTER_API_KEY,
    ENV_ALTER_BASE_URL,
    ENV_API_KEY,
    ENV_BASE_URL,
    POOL_KEEPALIVE_EXPIRY,
    POOL_MAX_CONNECTIONS,
    POOL_MAX_KEEPALIVE,
)
from grantvault._core import Core, Effect, GetUserToken, Send, Sleep, Spawn, log
from grantvault._retry import RetryPolicy
from grantvault._validation import base_url as check_base_url, caller_label, positive_number
from grantvault._version import __version__
from grantvault.enums import CallerType, HttpMethod
from grantvault.exceptions import AlterSDKError, AlterValueError
from grantvault.models import (
    AuthResult,
    AuthSession,
    ConnectResult,
    ConnectSession,
    CreateGrantResult,
    GrantPolicyInput,
    Principal,
    RateLimitSnapshot,
    RetryInfo,
    RevokeGrantResult,
    UnifiedGrantListResult,
)
from grantvault.protocol.key_format import is_valid_key

USER_AGENT = f"grantvault-python/{__version__}"
_GETTER_FAILED = "user_token_getter failed"
_GETTER_TYPE = "user_token_getter must return a non-empty string (or None for no end user)"

UserTokenGetter = Callable[[], str | Awaitable[str | None] | None]


def _from_env(value: str | None, names: tuple[str, str], what: str, argument: str) -> str:
    if value is not None:
        return value
    for name in names:
        found = os.environ.get(name)
        if found:
            return found
    raise AlterSDKError(
        f"No {what}: pass {argument}= or set {names[0]} (the alter-sdk name {names[1]} is "
        "read too)."
    )


def _build_core(
    api_key: str | None,
    base_url: str | None,
    *,
    timeout: float,
    caller: str | None,
    caller_type: CallerType | str,
    user_token_getter: UserTokenGetter | None,
    logger: logging.Logger | None,
    max_retries: int,
) -> Core:
    key = _from_env(api_key, (ENV_API_KEY, ENV_ALTER_API_KEY), "API key", "api_key")
    if not is_valid_key(key):
        raise AlterSDKError(
            "The API key is malformed: expected alter_<rk|ak|dk|pk>_<22 characters>_<6 "
            "characters>, as `grantvault keys create` prints it."
        )
    url = check_base_url(
        _from_env(base_url, (ENV_BASE_URL, ENV_ALTER_BASE_URL), "vault URL", "base_url")
    )
    positive_number(timeout, "timeout")
    if caller is not None:
        caller_label(caller)
    try:
        resolved_type = CallerType(caller_type)
    except ValueError:
        raise AlterValueError(
            f"caller_type must be one of {', '.join(CallerType)}; got {caller_type!r}"
        ) from None
    if user_token_getter is not None and not callable(user_token_getter):
        raise AlterSDKError("user_token_getter must be callable")
    if logger is not None and not callable(getattr(logger, "warning", None)):
        raise AlterSDKError("logger.warning must be callable")
    try:
        retry = RetryPolicy(max_retries=max_retries)
    except ValueError as exc:
        raise AlterValueError(str(exc)) from None
    return Core(
        api_key=key,
        base_url=url,
        timeout=float(timeout),
        caller=caller,
        caller_type=resolved_type,
        user_token_getter=user_token_getter,
        retry=retry,
        logger=logger or log,
    )


def _limits() -> httpx.Limits:
    return httpx.Limits(
        max_connections=POOL_MAX_CONNECTIONS,
        max_keepalive_connections=POOL_MAX_KEEPALIVE,
        keepalive_expiry=POOL_KEEPALIVE_EXPIRY,
    )


def _check_token(value: object) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise AlterSDKError(_GETTER_TYPE)
    return value


def _timeout(effect: Send) -> Any:
    return httpx.USE_CLIENT_DEFAULT if effect.timeout is None else effect.timeout


class _ClientBase:
    """What ``App`` and ``SyncApp`` share: configuration and read-only properties."""

    _core: Core

    @property
    def base_url(self) -> str:
        """The vault URL this client talks to."""
        return self._core.base_url

    @property
    def actor_id(self) -> str | None:
        """The actor id the vault assigned to this caller (once it sent one)."""
        return self._core.actor_id

    @property
    def last_retry_info(self) -> RetryInfo | None:
        """How the vault refreshed the token behind the last ``request()`` (if it retried)."""
        return self._core.last_retry_info

    @property
    def last_rate_limit(self) -> RateLimitSnapshot | None:
        """The rate-limit budget of the last metered answer (``None``: unknown)."""
        return self._core.last_rate_limit

    def __repr__(self) -> str:
        return f"{type(self).__name__}(base_url={self._core.base_url!r})"


class App(_ClientBase):
    """The asynchronous Grantvault client (``alter-sdk``'s ``App``, plus ``base_url=``).

    ``api_key`` falls back to ``GRANTVAULT_API_KEY`` then ``ALTER_API_KEY``; ``base_url`` to
    ``GRANTVAULT_BASE_URL`` then ``ALTER_BASE_URL``. Use it as ``async with App() as vault``
    or call :meth:`close` so that pending audit rows are sent.
    """

    def __init__(
        self,
        api_key: str | None = None,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        caller: str | None = None,
        caller_type: CallerType | str = CallerType.SERVICE,
        user_token_getter: UserTokenGetter | None = None,
        logger: logging.Logger | None = None,
        base_url: str | None = None,
        max_retries: int = DEFAULT_MAX_RETRIES,
        transport: httpx.AsyncBaseTransport | None = None,
        provider_transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._core = _build_core(
            api_key,
            base_url,
            timeout=timeout,
            caller=caller,
            caller_type=caller_type,
            user_token_getter=user_token_getter,
            logger=logger,
            max_retries=max_retries,
        )
        self._vault = httpx.AsyncClient(
            base_url=self._core.base_url,
            headers={"x-api-key": self._core.api_key, "User-Agent": USER_AGENT},
            timeout=timeout,
            limits=_limits(),
            transport=transport,
            trust_env=transport is None,
        )
        self._provider = httpx.AsyncClient(
            headers={"User-Agent": USER_AGENT},
            timeout=timeout,
            limits=_limits(),
            transport=provider_transport,
            trust_env=provider_transport is None,
        )
        self._tasks: set[asyncio.Task[None]] = set()

    # --- the driver -----------------------------------------------------------------------

    async def _run(self, op: Generator[Effect, Any, Any]) -> Any:
        value: Any = None
        error: BaseException | None = None
        try:
            while True:
                try:
                    effect = op.throw(error) if error is not None else op.send(value)
                except StopIteration as stop:
                    return stop.value
                value, error = None, None
                try:
                    value = await self._perform(effect)
                except Exception as exc:
                    error = exc
        finally:
            op.close()

    async def _perform(self, effect: Effect) -> Any:
        if isinstance(effect, Send):
            client = self._vault if effect.target == "vault" else self._provider
            return await client.request(
                effect.method,
                effect.url,
                headers=dict(effect.headers),
                content=effect.content,
                timeout=_timeout(effect),
            )
        if isinstance(effect, Sleep):
            await self._core.clock.asleep(effect.seconds)
            return None
        if isinstance(effect, GetUserToken):
            return await self._user_token()
        if isinstance(effect, Spawn):
            task = asyncio.get_running_loop().create_task(self._background(effect.op))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            return None
        raise AssertionError(f"unknown effect {effect!r}")

    async def _background(self, op: Generator[Effect, Any, None]) -> None:
        try:
            await self._run(op)
        except Exception:  # background work never fails the caller
            self._core.logger.warning("background vault call failed", exc_info=True)

    async def _user_token(self) -> str | None:
        getter = self._core.user_token_getter
        if getter is None:
            return None
        try:
            result = getter()
            if inspect.isawaitable(result):
                result = await result
        except Exception:
            raise AlterSDKError(_GETTER_FAILED) from None
        return _check_token(result)

    # --- lifecycle --------------------------------------------------------------------------

    async def close(self) -> None:
        """Send pending audit rows, then close both HTTP clients."""
        if self._tasks:
            pending = list(self._tasks)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(
                    asyncio.gather(*pending, return_exceptions=True), CLOSE_DRAIN_TIMEOUT
                )
        self._core.closed = True
        await self._vault.aclose()
        await self._provider.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # --- calling providers ------------------------------------------------------------------

    async def request(
        self,
        method: HttpMethod | str,
        url: str,
        *,
        grant_id: str | None = None,
        provider: str | None = None,
        account: str | None = None,
        label: str | None = None,
        json: dict[str, Any] | list[Any] | str | bool | float | None = None,
        extra_headers: dict[str, str] | None = None,
        query_params: dict[str, Any] | None = None,
        path_params: dict[str, str] | None = None,
        reason: str | None = None,
        context: dict[str, str] | None = None,
        body: bytes | None = None,
        caller: str | None = None,
        user_token: str | None = None,
        app_user_id: str | None = None,
    ) -> httpx.Response:
        """Call a provider API with the grant's credential injected; the key never shows.

        Exactly one of ``grant_id`` and ``provider`` (an OAuth provider id or a managed
        secret's slug). Raises ``ProviderAPIError`` (and subclasses) for provider answers
        >= 400; the response carries ``retry_info``.
        """
        result: httpx.Response = await self._run(
            self._core.request(
                method,
                url,
                grant_id=grant_id,
                provider=provider,
                account=account,
                label=label,
                json=json,
                extra_headers=extra_headers,
                query_params=query_params,
                path_params=path_params,
                reason=reason,
                context=context,
                body=body,
                caller=caller,
                user_token=user_token,
                app_user_id=app_user_id,
            )
        )
        return result

    # --- grants -----------------------------------------------------------------------------

    async def list_grants(
        self,
        *,
        provider_id: str | None = None,
        status: str | None = None,
        account: str | None = None,
        label: str | None = None,
        end_user_token: str | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> UnifiedGrantListResult:
        """One page of the app's grants (only the user's, when a user token is in play)."""
        result: UnifiedGrantListResult = await self._run(
            self._core.list_grants(
                provider_id=provider_id,
                status=status,
                account=account,
                label=label,
                end_user_token=end_user_token,
                limit=limit,
                offset=offset,
            )
        )
        return result

    async def revoke_grant(self, grant_id: str, *, reason: str | None = None) -> RevokeGrantResult:
        """Revoke a grant now; its next use raises ``GrantRevokedError``."""
        result: RevokeGrantResult = await self._run(
            self._core.revoke_grant(grant_id, reason=reason)
        )
        return result

    async def create_managed_secret_grant(
        self,
        managed_secret_id: str,
        *,
        principal: Principal,
        grant_policy: GrantPolicyInput | dict[str, Any] | None = None,
        credential_id: str | None = None,
    ) -> CreateGrantResult:
        """Grant a user, a group or the app itself the use of a managed secret."""
        result: CreateGrantResult = await self._run(
            self._core.create_managed_secret_grant(
                managed_secret_id,
                principal=principal,
                grant_policy=grant_policy,
                credential_id=credential_id,
            )
        )
        return result

    # --- Connect ----------------------------------------------------------------------------

    async def create_connect_session(
        self,
        *,
        allowed_providers: list[str] | None = None,
        direct: bool = False,
        return_url: str | None = None,
        allowed_origin: str | None = None,
        metadata: dict[str, Any] | None = None,
        grant_policy: GrantPolicyInput | dict[str, Any] | None = None,
        required_scopes: dict[str, list[str]] | None = None,
        agent: str | None = None,
        user_token: str | None = None,
        requested_grant: dict[str, Any] | None = None,
        repair_grant_id: str | None = None,
        delegable: bool | None = None,
        scope_constraint: list[str] | None = None,
        switch_account: bool = False,
        allow_user_policy_rules: bool = True,
    ) -> ConnectSession:
        """A Connect session: a URL where the user connects providers, and a poll token."""
        result: ConnectSession = await self._run(
            self._core.create_connect_session(
                allowed_providers=allowed_providers,
                direct=direct,
                return_url=return_url,
                allowed_origin=allowed_origin,
                metadata=metadata,
                grant_policy=grant_policy,
                required_scopes=required_scopes,
                agent=agent,
                user_token=user_token,
                requested_grant=requested_grant,
                repair_grant_id=repair_grant_id,
                delegable=delegable,
                scope_constraint=scope_constraint,
                switch_account=switch_account,
                allow_user_policy_rules=allow_user_policy_rules,
            )
        )
        return result

    async def connect(
        self,
        *,
        providers: list[str] | None = None,
        timeout: int = 300,
        poll_interval: float = 2.0,
        open_browser: bool = True,
        grant_policy: GrantPolicyInput | dict[str, Any] | None = None,
        allow_user_policy_rules: bool = True,
        direct: bool = False,
    ) -> list[ConnectResult]:
        """Open (or print, with ``open_browser=False``) a Connect URL and wait for the user."""
        result: list[ConnectResult] = await self._run(
            self._core.connect(
                providers=providers,
                timeout=timeout,
                poll_interval=poll_interval,
                open_browser=open_browser,
                grant_policy=grant_policy,
                allow_user_policy_rules=allow_user_policy_rules,
                direct=direct,
            )
        )
        return result

    async def poll_connect_session(
        self,
        session_token: str,
        *,
        timeout: int = 300,
        poll_interval: float = 2.0,
        on_event: Callable[[dict[str, Any]], None] | None = None,
    ) -> list[ConnectResult]:
        """Wait for a Connect session made by :meth:`create_connect_session` to complete."""
        result: list[ConnectResult] = await self._run(
            self._core.poll_connect_session(
                session_token, timeout=timeout, poll_interval=poll_interval, on_event=on_event
            )
        )
        return result

    # --- end-user sign-in ---------------------------------------------------------------------

    async def create_auth_session(self) -> AuthSession:
        """An end-user sign-in session (``auth_url`` to hand over, a token to poll with)."""
        result: AuthSession = await self._run(self._core.create_auth_session())
        return result

    async def poll_auth_session(
        self, session_token: str, *, timeout: float = 300.0, poll_interval: float = 2.0
    ) -> AuthResult:
        """Wait until the user signed in; returns their token (installs nothing)."""
        result: AuthResult = await self._run(
            self._core.poll_auth_session(
                session_token, timeout=timeout, poll_interval=poll_interval
            )
        )
        return result

    async def authenticate(self, *, timeout: float = 300.0) -> AuthResult:
        """Sign the user in via the browser; their token is used by later calls."""
        result: AuthResult = await self._run(self._core.authenticate(timeout=timeout))
        return result

    async def verify_user_token(self, token: str) -> str | None:
        """The verified subject of an end-user token, or ``None`` (never raises)."""
        result: str | None = await self._run(self._core.verify_user_token(token))
        return result


class SyncApp(_ClientBase):
    """The synchronous twin of :class:`App`: the same methods, without ``await``.

    For scripts and notebooks without an event loop. Audit rows are sent from a small
    background thread pool, drained by :meth:`close` (or the ``with`` block).
    """

    def __init__(
        self,
        api_key: str | None = None,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        caller: str | None = None,
        caller_type: CallerType | str = CallerType.SERVICE,
        user_token_getter: Callable[[], str | None] | None = None,
        logger: logging.Logger | None = None,
        base_url: str | None = None,
        max_retries: int = DEFAULT_MAX_RETRIES,
        transport: httpx.BaseTransport | None = None,
        provider_transport: httpx.BaseTransport | None = None,
    ) -> None:
        self._core = _build_core(
            api_key,
            base_url,
            timeout=timeout,
            caller=caller,
            caller_type=caller_type,
            user_token_getter=user_token_getter,
            logger=logger,
            max_retries=max_retries,
        )
        self._vault = httpx.Client(
            base_url=self._core.base_url,
            headers={"x-api-key": self._core.api_key, "User-Agent": USER_AGENT},
            timeout=timeout,
            limits=_limits(),
            transport=transport,
            trust_env=transport is None,
        )
        self._provider = httpx.Client(
            headers={"User-Agent": USER_AGENT},
            timeout=timeout,
            limits=_limits(),
            transport=provider_transport,
            trust_env=provider_transport is None,
        )
        self._executor: ThreadPoolExecutor | None = None
        self._futures: set[Future[None]] = set()
        self._lock = threading.Lock()

    def _run(self, op: Generator[Effect, Any, Any]) -> Any:
        value: Any = None
        error: BaseException | None = None
        try:
            while True:
                try:
                    effect = op.throw(error) if error is not None else op.send(value)
                except StopIteration as stop:
                    return stop.value
                value, error = None, None
                try:
                    value = self._perform(effect)
                except Exception as exc:
                    error = exc
        finally:
            op.close()

    def _perform(self, effect: Effect) -> Any:
        if isinstance(effect, Send):
            client = self._vault if effect.target == "vault" else self._provider
            return client.request(
                effect.method,
                effect.url,
                headers=dict(effect.headers),
                content=effect.content,
                timeout=_timeout(effect),
            )
        if isinstance(effect, Sleep):
            self._core.clock.sleep(effect.seconds)
            return None
        if isinstance(effect, GetUserToken):
            return self._user_token()
        if isinstance(effect, Spawn):
            with self._lock:
                if self._executor is None:
                    self._executor = ThreadPoolExecutor(
                        max_workers=2, thread_name_prefix="grantvault-audit"
                    )
                future = self._executor.submit(self._background, effect.op)
                self._futures.add(future)
            future.add_done_callback(self._futures.discard)
            return None
        raise AssertionError(f"unknown effect {effect!r}")

    def _background(self, op: Generator[Effect, Any, None]) -> None:
        try:
            self._run(op)
        except Exception:  # background work never fails the caller
            self._core.logger.warning("background vault call failed", exc_info=True)

    def _user_token(self) -> str | None:
        getter = self._core.user_token_getter
        if getter is None:
            return None
        try:
            result = getter()
        except Exception:
            raise AlterSDKError(_GETTER_FAILED) from None
        if inspect.isawaitable(result):
            if inspect.iscoroutine(result):
                result.close()
            raise AlterSDKError(
                "user_token_getter returned an awaitable; SyncApp needs a plain function "
                "(use App for an async getter)."
            )
        return _check_token(result)

    def close(self) -> None:
        """Send pending audit rows, then close both HTTP clients."""
        with self._lock:
            executor, self._executor = self._executor, None
            pending = list(self._futures)
        if pending:
            wait_futures(pending, timeout=CLOSE_DRAIN_TIMEOUT)
        if executor is not None:
            executor.shutdown(wait=False)
        self._core.closed = True
        self._vault.close()
        self._provider.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def request(
        self,
        method: HttpMethod | str,
        url: str,
        *,
        grant_id: str | None = None,
        provider: str | None = None,
        account: str | None = None,
        label: str | None = None,
        json: dict[str, Any] | list[Any] | str | bool | float | None = None,
        extra_headers: dict[str, str] | None = None,
        query_params: dict[str, Any] | None = None,
        path_params: dict[str, str] | None = None,
        reason: str | None = None,
        context: dict[str, str] | None = None,
        body: bytes | None = None,
        caller: str | None = None,
        user_token: str | None = None,
        app_user_id: str | None = None,
    ) -> httpx.Response:
        """Sync :meth:`App.request`."""
        result: httpx.Response = self._run(
            self._core.request(
                method,
                url,
                grant_id=grant_id,
                provider=provider,
                account=account,
                label=label,
                json=json,
                extra_headers=extra_headers,
                query_params=query_params,
                path_params=path_params,
                reason=reason,
                context=context,
                body=body,
                caller=caller,
                user_token=user_token,
                app_user_id=app_user_id,
            )
        )
        return result

    def list_grants(
        self,
        *,
        provider_id: str | None = None,
        status: str | None = None,
        account: str | None = None,
        label: str | None = None,
        end_user_token: str | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> UnifiedGrantListResult:
        """Sync :meth:`App.list_grants`."""
        result: UnifiedGrantListResult = self._run(
            self._core.list_grants(
                provider_id=provider_id,
                status=status,
                account=account,
                label=label,
                end_user_token=end_user_token,
                limit=limit,
                offset=offset,
            )
        )
        return result

    def revoke_grant(self, grant_id: str, *, reason: str | None = None) -> RevokeGrantResult:
        """Sync :meth:`App.revoke_grant`."""
        result: RevokeGrantResult = self._run(self._core.revoke_grant(grant_id, reason=reason))
        return result

    def create_managed_secret_grant(
        self,
        managed_secret_id: str,
        *,
        principal: Principal,
        grant_policy: GrantPolicyInput | dict[str, Any] | None = None,
        credential_id: str | None = None,
    ) -> CreateGrantResult:
        """Sync :meth:`App.create_managed_secret_grant`."""
        result: CreateGrantResult = self._run(
            self._core.create_managed_secret_grant(
                managed_secret_id,
                principal=principal,
                grant_policy=grant_policy,
                credential_id=credential_id,
            )
        )
        return result

    def create_connect_session(
        self,
        *,
        allowed_providers: list[str] | None = None,
        direct: bool = False,
        return_url: str | None = None,
        allowed_origin: str | None = None,
        metadata: dict[str, Any] | None = None,
        grant_policy: GrantPolicyInput | dict[str, Any] | None = None,
        required_scopes: dict[str, list[str]] | None = None,
        agent: str | None = None,
        user_token: str | None = None,
        requested_grant: dict[str, Any] | None = None,
        repair_grant_id: str | None = None,
        delegable: bool | None = None,
        scope_constraint: list[str] | None = None,
        switch_account: bool = False,
        allow_user_policy_rules: bool = True,
    ) -> ConnectSession:
        """Sync :meth:`App.create_connect_session`."""
        result: ConnectSession = self._run(
            self._core.create_connect_session(
                allowed_providers=allowed_providers,
                direct=direct,
                return_url=return_url,
                allowed_origin=allowed_origin,
                metadata=metadata,
                grant_policy=grant_policy,
                required_scopes=required_scopes,
                agent=agent,
                user_token=user_token,
                requested_grant=requested_grant,
                repair_grant_id=repair_grant_id,
                delegable=delegable,
                scope_constraint=scope_constraint,
                switch_account=switch_account,
                allow_user_policy_rules=allow_user_policy_rules,
            )
        )
        return result

    def connect(
        self,
        *,
        providers: list[str] | None = None,
        timeout: int = 300,
        poll_interval: float = 2.0,
        open_browser: bool = True,
        grant_policy: GrantPolicyInput | dict[str, Any] | None = None,
        allow_user_policy_rules: bool = True,
        direct: bool = False,
    ) -> list[ConnectResult]:
        """Sync :meth:`App.connect`."""
        result: list[ConnectResult] = self._run(
            self._core.connect(
                providers=providers,
                timeout=timeout,
                poll_interval=poll_interval,
                open_browser=open_browser,
                grant_policy=grant_policy,
                allow_user_policy_rules=allow_user_policy_rules,
                direct=direct,
            )
        )
        return result

    def poll_connect_session(
        self,
        session_token: str,
        *,
        timeout: int = 300,
        poll_interval: float = 2.0,
        on_event: Callable[[dict[str, Any]], None] | None = None,
    ) -> list[ConnectResult]:
        """Sync :meth:`App.poll_connect_session`."""
        result: list[ConnectResult] = self._run(
            self._core.poll_connect_session(
                session_token, timeout=timeout, poll_interval=poll_interval, on_event=on_event
            )
        )
        return result

    def create_auth_session(self) -> AuthSession:
        """Sync :meth:`App.create_auth_session`."""
        result: AuthSession = self._run(self._core.create_auth_session())
        return result

    def poll_auth_session(
        self, session_token: str, *, timeout: float = 300.0, poll_interval: float = 2.0
    ) -> AuthResult:
        """Sync :meth:`App.poll_auth_session`."""
        result: AuthResult = self._run(
            self._core.poll_auth_session(
                session_token, timeout=timeout, poll_interval=poll_interval
            )
        )
        return result

    def authenticate(self, *, timeout: float = 300.0) -> AuthResult:
        """Sync :meth:`App.authenticate`."""
        result: AuthResult = self._run(self._core.authenticate(timeout=timeout))
        return result

    def verify_user_token(self, token: str) -> str | None:
        """Sync :meth:`App.verify_user_token`."""
        result: str | None = self._run(self._core.verify_user_token(token))
        return result
