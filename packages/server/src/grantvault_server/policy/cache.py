"""The compiled policies of each app, kept per replica and keyed by the app's generation.

``apps.policy_generation`` is bumped in the transaction that changes any policy of the app,
and every signed request's key lookup reads it (``services.apps.lookup_key``). An entry is
current while its generation is at least the one the caller saw, so a change reaches every
replica with the first request after it commits, and an unchanged app costs one dictionary
read per retrieval. Pure (no storage): ``services.policies`` fills it.
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Any

from grantvault_server.policy.compile import CompiledPolicy


@dataclass(frozen=True)
class Broken:
    """A stored policy that no longer validates or compiles (a corrupt or hand-edited row)."""

    name: str
    version: int
    why: str


#: Decisions remembered per app entry before the memory is cleared (a bound, not a target).
MAX_DECISIONS = 4096


@dataclass(frozen=True)
class AppPolicies:
    """The compiled policies of one app at one generation, in evaluation order.

    ``decisions`` remembers recent decisions (``policy.engine.decide``): a decision depends
    only on the facts and these policies, and on the time only through whole minutes (window
    edges are ``HH:MM`` in zones whose offsets are whole minutes; counter windows are whole
    UTC minutes, hours, days or months), so it holds for every call with the same facts in the
    same UTC minute. The entry is replaced when a policy changes, and its memory with it.
    """

    generation: int
    compiled: tuple[CompiledPolicy, ...] = ()
    broken: tuple[Broken, ...] = ()
    decisions: dict[Hashable, Any] = field(
        default_factory=dict, compare=False, repr=False, hash=False
    )


NO_POLICIES = AppPolicies(generation=0)


@dataclass
class PolicyCache:
    """Compiled policies per app, replaced whenever the app's generation moves on."""

    apps: dict[str, AppPolicies] = field(default_factory=dict)
    loads: int = 0

    def current(self, app_id: str, generation: int | None) -> AppPolicies | None:
        """The entry to use, or ``None`` when it must be (re)loaded. Generation 0: the app
        never had a policy, nothing to load; ``None``: the caller did not read it."""
        if generation == 0:
            return NO_POLICIES
        if generation is None:
            return None
        entry = self.apps.get(app_id)
        if entry is not None and entry.generation >= generation:
            return entry
        return None

    def store(self, app_id: str, entry: AppPolicies) -> None:
        old = self.apps.get(app_id)
        if old is None or old.generation <= entry.generation:
            self.apps[app_id] = entry
