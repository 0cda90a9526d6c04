"""The OIDC discovery document of an issuer, fetched once at configuration time and validated.

Why the checks matter:

* ``issuer`` must equal the configured issuer *exactly* (OIDC Discovery 4.3): a document at
  ``https://op/`` that names ``https://evil/`` is a mix-up, and tokens are later matched on
  this exact string (``http://127.0.0.1`` and ``http://localhost`` are different issuers).
* ``jwks_uri`` is the only place keys ever come from, so it must be https.
* Only asymmetric signature algorithms are kept: ``none`` and the HMAC family can never
  verify a third party's token (an HS256 "signature" made with the public key is the
  classic key-confusion forgery).
"""

from __future__ import annotations

import ssl
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from grantvault_server.identity.fetch import IdpFetchError, IdpUrlError, check_idp_url, fetch_json

#: Signature algorithms the vault verifies, by JWK key type.
RSA_ALGORITHMS = frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"})
EC_ALGORITHMS = {"P-256": "ES256", "P-384": "ES384", "P-521": "ES512"}
OKP_CURVES = frozenset({"Ed25519", "Ed448"})
ASYMMETRIC_ALGORITHMS = RSA_ALGORITHMS | frozenset(EC_ALGORITHMS.values()) | {"EdDSA"}

WELL_KNOWN = "/.well-known/openid-configuration"


class DiscoveryError(Exception):
    """The issuer's discovery failed or its document is unusable; the message says why."""


@dataclass(frozen=True)
class Discovery:
    issuer: str
    jwks_uri: str
    algorithms: tuple[str, ...]
    authorization_endpoint: str | None
    token_endpoint: str | None
    token_auth_methods: tuple[str, ...]
    #: RFC 9207: the IdP puts ``iss`` in every authorization response, so the callback
    #: requires it (a response without it may come from another IdP).
    iss_parameter_supported: bool

    def endpoints(self) -> dict[str, Any]:
        """What is stored beside the configuration (the sign-in broker needs these)."""
        return {
            "authorization_endpoint": self.authorization_endpoint,
            "token_endpoint": self.token_endpoint,
            "token_endpoint_auth_methods_supported": list(self.token_auth_methods),
            "authorization_response_iss_parameter_supported": self.iss_parameter_supported,
        }


def check_algorithms(names: Iterable[object]) -> tuple[str, ...]:
    """Keep the asymmetric algorithms of ``names`` (order kept, duplicates dropped)."""
    kept: list[str] = []
    for name in names:
        if isinstance(name, str) and name in ASYMMETRIC_ALGORITHMS and name not in kept:
            kept.append(name)
    return tuple(kept)


def _optional_url(doc: dict[str, Any], field: str, allow_http_hosts: Sequence[str]) -> str | None:
    value = doc.get(field)
    if value is None:
        return None
    try:
        return check_idp_url(value, allow_http_hosts, f"discovery field {field}")
    except IdpUrlError as exc:
        raise DiscoveryError(str(exc)) from None


async def discover(
    issuer: str, allow_http_hosts: Sequence[str], *, verify: ssl.SSLContext | None = None
) -> Discovery:
    """Fetch and validate ``{issuer}/.well-known/openid-configuration`` (TLS trust:
    ``verify``, the vault's context, else the process's)."""
    try:
        check_idp_url(issuer, allow_http_hosts, "issuer")
    except IdpUrlError as exc:
        raise DiscoveryError(str(exc)) from None
    if "?" in issuer:
        raise DiscoveryError("The issuer must not have a query string (OIDC Discovery 3).")
    url = issuer.rstrip("/") + WELL_KNOWN
    try:
        fetched = await fetch_json(url, "discovery document", verify=verify)
    except IdpFetchError as exc:
        raise DiscoveryError(f"{exc} (fetched from {url})") from None
    if fetched.status != 200 or not isinstance(fetched.body, dict):
        raise DiscoveryError(
            f"{url} answered HTTP {fetched.status} without a discovery document; check the "
            "issuer URL (it is the `iss` claim of the tokens)."
        )
    doc: dict[str, Any] = fetched.body
    named = doc.get("issuer")
    if named != issuer:
        shown = repr(named)[:200] if isinstance(named, str) else "nothing"
        raise DiscoveryError(
            f"The discovery document names the issuer {shown}, not {issuer!r}. Configure "
            "exactly the issuer the IdP names (scheme, host, path and trailing slash); it must "
            "also be the `iss` claim of its tokens."
        )
    try:
        jwks_uri = check_idp_url(doc.get("jwks_uri"), allow_http_hosts, "jwks_uri")
    except IdpUrlError as exc:
        raise DiscoveryError(f"{exc} (from the discovery document)") from None
    advertised = doc.get("id_token_signing_alg_values_supported")
    # OIDC Discovery: RS256 must be supported; an absent list means RS256.
    algorithms = check_algorithms(advertised if isinstance(advertised, list) else ["RS256"])
    if not algorithms:
        raise DiscoveryError(
            "The IdP advertises no asymmetric signature algorithm (RS*, PS*, ES*, EdDSA); "
            "the vault never accepts `none` or HMAC-signed user tokens."
        )
    methods = doc.get("token_endpoint_auth_methods_supported")
    return Discovery(
        issuer=issuer,
        jwks_uri=jwks_uri,
        algorithms=algorithms,
        authorization_endpoint=_optional_url(doc, "authorization_endpoint", allow_http_hosts),
        token_endpoint=_optional_url(doc, "token_endpoint", allow_http_hosts),
        token_auth_methods=tuple(m for m in methods if isinstance(m, str))
        if isinstance(methods, list)
        else ("client_secret_basic",),
        iss_parameter_supported=doc.get("authorization_response_iss_parameter_supported") is True,
    )
