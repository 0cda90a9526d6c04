"""The policy document: the contract an operator writes, validated before anything stores it.

The spelling of the keys is the public contract of issue 11 (``description``, ``applies_to``,
``rules``), so the model refuses what it does not know (``extra="forbid"``) and coerces nothing
(``strict``: ``true`` is not ``1``, ``17:00`` unquoted in YAML is a number, not a time). A typo
that silently weakened a policy would be worse than a refused write, and the errors name the
offending key (``rules.time_windows.timezone: unknown IANA time zone 'Europe/Berln'``) so the
operator can fix the file without reading this code.

Semantics fixed here (docs/decisions/0010-policy-documents.md explains them):

* ``applies_to``: omitted = every grant of the app. ``secrets`` and ``providers`` together
  select the credential (a grant is a managed secret *or* an OAuth provider, so AND between
  them would match nothing, and the issue's own example lists both); that selector, ``principals``
  and ``groups`` AND together; the values of one key OR together. Empty lists are refused: an
  empty selector would mean "nothing" to one reader and "everything" to another.
* ``time_windows``: days ``mon``..``sun``; ``start`` inclusive, ``end`` exclusive, ``"HH:MM"``
  local wall time in ``timezone``; ``end`` may be ``"24:00"``; ``start > end`` is an overnight
  window that belongs to the day it starts on; ``start == end`` is refused (empty or whole day?).
* ``ip_allow``: networks with host bits set are refused (``10.0.0.1/8`` is almost always a typo
  for a host or a network, and guessing which would widen or narrow the rule silently); ``/0``
  is refused (it allows everything: omit the rule instead).
* ``methods``: any case in the document, compared upper-case (the outbound client sends them
  upper-case).
* ``paths``: see :mod:`grantvault_server.policy.paths` (``*`` = exactly one segment or part of
  one, ``**`` as the last segment = one or more segments).
* ``quota`` windows are calendar windows in UTC; ``rate_limit`` is a fixed UTC minute.
"""

from __future__ import annotations

import ipaddress
import re
import zoneinfo
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from grantvault_server.policy.paths import PathPatternError, compile_pattern

Day = Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
DAYS: tuple[Day, ...] = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
QuotaWindow = Literal["minute", "hour", "day", "month"]
Per = Literal["grant", "user", "app"]
PrincipalType = Literal["user", "group", "system", "agent"]

_TIME = re.compile(r"(?:[01][0-9]|2[0-3]):[0-5][0-9]")
_METHOD = re.compile(r"[A-Za-z]{1,20}")
_NAME = re.compile(r"[a-z0-9](?:[a-z0-9._-]{0,62}[a-z0-9])?")
_MAX_ITEMS = 256

# Hard bounds keep one document from turning evaluation into a denial of service.
Name = Annotated[str, Field(min_length=1, max_length=200)]
ShortList = Annotated[list[Name], Field(min_length=1, max_length=_MAX_ITEMS)]


class PolicyDocumentError(ValueError):
    """A document that cannot be stored, with one ``(key path, message)`` per problem."""

    def __init__(self, errors: list[tuple[str, str]]) -> None:
        self.errors = errors
        super().__init__("; ".join(f"{loc}: {msg}" for loc, msg in errors))


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class AppliesTo(_Strict):
    """Which grants (and calls) a policy applies to; see the module docstring for AND/OR."""

    secrets: ShortList | None = None
    providers: ShortList | None = None
    principals: Annotated[list[PrincipalType], Field(min_length=1, max_length=4)] | None = None
    groups: ShortList | None = None


def _minutes(value: str) -> int:
    hours, minutes = value.split(":")
    return int(hours) * 60 + int(minutes)


def _time_before(value: Any) -> Any:
    if isinstance(value, int) and not isinstance(value, bool):
        # YAML 1.1 reads an unquoted 17:00 as the sexagesimal integer 1020.
        raise ValueError(
            'write times as quoted strings "HH:MM" (unquoted YAML reads 17:00 as a number)'
        )
    return value


class Window(_Strict):
    """One weekly window; ``start`` inclusive, ``end`` exclusive, overnight when start > end."""

    days: Annotated[list[Day], Field(min_length=1, max_length=7)]
    start: str
    end: str

    @field_validator("start", "end", mode="before")
    @classmethod
    def _not_a_number(cls, value: Any) -> Any:
        return _time_before(value)

    @field_validator("start")
    @classmethod
    def _start(cls, value: str) -> str:
        if not _TIME.fullmatch(value):
            raise ValueError(f"{value!r} is not a time HH:MM between 00:00 and 23:59")
        return value

    @field_validator("end")
    @classmethod
    def _end(cls, value: str) -> str:
        if value != "24:00" and not _TIME.fullmatch(value):
            raise ValueError(f"{value!r} is not a time HH:MM between 00:00 and 24:00")
        return value

    @model_validator(mode="after")
    def _not_empty(self) -> Window:
        if _minutes(self.start) == _minutes(self.end):
            raise ValueError(
                f"start and end are both {self.start}: write 00:00-24:00 for a whole day"
            )
        return self

    @property
    def start_minute(self) -> int:
        return _minutes(self.start)

    @property
    def end_minute(self) -> int:
        return _minutes(self.end)


class TimeWindows(_Strict):
    """Calls are allowed only inside one of ``windows``, in local wall time of ``timezone``."""

    timezone: str
    windows: Annotated[list[Window], Field(min_length=1, max_length=64)]

    @field_validator("timezone")
    @classmethod
    def _zone(cls, value: str) -> str:
        try:
            zoneinfo.ZoneInfo(value)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError, OSError):
            raise ValueError(f"unknown IANA time zone {value!r}") from None
        return value


class Quota(_Strict):
    """At most ``limit`` calls per calendar ``window`` (UTC) per ``per`` subject."""

    limit: Annotated[int, Field(ge=1, le=1_000_000_000)]
    window: QuotaWindow
    per: Per


class RateLimit(_Strict):
    """At most ``per_minute`` calls per UTC minute per ``per`` subject."""

    per_minute: Annotated[int, Field(ge=1, le=1_000_000)]
    per: Per


def parse_network(value: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    """One ``ip_allow`` entry; host bits set and ``/0`` are refused (see module docstring)."""
    try:
        network = ipaddress.ip_network(value, strict=True)
    except ValueError as exc:
        if "has host bits set" in str(exc):
            loose = ipaddress.ip_network(value, strict=False)
            raise ValueError(
                f"{value!r} has host bits set: write {str(loose)!r} for the network "
                f"or {value.split('/')[0]!r} for one host"
            ) from None
        raise ValueError(f"{value!r} is not an IPv4 or IPv6 address or CIDR network") from None
    if network.prefixlen == 0:
        raise ValueError(f"{value!r} allows every address: omit ip_allow instead")
    return network


def _check_network(value: str) -> str:
    parse_network(value)
    return value


def _check_method(value: str) -> str:
    if not _METHOD.fullmatch(value):
        raise ValueError(f"{value!r} is not an HTTP method")
    return value.upper()


def _check_path(value: str) -> str:
    try:
        compile_pattern(value)
    except PathPatternError as exc:
        raise ValueError(str(exc)) from None
    return value


# Checked per item, so an error names the entry: rules.ip_allow[1].
NetworkText = Annotated[str, AfterValidator(_check_network)]
Method = Annotated[str, AfterValidator(_check_method)]
PathText = Annotated[str, AfterValidator(_check_path)]


class Rules(_Strict):
    """Every rule present must hold for a call to be allowed."""

    time_windows: TimeWindows | None = None
    ip_allow: Annotated[list[NetworkText], Field(min_length=1, max_length=_MAX_ITEMS)] | None = None
    groups_any: ShortList | None = None
    methods: Annotated[list[Method], Field(min_length=1, max_length=16)] | None = None
    paths: Annotated[list[PathText], Field(min_length=1, max_length=_MAX_ITEMS)] | None = None
    quota: Quota | None = None
    rate_limit: RateLimit | None = None

    @model_validator(mode="after")
    def _some_rule(self) -> Rules:
        if not any(getattr(self, name) is not None for name in type(self).model_fields):
            raise ValueError("a policy needs at least one rule")
        return self


class PolicyDocument(_Strict):
    """A whole policy document as an operator writes it (YAML or JSON)."""

    description: Annotated[str, Field(max_length=1000)] | None = None
    applies_to: AppliesTo | None = None
    rules: Rules


def validate_name(name: str) -> str:
    """A policy name: lower-case letters, digits, ``.``, ``_``, ``-``; 1 to 64 characters."""
    if not _NAME.fullmatch(name):
        raise PolicyDocumentError(
            [
                (
                    "name",
                    f"{name!r} must be 1-64 of a-z, 0-9, '.', '_', '-', not starting or "
                    "ending with a punctuation mark",
                )
            ]
        )
    return name


def _location(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part.startswith(("function-", "literal[")):
            continue  # pydantic's internal step names say nothing to an operator
        else:
            out += f".{part}" if out else part
    return out or "(document)"


def _message(error: dict[str, Any]) -> str:
    kind = error["type"]
    if kind == "extra_forbidden":
        return "unknown key"
    if kind == "missing":
        return "required"
    message = str(error["msg"])
    return message.removeprefix("Value error, ")


def validate_document(raw: object) -> PolicyDocument:
    """Validate a parsed document (``dict`` from YAML/JSON); raise :class:`PolicyDocumentError`."""
    if not isinstance(raw, dict):
        raise PolicyDocumentError([("(document)", "a policy document is a mapping of keys")])
    try:
        return PolicyDocument.model_validate(raw)
    except ValidationError as exc:
        raise PolicyDocumentError(
            [(_location(tuple(e["loc"])), _message(dict(e))) for e in exc.errors()]
        ) from None
