"""AWS Signature Version 4, for managed secrets that hold AWS access keys.

Standard library only. The vault returns the access key id as ``access_token`` and the
secret key (plus optional session token, region and service) in ``additional_credentials``;
the SDK signs each provider request itself. Region and service are read from the host when
it is an AWS endpoint (standard, dual-stack, FIPS, China, ``api.aws``, S3 virtual-host, legacy
S3 and global endpoints); the stored values are the fallback for other hosts (API Gateway
custom domains, local test endpoints).

The query is re-encoded in the canonical form before sending, so that the bytes sent and the
bytes signed cannot differ; the body is passed in already serialised for the same reason.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from datetime import UTC, datetime
from urllib.parse import quote, unquote, urlsplit, urlunsplit

ALGORITHM = "AWS4-HMAC-SHA256"

_REGION = r"(?P<region>[a-z]{2}(?:-[a-z]+)+-\d+)"
_STANDARD = re.compile(
    rf"^(?P<service>[a-z0-9-]+)\.(?:dualstack\.)?{_REGION}\.amazonaws\.com(?:\.cn)?$"
)
_API_AWS = re.compile(rf"^(?P<service>[a-z0-9-]+)\.{_REGION}\.api\.aws$")
_S3_REGIONAL = re.compile(
    rf"^(?:.+\.)?s3(?:-fips)?(?:\.dualstack)?[.-]{_REGION}\.amazonaws\.com(?:\.cn)?$"
)
_S3_GLOBAL = re.compile(r"^(?:.+\.)?s3(?:-external-1)?\.amazonaws\.com$")
_GLOBAL = re.compile(r"^(?P<service>[a-z0-9-]+)\.amazonaws\.com$")
#: Region-less endpoints and the region they sign for.
_GLOBAL_SERVICES = frozenset(
    {"iam", "sts", "route53", "cloudfront", "budgets", "health", "organizations", "waf"}
)
#: Host labels whose signing name differs from the label.
_SIGNING_NAMES = {
    "bedrock-runtime": "bedrock",
    "bedrock-agent-runtime": "bedrock",
    "bedrock-agent": "bedrock",
    "email": "ses",
    "appconfigdata": "appconfig",
    "eventsv2": "events",
    "pinpoint": "mobiletargeting",
    "streams.dynamodb": "dynamodb",
    "runtime.sagemaker": "sagemaker",
    "cloudhsmv2": "cloudhsm",
}


def infer_service_region(host: str) -> tuple[str | None, str | None]:
    """``(service, region)`` from an AWS hostname; ``(None, None)`` for other hosts."""
    host = host.lower().rstrip(".")
    for pattern in (_STANDARD, _API_AWS):
        match = pattern.match(host)
        if match:
            service = match["service"].removesuffix("-fips")
            return _SIGNING_NAMES.get(service, service), match["region"]
    match = _S3_REGIONAL.match(host)
    if match:
        return "s3", match["region"]
    if _S3_GLOBAL.match(host):
        return "s3", "us-east-1"
    match = _GLOBAL.match(host)
    if match and match["service"] in _GLOBAL_SERVICES:
        return match["service"], "us-east-1"
    return None, None


def _normalize_path(path: str) -> str:
    """Remove ``.`` and ``..`` segments (RFC 3986 5.2.4), keeping a trailing slash."""
    if not path:
        return "/"
    out: list[str] = []
    for segment in path.split("/")[1:]:
        if segment == "..":
            if out:
                out.pop()
        elif segment != ".":
            out.append(segment)
    normalized = "/" + "/".join(out)
    if path.endswith("/") and not normalized.endswith("/"):
        normalized += "/"
    return normalized


def _canonical_uri(path: str, service: str) -> str:
    if service == "s3":
        return path or "/"
    return quote(_normalize_path(path or "/"), safe="/~")


def _query_pairs(query: str) -> list[tuple[str, str]]:
    pairs: list[tuple[str, str]] = []
    for part in query.split("&") if query else []:
        if not part:
            continue
        key, _, value = part.partition("=")
        # ``+`` is a literal plus in SigV4 (not a space): unquote, never unquote_plus.
        pairs.append((quote(unquote(key), safe="~"), quote(unquote(value), safe="~")))
    return pairs


def canonical_url(url: str) -> str:
    """``url`` with each query name and value encoded the way SigV4 signs them."""
    parts = urlsplit(url)
    query = "&".join(f"{k}={v}" for k, v in _query_pairs(parts.query))
    return urlunsplit((parts.scheme, parts.netloc, parts.path, query, parts.fragment))


def sign(
    *,
    method: str,
    url: str,
    body: bytes,
    access_key_id: str,
    secret_key: str,
    session_token: str | None = None,
    region: str | None = None,
    service: str | None = None,
    now: datetime | None = None,
    host_header: str | None = None,
) -> dict[str, str]:
    """The headers that sign one request: ``Authorization``, ``x-amz-*``.

    ``url`` must already be in :func:`canonical_url` form (it is what will be sent). Raises
    ``ValueError`` when neither the host nor the stored values give a region and a service.
    """
    parts = urlsplit(url)
    host = parts.hostname or ""
    inferred_service, inferred_region = infer_service_region(host)
    service = inferred_service or service
    region = inferred_region or region
    if not region or not service:
        raise ValueError(
            f"cannot tell the AWS {'region' if not region else 'service'} of {host!r}: "
            "store region and service with the credential"
        )
    moment = (now or datetime.now(UTC)).astimezone(UTC)
    amz_date = moment.strftime("%Y%m%dT%H%M%SZ")
    day = amz_date[:8]
    payload_hash = hashlib.sha256(body).hexdigest()
    if host_header is None:
        default_port = {"https": 443, "http": 80}.get(parts.scheme)
        host_header = host if parts.port in (None, default_port) else f"{host}:{parts.port}"
    signed: dict[str, str] = {
        "host": host_header,
        "x-amz-content-sha256": payload_hash,
        "x-amz-date": amz_date,
    }
    if session_token:
        signed["x-amz-security-token"] = session_token
    names = sorted(signed)
    canonical_headers = "".join(f"{n}:{' '.join(signed[n].split())}\n" for n in names)
    signed_headers = ";".join(names)
    canonical_query = "&".join(f"{k}={v}" for k, v in sorted(_query_pairs(parts.query)))
    canonical_request = "\n".join(
        [
            method.upper(),
            _canonical_uri(parts.path, service),
            canonical_query,
            canonical_headers,
            signed_headers,
            payload_hash,
        ]
    )
    scope = f"{day}/{region}/{service}/aws4_request"
    string_to_sign = "\n".join(
        [ALGORITHM, amz_date, scope, hashlib.sha256(canonical_request.encode()).hexdigest()]
    )
    key = f"AWS4{secret_key}".encode()
    for part in (day, region, service, "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    signature = hmac.new(key, string_to_sign.encode(), hashlib.sha256).hexdigest()
    headers = {
        "Authorization": (
            f"{ALGORITHM} Credential={access_key_id}/{scope}, "
            f"SignedHeaders={signed_headers}, Signature={signature}"
        ),
        "x-amz-date": amz_date,
        "x-amz-content-sha256": payload_hash,
    }
    if session_token:
        headers["x-amz-security-token"] = session_token
    return headers
