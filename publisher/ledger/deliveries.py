"""Deliveries: queueing an event, claims under a lease, outcomes, and the counts of each state.

A delivery row is inserted before anything is sent, claimed under a lease, and marked sent only
after the server accepted the message; a worker whose lease ran out cannot overwrite the outcome
of the one that took over.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from functools import cached_property
from typing import Any, Literal

from sqlalchemy import (
    Boolean,
    Connection,
    Date,
    Integer,
    String,
    Text,
    Update,
    and_,
    bindparam,
    case,
    delete,
    exists,
    func,
    insert,
    literal,
    or_,
    select,
    true,
    union_all,
    update,
)
from sqlalchemy.sql.elements import ColumnElement

from publisher.calendar import utcnow
from publisher.ledger.database import Store, _DriverStatement
from publisher.ledger.schema import (
    Id,
    UtcDateTime,
    accepted,
    deliveries,
    subscribers,
)
from publisher.ledger.subscribers import ZoneChoice, mark_bounced, zone_condition

DeliveryStatus = Literal["pending", "sending", "sent", "deferred", "failed", "skipped"]


@dataclass(frozen=True)
class Claim:
    """A delivery claimed by one worker under a lease, with what is needed to send it."""

    delivery_id: int
    slug: str
    year: int
    event_on: date
    attempts: int
    give_up_at: datetime
    subscriber_id: int
    email: str
    name: str | None
    timezone: str | None
    unsubscribe_key: str = ""


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


def _finish_statement(*, held: bool) -> Update:
    # Built once: it runs for each deferred or failed message, and for each batch of accepted
    # ones as they are folded in.
    condition = [deliveries.c.id == bindparam("delivery_id"), deliveries.c.status == "sending"]
    if held:
        condition.append(deliveries.c.lease_owner == bindparam("worker"))
    now = bindparam("now", type_=UtcDateTime())
    values: dict[str, Any] = {
        "status": bindparam("status", type_=String()),
        "last_code": bindparam("code", type_=Integer()),
        "last_reply": bindparam("reply", type_=Text()),
        "message_id": func.coalesce(bindparam("message_id", type_=String()),
                                    deliveries.c.message_id),
        "next_attempt_at": func.coalesce(bindparam("retry_at", type_=UtcDateTime()),
                                         deliveries.c.next_attempt_at),
        "lease_owner": None, "lease_until": None, "updated_at": now,
    }
    if not held:
        values["sent_at"] = now
    return update(deliveries).where(*condition).values(**values)


# Marks, among delivery counts, the messages accepted but not yet folded in.
_ACCEPTED = "accepted"
# "sent" is recorded whoever holds the lease; other outcomes only by the lease holder.
_FINISH_SENT = _finish_statement(held=False)
_FINISH_HELD = _finish_statement(held=True)
# One statement for a batch: rows still "sending" take their recorded acceptance. (A delivery
# recorded twice, by a worker that lost its lease and the one that took over, takes either.)
_SETTLE = (update(deliveries)
           .where(deliveries.c.id == accepted.c.delivery_id, deliveries.c.status == "sending",
                  accepted.c.id.in_(bindparam("ids", expanding=True)))
           .values(status="sent", last_code=accepted.c.code, last_reply=accepted.c.reply,
                   message_id=func.coalesce(accepted.c.message_id, deliveries.c.message_id),
                   lease_owner=None, lease_until=None, updated_at=accepted.c.accepted_at,
                   sent_at=accepted.c.accepted_at))
_ACCEPT = insert(accepted).values(
    delivery_id=bindparam("delivery_id", type_=Id), code=bindparam("code", type_=Integer()),
    reply=bindparam("reply", type_=Text()), message_id=bindparam("message_id", type_=String()),
    accepted_at=bindparam("now", type_=UtcDateTime()))


class DeliveryStore(Store):
    """The statements on deliveries: queue, claim, lease, finish, settle, count."""

    @cached_property
    def _finish_sent(self) -> _DriverStatement:
        return _DriverStatement(_FINISH_SENT, self._held)

    @cached_property
    def _finish_held(self) -> _DriverStatement:
        return _DriverStatement(_FINISH_HELD, self._held)

    @cached_property
    def _accept(self) -> _DriverStatement:
        return _DriverStatement(_ACCEPT, self._held)

    def enqueue(self, slug: str, year: int, event_on: date, *, due_at: datetime,
                give_up_at: datetime, zone: ZoneChoice, site_zone: str,
                status: Literal["pending", "skipped"] = "pending",
                reason: str | None = None, now: datetime | None = None) -> int:
        """Insert one delivery per confirmed subscriber in ``zone`` lacking one; return how many.

        One INSERT … SELECT … ON CONFLICT DO NOTHING: subscribers never pass through Python, and
        running it again (or from two processes at once) adds nothing.
        """
        now = now or utcnow()
        source = select(
            literal(slug, String()), literal(year, Integer()), literal(event_on, Date()),
            subscribers.c.id, literal(status, String()), literal(0, Integer()),
            literal(due_at, UtcDateTime()), literal(due_at, UtcDateTime()),
            literal(give_up_at, UtcDateTime()), literal(reason, Text()),
            literal(now, UtcDateTime()),
        ).where(subscribers.c.status == "confirmed", zone_condition(zone, site_zone)
                # Instances queueing one event at once insert the same keys; in one order they
                # only wait for each other, in different orders (PostgreSQL's synchronised scans
                # of a large table start mid-table) they could deadlock.
                ).order_by(subscribers.c.id)
        columns = ["slug", "year", "event_on", "subscriber_id", "status", "attempts", "due_at",
                   "next_attempt_at", "give_up_at", "last_reply", "updated_at"]
        statement = self._insert(deliveries).from_select(columns, source).on_conflict_do_nothing(
            index_elements=["slug", "year", "subscriber_id"])
        with self._write() as conn:
            return int(conn.execute(statement).rowcount)

    def count_unqueued(self, slug: str, year: int, zone: ZoneChoice, site_zone: str) -> int:
        """Return how many confirmed subscribers in ``zone`` have no delivery of this event yet."""
        queued = exists().where(deliveries.c.slug == slug, deliveries.c.year == year,
                                deliveries.c.subscriber_id == subscribers.c.id)
        with self._read() as conn:
            return int(conn.scalar(
                select(func.count()).select_from(subscribers)
                .where(subscribers.c.status == "confirmed",
                       zone_condition(zone, site_zone), ~queued)) or 0)

    @staticmethod
    def _due_queues(now: datetime) -> tuple[ColumnElement[bool], ...]:
        # Claimed queue by queue, each in the order of the due index (status, next attempt):
        # one condition over all of them would make every claim sort every due row.
        return (
            # A lease that ran out means its holder died: its rows have waited longest.
            and_(deliveries.c.status == "sending", deliveries.c.lease_until < now),
            and_(deliveries.c.status == "deferred", deliveries.c.next_attempt_at <= now),
            and_(deliveries.c.status == "pending", deliveries.c.next_attempt_at <= now),
        )

    @classmethod
    def _due(cls, now: datetime) -> ColumnElement[bool]:
        return or_(*cls._due_queues(now))

    def due_slugs(self, now: datetime | None = None) -> list[str]:
        """Return the articles that have deliveries which could be claimed now."""
        with self._read() as conn:
            return list(conn.scalars(select(deliveries.c.slug).distinct()
                                     .where(self._due(now or utcnow()))))

    def count_due(self, now: datetime | None = None) -> int:
        """Return how many deliveries could be claimed now."""
        expired, *waiting = self._due_queues(now or utcnow())
        # A dead sender's accepted messages are not due: the next claim marks them sent.
        unfolded = exists().where(accepted.c.delivery_id == deliveries.c.id)
        # Queue by queue: each count then reads only the due index, where one count of rows
        # meeting any of the conditions reads every due row itself.
        counts = [select(func.count()).select_from(deliveries).where(queue).scalar_subquery()
                  for queue in (and_(expired, ~unfolded), *waiting)]
        with self._read() as conn:
            return sum(int(n or 0) for n in conn.execute(select(*counts)).one())

    def expire(self, now: datetime | None = None) -> tuple[int, int]:
        """Give up on deliveries past their give-up time; return (skipped, failed) counts."""
        now = now or utcnow()
        late = deliveries.c.give_up_at <= now
        with self._write() as conn:
            skipped = conn.execute(
                update(deliveries).where(deliveries.c.status == "pending", late)
                .values(status="skipped", updated_at=now,
                        last_reply="not sent before its give-up time")).rowcount
            failed = conn.execute(
                update(deliveries).where(deliveries.c.status == "deferred", late)
                .values(status="failed", updated_at=now,
                        last_reply=func.coalesce(deliveries.c.last_reply, "")
                        + " (gave up)")).rowcount
        return int(skipped), int(failed)

    def claim(self, worker: str, limit: int, lease: timedelta,
              now: datetime | None = None) -> list[Claim]:
        """Take up to ``limit`` due deliveries for ``worker`` until the lease runs out.

        PostgreSQL: FOR UPDATE SKIP LOCKED, so concurrent workers take disjoint rows without
        waiting. SQLite: the transaction began IMMEDIATE, so claims run one at a time.
        """
        now = now or utcnow()
        with self._write() as conn:
            # A dead worker's accepted messages are folded in first, so none is claimed again.
            self._settle(conn)
            claimed: list[int] = []
            for queue in self._due_queues(now):
                if len(claimed) == limit:
                    break
                chosen = (select(deliveries.c.id).where(queue)
                          .order_by(deliveries.c.next_attempt_at, deliveries.c.id)
                          .limit(limit - len(claimed)).with_for_update(skip_locked=True))
                claimed += conn.execute(
                    update(deliveries).where(deliveries.c.id.in_(chosen))
                    .values(status="sending", lease_owner=worker, lease_until=now + lease,
                            attempts=deliveries.c.attempts + 1, updated_at=now)
                    .returning(deliveries.c.id)).scalars()
            if not claimed:
                return []
            rows = conn.execute(
                select(deliveries.c.id, deliveries.c.slug, deliveries.c.year,
                       deliveries.c.event_on, deliveries.c.attempts, deliveries.c.give_up_at,
                       deliveries.c.subscriber_id, subscribers.c.email, subscribers.c.name,
                       subscribers.c.timezone, subscribers.c.unsubscribe_key,
                       subscribers.c.status.label("subscriber_status"))
                .join(subscribers, subscribers.c.id == deliveries.c.subscriber_id)
                .where(deliveries.c.id.in_(claimed))
                .order_by(deliveries.c.next_attempt_at, deliveries.c.id)).all()
            gone = [r.id for r in rows if r.subscriber_status != "confirmed"]
            if gone:
                # Unsubscribing skips unsent rows already; this catches a row claimed in between.
                conn.execute(update(deliveries).where(deliveries.c.id.in_(gone)).values(
                    status="skipped", lease_owner=None, lease_until=None, updated_at=now,
                    last_reply="subscriber is no longer confirmed"))
            return [Claim(r.id, r.slug, r.year, r.event_on, r.attempts, r.give_up_at,
                          r.subscriber_id, r.email, r.name, r.timezone, r.unsubscribe_key or "")
                    for r in rows if r.subscriber_status == "confirmed"]

    def extend_lease(self, ids: Iterable[int], worker: str, until: datetime) -> int:
        """Push the lease of rows this worker still holds to ``until``."""
        id_list = list(ids)
        if not id_list:
            return 0
        with self._write() as conn:
            return int(conn.execute(
                update(deliveries)
                .where(deliveries.c.id.in_(id_list), deliveries.c.status == "sending",
                       deliveries.c.lease_owner == worker)
                .values(lease_until=until)).rowcount)

    def release(self, ids: Iterable[int], worker: str, now: datetime | None = None) -> int:
        """Hand back rows claimed but never given to the transport, as if never claimed."""
        id_list = list(ids)
        if not id_list:
            return 0
        now = now or utcnow()
        with self._write() as conn:
            return int(conn.execute(
                update(deliveries)
                .where(deliveries.c.id.in_(id_list), deliveries.c.status == "sending",
                       deliveries.c.lease_owner == worker)
                .values(status=case((deliveries.c.attempts > 1, "deferred"), else_="pending"),
                        attempts=deliveries.c.attempts - 1, lease_owner=None,
                        lease_until=None, updated_at=now)).rowcount)

    def record_sent(self, delivery_id: int, *, code: int | None, reply: str,
                    message_id: str | None, now: datetime | None = None) -> None:
        """Record that the server accepted a claimed delivery's message, in its own commit.

        The delivery reads ``sent`` once :meth:`settle` (or the next :meth:`claim`, by any
        worker) has folded the record in; until then it is ``sending``, and no claim takes it.
        """
        self._accept.run({"delivery_id": delivery_id, "code": code, "reply": reply,
                          "message_id": message_id, "now": now or utcnow()})

    def settle(self) -> int:
        """Mark sent every delivery whose acceptance is recorded; return how many records.

        A read-only ledger settles nothing: such deliveries still read as ``sending``.
        """
        if self.read_only:
            return 0
        with self._write() as conn:
            return self._settle(conn)

    @staticmethod
    def _settle(conn: Connection) -> int:
        # SKIP LOCKED: two PostgreSQL workers settling at once fold disjoint records, and one
        # appended while this runs waits for the next settle rather than being deleted unseen.
        ids = conn.execute(select(accepted.c.id).order_by(accepted.c.id)
                           .with_for_update(skip_locked=True)).scalars().all()
        if ids:
            conn.execute(_SETTLE, {"ids": ids})
            conn.execute(delete(accepted).where(accepted.c.id.in_(bindparam("ids", ids))))
        return len(ids)

    def finish(self, delivery_id: int, worker: str,
               status: Literal["sent", "deferred", "failed"], *, code: int | None,
               reply: str, message_id: str | None, retry_at: datetime | None = None,
               bounce: bool = False, now: datetime | None = None) -> bool:
        """Record what became of one claimed delivery; return whether the row was updated.

        ``sent`` is recorded whoever holds the lease (the server has the message, whatever the
        ledger thought); ``deferred`` and ``failed`` only by the worker still holding it, so a
        worker whose lease ran out cannot overwrite the outcome of the one that took over.
        """
        if status == "deferred" and retry_at is None:
            raise ValueError("a deferred delivery needs retry_at")
        now = now or utcnow()
        params = {"delivery_id": delivery_id, "worker": worker, "status": status, "code": code,
                  "reply": reply, "message_id": message_id, "retry_at": retry_at, "now": now}
        if not bounce:
            driver = self._finish_sent if status == "sent" else self._finish_held
            return bool(driver.run(params))
        statement = _FINISH_SENT if status == "sent" else _FINISH_HELD
        with self._write() as conn:
            changed = conn.execute(statement, params).rowcount
            if changed and bounce:
                owner = select(deliveries.c.subscriber_id).where(deliveries.c.id == delivery_id)
                mark_bounced(conn, int(conn.execute(owner).scalar_one()), reply, now)
            return bool(changed)

    def delivery_counts(self, day: date | None = None) -> list[DeliveryCount]:
        """Return delivery counts per event and state (for events of ``day``, or all).

        A message the server accepted counts as sent even before a sender folds its record
        in, so that reading the counts writes nothing and never waits for a writer.
        """
        event = (deliveries.c.event_on, deliveries.c.slug, deliveries.c.year)
        condition = true() if day is None else deliveries.c.event_on == day
        # Found among the rows being sent, not the day's: one event can have a million rows.
        unfolded = (select(*event, literal(_ACCEPTED, String()), func.count())
                    .where(deliveries.c.status == "sending",
                           deliveries.c.id.in_(select(accepted.c.delivery_id)))
                    .group_by(*event))
        counts = (select(*event, deliveries.c.status, func.count()).where(condition)
                  .group_by(*event, deliveries.c.status))
        totals: dict[tuple[date, str, int, DeliveryStatus], int] = {}
        with self._read() as conn:
            # One statement, so that both parts see the same moment.
            for on, slug, year, status, count in conn.execute(union_all(counts, unfolded)):
                if day is not None and on != day:
                    continue
                moves: tuple[tuple[DeliveryStatus, int], ...] = (
                    (("sent", count), ("sending", -count)) if status == _ACCEPTED
                    else ((status, count),))
                for state, n in moves:
                    key = (on, slug, year, state)
                    totals[key] = totals.get(key, 0) + n
        return [DeliveryCount(*key, count) for key, count in sorted(totals.items()) if count]

    def problems(self, day: date | None = None, limit: int = 50) -> list[Problem]:
        """Return failed and deferred deliveries with their last reply, newest first."""
        query = (select(subscribers.c.email, deliveries.c.slug, deliveries.c.year,
                        deliveries.c.status, deliveries.c.attempts, deliveries.c.last_code,
                        deliveries.c.last_reply, deliveries.c.next_attempt_at)
                 .join(subscribers, subscribers.c.id == deliveries.c.subscriber_id)
                 .where(deliveries.c.status.in_(("failed", "deferred")))
                 .order_by(deliveries.c.updated_at.desc(), deliveries.c.id).limit(limit))
        if day is not None:
            on_day: ColumnElement[bool] = deliveries.c.event_on == day
            if self.dialect == "sqlite":
                # SQLite keeps no statistics: told that most rows are of that day, it finds the
                # few failed and deferred ones by state rather than read each of the day's
                # rows, maybe a million (0.33 s then).
                on_day = func.likely(on_day, type_=Boolean())
            query = query.where(on_day)
        with self._read() as conn:
            return [Problem(*row) for row in conn.execute(query)]
