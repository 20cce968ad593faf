"""Deliveries: queueing an event, claims under a lease, outcomes, and the counts of each state.

A delivery row is inserted before anything is sent, claimed under a lease, and marked sent only
after the server accepted the message; a worker whose lease ran out cannot overwrite the outcome
of the one that took over.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import UTC, date, datetime, time, timedelta
from functools import cached_property
from typing import Any, Literal, NamedTuple

from sqlalchemy import (
    Connection,
    Date,
    Integer,
    Select,
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
    select,
    true,
    tuple_,
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
from publisher.ledger_reads import DIGEST_SLUG
from publisher.preferences import DeliveryGroup, group_filter, tags_filter, years_filter

# A digest is a delivery row of its own, slug DIGEST_SLUG (no article's slug starts with "@")
# and "year" the local date as YYYYMMDD, so that the deliveries' unique key allows one per
# subscriber and local date. The appearances it carries wait, due at DIGEST_WAITING (never),
# until the digest's outcome is theirs.
DIGEST_WAITING = datetime(9999, 12, 31, tzinfo=UTC)
# What a digest's Message-ID is named by, with its date: "@" may not stand in a Message-ID.
DIGEST_KEY = "digest"


def digest_year(day: date) -> int:
    """Return the "year" of the digest row of a local date: the date as YYYYMMDD."""
    return day.year * 10_000 + day.month * 100 + day.day


def digest_day(year: int) -> date:
    """Return the local date a digest row's "year" names."""
    return date(year // 10_000, year // 100 % 100, year % 100)


class Claim(NamedTuple):
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
    # A digest's appearances, (slug, year, date) in the order they are shown; empty otherwise.
    items: tuple[tuple[str, int, date], ...] = ()
    send_time: str | None = None  # the subscriber's own delivery time

    @property
    def is_digest(self) -> bool:
        """Return whether this delivery is a daily digest rather than one appearance."""
        return self.slug == DIGEST_SLUG


def _finish_statement(*, held: bool) -> Update:
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


# "sent" is recorded whoever holds the lease; other outcomes only by the lease holder.
_FINISH_SENT = _finish_statement(held=False)
_FINISH_HELD = _finish_statement(held=True)


def _settle_statement(*records: ColumnElement[bool]) -> Update:
    # One statement for a batch: rows still "sending" take their recorded acceptance. (A
    # delivery recorded twice, by a worker that lost its lease and the one that took over,
    # takes either.)
    return (update(deliveries)
            .where(deliveries.c.id == accepted.c.delivery_id, deliveries.c.status == "sending",
                   *records)
            .values(status="sent", last_code=accepted.c.code, last_reply=accepted.c.reply,
                    message_id=func.coalesce(accepted.c.message_id, deliveries.c.message_id),
                    lease_owner=None, lease_until=None, updated_at=accepted.c.accepted_at,
                    sent_at=accepted.c.accepted_at))


def _digests_among(records: Select[int]) -> Select[int]:
    return select(deliveries.c.id).where(deliveries.c.slug == DIGEST_SLUG,
                                         deliveries.c.id.in_(records))


_LISTED = accepted.c.id.in_(bindparam("ids", expanding=True))
_ACCEPTED_IDS = select(accepted.c.id).order_by(accepted.c.id).with_for_update(skip_locked=True)
_SETTLE = _settle_statement(_LISTED)
_SETTLED_DIGESTS = _digests_among(select(accepted.c.delivery_id).where(_LISTED))
_FOLDED = delete(accepted).where(_LISTED)
# SQLite: the writer holds the database from BEGIN IMMEDIATE, so nobody appends while a batch
# is folded, and the whole journal is folded without listing its ids (benchmarks/README.md,
# million.py: claiming and folding 32.2-34.3 -> 30.2-31.2 us of processor time per message).
_SETTLE_ALL = _settle_statement()
_SETTLED_DIGESTS_ALL = _digests_among(select(accepted.c.delivery_id))
_FOLDED_ALL = delete(accepted)
_ACCEPT = insert(accepted).values(
    delivery_id=bindparam("delivery_id", type_=Id), code=bindparam("code", type_=Integer()),
    reply=bindparam("reply", type_=Text()), message_id=bindparam("message_id", type_=String()),
    accepted_at=bindparam("now", type_=UtcDateTime()))


def _due_queues(now: Any) -> tuple[ColumnElement[bool], ...]:
    # Claimed queue by queue, each in the order of the due index (status, next attempt): one
    # condition over all of them would make every claim sort every due row.
    return (
        # A lease that ran out means its holder died: its rows have waited longest.
        and_(deliveries.c.status == "sending", deliveries.c.lease_until < now),
        and_(deliveries.c.status == "deferred", deliveries.c.next_attempt_at <= now),
        and_(deliveries.c.status == "pending", deliveries.c.next_attempt_at <= now),
    )


def _claim_queue(queue: ColumnElement[bool], now: Any) -> Update:
    chosen = (select(deliveries.c.id).where(queue)
              .order_by(deliveries.c.next_attempt_at, deliveries.c.id)
              .limit(bindparam("limit", type_=Integer())).with_for_update(skip_locked=True))
    return (update(deliveries).where(deliveries.c.id.in_(chosen))
            .values(status="sending", lease_owner=bindparam("worker", type_=String()),
                    lease_until=bindparam("until", type_=UtcDateTime()),
                    attempts=deliveries.c.attempts + 1, updated_at=now)
            .returning(deliveries.c.id))


# Built once, ids bound as one expanding list: a claim's statements are the same every time.
_CLAIM_NOW = bindparam("now", type_=UtcDateTime())
_CLAIM_QUEUES = tuple(_claim_queue(queue, _CLAIM_NOW) for queue in _due_queues(_CLAIM_NOW))
_CLAIMED = (select(deliveries.c.id, deliveries.c.slug, deliveries.c.year, deliveries.c.event_on,
                   deliveries.c.attempts, deliveries.c.give_up_at, deliveries.c.subscriber_id,
                   subscribers.c.email, subscribers.c.name, subscribers.c.timezone,
                   subscribers.c.unsubscribe_key, subscribers.c.send_time, subscribers.c.status)
            .join(subscribers, subscribers.c.id == deliveries.c.subscriber_id)
            .where(deliveries.c.id.in_(bindparam("ids", expanding=True)))
            .order_by(deliveries.c.next_attempt_at, deliveries.c.id))

# Unsubscribing skips unsent rows but leaves claimed ones to their sender, which skips them here.
_DEPARTED = (update(deliveries)
             .where(deliveries.c.id.in_(bindparam("ids", expanding=True)),
                    deliveries.c.status == "sending",
                    deliveries.c.lease_owner == bindparam("worker", type_=String()),
                    deliveries.c.subscriber_id.in_(
                        select(subscribers.c.id).where(subscribers.c.status != "confirmed")))
             .values(status="skipped", lease_owner=None, lease_until=None,
                     updated_at=bindparam("now", type_=UtcDateTime()),
                     last_reply="subscriber is no longer confirmed")
             .returning(deliveries.c.id))


class DeliveryStore(Store):
    """The statements on deliveries: queue, claim, lease, finish, settle, count."""

    @cached_property
    def _accept(self) -> _DriverStatement:
        return _DriverStatement(_ACCEPT, self._held)

    def enqueue(self, slug: str, year: int, event_on: date, *, due_at: datetime,
                give_up_at: datetime, zone: ZoneChoice, site_zone: str,
                status: Literal["pending", "skipped"] = "pending",
                reason: str | None = None, now: datetime | None = None,
                groups: Sequence[DeliveryGroup] | None = None, site_time: time | None = None,
                years_since: int | None = None, tags: Sequence[str] | None = None,
                changed_since: datetime | None = None) -> int:
        """Insert one delivery per confirmed subscriber in ``zone`` lacking one; return how many.

        ``groups`` (with ``site_time``) narrows to subscribers of those zones and delivery
        times instead of ``zone``; ``years_since`` and ``tags`` leave out those whose choices
        do not want this appearance; ``changed_since``, those whose zone and choices did not
        change after it. A subscriber taking a daily digest gets a row that waits
        for the digest of ``event_on`` (see :meth:`enqueue_digests`) instead of falling due.

        One INSERT … SELECT … ON CONFLICT DO NOTHING: subscribers never pass through Python, and
        running it again (or from two processes at once) adds nothing.
        """
        now = now or utcnow()
        where = [subscribers.c.status == "confirmed",
                 zone_condition(zone, site_zone) if groups is None
                 else group_filter(subscribers, groups, site_zone, site_time or time(0))]
        if years_since is not None:
            where.append(years_filter(subscribers, years_since))
        if tags is not None:
            where.append(tags_filter(subscribers, tags))
        if changed_since is not None:
            where.append(subscribers.c.changed_at > changed_since)
        digest = subscribers.c.frequency == "digest"
        next_attempt: Any = literal(due_at, UtcDateTime())
        give_up: Any = literal(give_up_at, UtcDateTime())
        digest_on: Any = literal(None, Date())
        if status == "pending":
            waiting = literal(DIGEST_WAITING, UtcDateTime())
            next_attempt = case((digest, waiting), else_=next_attempt)
            give_up = case((digest, waiting), else_=give_up)
            digest_on = case((digest, literal(event_on, Date())))
        source = select(
            literal(slug, String()), literal(year, Integer()), literal(event_on, Date()),
            subscribers.c.id, literal(status, String()), literal(0, Integer()),
            literal(due_at, UtcDateTime()), next_attempt, give_up, literal(reason, Text()),
            literal(now, UtcDateTime()), digest_on,
        ).where(*where
                # Instances queueing one event at once insert the same keys; in one order they
                # only wait for each other, in different orders (PostgreSQL's synchronised scans
                # of a large table start mid-table) they could deadlock.
                ).order_by(subscribers.c.id)
        columns = ["slug", "year", "event_on", "subscriber_id", "status", "attempts", "due_at",
                   "next_attempt_at", "give_up_at", "last_reply", "updated_at", "digest_on"]
        statement = self._insert(deliveries).from_select(columns, source).on_conflict_do_nothing(
            index_elements=["slug", "year", "subscriber_id"])
        with self._write() as conn:
            return int(conn.execute(statement).rowcount)

    def enqueue_digests(self, day: date, *, due_at: datetime, give_up_at: datetime,
                        now: datetime | None = None, changed_since: datetime | None = None
                        ) -> int:
        """Queue the digest of local date ``day`` for each subscriber with appearances waiting.

        One digest per (subscriber, local date), kept so by the deliveries' unique key: a
        digest row is (``@digest``, ``YYYYMMDD``, subscriber). ``changed_since``: only for
        subscribers whose zone or choices changed after it. Return how many were new.
        """
        now = now or utcnow()
        mine: list[ColumnElement[bool]] = []
        if changed_since is not None:
            # A few lookups per changed subscriber instead of reading the day's every digest.
            mine.append(deliveries.c.subscriber_id.in_(select(subscribers.c.id).where(
                subscribers.c.status == "confirmed", subscribers.c.changed_at > changed_since)))
        # From the index on (digest_on, subscriber_id) alone: a subscriber whose digest of
        # the day exists already only meets the unique key.
        waiting = (select(deliveries.c.subscriber_id).distinct()
                   .where(deliveries.c.digest_on == day, *mine)
                   .order_by(deliveries.c.subscriber_id))
        source = select(
            literal(DIGEST_SLUG, String()), literal(digest_year(day), Integer()),
            literal(day, Date()), waiting.subquery().c.subscriber_id,
            literal("pending", String()), literal(0, Integer()),
            literal(due_at, UtcDateTime()), literal(due_at, UtcDateTime()),
            literal(give_up_at, UtcDateTime()), literal(now, UtcDateTime())
        # SQLite would read the ON of ON CONFLICT as the join's after a bare FROM.
        ).where(true())
        columns = ["slug", "year", "event_on", "subscriber_id", "status", "attempts", "due_at",
                   "next_attempt_at", "give_up_at", "updated_at"]
        statement = self._insert(deliveries).from_select(columns, source).on_conflict_do_nothing(
            index_elements=["slug", "year", "subscriber_id"])
        day_digests = and_(deliveries.c.slug == DIGEST_SLUG,
                           deliveries.c.year == digest_year(day))
        with self._write() as conn:
            added = int(conn.execute(statement).rowcount)
            # An appearance queued after its day's digest was taken (the content changed, or
            # the subscriber moved to a later time) goes alone rather than never. Looked for
            # only when some digest of the day has been taken: usually none has.
            taken = conn.scalar(select(exists().where(day_digests,
                                                      deliveries.c.status != "pending")))
            if taken:
                gone = deliveries.alias("digest")
                late = exists().where(gone.c.slug == DIGEST_SLUG,
                                      gone.c.year == digest_year(day),
                                      gone.c.subscriber_id == deliveries.c.subscriber_id,
                                      gone.c.status.not_in(("pending", "deferred")))
                conn.execute(update(deliveries).where(
                    deliveries.c.digest_on == day, deliveries.c.status == "pending",
                    deliveries.c.next_attempt_at == DIGEST_WAITING,
                    deliveries.c.attempts == 0, late, *mine,
                ).values(digest_on=None, next_attempt_at=due_at, give_up_at=give_up_at,
                         updated_at=now))
            return added

    def count_unqueued(self, slug: str, year: int, zone: ZoneChoice, site_zone: str, *,
                       years_since: int | None = None, tags: Sequence[str] | None = None
                       ) -> int:
        """Return how many confirmed subscribers in ``zone`` have no delivery of this event yet.

        ``years_since`` and ``tags``: only those whose choices want this appearance.
        """
        queued = exists().where(deliveries.c.slug == slug, deliveries.c.year == year,
                                deliveries.c.subscriber_id == subscribers.c.id)
        wanted = [years_filter(subscribers, years_since) if years_since is not None else true(),
                  tags_filter(subscribers, tags) if tags is not None else true()]
        with self._read() as conn:
            return int(conn.scalar(
                select(func.count()).select_from(subscribers)
                .where(subscribers.c.status == "confirmed",
                       zone_condition(zone, site_zone), *wanted, ~queued)) or 0)

    def expire(self, now: datetime | None = None) -> tuple[int, int]:
        """Give up on deliveries past their give-up time; return (skipped, failed) counts."""
        now = now or utcnow()
        late = deliveries.c.give_up_at <= now
        with self._write() as conn:
            digests = conn.execute(select(deliveries.c.id).where(
                deliveries.c.status.in_(("pending", "deferred")), late,
                deliveries.c.slug == DIGEST_SLUG)).scalars().all()
            skipped = conn.execute(
                update(deliveries).where(deliveries.c.status == "pending", late)
                .values(status="skipped", updated_at=now,
                        last_reply="not sent before its give-up time")).rowcount
            failed = conn.execute(
                update(deliveries).where(deliveries.c.status == "deferred", late)
                .values(status="failed", updated_at=now,
                        last_reply=func.coalesce(deliveries.c.last_reply, "")
                        + " (gave up)")).rowcount
            self._follow_digests(conn, digests, now)
        return int(skipped), int(failed)

    def claim(self, worker: str, limit: int, lease: timedelta,
              now: datetime | None = None) -> list[Claim]:
        """Take up to ``limit`` due deliveries for ``worker`` until the lease runs out.

        PostgreSQL: FOR UPDATE SKIP LOCKED, so concurrent workers take disjoint rows without
        waiting. SQLite: the transaction began IMMEDIATE, so claims run one at a time.
        """
        now = now or utcnow()
        values = {"now": now, "until": now + lease, "worker": worker}
        with self._write() as conn:
            # A dead worker's accepted messages are folded in first, so none is claimed again.
            self._settle(conn)
            claimed: list[int] = []
            for statement in _CLAIM_QUEUES:
                if len(claimed) == limit:
                    break
                claimed += conn.execute(statement, {**values, "limit": limit - len(claimed)}
                                        ).scalars()
            if not claimed:
                return []
            rows = conn.execute(_CLAIMED, {"ids": claimed}).all()
            gone = [row[0] for row in rows if row[-1] != "confirmed"]
            if gone:
                # Unsubscribing skips unsent rows already; this catches a row claimed in between.
                conn.execute(_DEPARTED, {"ids": gone, "worker": worker, "now": now})
            items = self._digest_items(conn, [(row[6], row[3]) for row in rows
                                              if row[1] == DIGEST_SLUG])
            # Tuples straight from the rows: 200 claims a batch, each a Claim per message.
            return [Claim(*row[:10], row[10] or "",
                          tuple(items.get((row[6], row[3]), ())) if items else (), row[11])
                    for row in rows if row[-1] == "confirmed"]

    @staticmethod
    def _digest_items(conn: Connection, digests: Sequence[tuple[int, date]]
                      ) -> dict[tuple[int, date], list[tuple[str, int, date]]]:
        # Read and marked in one statement (attempts 1: in a message): the digest's outcome
        # becomes theirs, never that of an appearance queued after this read.
        found: dict[tuple[int, date], list[tuple[str, int, date]]] = {}
        if not digests:
            return found
        rows = conn.execute(
            update(deliveries)
            .where(tuple_(deliveries.c.digest_on, deliveries.c.subscriber_id)
                   .in_([(day, sid) for sid, day in digests]),
                   deliveries.c.status == "pending",
                   deliveries.c.next_attempt_at == DIGEST_WAITING)
            .values(attempts=1)
            .returning(deliveries.c.subscriber_id, deliveries.c.digest_on, deliveries.c.slug,
                       deliveries.c.year, deliveries.c.event_on)).all()
        for sid, day, slug, year, on in sorted(rows, key=lambda r: (r[4], r[2])):
            found.setdefault((sid, day), []).append((slug, year, on))
        return found

    @staticmethod
    def _follow_digests(conn: Connection, ids: Sequence[int], now: datetime) -> None:
        """Give the appearances waiting in these digests their digest's final outcome."""
        if not ids:
            return
        done = conn.execute(
            select(deliveries.c.subscriber_id, deliveries.c.event_on, deliveries.c.status,
                   deliveries.c.last_code, deliveries.c.last_reply, deliveries.c.message_id,
                   deliveries.c.sent_at, deliveries.c.give_up_at)
            .where(deliveries.c.id.in_(ids), deliveries.c.slug == DIGEST_SLUG,
                   deliveries.c.status.in_(("sent", "failed", "skipped")))).all()
        if not done:
            return
        waiting = [deliveries.c.digest_on == bindparam("day"),
                   deliveries.c.subscriber_id == bindparam("sid"),
                   deliveries.c.status == "pending",
                   deliveries.c.next_attempt_at == DIGEST_WAITING]
        conn.execute(
            update(deliveries).where(*waiting, deliveries.c.attempts > 0)
            .values(status=bindparam("state"), last_code=bindparam("code"),
                    last_reply=bindparam("reply"), message_id=bindparam("mid"),
                    sent_at=bindparam("sent"), next_attempt_at=now, updated_at=now),
            [{"day": r.event_on, "sid": r.subscriber_id, "state": r.status,
              "code": r.last_code, "reply": r.last_reply, "mid": r.message_id,
              "sent": r.sent_at} for r in done])
        # Queued after the digest's message was made: they go alone.
        conn.execute(
            update(deliveries).where(*waiting, deliveries.c.attempts == 0)
            .values(digest_on=None, next_attempt_at=now, give_up_at=bindparam("give_up"),
                    updated_at=now),
            [{"day": r.event_on, "sid": r.subscriber_id, "give_up": r.give_up_at}
             for r in done])

    def skip_departed(self, ids: Iterable[int], worker: str, now: datetime) -> list[int]:
        """Skip this worker's claimed rows whose subscriber has left; return their ids."""
        id_list = list(ids)
        if not id_list:
            return []
        with self._write() as conn:
            return list(conn.execute(_DEPARTED, {"ids": id_list, "worker": worker, "now": now}
                                     ).scalars())

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
        if conn.dialect.name == "sqlite":
            digests = conn.execute(_SETTLED_DIGESTS_ALL).scalars().all()
            conn.execute(_SETTLE_ALL)
            folded = int(conn.execute(_FOLDED_ALL).rowcount)
            DeliveryStore._follow_digests(conn, digests, utcnow())
            return folded
        # SKIP LOCKED: two PostgreSQL workers settling at once fold disjoint records, and one
        # appended while this runs waits for the next settle rather than being deleted unseen.
        ids = conn.execute(_ACCEPTED_IDS).scalars().all()
        if ids:
            digests = conn.execute(_SETTLED_DIGESTS, {"ids": ids}).scalars().all()
            conn.execute(_SETTLE, {"ids": ids})
            conn.execute(_FOLDED, {"ids": ids})
            DeliveryStore._follow_digests(conn, digests, utcnow())
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
        statement = _FINISH_SENT if status == "sent" else _FINISH_HELD
        with self._write() as conn:
            changed = conn.execute(statement, params).rowcount
            if changed and bounce:
                owner = select(deliveries.c.subscriber_id).where(deliveries.c.id == delivery_id)
                mark_bounced(conn, int(conn.execute(owner).scalar_one()), reply, now)
            if changed and status != "deferred":
                # A digest's appearances take its outcome.
                self._follow_digests(conn, [delivery_id], now)
            return bool(changed)
