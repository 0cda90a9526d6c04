"""Where a credential may be injected: the one rule of the ``/sdk/token`` answer (§2.7).

The vault checks a managed secret's injection settings with these functions when the secret
is stored (so it never answers what a client refuses), and the SDK checks every token answer
with the same functions before it places a credential anywhere (so a faulty or hostile vault
cannot steer it into a header that changes the request's meaning).

Each ``check_*`` function returns its argument or raises ``ValueError`` with a message fit
for an operator.
"""

from __future__ import annotations

import re
from typing import Final

__all__ = [
    "FORBIDDEN_HEADERS",
    "FORBIDDEN_HEADER_PREFIX",
    "HEADER_NAME",
    "MAX_EXTRA_INJECTIONS",
    "MAX_FORMAT_LENGTH",
    "MAX_HEADER_NAME_LENGTH",
    "MAX_PARAM_NAME_LENGTH",
    "PARAM_NAME",
    "SIGV4_FORMAT",
    "TOKEN_PLACEHOLDER",
    "VALUE_SOURCE",
    "check_format",
    "check_header_name",
    "check_param_name",
]

#: A header a credential may go into: a letter, then letters, digits and ``-``.
HEADER_NAME: Final = re.compile(r"^[A-Za-z][A-Za-z0-9-]*$")
MAX_HEADER_NAME_LENGTH: Final = 60
#: A query parameter a credential may go into: a letter, then letters, digits, ``_`` and ``-``.
PARAM_NAME: Final = re.compile(r"^[A-Za-z][A-Za-z0-9_-]*$")
MAX_PARAM_NAME_LENGTH: Final = 100
#: Headers that never carry a credential: framing, hop-by-hop, cookies, proxies, security
#: policy. A vault answer naming one is refused whole by the client.
FORBIDDEN_HEADERS: Final = frozenset(
    {
        "host", "content-length", "content-type", "transfer-encoding", "connection",
        "keep-alive", "upgrade", "proxy-authenticate", "proxy-authorization", "te", "trailer",
        "cookie", "set-cookie", "x-forwarded-for", "x-forwarded-host", "x-forwarded-proto",
        "x-real-ip", "x-http-method-override", "x-method-override", "www-authenticate",
        "strict-transport-security", "content-security-policy",
    }
)  # fmt: skip
#: Every ``X-Forwarded-*`` header is refused too (proxies trust them).
FORBIDDEN_HEADER_PREFIX: Final = "x-forwarded-"

#: ``injection_format`` contains this once; the client replaces it by the credential.
TOKEN_PLACEHOLDER: Final = "{token}"
#: An ``injection_format`` starting with this asks the client to sign with AWS SigV4 instead.
SIGV4_FORMAT: Final = "AWS4-HMAC-SHA256"
MAX_FORMAT_LENGTH: Final = 200
#: At most this many ``additional_injections`` (and ``additional_credentials``) per answer.
MAX_EXTRA_INJECTIONS: Final = 10
#: ``value_source`` of an additional injection: the token or a named additional credential.
VALUE_SOURCE: Final = re.compile(r"^(token|additional_credentials\.[a-z][a-z0-9_]*)$")

_LINE_BREAKS = ("\r", "\n", "\x00")


def check_header_name(name: str) -> str:
    """Refuse a header name that is malformed, too long or may not carry a credential."""
    if len(name) > MAX_HEADER_NAME_LENGTH or not HEADER_NAME.fullmatch(name):
        raise ValueError(
            f"{name!r} is not a valid header name (letters, digits, '-'; "
            f"max {MAX_HEADER_NAME_LENGTH})"
        )
    lowered = name.lower()
    if lowered in FORBIDDEN_HEADERS or lowered.startswith(FORBIDDEN_HEADER_PREFIX):
        raise ValueError(f"header {name!r} cannot carry a credential")
    return name


def check_param_name(name: str) -> str:
    """Refuse a query parameter name that is malformed or too long."""
    if len(name) > MAX_PARAM_NAME_LENGTH or not PARAM_NAME.fullmatch(name):
        raise ValueError(f"{name!r} is not a valid query parameter name")
    return name


def check_format(fmt: str, *, allow_sigv4: bool = True) -> str:
    """Refuse an ``injection_format`` without ``{token}``, too long, or with a line break.

    A format starting with :data:`SIGV4_FORMAT` needs no placeholder when ``allow_sigv4``
    (the client signs the request instead of filling in the format).
    """
    sigv4 = allow_sigv4 and fmt.startswith(SIGV4_FORMAT)
    if (not sigv4 and TOKEN_PLACEHOLDER not in fmt) or len(fmt) > MAX_FORMAT_LENGTH:
        raise ValueError(
            f"format must contain {TOKEN_PLACEHOLDER} and be at most {MAX_FORMAT_LENGTH} characters"
        )
    if any(c in fmt for c in _LINE_BREAKS):
        raise ValueError("format must not contain control characters")
    return fmt
