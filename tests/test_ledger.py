"""The delivery ledger on a real SQLite file and, where it answers, the local PostgreSQL."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import threading
import uuid
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path

import pytest
from sqlalchemy import MetaData, Table, func, insert, inspect, select, text
from sqlalchemy.exc import StatementError

from publisher import ledger_reads
from publisher.config import from_mapping
from publisher.errors import LedgerError
from publisher.ledger import (
    ALL_ZONES,
    MIGRATIONS,
    Ledger,
    ZoneChoice,
    accepted,
    deliveries,
    schema,
    schema_migrations,
)
from publisher.preferences import DeliveryGroup, parse_choices
from publisher.status import delivery_status
from publisher.subscriptions.fields import subscriber_row
from tests.fixtures.database import database_before

T0 = datetime(2024, 11, 9, 8, 0, tzinfo=UTC)
LEASE = timedelta(minutes=5)
DAY = date(2024, 11, 9)
SITE_ZONE = "Europe/Berlin"


def add(ledger: Ledger, count: int, zone: str | None = None, start: int = 0) -> list[int]:
    """Add ``count`` confirmed subscribers in ``zone``; return their ids."""
    ids = []
    for n in range(start, start + count):
        subscriber, _ = ledger.add_subscriber(
            subscriber_row(f"reader{n}@example.org", f"Reader {n}", zone), now=T0)
        ids.append(subscriber.id)
    return ids


def enqueue(ledger: Ledger, slug: str = "moon", zone: ZoneChoice = ALL_ZONES,
            due_at: datetime = T0, give_up: timedelta = timedelta(hours=48)) -> int:
    """Queue the event (slug, 2024) for ``zone``."""
    return ledger.enqueue(slug, 2024, DAY, due_at=due_at, give_up_at=due_at + give_up,
                          zone=zone, site_zone=SITE_ZONE, now=T0)


def statuses(ledger: Ledger) -> dict[str, int]:
    """Return delivery counts per state, over every event."""
    counts: dict[str, int] = {}
    for c in ledger.delivery_counts():
        counts[c.status] = counts.get(c.status, 0) + c.count
    return counts


def row_statuses(ledger: Ledger) -> dict[str, int]:
    """Return how many delivery rows are in each state, as stored."""
    with ledger.engine.connect() as conn:
        rows = conn.execute(select(deliveries.c.status, func.count())
                            .group_by(deliveries.c.status))
        return {status: count for status, count in rows}


# --- opening and migrations -------------------------------------------------------------------


def test_open_applies_every_migration_once(database_url: str) -> None:
    for _ in range(2):
        with Ledger.open(database_url) as ledger:
            assert ledger.schema_version() == len(MIGRATIONS)
    with Ledger.open(database_url) as ledger, ledger.engine.connect() as conn:
        versions = list(conn.scalars(select(schema_migrations.c.version)))
    assert versions == list(range(1, len(MIGRATIONS) + 1))


def test_processes_opening_a_fresh_database_at_once_all_succeed(database_url: str) -> None:
    script = "import sys; from publisher.ledger import Ledger; Ledger.open(sys.argv[1]).close()"
    root = Path(__file__).resolve().parents[1]
    workers = [subprocess.Popen([sys.executable, "-c", script, database_url], cwd=root,
                                stderr=subprocess.PIPE, text=True) for _ in range(4)]
    errors = [w.communicate(timeout=120)[1] for w in workers]
    assert [w.returncode for w in workers] == [0, 0, 0, 0], errors
    with Ledger.open(database_url) as ledger, ledger.engine.connect() as conn:
        assert conn.scalar(select(func.count()).select_from(schema_migrations)) == len(MIGRATIONS)


def test_database_newer_than_the_code_is_refused(database_url: str) -> None:
    with Ledger.open(database_url) as ledger, ledger.engine.begin() as conn:
        conn.execute(schema_migrations.insert().values(version=len(MIGRATIONS) + 1,
                                                       applied_at=T0))
    with pytest.raises(LedgerError, match="newer than this publisher"):
        Ledger.open(database_url)


def index_columns(ledger: Ledger, table: str) -> dict[str, list[str | None]]:
    """Return the columns of each index of ``table``, by the index's name."""
    with ledger.engine.connect() as conn:
        return {i["name"]: i["column_names"] for i in inspect(conn).get_indexes(table)}


def test_upgrade_indexes_the_counts_per_event_and_state(database_url: str) -> None:
    # A database as the version before left it: three deliveries of one event, one claimed.
    naive = T0.replace(tzinfo=None)
    with database_before(database_url, schema._index_event_states) as conn:
        old = Table("subscribers", MetaData(), autoload_with=conn)
        conn.execute(insert(old), [
            {"id": n, "email": f"reader{n}@example.org", "status": "confirmed",
             "created_at": naive, "updated_at": naive, "unsubscribe_key": f"key{n}"}
            for n in (1, 2, 3)])
        old = Table("deliveries", MetaData(), autoload_with=conn)
        conn.execute(insert(old), [
            {"slug": "moon", "year": 2024, "event_on": DAY, "subscriber_id": n,
             "status": "sending" if n == 1 else "pending", "attempts": 0, "due_at": naive,
             "next_attempt_at": naive, "give_up_at": naive, "updated_at": naive}
            for n in (1, 2, 3)])
    with Ledger.open(database_url) as ledger:
        indexes = index_columns(ledger, "deliveries")
        assert indexes["ix_deliveries_event_status"] == ["event_on", "slug", "year", "status"]
        assert "ix_deliveries_event_on" not in indexes
        assert statuses(ledger) == {"pending": 2, "sending": 1}


def test_upgrade_records_changes_of_time_from_then_on(database_url: str) -> None:
    # A database as version 6 left it, with one subscriber who chose a time.
    naive = T0.replace(tzinfo=None)
    with database_before(database_url, schema._add_changed_at) as conn:
        old = Table("subscribers", MetaData(), autoload_with=conn)
        assert "changed_at" not in old.c
        conn.execute(insert(old).values(email="ada@example.org", status="confirmed",
                                        created_at=naive, updated_at=naive,
                                        unsubscribe_key="key1", send_time="07:30"))
    with Ledger.open(database_url) as ledger:
        indexes = index_columns(ledger, "subscribers")
        assert indexes["ix_subscribers_changed"] == ["status", "changed_at"]
        found = ledger.find_subscriber("ada@example.org")
        assert found is not None and found.changed_at is None and found.send_time == "07:30"
        ledger.set_choices(parse_choices(at="06:00"), email="ada@example.org", now=T0)
        found = ledger.find_subscriber("ada@example.org")
        assert found is not None and found.changed_at == T0
        assert ledger.changed_groups(T0 - timedelta(seconds=1), "UTC", time(9)) == [
            DeliveryGroup("UTC", time(6))]
        assert ledger.changed_groups(T0, "UTC", time(9)) == []


def test_sqlite_file_gets_its_folder_and_write_ahead_log(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "var" / "publisher.db"
    with Ledger.open(f"sqlite:///{path}") as ledger, ledger.engine.connect() as conn:
        assert conn.scalar(text("PRAGMA journal_mode")) == "wal"
        assert conn.scalar(text("PRAGMA busy_timeout")) == 30000
        assert conn.scalar(text("PRAGMA foreign_keys")) == 1
    assert path.exists()


def test_in_memory_sqlite_works_for_quick_trials() -> None:
    with Ledger.open("sqlite://") as ledger:
        add(ledger, 2)
        assert enqueue(ledger) == 2


@pytest.mark.parametrize(("url", "message"), [
    ("mysql://user@localhost/db", "unsupported database 'mysql'"),
    ("not a url", "invalid database URL"),
])
def test_unusable_urls_are_ledger_errors(url: str, message: str) -> None:
    with pytest.raises(LedgerError, match=message):
        Ledger.open(url)


def test_unreachable_server_error_hides_the_password() -> None:
    pytest.importorskip("psycopg")
    with pytest.raises(LedgerError, match="cannot open") as caught:
        Ledger.open("postgresql+psycopg://user:s3cret@127.0.0.1:1/db?connect_timeout=2")
    assert "s3cret" not in str(caught.value)
    assert "***" in str(caught.value)


# --- enqueue ----------------------------------------------------------------------------------


def test_enqueue_covers_confirmed_subscribers_once(ledger: Ledger) -> None:
    ids = add(ledger, 3)
    pending = ledger.add_pending(subscriber_row("pending@example.org"), now=T0)
    assert pending is not None
    ledger.unsubscribe_link(email="reader2@example.org", now=T0)
    assert enqueue(ledger) == 2
    assert enqueue(ledger) == 0  # idempotent: the unique key holds
    add(ledger, 1, start=10)
    assert enqueue(ledger) == 1  # only the newcomer
    with ledger.engine.connect() as conn:
        queued = set(conn.scalars(select(deliveries.c.subscriber_id)))
    assert pending.subscriber_id not in queued and ids[2] not in queued
    assert statuses(ledger) == {"pending": 3}


def test_zones_are_those_of_confirmed_subscribers(ledger: Ledger) -> None:
    add(ledger, 2, zone="Europe/Paris")
    add(ledger, 1, zone="America/New_York", start=10)
    add(ledger, 1, zone="Asia/Tokyo", start=20)
    ledger.unsubscribe_link(email="reader20@example.org", now=T0)
    ledger.add_pending(subscriber_row("new@example.org", None, "Africa/Lagos"), now=T0)
    ledger.add_pending(subscriber_row("unsure@example.org"), now=T0)
    assert sorted(ledger.subscriber_zones(), key=str) == ["America/New_York", "Europe/Paris"]
    add(ledger, 1, start=30)
    assert sorted(ledger.subscriber_zones(), key=str) == [
        "America/New_York", "Europe/Paris", None]


def test_enqueue_by_zone_group(ledger: Ledger) -> None:
    add(ledger, 2, zone=None)
    add(ledger, 1, zone=SITE_ZONE, start=10)
    add(ledger, 3, zone="America/New_York", start=20)
    assert sorted(ledger.subscriber_zones(), key=str) == sorted(
        [None, SITE_ZONE, "America/New_York"], key=str)
    # The site's zone also serves subscribers who never chose one.
    assert enqueue(ledger, zone=SITE_ZONE) == 3
    assert enqueue(ledger, zone=None) == 0
    assert ledger.count_unqueued("moon", 2024, "America/New_York", SITE_ZONE) == 3
    assert enqueue(ledger, zone="America/New_York") == 3
    assert enqueue(ledger, zone=ALL_ZONES) == 0


def test_skipped_rows_are_recorded_and_never_sent(ledger: Ledger) -> None:
    add(ledger, 2)
    queued = ledger.enqueue("moon", 2024, DAY, due_at=T0, give_up_at=T0, zone=ALL_ZONES,
                            site_zone=SITE_ZONE, status="skipped", reason="too old", now=T0)
    assert queued == 2
    assert enqueue(ledger) == 0
    assert ledger.claim("w", 10, LEASE, T0 + timedelta(days=1)) == []
    assert statuses(ledger) == {"skipped": 2}


# --- claims and outcomes ----------------------------------------------------------------------


def test_claim_takes_due_rows_under_a_lease(ledger: Ledger) -> None:
    add(ledger, 5)
    enqueue(ledger, due_at=T0 + timedelta(minutes=1))
    assert ledger.claim("w1", 10, LEASE, T0) == []  # not due yet
    now = T0 + timedelta(minutes=1)
    first = ledger.claim("w1", 3, LEASE, now)
    assert len(first) == 3 and all(c.attempts == 1 for c in first)
    assert first[0].email.startswith("reader") and first[0].name is not None
    rest = ledger.claim("w2", 10, LEASE, now)
    assert {c.delivery_id for c in first}.isdisjoint(c.delivery_id for c in rest)
    assert len(rest) == 2
    assert ledger.claim("w3", 10, LEASE, now + LEASE) == []  # leases still held at the edge
    assert ledger.count_due(now) == 0


def test_expired_lease_is_taken_over(ledger: Ledger) -> None:
    add(ledger, 2)
    enqueue(ledger)
    dead = ledger.claim("dead", 10, LEASE, T0)
    later = T0 + LEASE + timedelta(seconds=1)
    assert ledger.count_due(later) == 2
    taken = ledger.claim("alive", 10, LEASE, later)
    assert sorted(c.delivery_id for c in taken) == sorted(c.delivery_id for c in dead)
    assert all(c.attempts == 2 for c in taken)
    # The dead worker cannot overwrite the new holder's outcome with a deferral...
    claim = taken[0]
    assert not ledger.finish(claim.delivery_id, "dead", "deferred", code=451, reply="451",
                             message_id=None, retry_at=later, now=later)
    # ...but a late "sent" is the truth and is kept.
    assert ledger.finish(claim.delivery_id, "dead", "sent", code=250, reply="250 ok",
                         message_id="<m@example.org>", now=later)
    assert not ledger.finish(claim.delivery_id, "alive", "sent", code=250, reply="250 ok",
                             message_id="<m@example.org>", now=later)
    assert statuses(ledger) == {"sent": 1, "sending": 1}


def test_finish_records_reply_message_id_and_retry(ledger: Ledger) -> None:
    add(ledger, 3)
    enqueue(ledger)
    a, b, c = ledger.claim("w", 10, LEASE, T0)
    retry = T0 + timedelta(minutes=1)
    assert ledger.finish(a.delivery_id, "w", "sent", code=250, reply="250 2.0.0 queued",
                         message_id="<a@example.org>", now=T0)
    assert ledger.finish(b.delivery_id, "w", "deferred", code=451, reply="451 4.7.1 later",
                         message_id="<b@example.org>", retry_at=retry, now=T0)
    assert ledger.finish(c.delivery_id, "w", "failed", code=552, reply="552 5.3.4 too big",
                         message_id="<c@example.org>", now=T0)
    with ledger.engine.connect() as conn:
        rows = {r.id: r for r in conn.execute(select(deliveries))}
    assert rows[a.delivery_id].sent_at == T0
    assert rows[a.delivery_id].message_id == "<a@example.org>"
    assert rows[b.delivery_id].lease_owner is None
    problems = {p.email: p for p in ledger.problems()}
    assert problems[b.email].status == "deferred"
    assert problems[b.email].next_attempt_at == retry
    assert (problems[c.email].code, problems[c.email].reply) == (552, "552 5.3.4 too big")
    assert ledger.claim("w", 10, LEASE, T0) == []
    again = ledger.claim("w", 10, LEASE, retry)
    assert [x.delivery_id for x in again] == [b.delivery_id] and again[0].attempts == 2


def test_an_accepted_message_is_sent_once_folded_in(ledger: Ledger) -> None:
    add(ledger, 3)
    enqueue(ledger)
    a, *_ = ledger.claim("w", 10, LEASE, T0)
    accepted_at = T0 + timedelta(seconds=5)
    ledger.record_sent(a.delivery_id, code=250, reply="250 2.0.0 queued",
                       message_id="<a@example.org>", now=accepted_at)
    assert row_statuses(ledger) == {"sending": 3}  # recorded, not yet folded in
    assert statuses(ledger) == {"sent": 1, "sending": 2}  # but counted as sent already
    assert ledger.settle() == 1
    assert ledger.settle() == 0  # folding twice changes nothing
    with ledger.engine.connect() as conn:
        row = conn.execute(select(deliveries).where(deliveries.c.id == a.delivery_id)).one()
    assert (row.status, row.last_code, row.last_reply) == ("sent", 250, "250 2.0.0 queued")
    assert (row.message_id, row.sent_at, row.lease_owner) == ("<a@example.org>", accepted_at,
                                                              None)
    assert statuses(ledger) == {"sent": 1, "sending": 2}


def test_a_dead_workers_accepted_messages_are_never_claimed_again(ledger: Ledger) -> None:
    add(ledger, 3)
    enqueue(ledger)
    a, b, c = ledger.claim("dead", 10, LEASE, T0)
    for claim in (a, b):
        ledger.record_sent(claim.delivery_id, code=250, reply="250 ok",
                           message_id=f"<{claim.delivery_id}@example.org>", now=T0)
    # The worker died before folding them in: after its lease only the unsent row goes again.
    later = T0 + LEASE + timedelta(seconds=1)
    taken = ledger.claim("alive", 10, LEASE, later)
    assert [x.delivery_id for x in taken] == [c.delivery_id]
    assert statuses(ledger) == {"sent": 2, "sending": 1}
    with ledger.engine.connect() as conn:
        assert conn.scalar(select(func.count()).select_from(accepted)) == 0


def test_counts_and_problems_of_a_day_leave_other_days_out(ledger: Ledger) -> None:
    add(ledger, 2)
    enqueue(ledger)
    later = DAY + timedelta(days=1)
    ledger.enqueue("comet", 2024, later, due_at=T0, give_up_at=T0 + LEASE, zone=ALL_ZONES,
                   site_zone=SITE_ZONE, now=T0)
    claims = {(c.slug, c.subscriber_id): c for c in ledger.claim("w", 10, LEASE, T0)}
    first, second = sorted({sid for _, sid in claims})
    for slug in ("moon", "comet"):  # accepted, not yet folded in
        ledger.record_sent(claims[slug, first].delivery_id, code=250, reply="250 ok",
                           message_id=None, now=T0)
    for slug, code in (("moon", 451), ("comet", 550)):
        ledger.finish(claims[slug, second].delivery_id, "w", "failed", code=code,
                      reply=f"{code} no", message_id=None, now=T0)
    assert [(c.slug, c.status, c.count) for c in ledger.delivery_counts(DAY)] == [
        ("moon", "failed", 1), ("moon", "sent", 1)]
    assert [(c.event_on, c.slug, c.status) for c in ledger.delivery_counts()] == [
        (DAY, "moon", "failed"), (DAY, "moon", "sent"),
        (later, "comet", "failed"), (later, "comet", "sent")]
    assert [p.code for p in ledger.problems(DAY)] == [451]
    assert [p.code for p in ledger.problems(later)] == [550]


def test_status_reads_while_a_long_write_holds_the_database(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    with Ledger.open(url) as ledger:
        add(ledger, 3)
        enqueue(ledger)
        a, *_ = ledger.claim("w", 10, LEASE, T0)
        ledger.record_sent(a.delivery_id, code=250, reply="250 ok", message_id=None, now=T0)
    # A process queueing a million deliveries holds the write lock for seconds; a status
    # waiting for it would fail here after 0.2 s.
    monkeypatch.setattr(ledger_reads, "BUSY_TIMEOUT_MS", 200)
    writer = sqlite3.connect(tmp_path / "ledger.db", isolation_level=None)
    writer.execute("BEGIN IMMEDIATE")
    try:
        config = from_mapping({"state": {"database_url": url}}, base_dir=tmp_path)
        now = delivery_status(config, DAY, now=T0)
        later = delivery_status(config, DAY, now=T0 + LEASE + timedelta(seconds=1))
    finally:
        writer.rollback()
        writer.close()
    assert [(c.status, c.count) for c in now.counts] == [("sending", 2), ("sent", 1)]
    assert now.due == 0
    # The lease ran out: the two rows never accepted go again, the accepted one does not.
    assert later.due == 2
    with Ledger.open(url) as ledger:
        assert row_statuses(ledger) == {"sending": 3}  # nothing was written


@pytest.mark.postgres
def test_a_dropped_server_connection_is_replaced_without_losing_a_record(
        postgres_url: str) -> None:
    # A name of its own, so that only this ledger's sessions are ended below.
    name = f"ledger-test-{uuid.uuid4().hex}"
    separator = "&" if "?" in postgres_url else "?"
    with Ledger.open(f"{postgres_url}{separator}application_name={name}") as ledger:
        add(ledger, 2)
        enqueue(ledger)
        first, second = ledger.claim("w", 10, LEASE, T0)
        ledger.record_sent(first.delivery_id, code=250, reply="250 ok", message_id=None, now=T0)
        # The server ends the ledger's sessions (as a restart would), the connection it holds
        # for its per-message writes among them.
        with Ledger.open(postgres_url) as admin, admin.engine.connect() as conn:
            ended = conn.scalar(text(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE application_name = :name"), {"name": name})
        assert ended
        ledger.record_sent(second.delivery_id, code=250, reply="250 ok", message_id=None,
                           now=T0)
        assert ledger.settle() == 2
        assert statuses(ledger) == {"sent": 2}


def test_deferred_needs_a_retry_time(ledger: Ledger) -> None:
    add(ledger, 1)
    enqueue(ledger)
    (claim,) = ledger.claim("w", 1, LEASE, T0)
    with pytest.raises(ValueError, match="retry_at"):
        ledger.finish(claim.delivery_id, "w", "deferred", code=451, reply="451",
                      message_id=None, now=T0)


def test_bounce_marks_the_subscriber_and_skips_their_other_mail(ledger: Ledger) -> None:
    bouncer, other = add(ledger, 2)
    enqueue(ledger, "moon")
    enqueue(ledger, "sputnik")
    moon = ledger.claim("w", 2, LEASE, T0)  # oldest rows first: both of "moon"
    assert {c.slug for c in moon} == {"moon"}
    for claim in moon:
        bounced = claim.subscriber_id == bouncer
        ledger.finish(claim.delivery_id, "w", "failed" if bounced else "sent",
                      code=550 if bounced else 250,
                      reply="550 5.1.1 no such user" if bounced else "250 ok",
                      message_id=None, bounce=bounced, now=T0)
    subscriber = ledger.get_subscriber(bouncer)
    assert subscriber is not None and subscriber.status == "bounced"
    counts = {(c.slug, c.status): c.count for c in ledger.delivery_counts(DAY)}
    assert counts == {("moon", "failed"): 1, ("moon", "sent"): 1,
                      ("sputnik", "pending"): 1, ("sputnik", "skipped"): 1}
    assert [c.subscriber_id for c in ledger.claim("w", 10, LEASE, T0)] == [other]


def test_claim_skips_a_row_whose_subscriber_left_while_it_was_leased(ledger: Ledger) -> None:
    _, staying = add(ledger, 2)
    enqueue(ledger)
    ledger.claim("dead", 10, LEASE, T0)
    ledger.unsubscribe_link(email="reader0@example.org", now=T0)  # its row is 'sending'
    later = T0 + LEASE + timedelta(seconds=1)
    assert [c.subscriber_id for c in ledger.claim("w", 10, LEASE, later)] == [staying]
    assert statuses(ledger) == {"sending": 1, "skipped": 1}


def test_release_returns_unsent_rows_as_if_never_claimed(ledger: Ledger) -> None:
    add(ledger, 2)
    enqueue(ledger)
    claims = ledger.claim("w", 10, LEASE, T0)
    assert ledger.release([c.delivery_id for c in claims], "other", T0) == 0
    assert ledger.release([c.delivery_id for c in claims], "w", T0) == 2
    assert statuses(ledger) == {"pending": 2}
    assert all(c.attempts == 1 for c in ledger.claim("w", 10, LEASE, T0))


def test_extend_lease_keeps_a_slow_batch(ledger: Ledger) -> None:
    add(ledger, 1)
    enqueue(ledger)
    (claim,) = ledger.claim("w", 1, LEASE, T0)
    assert ledger.extend_lease([claim.delivery_id], "w", T0 + 2 * LEASE) == 1
    assert ledger.claim("x", 1, LEASE, T0 + LEASE + timedelta(seconds=1)) == []
    assert len(ledger.claim("x", 1, LEASE, T0 + 2 * LEASE + timedelta(seconds=1))) == 1


def test_expire_skips_unsent_and_fails_retried_rows(ledger: Ledger) -> None:
    add(ledger, 2)
    enqueue(ledger, give_up=timedelta(hours=1))
    (first,) = ledger.claim("w", 1, LEASE, T0)
    ledger.finish(first.delivery_id, "w", "deferred", code=451, reply="451 later",
                  message_id=None, retry_at=T0 + timedelta(minutes=30), now=T0)
    assert ledger.expire(T0 + timedelta(minutes=59)) == (0, 0)
    assert ledger.expire(T0 + timedelta(hours=1)) == (1, 1)
    assert statuses(ledger) == {"skipped": 1, "failed": 1}
    (failed,) = ledger.problems()
    assert failed.reply == "451 later (gave up)"


def test_concurrent_workers_never_claim_the_same_row(database_url: str) -> None:
    """Four workers, each with its own engine as separate processes would have."""
    with Ledger.open(database_url) as setup:
        add(setup, 120)
        enqueue(setup)
    claimed: list[list[int]] = [[] for _ in range(4)]
    errors: list[BaseException] = []
    start = threading.Barrier(4)

    def work(number: int) -> None:
        try:
            with Ledger.open(database_url) as own:
                start.wait()
                while batch := own.claim(f"w{number}", 7, LEASE, T0):
                    claimed[number].extend(c.delivery_id for c in batch)
        except BaseException as exc:  # reported below, with the thread's own traceback
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    everything = [i for ids in claimed for i in ids]
    assert len(everything) == len(set(everything)) == 120


# --- key/value state --------------------------------------------------------------------------


def test_state_values_are_replaced(ledger: Ledger) -> None:
    assert ledger.get_state("last_tick") is None
    ledger.set_state("last_tick", "2024-11-09T08:00:00+00:00", now=T0)
    ledger.set_state("last_tick", "2024-11-09T08:00:30+00:00", now=T0)
    assert ledger.get_state("last_tick") == "2024-11-09T08:00:30+00:00"


def test_naive_datetimes_are_refused(ledger: Ledger) -> None:
    add(ledger, 1)
    with pytest.raises(StatementError, match="naive datetime"):
        ledger.enqueue("moon", 2024, DAY, due_at=datetime(2024, 11, 9),
                       give_up_at=datetime(2024, 11, 10), zone=ALL_ZONES,
                       site_zone=SITE_ZONE)
