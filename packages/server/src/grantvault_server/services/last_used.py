"""``last_used_at`` bookkeeping for API keys and grants, shared by every write path.

Kept to the minute: writing it on every request would add a write to the hottest path.
"""

from __future__ import annotations

from datetime import datetime, timedelta

import sqlalchemy as sa

from grantvault_server.storage.tables import api_keys, grants

RESOLUTION = timedelta(seconds=60)

#: Parameters ``kid``/``gid`` and ``used_at``; executed with one row or many.
TOUCH_KEY = (
    sa.update(api_keys)
    .where(api_keys.c.id == sa.bindparam("kid"))
    .values(last_used_at=sa.bindparam("used_at"))
)
TOUCH_GRANT = (
    sa.update(grants)
    .where(grants.c.id == sa.bindparam("gid"))
    .values(last_used_at=sa.bindparam("used_at"))
)


def needs_touch(last_used_at: datetime | None, now: datetime) -> bool:
    return last_used_at is None or last_used_at < now - RESOLUTION
