"""A little state shared by every process on the database: values by key, and named locks."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.exc import DBAPIError

from publisher.calendar import utcnow
from publisher.errors import LedgerError
from publisher.ledger.database import Store, _first_line
from publisher.ledger.schema import state


class StateStore(Store):
    """Values stored by key (the last tick, the day the site was built), and locks."""

    @contextmanager
    def try_lock(self, name: str) -> Iterator[bool]:
        """Hold the lock called ``name`` while the block runs; yield False when someone has it.

        PostgreSQL: a session advisory lock, seen by every process on every host and released
        by the server if its holder dies. SQLite: always True, as the processes of one host
        serialise their work with file locks.
        """
        if self.dialect != "postgresql":
            yield True
            return
        key = int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)
        try:
            with self.engine.connect() as conn:
                held = bool(conn.scalar(select(func.pg_try_advisory_lock(key))))
                conn.commit()  # a session lock outlives the transaction; idle is what it holds
                try:
                    yield held
                finally:
                    if held:
                        conn.execute(select(func.pg_advisory_unlock(key)))
                        conn.commit()
        except DBAPIError as exc:
            raise LedgerError(f"database error: {_first_line(exc)}") from exc

    # -- key/value state -----------------------------------------------------------------------

    def set_state(self, key: str, value: str, now: datetime | None = None) -> None:
        """Store a value under ``key``, replacing any previous one."""
        now = now or utcnow()
        statement = self._insert(state).values(key=key, value=value, updated_at=now)
        statement = statement.on_conflict_do_update(
            index_elements=["key"], set_={"value": value, "updated_at": now})
        with self._write() as conn:
            conn.execute(statement)
