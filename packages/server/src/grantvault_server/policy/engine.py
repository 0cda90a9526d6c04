"""The policy decision point.

Every credential retrieval (and, later, every proxied call) asks :func:`evaluate` before any
secret is decrypted. Today the rule set is empty and the answer is "allow"; the policy engine
will fill this seam with rules (time windows, IP ranges, groups, methods and paths, rates).
What does not change: a decision carries its reason into the audit trail, and any error while
deciding is a denial (fail closed).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PolicyRequest:
    app_id: str
    grant_id: str
    provider_id: str
    principal_type: str
    principal_id: str | None
    action: str
    method: str
    url: str
    host: str
    caller: str | None = None


@dataclass(frozen=True)
class Decision:
    allowed: bool
    reason: str
    matched_rule: str | None = None


Rule = Callable[[PolicyRequest], Decision | None]


class PolicyEngine:
    """Evaluates rules in order; the first rule with an opinion decides, else allow."""

    def __init__(self, rules: list[Rule] | None = None) -> None:
        self.rules: list[Rule] = list(rules or [])

    def evaluate(self, request: PolicyRequest) -> Decision:
        try:
            for rule in self.rules:
                decision = rule(request)
                if decision is not None:
                    return decision
            return Decision(allowed=True, reason="no_rule_matched_default_allow")
        except Exception:
            # Fail closed: a broken rule must never release a credential.
            log.exception("policy evaluation failed", extra={"grant_id": request.grant_id})
            return Decision(allowed=False, reason="policy_evaluation_error")
