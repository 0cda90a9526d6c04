"""The one OAuth 2.0 token request: PKCE, client authentication, the authorization-code
exchange. Used by the provider client (Connect, refresh, revocation) and the sign-in broker.

What a token endpoint's answer *means* stays with the caller (the provider client applies the
catalog's quirks; the sign-in broker wants an ID token); how the request is made is here,
once: the form, the client's credentials (RFC 6749 §2.3.1), the PKCE verifier (RFC 7636),
sent through the vault's :class:`~grantvault_server.outbound.http.OutboundClient`.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal
from urllib.parse import quote_plus

from grantvault_server.outbound.http import (
    DEFAULT_MAX_BYTES,
    DEFAULT_TIMEOUT_S,
    Answer,
    OutboundClient,
)

AuthMethod = Literal["client_secret_basic", "client_secret_post"]
BodyFormat = Literal["form", "json"]


class UnsupportedAuthMethods(ValueError):
    """The server supports neither ``client_secret_basic`` nor ``client_secret_post``."""


def pkce_pair() -> tuple[str, str]:
    """A fresh RFC 7636 verifier (43 characters of 256 bits) and its S256 challenge."""
    verifier = secrets.token_urlsafe(32)
    return verifier, pkce_challenge(verifier)


def pkce_challenge(verifier: str) -> str:
    """The S256 ``code_challenge`` of ``verifier``."""
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def basic_credentials(client_id: str, client_secret: str) -> str:
    """The ``Authorization`` value of ``client_secret_basic``: RFC 6749 §2.3.1 has the id and
    the secret each ``application/x-www-form-urlencoded`` (Appendix B: space as ``+``, every
    reserved character escaped) before they are joined with ``:`` and base64-encoded."""
    pair = f"{quote_plus(client_id, safe='')}:{quote_plus(client_secret, safe='')}"
    return "Basic " + base64.b64encode(pair.encode("utf-8")).decode("ascii")


def auth_method_for(supported: Sequence[str] | None) -> AuthMethod:
    """The method to use with a server advertising ``supported``
    (``token_endpoint_auth_methods_supported``; absent means ``client_secret_basic``)."""
    methods = supported or ("client_secret_basic",)
    if "client_secret_basic" in methods:
        return "client_secret_basic"
    if "client_secret_post" in methods:
        return "client_secret_post"
    raise UnsupportedAuthMethods(
        "The server supports neither client_secret_basic nor client_secret_post."
    )


@dataclass(frozen=True)
class ClientAuth:
    """Who the client is, and how it proves it to the token (and revocation) endpoint."""

    client_id: str
    client_secret: str | None
    method: AuthMethod = "client_secret_basic"

    def apply(self, form: dict[str, str], headers: dict[str, str]) -> None:
        """Authenticate: Basic credentials in ``headers``, or ``client_id`` (and
        ``client_secret``) in ``form``. A public client (no secret) sends its id in the form."""
        if self.method == "client_secret_basic" and self.client_secret is not None:
            headers["Authorization"] = basic_credentials(self.client_id, self.client_secret)
            return
        form["client_id"] = self.client_id
        if self.client_secret is not None:
            form["client_secret"] = self.client_secret


async def token_request(
    http: OutboundClient,
    url: str,
    form: Mapping[str, str],
    client: ClientAuth,
    *,
    what: str = "token endpoint",
    headers: Mapping[str, str] | None = None,
    body_format: BodyFormat = "form",
    timeout_s: float = DEFAULT_TIMEOUT_S,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> Answer:
    """POST ``form`` with the client's authentication to a token (or revocation) endpoint.

    Raises what :meth:`OutboundClient.send` raises; the answer is the caller's to read.
    """
    body = dict(form)
    all_headers = {"Accept": "application/json", **(headers or {})}
    client.apply(body, all_headers)
    return await http.send(
        "POST",
        url,
        what=what,
        headers=all_headers,
        form=body if body_format == "form" else None,
        json_body=body if body_format == "json" else None,
        timeout_s=timeout_s,
        max_bytes=max_bytes,
    )


async def exchange_code(
    http: OutboundClient,
    token_url: str,
    client: ClientAuth,
    *,
    code: str,
    redirect_uri: str,
    verifier: str | None,
    headers: Mapping[str, str] | None = None,
    body_format: BodyFormat = "form",
    timeout_s: float = DEFAULT_TIMEOUT_S,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> Answer:
    """The authorization-code grant (RFC 6749 §4.1.3), with the PKCE verifier when the
    authorization request carried a challenge. Sent once: a code is single-use."""
    form = {"grant_type": "authorization_code", "code": code, "redirect_uri": redirect_uri}
    if verifier is not None:
        form["code_verifier"] = verifier
    return await token_request(
        http,
        token_url,
        form,
        client,
        headers=headers,
        body_format=body_format,
        timeout_s=timeout_s,
        max_bytes=max_bytes,
    )
