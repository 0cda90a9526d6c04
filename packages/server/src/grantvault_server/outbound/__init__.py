"""Every call the vault makes to a third party: one stack (issue 10).

* :mod:`.urls`: the one rule for where a call may go (https, or plain http to a host in
  ``GRANTVAULT_ALLOW_HTTP_HOSTS``) with one host normalisation;
* :mod:`.http`: the one pooled client per vault (``Vault.http``): no redirects unless asked,
  wall-clock and byte limits per call, one failure classification;
* :mod:`.oidc`: the one OIDC discovery (IdP set-up and custom OAuth providers);
* :mod:`.oauth2`: the one token request (PKCE, client authentication, code exchange);
* this module: the TLS trust every one of those calls uses.

The TLS trust: why one context for the whole process. A GitHub Enterprise Server or Keycloak
behind a company CA must be trusted by the token exchange, the refresh, the revocation queue,
the account lookup, OIDC discovery and the JWKS fetch alike; a CA that works for one of them
and not another fails halfway through a Connect flow. ``GRANTVAULT_CA_BUNDLE`` (a PEM file)
is *added* to the public roots (certifi, the same roots httpx trusts by default), so public
providers keep working beside the internal one.

Why built once: loading the roots costs milliseconds, and a short-lived client (a CLI tool,
a test) must not pay that per call. With a bundle set, the context is built at start-up by
:func:`configure` (``config.load_settings`` calls it, so a bad file stops the start with a
clear message); without one it is built on first use, so CLI commands that never call out do
not pay for it. Either way httpx receives it as ``verify=``.

Why not ``SSL_CERT_FILE``: no outbound client reads the environment (``trust_env=False``,
so proxy variables cannot reroute tokens or sign-in codes), and one explicit setting is
easier to reason about than a variable that applies to some clients only. Start-up warns
when ``SSL_CERT_FILE`` or ``REQUESTS_CA_BUNDLE`` is set without ``GRANTVAULT_CA_BUNDLE``
(:func:`warn_ignored_environment`).

The vault builds its client from its own ``Settings`` (:func:`context_for`, one context per
bundle path, cached), so a ``Settings`` made directly (tests, embedding) is honoured too.
"""

from __future__ import annotations

import logging
import os
import ssl
from pathlib import Path

import certifi
import httpx

log = logging.getLogger(__name__)

#: The context of this process; ``None`` until configured with a bundle or first used.
_configured: ssl.SSLContext | None = None
#: One context per bundle (``None``: public roots only), by resolved path.
_by_bundle: dict[str | None, ssl.SSLContext] = {}
#: Variables other HTTP clients read for their trust store; the vault does not.
IGNORED_CA_VARIABLES = ("SSL_CERT_FILE", "REQUESTS_CA_BUNDLE")


class CaBundleError(ValueError):
    """``GRANTVAULT_CA_BUNDLE`` names something that is not a readable PEM bundle."""


def build_context(ca_bundle: Path | None = None) -> ssl.SSLContext:
    """A verifying client context: the public roots, plus the certificates in ``ca_bundle``."""
    context = ssl.create_default_context(cafile=certifi.where())
    if ca_bundle is None:
        return context
    where = f"GRANTVAULT_CA_BUNDLE ({ca_bundle})"
    if not ca_bundle.is_file():
        raise CaBundleError(
            f"{where} is not a file; give the path of a PEM file of CA certificates."
        )
    try:
        text = ca_bundle.read_text(encoding="ascii")
    except (OSError, UnicodeDecodeError):
        raise CaBundleError(f"{where} cannot be read as a PEM text file.") from None
    if "-----BEGIN CERTIFICATE-----" not in text:
        raise CaBundleError(
            f"{where} holds no PEM certificate (-----BEGIN CERTIFICATE-----); convert a DER "
            "file with `openssl x509 -inform der -in ca.der -out ca.pem`."
        )
    try:
        context.load_verify_locations(cadata=text)
    except ssl.SSLError:
        raise CaBundleError(f"{where} holds a certificate that cannot be parsed.") from None
    return context


def configure(ca_bundle: Path | None) -> None:
    """Set the process's outbound trust at start-up (raises :class:`CaBundleError`)."""
    global _configured
    _configured = context_for(ca_bundle) if ca_bundle is not None else None


def context_for(ca_bundle: Path | None) -> ssl.SSLContext:
    """The context for ``ca_bundle`` (public roots plus it), built once per path."""
    key = str(ca_bundle.resolve()) if ca_bundle is not None else None
    context = _by_bundle.get(key)
    if context is None:
        context = _by_bundle[key] = build_context(ca_bundle)
    return context


def warn_ignored_environment(ca_bundle: Path | None) -> list[str]:
    """Warn (once, at start-up) about CA variables set for other tools that the vault does
    not read; returns their names."""
    if ca_bundle is not None:
        return []
    ignored = [name for name in IGNORED_CA_VARIABLES if os.environ.get(name)]
    if ignored:
        log.warning(
            "%s set but not read by the vault; set GRANTVAULT_CA_BUNDLE to trust a private CA",
            " and ".join(ignored),
        )
    return ignored


def tls_context() -> ssl.SSLContext:
    """The context every outbound client passes as ``verify=`` (public roots if unconfigured)."""
    global _configured
    if _configured is None:
        _configured = build_context(None)
    return _configured


def describe_failure(exc: BaseException) -> str:
    """What went wrong with an outbound call, in words an operator can act on.

    Never an exception class name or a driver message: these strings reach API answers,
    ``idp show`` and audit rows. A certificate the vault does not trust is named as such,
    because the fix (``GRANTVAULT_CA_BUNDLE``) is not guessable from "connection failed".
    """
    cause: BaseException | None = exc
    seen = 0
    while cause is not None and seen < 10:
        if isinstance(cause, ssl.SSLCertVerificationError):
            return (
                "its TLS certificate is not trusted (for a private CA, set GRANTVAULT_CA_BUNDLE "
                "to a PEM file of that CA)"
            )
        if isinstance(cause, ssl.SSLError):
            return "the TLS handshake failed"
        cause = cause.__cause__ or cause.__context__
        seen += 1
    if isinstance(exc, httpx.ConnectError):
        return "the connection failed (unknown host, or nothing listening)"
    if isinstance(exc, httpx.TimeoutException):
        return "it did not answer in time"
    if isinstance(exc, httpx.RemoteProtocolError | httpx.ReadError):
        return "the connection broke before a complete answer"
    return "the request could not be completed"
