"""The one OIDC discovery (OpenID Connect Discovery 1.0): for an app's identity provider and
for a custom OAuth provider added by its issuer alike.

Why the checks matter:

* ``issuer`` must equal the configured issuer *exactly* (Discovery §4.3): a document at
  ``https://op/`` that names ``https://evil/`` is a mix-up, and tokens are later matched on
  this exact string (``http://127.0.0.1`` and ``http://localhost`` are different issuers).
* The issuer and every endpoint the document names follow the outbound URL rule (https, or
  plain http to an allowed host), checked here rather than at first use, so a bad document is
  refused while the operator is still looking.
* The document is small: 256 KiB and 5 s at most, no redirects.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from grantvault_server.outbound.http import (
    DOCUMENT_TIMEOUT_S,
    MAX_DOCUMENT_BYTES,
    OutboundClient,
    OutboundError,
)
from grantvault_server.outbound.urls import UrlRefused

WELL_KNOWN = "/.well-known/openid-configuration"
#: Fields of a discovery document that hold a URL the vault may later call or send a browser to.
URL_FIELDS = (
    "jwks_uri",
    "authorization_endpoint",
    "token_endpoint",
    "userinfo_endpoint",
    "revocation_endpoint",
)


class DiscoveryError(Exception):
    """The issuer's discovery failed or its document is unusable.

    ``str()`` is the operator's message; ``code`` is a short reason (``endpoint_not_allowed``,
    ``timeout``, ``network_error``, ``http_<status>``, ``malformed_response``,
    ``issuer_mismatch``) and ``reason`` the short description that goes with it.
    """

    def __init__(self, message: str, *, code: str, reason: str = "") -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason or message


def well_known_url(issuer: str) -> str:
    return issuer.rstrip("/") + WELL_KNOWN


async def discover(
    http: OutboundClient, issuer: str, *, required: Sequence[str] = ()
) -> dict[str, Any]:
    """Fetch ``{issuer}/.well-known/openid-configuration`` through ``http`` and check it.

    Returns the document; its ``issuer`` is exactly ``issuer``, and every field of
    :data:`URL_FIELDS` it has (and every field of ``required``, present or not) passed the
    URL rule of ``http``'s allowance.
    """
    try:
        http.check(issuer, "issuer")
    except UrlRefused as exc:
        raise DiscoveryError(str(exc), code="endpoint_not_allowed") from None
    if "?" in issuer:
        raise DiscoveryError(
            "The issuer must not have a query string (OIDC Discovery 3).",
            code="endpoint_not_allowed",
        )
    url = well_known_url(issuer)
    try:
        answer = await http.send(
            "GET",
            url,
            what="discovery document",
            headers={"Accept": "application/json"},
            timeout_s=DOCUMENT_TIMEOUT_S,
            max_bytes=MAX_DOCUMENT_BYTES,
        )
    except OutboundError as exc:
        code = {"timeout": "timeout", "too_large": "malformed_response"}.get(
            exc.kind, "network_error"
        )
        raise DiscoveryError(
            f"The discovery document could not be fetched: {exc.reason} (fetched from {url})",
            code=code,
            reason=exc.reason,
        ) from None
    try:
        doc = answer.json() if answer.status == 200 else None
    except (ValueError, RecursionError):
        doc = None
    if not isinstance(doc, dict):
        code = "malformed_response" if answer.status == 200 else f"http_{answer.status}"
        raise DiscoveryError(
            f"{url} answered HTTP {answer.status} without a discovery document; check the "
            "issuer URL (it is the `iss` claim of the tokens).",
            code=code,
            reason="discovery document not available",
        )
    named = doc.get("issuer")
    if named != issuer:
        shown = repr(named)[:200] if isinstance(named, str) else "nothing"
        raise DiscoveryError(
            f"The discovery document names the issuer {shown}, not {issuer!r}. Configure "
            "exactly the issuer the IdP names (scheme, host, path and trailing slash); it must "
            "also be the `iss` claim of its tokens.",
            code="issuer_mismatch",
            reason="the discovery document names a different issuer",
        )
    for field in URL_FIELDS:
        if field in required or doc.get(field) is not None:
            try:
                http.check(doc.get(field), f"discovery field {field}")
            except UrlRefused as exc:
                raise DiscoveryError(
                    f"{exc} (from the discovery document)", code="endpoint_not_allowed"
                ) from None
    return doc
