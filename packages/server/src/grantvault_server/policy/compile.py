"""Compile a validated policy document into an immutable object that is cheap to evaluate.

Validation (``document.py``) and compilation are separate so a stored document is parsed once
per version and every retrieval only runs precompiled checks: a ``ZoneInfo``, parsed networks,
compiled path patterns, upper-cased methods, frozensets for selectors. Nothing here touches
storage or the clock; ``evaluate`` in ``engine.py`` drives these checks.
"""

from __future__ import annotations

import hashlib
import ipaddress
import zoneinfo
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from grantvault_server.policy.document import (
    DAYS,
    PolicyDocument,
    Quota,
    RateLimit,
    parse_network,
    validate_name,
)
from grantvault_server.policy.facts import Facts, MissingFact
from grantvault_server.policy.paths import (
    NormalisedPath,
    PathPattern,
    compile_pattern,
    normalise_path,
)

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
_DAY_LABELS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
# The reasons read like the "allowed Mon\u2013Fri 09:00\u201317:00": an en dash.
_DASH = "\u2013"


@dataclass(frozen=True, slots=True)
class Charge:
    """One counter increment a call needs before it may proceed (see ``engine`` docstring).

    ``key`` identifies the counter: the same policy, rule, subject and window share one count
    on every replica. The policy *name* (not its version) is in the key so that editing a
    policy does not reset its quota.
    """

    app_id: str
    policy: str
    policy_version: int
    rule: str  # "quota" | "rate_limit"
    per: str  # "grant" | "user" | "app"
    subject: str
    limit: int
    window_start: datetime
    window_end: datetime
    #: The counter's stored id: a digest of the key, worked out once (a charge is reused by
    #: every call the remembered decision serves).
    counter: str = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        material = "\x1f".join(
            [self.policy, self.rule, self.per, self.subject, self.window_start.isoformat()]
        )
        object.__setattr__(self, "counter", hashlib.sha256(material.encode()).hexdigest())

    @property
    def key(self) -> tuple[str, str, str, str, str, datetime]:
        return (self.app_id, self.policy, self.rule, self.per, self.subject, self.window_start)


def _fmt_minute(minute: int) -> str:
    return f"{minute // 60:02d}:{minute % 60:02d}"


def _fmt_days(days: frozenset[int]) -> str:
    """Runs of three or more days as a range (Mon, en dash, Fri); others listed."""
    runs: list[str] = []
    ordered = sorted(days)
    start = prev = ordered[0]
    for day in [*ordered[1:], None]:
        if day is not None and day == prev + 1:
            prev = day
            continue
        if prev - start >= 2:
            runs.append(f"{_DAY_LABELS[start]}{_DASH}{_DAY_LABELS[prev]}")
        else:
            runs.extend(_DAY_LABELS[d] for d in range(start, prev + 1))
        if day is not None:
            start = prev = day
    return ", ".join(runs)


@dataclass(frozen=True, slots=True)
class CompiledWindow:
    """A weekly window in seconds of local wall time; overnight when ``start > end``."""

    days: frozenset[int]  # 0 = Monday, as datetime.weekday()
    start: int
    end: int

    def contains(self, weekday: int, second: int) -> bool:
        if self.start < self.end:
            return weekday in self.days and self.start <= second < self.end
        # Overnight: the part after start belongs to its own day, the part before end to
        # the day after a listed day.
        return (weekday in self.days and second >= self.start) or (
            (weekday - 1) % 7 in self.days and second < self.end
        )

    def describe(self) -> str:
        text = f"{_fmt_days(self.days)} {_fmt_minute(self.start // 60)}{_DASH}{_fmt_minute(self.end // 60)}"
        return text + " (next day)" if self.start > self.end else text


@dataclass(frozen=True, slots=True)
class TimeWindowRule:
    zone: zoneinfo.ZoneInfo
    windows: tuple[CompiledWindow, ...]

    def allows(self, facts: Facts) -> bool:
        """Local wall time in the policy's zone, so DST changes never shift a window."""
        weekday, second = _local(facts, self.zone)
        return any(w.contains(weekday, second) for w in self.windows)

    def describe(self) -> str:
        return "; ".join(w.describe() for w in self.windows) + f" {self.zone.key}"


def _local(facts: Facts, zone: zoneinfo.ZoneInfo) -> tuple[int, int]:
    """The call's weekday and second of the day in ``zone``, once per call and zone."""
    key = ("local", zone.key)
    found: tuple[int, int] | None = facts.memo.get(key)
    if found is None:
        at = facts.at
        if at.tzinfo is None or at.utcoffset() is None:
            raise MissingFact("time (a timezone-aware call time)")
        local = at.astimezone(zone)
        found = facts.memo[key] = (
            local.weekday(),
            local.hour * 3600 + local.minute * 60 + local.second,
        )
    return found


def _path(facts: Facts) -> NormalisedPath:
    """The destination's normalised path, once per call."""
    found: NormalisedPath | None = facts.memo.get("path")
    if found is None:
        if not facts.url:
            raise MissingFact("destination URL")
        found = facts.memo["path"] = normalise_path(facts.url)
    return found


def _window_start(at: datetime, window: str) -> tuple[datetime, datetime]:
    """The calendar window (UTC) holding ``at``: ``[start, end)``."""
    utc = at.astimezone(UTC)
    if window == "minute":
        start = utc.replace(second=0, microsecond=0)
        return start, start + timedelta(minutes=1)
    if window == "hour":
        start = utc.replace(minute=0, second=0, microsecond=0)
        return start, start + timedelta(hours=1)
    if window == "day":
        start = utc.replace(hour=0, minute=0, second=0, microsecond=0)
        return start, start + timedelta(days=1)
    start = utc.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    end = (
        start.replace(year=start.year + 1, month=1)
        if start.month == 12
        else start.replace(month=start.month + 1)
    )
    return start, end


def _subject(per: str, facts: Facts) -> str:
    if per == "grant":
        return facts.grant_id
    if per == "app":
        return facts.app_id
    if facts.end_user_id is None:
        raise MissingFact("end user (from a verified user token or a user's grant)")
    return facts.end_user_id


@dataclass(frozen=True, slots=True)
class CounterRule:
    """A ``quota`` or ``rate_limit``: the evaluator returns a :class:`Charge`, never decides."""

    rule: str
    limit: int
    window: str
    per: str

    def charge(self, policy: CompiledPolicy, facts: Facts) -> Charge:
        if facts.at.tzinfo is None or facts.at.utcoffset() is None:
            raise MissingFact("time (a timezone-aware call time)")
        start, end = _window_start(facts.at, self.window)
        return Charge(
            app_id=facts.app_id,
            policy=policy.name,
            policy_version=policy.version,
            rule=self.rule,
            per=self.per,
            subject=_subject(self.per, facts),
            limit=self.limit,
            window_start=start,
            window_end=end,
        )


# A check returns None when the rule holds, else the reason a developer can act on; it raises
# MissingFact when it cannot decide.
Check = Callable[[Facts], str | None]


@dataclass(frozen=True, slots=True)
class CompiledRule:
    """One rule of a policy. ``key`` identifies its condition apart from the policy's name
    (two policies with the same office network share it): once a condition held for a
    call, the evaluator skips its copies in later policies (``Facts.memo``). Only a rule
    that held is remembered; a denial ends the evaluation anyway."""

    name: str
    check: Check
    key: str | None = None


@dataclass(frozen=True, slots=True)
class CompiledPolicy:
    """One policy version, ready to evaluate; built by :func:`compile_policy`."""

    name: str
    version: int
    document: PolicyDocument
    credentials_secrets: frozenset[str] | None
    credentials_providers: frozenset[str] | None
    principals: frozenset[str] | None
    groups: frozenset[str] | None
    rules: tuple[CompiledRule, ...]
    counters: tuple[CounterRule, ...]

    def applies(self, facts: Facts) -> bool:
        """Whether this policy governs the call; see ``document.py`` for the AND/OR rules.

        The groups selector needs the end user's groups; when they are unknown and every
        other selector matches, the policy cannot tell and raises :class:`MissingFact`
        (fail closed: leaving out the user token must not be a way around a policy).
        """
        if self.credentials_secrets is not None or self.credentials_providers is not None:
            chosen = (
                self.credentials_secrets
                if facts.kind == "managed_secret"
                else self.credentials_providers
            )
            if chosen is None or facts.credential not in chosen:
                return False
        if self.principals is not None and facts.principal_type not in self.principals:
            return False
        if self.groups is not None:
            if facts.groups is None:
                raise MissingFact("end user's groups (from a verified user token)")
            return not self.groups.isdisjoint(facts.groups)
        return True


def _time_check(policy_name: str, rule: TimeWindowRule) -> Check:
    def check(facts: Facts) -> str | None:
        if rule.allows(facts):
            return None
        return f"outside {policy_name}: allowed {rule.describe()}"

    return check


def _unmap(
    ip: ipaddress.IPv4Address | ipaddress.IPv6Address,
) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped  # ::ffff:10.0.0.1 is the IPv4 caller 10.0.0.1
    return ip


def _ip_check(policy_name: str, networks: tuple[Network, ...], texts: list[str]) -> Check:
    def check(facts: Facts) -> str | None:
        if facts.caller_ip is None:
            raise MissingFact("caller's IP address")
        ip = _unmap(facts.caller_ip)
        if any(ip.version == net.version and ip in net for net in networks):
            return None
        return f"caller address {ip} is not in {policy_name}'s ip_allow ({', '.join(texts)})"

    return check


def _groups_check(policy_name: str, wanted: frozenset[str]) -> Check:
    def check(facts: Facts) -> str | None:
        if facts.groups is None:
            raise MissingFact("end user's groups (from a verified user token)")
        if not wanted.isdisjoint(facts.groups):
            return None
        return (
            f"the end user is in none of {policy_name}'s groups_any ({', '.join(sorted(wanted))})"
        )

    return check


def _methods_check(policy_name: str, methods: frozenset[str], texts: list[str]) -> Check:
    def check(facts: Facts) -> str | None:
        if not facts.method:
            raise MissingFact("HTTP method")
        if facts.method.upper() in methods:
            return None
        return f"method {facts.method.upper()} is not allowed by {policy_name} (allowed: {', '.join(texts)})"

    return check


def _paths_check(policy_name: str, patterns: tuple[PathPattern, ...]) -> Check:
    def check(facts: Facts) -> str | None:
        path = _path(facts)
        if any(p.matches(path) for p in patterns):
            return None
        allowed = ", ".join(p.text for p in patterns)
        return f"path {path.text} is not allowed by {policy_name} (allowed: {allowed})"

    return check


def _key(*parts: str) -> str:
    """A rule's condition as one string: its hash is computed once and cached by Python (a
    tuple of networks or windows would be hashed again on every lookup)."""
    return "\x1f".join(parts)


def _counter(rule: str, spec: Quota | RateLimit) -> CounterRule:
    if isinstance(spec, Quota):
        return CounterRule(rule, spec.limit, spec.window, spec.per)
    return CounterRule(rule, spec.per_minute, "minute", spec.per)


def compile_policy(name: str, version: int, document: PolicyDocument) -> CompiledPolicy:
    """Build the evaluable form of one stored policy version (pure; cache it per version).

    Rules are checked in a fixed order: time_windows, ip_allow, groups_any, methods, paths;
    then quota and rate_limit produce charges.
    """
    validate_name(name)
    r = document.rules
    rules: list[CompiledRule] = []
    if r.time_windows is not None:
        windows = tuple(
            CompiledWindow(
                frozenset(DAYS.index(d) for d in w.days), w.start_minute * 60, w.end_minute * 60
            )
            for w in r.time_windows.windows
        )
        tw = TimeWindowRule(zoneinfo.ZoneInfo(r.time_windows.timezone), windows)
        rules.append(
            CompiledRule(
                "time_windows",
                _time_check(name, tw),
                _key("time", tw.zone.key, *map(repr, windows)),
            )
        )
    if r.ip_allow is not None:
        nets = tuple(parse_network(text) for text in r.ip_allow)
        rules.append(
            CompiledRule("ip_allow", _ip_check(name, nets, r.ip_allow), _key("ip", *map(str, nets)))
        )
    if r.groups_any is not None:
        wanted = frozenset(r.groups_any)
        rules.append(
            CompiledRule("groups_any", _groups_check(name, wanted), _key("groups", *sorted(wanted)))
        )
    if r.methods is not None:
        methods = frozenset(r.methods)
        rules.append(
            CompiledRule(
                "methods",
                _methods_check(name, methods, r.methods),
                _key("methods", *sorted(methods)),
            )
        )
    if r.paths is not None:
        patterns = tuple(compile_pattern(text) for text in r.paths)
        rules.append(CompiledRule("paths", _paths_check(name, patterns), _key("paths", *r.paths)))
    counters = tuple(
        _counter(rule, spec)
        for rule, spec in (("quota", r.quota), ("rate_limit", r.rate_limit))
        if spec is not None
    )
    applies_to = document.applies_to

    def selector(values: list[str] | None) -> frozenset[str] | None:
        return None if values is None else frozenset(values)

    return CompiledPolicy(
        name=name,
        version=version,
        document=document,
        credentials_secrets=selector(applies_to.secrets if applies_to else None),
        credentials_providers=selector(applies_to.providers if applies_to else None),
        principals=selector(
            list(applies_to.principals) if applies_to and applies_to.principals else None
        ),
        groups=selector(applies_to.groups if applies_to else None),
        rules=tuple(rules),
        counters=counters,
    )
