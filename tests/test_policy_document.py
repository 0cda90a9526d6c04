"""Policy documents: the issue-11 contract is accepted, and every mistake names its key."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from grantvault_server.policy.document import (
    PolicyDocument,
    PolicyDocumentError,
    validate_document,
    validate_name,
)

ISSUE_EXAMPLE = """
description: Stripe only from the office network, in office hours, read-only, 1000 calls a day
applies_to:
  secrets: [stripe]
  providers: [google]
  principals: [user, group]
  groups: [finance]
rules:
  time_windows: {timezone: Europe/Berlin, windows: [{days: [mon, tue, wed, thu, fri], start: "09:00", end: "17:00"}]}
  ip_allow: ["10.0.0.0/8", "2001:db8::/32"]
  groups_any: [finance]
  methods: [GET]
  paths: ["/v1/charges", "/v1/charges/*"]
  quota: {limit: 1000, window: day, per: grant}
  rate_limit: {per_minute: 60, per: user}
"""


def errors(raw: Any) -> dict[str, str]:
    with pytest.raises(PolicyDocumentError) as caught:
        validate_document(raw)
    assert str(caught.value)  # one readable line for the CLI
    return dict(caught.value.errors)


def rules(**rule: Any) -> dict[str, Any]:
    return {"rules": rule}


def test_the_issue_example_is_valid() -> None:
    doc = validate_document(yaml.safe_load(ISSUE_EXAMPLE))
    assert isinstance(doc, PolicyDocument)
    assert doc.rules.quota is not None and doc.rules.quota.limit == 1000
    assert doc.applies_to is not None and doc.applies_to.principals == ["user", "group"]


def test_minimal_document_and_json_round_trip() -> None:
    doc = validate_document(rules(methods=["get", "Head"]))
    assert doc.rules.methods == ["GET", "HEAD"]
    assert validate_document(doc.model_dump(mode="json", exclude_none=True)) == doc


@pytest.mark.parametrize(
    ("raw", "key", "fragment"),
    [
        ([], "(document)", "mapping"),
        ({}, "rules", "required"),
        ({"rules": {}}, "rules", "at least one rule"),
        ({"rule": {}, "rules": {"methods": ["GET"]}}, "rule", "unknown key"),
        (rules(methods=["GET"], method=["GET"]), "rules.method", "unknown key"),
        (
            rules(time_windows={"timezone": "Europe/Berln", "windows": []}),
            "rules.time_windows.timezone",
            "unknown IANA time zone 'Europe/Berln'",
        ),
        (
            rules(time_windows={"timezone": "../../etc/passwd", "windows": []}),
            "rules.time_windows.timezone",
            "unknown IANA time zone",
        ),
        (
            rules(time_windows={"timezone": "UTC", "windows": []}),
            "rules.time_windows.windows",
            "at least 1",
        ),
        (
            rules(
                time_windows={
                    "timezone": "UTC",
                    "windows": [{"days": ["mon", "Tue"], "start": "09:00", "end": "17:00"}],
                }
            ),
            "rules.time_windows.windows[0].days[1]",
            "'mon'",
        ),
        (
            rules(
                time_windows={
                    "timezone": "UTC",
                    "windows": [{"days": ["mon"], "start": "9:00", "end": "17:00"}],
                }
            ),
            "rules.time_windows.windows[0].start",
            "HH:MM",
        ),
        (
            rules(
                time_windows={
                    "timezone": "UTC",
                    "windows": [{"days": ["mon"], "start": "09:00", "end": 1020}],
                }
            ),
            "rules.time_windows.windows[0].end",
            "quoted",
        ),
        (
            rules(
                time_windows={
                    "timezone": "UTC",
                    "windows": [{"days": ["mon"], "start": "24:00", "end": "24:00"}],
                }
            ),
            "rules.time_windows.windows[0].start",
            "23:59",
        ),
        (
            rules(
                time_windows={
                    "timezone": "UTC",
                    "windows": [{"days": ["mon"], "start": "09:00", "end": "09:00"}],
                }
            ),
            "rules.time_windows.windows[0]",
            "both 09:00",
        ),
        (rules(ip_allow=["10.0.0.0/8", "10.0.0.1/8"]), "rules.ip_allow[1]", "'10.0.0.0/8'"),
        (rules(ip_allow=["2001:db8::1/32"]), "rules.ip_allow[0]", "host bits"),
        (rules(ip_allow=["0.0.0.0/0"]), "rules.ip_allow[0]", "omit ip_allow"),
        (rules(ip_allow=["::/0"]), "rules.ip_allow[0]", "omit ip_allow"),
        (rules(ip_allow=["office"]), "rules.ip_allow[0]", "not an IPv4 or IPv6"),
        (rules(ip_allow=[]), "rules.ip_allow", "at least 1"),
        (rules(groups_any=[]), "rules.groups_any", "at least 1"),
        (rules(methods=["GET", "G T"]), "rules.methods[1]", "not an HTTP method"),
        (rules(paths=["v1/charges"]), "rules.paths[0]", "start with '/'"),
        (rules(paths=["/v1/**/x"]), "rules.paths[0]", "last segment"),
        (rules(paths=["/v1/a**"]), "rules.paths[0]", "whole segment"),
        (rules(paths=["/v1/../admin"]), "rules.paths[0]", "dot segment"),
        (rules(paths=["/v1/%2e%2e/admin"]), "rules.paths[0]", "dot segment"),
        (rules(paths=["/v1?x=1"]), "rules.paths[0]", "query"),
        (rules(paths=["/v1/%zz"]), "rules.paths[0]", "percent-encoding"),
        (rules(quota={"limit": True, "window": "day", "per": "grant"}), "rules.quota.limit", ""),
        (rules(quota={"limit": "10", "window": "day", "per": "grant"}), "rules.quota.limit", ""),
        (rules(quota={"limit": 0, "window": "day", "per": "grant"}), "rules.quota.limit", ""),
        (rules(quota={"limit": 5, "window": "week", "per": "grant"}), "rules.quota.window", ""),
        (rules(quota={"limit": 5, "window": "day", "per": "org"}), "rules.quota.per", ""),
        (rules(quota={"limit": 5, "window": "day"}), "rules.quota.per", "required"),
        (
            rules(rate_limit={"per_minute": 6, "per": "user", "burst": 2}),
            "rules.rate_limit.burst",
            "unknown key",
        ),
        (
            {"applies_to": {"principals": ["robot"]}, **rules(methods=["GET"])},
            "applies_to.principals[0]",
            "",
        ),
        (
            {"applies_to": {"secrets": []}, **rules(methods=["GET"])},
            "applies_to.secrets",
            "at least 1",
        ),
        (
            {"applies_to": {"secret": ["stripe"]}, **rules(methods=["GET"])},
            "applies_to.secret",
            "unknown key",
        ),
        ({"description": 5, **rules(methods=["GET"])}, "description", "string"),
    ],
)
def test_errors_name_the_offending_key(raw: Any, key: str, fragment: str) -> None:
    found = errors(raw)
    assert key in found, found
    assert fragment in found[key]


def test_every_problem_is_reported_at_once() -> None:
    found = errors(
        rules(
            ip_allow=["10.0.0.1/8", "nope"],
            methods=["GET", "1"],
            quota={"limit": 1, "window": "week", "per": "grant"},
        )
    )
    assert set(found) == {
        "rules.ip_allow[0]",
        "rules.ip_allow[1]",
        "rules.methods[1]",
        "rules.quota.window",
    }


def test_windows_that_are_accepted() -> None:
    doc = validate_document(
        rules(
            time_windows={
                "timezone": "America/New_York",
                "windows": [
                    {"days": ["mon"], "start": "00:00", "end": "24:00"},
                    {"days": ["fri"], "start": "22:00", "end": "06:00"},
                ],
            }
        )
    )
    assert doc.rules.time_windows is not None
    assert [w.end_minute for w in doc.rules.time_windows.windows] == [1440, 360]


def test_policy_names() -> None:
    assert validate_name("office-hours") == "office-hours"
    for bad in ("", "Office", "-x", "x-", "a" * 65, "a b"):
        with pytest.raises(PolicyDocumentError):
            validate_name(bad)
