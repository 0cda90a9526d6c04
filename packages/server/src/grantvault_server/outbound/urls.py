"""The one rule for where the vault may call out: https, or plain http to an allowed host.

Every outbound URL (provider endpoints, OIDC discovery and its endpoints, the JWKS, the
sign-in code exchange) passes :func:`check_url` before it is called, and every place that
stores or releases toward a URL (provider specs, endpoint overrides, a credential's
destination) asks :func:`plain_http_allowed` for its plain-http decision, so a host means the
same thing everywhere.

One host normalisation (:func:`normalise_host`), the one the HTTP client applies before it
connects: lower case, one trailing dot dropped (``localhost.`` is ``localhost``), an IPv6
literal without its brackets and in its compressed form (``[0:0::1]`` is ``::1``), and a
non-ASCII name in its IDNA (``xn--``) form, computed with the same ``idna`` package httpx
uses, so the name compared is the name connected to. The entries of
``GRANTVAULT_ALLOW_HTTP_HOSTS`` are normalised the same way; an entry with a port
(``127.0.0.1:8080``, ``[::1]:8080``) admits only that port, one without admits any port.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import SplitResult, urlsplit

import idna

#: Longest URL the vault calls out to.
MAX_URL_LENGTH = 2048
#: Characters refused anywhere in an outbound URL: parsers disagree about them.
_UNSAFE = frozenset("\\\r\n\t\x00 ")
#: Said wherever a plain-http URL is refused: the setting that allows it, and that the CLI
#: reads it too (it checks URLs when it stores them).
HTTP_HINT = (
    "plain http only for hosts listed in GRANTVAULT_ALLOW_HTTP_HOSTS, for local testing; "
    "the CLI reads that setting too"
)


class UrlRefused(ValueError):
    """A URL the vault will not call; the message names the URL's purpose and the reason."""


def normalise_host(host: str) -> str | None:
    """``host`` as the HTTP client connects to it, or ``None`` if it is not a host name.

    Accepts what :func:`urllib.parse.urlsplit` reports as ``hostname`` and what an operator
    writes in ``GRANTVAULT_ALLOW_HTTP_HOSTS`` (IPv6 with or without brackets).
    """
    name = host.strip()
    if name.startswith("[") and name.endswith("]"):
        name = name[1:-1]
    if ":" in name:
        try:
            return ipaddress.IPv6Address(name).compressed
        except ValueError:
            return None
    name = name.lower()
    if name.endswith("."):
        name = name[:-1]
    if not name or name.endswith(".") or any(c in name for c in "/@?#%[] \t\r\n\x00\\"):
        return None
    if not name.isascii():
        try:
            name = idna.encode(name).decode("ascii")
        except idna.IDNAError:
            return None
    return name


@dataclass(frozen=True)
class HttpAllowance:
    """The hosts (and optionally ports) that may be called over plain http."""

    #: Normalised host -> the ports admitted (``None``: any port).
    hosts: frozenset[tuple[str, int | None]] = frozenset()
    #: Any host at all: only for re-reading stored specs (checked when they were stored).
    any_host: bool = False

    @classmethod
    def of(cls, entries: HttpAllowance | Iterable[str] | None) -> HttpAllowance:
        """The allowance for ``entries`` (``GRANTVAULT_ALLOW_HTTP_HOSTS``); entries that are
        not a host (or host and port) admit nothing."""
        if isinstance(entries, HttpAllowance):
            return entries
        parsed: set[tuple[str, int | None]] = set()
        for entry in entries or ():
            found = _parse_entry(entry)
            if found is not None:
                parsed.add(found)
        return cls(frozenset(parsed))

    def admits(self, host: str, port: int | None) -> bool:
        """Whether plain http to ``host`` (any spelling) on ``port`` (``None``: 80) is allowed."""
        if self.any_host:
            return True
        name = normalise_host(host)
        if name is None:
            return False
        effective = 80 if port is None else port
        return (name, None) in self.hosts or (name, effective) in self.hosts


#: Stored provider specs are re-read with any http host allowed; every call re-checks.
ANY_HOST = HttpAllowance(any_host=True)


def _parse_entry(entry: str) -> tuple[str, int | None] | None:
    text = entry.strip()
    port: int | None = None
    if text.startswith("["):
        inner, sep, rest = text[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            return None
        text, port_text = inner, rest[1:]
    elif text.count(":") == 1:
        text, _, port_text = text.partition(":")
    else:
        port_text = ""
    if port_text:
        if not port_text.isdigit() or not 0 < int(port_text) < 65536:
            return None
        port = int(port_text)
    host = normalise_host(text)
    return None if host is None else (host, port)


def plain_http_allowed(
    host: str | None, port: int | None, allow_http_hosts: HttpAllowance | Iterable[str]
) -> bool:
    """The plain-http decision for ``host``/``port``; the one rule every check asks."""
    return host is not None and HttpAllowance.of(allow_http_hosts).admits(host, port)


def scheme_allowed(parts: SplitResult, allow_http_hosts: HttpAllowance | Iterable[str]) -> bool:
    """https with a host, or http to an allowed host (``parts`` from ``urlsplit``)."""
    scheme = parts.scheme.lower()
    if not parts.hostname:
        return False
    if scheme == "https":
        return True
    try:
        port = parts.port
    except ValueError:  # a malformed port: not a URL anything may be sent to
        return False
    return scheme == "http" and plain_http_allowed(parts.hostname, port, allow_http_hosts)


def check_url(url: object, allow_http_hosts: HttpAllowance | Iterable[str], what: str) -> str:
    """Return ``url`` if the vault may call it; raise :class:`UrlRefused` otherwise.

    An absolute URL of at most 2048 ASCII characters without whitespace or backslashes, with
    a host, a valid port, no user information and no fragment; https, or plain http to a host
    the operator allows for local testing (``GRANTVAULT_ALLOW_HTTP_HOSTS``).
    """
    if not isinstance(url, str) or not url or len(url) > MAX_URL_LENGTH:
        raise UrlRefused(f"The {what} must be a URL of at most {MAX_URL_LENGTH} characters.")
    if any(c in _UNSAFE for c in url) or not url.isascii():
        raise UrlRefused(f"The {what} contains characters that are not allowed in a URL.")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises on a malformed port
    except ValueError:
        raise UrlRefused(f"The {what} cannot be parsed as a URL.") from None
    if not parts.hostname or "@" in parts.netloc:
        raise UrlRefused(f"The {what} must name a host and carry no user information.")
    if parts.fragment:
        raise UrlRefused(f"The {what} must not have a #fragment.")
    if not scheme_allowed(parts, allow_http_hosts):
        raise UrlRefused(f"The {what} ({parts.hostname}) must use https ({HTTP_HINT}).")
    return url
