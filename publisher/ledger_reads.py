"""The ledger's counts, problems and stored values, in SQL that SQLite and PostgreSQL both run."""

# Apart from the publisher.ledger package, whose import brings SQLAlchemy, most of what
# `publisher status` cost: on SQLite it reads through SqliteReads and the sqlite3 module alone;
# the Ledger runs the same statements through SQLAlchemy.
from __future__ import annotations

import errno
import os
import sqlite3
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any, Literal, Self, get_args
from urllib.parse import quote

from publisher.calendar import utcnow
from publisher.config import SUBSCRIBER_STATUSES, SubscriberStatus

DeliveryStatus = Literal["pending", "sending", "sent", "deferred", "failed", "skipped"]
ReturnKind = Literal["hard", "soft", "complaint"]
# The slug of the digests' delivery rows (publisher.ledger.deliveries).
DIGEST_SLUG = "@digest"
# The length of publisher.ledger.schema.MIGRATIONS, which a test holds equal: a ledger at
# another version is read through the ledger, which migrates it or says why it cannot.
SCHEMA_VERSION = 7
BUSY_TIMEOUT_MS = 30_000
IN_MEMORY = (None, "", ":memory:")
# Marks, among delivery counts, the messages accepted but not yet folded in.
_ACCEPTED = "accepted"


@dataclass(frozen=True)
class DeliveryCount:
    """How many deliveries of one event are in one state."""

    event_on: date
    slug: str
    year: int
    status: DeliveryStatus
    count: int


@dataclass(frozen=True)
class Problem:
    """A failed or deferred delivery with the server's last reply."""

    email: str
    slug: str
    year: int
    status: DeliveryStatus
    attempts: int
    code: int | None
    reply: str | None
    next_attempt_at: datetime


@dataclass(frozen=True)
class ReturnCount:
    """How many deliveries of one edition (None: of none found) came back as one kind."""

    slug: str | None
    year: int | None
    kind: ReturnKind
    count: int


def _day(value: date | str) -> date:
    # SQLite hands dates and instants back as the text they are stored as.
    return value if isinstance(value, date) else date.fromisoformat(value)


def _instant(value: datetime | str) -> datetime:
    stored = value if isinstance(value, datetime) else datetime.fromisoformat(value)
    return stored.replace(tzinfo=UTC)


def _stored(now: datetime) -> datetime:
    # Instants are stored as naive UTC (schema.UtcDateTime).
    return now.astimezone(UTC).replace(tzinfo=None)


class LedgerReads:
    """The reads of ``publisher status``, each one statement over a runner of SQL text."""

    dialect: str

    def _rows(self, sql: str, params: Mapping[str, Any] | None = None) -> list[Any]:
        """Run one statement (``:name`` parameters) in a transaction; return its rows."""
        raise NotImplementedError

    def _bound(self, params: Mapping[str, Any] | None) -> dict[str, Any]:
        """Return the parameters as the database compares them with what it stores."""
        if self.dialect != "sqlite":
            return dict(params or {})
        # SQLite stores dates and instants as text (SQLAlchemy's forms of them).
        return {name: value.isoformat(" ", "microseconds") if isinstance(value, datetime)
                else value.isoformat() if isinstance(value, date) else value
                for name, value in (params or {}).items()}

    def delivery_counts(self, day: date | None = None) -> list[DeliveryCount]:
        """Return delivery counts per event and state (for events of ``day``, or all)."""
        # A message the server accepted counts as sent even before a sender folds its record
        # in, so that reading the counts writes nothing and never waits for a writer.
        unfolded = "status = 'sending' AND id IN (SELECT delivery_id FROM accepted)"
        if day is None:
            rows = self._rows(
                "SELECT event_on, slug, year, status, count(*) FROM deliveries"
                " GROUP BY event_on, slug, year, status UNION ALL"
                f" SELECT event_on, slug, year, '{_ACCEPTED}', count(*) FROM deliveries"
                f" WHERE {unfolded} GROUP BY event_on, slug, year")
            found = [(_day(on), slug, year, status, count) for on, slug, year, status, count
                     in rows]
        else:
            # A count per event and state reads each state's stretch of the index once (make
            # bench, million.py, status during the send): grouping the day's rows compares
            # every one with the one before it, twice the processor time. One statement, so
            # that all parts see the same moment.
            states = {state: f"status = '{state}'" for state in get_args(DeliveryStatus)}
            states[_ACCEPTED] = unfolded
            keys = [(day, slug, year, state) for slug, year in self._events_on(day)
                    for state in states]
            params: dict[str, Any] = {"day": day}
            parts = []
            for n, (_on, slug, year, state) in enumerate(keys):
                params |= {f"slug{n}": slug, f"year{n}": year}
                parts.append(f"SELECT {n}, count(*) FROM deliveries WHERE event_on = :day AND "
                             f"slug = :slug{n} AND year = :year{n} AND {states[state]}")
            found = [(*keys[n], count) for n, count
                     in (self._rows(" UNION ALL ".join(parts), params) if parts else [])]
        totals: dict[tuple[date, str, int, DeliveryStatus], int] = {}
        for on, slug, year, status, count in found:
            moves: tuple[tuple[DeliveryStatus, int], ...] = (
                (("sent", count), ("sending", -count)) if status == _ACCEPTED
                else ((status, count),))
            for state, n in moves:
                key = (on, slug, year, state)
                totals[key] = totals.get(key, 0) + n
        return [DeliveryCount(*key, count) for key, count in sorted(totals.items()) if count]

    def _events_on(self, day: date) -> list[tuple[str, int]]:
        """Return the events of ``day`` that have deliveries, a few index lookups each."""
        first = ("SELECT slug, year FROM deliveries WHERE event_on = :day{}"
                 " ORDER BY slug, year LIMIT 1")
        found: list[tuple[str, int]] = []
        rows = self._rows(first.format(""), {"day": day})
        while rows:
            slug, year = rows[0]
            found.append((slug, year))
            after = {"day": day, "slug": slug, "year": year}
            rows = (self._rows(first.format(" AND slug = :slug AND year > :year"), after)
                    or self._rows(first.format(" AND slug > :slug"), after))
        return found

    def problems(self, day: date | None = None, limit: int = 50) -> list[Problem]:
        """Return failed and deferred deliveries with their last reply, newest first."""
        on_day = ""
        if day is not None:
            # SQLite keeps no statistics: told that most rows are of that day, it finds the
            # few failed and deferred ones by state rather than read each of the day's rows,
            # maybe a million (0.33 s then).
            on_day = (" AND likely(d.event_on = :day)" if self.dialect == "sqlite"
                      else " AND d.event_on = :day")
        rows = self._rows(
            "SELECT s.email, d.slug, d.year, d.status, d.attempts, d.last_code, d.last_reply,"
            " d.next_attempt_at FROM deliveries AS d JOIN subscribers AS s"
            " ON s.id = d.subscriber_id WHERE d.status IN ('failed', 'deferred')"
            f"{on_day} ORDER BY d.updated_at DESC, d.id LIMIT :limit",
            {"day": day, "limit": limit} if day is not None else {"limit": limit})
        return [Problem(email, slug, year, status, attempts, code, reply, _instant(next_at))
                for email, slug, year, status, attempts, code, reply, next_at in rows]

    def count_due(self, now: datetime | None = None) -> int:
        """Return how many deliveries could be claimed now."""
        # The claim's queues (publisher.ledger.deliveries), each counted on its own: each then
        # reads only the due index, where one count of rows meeting any of them reads every
        # due row itself. A dead sender's accepted messages are not due: the next claim marks
        # them sent.
        queues = ("status = 'sending' AND lease_until < :now AND NOT EXISTS"
                  " (SELECT 1 FROM accepted WHERE accepted.delivery_id = deliveries.id)",
                  "status = 'deferred' AND next_attempt_at <= :now",
                  "status = 'pending' AND next_attempt_at <= :now")
        counts = ", ".join(f"(SELECT count(*) FROM deliveries WHERE {queue})" for queue in queues)
        return sum(int(n or 0) for n in self._rows(f"SELECT {counts}",
                                                          {"now": _stored(now or utcnow())})[0])

    def subscriber_counts(self) -> dict[SubscriberStatus, int]:
        """Return how many subscribers are in each state."""
        # All rows at once (SQLite counts a table's rows without reading them), the other
        # states through the index on status: a million confirmed are never read one by one.
        others = [status for status in SUBSCRIBER_STATUSES if status != "confirmed"]
        counts = ", ".join(["(SELECT count(*) FROM subscribers)", *(
            f"(SELECT count(*) FROM subscribers WHERE status = '{status}')" for status in others)])
        total, *found = self._rows(f"SELECT {counts}")[0]
        by_status: dict[SubscriberStatus, int] = dict(zip(others, found, strict=True))
        by_status["confirmed"] = total - sum(found)
        return {status: by_status[status] for status in SUBSCRIBER_STATUSES}

    def subscriber_zones(self) -> list[str | None]:
        """Return the distinct time zones of confirmed subscribers (None: the site's zone)."""
        # Zone after zone, each the smallest after the one before, through the index, as
        # subscribers.distinct_values reads them (a million's zones: 0.004 s; DISTINCT 0.13 s).
        confirmed = "FROM subscribers WHERE status = 'confirmed'"
        zones: list[str | None] = [zone for (zone,) in self._rows(
            f"WITH RECURSIVE found(zone) AS (SELECT min(timezone) {confirmed} UNION ALL"
            f" SELECT (SELECT min(timezone) {confirmed} AND timezone > found.zone) FROM found"
            " WHERE found.zone IS NOT NULL) SELECT zone FROM found WHERE zone IS NOT NULL")]
        if self._rows(f"SELECT EXISTS (SELECT 1 {confirmed} AND timezone IS NULL)")[0][0]:
            zones.append(None)
        return zones

    def return_counts(self) -> list[ReturnCount]:
        """Return how many deliveries of each edition came back, per kind."""
        per_edition = self._rows(
            "SELECT slug, year, kind, count(DISTINCT delivery_id) FROM returns"
            " WHERE slug IS NOT NULL GROUP BY slug, year, kind")
        elsewhere = self._rows(
            "SELECT kind, count(*) FROM returns WHERE slug IS NULL GROUP BY kind")
        return ([ReturnCount(slug, year, kind, int(n)) for slug, year, kind, n in per_edition]
                + [ReturnCount(None, None, kind, int(n)) for kind, n in elsewhere])

    def get_state(self, key: str) -> str | None:
        """Return a stored value, or None."""
        rows = self._rows('SELECT value FROM state WHERE "key" = :key', {"key": key})
        return str(rows[0][0]) if rows else None


def write_problem(database: str | None) -> str | None:
    """Return why this process cannot write an SQLite file or its folder, or None."""
    if database in IN_MEMORY:
        return None
    assert database is not None
    for path in (os.path.dirname(os.path.abspath(database)), database):
        if os.path.exists(path) and not os.access(path, os.W_OK):
            read_only = os.statvfs(path).f_flag & os.ST_RDONLY
            return f"{path}: {os.strerror(errno.EROFS if read_only else errno.EACCES)}"
    return None


def connect_read_only(database: str, timeout: float) -> sqlite3.Connection:
    """Open an SQLite file that this process may not write, to read it."""
    # The last connection to close removes the write-ahead log: without one nobody is
    # writing, and SQLite may read the file as immutable, needing no -shm file (which it
    # could not create here). With one, it reads through the -shm its writer keeps.
    options = "mode=ro" if os.path.exists(f"{database}-wal") else "mode=ro&immutable=1"
    return sqlite3.connect(f"file:{quote(os.path.abspath(database))}?{options}", uri=True,
                           check_same_thread=False, timeout=timeout)


def sqlite_file(url: str) -> str | None:
    """Return the file a plain ``sqlite:///PATH`` URL names; None for any other URL."""
    prefix = "sqlite:///"
    if not url.startswith(prefix) or any(c in url for c in "?%#"):
        return None  # a URL with options or escapes: left to SQLAlchemy to read
    return url[len(prefix):] or None


class SqliteReads(LedgerReads):
    """An SQLite ledger opened only to read, through the sqlite3 module."""

    dialect = "sqlite"

    def __init__(self, connection: sqlite3.Connection) -> None:
        self.connection = connection

    @classmethod
    def open(cls, database: str) -> Self | None:
        """Open an SQLite ledger to read; None when it is missing or not at this schema."""
        if not os.path.isfile(database):
            return None
        if write_problem(database) is None:
            # Autocommit: each statement is a read transaction of its own.
            connection = sqlite3.connect(database, timeout=BUSY_TIMEOUT_MS / 1000,
                                         isolation_level=None)
        else:
            connection = connect_read_only(database, BUSY_TIMEOUT_MS / 1000)
        reads = cls(connection)
        try:
            version = reads._rows("SELECT max(version) FROM schema_migrations")[0][0]
        except sqlite3.Error:
            version = None  # no ledger yet, or not one
        if version != SCHEMA_VERSION:
            reads.close()
            return None
        return reads

    def _rows(self, sql: str, params: Mapping[str, Any] | None = None) -> list[Any]:
        return self.connection.execute(sql, self._bound(params)).fetchall()

    def close(self) -> None:
        """Close the connection."""
        self.connection.close()

    def __enter__(self) -> Self:
        """Return the reader itself, closed when the block ends."""
        return self

    def __exit__(self, *_exc: object) -> None:
        """Close the reader."""
        self.close()
