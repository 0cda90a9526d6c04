"""A scripted vault and provider for ``httpx.MockTransport`` unit tests.

The fake vault checks every request's signature with the server's own verifier, so a unit
test that passes also proves the SDK signed what it sent.
"""

from __future__ import annotations

import json
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

from grantvault import App, SyncApp
from grantvault.protocol.key_format import mint_key
from grantvault_server.auth.signing import verify_signature

BASE_URL = "http://127.0.0.1:8080"
Reply = httpx.Response | Callable[[httpx.Request], httpx.Response] | Exception


def token_answer(**overrides: Any) -> dict[str, Any]:
    """A well-formed ``/sdk/token`` answer (bearer), fields overridable."""
    answer: dict[str, Any] = {
        "access_token": "tok-secret-value",
        "token_type": "Bearer",
        "grant_id": "0b6f7c1e-8a7d-4a4e-9b52-5d3f8f7f2a11",
        "provider_id": "github",
        "scopes": [],
        "scope_mismatch": False,
        "token_generation": "6d1f0a7e-2b6e-4f7e-9f64-0c7f8a4e2b31",
        "injection_header": "Authorization",
        "injection_format": "Bearer {token}",
    }
    answer.update(overrides)
    return answer


def error(status: int, code: str, message: str = "refused", **fields: Any) -> httpx.Response:
    return httpx.Response(status, json={"error": code, "message": message, **fields})


@dataclass
class FakeVault:
    """Routes by path; each route is a queue of replies (the last one repeats)."""

    api_key: str = field(default_factory=lambda: mint_key("rk"))
    routes: dict[str, deque[Reply]] = field(default_factory=dict)
    calls: list[tuple[str, dict[str, Any], httpx.Request]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.on("/sdk/oauth/audit/api-call", httpx.Response(202, json={"accepted": True}))

    def on(self, path: str, *replies: Reply) -> FakeVault:
        self.routes[path] = deque(replies)
        return self

    def bodies(self, path: str) -> list[dict[str, Any]]:
        return [body for p, body, _ in self.calls if p == path]

    def paths(self) -> list[str]:
        return [p for p, _, _ in self.calls]

    def __call__(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        target = path + (f"?{request.url.query.decode()}" if request.url.query else "")
        assert request.headers["x-api-key"] == self.api_key
        verify_signature(
            api_key=self.api_key,
            method=request.method,
            target=target,
            body=request.content,
            headers={k.lower(): v for k, v in request.headers.items()},
            now=time.time(),
            skew_seconds=300,
        )
        body = json.loads(request.content) if request.content else {}
        self.calls.append((path, body, request))
        queue = self.routes.get(path)
        if not queue:
            return error(404, "not_found", f"no route {path} in the fake vault")
        reply = queue.popleft() if len(queue) > 1 else queue[0]
        if isinstance(reply, Exception):
            raise reply
        if callable(reply) and not isinstance(reply, httpx.Response):
            return reply(request)
        return _fresh(reply)


def _fresh(reply: httpx.Response) -> httpx.Response:
    """A new response object each time: one object cannot serve two clients."""
    return httpx.Response(reply.status_code, headers=reply.headers, content=reply.content)


@dataclass
class FakeProvider:
    """Answers 200 with what it received, or a scripted reply."""

    replies: deque[Reply] = field(default_factory=deque)
    seen: list[httpx.Request] = field(default_factory=list)

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.seen.append(request)
        if self.replies:
            reply = self.replies.popleft()
            if isinstance(reply, Exception):
                raise reply
            if callable(reply) and not isinstance(reply, httpx.Response):
                return reply(request)
            return _fresh(reply)
        return httpx.Response(200, json={"ok": True})


class FakeClock:
    """A clock that jumps forward when slept on, recording each sleep."""

    def __init__(self) -> None:
        self.t = 1000.0
        self.sleeps: list[float] = []

    def now(self) -> float:
        return self.t

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.t += seconds

    async def asleep(self, seconds: float) -> None:
        self.sleep(seconds)


def make_app(vault: FakeVault, provider: FakeProvider | None = None, **kwargs: Any) -> App:
    app = App(
        vault.api_key,
        base_url=BASE_URL,
        transport=httpx.MockTransport(vault),
        provider_transport=httpx.MockTransport(provider or FakeProvider()),
        **kwargs,
    )
    app._core.clock = FakeClock()  # type: ignore[assignment]
    return app


def make_sync_app(vault: FakeVault, provider: FakeProvider | None = None, **kwargs: Any) -> SyncApp:
    app = SyncApp(
        vault.api_key,
        base_url=BASE_URL,
        transport=httpx.MockTransport(vault),
        provider_transport=httpx.MockTransport(provider or FakeProvider()),
        **kwargs,
    )
    app._core.clock = FakeClock()  # type: ignore[assignment]
    return app


def new_uuid() -> str:
    return str(uuid.uuid4())
