"""Storage faults the API edge answers without reaching into the storage layer.

``storage.db`` re-raises ``IntegrityError`` untranslated so that services can turn the
conflicts they expect into their own answers (an app name already taken, a slug in use). A
conflict no service expected (a constraint or, on SQLite, a trigger refusing an audit insert)
reaches the API edge, which answers it like every other refused write: ``storage_unavailable``,
the same on SQLite and PostgreSQL (where a trigger's exception is not an ``IntegrityError``
and ``storage.db`` already translates it). Routes must not import storage or SQLAlchemy
(``tests/test_architecture.py``); this module is the one name they need.
"""

from __future__ import annotations

from sqlalchemy.exc import IntegrityError as UnexpectedConflict

from grantvault_server.storage.db import storage_unavailable

__all__ = ["UnexpectedConflict", "storage_unavailable"]
