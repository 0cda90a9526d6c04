"""The pure policy evaluator: every rule allows and denies, windows across DST, safe paths,
fail closed on missing facts, counter charges returned (not decided). No database, no clock."""

from __future__ import annotations

import dataclasses
import ipaddress
import logging
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from grantvault_server.policy.compile import CompiledPolicy, CompiledRule, compile_policy
from grantvault_server.policy.document import validate_document
from grantvault_server.policy.engine import (
    POLICY_EVALUATION_FAILED,
    POLICY_VIOLATION,
    Decision,
    Facts,
    evaluate,
)
from grantvault_server.policy.paths import normalise_path, remove_dot_segments

BERLIN = ZoneInfo("Europe/Berlin")
NEW_YORK = ZoneInfo("America/New_York")
WEEKDAYS = ["mon", "tue", "wed", "thu", "fri"]
EVERY_DAY = [*WEEKDAYS, "sat", "sun"]
# Monday 7 December 2026, 10:00 in Berlin.
MONDAY_10 = datetime(2026, 12, 7, 10, 0, tzinfo=BERLIN)


def policy(doc: dict[str, Any], name: str = "p", version: int = 1) -> CompiledPolicy:
    return compile_policy(name, version, validate_document(doc))


def facts(**changes: Any) -> Facts:
    base = Facts(
        app_id="app-1",
        grant_id="grant-1",
        kind="managed_secret",
        credential="stripe",
        principal_type="user",
        principal_id="u-1",
        method="GET",
        url="https://api.stripe.com/v1/charges",
        at=MONDAY_10,
        end_user_id="alice",
        groups=frozenset({"finance"}),
        caller_ip=ipaddress.ip_address("10.1.2.3"),
    )
    return dataclasses.replace(base, **changes)


def window(days: list[str], start: str, end: str, zone: str = "Europe/Berlin") -> dict[str, Any]:
    return {
        "rules": {
            "time_windows": {
                "timezone": zone,
                "windows": [{"days": days, "start": start, "end": end}],
            }
        }
    }


def allowed(p: CompiledPolicy, **changes: Any) -> bool:
    decision = evaluate([p], facts(**changes))
    assert decision.code in (None, POLICY_VIOLATION), decision
    return decision.allowed


# -- time windows ---------------------------------------------------------------------------


def test_office_hours_reason_names_the_window() -> None:
    p = policy(window(WEEKDAYS, "09:00", "17:00"), name="office-hours", version=3)
    decision = evaluate([p], facts(at=datetime(2026, 12, 7, 22, 0, tzinfo=BERLIN)))
    assert decision == Decision(
        allowed=False,
        reason="outside office-hours: allowed Mon\u2013Fri 09:00\u201317:00 Europe/Berlin",
        matched_rule="time_windows",
        policy="office-hours",
        policy_version=3,
        code=POLICY_VIOLATION,
    )


@pytest.mark.parametrize(
    ("local", "expected"),
    [
        ((8, 59, 59), False),
        ((9, 0, 0), True),  # start inclusive
        ((16, 59, 59), True),
        ((17, 0, 0), False),  # end exclusive
    ],
)
def test_window_edges(local: tuple[int, int, int], expected: bool) -> None:
    p = policy(window(WEEKDAYS, "09:00", "17:00"))
    at = datetime(2026, 12, 7, *local, tzinfo=BERLIN)
    assert allowed(p, at=at) is expected
    # The same instant expressed in another offset is judged the same.
    assert allowed(p, at=at.astimezone(UTC)) is expected


def test_weekend_and_the_whole_day_window() -> None:
    office = policy(window(WEEKDAYS, "09:00", "17:00"))
    assert not allowed(office, at=datetime(2026, 12, 12, 10, 0, tzinfo=BERLIN))  # Saturday
    whole = policy(window(["sat"], "00:00", "24:00"))
    assert allowed(whole, at=datetime(2026, 12, 12, 0, 0, tzinfo=BERLIN))
    assert allowed(whole, at=datetime(2026, 12, 12, 23, 59, 59, tzinfo=BERLIN))
    assert not allowed(whole, at=datetime(2026, 12, 13, 0, 0, tzinfo=BERLIN))


def test_overnight_window_belongs_to_the_day_it_starts() -> None:
    p = policy(window(["fri"], "22:00", "06:00", zone="UTC"))
    fri = datetime(2026, 12, 11, tzinfo=UTC)
    assert allowed(p, at=fri + timedelta(hours=22))
    assert allowed(p, at=fri + timedelta(days=1, hours=5, minutes=59))  # Saturday 05:59
    assert not allowed(p, at=fri + timedelta(days=1, hours=6))  # Saturday 06:00
    assert not allowed(p, at=fri + timedelta(hours=21, minutes=59))
    assert not allowed(p, at=fri + timedelta(hours=3))  # Thursday's night is not listed
    assert not allowed(p, at=fri + timedelta(days=1, hours=22))  # Saturday night
    reason = evaluate([p], facts(at=fri)).reason
    assert reason.endswith("Fri 22:00\u201306:00 (next day) UTC")


@pytest.mark.parametrize(
    ("utc", "expected"),
    [
        # Europe/Berlin springs forward on Sunday 29 March 2026 (CET+1 -> CEST+2).
        (datetime(2026, 3, 28, 7, 59), False),  # Sat 08:59 CET
        (datetime(2026, 3, 28, 8, 0), True),  # Sat 09:00 CET
        (datetime(2026, 3, 29, 6, 59), False),  # Sun 08:59 CEST
        (datetime(2026, 3, 29, 7, 0), True),  # Sun 09:00 CEST
        (datetime(2026, 3, 29, 14, 59), True),  # Sun 16:59 CEST
        (datetime(2026, 3, 29, 15, 0), False),  # Sun 17:00 CEST
        # ... and falls back on Sunday 25 October 2026.
        (datetime(2026, 10, 24, 6, 59), False),  # Sat 08:59 CEST
        (datetime(2026, 10, 24, 7, 0), True),  # Sat 09:00 CEST
        (datetime(2026, 10, 25, 7, 59), False),  # Sun 08:59 CET
        (datetime(2026, 10, 25, 8, 0), True),  # Sun 09:00 CET
        (datetime(2026, 10, 25, 16, 0), False),  # Sun 17:00 CET
    ],
)
def test_berlin_dst_keeps_wall_time(utc: datetime, expected: bool) -> None:
    p = policy(window(EVERY_DAY, "09:00", "17:00"))
    assert allowed(p, at=utc.replace(tzinfo=UTC)) is expected


@pytest.mark.parametrize(
    ("utc", "expected"),
    [
        # America/New_York springs forward on Sunday 8 March 2026 (EST-5 -> EDT-4).
        (datetime(2026, 3, 6, 13, 59), False),  # Fri 08:59 EST
        (datetime(2026, 3, 6, 14, 0), True),  # Fri 09:00 EST
        (datetime(2026, 3, 6, 22, 0), False),  # Fri 17:00 EST
        (datetime(2026, 3, 9, 12, 59), False),  # Mon 08:59 EDT
        (datetime(2026, 3, 9, 13, 0), True),  # Mon 09:00 EDT
        (datetime(2026, 3, 9, 20, 59), True),  # Mon 16:59 EDT
        (datetime(2026, 3, 9, 21, 0), False),  # Mon 17:00 EDT
        # ... and falls back on Sunday 1 November 2026.
        (datetime(2026, 10, 30, 13, 0), True),  # Fri 09:00 EDT
        (datetime(2026, 11, 2, 13, 59), False),  # Mon 08:59 EST
        (datetime(2026, 11, 2, 14, 0), True),  # Mon 09:00 EST
        (datetime(2026, 11, 2, 21, 59), True),  # Mon 16:59 EST
        (datetime(2026, 11, 2, 22, 0), False),  # Mon 17:00 EST
    ],
)
def test_new_york_dst_keeps_wall_time(utc: datetime, expected: bool) -> None:
    p = policy(window(WEEKDAYS, "09:00", "17:00", zone="America/New_York"))
    assert allowed(p, at=utc.replace(tzinfo=UTC)) is expected


def test_windows_inside_the_dst_gap_and_overlap() -> None:
    p = policy(window(["sun"], "02:00", "03:00"))
    # Spring forward: 02:00-03:00 does not exist on 29 March 2026 in Berlin.
    assert not allowed(p, at=datetime(2026, 3, 29, 0, 59, 59, tzinfo=UTC))  # 01:59:59 CET
    assert not allowed(p, at=datetime(2026, 3, 29, 1, 0, tzinfo=UTC))  # 03:00 CEST
    # Fall back: 02:30 happens twice on 25 October 2026; both are inside the window.
    assert allowed(p, at=datetime(2026, 10, 25, 0, 30, tzinfo=UTC))  # 02:30 CEST
    assert allowed(p, at=datetime(2026, 10, 25, 1, 30, tzinfo=UTC))  # 02:30 CET
    assert not allowed(p, at=datetime(2026, 10, 25, 2, 0, tzinfo=UTC))  # 03:00 CET


def test_a_naive_time_fails_closed() -> None:
    p = policy(window(WEEKDAYS, "09:00", "17:00"))
    decision = evaluate([p], facts(at=datetime(2026, 12, 7, 10, 0)))
    assert not decision.allowed and decision.code == POLICY_EVALUATION_FAILED
    assert decision.matched_rule == "time_windows" and "time" in decision.reason


# -- ip_allow --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ip", "expected"),
    [
        ("10.1.2.3", True),
        ("10.255.255.255", True),
        ("11.0.0.1", False),
        ("203.0.113.9", False),
        ("2001:db8::1", True),
        ("2001:db8:ffff::1", True),
        ("2001:db9::1", False),
        ("::ffff:10.1.2.3", True),  # IPv4-mapped IPv6 is the IPv4 caller
        ("::ffff:11.1.2.3", False),
        ("::a01:203", False),  # not mapped: an IPv6 address, not 10.1.2.3
    ],
)
def test_ip_allow(ip: str, expected: bool) -> None:
    p = policy({"rules": {"ip_allow": ["10.0.0.0/8", "2001:db8::/32"]}}, name="office-network")
    assert allowed(p, caller_ip=ipaddress.ip_address(ip)) is expected


def test_ip_allow_reason_and_missing_caller_address() -> None:
    p = policy({"rules": {"ip_allow": ["10.0.0.0/8"]}}, name="office-network")
    denied = evaluate([p], facts(caller_ip=ipaddress.ip_address("203.0.113.9")))
    assert (
        denied.reason
        == "caller address 203.0.113.9 is not in office-network's ip_allow (10.0.0.0/8)"
    )
    missing = evaluate([p], facts(caller_ip=None))
    assert (missing.allowed, missing.code, missing.matched_rule) == (
        False,
        POLICY_EVALUATION_FAILED,
        "ip_allow",
    )
    assert "caller's IP address" in missing.reason


# -- groups_any, methods ---------------------------------------------------------------------


def test_groups_any() -> None:
    p = policy({"rules": {"groups_any": ["finance", "audit"]}})
    assert allowed(p, groups=frozenset({"audit", "eng"}))
    assert not allowed(p, groups=frozenset({"eng"}))
    assert not allowed(p, groups=frozenset())  # a user in no group is a known fact
    missing = evaluate([p], facts(groups=None))
    assert missing.code == POLICY_EVALUATION_FAILED and missing.matched_rule == "groups_any"


def test_methods_compare_case_insensitively() -> None:
    p = policy({"rules": {"methods": ["get", "HEAD"]}}, name="read-only")
    assert allowed(p, method="GET") and allowed(p, method="get") and allowed(p, method="Head")
    decision = evaluate([p], facts(method="delete"))
    assert decision.reason == "method DELETE is not allowed by read-only (allowed: GET, HEAD)"


# -- paths -----------------------------------------------------------------------------------

CHARGES = {"rules": {"paths": ["/v1/charges", "/v1/charges/*"]}}


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/v1/charges", True),
        ("/v1/charges/ch_1", True),
        ("/v1/charges/ch_1?expand=../../admin", True),  # the query is not the path
        ("/v1/%63harges/ch_%31", True),  # unreserved characters decoded
        ("/v1/charges/./ch_1", True),
        ("/v1/charges/ch_1/refunds", False),  # * is one segment
        ("/v1/charges/", False),  # an empty segment matches no wildcard
        ("/v1//charges", False),
        ("/v1/charges/../admin", False),
        ("/v1/charges/%2e%2E/admin", False),
        ("/v1/charges/.%2e/admin", False),
        ("/v1/charges/%2E%2E%2Fadmin", False),  # encoded slash: never a wildcard
        ("/v1/charges/ch_1%2f..%2f..%2fadmin", False),
        ("/v1/charges/..;/admin", False),  # dot segment behind path parameters
        ("/v1/charges/..;", False),
        ("/v1/charges/a%5Cb", False),  # encoded backslash
        ("/v1/charges/a\\b", False),
        ("/v1/charges/%252e%252e", False),  # double encoding
        ("/v1/charges/%00", False),
        ("/v1/charges/%zz", False),  # malformed percent-encoding
        ("/v1/charges/ch_1/../../charges", True),  # resolves to /v1/charges
        ("/v1/admin", False),
        ("", False),
        ("/", False),
    ],
)
def test_paths(path: str, expected: bool) -> None:
    assert allowed(policy(CHARGES), url="https://api.stripe.com" + path) is expected


def test_paths_globs_double_star_and_literal_escapes() -> None:
    p = policy({"rules": {"paths": ["/v1/files/**", "/v1/exports/*.json", "/v1/a%2Fb"]}})

    def url(path: str) -> str:
        return "https://h.example" + path

    assert allowed(p, url=url("/v1/files/a"))
    assert allowed(p, url=url("/v1/files/a/b/c"))
    assert not allowed(p, url=url("/v1/files"))
    assert not allowed(p, url=url("/v1/files/a/%2e%2e/%2e%2e/secrets"))  # -> /v1/secrets
    assert not allowed(p, url=url("/v1/files/a%2F..%2F..%2Fsecrets"))
    assert allowed(p, url=url("/v1/exports/q1.json"))
    assert not allowed(p, url=url("/v1/exports/q1.csv"))
    assert not allowed(p, url=url("/v1/exports/a/b.json"))
    # An encoded slash the operator spelled out literally matches only itself.
    assert allowed(p, url=url("/v1/a%2fb"))
    assert not allowed(p, url=url("/v1/a/b"))


def test_path_reason_shows_the_normalised_path() -> None:
    decision = evaluate(
        [policy(CHARGES, name="charges")], facts(url="https://h/v1/charges/../admin")
    )
    assert decision.reason == (
        "path /v1/admin is not allowed by charges (allowed: /v1/charges, /v1/charges/*)"
    )


@pytest.mark.parametrize(
    ("raw", "resolved"),
    [
        ("/a/b/c/./../../g", "/a/g"),  # RFC 3986 section 5.2.4's examples
        ("mid/content=5/../6", "mid/6"),
        ("/../../x", "/x"),
        ("/a/..", "/"),
        ("/a/.", "/a/"),
    ],
)
def test_remove_dot_segments(raw: str, resolved: str) -> None:
    assert remove_dot_segments(raw) == resolved


def test_normalise_path_keeps_reserved_encodings_upper_case() -> None:
    path = normalise_path("https://h/x/%7e%2f%41?q#f")
    assert path.text == "/x/~%2FA" and path.safe == (True, False)


# -- applies_to ------------------------------------------------------------------------------

DENY_ALL = {"rules": {"methods": ["OPTIONS"]}}


def scoped(applies_to: dict[str, Any]) -> CompiledPolicy:
    return policy({"applies_to": applies_to, **DENY_ALL})


@pytest.mark.parametrize(
    ("applies_to", "call", "applies"),
    [
        ({}, {}, True),
        ({"secrets": ["stripe"]}, {}, True),
        ({"secrets": ["openai"]}, {}, False),
        ({"secrets": ["google"]}, {"kind": "oauth", "credential": "google"}, False),
        ({"providers": ["google"]}, {"kind": "oauth", "credential": "google"}, True),
        ({"providers": ["google"]}, {"credential": "google"}, False),  # a secret slug
        # secrets and providers together select the credential (the example).
        ({"secrets": ["stripe"], "providers": ["google"]}, {}, True),
        (
            {"secrets": ["stripe"], "providers": ["google"]},
            {"kind": "oauth", "credential": "google"},
            True,
        ),
        ({"secrets": ["stripe"], "principals": ["group", "system"]}, {}, False),
        ({"secrets": ["stripe"], "principals": ["user"]}, {}, True),
        ({"principals": ["system"]}, {"principal_type": "system"}, True),
        ({"groups": ["finance", "ops"]}, {}, True),
        ({"groups": ["ops"]}, {}, False),
        ({"secrets": ["stripe"], "groups": ["ops"]}, {"groups": frozenset({"ops"})}, True),
        ({"secrets": ["openai"], "groups": ["finance"]}, {"groups": None}, False),
    ],
)
def test_applies_to(applies_to: dict[str, Any], call: dict[str, Any], applies: bool) -> None:
    decision = evaluate([scoped(applies_to)], facts(**call))
    assert decision.allowed is not applies
    assert decision.code in (None, POLICY_VIOLATION)


def test_groups_selector_without_user_token_fails_closed() -> None:
    """Leaving out the user token must not be a way around a group-scoped policy."""
    decision = evaluate(
        [scoped({"secrets": ["stripe"], "groups": ["finance"]})], facts(groups=None)
    )
    assert (decision.allowed, decision.code, decision.matched_rule) == (
        False,
        POLICY_EVALUATION_FAILED,
        "applies_to",
    )


# -- several policies, failures --------------------------------------------------------------


def test_first_denial_wins_and_all_rules_must_hold() -> None:
    methods = policy({"rules": {"methods": ["GET"]}}, name="read-only", version=2)
    both = policy(
        {"rules": {"methods": ["GET"], "ip_allow": ["192.0.2.0/24"]}}, name="office", version=5
    )
    assert evaluate([methods, both], facts(method="POST")).policy == "read-only"
    decision = evaluate([methods, both], facts())
    assert (decision.policy, decision.policy_version, decision.matched_rule) == (
        "office",
        5,
        "ip_allow",
    )
    assert evaluate([], facts()) == Decision(allowed=True, reason="no_policy_applies")
    assert evaluate([methods], facts()).reason == "allowed by read-only"


def test_a_rule_that_raises_fails_closed(caplog: pytest.LogCaptureFixture) -> None:
    def broken(_: Facts) -> str | None:
        raise RuntimeError("corrupt")

    p = dataclasses.replace(policy(DENY_ALL, name="bad"), rules=(CompiledRule("paths", broken),))
    with caplog.at_level(logging.ERROR, logger="grantvault_server.policy.engine"):
        decision = evaluate([p], facts())
    assert (decision.allowed, decision.code, decision.policy, decision.matched_rule) == (
        False,
        POLICY_EVALUATION_FAILED,
        "bad",
        "paths",
    )
    assert "policy evaluation failed" in caplog.text


# -- quota and rate_limit charges ------------------------------------------------------------


def test_quota_and_rate_limit_return_charges_in_utc_windows() -> None:
    p = policy(
        {
            "rules": {
                "quota": {"limit": 1000, "window": "day", "per": "grant"},
                "rate_limit": {"per_minute": 60, "per": "user"},
            }
        },
        name="stripe-budget",
        version=4,
    )
    at = datetime(2026, 12, 8, 0, 30, 15, tzinfo=BERLIN)  # 7 Dec 23:30:15 UTC
    decision = evaluate([p], facts(at=at))
    assert decision.allowed and decision.code is None
    quota, rate = decision.charges
    assert quota.key == (
        "app-1",
        "stripe-budget",
        "quota",
        "grant",
        "grant-1",
        datetime(2026, 12, 7, tzinfo=UTC),
    )
    assert (quota.limit, quota.window_end, quota.policy_version) == (
        1000,
        datetime(2026, 12, 8, tzinfo=UTC),
        4,
    )
    assert rate.key[2:] == (
        "rate_limit",
        "user",
        "alice",
        datetime(2026, 12, 7, 23, 30, tzinfo=UTC),
    )
    assert (rate.limit, rate.window_end) == (60, datetime(2026, 12, 7, 23, 31, tzinfo=UTC))


@pytest.mark.parametrize(
    ("window", "start", "end"),
    [
        ("minute", datetime(2026, 12, 31, 23, 59), datetime(2027, 1, 1)),
        ("hour", datetime(2026, 12, 31, 23, 0), datetime(2027, 1, 1)),
        ("day", datetime(2026, 12, 31), datetime(2027, 1, 1)),
        ("month", datetime(2026, 12, 1), datetime(2027, 1, 1)),
    ],
)
def test_quota_windows(window: str, start: datetime, end: datetime) -> None:
    p = policy({"rules": {"quota": {"limit": 5, "window": window, "per": "app"}}})
    at = datetime(2026, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)
    (charge,) = evaluate([p], facts(at=at)).charges
    assert (charge.subject, charge.window_start, charge.window_end) == (
        "app-1",
        start.replace(tzinfo=UTC),
        end.replace(tzinfo=UTC),
    )


def test_month_window_in_february() -> None:
    p = policy({"rules": {"quota": {"limit": 5, "window": "month", "per": "grant"}}})
    (charge,) = evaluate([p], facts(at=datetime(2028, 2, 29, 12, tzinfo=UTC))).charges
    assert (charge.window_start, charge.window_end) == (
        datetime(2028, 2, 1, tzinfo=UTC),
        datetime(2028, 3, 1, tzinfo=UTC),
    )


def test_charges_only_when_every_policy_allows() -> None:
    quota = policy({"rules": {"quota": {"limit": 5, "window": "day", "per": "grant"}}}, name="q")
    other = policy(
        {
            "applies_to": {"secrets": ["openai"]},
            "rules": {"rate_limit": {"per_minute": 1, "per": "app"}},
        }
    )
    deny = policy({"rules": {"methods": ["HEAD"]}}, name="z")
    assert len(evaluate([quota, other], facts()).charges) == 1  # other does not apply
    denied = evaluate([quota, deny], facts())
    assert not denied.allowed and denied.charges == ()


def test_editing_a_policy_keeps_its_counter_key() -> None:
    doc = {"rules": {"quota": {"limit": 5, "window": "day", "per": "grant"}}}
    v1 = evaluate([policy(doc, name="q", version=1)], facts()).charges[0]
    v2 = evaluate([policy(doc, name="q", version=2)], facts()).charges[0]
    assert v1.key == v2.key and v1.policy_version != v2.policy_version


def test_per_user_counter_without_an_end_user_fails_closed() -> None:
    p = policy({"rules": {"rate_limit": {"per_minute": 60, "per": "user"}}})
    decision = evaluate([p], facts(end_user_id=None))
    assert (decision.allowed, decision.code, decision.matched_rule, decision.charges) == (
        False,
        POLICY_EVALUATION_FAILED,
        "rate_limit",
        (),
    )
