"""Outbound HTTP to an identity provider: https only, bounded in time and size, no redirects.

Every byte the vault reads from an IdP (discovery, JWKS, token responses) comes through
:func:`fetch_json`. The limits exist because some of these fetches happen on a request's
path (a JWKS refresh on an unknown ``kid``): a slow or hostile IdP must cost a bounded wait,
and a huge answer must not be read into memory.
"""

from __future__ import annotations

import asyncio
import json
import ssl
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx

from grantvault_server import outbound

#: Largest document accepted from an IdP (discovery documents and JWKS are a few KiB).
MAX_DOCUMENT_BYTES = 256 * 1024
#: Whole-request deadline; also the connect and read timeouts.
TIMEOUT_S = 5.0
USER_AGENT = "grantvault-server (+identity)"


class IdpFetchError(Exception):
    """The IdP could not be reached or answered something unusable.

    The message is safe to show an operator: it names the URL's purpose and what went wrong,
    never a response body or a credential.
    """


class IdpUrlError(ValueError):
    """A URL the vault refuses to call (not https, user information, malformed)."""


def check_idp_url(url: object, allow_http_hosts: Iterable[str], what: str) -> str:
    """Return ``url`` if the vault may call it; raise :class:`IdpUrlError` otherwise.

    https is required; plain http only for the hosts the operator allows for local testing
    (``GRANTVAULT_ALLOW_HTTP_HOSTS``), the same rule as for every other outbound call.
    """
    if not isinstance(url, str) or not url or len(url) > 2048:
        raise IdpUrlError(f"The {what} must be a URL of at most 2048 characters.")
    if any(c in url for c in "\\\r\n\t\x00 ") or not url.isascii():
        raise IdpUrlError(f"The {what} contains characters that are not allowed in a URL.")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises on a malformed port
    except ValueError:
        raise IdpUrlError(f"The {what} cannot be parsed as a URL.") from None
    host = (parts.hostname or "").lower()
    if not host or "@" in parts.netloc:
        raise IdpUrlError(f"The {what} must name a host and carry no user information.")
    if parts.fragment:
        raise IdpUrlError(f"The {what} must not have a #fragment.")
    scheme = parts.scheme.lower()
    if scheme == "https":
        return url
    if scheme == "http" and host in {h.lower() for h in allow_http_hosts}:
        return url
    raise IdpUrlError(
        f"The {what} must use https (plain http only for hosts listed in "
        "GRANTVAULT_ALLOW_HTTP_HOSTS, for local testing)."
    )


@dataclass(frozen=True)
class Fetched:
    status: int
    body: Any


async def fetch_json(
    url: str,
    what: str,
    *,
    method: str = "GET",
    form: Mapping[str, str] | None = None,
    headers: Mapping[str, str] | None = None,
    timeout_s: float = TIMEOUT_S,
    max_bytes: int = MAX_DOCUMENT_BYTES,
    verify: ssl.SSLContext | None = None,
) -> Fetched:
    """Call ``url`` once and parse its JSON answer, within ``timeout_s`` and ``max_bytes``.

    Redirects are not followed (an IdP endpoint that redirects is misconfigured, or is
    trying to move the vault somewhere else). Any status is returned to the caller, which
    decides what an error means; transport failures, oversized or non-JSON answers raise
    :class:`IdpFetchError`. TLS is verified with the process's outbound context (public
    roots plus ``GRANTVAULT_CA_BUNDLE``), built once, so the client made per call is cheap.
    """
    request_headers = {"Accept": "application/json", "User-Agent": USER_AGENT, **(headers or {})}
    try:
        async with asyncio.timeout(timeout_s):
            async with (
                httpx.AsyncClient(
                    timeout=httpx.Timeout(timeout_s),
                    follow_redirects=False,
                    # No proxy or CA variables from the environment (see ``outbound``).
                    trust_env=False,
                    verify=verify or outbound.tls_context(),
                ) as client,
                client.stream(
                    method,
                    url,
                    data=dict(form) if form is not None else None,
                    headers=request_headers,
                ) as response,
            ):
                if 300 <= response.status_code < 400:
                    raise IdpFetchError(
                        f"The {what} answered with a redirect ({response.status_code}); "
                        "redirects are not followed. Configure the final URL."
                    )
                declared = response.headers.get("content-length", "")
                if declared.isdigit() and int(declared) > max_bytes:
                    raise IdpFetchError(f"The {what} answer is larger than {max_bytes} bytes.")
                body = bytearray()
                async for chunk in response.aiter_bytes():
                    body += chunk
                    if len(body) > max_bytes:
                        raise IdpFetchError(f"The {what} answer is larger than {max_bytes} bytes.")
                status = response.status_code
    except TimeoutError:
        raise IdpFetchError(f"The {what} did not answer within {timeout_s:g} s.") from None
    except httpx.HTTPError as exc:
        raise IdpFetchError(
            f"The {what} could not be reached: {outbound.describe_failure(exc)}."
        ) from None
    try:
        parsed = json.loads(body)
    except (ValueError, RecursionError):
        raise IdpFetchError(f"The {what} answered with something that is not JSON.") from None
    return Fetched(status, parsed)
