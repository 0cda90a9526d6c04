"""What the vault keeps from an IdP's OIDC discovery document to verify its users' tokens.

The fetch and its checks (exact ``issuer``, every endpoint on the outbound URL rule, size and
time limits) are the one OIDC discovery of :mod:`grantvault_server.outbound.oidc`, shared with
custom OAuth providers. On top of it, identity needs:

* a ``jwks_uri``: the only place keys ever come from;
* only asymmetric signature algorithms: ``none`` and the HMAC family can never verify a
  third party's token (an HS256 "signature" made with the public key is the classic
  key-confusion forgery).
"""

from __future__ import annotations

import ssl
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from grantvault_server.outbound import oidc
from grantvault_server.outbound.http import OutboundClient
from grantvault_server.outbound.oidc import DiscoveryError

__all__ = ["Discovery", "DiscoveryError", "check_algorithms", "discover"]

#: Signature algorithms the vault verifies, by JWK key type.
RSA_ALGORITHMS = frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"})
EC_ALGORITHMS = {"P-256": "ES256", "P-384": "ES384", "P-521": "ES512"}
OKP_CURVES = frozenset({"Ed25519", "Ed448"})
ASYMMETRIC_ALGORITHMS = RSA_ALGORITHMS | frozenset(EC_ALGORITHMS.values()) | {"EdDSA"}


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


async def discover(
    issuer: str,
    allow_http_hosts: Sequence[str],
    *,
    verify: ssl.SSLContext | None = None,
    http: OutboundClient | None = None,
) -> Discovery:
    """Discover ``issuer`` (:func:`grantvault_server.outbound.oidc.discover`, through
    ``http``, the vault's client) and keep what verifying its tokens needs. Without ``http`` a
    short-lived client is made from ``allow_http_hosts`` and ``verify`` (TLS trust: the
    vault's context, else the process's)."""
    client = http or OutboundClient(allow_http_hosts, verify=verify, max_keepalive=0)
    try:
        doc = await oidc.discover(client, issuer, required=("jwks_uri",))
    finally:
        if http is None:
            await client.aclose()
    advertised = doc.get("id_token_signing_alg_values_supported")
    # OIDC Discovery: RS256 must be supported; an absent list means RS256.
    algorithms = check_algorithms(advertised if isinstance(advertised, list) else ["RS256"])
    if not algorithms:
        raise DiscoveryError(
            "The IdP advertises no asymmetric signature algorithm (RS*, PS*, ES*, EdDSA); "
            "the vault never accepts `none` or HMAC-signed user tokens.",
            code="malformed_response",
        )
    methods = doc.get("token_endpoint_auth_methods_supported")
    return Discovery(
        issuer=issuer,
        jwks_uri=str(doc["jwks_uri"]),
        algorithms=algorithms,
        authorization_endpoint=_str_or_none(doc.get("authorization_endpoint")),
        token_endpoint=_str_or_none(doc.get("token_endpoint")),
        token_auth_methods=tuple(m for m in methods if isinstance(m, str))
        if isinstance(methods, list)
        else ("client_secret_basic",),
        iss_parameter_supported=doc.get("authorization_response_iss_parameter_supported") is True,
    )


def _str_or_none(value: object) -> str | None:
    return value if isinstance(value, str) else None
