"""The ledger's tables and the migration steps that bring a database up to them."""

from __future__ import annotations

import secrets
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    Column,
    Connection,
    Date,
    DateTime,
    Dialect,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    TypeDecorator,
    UniqueConstraint,
    case,
    insert,
    inspect,
    or_,
    select,
    text,
    update,
)

from publisher.preferences import TAGS_COLUMN_LENGTH, YEARS_COLUMN_LENGTH
from publisher.subscriptions.fields import NAME_LENGTH

MIGRATION_CHUNK = 1000

class UtcDateTime(TypeDecorator[datetime]):
    """Store aware datetimes as naive UTC, the same on SQLite and PostgreSQL; read back as UTC."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        """Convert an aware datetime to naive UTC."""
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r}: the ledger needs aware instants")
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        """Attach UTC to a stored naive datetime."""
        return None if value is None else value.replace(tzinfo=UTC)


# SQLite only auto-increments an INTEGER PRIMARY KEY; PostgreSQL gets a 64-bit identity.
Id = BigInteger().with_variant(Integer(), "sqlite")

metadata = MetaData()

schema_migrations = Table(
    "schema_migrations", metadata,
    Column("version", Integer, primary_key=True, autoincrement=False),
    Column("applied_at", UtcDateTime, nullable=False),
)


def new_key() -> str:
    """Return a fresh random key (128 bits, URL-safe): it says nothing about whom it names."""
    return secrets.token_urlsafe(16)


def _subscribers_table(meta: MetaData) -> Table:
    """Return the subscribers table as version 1 created it."""
    return Table(
        "subscribers", meta,
        Column("id", Id, primary_key=True, autoincrement=True),
        Column("email", String(320), nullable=False, unique=True),
        Column("name", String(NAME_LENGTH)),
        Column("timezone", String(64)),
        Column("status", String(16), nullable=False),
        Column("created_at", UtcDateTime, nullable=False),
        Column("updated_at", UtcDateTime, nullable=False),
        Column("confirmed_at", UtcDateTime),
        Column("unsubscribed_at", UtcDateTime),
        CheckConstraint(
            "status IN ('pending', 'confirmed', 'unsubscribed', 'bounced')",
            name="ck_subscribers_status"),
        Index("ix_subscribers_status_zone", "status", "timezone"),
    )


subscribers = _subscribers_table(metadata)
# Version 3: the key an unsubscribe link names, so that the link carries nothing about the
# subscriber. Set for every row (the migration fills in the rows it finds), never changed, and
# kept while the address is suppressed, so every link ever sent keeps working.
subscribers.append_column(Column("unsubscribe_key", String(32), default=new_key))
_unsubscribe_key_index = Index("ux_subscribers_unsubscribe_key", subscribers.c.unsubscribe_key,
                               unique=True)

deliveries = Table(
    "deliveries", metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("slug", String(200), nullable=False),
    Column("year", Integer, nullable=False),
    Column("event_on", Date, nullable=False),
    Column("subscriber_id", Id, ForeignKey("subscribers.id", ondelete="CASCADE"),
           nullable=False),
    Column("status", String(16), nullable=False),
    Column("attempts", Integer, nullable=False),
    Column("due_at", UtcDateTime, nullable=False),
    Column("next_attempt_at", UtcDateTime, nullable=False),
    Column("give_up_at", UtcDateTime, nullable=False),
    Column("lease_owner", String(120)),
    Column("lease_until", UtcDateTime),
    Column("last_code", Integer),
    Column("last_reply", Text),
    Column("message_id", String(400)),
    Column("sent_at", UtcDateTime),
    Column("updated_at", UtcDateTime, nullable=False),
    UniqueConstraint("slug", "year", "subscriber_id", name="uq_deliveries_event_subscriber"),
    CheckConstraint(
        "status IN ('pending', 'sending', 'sent', 'deferred', 'failed', 'skipped')",
        name="ck_deliveries_status"),
    Index("ix_deliveries_due", "status", "next_attempt_at"),
    Index("ix_deliveries_subscriber", "subscriber_id"),
    # Replaced by a covering index in a later version (_index_event_states).
    Index("ix_deliveries_event_on", "event_on"),
)

state = Table(
    "state", metadata,
    Column("key", String(100), primary_key=True),
    Column("value", Text, nullable=False),
    Column("updated_at", UtcDateTime, nullable=False),
)


def _create_v1(conn: Connection) -> None:
    # Version 1 is the schema as first released. No released step is ever edited (a database at
    # version N only ever runs the steps after N): a later step ALTERs what exists.
    _subscribers_table(MetaData()).create(conn)
    for table in (deliveries, state):
        table.create(conn)


# Messages the server accepted, each appended in a transaction of its own as its 250 arrives,
# and folded into ``deliveries`` (marked sent) a batch at a time.
# send.py, loopback, 1 connection: 137-139 us of processor per message; 165-177 updating the row.
accepted = Table(
    "accepted", metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    # No foreign key: the append must stay cheap; folding skips deliveries that are gone.
    Column("delivery_id", Id, nullable=False),
    Column("code", Integer),
    Column("reply", Text),
    Column("message_id", String(400)),
    Column("accepted_at", UtcDateTime, nullable=False),
)


# A sign-up waiting for its confirmation, kept apart from the subscriber's status: a sign-up for
# an address that unsubscribed or bounced changes nothing until the emailed link is followed.
# The row stays after confirmation (``confirmed_at``), so that following the link twice is
# harmless; a new sign-up after that gets a new key, and the old links stop working.
signups = Table(
    "signups", metadata,
    Column("subscriber_id", Id, ForeignKey("subscribers.id", ondelete="CASCADE"),
           primary_key=True, autoincrement=False),
    Column("key", String(32), nullable=False, unique=True),
    Column("name", String(NAME_LENGTH)),
    Column("timezone", String(64)),
    Column("requested_at", UtcDateTime, nullable=False),
    Column("confirmed_at", UtcDateTime),
)


def _create_v3(conn: Connection) -> None:
    key = subscribers.c.unsubscribe_key
    conn.execute(text(f"ALTER TABLE subscribers ADD COLUMN {key.name} "
                      f"{key.type.compile(dialect=conn.dialect)}"))
    # The keys go into a scratch table in multi-row INSERTs, then into the subscribers in one
    # UPDATE: an UPDATE per row takes minutes on a large PostgreSQL list.
    fill = Table("unsubscribe_key_fill", MetaData(), Column("id", Id, primary_key=True),
                 Column("key", String(32), nullable=False), prefixes=["TEMPORARY"])
    fill.create(conn)
    last = 0
    while ids := conn.scalars(select(subscribers.c.id).where(subscribers.c.id > last)
                              .order_by(subscribers.c.id).limit(MIGRATION_CHUNK)).all():
        conn.execute(insert(fill), [{"id": i, "key": new_key()} for i in ids])
        last = ids[-1]
    conn.execute(update(subscribers).where(subscribers.c.id == fill.c.id)
                 .values(unsubscribe_key=fill.c.key))
    fill.drop(conn)
    _unsubscribe_key_index.create(conn)
    signups.create(conn)
    # Before version 3 a web sign-up turned an unsubscribed or bounced row back into "pending".
    # Such a row still has the time of its confirmation or unsubscription: suppress it again.
    conn.execute(update(subscribers).where(
        subscribers.c.status == "pending",
        or_(subscribers.c.confirmed_at.is_not(None), subscribers.c.unsubscribed_at.is_not(None)),
    ).values(status=case((subscribers.c.unsubscribed_at.is_not(None), "unsubscribed"),
                         else_="bounced")))


# Every bounce and complaint read back, each once: ``report_key`` names one recipient's line of
# one report, however often the report is read. The edition is copied from the delivery, so the
# rates per edition outlive it.
returns = Table(
    "returns", metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("report_key", String(64), nullable=False, unique=True),
    Column("received_at", UtcDateTime, nullable=False),
    Column("source", String(16), nullable=False),
    Column("kind", String(16), nullable=False),
    Column("email", String(320)),
    Column("status_code", String(16)),
    Column("diagnostic", Text),
    Column("matched_by", String(16)),
    Column("delivery_id", Id),
    Column("subscriber_id", Id, ForeignKey("subscribers.id", ondelete="CASCADE")),
    Column("slug", String(200)),
    Column("year", Integer),
    Column("effect", String(16)),
    CheckConstraint("kind IN ('hard', 'soft', 'complaint')", name="ck_returns_kind"),
    Index("ix_returns_subscriber", "subscriber_id", "kind", "received_at"),
    Index("ix_returns_edition", "slug", "year"),
)


def _index_event_states(conn: Connection) -> None:
    # make bench, million.py status: counts per event and state read this index alone (0.03 s for
    # 100,000 deliveries; 0.47 s through the one on the day, whose lookups it serves as well).
    # Written as SQL: an Index on the table would be made by version 1 on a new database.
    conn.execute(text("CREATE INDEX IF NOT EXISTS ix_deliveries_event_status "
                      "ON deliveries (event_on, slug, year, status)"))
    conn.execute(text("DROP INDEX IF EXISTS ix_deliveries_event_on"))


# Version 6: each subscriber's choices (publisher.preferences), NULL meaning the default.
_PREFERENCE_COLUMNS = (
    Column("years", String(YEARS_COLUMN_LENGTH)),
    Column("frequency", String(8)),
    Column("send_time", String(5)),
    Column("tags", String(TAGS_COLUMN_LENGTH)),
)
PREFERENCE_COLUMNS = tuple(column.name for column in _PREFERENCE_COLUMNS)
for _column in _PREFERENCE_COLUMNS:
    subscribers.append_column(_column)
    # A sign-up's choices wait with it, as its name and zone do, until the link is followed.
    signups.append_column(Column(_column.name, _column.type))
# An appearance waiting in a digest: the subscriber's local date whose digest carries it.
deliveries.append_column(Column("digest_on", Date))


def _add_column(conn: Connection, column: Column[Any]) -> None:
    # Versions 1 and 3 create their tables as they now stand, later columns included.
    if column.name not in {c["name"] for c in inspect(conn).get_columns(column.table.name)}:
        conn.execute(text(f"ALTER TABLE {column.table.name} ADD COLUMN {column.name} "
                          f"{column.type.compile(dialect=conn.dialect)}"))


def _add_preferences(conn: Connection) -> None:
    chosen = [signups.c[column.name] for column in _PREFERENCE_COLUMNS]
    for column in (*_PREFERENCE_COLUMNS, *chosen, deliveries.c.digest_on):
        _add_column(conn, column)
    # The groups of (zone, delivery time) are found through this index, a few lookups each.
    conn.execute(text("CREATE INDEX IF NOT EXISTS ix_subscribers_status_zone_time "
                      "ON subscribers (status, timezone, send_time)"))
    conn.execute(text("DROP INDEX IF EXISTS ix_subscribers_status_zone"))
    # A day's digests are made from, and settle, the appearances waiting for them.
    conn.execute(text("CREATE INDEX IF NOT EXISTS ix_deliveries_digest "
                      "ON deliveries (digest_on, subscriber_id) WHERE digest_on IS NOT NULL"))


# Version 7: when a confirmed subscriber last changed their zone or choices, so that the tick
# can queue the day's mail of those whose new delivery moment went by before they chose it.
subscribers.append_column(Column("changed_at", UtcDateTime))


def _add_changed_at(conn: Connection) -> None:
    _add_column(conn, subscribers.c.changed_at)
    # make bench, preferences.py "next tick after 1 in 997 moved": 86 ms for a million.
    # Led by the status, so that SQLite (no statistics) prefers it to the index on the groups.
    conn.execute(text("CREATE INDEX IF NOT EXISTS ix_subscribers_changed "
                      "ON subscribers (status, changed_at) WHERE changed_at IS NOT NULL"))


MIGRATIONS: tuple[Callable[[Connection], None], ...] = (
    _create_v1, accepted.create, _create_v3, returns.create, _index_event_states,
    _add_preferences, _add_changed_at)
