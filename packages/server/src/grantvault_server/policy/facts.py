"""The facts one call is judged on, gathered by the caller before anything is decrypted.

Facts are plain values so the evaluator stays pure: the retrieval path, ``policies test`` in
the CLI and the tests build the same object. ``None`` means "unknown for this call" (no user
token, no caller address), never "empty": a rule that needs an unknown fact fails closed.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

GrantKind = Literal["managed_secret", "oauth"]
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class MissingFact(Exception):
    """A rule needs a fact the call did not provide; the evaluator turns this into a denial."""

    def __init__(self, fact: str) -> None:
        self.fact = fact
        super().__init__(fact)


@dataclass(frozen=True, slots=True)
class Facts:
    """Everything a policy may look at for one call.

    ``credential`` is the managed-secret slug for ``kind="managed_secret"`` and the OAuth
    provider id for ``kind="oauth"``. ``end_user_id`` and ``groups`` come only from a verified
    user JWT. ``caller_ip`` is the socket peer or the entry a trusted proxy added, never a
    header an untrusted client sent. ``at`` must be timezone-aware.
    """

    app_id: str
    grant_id: str
    kind: GrantKind
    credential: str
    principal_type: str
    principal_id: str | None
    method: str
    url: str
    at: datetime
    end_user_id: str | None = None
    groups: frozenset[str] | None = None
    caller_ip: IPAddress | None = None
    #: What rules derive from the facts (the normalised path, the local time in a zone),
    #: worked out once per call however many policies ask: with fifty policies the path
    #: would otherwise be parsed fifty times.
    memo: dict[Any, Any] = field(default_factory=dict, compare=False, repr=False)
