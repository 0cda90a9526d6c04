"""Signing rules checked against vectors computed here, independently of ``grantvault.protocol.signing``.

The expected values are built with ``hmac``/``hashlib`` directly from the rules of wire
protocol §2.3, so a bug shared by the signer and the verifier cannot hide.
"""

from __future__ import annotations

import hashlib
import hmac

from grantvault.protocol.signing import canonical_target, sign_request

API_KEY = "alter_rk_abcdefghijklmnopqrstuv_wxyz23"
BODY = b'{"grant_id":"9f0c1f8e-6a57-4c1b-9a55-0e6f1b0f3b8a","reason":null}'


def _reference(message: str) -> str:
    key = hmac.new(API_KEY.encode(), b"alter-signing-v1", hashlib.sha256).digest()
    return hmac.new(key, message.encode(), hashlib.sha256).hexdigest()


def test_legacy_signature_vector() -> None:
    headers = sign_request(
        API_KEY, method="post", target="/sdk/token", body=BODY, timestamp=1700000000, nonce="0" * 32
    )
    body_hash = hashlib.sha256(BODY).hexdigest()
    expected = _reference(f"POST\n/sdk/token\n1700000000\n{'0' * 32}\n{body_hash}\n")
    assert headers["X-Alter-Signature"] == expected
    assert headers["X-Alter-Content-SHA256"] == body_hash
    assert "X-Alter-Signature-V2" not in headers


def test_v2_signature_binds_actor_headers_in_order_and_is_sent_twice() -> None:
    actor = {
        "X-Alter-Context": '{"run_id":"r1"}',
        "X-Alter-Caller": "billing-bot",
        "X-Alter-Caller-Type": "agent",
    }
    headers = sign_request(
        API_KEY,
        method="GET",
        target="/sdk/scopes",
        actor=actor,
        timestamp=1700000001,
        nonce="a" * 32,
    )
    empty = hashlib.sha256(b"").hexdigest()
    message = (
        f"GET\n/sdk/scopes\n1700000001\n{'a' * 32}\n{empty}\n"
        '\ncaller:billing-bot\ncaller-type:agent\nactor-context:{"run_id":"r1"}'
    )
    assert headers["X-Alter-Signature"] == headers["X-Alter-Signature-V2"] == _reference(message)


def test_scope_constraints_and_request_rule_are_bound() -> None:
    headers = sign_request(
        API_KEY, method="POST", target="/sdk/token", body=b"{}", scope_constraints="tokens:read",
        request_rule="eyJ4IjoxfQ", timestamp=1700000002, nonce="b" * 32,
    )  # fmt: skip
    body_hash = hashlib.sha256(b"{}").hexdigest()
    message = f"POST\n/sdk/token\n1700000002\n{'b' * 32}\n{body_hash}\ntokens:read\nrequest-rule:eyJ4IjoxfQ"
    assert headers["X-Alter-Signature"] == _reference(message)


def test_canonical_target_decodes_path_and_sorts_query() -> None:
    assert (
        canonical_target("/sdk/provider-specs/oauth/post%3A%2Femails")
        == "/sdk/provider-specs/oauth/post:/emails"
    )
    assert (
        canonical_target("/sdk/agents?name=b%20c&limit=10&a=") == "/sdk/agents?a=&limit=10&name=b+c"
    )
    assert canonical_target("/sdk/agents?") == "/sdk/agents"
    assert canonical_target("/sdk/x?b=2&a=1&a=0") == "/sdk/x?a=0&a=1&b=2"
