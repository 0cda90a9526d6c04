"""Claim mapping: what a verified token's claims say about the end user (pure, no I/O).

* :func:`map_claims` applies an IdP's claim mappings (user id, email, name, groups) and
  refuses tokens that name no end user (:func:`machine_token`) or carry unstorable values;
* :func:`effective_groups` drops the groups the IdP removed the user from after the token
  was issued;
* :class:`Identity` is the verified end user the rest of the vault sees.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from grantvault_server.identity.state import IdpConfig

MAX_GROUPS = 1000
MAX_GROUP_ID = 255


@dataclass(frozen=True)
class Identity:
    """A verified end user of an app."""

    #: The vault's id of the app user (a UUID).
    user_id: str
    #: The IdP's id of the user (the mapped user id claim, ``sub`` by default); what user
    #: grants name as ``principal_id``.
    subject: str
    idp_id: str
    #: External group ids from the token (minus those the IdP has since removed); what
    #: group grants name as ``principal_id``.
    groups: frozenset[str]
    email: str | None
    display_name: str | None


@dataclass(frozen=True)
class MappedClaims:
    """A verified token's claims through the app's claim mappings."""

    subject: str
    email: str | None
    display_name: str | None
    groups: frozenset[str]
    issued_at: float | None


class ClaimsRejected(Exception):
    """The verified token lacks a usable user id (or carries unusable groups)."""


#: Characters no user id, group id, email or name has, and that storage cannot hold alike on
#: both backends: C0/C1 controls (NUL among them: PostgreSQL refuses it, SQLite stores it) and
#: lone UTF-16 surrogates (which JSON's ``\ud800`` escapes produce and no UTF-8 encoder takes).
_UNSTORABLE = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")


def storable(value: str) -> bool:
    """Whether ``value`` may become a user id, group id or profile field."""
    return _UNSTORABLE.search(value) is None


def _text(value: object, limit: int, what: str) -> str | None:
    if not isinstance(value, str):
        return None
    if not storable(value):
        # Refused, not cleaned: a signed claim the vault would store differently from what
        # the IdP said is a claim the vault misreports.
        raise ClaimsRejected(f"the {what} claim holds control characters or invalid Unicode")
    value = value.strip()
    return value[:limit] if value else None


def parse_groups(value: object) -> frozenset[str]:
    """A groups claim as a list of strings, or one string separated by spaces or commas."""
    if value is None:
        return frozenset()
    if isinstance(value, str):
        items: list[object] = [g for g in value.replace(",", " ").split() if g]
    elif isinstance(value, list):
        items = value
    else:
        raise ClaimsRejected("the groups claim is neither a list nor a string")
    if len(items) > MAX_GROUPS:
        raise ClaimsRejected(f"the groups claim lists more than {MAX_GROUPS} groups")
    groups = set()
    for item in items:
        if not isinstance(item, str) or not 1 <= len(item) <= MAX_GROUP_ID or not storable(item):
            raise ClaimsRejected(
                f"the groups claim holds a value that is not a 1-{MAX_GROUP_ID} character string "
                "without control characters"
            )
        groups.add(item)
    return frozenset(groups)


def _first(value: object) -> object:
    return value[0] if isinstance(value, list) and len(value) == 1 else value


def machine_token(claims: dict[str, Any]) -> str | None:
    """Why ``claims`` belong to a client acting for itself rather than to an end user.

    The vault accepts as a user token only one that names a person: an ID token, or an
    access token a client obtained *for a user*. A token a client obtained for itself (the
    client-credentials grant) is refused, because its subject is the client: accepting it
    would create an "app user" for the machine and hand it that user's grants. The markers
    (documented in docs/identity.md, "Which tokens count as end users"):

    * ``sub`` equal to ``client_id`` (RFC 9068 section 2.2), ``cid`` (Okta) or ``azp``;
    * ``gty`` = ``client-credentials`` (Auth0, whose machine subjects end in ``@clients``);
    * ``idtyp`` = ``app`` (Microsoft Entra ID's app-only tokens, optional claim);
    * ``preferred_username`` starting ``service-account-`` (Keycloak's service accounts).
    """
    subject = claims.get("sub")
    for name in ("client_id", "cid", "azp"):
        client = claims.get(name)
        if isinstance(client, str) and client and client == subject:
            return f"its subject is the client itself ({name}); it names no end user"
    if _first(claims.get("gty")) == "client-credentials":
        return "it was issued by the client-credentials grant (gty); it names no end user"
    if claims.get("idtyp") == "app":
        return "it is an app-only token (idtyp); it names no end user"
    username = claims.get("preferred_username")
    if isinstance(username, str) and username.startswith("service-account-"):
        return "it belongs to a service account; it names no end user"
    return None


def map_claims(config: IdpConfig, claims: dict[str, Any]) -> MappedClaims:
    machine = machine_token(claims)
    if machine is not None:
        raise ClaimsRejected(machine)
    subject = claims.get(config.user_id_claim)
    if not isinstance(subject, str) or not 1 <= len(subject) <= 255:
        raise ClaimsRejected(
            f"the token has no usable {config.user_id_claim!r} claim (the user id: a string of "
            "1-255 characters)"
        )
    if not storable(subject):
        raise ClaimsRejected(
            f"the {config.user_id_claim!r} claim (the user id) holds control characters or "
            "invalid Unicode"
        )
    email = _text(claims.get(config.email_claim), 320, "email")
    iat = claims.get("iat")
    return MappedClaims(
        subject=subject,
        email=email if email and "@" in email else None,
        display_name=_text(claims.get(config.name_claim), 255, "name"),
        groups=parse_groups(claims.get(config.groups_claim))
        if config.groups_claim
        else frozenset(),
        issued_at=float(iat) if isinstance(iat, int | float) else None,
    )


def effective_groups(
    token_groups: frozenset[str], removals: dict[str, float], issued_at: float | None
) -> frozenset[str]:
    """Token groups, minus those removed by the IdP after the token was issued."""
    if not removals:
        return token_groups
    return frozenset(
        g
        for g in token_groups
        if g not in removals or (issued_at is not None and issued_at > removals[g])
    )
