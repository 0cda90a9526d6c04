"""Abuse limits: per API key and per app on ``/sdk/*``, per client IP where nobody signs.

Why it is shaped this way (see ``docs/decisions/0009-rate-limits-per-replica.md``):

* **Per replica, in memory.** A budget shared through the database would add a write (and a
  row every replica fights over) to every retrieval, the hot path decision 0006 made cheap.
  The limits protect the vault and its database from one caller; each replica enforces them
  for the traffic it serves, so with N replicas behind a balancer a caller can get up to N
  times the configured figure. Operators size the settings for that.
* **GCRA** (the generic cell rate algorithm, a token bucket kept as one float per key): a
  budget of ``limit`` requests per ``window`` seconds, refilled continuously, with a burst of
  the whole budget. One dictionary read and write per check, no timers, no per-request
  allocation beyond the answer's headers.
* **The key and app budgets are spent only after the key is authenticated** (valid key,
  signature, clock, key state: ``api.deps``). An unsigned or badly signed request names a key
  it cannot prove it holds; if it spent that key's budget, an attacker who knows a victim's
  key prefix could lock the victim out. Such requests spend their **client IP's** budget
  instead (every ``/sdk`` answer 401 does), and an IP that has used it up is refused before
  any key lookup. The unauthenticated surfaces (hosted Connect and sign-in pages, OAuth and
  sign-in callbacks, the IdP webhook) spend the client IP's budget on every request.
* The clock is injectable, so tests advance time instead of sleeping.
"""

from __future__ import annotations

import ipaddress
import logging
import math
import time
from collections.abc import Callable
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from grantvault.types.errors import ErrorCode
from grantvault_server.errors import VaultError, send_error_answer

log = logging.getLogger(__name__)

#: Where the decision of an authenticated request waits for the middleware to turn it into
#: budget headers (and ``Retry-After`` on a 429). Present (``None`` when the key and app
#: limits are off) once the key is authenticated.
SCOPE_KEY = "grantvault.ratelimit"

#: Budgets kept per table before expired ones are swept (each entry is a few dozen bytes).
MAX_ENTRIES = 100_000

#: Browser and IdP surfaces that no API key signs (exact paths, and path prefixes).
UNAUTHENTICATED_PATHS = frozenset(
    {
        "/sdk/oauth/connect",
        "/sdk/oauth/callback",
        "/sdk/auth/start",
        "/sdk/auth/callback",
        "/sdk/auth/result",
        # The operator portal's sign-in (password, then the second factor).
        "/portal/login",
        "/portal/login/totp",
        # Operators' single sign-on (each start discovers the IdP; each callback exchanges).
        "/portal/sso/start",
        "/portal/sso/callback",
    }
)
UNAUTHENTICATED_PREFIXES = ("/connect/", "/webhooks/")
#: Static files of the hosted pages: no database work, fetched with every page view.
EXEMPT_PREFIXES = ("/connect/static/",)


class Decision:
    """One budget after a check: what the headers and a 429's body report.

    A plain slotted class, built once per request (a frozen dataclass costs several times
    more to construct, on the hottest path).
    """

    __slots__ = ("budget", "remaining", "reset_after", "retry_after")

    def __init__(
        self, budget: Budgets, remaining: int, reset_after: float, retry_after: int | None
    ) -> None:
        self.budget = budget
        self.remaining = remaining
        self.reset_after = reset_after  # seconds until the whole budget is available again
        self.retry_after = retry_after  # set when refused: whole seconds until one fits

    @property
    def scope(self) -> str:
        return self.budget.scope  # "api_key", "app" or "ip"

    @property
    def limit(self) -> int:
        return self.budget.limit

    @property
    def window_seconds(self) -> int:
        return self.budget.window

    @property
    def allowed(self) -> bool:
        return self.retry_after is None

    def headers(self, now_epoch: float) -> list[tuple[bytes, bytes]]:
        """``RateLimit-Policy``/``RateLimit`` (draft-ietf-httpapi-ratelimit-headers-11) and the
        ``X-RateLimit-*`` trio (``Reset`` in absolute Unix seconds) that clients read."""
        budget = self.budget
        reset = max(1, math.ceil(self.reset_after))
        remaining = str(self.remaining)
        headers = [
            (b"ratelimit-policy", budget.policy_header),
            (b"ratelimit", f'"{budget.scope}";r={remaining};t={reset}'.encode()),
            (b"x-ratelimit-limit", budget.limit_header),
            (b"x-ratelimit-remaining", remaining.encode()),
            (b"x-ratelimit-reset", str(int(now_epoch) + reset).encode()),
        ]
        if self.retry_after is not None:
            headers.append((b"retry-after", str(self.retry_after).encode()))
            headers.append((b"x-alter-rate-limited-scope", budget.scope.encode()))
        return headers

    def body(self) -> dict[str, Any]:
        return {
            "error": ErrorCode.RATE_LIMIT_EXCEEDED.value,
            "message": _message(self),
            "scope": self.scope,
            "limit": self.limit,
            "window_seconds": self.window_seconds,
            "retry_after": self.retry_after,
        }

    def error(self) -> VaultError:
        body = self.body()
        del body["error"], body["message"]
        return VaultError(ErrorCode.RATE_LIMIT_EXCEEDED, _message(self), **body)


def _message(decision: Decision) -> str:
    who = {"api_key": "this API key", "app": "this app", "ip": "this client address"}
    return (
        f"Rate limit of {who.get(decision.scope, decision.scope)} exceeded "
        f"({decision.limit} requests per {decision.window_seconds} s); retry after "
        f"{decision.retry_after} s."
    )


class Budgets:
    """GCRA budgets of one kind (``scope``): ``limit`` requests per ``window`` seconds.

    Each key maps to its *theoretical arrival time* (TAT): the instant at which its budget
    would be full again. A request costs ``window / limit`` seconds of it; a request is
    refused when the TAT would lie more than ``window`` ahead of now.
    """

    def __init__(self, scope: str, limit: int, window: int) -> None:
        self.scope = scope
        self.limit = limit
        self.window = window
        self.interval = window / limit
        self.tat: dict[str, float] = {}
        self.policy_header = f'"{scope}";q={limit};w={window}'.encode()
        self.limit_header = str(limit).encode()

    def ahead(self, key: str, now: float) -> float:
        """How far ahead of ``now`` the key's TAT would be after one more request."""
        tat = self.tat.get(key, now)
        return (tat if tat > now else now) + self.interval - now

    def decide(self, ahead: float) -> Decision:
        """The decision for a request that would put the TAT ``ahead`` seconds ahead."""
        if ahead > self.window + 1e-9:
            retry = max(1, math.ceil(ahead - self.window))
            return Decision(self, 0, ahead - self.interval, retry)
        return Decision(self, int((self.window - ahead) / self.interval + 1e-9), ahead, None)

    def evaluate(self, key: str, now: float) -> tuple[float, Decision]:
        """The new TAT if the request is admitted, and the decision (not yet stored)."""
        ahead = self.ahead(key, now)
        return now + ahead, self.decide(ahead)

    def store(self, key: str, tat: float, now: float) -> None:
        table = self.tat
        table[key] = tat
        if len(table) > MAX_ENTRIES:
            self._sweep(now)

    def exhausted(self, key: str, now: float) -> Decision | None:
        """The refusal a request would get now, without spending anything."""
        tat = self.tat.get(key)
        if tat is None or tat + self.interval - now <= self.window + 1e-9:
            return None
        return self.evaluate(key, now)[1]

    def _sweep(self, now: float) -> None:
        """Drop budgets that are full again (they equal a fresh one); if an attack with many
        distinct keys still fills the table, forget it all: the limits fail open rather than
        grow without bound or refuse callers that did nothing."""
        self.tat = {k: t for k, t in self.tat.items() if t > now}
        if len(self.tat) > MAX_ENTRIES // 2:
            log.warning(
                "rate-limit table %s holds %d active budgets; forgetting them",
                self.scope,
                len(self.tat),
            )
            self.tat = {}


class RateLimiter:
    """The budgets of one server process. A limit of 0 turns that budget off."""

    def __init__(
        self,
        *,
        per_key: int,
        per_app: int,
        per_ip: int,
        window_seconds: int = 60,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        on_refused: Callable[[str], None] | None = None,
    ) -> None:
        self.clock = clock
        self.wall_clock = wall_clock
        self.on_refused = on_refused
        self.keys = Budgets("api_key", per_key, window_seconds) if per_key else None
        self.apps = Budgets("app", per_app, window_seconds) if per_app else None
        self.ips = Budgets("ip", per_ip, window_seconds) if per_ip else None

    @classmethod
    def from_settings(cls, settings: Any, **kwargs: Any) -> RateLimiter:
        return cls(
            per_key=settings.rate_limit_per_key,
            per_app=settings.rate_limit_per_app,
            per_ip=settings.rate_limit_per_ip,
            window_seconds=settings.rate_limit_window_seconds,
            **kwargs,
        )

    def charge_key(self, scope: Scope, key_id: str, app_id: str) -> None:
        """Spend one request of an authenticated key and of its app; raise the 429 if either
        budget is used up (then neither is spent). The binding decision is left in ``scope``
        for the middleware's headers."""
        keys, apps = self.keys, self.apps
        if keys is None and apps is None:
            scope[SCOPE_KEY] = None  # authenticated: a later 401 is not the address's doing
            return
        now = self.clock()
        # Floats first; one Decision, for the budget that binds (the smaller share left, or
        # the one that refuses), is built at the end.
        key_ahead = keys.ahead(key_id, now) if keys is not None else 0.0
        app_ahead = apps.ahead(app_id, now) if apps is not None else 0.0
        binding: Budgets
        if keys is None:
            assert apps is not None
            binding, ahead = apps, app_ahead
        elif apps is None:
            binding, ahead = keys, key_ahead
        elif key_ahead > keys.window and app_ahead > apps.window:
            # Both refuse: report the longer wait, so one retry after it can pass both.
            over_key = key_ahead - keys.window >= app_ahead - apps.window
            binding, ahead = (keys, key_ahead) if over_key else (apps, app_ahead)
        elif (keys.window - key_ahead) / keys.interval <= (apps.window - app_ahead) / apps.interval:
            binding, ahead = keys, key_ahead
        else:
            binding, ahead = apps, app_ahead
        decision = binding.decide(ahead)
        scope[SCOPE_KEY] = decision
        if not decision.allowed:
            self._refused(decision.scope)
            raise decision.error()
        if keys is not None:
            keys.store(key_id, now + key_ahead, now)
        if apps is not None:
            apps.store(app_id, now + app_ahead, now)

    def charge_ip(self, address: str) -> Decision | None:
        """Spend one request of a client address; the refusal when its budget is used up."""
        ips = self.ips
        if ips is None:
            return None
        now = self.clock()
        key = ip_key(address)
        tat, decision = ips.evaluate(key, now)
        if decision.allowed:
            ips.store(key, tat, now)
            return None
        self._refused("ip")
        return decision

    def ip_refusal(self, address: str) -> Decision | None:
        """The refusal of a client address that has used up its budget, spending nothing."""
        ips = self.ips
        if ips is None or not ips.tat:
            return None
        return ips.exhausted(ip_key(address), self.clock())

    def _refused(self, scope: str) -> None:
        if self.on_refused is not None:
            self.on_refused(scope)


def ip_key(address: str) -> str:
    """The budget key of a client address: IPv4 as is, IPv6 by its /64 (one host's block:
    counting single IPv6 addresses would give one machine 2^64 budgets)."""
    if ":" not in address:
        return address
    try:
        network = ipaddress.IPv6Network(f"{address}/64", strict=False)
    except ValueError:
        return address
    return str(network.network_address)


def client_address(scope: Scope) -> str:
    """The client's address as uvicorn reports it (after ``GRANTVAULT_TRUSTED_PROXIES``)."""
    client = scope.get("client")
    return str(client[0]) if client else "unknown"


def _reports_own_budget(message: Message) -> bool:
    """A 429 that already carries budget headers (a policy's rate limit refused the call):
    that budget, not the key's, is the one the answer reports."""
    if message["status"] != 429:
        return False
    return any(name == b"x-ratelimit-limit" for name, _ in message.get("headers", []))


def is_unauthenticated_surface(path: str) -> bool:
    if path in UNAUTHENTICATED_PATHS:
        return True
    return path.startswith(UNAUTHENTICATED_PREFIXES) and not path.startswith(EXEMPT_PREFIXES)


class RateLimitMiddleware:
    """Applies the IP budgets before the application and adds the budget headers after it.

    * Hosted pages, callbacks and the IdP webhook: every request spends its client IP's
      budget; a used-up budget is answered 429 here.
    * ``/sdk/*`` (signed): a client IP whose budget is used up (by failed authentications)
      is answered 429 before any key lookup; every 401 answer spends the IP's budget. The key
      and app budgets are spent in ``api.deps`` once the key is authenticated; their decision
      becomes ``RateLimit-*``/``X-RateLimit-*`` headers here (and ``Retry-After`` on a 429).
    """

    def __init__(self, app: ASGIApp, *, limiter: RateLimiter, metrics: Any) -> None:
        self.app = app
        self.limiter = limiter
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        limiter = self.limiter
        if path.startswith("/sdk/") and path not in UNAUTHENTICATED_PATHS:
            address = client_address(scope)
            refusal = limiter.ip_refusal(address)
            if refusal is not None:
                await self._refuse(send, refusal)
                return

            async def send_metered(message: Message) -> None:
                if message["type"] == "http.response.start":
                    # A 401 before the key was authenticated (no decision recorded) spends the
                    # address's budget; a 401 after it (a user's JWT refused) does not.
                    if message["status"] == 401 and SCOPE_KEY not in scope:
                        limiter.charge_ip(address)
                    decision: Decision | None = scope.get(SCOPE_KEY)
                    if decision is not None and not _reports_own_budget(message):
                        headers = list(message.get("headers", []))
                        headers.extend(decision.headers(limiter.wall_clock()))
                        message = {**message, "headers": headers}
                await send(message)

            await self.app(scope, receive, send_metered)
            return
        if is_unauthenticated_surface(path):
            refusal = limiter.charge_ip(client_address(scope))
            if refusal is not None:
                await self._refuse(send, refusal)
                return
        await self.app(scope, receive, send)

    async def _refuse(self, send: Send, decision: Decision) -> None:
        self.metrics.denials.labels(ErrorCode.RATE_LIMIT_EXCEEDED.value).inc()
        await send_error_answer(
            send, 429, decision.body(), decision.headers(self.limiter.wall_clock())
        )
