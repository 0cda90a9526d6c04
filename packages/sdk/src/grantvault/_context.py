"""Task-local state the integrations share with the client.

``audit_context`` is the ambient audit context: ``request()`` uses it when the caller passes
no ``context``. ``request_user_token`` is the end user's token for the request being handled
(set by the FastAPI dependency, read by the client's token getter). Both are ``ContextVar``s,
so concurrent requests and tasks never see each other's values.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar

audit_context: ContextVar[Mapping[str, str] | None] = ContextVar(
    "grantvault_audit_context", default=None
)
request_user_token: ContextVar[str | None] = ContextVar(
    "grantvault_request_user_token", default=None
)


def current_audit_context() -> dict[str, str] | None:
    """A copy of the ambient audit context, or ``None`` when none is set."""
    value = audit_context.get()
    return dict(value) if value else None


@contextmanager
def audit_scope(**values: str) -> Iterator[dict[str, str]]:
    """Add ``values`` to the ambient audit context for the duration of the block."""
    merged = {**(audit_context.get() or {}), **values}
    token = audit_context.set(merged)
    try:
        yield merged
    finally:
        audit_context.reset(token)
