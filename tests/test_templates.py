"""Every managed-secret template loads, validates and yields a token response the client accepts."""

from __future__ import annotations

import re
import uuid

import pytest
from pydantic import ValidationError

from grantvault._injection import parse_token_answer
from grantvault.exceptions import BackendError
from grantvault.protocol.injection import FORBIDDEN_HEADERS
from grantvault.types.wire import TokenResponse
from grantvault_server.providers.catalog import load_templates
from grantvault_server.providers.hosts import check_destination
from grantvault_server.providers.schema import InjectionSpec
from grantvault_server.services.secrets import token_fields

TEMPLATES = load_templates()
REQUIRED = {
    "openai",
    "anthropic",
    "stripe",
    "github",
    "slack",
    "sendgrid",
    "twilio",
    "datadog",
    "cloudflare",
    "aws",
    "mailgun",
    "linear",
}


def test_catalog_has_the_required_templates() -> None:
    assert set(TEMPLATES) >= REQUIRED
    assert len(TEMPLATES) >= 12


@pytest.mark.parametrize("slug", sorted(TEMPLATES))
def test_template_yields_a_valid_token_response(slug: str) -> None:
    template = TEMPLATES[slug]
    values = {f.name: f.default or f"value-of-{f.name}-123456" for f in template.injection.fields}
    fields = token_fields(template.injection, values)
    response = TokenResponse.model_validate(
        {**fields, "grant_id": "00000000-0000-4000-8000-000000000000", "provider_id": slug}
    )
    # The public client's injection rules (wire protocol 2.7).
    assert re.fullmatch(r"[A-Za-z][A-Za-z0-9-]*", response.injection_header)
    assert response.injection_header.lower() not in FORBIDDEN_HEADERS
    assert (
        response.injection_format.startswith("AWS4-HMAC-SHA256")
        or "{token}" in response.injection_format
    )
    assert (
        len(response.additional_credentials or {}) <= 10
        and len(response.additional_injections or []) <= 10
    )
    # Every allowed host rule admits at least one concrete https URL.
    for rule in template.allowed_hosts:
        host = rule.replace("*.", "sub.")
        assert check_destination(f"https://{host}/x", template.allowed_hosts)


def test_unknown_keys_and_bad_shapes_are_rejected() -> None:
    with pytest.raises(ValueError, match="Extra inputs"):
        load_templates(
            "- {slug: x, name: X, description: d, injection: {auth: bearer}, allowed_hosts: [a.example], colour: red}"
        )
    with pytest.raises(ValueError, match="duplicate"):
        load_templates(
            "- {slug: x, name: X, description: d, injection: {auth: bearer}, allowed_hosts: [a.example]}\n"
            "- {slug: x, name: Y, description: d, injection: {auth: bearer}, allowed_hosts: [b.example]}"
        )
    for bad in (
        {"auth": "header", "header": "Cookie", "format": "{token}"},
        {"auth": "header", "header": "X-Key", "format": "no placeholder"},
        {"auth": "query"},
        {"auth": "sigv4", "extra": [{"target": "header", "key": "X-A", "source": "token"}]},
        {"auth": "bearer", "header": "X-Other"},
        {"auth": "header", "header": "X-Forwarded-For", "format": "{token}"},
        {
            "auth": "basic",
            "fields": [{"name": "username"}, {"name": "password", "required": False}],
        },
        {"auth": "bearer", "fields": [{"name": "token", "required": False}]},
    ):
        with pytest.raises(ValidationError):
            InjectionSpec.model_validate(bad)


@pytest.mark.parametrize(
    ("target", "key"),
    [
        ("header", "X-Api-Key"),
        ("header", "X-Forwarded-Port"),
        ("header", "Cookie"),
        ("header", "X_Underscore"),
        ("header", "H" * 61),
        ("query_param", "api_key"),
        ("query_param", "p" * 100),
        ("query_param", "p" * 101),
        ("query_param", "1bad"),
    ],
)
def test_the_vault_stores_exactly_the_injections_the_client_accepts(target: str, key: str) -> None:
    """One injection rule (grantvault.protocol.injection) for the vault and the SDK."""
    extra = {"target": target, "key": key, "source": "token"}
    try:
        InjectionSpec.model_validate({"auth": "bearer", "extra": [extra]})
        stored = True
    except ValidationError:
        stored = False
    answer = {
        "access_token": "t",
        "grant_id": str(uuid.uuid4()),
        "additional_injections": [{"target": target, "key": key, "value_source": "token"}],
    }
    if target == "header":
        answer |= {"injection_header": key, "injection_format": "{token}"}
    try:
        parse_token_answer(answer)
        accepted = True
    except BackendError:
        accepted = False
    assert stored == accepted
