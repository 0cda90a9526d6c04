"""Path patterns and the one normalisation of a destination path they are matched against.

A ``paths`` rule is a security boundary, so the question is never "does the string look like
the pattern" but "could the provider's server resolve this request to something outside the
pattern". Hence:

* The destination path is normalised the way RFC 3986 allows without changing its meaning:
  percent-encodings of *unreserved* characters are decoded (``%2E`` is ``.``, ``%61`` is ``a``),
  every other percent-encoding is kept with upper-case hex, then dot segments are removed
  (§5.2.4). ``/v1/charges/../admin`` and ``/v1/charges/%2e%2E/admin`` are ``/v1/admin``.
  The query and fragment are not part of the path.
* A wildcard never matches a segment a server might split or resolve further: one that holds an
  encoded slash or backslash (``%2F``, ``%5C``), a raw backslash, an encoded ``%`` (``%25``,
  double decoding), a NUL, a malformed percent-encoding, or a dot segment hidden behind path
  parameters (``..;``). Such a segment can still match a literal pattern segment that spells it
  exactly, which an operator only writes on purpose.
* Empty segments (``//``, a trailing ``/``) never match a wildcard: ``/v1/charges/`` matches
  neither ``/v1/charges`` nor ``/v1/charges/*``. Denying is the safe surprise.

Pattern syntax: an absolute path; ``*`` inside a segment matches any characters of that one
segment (``/v1/charges/*`` matches ``/v1/charges/ch_1`` but not ``/v1/charges/ch_1/refunds``;
``/v1/files/*.json`` works); ``**`` as the whole last segment matches one or more segments.
No query, fragment, dot segments or ``**`` elsewhere.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import urlsplit

_UNRESERVED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
_PERCENT = re.compile(r"%([0-9A-Fa-f]{2})")
_UNSAFE = ("%2F", "%5C", "%25", "%00", "\\")
# RFC 3986 pchar plus "/" and "%"; anything else has no place in a pattern.
_PATTERN_CHARS = re.compile(r"[A-Za-z0-9\-._~!$&'()*+,;=:@/%]*")
_MAX_PATTERN = 2048


class PathPatternError(ValueError):
    """A ``paths`` entry that is not a valid pattern."""


def _decode_unreserved(path: str) -> str:
    def one(match: re.Match[str]) -> str:
        char = chr(int(match.group(1), 16))
        return char if char in _UNRESERVED else "%" + match.group(1).upper()

    return _PERCENT.sub(one, path)


def remove_dot_segments(path: str) -> str:
    """RFC 3986 §5.2.4, literally: the resolution every conforming server applies."""
    output: list[str] = []
    while path:
        if path.startswith("../"):
            path = path[3:]
        elif path.startswith("./"):
            path = path[2:]
        elif path.startswith("/./"):
            path = "/" + path[3:]
        elif path == "/.":
            path = "/"
        elif path.startswith("/../"):
            path = "/" + path[4:]
            if output:
                output.pop()
        elif path == "/..":
            path = "/"
            if output:
                output.pop()
        elif path in (".", ".."):
            path = ""
        else:
            start = 1 if path.startswith("/") else 0
            end = path.find("/", start)
            end = len(path) if end == -1 else end
            output.append(path[:end])
            path = path[end:]
    return "".join(output)


def _wildcard_safe(segment: str) -> bool:
    if not segment or any(mark in segment.upper() for mark in _UNSAFE):
        return False
    if "%" in _PERCENT.sub("", segment):
        return False  # a "%" not followed by two hex digits
    return segment.split(";", 1)[0] not in (".", "..")


@dataclass(frozen=True, slots=True)
class NormalisedPath:
    """A destination path as segments, each flagged for whether a wildcard may match it."""

    text: str
    segments: tuple[str, ...]
    safe: tuple[bool, ...]


def normalise_path(url: str) -> NormalisedPath:
    """The destination URL's path, normalised as the module docstring says."""
    path = urlsplit(url).path or "/"
    if not path.startswith("/"):
        path = "/" + path
    path = remove_dot_segments(_decode_unreserved(path)) or "/"
    segments = tuple(path[1:].split("/"))
    return NormalisedPath(path, segments, tuple(_wildcard_safe(s) for s in segments))


@dataclass(frozen=True, slots=True)
class PathPattern:
    """A compiled pattern: per segment either a literal or a full-match regex; maybe ``**``."""

    text: str
    parts: tuple[str | re.Pattern[str], ...]
    rest: bool  # the last pattern segment was "**"

    def matches(self, path: NormalisedPath) -> bool:
        count = len(self.parts)
        if self.rest:
            if len(path.segments) <= count or not all(path.safe[count:]):
                return False
        elif len(path.segments) != count:
            return False
        for part, segment, safe in zip(self.parts, path.segments, path.safe, strict=False):
            if isinstance(part, str):
                if part != segment:
                    return False
            elif not safe or not part.fullmatch(segment):
                return False
        return True


def compile_pattern(pattern: str) -> PathPattern:
    """Compile one ``paths`` entry; raise :class:`PathPatternError` with an actionable reason."""
    if len(pattern) > _MAX_PATTERN:
        raise PathPatternError(f"path pattern longer than {_MAX_PATTERN} characters")
    if not pattern.startswith("/"):
        raise PathPatternError(f"{pattern!r} must start with '/'")
    if not _PATTERN_CHARS.fullmatch(pattern):
        raise PathPatternError(
            f"{pattern!r} holds a character a URL path cannot (no query, fragment or spaces)"
        )
    if "%" in _PERCENT.sub("", pattern):
        raise PathPatternError(f"{pattern!r} has a '%' that is not a percent-encoding")
    segments = _decode_unreserved(pattern)[1:].split("/")
    parts: list[str | re.Pattern[str]] = []
    rest = False
    for index, segment in enumerate(segments):
        if segment.split(";", 1)[0] in (".", ".."):
            raise PathPatternError(f"{pattern!r} has a dot segment; write the resolved path")
        if segment == "**":
            if index != len(segments) - 1:
                raise PathPatternError(f"{pattern!r}: '**' is allowed only as the last segment")
            rest = True
        elif "**" in segment:
            raise PathPatternError(f"{pattern!r}: '**' must be a whole segment")
        elif "*" in segment:
            body = ".*".join(re.escape(piece) for piece in segment.split("*"))
            parts.append(re.compile(body if segment != "*" else ".+"))
        else:
            parts.append(segment)
    return PathPattern(pattern, tuple(parts), rest)
