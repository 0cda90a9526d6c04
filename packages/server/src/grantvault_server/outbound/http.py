"""The vault's one HTTP client for calls to third parties (providers, IdPs).

One :class:`OutboundClient` per vault (``Vault.http``, closed with the vault) holds one pooled
``httpx.AsyncClient``; the OAuth client, OIDC discovery, the JWKS cache and the sign-in code
exchange all send through it. What every call gets, whoever makes it:

* the URL rule first (:func:`~grantvault_server.outbound.urls.check_url`: https, or plain
  http to a host in ``GRANTVAULT_ALLOW_HTTP_HOSTS``), for the first URL and any redirect;
* the environment is not read (``trust_env=False``: proxy variables must not reroute tokens
  or codes) and TLS is verified with the vault's context (public roots plus
  ``GRANTVAULT_CA_BUNDLE``);
* no redirects, unless the caller asks for some (then each hop is checked again and a
  credential header is not carried to another origin);
* a wall-clock limit on the whole exchange (httpx's timeouts bound each read, not the whole
  answer: a server dribbling a byte at a time must not hold a refresh lease hostage) and a
  byte limit on the answer (declared length and bytes read);
* one failure classification (:class:`OutboundError`), including whether the request may
  have reached the server (``maybe_delivered``), judged by httpcore's trace events: anything
  after the request headers started going out may have been processed.
"""

from __future__ import annotations

import asyncio
import json
import ssl
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import urljoin, urlsplit

import httpx

from grantvault_server import outbound
from grantvault_server.outbound.urls import HttpAllowance, UrlRefused, check_url

USER_AGENT = "grantvault-server"
#: Connect timeout of every call (the whole call has its own wall-clock limit).
CONNECT_TIMEOUT_S = 5.0
DEFAULT_TIMEOUT_S = 15.0
DEFAULT_MAX_BYTES = 1 << 20
_REDIRECTS = frozenset({301, 302, 303, 307, 308})

FailureKind = Literal["timeout", "network", "too_large", "redirect"]


class OutboundError(Exception):
    """A call that produced no usable answer.

    ``kind``: ``timeout`` (the wall-clock limit or an httpx timeout), ``network`` (connection,
    TLS, protocol), ``too_large`` (the answer passed the byte limit; ``status`` says what the
    status line was), ``redirect`` (too many, or to a URL the rule refuses). ``reason`` is
    operator-readable (never an exception class name or a body). ``maybe_delivered`` is set
    when the request may have reached the server although no answer came back.
    """

    def __init__(
        self,
        kind: FailureKind,
        reason: str,
        *,
        maybe_delivered: bool,
        status: int | None = None,
    ) -> None:
        super().__init__(f"{kind}: {reason}")
        self.kind: FailureKind = kind
        self.reason = reason
        self.maybe_delivered = maybe_delivered
        self.status = status


@dataclass(frozen=True)
class Answer:
    """A complete answer within the limits: status, headers, body bytes."""

    status: int
    headers: httpx.Headers
    body: bytes
    #: The URL that answered (differs from the one asked only when redirects were asked for).
    url: str

    def json(self) -> Any:
        """The body as JSON; ``ValueError`` (or ``RecursionError``) if it is not JSON."""
        return json.loads(self.body)


class OutboundClient:
    """One pooled client; see the module documentation for what every call gets."""

    def __init__(
        self,
        allow_http_hosts: HttpAllowance | Iterable[str] = (),
        *,
        verify: ssl.SSLContext | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        max_connections: int = 50,
        max_keepalive: int = 10,
    ) -> None:
        self.allowance = HttpAllowance.of(allow_http_hosts)
        self._http = httpx.AsyncClient(
            transport=transport,
            timeout=httpx.Timeout(DEFAULT_TIMEOUT_S, connect=CONNECT_TIMEOUT_S),
            follow_redirects=False,
            headers={"User-Agent": USER_AGENT},
            limits=httpx.Limits(
                max_connections=max_connections, max_keepalive_connections=max_keepalive
            ),
            # The environment is not read (proxy variables must not reroute tokens); the
            # trust is the vault's outbound context, with GRANTVAULT_CA_BUNDLE if set.
            trust_env=False,
            verify=verify or outbound.tls_context(),
        )

    @property
    def closed(self) -> bool:
        return self._http.is_closed

    async def aclose(self) -> None:
        await self._http.aclose()

    def check(self, url: object, what: str) -> str:
        """The URL rule with this client's allowance (raises :class:`UrlRefused`)."""
        return check_url(url, self.allowance, what)

    async def send(
        self,
        method: str,
        url: str,
        *,
        what: str = "endpoint",
        headers: Mapping[str, str] | None = None,
        form: Mapping[str, str] | None = None,
        json_body: Any = None,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        max_bytes: int = DEFAULT_MAX_BYTES,
        max_redirects: int = 0,
    ) -> Answer:
        """Call ``url`` once and read the whole answer within ``timeout_s`` and ``max_bytes``.

        Any status is returned (a 3xx too, unless ``max_redirects`` asks to follow it): the
        caller decides what it means. Raises :class:`UrlRefused` before sending anything to a
        URL the rule refuses, :class:`OutboundError` for everything else.
        """
        self.check(url, what)
        request_headers = dict(headers or {})
        kwargs: dict[str, Any] = {}
        if form is not None:
            kwargs["data"] = dict(form)
        if json_body is not None:
            kwargs["json"] = json_body
        # Which steps of the exchange began (httpcore's trace events): a failure before the
        # request headers were sent surely never reached the server.
        started: set[str] = set()

        async def trace(event: str, _info: Mapping[str, Any]) -> None:
            started.add(event)

        def maybe_delivered(exc: BaseException) -> bool:
            if isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)):
                return False
            # No trace at all (a custom transport): we cannot tell, so assume it arrived.
            return not started or any("send_request_headers" in e for e in started)

        timeout = httpx.Timeout(timeout_s, connect=min(CONNECT_TIMEOUT_S, timeout_s))
        try:
            async with asyncio.timeout(timeout_s):
                for _hop in range(max_redirects + 1):
                    answer = await self._once(
                        method,
                        url,
                        request_headers,
                        kwargs,
                        timeout=timeout,
                        trace=trace,
                        max_bytes=max_bytes,
                    )
                    if answer.status not in _REDIRECTS or max_redirects == 0:
                        return answer
                    method, url = self._follow(method, url, answer, request_headers, kwargs, what)
                raise OutboundError(
                    "redirect", f"more than {max_redirects} redirects", maybe_delivered=True
                )
        except (httpx.TimeoutException, TimeoutError) as exc:
            # TimeoutError is asyncio.timeout's: a server that accepted the connection and
            # never (fully) answered. Same classification as httpx's own timeouts.
            raise OutboundError(
                "timeout", "it did not answer in time", maybe_delivered=maybe_delivered(exc)
            ) from None
        except httpx.HTTPError as exc:
            raise OutboundError(
                "network", outbound.describe_failure(exc), maybe_delivered=maybe_delivered(exc)
            ) from None

    async def _once(
        self,
        method: str,
        url: str,
        headers: dict[str, str],
        kwargs: dict[str, Any],
        *,
        timeout: httpx.Timeout,
        trace: Any,
        max_bytes: int,
    ) -> Answer:
        async with self._http.stream(
            method, url, headers=headers, timeout=timeout, extensions={"trace": trace}, **kwargs
        ) as response:
            status = response.status_code
            declared = response.headers.get("content-length", "")
            if declared.isdigit() and int(declared) > max_bytes:
                raise _too_large(status, max_bytes)
            body = bytearray()
            async for chunk in response.aiter_bytes():
                body += chunk
                if len(body) > max_bytes:
                    raise _too_large(status, max_bytes)
            return Answer(status, response.headers, bytes(body), url)

    def _follow(
        self,
        method: str,
        url: str,
        answer: Answer,
        headers: dict[str, str],
        kwargs: dict[str, Any],
        what: str,
    ) -> tuple[str, str]:
        """The next hop of a redirect the caller asked to follow (rule checked again)."""
        location = answer.headers.get("location", "")
        target = urljoin(url, location)
        try:
            self.check(target, f"{what} (redirected)")
        except UrlRefused as exc:
            raise OutboundError("redirect", str(exc), maybe_delivered=True) from None
        if _origin(target) != _origin(url):
            # Credentials were meant for the first origin only.
            for name in [h for h in headers if h.lower() in ("authorization", "cookie")]:
                del headers[name]
        if answer.status == 303 or (answer.status in (301, 302) and method == "POST"):
            method = "GET"
            kwargs.clear()
        return method, target


def _too_large(status: int, max_bytes: int) -> OutboundError:
    # A status line arrived: the request reached the server and may have been processed.
    return OutboundError(
        "too_large",
        f"the answer is larger than {max_bytes} bytes",
        maybe_delivered=True,
        status=status,
    )


def _origin(url: str) -> tuple[str, str, int | None]:
    parts = urlsplit(url)
    return (parts.scheme, parts.hostname or "", parts.port)


#: Largest JSON document fetched by :func:`fetch_json` (discovery documents and JWKS are a few
#: KiB).
MAX_DOCUMENT_BYTES = 256 * 1024
#: Whole-request deadline of :func:`fetch_json` (its fetches can sit on a request's path: a
#: JWKS refresh on an unknown ``kid``).
DOCUMENT_TIMEOUT_S = 5.0


class FetchError(Exception):
    """A JSON fetch failed; the message is safe to show an operator (it names the URL's
    purpose and what went wrong, never a body or a credential)."""


@dataclass(frozen=True)
class Fetched:
    status: int
    body: Any


async def fetch_json(
    url: str,
    what: str,
    *,
    client: OutboundClient | None = None,
    method: str = "GET",
    form: Mapping[str, str] | None = None,
    headers: Mapping[str, str] | None = None,
    timeout_s: float = DOCUMENT_TIMEOUT_S,
    max_bytes: int = MAX_DOCUMENT_BYTES,
    allow_http_hosts: HttpAllowance | Iterable[str] = (),
    verify: ssl.SSLContext | None = None,
) -> Fetched:
    """Call ``url`` once through ``client`` (the vault's) and parse its JSON answer.

    A redirect is an error (an endpoint that redirects is misconfigured, or is trying to move
    the vault somewhere else); any other status is returned for the caller to judge.
    Without ``client`` a short-lived one is made from ``allow_http_hosts`` and ``verify``
    (tools and tests; the server always passes its vault's).
    """
    own = client is None
    http = client or OutboundClient(allow_http_hosts, verify=verify, max_keepalive=0)
    request_headers = {"Accept": "application/json", **(headers or {})}
    try:
        answer = await http.send(
            method,
            url,
            what=what,
            headers=request_headers,
            form=form,
            timeout_s=timeout_s,
            max_bytes=max_bytes,
        )
    except UrlRefused as exc:
        raise FetchError(str(exc)) from None
    except OutboundError as exc:
        if exc.kind == "timeout":
            raise FetchError(f"The {what} did not answer within {timeout_s:g} s.") from None
        if exc.kind == "too_large":
            raise FetchError(f"The {what} answer is larger than {max_bytes} bytes.") from None
        raise FetchError(f"The {what} could not be reached: {exc.reason}.") from None
    finally:
        if own:
            await http.aclose()
    if 300 <= answer.status < 400:
        raise FetchError(
            f"The {what} answered with a redirect ({answer.status}); redirects are not "
            "followed. Configure the final URL."
        )
    try:
        parsed = answer.json()
    except (ValueError, RecursionError):
        raise FetchError(f"The {what} answered with something that is not JSON.") from None
    return Fetched(answer.status, parsed)
