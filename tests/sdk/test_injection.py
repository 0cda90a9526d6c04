"""Credential injection: checks on the token answer, and SigV4 against botocore's signer."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from botocore.auth import S3SigV4Auth, SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

import grantvault as gv
from grantvault import _sigv4
from grantvault._injection import parse_bearer_challenge, parse_token_answer
from tests.sdk.fakes import FakeProvider, FakeVault, make_app, token_answer

GRANT = "0b6f7c1e-8a7d-4a4e-9b52-5d3f8f7f2a11"

MALFORMED: list[dict[str, Any]] = [
    {"access_token": ""},
    {"access_token": "tok\r\nX-Evil: 1"},
    {"grant_id": "not-a-uuid"},
    {"grant_id": GRANT.upper()},
    {"injection_header": "Host"},
    {"injection_header": "Content-Length"},
    {"injection_header": "X Bad"},
    {"injection_header": "X-" + "a" * 70},
    {"injection_format": "Bearer token-without-placeholder"},
    {"injection_format": "Bearer {token}\r\n"},
    {"expires_at": "2030-01-01 00:00:00"},
    {"expires_at": "2030-01-01T00:00:00"},
    {"expires_in": -1},
    {"expires_in": True},
    {"scopes": "repo"},
    {"scopes": [" repo"]},
    {"scope_mismatch": "no"},
    {"token_generation": "gen-1"},
    {"additional_credentials": {"k": "line\nbreak"}},
    {"additional_credentials": {f"k{i}": "v" for i in range(11)}},
    {"additional_injections": [{"target": "cookie", "key": "a", "value_source": "token"}]},
    {"additional_injections": [{"target": "header", "key": "Cookie", "value_source": "token"}]},
    {"additional_injections": [{"target": "header", "key": "X-A", "value_source": "env.HOME"}]},
    {
        "additional_injections": [{"target": "query_param", "key": "a", "value_source": "token"}]
        * 11
    },
]


@pytest.mark.parametrize("override", MALFORMED)
async def test_malformed_token_answers_never_reach_the_provider(override: dict[str, Any]) -> None:
    vault = FakeVault().on("/sdk/token", httpx.Response(200, json=token_answer(**override)))
    provider = FakeProvider()
    async with make_app(vault, provider) as app:
        with pytest.raises(gv.BackendError, match="invalid token answer"):
            await app.request("GET", "https://api.example.com/x", grant_id=GRANT)
    assert provider.seen == []


def test_well_formed_answers_parse() -> None:
    parsed = parse_token_answer(
        token_answer(expires_at="2030-01-01T00:00:00.123+02:00", expires_in=60, scopes=["a:b"])
    )
    assert parsed.header == "Authorization" and not parsed.is_sigv4
    sigv4 = parse_token_answer(
        token_answer(
            injection_format="AWS4-HMAC-SHA256", additional_credentials={"secret_key": "s"}
        )
    )
    assert sigv4.is_sigv4


def test_bearer_challenge_parsing() -> None:
    assert parse_bearer_challenge('Bearer error="insufficient_scope", scope="a b"') == {
        "error": "insufficient_scope",
        "scope": "a b",
    }
    assert parse_bearer_challenge('Bearer realm="x\\"y", error=invalid_token, %%%') == {
        "realm": 'x"y',
        "error": "invalid_token",
    }
    assert parse_bearer_challenge('Basic realm="x"') == {}
    assert parse_bearer_challenge("Bearer") == {}
    assert parse_bearer_challenge(None) == {}


HOSTS = [
    ("sqs.eu-west-1.amazonaws.com", ("sqs", "eu-west-1")),
    ("kms-fips.us-west-2.amazonaws.com", ("kms", "us-west-2")),
    ("ec2.dualstack.ap-southeast-2.amazonaws.com", ("ec2", "ap-southeast-2")),
    ("lambda.cn-north-1.amazonaws.com.cn", ("lambda", "cn-north-1")),
    ("bedrock-runtime.us-east-1.amazonaws.com", ("bedrock", "us-east-1")),
    ("email.eu-central-1.amazonaws.com", ("ses", "eu-central-1")),
    ("dynamodb.us-gov-west-1.amazonaws.com", ("dynamodb", "us-gov-west-1")),
    ("s3.eu-west-3.api.aws", ("s3", "eu-west-3")),
    ("my-bucket.s3.us-east-2.amazonaws.com", ("s3", "us-east-2")),
    ("my.bucket.s3-us-west-1.amazonaws.com", ("s3", "us-west-1")),
    ("my-bucket.s3.amazonaws.com", ("s3", "us-east-1")),
    ("s3.amazonaws.com", ("s3", "us-east-1")),
    ("iam.amazonaws.com", ("iam", "us-east-1")),
    ("sts.amazonaws.com", ("sts", "us-east-1")),
    ("abc123.execute-api.eu-west-1.amazonaws.com", (None, None)),
    ("api.example.com", (None, None)),
    ("127.0.0.1", (None, None)),
]


@pytest.mark.parametrize(("host", "expected"), HOSTS)
def test_region_and_service_from_the_host(host: str, expected: tuple[str | None, ...]) -> None:
    assert _sigv4.infer_service_region(host) == expected


def _botocore_signature(
    *, method: str, url: str, body: bytes, headers: dict[str, str], service: str, region: str
) -> str:
    request = AWSRequest(method=method, url=url, data=body, headers=headers)
    request.context["timestamp"] = headers["x-amz-date"]
    creds = Credentials("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", headers.get(
        "x-amz-security-token"))  # fmt: skip
    signer_cls = S3SigV4Auth if service == "s3" else SigV4Auth
    signer = signer_cls(creds, service, region)
    if service == "s3":
        request.context["payload_signing_enabled"] = True
    canonical = signer.canonical_request(request)
    return str(signer.signature(signer.string_to_sign(request, canonical), request))


SIGNED = [
    ("GET", "https://sqs.eu-west-1.amazonaws.com/?Action=ListQueues&Version=2012-11-05", b"", None),
    ("POST", "https://dynamodb.us-east-1.amazonaws.com/", b'{"TableName":"t"}', "session-tok"),
    (
        "GET",
        "https://my-bucket.s3.us-east-2.amazonaws.com/path/to%20key.txt?list-type=2",
        b"",
        None,
    ),
    ("PUT", "https://s3.amazonaws.com/bucket/a+b/c", b"data", None),
    (
        "GET",
        "https://iam.amazonaws.com/?Action=ListUsers&Version=2010-05-08&Marker=a%2Bb",
        b"",
        None,
    ),
    (
        "GET",
        "https://lambda.us-west-2.amazonaws.com/2015-03-31/functions/./fn/../f%3Ax/",
        b"",
        None,
    ),
]


@pytest.mark.parametrize(("method", "url", "body", "session"), SIGNED)
def test_sigv4_agrees_with_botocore(
    method: str, url: str, body: bytes, session: str | None
) -> None:
    target = _sigv4.canonical_url(url)
    signed = _sigv4.sign(
        method=method,
        url=target,
        body=body,
        access_key_id="AKIDEXAMPLE",
        secret_key="wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
        session_token=session,
        now=datetime(2026, 5, 1, 12, 0, tzinfo=UTC),
    )
    service, region = _sigv4.infer_service_region(httpx.URL(target).host)
    assert service is not None and region is not None
    header_names = signed["Authorization"].split("SignedHeaders=")[1].split(",")[0].split(";")
    sent = {**{k.lower(): v for k, v in signed.items()}, "host": httpx.URL(target).host}
    expected = _botocore_signature(
        method=method,
        url=target,
        body=body,
        headers={name: sent[name] for name in header_names},
        service=service,
        region=region,
    )
    assert signed["Authorization"].endswith(f"Signature={expected}")
    assert f"/{region}/{service}/aws4_request" in signed["Authorization"]


async def test_sigv4_request_uses_stored_region_for_other_hosts() -> None:
    vault = FakeVault().on("/sdk/token", httpx.Response(200, json=token_answer(
        access_token="AKIDEXAMPLE", injection_format="AWS4-HMAC-SHA256",
        additional_credentials={"secret_key": "secret", "region": "eu-west-1",
                                "service": "execute-api"})))  # fmt: skip
    provider = FakeProvider()
    async with make_app(vault, provider) as app:
        await app.request("POST", "https://api.example.com/prod/x", grant_id=GRANT,
                          query_params={"q": "a b"}, json={"k": 1})  # fmt: skip
        vault.on("/sdk/token", httpx.Response(200, json=token_answer(
            injection_format="AWS4-HMAC-SHA256", additional_credentials={"secret_key": "s"})))  # fmt: skip
        with pytest.raises(gv.BackendError, match="region"):
            await app.request("GET", "https://api.example.com/x", grant_id=GRANT)
    sent = provider.seen[0]
    assert "/eu-west-1/execute-api/aws4_request" in sent.headers["authorization"]
    assert sent.url.query == b"q=a%20b"
    assert sent.headers["content-type"] == "application/json"
    assert sent.content == b'{"k":1}'
    assert len(provider.seen) == 1
