"""Bounces and complaints read back: each recorded once, applied to its subscriber, counted."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from sqlalchemy import Connection, and_, func, select, update
from sqlalchemy.sql.elements import ColumnElement

from publisher.calendar import utcnow
from publisher.ledger.database import Store
from publisher.ledger.schema import deliveries, returns, subscribers
from publisher.ledger.subscribers import mark_bounced, mark_unsubscribed
from publisher.ledger_reads import ReturnKind

ReturnEffect = Literal["bounced", "unsubscribed", "none"]


@dataclass(frozen=True)
class ReturnTarget:
    """Whom a bounce or complaint is about: a subscriber, and the delivery where known."""

    subscriber_id: int
    email: str
    delivery_id: int | None = None
    slug: str | None = None
    year: int | None = None
    sent_at: datetime | None = None


@dataclass(frozen=True)
class ReturnRow:
    """One return to record: what came back, from where, and whom it belongs to (or None)."""

    report_key: str
    source: str
    kind: ReturnKind
    email: str | None
    status_code: str | None
    diagnostic: str | None
    matched_by: str | None
    target: ReturnTarget | None


class ReturnStore(Store):
    """The statements on returns: find what came back, record it once, count per edition."""

    def _target(self, condition: ColumnElement[bool]) -> ReturnTarget | None:
        query = (select(deliveries.c.subscriber_id, subscribers.c.email, deliveries.c.id,
                        deliveries.c.slug, deliveries.c.year, deliveries.c.sent_at)
                 .join(subscribers, subscribers.c.id == deliveries.c.subscriber_id)
                 .where(condition))
        with self._read() as conn:
            row = conn.execute(query).first()
        return ReturnTarget(*row) if row is not None else None

    def find_delivery(self, delivery_id: int) -> ReturnTarget | None:
        """Return the delivery with this id and its subscriber, if it still exists."""
        return self._target(deliveries.c.id == delivery_id)

    def find_sent(self, slug: str, year: int, message_id: str) -> ReturnTarget | None:
        """Return the delivery of one edition that went out with this Message-ID, if any."""
        # The edition narrows the search to its own rows through the unique index.
        return self._target(and_(deliveries.c.slug == slug, deliveries.c.year == year,
                                 deliveries.c.message_id == message_id))

    def record_return(self, row: ReturnRow, *, soft_limit: int, soft_since: datetime,
                      now: datetime | None = None) -> ReturnEffect | None:
        """Record a bounce or complaint and apply it; None when it was recorded before."""
        now = now or utcnow()
        target = row.target
        values = {"report_key": row.report_key, "received_at": now, "source": row.source,
                  "kind": row.kind, "email": row.email, "status_code": row.status_code,
                  "diagnostic": row.diagnostic, "matched_by": row.matched_by}
        if target is not None:
            values.update(delivery_id=target.delivery_id, subscriber_id=target.subscriber_id,
                          slug=target.slug, year=target.year)
        with self._write() as conn:
            if not conn.execute(self._insert(returns).values(**values).on_conflict_do_nothing(
                    index_elements=["report_key"])).rowcount:
                return None
            effect: ReturnEffect = "none"
            if target is not None and self._about_this_subscription(conn, target):
                reason = f"{row.kind} {row.status_code or ''}: {row.diagnostic or ''}".strip()
                sid = target.subscriber_id
                if row.kind == "complaint":
                    changed = mark_unsubscribed(conn, subscribers.c.id == sid, now)[1]
                    effect = "unsubscribed" if changed else effect
                elif (row.kind == "hard"
                      or self._soft_returns(conn, sid, soft_since) >= soft_limit):
                    effect = "bounced" if mark_bounced(conn, sid, reason, now) else effect
            conn.execute(update(returns).where(returns.c.report_key == row.report_key)
                         .values(effect=effect))
            return effect

    @staticmethod
    def _about_this_subscription(conn: Connection, target: ReturnTarget) -> bool:
        confirmed_at = conn.scalar(select(subscribers.c.confirmed_at)
                                   .where(subscribers.c.id == target.subscriber_id))
        return target.sent_at is None or confirmed_at is None or confirmed_at <= target.sent_at

    @staticmethod
    def _soft_returns(conn: Connection, subscriber_id: int, since: datetime) -> int:
        # Deliveries, not reports: one message's delay warnings and its final failure count once.
        each = func.coalesce(returns.c.delivery_id, -returns.c.id)
        return int(conn.scalar(
            select(func.count(func.distinct(each)))
            .where(returns.c.subscriber_id == subscriber_id, returns.c.kind == "soft",
                   returns.c.received_at >= since)) or 0)
