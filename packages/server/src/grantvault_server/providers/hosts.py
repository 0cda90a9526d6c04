"""Destination checks: a credential is released only for a URL on its allowed hosts.

One parser (``urllib.parse.urlsplit``) decides, after normalisation (lower case, no
trailing dot, punycode only). URLs with user information, backslashes or control characters
are refused outright, because parsers disagree about them (``https://api.example.com@evil.test/``).
Plain http is the outbound rule's decision (``outbound.urls.plain_http_allowed``), the same
one every outbound call and every stored provider URL gets.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any
from urllib.parse import urlsplit

from grantvault.types.errors import ErrorCode
from grantvault_server.errors import VaultError
from grantvault_server.outbound import urls

DEFAULT_PORTS = {"https": 443, "http": 80}


def _blocked(message: str, **extra: Any) -> VaultError:
    return VaultError(ErrorCode.BLOCKED_DESTINATION, message, **extra)


_HOST = re.compile(
    r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)*$"
)


def normalise_host(host: str) -> str:
    """Lower-case and drop one trailing dot; nothing else.

    Internationalised names must arrive in their punycode (``xn--``) form: IDNA mappings
    differ between standards (IDNA 2003 maps "ß" to "ss", the HTTP client does not), and a
    name that the vault and the client map differently would release a credential for a
    host the operator never allowed.
    """
    if not host.isascii():
        raise _blocked(
            "Destination host names must be ASCII; write internationalised names in their "
            "punycode (xn--) form."
        )
    lowered = urls.normalise_host(host)
    if lowered is None or not _HOST.fullmatch(lowered):
        raise _blocked("The destination host is not a valid host name.")
    return lowered


def host_matches(host: str, port: int, scheme: str, rule: str) -> bool:
    rule_host, _, rule_port = rule.partition(":")
    wanted_port = int(rule_port) if rule_port else DEFAULT_PORTS[scheme]
    if port != wanted_port:
        return False
    if rule_host.startswith("*."):
        return host.endswith(rule_host[1:]) and len(host) > len(rule_host) - 1
    return host == rule_host


def check_destination(
    url: str, allowed_hosts: Iterable[str], *, allow_http_hosts: Iterable[str] = ()
) -> str:
    """Return the normalised host of ``url`` or raise ``blocked_destination``."""
    if len(url) > 65_536:
        raise _blocked("The destination URL is longer than 65,536 characters.")
    if any(c in url for c in "\\\r\n\t\x00 ") or any(ord(c) < 0x20 for c in url):
        raise _blocked("The destination URL contains characters that are not allowed.")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise _blocked("The destination URL cannot be parsed.") from None
    scheme = parts.scheme.lower()
    if scheme not in DEFAULT_PORTS:
        raise _blocked("Only https destinations are allowed.")
    if "@" in parts.netloc:
        raise _blocked("Destination URLs must not contain user information.")
    if not parts.hostname:
        raise _blocked("The destination URL has no host.")
    host = normalise_host(parts.hostname)
    if scheme == "http" and not urls.plain_http_allowed(host, port, allow_http_hosts):
        raise _blocked(
            f"Plain http to {host} is not allowed; use https (operators can allow a test host "
            "with GRANTVAULT_ALLOW_HTTP_HOSTS)."
        )
    effective_port = port if port is not None else DEFAULT_PORTS[scheme]
    if not any(host_matches(host, effective_port, scheme, rule) for rule in allowed_hosts):
        raise _blocked(
            f"This credential may not be sent to {host}"
            + (f":{port}" if port is not None else "")
            + "; add the host to the secret's allowed hosts if it is intended.",
            host=host,
        )
    return host
