"""The policy decision point.

Every credential retrieval (and, later, every proxied call) asks :func:`decide` before any
secret is decrypted: the app's compiled policies (``policy.cache``) judged against the call's
:class:`Facts` by :func:`evaluate`. Every policy that applies must have all its rules hold;
the first failing rule decides, with the policy's name and version, the rule name and a
reason a developer can act on. ``grantvault policies test`` calls the same two functions.

**Fail closed.** A rule that needs a fact the call does not have (``groups_any`` or
``applies_to.groups`` without a verified user token, ``ip_allow`` without a caller address,
``per: user`` without an end user, a naive time) or that raises denies with
``code="policy_evaluation_failed"``. A broken rule must never release a credential.

**Counters are charged by the caller, not here.** ``quota`` and ``rate_limit`` need shared
counts, and a count that is read here and written later is a race across replicas. So for a
call every other rule allows, :func:`evaluate` returns ``allowed=True`` with
``Decision.charges``: one :class:`Charge` per counter rule of every applicable policy, each
with its ``key`` (app, policy name, rule, per, subject id, window start), ``limit`` and
``window_end``. The storage layer must then, atomically and for all charges together,
increment each counter and refuse the call if any count would exceed its limit (nothing is
charged when one refuses); ``quota`` refusals answer ``429 quota_exceeded`` with
``Retry-After = window_end - now``, ``rate_limit`` ones ``429 rate_limit_exceeded``. Windows
are calendar windows in UTC (minute, hour, day, month from the 1st); a rate limit is a fixed
UTC minute. A denied call is charged nothing. If charging fails the call is refused (fail
closed).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

from grantvault_server.policy.cache import MAX_DECISIONS, AppPolicies
from grantvault_server.policy.compile import Charge, CompiledPolicy
from grantvault_server.policy.facts import Facts, MissingFact

__all__ = [
    "POLICY_EVALUATION_FAILED",
    "POLICY_VIOLATION",
    "Charge",
    "CompiledPolicy",
    "Decision",
    "Facts",
    "decide",
    "evaluate",
]

POLICY_VIOLATION = "policy_violation"
POLICY_EVALUATION_FAILED = "policy_evaluation_failed"

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Decision:
    """The answer, carried into the error and the audit trail.

    ``code`` is ``policy_violation`` or ``policy_evaluation_failed`` for a denial by a policy
    document; ``policy``/``policy_version`` name it and ``matched_rule`` the rule that decided.
    ``charges`` is set only on an allow (see the module docstring).
    """

    allowed: bool
    reason: str
    matched_rule: str | None = None
    policy: str | None = None
    policy_version: int | None = None
    code: str | None = None
    charges: tuple[Charge, ...] = ()
    #: ``(name, version)`` of every policy that applied to an allowed call, for the audit row.
    applied: tuple[tuple[str, int], ...] = ()


def _failed(policy: CompiledPolicy, rule: str, reason: str) -> Decision:
    return Decision(
        allowed=False,
        reason=reason,
        matched_rule=rule,
        policy=policy.name,
        policy_version=policy.version,
        code=POLICY_EVALUATION_FAILED,
    )


def _judge(policy: CompiledPolicy, facts: Facts, charges: list[Charge]) -> Decision | bool:
    """One policy: a denial, else whether it applied (its charges appended when it did)."""
    step = "applies_to"
    try:
        if not policy.applies(facts):
            return False
        held = facts.memo
        for rule in policy.rules:
            key = rule.key
            if key is not None and key in held:
                continue  # the same condition already held for this call
            step = rule.name
            reason = rule.check(facts)
            if reason is None:
                if key is not None:
                    held[key] = True
                continue
            return Decision(
                allowed=False,
                reason=reason,
                matched_rule=rule.name,
                policy=policy.name,
                policy_version=policy.version,
                code=POLICY_VIOLATION,
            )
        for counter in policy.counters:
            step = counter.rule
            charges.append(counter.charge(policy, facts))
    except MissingFact as missing:
        return _failed(
            policy,
            step,
            f"{policy.name} cannot evaluate {step} for this call: it needs the {missing.fact}",
        )
    except Exception:
        log.exception(
            "policy evaluation failed",
            extra={"policy": policy.name, "rule": step, "grant_id": facts.grant_id},
        )
        return _failed(
            policy, step, f"{policy.name} could not evaluate {step}; the call is refused"
        )
    return True


def evaluate(policies: Sequence[CompiledPolicy], facts: Facts) -> Decision:
    """Judge one call against an app's compiled policies, in the order given.

    Pure: no storage, no clock (``facts.at`` is the time). Returns the first denial, else an
    allow carrying the counter charges the storage layer must apply before the call proceeds.
    """
    charges: list[Charge] = []
    applied: list[tuple[str, int]] = []
    for policy in policies:
        outcome = _judge(policy, facts, charges)
        if isinstance(outcome, Decision):
            return outcome
        if outcome:
            applied.append((policy.name, policy.version))
    if not applied:
        reason = "no_policy_applies"
    elif len(applied) <= 3:
        reason = f"allowed by {', '.join(n for n, _ in applied)}"
    else:
        reason = f"allowed by {len(applied)} policies"
    return Decision(allowed=True, reason=reason, charges=tuple(charges), applied=tuple(applied))


def decide(entry: AppPolicies, facts: Facts) -> Decision:
    """The decision for one call: a broken policy refuses everything (it might have applied),
    else :func:`~grantvault_server.policy.engine.evaluate`."""
    if entry.broken:
        bad = entry.broken[0]
        return Decision(
            allowed=False,
            reason=(
                f"policy {bad.name} (version {bad.version}) cannot be evaluated: its stored "
                "document is unreadable; store it again with `grantvault policies put` or "
                "delete it"
            ),
            matched_rule="document",
            policy=bad.name,
            policy_version=bad.version,
            code=POLICY_EVALUATION_FAILED,
        )
    if not entry.compiled:
        return Decision(allowed=True, reason="no_policy_applies")
    key = _decision_key(facts)
    if key is None:
        return evaluate(entry.compiled, facts)
    memory = entry.decisions
    found: Decision | None = memory.get(key)
    if found is None:
        found = evaluate(entry.compiled, facts)
        if len(memory) >= MAX_DECISIONS:
            memory.clear()
        memory[key] = found
    return found


#: Before 1973 some zones had offsets with seconds (Liberia until 1972): a local minute
#: then does not line up with a UTC one, so such times are never remembered.
_WHOLE_MINUTE_OFFSETS_SINCE = 94_694_400  # 1973-01-01T00:00:00Z
#: URLs longer than this are judged afresh each time (they would only crowd the memory).
_MAX_REMEMBERED_URL = 2048


def _decision_key(facts: Facts) -> tuple[object, ...] | None:
    """Everything a decision depends on, with the time as its UTC minute; ``None`` when
    the call must be judged afresh (a naive time, a long URL, a time before 1973)."""
    at = facts.at
    if at.tzinfo is None or len(facts.url) > _MAX_REMEMBERED_URL:
        return None
    epoch = at.timestamp()
    if epoch < _WHOLE_MINUTE_OFFSETS_SINCE:
        return None
    return (
        int(epoch // 60),
        facts.grant_id,
        facts.kind,
        facts.credential,
        facts.principal_type,
        facts.principal_id,
        facts.method,
        facts.url,
        facts.end_user_id,
        facts.groups,
        facts.caller_ip,
    )
