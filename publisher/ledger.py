"""The delivery ledger: subscribers, deliveries and a little state, in SQLite or PostgreSQL.

Everything the publisher must remember between runs lives here, so that each (article, anniversary
year, subscriber) is sent once: a delivery row is inserted before anything is sent, claimed under a
lease, and marked sent only after the server accepted the message.
"""

from __future__ import annotations

import csv
import enum
import errno
import functools
import hashlib
import os
import re
import secrets
import sqlite3
import threading
import unicodedata
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TextIO, cast
from urllib.parse import quote
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    Connection,
    Date,
    DateTime,
    Dialect,
    Engine,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    TypeDecorator,
    UniqueConstraint,
    Update,
    UpdateBase,
    and_,
    bindparam,
    case,
    create_engine,
    delete,
    event,
    exists,
    func,
    insert,
    inspect,
    literal,
    or_,
    select,
    text,
    true,
    union_all,
    update,
)
from sqlalchemy.dialects import sqlite
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, DBAPIError
from sqlalchemy.pool import QueuePool, StaticPool
from sqlalchemy.sql.elements import ColumnElement

# Defined with the configuration (a light module for the command line); named here as before.
from publisher.calendar import utcnow
from publisher.config import SUBSCRIBER_STATUSES as SUBSCRIBER_STATUSES
from publisher.config import SubscriberStatus as SubscriberStatus
from publisher.errors import LedgerError, SubscriberError

if TYPE_CHECKING:
    from email_validator import ValidatedEmail

DeliveryStatus = Literal["pending", "sending", "sent", "deferred", "failed", "skipped"]
NAME_LENGTH = 200
BUSY_TIMEOUT_MS = 30_000
# Rows imported per transaction. Addresses (and unsubscribe keys) arrive in no order, so each
# transaction rewrites pages all over their indexes: a million rows wrote 12 GB of log in
# chunks of 5,000 and 2 GB in chunks of 50,000 (about 90 MB of memory). PostgreSQL takes at
# most 65,535 values in one statement, and a chunk's addresses are looked up in one.
IMPORT_CHUNK = 50_000
STREAM_CHUNK = 500
# Any constant works: it only has to be the same in every process that migrates this database.
_MIGRATION_LOCK = 0x70756201
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


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
_Id = BigInteger().with_variant(Integer(), "sqlite")

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
        Column("id", _Id, primary_key=True, autoincrement=True),
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
    Column("id", _Id, primary_key=True, autoincrement=True),
    Column("slug", String(200), nullable=False),
    Column("year", Integer, nullable=False),
    Column("event_on", Date, nullable=False),
    Column("subscriber_id", _Id, ForeignKey("subscribers.id", ondelete="CASCADE"),
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
    # Version 1 is the schema as first released. A later step must ALTER what exists (never edit
    # this one): databases at version 1 only ever run the steps after it.
    _subscribers_table(MetaData()).create(conn)
    for table in (deliveries, state):
        table.create(conn)


# Messages the server accepted, each appended in a transaction of its own as its 250 arrives,
# and folded into ``deliveries`` (marked sent) a batch at a time: appending a short row costs a
# fraction of updating an indexed one.
# send.py, loopback, 1 connection: 296-313 us of processor per message; 316-397 updating the row.
accepted = Table(
    "accepted", metadata,
    Column("id", _Id, primary_key=True, autoincrement=True),
    # No foreign key: the append must stay cheap; folding skips deliveries that are gone.
    Column("delivery_id", _Id, nullable=False),
    Column("code", Integer),
    Column("reply", Text),
    Column("message_id", String(400)),
    Column("accepted_at", UtcDateTime, nullable=False),
)


def _create_v2(conn: Connection) -> None:
    accepted.create(conn)


# A sign-up waiting for its confirmation, kept apart from the subscriber's status: a sign-up for
# an address that unsubscribed or bounced changes nothing until the emailed link is followed.
# The row stays after confirmation (``confirmed_at``), so that following the link twice is
# harmless; a new sign-up after that gets a new key, and the old links stop working.
signups = Table(
    "signups", metadata,
    Column("subscriber_id", _Id, ForeignKey("subscribers.id", ondelete="CASCADE"),
           primary_key=True, autoincrement=False),
    Column("key", String(32), nullable=False, unique=True),
    Column("name", String(NAME_LENGTH)),
    Column("timezone", String(64)),
    Column("requested_at", UtcDateTime, nullable=False),
    Column("confirmed_at", UtcDateTime),
)

MIGRATION_CHUNK = 1000


def _create_v3(conn: Connection) -> None:
    key = subscribers.c.unsubscribe_key
    conn.execute(text(f"ALTER TABLE subscribers ADD COLUMN {key.name} "
                      f"{key.type.compile(dialect=conn.dialect)}"))
    # The keys go into a scratch table in multi-row INSERTs, then into the subscribers in one
    # UPDATE: an UPDATE per row takes minutes on a large PostgreSQL list.
    fill = Table("unsubscribe_key_fill", MetaData(), Column("id", _Id, primary_key=True),
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
    Column("id", _Id, primary_key=True, autoincrement=True),
    Column("report_key", String(64), nullable=False, unique=True),
    Column("received_at", UtcDateTime, nullable=False),
    Column("source", String(16), nullable=False),
    Column("kind", String(16), nullable=False),
    Column("email", String(320)),
    Column("status_code", String(16)),
    Column("diagnostic", Text),
    Column("matched_by", String(16)),
    Column("delivery_id", _Id),
    Column("subscriber_id", _Id, ForeignKey("subscribers.id", ondelete="CASCADE")),
    Column("slug", String(200)),
    Column("year", Integer),
    Column("effect", String(16)),
    CheckConstraint("kind IN ('hard', 'soft', 'complaint')", name="ck_returns_kind"),
    Index("ix_returns_subscriber", "subscriber_id", "kind", "received_at"),
    Index("ix_returns_edition", "slug", "year"),
)


def _create_returns(conn: Connection) -> None:
    returns.create(conn)


def _index_event_states(conn: Connection) -> None:
    # The counts per event and state (`publisher status`) read this index alone instead of
    # every delivery row: 0.03 s for 100,000 deliveries, where the index on the day alone took
    # 0.47 s. It serves the day's lookups as the index it replaces did. Written as SQL rather
    # than an Index on the table, which version 1 would then create on a new database.
    conn.execute(text("CREATE INDEX IF NOT EXISTS ix_deliveries_event_status "
                      "ON deliveries (event_on, slug, year, status)"))
    conn.execute(text("DROP INDEX IF EXISTS ix_deliveries_event_on"))


MIGRATIONS: tuple[Callable[[Connection], None], ...] = (
    _create_v1, _create_v2, _create_v3, _create_returns, _index_event_states)


class AllZones(enum.Enum):
    """Marker for "every subscriber, whatever their time zone"."""

    ALL = "all"


ALL_ZONES = AllZones.ALL
ZoneChoice = str | None | AllZones


@dataclass(frozen=True)
class Subscriber:
    """One subscriber row."""

    id: int
    email: str
    name: str | None
    timezone: str | None
    status: SubscriberStatus
    created_at: datetime
    updated_at: datetime
    confirmed_at: datetime | None
    unsubscribed_at: datetime | None
    unsubscribe_key: str | None


@dataclass(frozen=True)
class PendingSignUp:
    """A sign-up waiting for the confirmation link: who asked, and the key the link names."""

    subscriber_id: int
    email: str
    name: str | None
    timezone: str | None
    key: str


@dataclass(frozen=True)
class SubscriberRow:
    """A validated subscriber record to be added: normalised address, clean name, known zone."""

    email: str
    name: str | None = None
    timezone: str | None = None
    status: SubscriberStatus = "confirmed"


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


@dataclass
class ImportReport:
    """What a CSV import did: rows added, rows already present, and every rejected row.

    ``suppressed`` lists the addresses left out because they unsubscribed or bounced (with
    their status); ``resubscribed`` counts those subscribed again on the operator's word.
    """

    added: int = 0
    unchanged: int = 0
    skipped_pending: int = 0
    resubscribed: int = 0
    suppressed: list[tuple[str, SubscriberStatus]] = field(default_factory=list)
    errors: list[SubscriberError] = field(default_factory=list)


AddOutcome = Literal["added", "confirmed", "updated", "unchanged", "resubscribed"]
RemoveOutcome = Literal["deleted", "suppressed"]
# Nothing is sent to these addresses, and only the person (by confirming a new sign-up) or the
# operator (by saying so explicitly) can subscribe them again.
SUPPRESSED: tuple[SubscriberStatus, ...] = ("unsubscribed", "bounced")
ReturnKind = Literal["hard", "soft", "complaint"]
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


@dataclass(frozen=True)
class ReturnCount:
    """How many deliveries of one edition came back as one kind (slug None: no edition known)."""

    slug: str | None
    year: int | None
    kind: ReturnKind
    count: int


# ---------------------------------------------------------------------------------------------
# Validation of subscriber input
# ---------------------------------------------------------------------------------------------


def normalise_address(value: str) -> str:
    """Check an address's syntax (no DNS) and return its unique, lower-case form."""
    text = value.strip()
    # Most addresses are plain ASCII: their local part needs only a pattern, and their domain
    # the full check once per import rather than once per address (email-validator's check of
    # a domain costs ~100 us, the pattern ~1 us). Anything else takes the full check.
    plain = _PLAIN_ADDRESS.fullmatch(text)
    if plain is not None and len(text) <= _MAX_ADDRESS:
        domain = _plain_domain(plain[2].lower())
        if domain is not None:
            return f"{plain[1]}@{domain}".lower()
    info = _validate(text)
    # An internationalised domain is stored in its ASCII (punycode) form, so one person cannot
    # subscribe twice under two spellings of one domain.
    return (info.ascii_email or info.normalized).lower()


# email-validator's dot-atom (RFC 5322) local part, and a domain of ASCII letters, digits,
# dots and hyphens: a subset of what email-validator accepts, left unchanged but for case.
_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_PLAIN_ADDRESS = re.compile(rf"({_ATEXT}(?:\.{_ATEXT})*)@([A-Za-z0-9.-]+)")
_MAX_ADDRESS = 254  # RFC 5321's limit, which email-validator applies to the whole address


@functools.lru_cache(maxsize=4096)
def _plain_domain(domain: str) -> str | None:
    # None: refused, or written in punycode (whose Unicode form may differ in length); the
    # full check then gives the verdict and its reason.
    try:
        info = _validate(f"a@{domain}")
    except SubscriberError:
        return None
    return info.ascii_domain if info.domain == info.ascii_domain else None


def _validate(text: str) -> ValidatedEmail:
    # Imported on first use: commands that read the ledger without checking an address
    # (`publisher status`) need not compile its Unicode tables.
    from email_validator import EmailNotValidError, validate_email

    try:
        # No SMTPUTF8: a non-ASCII local part cannot be written in the To header we send, so it
        # is refused here, where the operator or the subscriber sees why.
        return validate_email(text, check_deliverability=False, allow_smtputf8=False)
    except EmailNotValidError as exc:
        raise SubscriberError(str(exc), field="email") from None


def clean_name(value: str | None) -> str | None:
    """Return a display name without control characters or line breaks, or None when empty."""
    if value is None:
        return None
    flat = " ".join(_CONTROL.sub(" ", unicodedata.normalize("NFC", value)).split())
    if len(flat) > NAME_LENGTH:
        raise SubscriberError(f"longer than {NAME_LENGTH} characters", field="name")
    return flat or None


def check_timezone(value: str | None) -> str | None:
    """Return an IANA time zone name unchanged if it is known, None when empty."""
    if value is None or not value.strip():
        return None
    zone = value.strip()
    try:
        ZoneInfo(zone)
    except (ZoneInfoNotFoundError, ValueError):
        raise SubscriberError(f"unknown IANA time zone {zone!r}", field="timezone") from None
    return zone


def subscriber_row(email: str, name: str | None = None, timezone: str | None = None,
                   status: SubscriberStatus = "confirmed") -> SubscriberRow:
    """Validate one subscriber's fields; the error names the field at fault."""
    return SubscriberRow(normalise_address(email), clean_name(name), check_timezone(timezone),
                         status)


# ---------------------------------------------------------------------------------------------
# The ledger
# ---------------------------------------------------------------------------------------------


def _configure_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Take BEGIN away from the sqlite3 module so that the "begin" hook below decides it.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA journal_mode = WAL")
        cursor.execute("PRAGMA synchronous = NORMAL")
        cursor.execute("PRAGMA foreign_keys = ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        # A writer takes the write lock at BEGIN: two processes never both read a row as free
        # and then both claim it, and no deferred transaction dies upgrading its lock.
        writes = conn.get_execution_options().get("ledger_write", False)
        # Straight to the driver: this runs for every transaction, and needs no SQLAlchemy.
        conn.connection.driver_connection.execute(  # type: ignore[union-attr]
            "BEGIN IMMEDIATE" if writes else "BEGIN")


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
    delivery_id=bindparam("delivery_id", type_=_Id), code=bindparam("code", type_=Integer()),
    reply=bindparam("reply", type_=Text()), message_id=bindparam("message_id", type_=String()),
    accepted_at=bindparam("now", type_=UtcDateTime()))


def _unchanged(value: Any) -> Any:
    return value


class _HeldConnections:
    """One driver connection per thread, kept out of the pool for the per-message writes.

    Taking a connection from the pool and giving it back (with its rollback) for every message
    costs about as much as SQLite's own write.
    """

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._local = threading.local()
        self._lock = threading.Lock()
        self._open: list[Any] = []

    def get(self) -> Any:
        """Return this thread's connection, taking one from the pool the first time."""
        connection = getattr(self._local, "connection", None)
        if connection is None:
            try:
                connection = self.engine.raw_connection()
            # The pool hands out the driver's own error, not SQLAlchemy's wrapper.
            except (DBAPIError, self.engine.dialect.loaded_dbapi.Error) as exc:
                raise LedgerError(f"database error: {_first_line(exc)}") from exc
            self._local.connection = connection
            with self._lock:
                self._open.append(connection)
        return connection

    def discard(self, connection: Any) -> None:
        """Throw away a connection the server dropped; this thread's next write opens another."""
        self._local.connection = None
        with self._lock:
            self._open.remove(connection)
        connection.invalidate()

    def close(self) -> None:
        """Give every held connection back to the pool."""
        with self._lock:
            held, self._open = self._open, []
        for connection in held:
            with suppress(Exception):  # closing must not fail the ledger's own close
                connection.close()
        self._local = threading.local()


class _DriverStatement:
    """A statement compiled once for one database and run straight on the driver's connection.

    SQLAlchemy's per-call execution machinery costs more than SQLite takes to write one row;
    the ledger writes made for each message sent are the one place that skips it.
    """

    # send.py, loopback, 1 connection: 296-313 us of processor per message; 373-513 via SQLAlchemy.

    def __init__(self, statement: UpdateBase, connections: _HeldConnections) -> None:
        dialect = connections.engine.dialect
        compiled = statement.compile(dialect=dialect)
        self.dialect = dialect
        self.connections = connections
        self.sql = compiled.string
        self.positions = compiled.positiontup  # None when the driver takes names
        self.processors: dict[str, Callable[[Any], Any]] = {}
        # Values written into the statement itself (e.g. status = 'sending') are bound too.
        self.constants: dict[str, Any] = {}
        for bind, name in compiled.bind_names.items():
            process = bind.type.dialect_impl(dialect).bind_processor(dialect)
            if bind.required:
                self.processors[name] = process or _unchanged
            else:
                self.constants[name] = process(bind.value) if process else bind.value
        self.errors: type[Exception] = dialect.loaded_dbapi.Error

    def run(self, values: dict[str, Any]) -> int:
        """Run the statement in a transaction of its own; return how many rows it changed."""
        (arguments,) = self.arguments([values])
        return self._run(arguments)

    def arguments(self, rows: Iterable[dict[str, Any]], shared: dict[str, Any] | None = None
                  ) -> list[Any]:
        """Return the driver's parameters for each row; values ``shared`` by all are bound once.

        Binding a value (a timestamp, say) costs more than SQLite takes to insert a short row.
        """
        base = dict(self.constants)
        for name, value in (shared or {}).items():
            base[name] = self.processors[name](value)
        own = [(name, process) for name, process in self.processors.items() if name not in base]
        found: list[Any] = []
        for values in rows:
            params = dict(base)
            for name, process in own:
                params[name] = process(values[name])
            found.append(params if self.positions is None
                         else tuple(params[name] for name in self.positions))
        return found

    def _run(self, arguments: Any) -> int:
        for attempt in (1, 2):
            connection = self.connections.get()
            try:
                cursor = connection.cursor()
                try:
                    # SQLite runs a lone statement as its own transaction (the connection is
                    # in autocommit mode), and a write takes the write lock before it reads:
                    # the BEGIN IMMEDIATE the other writes need would add nothing.
                    cursor.execute(self.sql, arguments)
                    changed = int(cursor.rowcount)
                finally:
                    cursor.close()
                connection.commit()
                return changed
            except self.errors as exc:
                with suppress(self.errors):  # a lost connection cannot roll back
                    connection.rollback()
                if not self.dialect.is_disconnect(cast(Any, exc), connection.dbapi_connection,
                                                  None):
                    raise LedgerError(f"database error: {_first_line(exc)}") from exc
                self.connections.discard(connection)
                if attempt == 2:
                    raise LedgerError(f"database error: {_first_line(exc)}") from exc
                # The held connection died while idle (say, the server restarted): running
                # the same write again is safe, as it changes nothing a first run did.
        raise AssertionError("unreachable")


_MEMORY = (None, "", ":memory:")


def _write_problem(database: str | None) -> str | None:
    """Return why this process cannot write an SQLite file or its folder, or None."""
    if database in _MEMORY:
        return None
    assert database is not None
    for path in (os.path.dirname(os.path.abspath(database)), database):
        if os.path.exists(path) and not os.access(path, os.W_OK):
            read_only = os.statvfs(path).f_flag & os.ST_RDONLY
            return f"{path}: {os.strerror(errno.EROFS if read_only else errno.EACCES)}"
    return None


def _first_line(exc: BaseException) -> str:
    # SQLAlchemy appends a multi-line "background on this error" note; the first line says it.
    return str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]


def _describe(url: str) -> str:
    return make_url(url).render_as_string(hide_password=True)


class Ledger:
    """The database of subscribers and deliveries; every method is one short transaction."""

    def __init__(self, engine: Engine, *, read_only: bool = False) -> None:
        self.engine = engine
        self.dialect = engine.dialect.name
        self.read_only = read_only
        self._held = _HeldConnections(engine)
        self._finish_sent = _DriverStatement(_FINISH_SENT, self._held)
        self._finish_held = _DriverStatement(_FINISH_HELD, self._held)
        self._accept = _DriverStatement(_ACCEPT, self._held)

    @classmethod
    def open(cls, url: str, *, read_only: bool = False) -> Ledger:
        """Connect to ``url`` (SQLite or PostgreSQL) and apply any pending migrations.

        ``read_only``: the caller only reads, so an SQLite file this process may not write is
        opened read-only (no migration, nothing settled) rather than refused.
        """
        try:
            parsed = make_url(url)
        except ArgumentError as exc:
            raise LedgerError(f"invalid database URL {url!r}: {exc}") from None
        backend = parsed.get_backend_name()
        problem = _write_problem(parsed.database) if backend == "sqlite" else None
        if problem is not None and read_only:
            assert parsed.database is not None
            return cls._read_only_sqlite(parsed.database, url)
        if problem is not None:
            raise LedgerError(f"cannot open {_describe(url)} to write: {problem}")
        if backend == "sqlite":
            engine = cls._sqlite_engine(parsed.database)
        elif backend == "postgresql":
            try:
                engine = create_engine(url, pool_pre_ping=True)
            except ImportError as exc:
                raise LedgerError(f"{_describe(url)} needs a PostgreSQL driver ({exc.name}): "
                                  "pip install 'anniversary-publisher[postgres]'") from None
        else:
            raise LedgerError(f"unsupported database {backend!r} in {_describe(url)}: "
                              "use sqlite:/// or postgresql+psycopg://")
        ledger = cls(engine)
        try:
            ledger.migrate()
        except LedgerError as exc:
            engine.dispose()
            raise LedgerError(f"cannot open {_describe(url)}: {exc}") from None
        return ledger

    @classmethod
    def _read_only_sqlite(cls, database: str, url: str) -> Ledger:
        # The last connection to close removes the write-ahead log: without one nobody is
        # writing, and SQLite may read the file as immutable, needing no -shm file (which it
        # could not create here). With one, it reads through the -shm its writer keeps.
        options = "mode=ro" if os.path.exists(f"{database}-wal") else "mode=ro&immutable=1"
        uri = f"file:{quote(os.path.abspath(database))}?{options}"

        def connect() -> sqlite3.Connection:
            return sqlite3.connect(uri, uri=True, check_same_thread=False,
                                   timeout=BUSY_TIMEOUT_MS / 1000)

        engine = create_engine("sqlite://", creator=connect, poolclass=QueuePool)
        _configure_sqlite(engine)
        ledger = cls(engine, read_only=True)
        try:
            version = ledger.schema_version()
            if version != len(MIGRATIONS):
                raise LedgerError(f"its schema is at version {version} and this publisher "
                                  f"needs {len(MIGRATIONS)}: run a command that writes where "
                                  "the database can be written")
        except LedgerError as exc:
            engine.dispose()
            raise LedgerError(f"cannot open {_describe(url)} read-only: {exc}") from None
        return ledger

    @staticmethod
    def in_memory(url: str) -> bool:
        """Return whether ``url`` names an SQLite database that lives in one connection."""
        parsed = make_url(url)
        return parsed.get_backend_name() == "sqlite" and parsed.database in _MEMORY

    @staticmethod
    def _sqlite_engine(database: str | None) -> Engine:
        memory = database in _MEMORY
        if not memory:
            assert database is not None
            try:
                Path(database).parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise LedgerError(f"cannot create the folder of {database}: {exc.strerror}"
                                  ) from None
        engine = create_engine(
            f"sqlite:///{database}" if not memory else "sqlite://",
            connect_args={"check_same_thread": False, "timeout": BUSY_TIMEOUT_MS / 1000},
            # An in-memory database exists only inside its one connection.
            poolclass=StaticPool if memory else None,
        )
        _configure_sqlite(engine)
        return engine

    def close(self) -> None:
        """Release every pooled connection."""
        self._held.close()
        self.engine.dispose()

    def __enter__(self) -> Ledger:
        """Return the ledger itself, closed when the block ends."""
        return self

    def __exit__(self, *_exc: object) -> None:
        """Close the ledger."""
        self.close()

    @contextmanager
    def _write(self) -> Iterator[Connection]:
        with self._transaction() as conn:
            yield conn

    @contextmanager
    def _transaction(self) -> Iterator[Connection]:
        try:
            # preserve_rowcount: SQLAlchemy drops an INSERT's row count unless asked to keep it.
            with self.engine.connect().execution_options(
                    ledger_write=True, preserve_rowcount=True) as conn, conn.begin():
                yield conn
        except DBAPIError as exc:
            raise LedgerError(f"database error: {_first_line(exc)}") from exc

    @contextmanager
    def _read(self) -> Iterator[Connection]:
        try:
            with self.engine.connect() as conn, conn.begin():
                yield conn
        except DBAPIError as exc:
            raise LedgerError(f"database error: {_first_line(exc)}") from exc

    def _insert(self, table: Table) -> Any:
        if self.dialect == "postgresql":
            # Imported here: the dialect takes a tenth of a second to import, which every
            # command opening an SQLite ledger (`publisher status`, say) would pay for nothing.
            from sqlalchemy.dialects import postgresql

            return postgresql.insert(table)
        return sqlite.insert(table)

    # -- schema --------------------------------------------------------------------------------

    def migrate(self) -> int:
        """Apply the migration steps not yet recorded; return the schema version."""
        # Every command opens the ledger, many while another process writes: looking without
        # the write lock first spares them waiting for a long write (queueing a million
        # deliveries) to end.
        with suppress(LedgerError):  # unreadable so: the write below says why
            if self._applied() == set(range(1, len(MIGRATIONS) + 1)):
                return len(MIGRATIONS)
        with self._write() as conn:
            if self.dialect == "postgresql":
                # Two processes opening a fresh database at once: the second waits here, then
                # finds the steps recorded. (SQLite's BEGIN IMMEDIATE already serialises them.)
                conn.execute(select(func.pg_advisory_xact_lock(_MIGRATION_LOCK)))
            schema_migrations.create(conn, checkfirst=True)
            done = set(conn.scalars(select(schema_migrations.c.version)))
            newest = max(done, default=0)
            if newest > len(MIGRATIONS):
                raise LedgerError(f"the database is at schema version {newest}, newer than this "
                                  f"publisher knows ({len(MIGRATIONS)}): upgrade the publisher")
            for version, step in enumerate(MIGRATIONS, start=1):
                if version not in done:
                    step(conn)
                    conn.execute(schema_migrations.insert().values(
                        version=version, applied_at=utcnow()))
            return len(MIGRATIONS)

    def _applied(self) -> set[int]:
        with self._read() as conn:
            if not inspect(conn).has_table(schema_migrations.name):
                return set()
            return set(conn.scalars(select(schema_migrations.c.version)))

    def schema_version(self) -> int:
        """Return the newest applied migration."""
        with self._read() as conn:
            return int(conn.scalar(select(func.max(schema_migrations.c.version))) or 0)

    # -- subscribers ---------------------------------------------------------------------------

    def _subscriber_where(self, conn: Connection, condition: ColumnElement[bool]
                          ) -> Subscriber | None:
        row = conn.execute(select(subscribers).where(condition)).mappings().first()
        return Subscriber(**row) if row is not None else None

    def get_subscriber(self, subscriber_id: int) -> Subscriber | None:
        """Return the subscriber with this id, if any."""
        with self._read() as conn:
            return self._subscriber_where(conn, subscribers.c.id == subscriber_id)

    def find_subscriber(self, email: str) -> Subscriber | None:
        """Return the subscriber with this address (in any spelling that normalises to it)."""
        address = normalise_address(email)
        with self._read() as conn:
            return self._subscriber_where(conn, subscribers.c.email == address)

    def add_subscriber(self, row: SubscriberRow, *, resubscribe: bool = False,
                       now: datetime | None = None) -> tuple[Subscriber, AddOutcome]:
        """Add a subscriber as confirmed (the operator vouches), or update a known one.

        An address that unsubscribed or bounced stays so unless ``resubscribe`` is given.
        """
        now = now or utcnow()
        with self._write() as conn:
            inserted = conn.execute(self._insert(subscribers).values(
                email=row.email, name=row.name, timezone=row.timezone, status="confirmed",
                created_at=now, updated_at=now, confirmed_at=now,
            ).on_conflict_do_nothing(index_elements=["email"])).rowcount
            current = self._subscriber_where(conn, subscribers.c.email == row.email)
            assert current is not None
            if inserted:
                return current, "added"
            if current.status in ("unsubscribed", "bounced") and not resubscribe:
                raise SubscriberError(
                    f"{row.email} is {current.status} (since "
                    f"{current.updated_at:%Y-%m-%d}); pass --resubscribe to add it again",
                    field="email")
            changes: dict[str, Any] = {}
            if row.name is not None and row.name != current.name:
                changes["name"] = row.name
            if row.timezone is not None and row.timezone != current.timezone:
                changes["timezone"] = row.timezone
            outcome: AddOutcome = "updated" if changes else "unchanged"
            if current.status != "confirmed":
                outcome = "confirmed" if current.status == "pending" else "resubscribed"
                changes.update(status="confirmed", confirmed_at=now, unsubscribed_at=None)
            if not changes:
                return current, outcome
            conn.execute(update(subscribers).where(subscribers.c.id == current.id)
                         .values(updated_at=now, **changes))
            updated = self._subscriber_where(conn, subscribers.c.id == current.id)
            assert updated is not None
            return updated, outcome

    @functools.cached_property
    def _insert_new(self) -> _DriverStatement:
        # Compiled on first use: most commands never import.
        status = bindparam("status", type_=String())
        now = bindparam("now", type_=UtcDateTime())
        statement: UpdateBase = self._insert(subscribers).values(
            email=bindparam("email", type_=String()), name=bindparam("name", type_=String()),
            timezone=bindparam("timezone", type_=String()), status=status,
            # Named here: the column's default is made by SQLAlchemy, which this bypasses.
            unsubscribe_key=bindparam("unsubscribe_key", type_=String()),
            created_at=now, updated_at=now, confirmed_at=case((status == "confirmed", now)),
            unsubscribed_at=case((or_(status == "unsubscribed", status == "bounced"), now)),
        ).on_conflict_do_nothing(index_elements=["email"])
        return _DriverStatement(statement, self._held)

    def insert_new(self, rows: Sequence[SubscriberRow], now: datetime | None = None) -> int:
        """Insert the rows whose address is not known yet; return how many were new."""
        if not rows:
            return 0
        # Straight to the driver, one statement run for every row (executemany) with the
        # timestamp bound once: through SQLAlchemy, binding each row's values cost three times
        # SQLite's own work.
        statement = self._insert_new
        arguments = statement.arguments(
            ({"email": r.email, "name": r.name, "timezone": r.timezone, "status": r.status,
              "unsubscribe_key": new_key()} for r in rows), {"now": now or utcnow()})
        with self._write() as conn:
            return int(conn.exec_driver_sql(statement.sql, arguments).rowcount)

    def add_pending(self, row: SubscriberRow, now: datetime | None = None
                    ) -> PendingSignUp | None:
        """Record a sign-up until its link is followed; None for an address already confirmed.

        A new address is stored as pending. An address that unsubscribed or bounced keeps that
        status, and its name and zone, until the link is followed. A sign-up while another is
        waiting keeps that one's key, so every link sent for it works until it expires.
        """
        now = now or utcnow()
        with self._write() as conn:
            conn.execute(self._insert(subscribers).values(
                email=row.email, name=row.name, timezone=row.timezone, status="pending",
                created_at=now, updated_at=now,
            ).on_conflict_do_nothing(index_elements=["email"]))
            current = self._subscriber_where(conn, subscribers.c.email == row.email)
            assert current is not None
            if current.status == "confirmed":
                return None
            if current.status == "pending":
                conn.execute(update(subscribers).where(subscribers.c.id == current.id)
                             .values(name=row.name, timezone=row.timezone, updated_at=now))
            statement = self._insert(signups).values(
                subscriber_id=current.id, key=new_key(), name=row.name, timezone=row.timezone,
                requested_at=now, confirmed_at=None)
            conn.execute(statement.on_conflict_do_update(index_elements=["subscriber_id"], set_={
                "key": case((signups.c.confirmed_at.is_(None), signups.c.key),
                            else_=statement.excluded.key),
                "name": row.name, "timezone": row.timezone, "requested_at": now,
                "confirmed_at": None}))
            key = conn.execute(select(signups.c.key)
                               .where(signups.c.subscriber_id == current.id)).scalar_one()
            return PendingSignUp(current.id, current.email, row.name, row.timezone, key)

    def find_sign_up(self, key: str) -> Subscriber | None:
        """Return the subscriber whose sign-up (waiting or done) a confirmation link names."""
        with self._read() as conn:
            owner = select(signups.c.subscriber_id).where(signups.c.key == key)
            return self._subscriber_where(conn, subscribers.c.id == owner.scalar_subquery())

    def confirm_sign_up(self, key: str, now: datetime | None = None) -> Subscriber | None:
        """Apply the sign-up a confirmation link names; None when none is left to apply.

        The subscriber becomes confirmed with the name and zone given at sign-up, whatever
        their status was. Following the link again returns them unchanged while confirmed.
        """
        now = now or utcnow()
        with self._write() as conn:
            found = conn.execute(select(signups).where(signups.c.key == key)).first()
            if found is None:
                return None
            if found.confirmed_at is None:
                conn.execute(update(subscribers).where(subscribers.c.id == found.subscriber_id)
                             .values(status="confirmed", name=found.name,
                                     timezone=found.timezone, confirmed_at=now,
                                     unsubscribed_at=None, updated_at=now))
                conn.execute(update(signups).where(signups.c.key == key)
                             .values(confirmed_at=now))
            subscriber = self._subscriber_where(conn, subscribers.c.id == found.subscriber_id)
            if subscriber is None or subscriber.status != "confirmed":
                return None  # they left after confirming: only a new sign-up brings them back
            return subscriber

    def confirm(self, subscriber_id: int, email: str, now: datetime | None = None
                ) -> Subscriber | None:
        """Confirm a pending sign-up by id and address (links made before sign-up keys).

        Idempotent; None when id and address do not match. An address that unsubscribed or
        bounced is left so: only a sign-up's own link subscribes it again.
        """
        now = now or utcnow()
        with self._write() as conn:
            match = and_(subscribers.c.id == subscriber_id, subscribers.c.email == email)
            conn.execute(update(subscribers).where(match, subscribers.c.status == "pending")
                         .values(status="confirmed", confirmed_at=now, updated_at=now))
            return self._subscriber_where(conn, match)

    def find_unsubscribe_key(self, key: str) -> Subscriber | None:
        """Return the subscriber an unsubscribe link's key names, if any."""
        with self._read() as conn:
            return self._subscriber_where(conn, subscribers.c.unsubscribe_key == key)

    def unsubscribe_link(self, *, key: str | None = None, email: str | None = None,
                         now: datetime | None = None) -> tuple[Subscriber | None, bool]:
        """Unsubscribe whom a link names: by its key, or by address (links made before keys).

        Return the subscriber (None when nobody matches) and whether this changed anything.
        """
        if (key is None) == (email is None):
            raise ValueError("give exactly one of key and email")
        match = (subscribers.c.unsubscribe_key == key if key is not None
                 else subscribers.c.email == email)
        with self._write() as conn:
            return self._unsubscribe(conn, match, now or utcnow())

    def unsubscribe(self, subscriber_id: int, email: str, now: datetime | None = None
                    ) -> Subscriber | None:
        """Unsubscribe by id and address (idempotent); None when they do not match."""
        match = and_(subscribers.c.id == subscriber_id, subscribers.c.email == email)
        with self._write() as conn:
            return self._unsubscribe(conn, match, now or utcnow())[0]

    def _unsubscribe(self, conn: Connection, match: ColumnElement[bool], now: datetime
                     ) -> tuple[Subscriber | None, bool]:
        found = self._subscriber_where(conn, match)
        if found is None or found.status == "unsubscribed":
            return found, False
        conn.execute(update(subscribers).where(subscribers.c.id == found.id)
                     .values(status="unsubscribed", unsubscribed_at=now, updated_at=now))
        self._skip_unsent(conn, found.id, "unsubscribed", now)
        # The latest word is theirs: a sign-up still waiting for its link no longer counts.
        conn.execute(delete(signups).where(signups.c.subscriber_id == found.id,
                                           signups.c.confirmed_at.is_(None)))
        return self._subscriber_where(conn, subscribers.c.id == found.id), True

    def bounce(self, subscriber_id: int, reason: str, now: datetime | None = None) -> bool:
        """Mark a confirmed subscriber bounced and skip their unsent mail; return if changed."""
        with self._write() as conn:
            return self._bounce(conn, subscriber_id, reason, now or utcnow())

    def _bounce(self, conn: Connection, subscriber_id: int, reason: str, now: datetime
                ) -> bool:
        changed = conn.execute(update(subscribers)
                               .where(subscribers.c.id == subscriber_id,
                                      subscribers.c.status == "confirmed")
                               .values(status="bounced", updated_at=now)).rowcount
        if changed:
            self._skip_unsent(conn, subscriber_id, f"subscriber bounced: {reason}", now)
        return bool(changed)

    def _skip_unsent(self, conn: Connection, subscriber_id: int, reason: str,
                     now: datetime) -> None:
        conn.execute(
            update(deliveries)
            .where(deliveries.c.subscriber_id == subscriber_id,
                   deliveries.c.status.in_(("pending", "deferred")))
            .values(status="skipped", last_reply=reason, updated_at=now))

    def remove(self, email: str, *, forget: bool = False, now: datetime | None = None
               ) -> RemoveOutcome | None:
        """Remove an address: its details and delivery history go, its suppression stays.

        An address that was ever subscribed is kept, without name or zone, as unsubscribed (or
        bounced), so that no import or unconfirmed sign-up adds it back; a sign-up never
        confirmed, or any address with ``forget``, is deleted outright. None when unknown.
        """
        address = normalise_address(email)
        now = now or utcnow()
        with self._write() as conn:
            found = self._subscriber_where(conn, subscribers.c.email == address)
            if found is None:
                return None
            conn.execute(delete(deliveries).where(deliveries.c.subscriber_id == found.id))
            conn.execute(delete(signups).where(signups.c.subscriber_id == found.id))
            if forget or found.status == "pending":
                conn.execute(delete(subscribers).where(subscribers.c.id == found.id))
                return "deleted"
            conn.execute(update(subscribers).where(subscribers.c.id == found.id).values(
                status="bounced" if found.status == "bounced" else "unsubscribed",
                name=None, timezone=None, updated_at=now,
                unsubscribed_at=found.unsubscribed_at or now))
            return "suppressed"

    def purge_pending(self, older_than: timedelta, now: datetime | None = None) -> int:
        """Drop sign-ups left unconfirmed for longer than ``older_than``; return how many.

        An address never confirmed is deleted; an address that unsubscribed or bounced only
        loses the sign-up, and stays suppressed.
        """
        cutoff = (now or utcnow()) - older_than
        stale = select(subscribers.c.id).where(subscribers.c.status == "pending",
                                               subscribers.c.updated_at < cutoff)
        with self._write() as conn:
            conn.execute(delete(deliveries).where(deliveries.c.subscriber_id.in_(stale)))
            purged = conn.execute(delete(subscribers).where(subscribers.c.id.in_(stale))).rowcount
            # Confirmed sign-ups are kept only so that a second click on their link is harmless.
            dropped = conn.execute(delete(signups).where(signups.c.requested_at < cutoff,
                                                         signups.c.confirmed_at.is_(None)))
            conn.execute(delete(signups).where(signups.c.requested_at < cutoff))
            return int(purged) + int(dropped.rowcount)

    def statuses_of(self, emails: Iterable[str]) -> dict[str, SubscriberStatus]:
        """Return the status of each of these (normalised) addresses that is known."""
        with self._read() as conn:
            rows = conn.execute(select(subscribers.c.email, subscribers.c.status)
                                .where(subscribers.c.email.in_(list(emails)))).all()
        return {row[0]: row[1] for row in rows}

    def iter_subscribers(self, status: SubscriberStatus | None = None,
                         zone: ZoneChoice = ALL_ZONES, site_zone: str = "UTC"
                         ) -> Iterator[Subscriber]:
        """Yield subscribers by address (of one status, one zone group), fetched in chunks."""
        query = (select(subscribers).where(self._zone_condition(zone, site_zone))
                 .order_by(subscribers.c.email))
        if status is not None:
            query = query.where(subscribers.c.status == status)
        with self.engine.connect() as conn, conn.begin():
            result = conn.execution_options(yield_per=STREAM_CHUNK).execute(query)
            for row in result.mappings():
                yield Subscriber(**row)

    def subscriber_counts(self) -> dict[SubscriberStatus, int]:
        """Return how many subscribers are in each state."""
        with self._read() as conn:
            rows = conn.execute(select(subscribers.c.status, func.count())
                                .group_by(subscribers.c.status)).all()
        counts: dict[SubscriberStatus, int] = dict.fromkeys(SUBSCRIBER_STATUSES, 0)
        counts.update({row[0]: int(row[1]) for row in rows})
        return counts

    def subscriber_zones(self) -> list[str | None]:
        """Return the distinct time zones of confirmed subscribers (None: the site's zone)."""
        confirmed = subscribers.c.status == "confirmed"
        # Zone after zone, each the smallest after the one before, through the index on
        # (status, zone): a few lookups per zone, where DISTINCT reads every subscriber's entry
        # (0.13 s for a million, at each of the daemon's ticks).
        first = select(func.min(subscribers.c.timezone)).where(confirmed)
        zones = first.cte("zones", recursive=True)
        after = (select(func.min(subscribers.c.timezone))
                 .where(confirmed, subscribers.c.timezone > zones.c[0]).scalar_subquery())
        zones = zones.union_all(select(after).where(zones.c[0].is_not(None)))
        without = exists().where(confirmed, subscribers.c.timezone.is_(None))
        with self._read() as conn:
            found: list[str | None] = list(conn.scalars(
                select(zones.c[0]).where(zones.c[0].is_not(None))))
            if conn.scalar(select(without)):
                found.append(None)
            return found

    # -- deliveries ----------------------------------------------------------------------------

    @staticmethod
    def _zone_condition(zone: ZoneChoice, site_zone: str) -> ColumnElement[bool]:
        if zone is ALL_ZONES:
            return true()
        target = zone or site_zone
        condition: ColumnElement[bool] = subscribers.c.timezone == target
        if target == site_zone:
            condition = or_(condition, subscribers.c.timezone.is_(None))
        return condition

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
        ).where(subscribers.c.status == "confirmed", self._zone_condition(zone, site_zone)
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
                       self._zone_condition(zone, site_zone), ~queued)) or 0)

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
                self._bounce(conn, int(conn.execute(owner).scalar_one()), reply, now)
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

    # -- locks shared by every process on the database -------------------------------------------

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

    def get_state(self, key: str) -> str | None:
        """Return a stored value, or None."""
        with self._read() as conn:
            value = conn.scalar(select(state.c.value).where(state.c.key == key))
            return None if value is None else str(value)

    def set_state(self, key: str, value: str, now: datetime | None = None) -> None:
        """Store a value under ``key``, replacing any previous one."""
        now = now or utcnow()
        statement = self._insert(state).values(key=key, value=value, updated_at=now)
        statement = statement.on_conflict_do_update(
            index_elements=["key"], set_={"value": value, "updated_at": now})
        with self._write() as conn:
            conn.execute(statement)

    # -- returns: bounces and complaints read back ---------------------------------------------

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
        """Record a bounce or complaint and apply it; None when it was recorded before.

        A hard bounce marks the subscriber bounced, a complaint unsubscribes them, and soft
        bounces do as a hard one once ``soft_limit`` deliveries came back soft since
        ``soft_since``. A return about a message sent before the person last confirmed is
        recorded and changes nothing.
        """
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
                    changed = self._unsubscribe(conn, subscribers.c.id == sid, now)[1]
                    effect = "unsubscribed" if changed else effect
                elif (row.kind == "hard"
                      or self._soft_returns(conn, sid, soft_since) >= soft_limit):
                    effect = "bounced" if self._bounce(conn, sid, reason, now) else effect
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

    def return_counts(self) -> list[ReturnCount]:
        """Return how many deliveries of each edition came back, per kind."""
        per_edition = (select(returns.c.slug, returns.c.year, returns.c.kind,
                              func.count(func.distinct(returns.c.delivery_id)))
                       .where(returns.c.slug.is_not(None))
                       .group_by(returns.c.slug, returns.c.year, returns.c.kind))
        elsewhere = (select(returns.c.kind, func.count()).where(returns.c.slug.is_(None))
                     .group_by(returns.c.kind))
        with self._read() as conn:
            if self.read_only and not inspect(conn).has_table(returns.name):
                return []  # a database nobody here may migrate, from before returns were kept
            counts = [ReturnCount(r[0], r[1], r[2], int(r[3])) for r in conn.execute(per_edition)]
            counts += [ReturnCount(None, None, r[0], int(r[1])) for r in conn.execute(elsewhere)]
        return counts


# ---------------------------------------------------------------------------------------------
# CSV import and export
# ---------------------------------------------------------------------------------------------

IMPORT_COLUMNS = ("email", "name", "timezone")
EXPORT_COLUMNS = ("email", "name", "timezone", "status", "created_at", "confirmed_at",
                  "unsubscribed_at")
# An export read back keeps who unsubscribed or bounced: those rows stay suppressed.
_IMPORT_STATUSES: dict[str, SubscriberStatus | None] = {
    "": "confirmed", "confirmed": "confirmed", "unsubscribed": "unsubscribed",
    "bounced": "bounced", "pending": None,
}


# A cell starting with one of these is a formula to a spreadsheet (OWASP, "CSV Injection"):
# the export puts a single quote before it, which spreadsheets show as text, and the import
# takes one leading quote away. A value starting with a quote gets one too, so both round-trip.
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r", "'")


def as_cell(value: str) -> str:
    """Return a value as a CSV cell that no spreadsheet runs as a formula."""
    return f"'{value}" if value.startswith(_FORMULA_STARTS) else value


def from_cell(cell: str) -> str:
    """Return the value of a CSV cell written by :func:`as_cell`."""
    return cell[1:] if cell.startswith("'") else cell


def _header(first: list[str]) -> list[str] | None:
    names = [cell.strip().lower() for cell in first]
    return names if "email" in names else None


def read_subscriber_csv(path: Path) -> Iterator[SubscriberRow | SubscriberError | None]:
    """Yield a row, or the error of a bad one, per record of a subscriber CSV; None: pending.

    Columns are ``email,name,timezone`` in that order, or named by a header row; the columns of
    ``subscribers export`` are understood too.
    """
    try:
        handle = path.open(encoding="utf-8-sig", newline="")
    except OSError as exc:
        raise SubscriberError(f"cannot read: {exc.strerror}", path=path) from None
    with handle:
        reader = csv.reader(handle)
        columns: list[str] = list(IMPORT_COLUMNS)
        line = 1
        try:
            for number, record in enumerate(reader):
                if not any(cell.strip() for cell in record):
                    line = reader.line_num + 1
                    continue
                if number == 0 and (named := _header(record)) is not None:
                    unknown = [c for c in named if c and c not in EXPORT_COLUMNS]
                    if unknown:
                        raise SubscriberError(
                            f"unknown column (known: {', '.join(EXPORT_COLUMNS)})",
                            path=path, line=1, field=unknown[0])
                    columns = named
                    line = reader.line_num + 1
                    continue
                yield _parse_record(record, columns, path, line)
                line = reader.line_num + 1
        except UnicodeDecodeError as exc:
            raise SubscriberError(f"not UTF-8 text ({exc.reason})", path=path, line=line,
                                  field="encoding") from None
        except csv.Error as exc:
            raise SubscriberError(f"malformed CSV: {exc}", path=path, line=line) from None


def _parse_record(record: list[str], columns: list[str], path: Path, line: int
                  ) -> SubscriberRow | SubscriberError | None:
    if len(record) > len(columns):
        return SubscriberError(f"expected at most {len(columns)} columns, got {len(record)}",
                               path=path, line=line)
    values = dict(zip(columns, map(from_cell, record), strict=False))
    status_text = values.get("status", "").strip().lower()
    if status_text not in _IMPORT_STATUSES:
        return SubscriberError(f"unknown status {status_text!r}", path=path, line=line,
                               field="status")
    status = _IMPORT_STATUSES[status_text]
    if status is None:
        return None
    try:
        return subscriber_row(values.get("email", ""), values.get("name"),
                              values.get("timezone"), status)
    except SubscriberError as exc:
        return SubscriberError(exc.message, path=path, line=line, field=exc.field)


def import_csv(ledger: Ledger, path: Path, now: datetime | None = None, *,
               include_suppressed: bool = False) -> ImportReport:
    """Import a subscriber CSV: good rows become confirmed subscribers, bad rows are reported.

    Known addresses are left exactly as they are, so importing the same file again changes
    nothing; one that unsubscribed or bounced is reported as suppressed, and subscribed again
    only with ``include_suppressed``. Rows go to the database in chunks: the file is never
    held in memory.
    """
    report = ImportReport()
    chunk: list[SubscriberRow] = []

    def flush() -> None:
        known = ledger.statuses_of(row.email for row in chunk) if chunk else {}
        new: list[SubscriberRow] = []
        for row in chunk:
            status = known.get(row.email)
            if status is None:
                new.append(row)
            elif status not in SUPPRESSED or row.status != "confirmed":
                report.unchanged += 1
            elif include_suppressed:
                ledger.add_subscriber(row, resubscribe=True, now=now)
                report.resubscribed += 1
            else:
                report.suppressed.append((row.email, status))
        added = ledger.insert_new(new, now)
        report.added += added
        report.unchanged += len(new) - added
        chunk.clear()

    try:
        for item in read_subscriber_csv(path):
            if item is None:
                report.skipped_pending += 1
            elif isinstance(item, SubscriberError):
                report.errors.append(item)
            else:
                chunk.append(item)
                if len(chunk) >= IMPORT_CHUNK:
                    flush()
    except SubscriberError as exc:
        # The rest of the file cannot be read; what was read before still counts.
        report.errors.append(exc)
    flush()
    return report


def _iso(value: datetime | None) -> str:
    return value.isoformat(timespec="seconds") if value is not None else ""


def export_csv(ledger: Ledger, out: TextIO, status: SubscriberStatus | None = None) -> int:
    """Write subscribers as CSV (a header, then one row each) while reading them; return count."""
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(EXPORT_COLUMNS)
    count = 0
    for s in ledger.iter_subscribers(status):
        writer.writerow([as_cell(s.email), as_cell(s.name or ""), as_cell(s.timezone or ""),
                         s.status, _iso(s.created_at), _iso(s.confirmed_at),
                         _iso(s.unsubscribed_at)])
        count += 1
    return count
