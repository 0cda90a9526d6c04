"""``policies.*``: the rules every credential retrieval of an app must pass.

Documents arrive as the operator wrote them (``source``: YAML or JSON text) and are parsed
and validated here, on the vault that stores them, so the CLI on a laptop and the portal
cannot disagree with the server about what a file means. A document that cannot be stored
is refused with every problem and its key (422 ``invalid_request`` with ``errors``), so the
file can be fixed in one pass. Writes go through ``services.policies``: versioned, audited,
and applied by every replica from its next request.

``policies.test`` judges one call the way ``POST /sdk/token`` would: the app's stored
policies (optionally with a candidate document in place of one of them), the facts the
server builds for the grant (``services.policies.call_facts``) and the same
``policy.engine.decide``. It never reads or charges a counter, so it needs only ``read``:
an auditor may ask "would this be allowed?" without changing anything.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from grantvault_server.errors import InvalidInput
from grantvault_server.identity.claims import Identity
from grantvault_server.policy.cache import AppPolicies
from grantvault_server.policy.compile import Charge, CompiledPolicy, compile_policy
from grantvault_server.policy.document import PolicyDocumentError, validate_document
from grantvault_server.policy.engine import decide
from grantvault_server.policy.facts import IPAddress
from grantvault_server.services import grants as grant_service, policies as policy_service
from grantvault_server.services.admin.registry import AppParams, OpContext, operation
from grantvault_server.services.identity.service import resolve_user
from grantvault_server.services.policies import PolicyInfo
from grantvault_server.services.tokens import usable_by
from grantvault_server.timefmt import iso

#: The version a candidate document (``policies test`` with ``source``) is compiled with:
#: it has none yet; answers show it as ``null``.
CANDIDATE_VERSION = 0


class PutPolicy(AppParams):
    name: str
    #: The document as written (YAML or JSON text); kept, so ``show`` prints it back.
    source: str | None = None
    #: The document as a JSON object, for clients that build it (no text is kept).
    document: dict[str, Any] | None = None


class ListPolicies(AppParams):
    pass


class PolicyRef(AppParams):
    name: str


class ShowPolicy(PolicyRef):
    #: An older version (still readable after an update or a delete).
    version: int | None = None


class JudgeCall(AppParams):
    #: The grant the call would use.
    grant_id: str
    #: The destination URL of the call.
    url: str
    method: str = "GET"
    #: The calling app server's address (for ``ip_allow``).
    ip: str | None = None
    #: When, ISO 8601 with a UTC offset (default: now).
    at: str | None = None
    #: An end user's JWT, verified as the server verifies it (user and groups).
    user_token: str | None = None
    #: A candidate document judged in place of the stored policy ``name`` (not stored).
    name: str | None = None
    source: str | None = None
    document: dict[str, Any] | None = None


# --------------------------------------------------------------------------- inputs


def _raw(source: str | None, document: dict[str, Any] | None) -> dict[str, Any]:
    """The document as a mapping, from exactly one of ``source`` and ``document``; a syntax
    error is refused like a schema error (with the line it is on)."""
    if source is not None and document is None:
        try:
            return policy_service.parse_source(source)
        except PolicyDocumentError as exc:
            raise policy_service.invalid_document(exc) from None
    if document is not None and source is None:
        return document
    raise InvalidInput("Send the policy document as `source` (text) or `document` (JSON).")


def parse_at(text: str, label: str = "at") -> datetime:
    """``at`` as one instant: ISO 8601 with a UTC offset (a naive time would be judged in
    whatever zone the server runs in). ``label`` names the input in the message (the CLI
    checks its ``--at`` with this before sending it)."""
    try:
        at = datetime.fromisoformat(text)
    except ValueError:
        raise InvalidInput(
            f"{label} {text!r} is not an ISO 8601 time such as 2026-12-07T22:00:00+01:00"
        ) from None
    if at.tzinfo is None or at.utcoffset() is None:
        raise InvalidInput(
            f"{label} {text!r} has no UTC offset; write the offset (+01:00) or Z so the time "
            "is one instant"
        )
    return at


def parse_ip(text: str, label: str = "ip") -> IPAddress:
    """The caller address ``ip``: an unparsable one is refused rather than judged as unknown
    (which would deny every ``ip_allow`` and hide the typo)."""
    address = policy_service.caller_address(text)
    if address is None:
        raise InvalidInput(f"{label} {text!r} is not an IPv4 or IPv6 address")
    return address


def info_json(info: PolicyInfo) -> dict[str, Any]:
    """A stored version in full: its summary, the validated document and the text."""
    return {
        **info.summary(),
        "created_at": iso(info.created_at),
        "document": info.document,
        "source": info.source,
    }


# --------------------------------------------------------------------------- operations


@operation(
    "policies.put",
    "PUT",
    "/apps/{app}/policies/{name}",
    permission="write",
    summary="Create a policy or store a new version of it (every problem listed if invalid).",
)
async def put_policy(ctx: OpContext, params: PutPolicy) -> dict[str, Any]:
    app = await ctx.app(params.app, "write")
    raw = _raw(params.source, params.document)
    info = await policy_service.put_policy(
        ctx.vault, app, params.name, raw, actor=ctx.actor, source=params.source
    )
    return {"policy_id": info.policy_id, "name": info.name, "version": info.version}


@operation(
    "policies.list",
    "GET",
    "/apps/{app}/policies",
    permission="read",
    summary="List an app's policies in evaluation order (by name).",
)
async def list_policies(ctx: OpContext, params: ListPolicies) -> dict[str, Any]:
    app = await ctx.app(params.app, "read")
    infos = await policy_service.list_policies(ctx.vault, app)
    return {"policies": [info.summary() for info in infos]}


@operation(
    "policies.show",
    "GET",
    "/apps/{app}/policies/{name}",
    permission="read",
    summary="Show a policy (or an older version): its document and the text as written.",
)
async def show_policy(ctx: OpContext, params: ShowPolicy) -> dict[str, Any]:
    app = await ctx.app(params.app, "read")
    return info_json(await policy_service.get_policy(ctx.vault, app, params.name, params.version))


@operation(
    "policies.delete",
    "DELETE",
    "/apps/{app}/policies/{name}",
    permission="write",
    summary="Delete a policy; its versions stay readable for the audit trail.",
)
async def delete_policy(ctx: OpContext, params: PolicyRef) -> dict[str, Any]:
    app = await ctx.app(params.app, "write")
    live = await policy_service.delete_policy(ctx.vault, app, params.name, actor=ctx.actor)
    return {"name": params.name, "deleted": True, "version": live}


@operation(
    "policies.test",
    "POST",
    "/apps/{app}/policy-test",
    permission="read",
    summary="Would the app's policies allow this call? (Nothing is stored or charged.)",
)
async def test_policies(ctx: OpContext, params: JudgeCall) -> dict[str, Any]:
    app = await ctx.app(params.app, "read")
    when = parse_at(params.at) if params.at is not None else None
    caller_ip = parse_ip(params.ip) if params.ip is not None else None
    has_document = params.source is not None or params.document is not None
    if (params.name is None) == has_document:
        raise InvalidInput(
            "A candidate needs both its name and its document (`source` or `document`)."
        )
    candidate = (
        _compile_candidate(params.name, _raw(params.source, params.document))
        if params.name is not None
        else None
    )
    identity = None
    if params.user_token is not None:
        identity = await resolve_user(ctx.vault, app.id, params.user_token, actor=ctx.actor)
    async with ctx.vault.db.read() as conn:
        row = await grant_service.load_grant(conn, app, params.grant_id)
        entry = await policy_service.load(conn, app.id)
    now = ctx.vault.clock.now()
    if candidate is not None:
        entry = with_candidate(entry, candidate)
    facts = policy_service.call_facts(
        app.id,
        row,
        identity,
        method=params.method,
        url=params.url,
        at=when or now,
        caller_ip=caller_ip,
    )
    decision = decide(entry, facts)
    name = candidate.name if candidate is not None else None
    by_name = {p.name: p for p in entry.compiled}

    def version(policy: str | None, number: int | None) -> int | None:
        return None if policy == name else number

    return {
        "decision": "allow" if decision.allowed else "deny",
        "policy": decision.policy,
        "version": version(decision.policy, decision.policy_version),
        "rule": decision.matched_rule,
        "reason": decision.reason,
        "code": decision.code,
        "charges": [
            _charge_json(c, by_name.get(c.policy), version(c.policy, c.policy_version))
            for c in decision.charges
        ],
        "applied": [{"name": n, "version": version(n, v)} for n, v in decision.applied],
        "candidate": name,
        "notes": _notes(row, identity, now),
    }


# --------------------------------------------------------------------------- test helpers


def _compile_candidate(name: str, raw: dict[str, Any]) -> CompiledPolicy:
    try:
        return compile_policy(name, CANDIDATE_VERSION, validate_document(raw))
    except PolicyDocumentError as exc:
        raise policy_service.invalid_document(exc) from None


def with_candidate(entry: AppPolicies, candidate: CompiledPolicy) -> AppPolicies:
    """The app's policies with ``candidate`` replacing the stored policy of its name (also a
    stored one that no longer compiles), or added in its place in the evaluation order."""
    stored = [p for p in entry.compiled if p.name != candidate.name]
    at = next((i for i, p in enumerate(stored) if p.name > candidate.name), len(stored))
    stored.insert(at, candidate)
    broken = tuple(b for b in entry.broken if b.name != candidate.name)
    return AppPolicies(entry.generation, tuple(stored), broken)


def _notes(row: Any, identity: Identity | None, now: datetime) -> list[str]:
    """What the server would refuse before any policy is looked at (not judged here)."""
    notes: list[str] = []
    status = grant_service.grant_status(row, now)
    if status != "active":
        notes.append(
            f"this grant is {status}: the server refuses its calls (grant_{status}) before "
            "any policy is checked"
        )
    if identity is not None and not usable_by(row, identity):
        notes.append(
            f"the user token's user ({identity.subject}) may not use this grant: the server "
            "refuses that call before any policy is checked"
        )
    return notes


def _charge_json(
    charge: Charge, policy: CompiledPolicy | None, version: int | None
) -> dict[str, Any]:
    return {
        "policy": charge.policy,
        "policy_version": version,
        "rule": charge.rule,
        "per": charge.per,
        "subject": charge.subject,
        "limit": charge.limit,
        "window": _window_name(charge, policy),
        "window_start": iso(charge.window_start),
        "window_end": iso(charge.window_end),
    }


def _window_name(charge: Charge, policy: CompiledPolicy | None) -> str:
    quota = policy.document.rules.quota if policy is not None else None
    if charge.rule == "quota" and quota is not None:
        return str(quota.window)
    return "minute"
