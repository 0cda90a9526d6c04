"""Fuzz every operation of ``/openapi.json`` with schemathesis, signed like the real client.

The document must tell the truth: any 5xx fails, and so does any answer whose status,
content type, headers or body the document does not describe. Cases are generated up front
(seeded: ``derandomize``) in a plain Hypothesis run, then sent on the test's own event loop
through the ASGI app with the vault of the ``backend`` fixture, so both SQLite and PostgreSQL
are fuzzed. Each request is signed by :func:`sign` (the hook), so the fuzzer gets past
authentication and reaches the routes' own validation and logic; ``/sdk/token`` is also
seeded with a real grant and an allowed host so its 200 path is checked against the
document too. The operations are fuzzed in ``PARTS`` interleaved shares, one test each (so
the parallel suite spreads them over its workers); together they cover every operation.
Budget: about a minute per backend on a shared two-core machine.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import quote, unquote, urlencode

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import Case, GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core import NOT_SET
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from grantvault.protocol.signing import sign_request
from grantvault_server.api.deps import signed_target
from grantvault_server.app import create_app
from grantvault_server.services import (
    grants as grant_service,
    operators as operator_service,
    secrets as secret_service,
)
from grantvault_server.services.vault import Vault
from tests.conftest import OPERATOR, make_app

#: Generated cases per operation and mode. Unserved (501) operations take no input.
EXAMPLES = {GenerationMode.POSITIVE: 40, GenerationMode.NEGATIVE: 20}
EXAMPLES_UNSERVED = 3
#: Admin operations (an owner's token): fewer cases, there are many of them.
EXAMPLES_ADMIN = {GenerationMode.POSITIVE: 12, GenerationMode.NEGATIVE: 6}
#: The operations are split into this many tests (every PARTS-th operation, from ``part``).
PARTS = 5
#: The whole test, per backend; well above what it takes, well below "a couple of minutes".
BUDGET_S = 110.0
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]
ALLOWED_URL = "https://api.openai.com/v1/chat/completions"
FUZZ_PASSWORD = "fuzzing-orbit-stapler-91"


def generate(operation: Any, mode: GenerationMode, count: int) -> list[Case]:
    """``count`` cases for one operation, the same on every run (no example database)."""
    cases: list[Case] = []

    @settings(
        max_examples=count,
        derandomize=True,
        database=None,
        deadline=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(operation.as_strategy(generation_mode=mode))
    def collect(case: Case) -> None:
        cases.append(case)

    try:
        collect()
    except Unsatisfiable:  # negative mode, and the operation takes no input to break
        assert mode is GenerationMode.NEGATIVE
    return cases


def sign(
    case: Case, api_key: str, operator_token: str = ""
) -> tuple[str, str, dict[str, str], bytes]:
    """The hook: build the request of ``case`` and sign it as the SDK would (an admin
    route instead carries an owner's operator token)."""
    path = case.operation.path
    for name, value in (case.path_parameters or {}).items():
        path = path.replace("{" + name + "}", quote(str(value), safe=""))
    query = urlencode(case.query or {}, doseq=True)
    body = b""
    headers: dict[str, str] = {}
    if isinstance(case.body, bytes):  # negative mode: a body of another media type
        body = case.body
        headers["Content-Type"] = case.media_type or "application/octet-stream"
    elif case.body is not NOT_SET:
        body = json.dumps(case.body, separators=(",", ":")).encode()
        headers["Content-Type"] = "application/json"
    if case.operation.path.startswith("/admin/"):
        headers["Authorization"] = f"Bearer {operator_token}"
        return case.method.upper(), path + (f"?{query}" if query else ""), headers, body
    target = signed_target({"path": unquote(path), "query_string": query.encode()})
    headers.update(sign_request(api_key, method=case.method.upper(), target=target, body=body))
    headers["x-api-key"] = api_key
    return case.method.upper(), path + (f"?{query}" if query else ""), headers, body


def seed(case: Case, real: dict[str, str]) -> None:
    """Put the ids of real objects into a generated case (path and body)."""
    if case.path_parameters:
        for name in case.path_parameters:
            if name in real:
                case.path_parameters[name] = real[name]
    if case.operation.path == "/sdk/token" and isinstance(case.body, dict):
        case.body = {**case.body, "grant_id": real["grant_id"]}
        case.body.pop("provider_id", None)


@pytest.fixture
async def fuzz_client(vault: Vault) -> AsyncIterator[tuple[httpx.AsyncClient, Any]]:
    app = create_app(vault=vault)
    schema = schemathesis.openapi.from_dict(app.openapi())
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        yield client, schema


@pytest.mark.parametrize("part", range(PARTS), ids=lambda n: f"part{n + 1}of{PARTS}")
async def test_openapi_document_survives_signed_fuzzing(
    vault: Vault, fuzz_client: tuple[httpx.AsyncClient, Any], part: int
) -> None:
    client, schema = fuzz_client
    started = time.monotonic()
    app, key = await make_app(vault)
    secret = await secret_service.create_secret(vault, app, OPERATOR, template="openai")
    await secret_service.set_credential(vault, app, secret, {"token": "sk-fuzz-123456"}, OPERATOR)
    grant = await grant_service.create_grant(vault, app, secret, OPERATOR, principal_type="system")
    grant_id = str(grant["grant_id"])
    # An owner whose token the admin routes carry, and another operator for the routes that
    # name one (so a fuzzed password change or deletion cannot end the fuzzer's own token).
    await operator_service.create_operator(
        vault, "fuzz-owner", "owner", actor=OPERATOR, password=FUZZ_PASSWORD
    )
    await operator_service.create_operator(
        vault, "fuzz-other", "admin", actor=OPERATOR, password=FUZZ_PASSWORD
    )
    _, operator_token = await operator_service.create_token(
        vault, "fuzz-owner", "fuzz", actor=OPERATOR
    )
    real = {
        "grant_id": grant_id,
        "managed_secret_id": secret.id,
        "app_id": app.id,
        "app": app.name,
        "operator": "fuzz-other",
    }

    everything = [result.ok() for result in schema.get_all_operations()]
    operations = everything[part::PARTS]
    failures: dict[tuple[str, int, str], str] = {}
    statuses: dict[str, set[int]] = {}

    async def send(case: Case) -> httpx.Response:
        method, url, headers, body = sign(case, key, operator_token)
        response = await client.request(method, url, content=body, headers=headers)
        label = f"{case.method.upper()} {case.operation.path}"
        statuses.setdefault(label, set()).add(response.status_code)
        checks = CHECKS
        if response.status_code == 501 and "not implemented" in (
            case.operation.definition.raw.get("tags") or []
        ):
            checks = CHECKS[1:]  # the documented answer of an unserved route, not a fault
        try:
            case.validate_response(response, checks=checks)
        except BaseExceptionGroup as exc:  # schemathesis: a FailureGroup of every failure
            kinds = ", ".join(sorted({type(e).__name__ for e in exc.exceptions}))
            failures.setdefault((label, response.status_code, kinds), f"{exc}"[:1500])
        if response.status_code == 405:
            assert response.headers.get("allow"), label
        return response

    # The seed: a real grant and an allowed host, so /sdk/token answers 200 (and the answer
    # is checked against the document like any other).
    token_op = schema["/sdk/token"]["POST"]
    seeded = token_op.Case(
        body={"grant_id": grant_id, "request": {"method": "POST", "url": ALLOWED_URL}}
    )
    assert (await send(seeded)).status_code == 200

    for operation in operations:
        unserved = "not implemented" in (operation.definition.raw.get("tags") or [])
        admin = "admin" in (operation.definition.raw.get("tags") or [])
        for mode, count in (EXAMPLES_ADMIN if admin else EXAMPLES).items():
            cases = generate(operation, mode, EXAMPLES_UNSERVED if unserved else count)
            for n, case in enumerate(cases):
                if n % 2:
                    # Every other case names real objects, so the fuzzer gets past "not
                    # found" to the checks and answers behind it (for /sdk/token: the
                    # destination, method and policy checks, and its 200).
                    seed(case, real)
                await send(case)
            if unserved:
                break
        assert time.monotonic() - started < BUDGET_S, "fuzzing ran over its budget"

    assert not failures, "\n\n".join(
        f"{label} -> {status} ({kinds}):\n{text}"
        for (label, status, kinds), text in list(failures.items())[:12]
    )
    assert 200 in statuses["POST /sdk/token"]
    # Every operation of this part was exercised, and beyond authentication.
    assert {f"{op.method.upper()} {op.path}" for op in operations} <= set(statuses)
    assert all(s - {401} for s in statuses.values()), {
        k: v for k, v in statuses.items() if not v - {401}
    }
