"""Sending end to end: real articles, the real Mailer, a real ledger and an SMTP server on loopback.

Time is injected (``Clock``): retries and lease expiry are reached by moving the clock, never by
sleeping.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, timedelta
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from sqlalchemy import select

from publisher.calendar import Calendar, Event
from publisher.cli import EXIT_PROBLEMS, cli, send_lines
from publisher.config import Config, from_mapping
from publisher.content import load_article, load_articles
from publisher.dispatch import (
    SendPolicy,
    SendReport,
    enqueue_event,
    send_all,
    send_date,
    send_due,
    skip_event,
)
from publisher.errors import TransportError
from publisher.ledger import ALL_ZONES, Ledger, deliveries
from publisher.mail import Edition, Mailer, message_id_for
from publisher.subscriptions.fields import subscriber_row
from publisher.tokens import load_secret
from publisher.transports import Envelope, Outcome, Stop, Transport, open_transport
from tests.fixtures.database import Relay
from tests.fixtures.smtp import DROP, SmtpSink

DAY = date(2024, 11, 9)
T0 = datetime(2024, 11, 9, 9, 0, tzinfo=UTC)
SEED = Path(__file__).resolve().parents[2] / "shared" / "seeds" / "000_85845c52b2831ec8.txt"


class Clock:
    """A clock that moves only when told to."""

    def __init__(self, start: datetime) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> None:
        self.now += timedelta(**delta)


@dataclass
class World:
    """Content, configuration, ledger URL, SMTP server and clock of one test."""

    root: Path
    database_url: str
    sink: SmtpSink
    clock: Clock = field(default_factory=lambda: Clock(T0))
    email: dict[str, Any] = field(default_factory=dict)

    @property
    def content(self) -> Path:
        folder = self.root / "content"
        folder.mkdir(exist_ok=True)
        return folder

    def article(self, slug: str, on: date, text: str | None = None) -> None:
        """Write a plain-form article dated ``on``."""
        body = text or f"The {slug} happened on this day. It was remarkable."
        (self.content / f"{slug}.txt").write_text(f"date {on.isoformat()} {body}\n",
                                                  encoding="utf-8")

    def config(self, **email: Any) -> Config:
        """Return the configuration, sending through the test server unless overridden."""
        table = {**self.sink.email_table(), "retry_base_seconds": 60, "give_up_hours": 6,
                 **self.email, **email}
        return from_mapping({
            "site": {"title": "Anniversaries", "base_url": "https://example.org/",
                     "timezone": "UTC", "content_dir": str(self.content)},
            "state": {"database_url": self.database_url},
            "email": table,
        }, base_dir=self.root)

    def ledger(self) -> Ledger:
        return Ledger.open(self.database_url)

    def subscribe(self, count: int, start: int = 0, zone: str | None = None) -> list[str]:
        """Add confirmed subscribers ``reader<N>@example.org``; return their addresses."""
        with self.ledger() as ledger:
            return [ledger.add_subscriber(subscriber_row(
                f"reader{n}@example.org", f"Reader {n}" if n % 2 else None, zone),
                now=T0)[0].email for n in range(start, start + count)]

    def send(self, day: date = DAY, **options: Any) -> SendReport:
        return send_date(self.config(), day, clock=self.clock, **options)

    def statuses(self) -> Counter[str]:
        with self.ledger() as ledger:
            counts: Counter[str] = Counter()
            for c in ledger.delivery_counts():
                counts[c.status] += c.count
            return counts


@pytest.fixture
def world(tmp_path: Path, database_url: str, smtp_server: SmtpSink,
          monkeypatch: pytest.MonkeyPatch) -> World:
    """Return a world with one article whose anniversary is DAY."""
    monkeypatch.setenv("PUBLISHER_SECRET_KEY", "test-secret-" + "x" * 32)
    created = World(tmp_path, database_url, smtp_server)
    created.article("moon", date(2020, 11, 9))
    return created


def per_recipient(sink: SmtpSink) -> Counter[str]:
    return Counter(m.rcpt_tos[0] for m in sink.messages)


# --- the normal path --------------------------------------------------------------------------


def test_send_emails_each_event_to_each_confirmed_subscriber_once(world: World) -> None:
    world.article("sputnik", date(1957, 11, 9))
    world.article("other-day", date(2020, 5, 1))
    readers = world.subscribe(4)
    with world.ledger() as ledger:
        pending = ledger.add_pending(subscriber_row("pending@example.org"), now=T0)
        gone, _ = ledger.add_subscriber(subscriber_row("gone@example.org"), now=T0)
        ledger.unsubscribe_link(email=gone.email, now=T0)
    report = world.send()
    assert report.ok, report.problems
    assert [(e.slug, e.year, e.queued) for e in report.events] == [
        ("moon", 2024, 4), ("sputnik", 2024, 4)]
    assert (report.sent, report.deferred, report.failed) == (8, 0, 0)
    assert per_recipient(world.sink) == Counter({r: 2 for r in readers})
    assert pending.email not in per_recipient(world.sink)
    ids = [m.message["Message-ID"] for m in world.sink.messages]
    assert len(set(ids)) == 8
    for received in world.sink.messages:
        parsed = received.message
        slug = "moon" if "moon" in parsed["Subject"] else "sputnik"
        assert parsed["Message-ID"] == message_id_for(slug, 2024, received.rcpt_tos[0],
                                                      "example.org")
        assert received.mail_from == "publisher@example.org"
    assert world.statuses() == Counter({"sent": 8})

    # The same command again sends nothing: every row is already there and sent.
    again = world.send()
    assert (again.queued, again.sent) == (0, 0)
    assert len(world.sink.messages) == 8


def test_the_ledger_keeps_the_reply_and_message_id(world: World) -> None:
    (reader,) = world.subscribe(1)
    world.send()
    with world.ledger() as ledger, ledger.engine.connect() as conn:
        row = conn.execute(select(deliveries)).one()
    assert row.status == "sent" and row.sent_at == T0 and row.attempts == 1
    assert row.last_code == 250 and row.last_reply.startswith("250 2.0.0")
    assert row.message_id == message_id_for("moon", 2024, reader, "example.org")


def test_message_date_follows_the_subscriber_zone(world: World) -> None:
    world.subscribe(1, zone="America/New_York")
    world.send()
    sent = parsedate_to_datetime(world.sink.messages[0].message["Date"])
    assert sent.utcoffset() == timedelta(hours=-5)


def test_edition_is_built_once_per_event(world: World) -> None:
    world.article("sputnik", date(1957, 11, 9))
    world.subscribe(12)
    config = world.config(batch_size=5)
    built: list[Event] = []

    class CountingMailer(Mailer):
        def edition(self, event: Event) -> Edition:
            built.append(event)
            return super().edition(event)

    calendar = Calendar(load_articles(config.site.content_dir).articles, config.site.leap_day)
    with world.ledger() as ledger:
        policy = SendPolicy.from_config(config)
        for event in calendar.events_on(DAY):
            enqueue_event(ledger, event, T0, ALL_ZONES, "UTC", give_up_after=policy.give_up_after)
        transport = open_transport(config)
        try:
            report = send_due(ledger, CountingMailer(config, load_secret(config)), transport,
                              calendar, world.clock, "worker", policy=policy)
        finally:
            transport.close()
    assert report.sent == 24
    assert sorted(e.article.slug for e in built) == ["moon", "sputnik"]


def test_dry_run_changes_nothing(world: World) -> None:
    world.subscribe(3)
    report = world.send(dry_run=True)
    assert report.dry_run and report.queued == 3 and report.sent == 0
    assert world.sink.messages == [] and world.statuses() == Counter()
    assert any("would queue 3" in line for line in send_lines(report))


def test_maildir_is_the_default_transport(world: World) -> None:
    world.subscribe(2)
    report = send_date(world.config(transport="maildir"), DAY, clock=world.clock)
    assert report.sent == 2
    assert len(list((world.root / "var" / "outbox" / "new").iterdir())) == 2
    assert world.sink.messages == []


def test_progress_is_reported_per_message(world: World) -> None:
    world.subscribe(5)
    seen: list[tuple[int, int]] = []
    world.send(progress=lambda done, total: seen.append((done, total)))
    assert seen == [(n, 5) for n in range(1, 6)]


def test_seed_article_is_sent(world: World) -> None:
    if not SEED.exists():
        pytest.skip("the shared sample article is not present")
    (world.content / SEED.name).write_bytes(SEED.read_bytes())
    world.subscribe(1)
    report = world.send()
    seed = load_article(SEED)
    assert {e.slug: e.queued for e in report.events} == {seed.slug: 1, "moon": 1}
    subjects = [m.message["Subject"] for m in world.sink.messages]
    assert f"{seed.title} — 1 year ago today" in subjects


# --- failures and retries ---------------------------------------------------------------------


def test_451_then_250_delivers_each_message_once(world: World) -> None:
    readers = world.subscribe(3)
    for reader in readers:
        world.sink.answer("451 4.7.1 Greylisted, try again later", to=reader)
    first = world.send()
    assert (first.sent, first.deferred) == (0, 3)
    assert world.sink.messages == []
    assert world.send().sent == 0  # retry not due yet
    world.clock.advance(seconds=60)
    retried = world.send()
    assert retried.sent == 3
    assert per_recipient(world.sink) == Counter({r: 1 for r in readers})
    data_attempts = Counter(a.recipient for a in world.sink.attempts if a.stage == "data")
    assert data_attempts == Counter({r: 2 for r in readers})
    world.clock.advance(hours=1)
    assert world.send().sent == 0 and len(world.sink.messages) == 3


def test_5xx_is_not_retried_and_5_1_1_bounces_the_subscriber(world: World) -> None:
    refused, unknown, fine = world.subscribe(3)
    world.sink.answer("554 5.7.1 Message rejected as spam", to=refused)
    world.sink.answer("550 5.1.1 No such user here", stage="rcpt", to=unknown)
    report = world.send()
    assert (report.sent, report.failed, report.bounced) == (1, 1, 1)
    assert any(unknown in f and "550 5.1.1" in f for f in report.failures)
    with world.ledger() as ledger:
        statuses = {s.email: s.status for s in ledger.iter_subscribers()}
        problems = {p.email: p for p in ledger.problems()}
    assert statuses == {refused: "confirmed", unknown: "bounced", fine: "confirmed"}
    assert problems[refused].reply == "554 5.7.1 Message rejected as spam"
    assert problems[unknown].status == "failed"
    world.clock.advance(days=1)
    assert world.send().sent == 0
    # No retry of either, and the bounced address is left out of the next event.
    assert len([a for a in world.sink.attempts if a.stage == "rcpt"]) == 3
    world.article("sputnik", date(1957, 11, 10))
    later = world.send(date(2024, 11, 10))
    assert later.queued == 2 and later.sent == 2


def test_dropped_connection_loses_nothing_and_duplicates_nothing(world: World) -> None:
    readers = world.subscribe(6)
    world.email["batch_size"] = 10
    world.sink.answer(DROP, to=readers[2])
    first = world.send()
    assert (first.sent, first.deferred) == (5, 1)
    assert readers[2] not in per_recipient(world.sink)
    world.clock.advance(seconds=59)
    assert world.send().sent == 0
    world.clock.advance(seconds=1)
    assert world.send().sent == 1
    assert per_recipient(world.sink) == Counter({r: 1 for r in readers})
    assert world.statuses() == Counter({"sent": 6})


def test_retries_back_off_then_give_up(world: World) -> None:
    (reader,) = world.subscribe(1)
    world.email["max_attempts"] = 3
    world.sink.answer(*["451 4.3.0 Mailbox busy"] * 5, to=reader)
    with world.ledger() as ledger:
        for wait in (0, 60, 120):  # 60 s after the first try, then 120 s
            world.clock.advance(seconds=wait)
            world.send()
            (problem,) = ledger.problems()
        assert problem.status == "failed"
        assert problem.reply is not None and problem.reply.endswith("(gave up after 3 attempts)")
    assert len([a for a in world.sink.attempts if a.stage == "data"]) == 3


def test_unreachable_server_stops_after_one_batch(world: World) -> None:
    world.subscribe(5)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]  # nobody listens there once the probe closes
    world.email.update(batch_size=2)
    world.sink.port = closed_port
    report = world.send()
    assert report.stopped is not None and not report.ok
    assert (report.sent, report.deferred) == (0, 2)
    assert world.statuses() == Counter({"deferred": 2, "pending": 3})


def test_article_gone_after_queueing_is_retried_not_lost(world: World) -> None:
    world.subscribe(2)
    world.send()
    world.article("comet", date(2000, 11, 9))
    with world.ledger() as ledger:
        comet = Calendar(load_articles(world.content).articles).events_on(DAY)
        enqueue_event(ledger, next(e for e in comet if e.article.slug == "comet"), T0,
                      ALL_ZONES, "UTC", give_up_after=timedelta(hours=6))
    (world.content / "comet.txt").unlink()
    report = world.send()
    assert report.deferred == 2 and report.problems
    assert "comet" in report.problems[0]
    world.article("comet", date(2000, 11, 9))
    world.clock.advance(minutes=1)
    assert world.send().sent == 2


def test_skipped_event_is_reported_and_never_sent(world: World) -> None:
    world.subscribe(3)
    event = Calendar(load_articles(world.content).articles).events_on(DAY)[0]
    with world.ledger() as ledger:
        assert skip_event(ledger, event, T0, ALL_ZONES, "UTC", "older than the catch-up") == 3
    assert world.send().sent == 0
    assert world.statuses() == Counter({"skipped": 3})


# --- crashes, stops and concurrency -----------------------------------------------------------


class ProcessDied(BaseException):
    """Stands for the process being killed: nothing after it runs."""


class DiesAfterFirstAcceptance:
    """Send the first message for real, then die before the ledger hears of its 250."""

    def __init__(self, inner: Transport) -> None:
        self.inner = inner

    def send(self, envelopes: Iterable[Envelope], stop: Stop | None = None
             ) -> Iterator[tuple[Envelope, Outcome]]:
        first = next(iter(envelopes))
        for _, outcome in self.inner.send([first]):
            assert outcome.status == "sent"
        raise ProcessDied

    def close(self) -> None:
        self.inner.close()


def run_send_due(world: World, transport: Transport | None = None,
                 stop: threading.Event | None = None, worker: str = "worker",
                 **policy: Any) -> SendReport:
    config = world.config()
    calendar = Calendar(load_articles(config.site.content_dir).articles, config.site.leap_day)
    own = transport is None
    transport = transport or open_transport(config)
    try:
        with world.ledger() as ledger:
            return send_due(ledger, Mailer(config, load_secret(config)), transport, calendar,
                            world.clock, worker, stop,
                            policy=replace(SendPolicy.from_config(config), **policy))
    finally:
        if own:
            transport.close()


def test_crash_after_acceptance_resends_once_with_the_same_message_id(world: World) -> None:
    readers = world.subscribe(4)
    with world.ledger() as ledger:
        for event in Calendar(load_articles(world.content).articles).events_on(DAY):
            enqueue_event(ledger, event, T0, ALL_ZONES, "UTC", give_up_after=timedelta(hours=6))
    config = world.config()
    with pytest.raises(ProcessDied):
        run_send_due(world, DiesAfterFirstAcceptance(open_transport(config)))
    assert len(world.sink.messages) == 1 and world.statuses() == Counter({"sending": 4})
    crashed = world.sink.messages[0]

    # While the dead worker's lease lasts, nobody touches its rows.
    world.clock.advance(seconds=config.schedule.lease_seconds)
    assert run_send_due(world).sent == 0
    world.clock.advance(seconds=1)
    assert run_send_due(world).sent == 4
    counts = per_recipient(world.sink)
    assert counts[crashed.rcpt_tos[0]] == 2  # at least once: the documented crash window
    assert all(counts[r] == 1 for r in readers if r != crashed.rcpt_tos[0])
    again = world.sink.received_by(crashed.rcpt_tos[0])
    assert again[0].message["Message-ID"] == again[1].message["Message-ID"]
    assert again[0].data == again[1].data  # the same bytes, so clients can drop the copy
    world.clock.advance(hours=1)
    assert run_send_due(world).sent == 0 and len(world.sink.messages) == 5


def test_stop_hands_back_what_was_not_sent(world: World) -> None:
    readers = world.subscribe(8)
    stop = threading.Event()
    report = world.send(stop=stop, progress=lambda done, total: stop.set())
    # One connection is driven inline: nothing was taken ahead when the first outcome arrived.
    assert report.sent == 1
    assert world.statuses() == Counter({"sent": 1, "pending": 7})
    assert world.send().sent == 7
    assert per_recipient(world.sink) == Counter({r: 1 for r in readers})


def test_someone_who_leaves_during_a_batch_gets_nothing_more_from_it(world: World) -> None:
    # A relay far away takes seconds over a batch; each message here takes a second of the clock.
    readers = world.subscribe(20)
    leaver = readers[-1]
    received = world.sink.handle_DATA

    async def slow_data(*args: Any) -> str:
        with world.ledger() as ledger:
            ledger.unsubscribe_link(email=leaver, now=world.clock())
        world.clock.advance(seconds=1)
        return await received(*args)

    world.sink.handle_DATA = slow_data  # type: ignore[method-assign]
    report = world.send()
    assert world.sink.received_by(leaver) == []
    assert (report.sent, report.skipped) == (19, 1)
    assert world.statuses() == Counter({"sent": 19, "skipped": 1})


def test_two_workers_at_once_send_each_message_once(world: World) -> None:
    readers = world.subscribe(30)
    with world.ledger() as ledger:
        for event in Calendar(load_articles(world.content).articles).events_on(DAY):
            enqueue_event(ledger, event, T0, ALL_ZONES, "UTC", give_up_after=timedelta(hours=6))
    reports: list[SendReport] = []
    errors: list[BaseException] = []

    def work(name: str) -> None:
        try:
            reports.append(run_send_due(world, worker=name, batch_size=3))
        except BaseException as exc:  # reported by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(f"w{n}",)) for n in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert sum(r.sent for r in reports) == 30
    assert per_recipient(world.sink) == Counter({r: 1 for r in readers})


def queue_day(world: World) -> None:
    with world.ledger() as ledger:
        for event in Calendar(load_articles(world.content).articles).events_on(DAY):
            enqueue_event(ledger, event, T0, ALL_ZONES, "UTC", give_up_after=timedelta(hours=6))


def with_connections(world: World, connections: int, **email: Any) -> Config:
    smtp = {**world.sink.email_table()["smtp"], "connections": connections}
    return world.config(smtp=smtp, **email)


def run_send_all(world: World, config: Config) -> SendReport:
    calendar = Calendar(load_articles(config.site.content_dir).articles, config.site.leap_day)
    with world.ledger() as ledger:
        return send_all(config, ledger, Mailer(config, load_secret(config)), calendar,
                        world.clock, policy=SendPolicy.from_config(config))


def test_connections_are_sessions_of_one_process_each_message_sent_once(world: World) -> None:
    readers = world.subscribe(40)
    queue_day(world)
    config = with_connections(world, 4, batch_size=5)
    threads_before = threading.active_count()
    report = run_send_all(world, config)
    assert report.ok, report.problems
    assert (report.sent, report.deferred, report.failed) == (40, 0, 0)
    assert per_recipient(world.sink) == Counter({r: 1 for r in readers})
    assert len({m.peer for m in world.sink.messages}) == 4
    assert world.statuses() == Counter({"sent": 40})
    # The connections' threads end with the send.
    assert threading.active_count() == threads_before


def test_a_crash_with_several_connections_repeats_only_unrecorded_messages(
        world: World) -> None:
    readers = world.subscribe(30)
    queue_day(world)
    config = with_connections(world, 3, batch_size=5)
    calendar = Calendar(load_articles(config.site.content_dir).articles, config.site.leap_day)
    with world.ledger() as ledger:
        real_record = ledger.record_sent
        recorded = Counter[str]()

        def record_sent(*args: Any, **kwargs: Any) -> None:
            recorded["calls"] += 1
            if recorded["calls"] == 10:
                raise ProcessDied  # the process dies as it records the tenth acceptance
            real_record(*args, **kwargs)

        ledger.record_sent = record_sent  # type: ignore[method-assign]
        transport = open_transport(config)
        try:
            with pytest.raises(ProcessDied):
                send_due(ledger, Mailer(config, load_secret(config)), transport, calendar,
                         world.clock, "dies", policy=SendPolicy.from_config(config))
        finally:
            transport.close()
    arrived = len(world.sink.messages)
    with world.ledger() as ledger:
        ledger.settle()  # what a dead sender recorded is folded in by the next claim anyway
    statuses = world.statuses()
    assert statuses["sent"] == 9 and set(statuses) <= {"sent", "sending", "pending"}
    # No content goes out once the sender stopped reading outcomes: besides the message whose
    # record failed, at most the one in flight on each connection.
    assert 10 <= arrived <= 10 + 3

    world.clock.advance(seconds=config.schedule.lease_seconds + 1)
    again = run_send_all(world, config)
    assert again.problems == []
    counts = per_recipient(world.sink)
    assert set(counts) == set(readers)
    twice = [r for r in readers if counts[r] == 2]
    assert len(twice) == arrived - 9 and max(counts.values()) == 2
    for reader in twice:
        copies = world.sink.received_by(reader)
        assert copies[0].message["Message-ID"] == copies[1].message["Message-ID"]
        assert copies[0].data == copies[1].data
    assert world.statuses() == Counter({"sent": 30})


# --- command line -----------------------------------------------------------------------------


def write_config(world: World, database_url: str | None = None) -> Path:
    path = world.root / "publisher.toml"
    smtp = world.sink.email_table()["smtp"]
    path.write_text(
        '[site]\ntitle = "Anniversaries"\nbase_url = "https://example.org/"\n'
        f'timezone = "UTC"\ncontent_dir = "{world.content}"\n'
        f'[state]\ndatabase_url = "{database_url or world.database_url}"\n'
        '[email]\ntransport = "smtp"\n'
        f'[email.smtp]\nhost = "{smtp["host"]}"\nport = {smtp["port"]}\nsecurity = "none"\n',
        encoding="utf-8")
    return path


def test_cli_send_and_status(world: World) -> None:
    good, bad = world.subscribe(2)
    world.sink.answer("550 5.1.1 No such user", stage="rcpt", to=bad)
    config = write_config(world)
    runner = CliRunner()
    dry = runner.invoke(cli, ["--config", str(config), "send", "--date", "2024-11-09",
                              "--dry-run"])
    assert dry.exit_code == 0, dry.output
    assert "would queue 2" in dry.stdout and world.sink.messages == []
    sent = runner.invoke(cli, ["--config", str(config), "send", "--date", "2024-11-09"])
    assert sent.exit_code == 0, sent.output
    assert "sent 1, deferred 0, failed 0, bounced 1, skipped 0" in sent.stdout
    assert f"{bad} (moon 2024): 550 5.1.1 No such user" in sent.stdout
    status = runner.invoke(cli, ["--config", str(config), "status", "--date", "2024-11-09"])
    assert status.exit_code == 0
    lines = status.stdout.splitlines()
    assert "subscribers: 0 pending, 1 confirmed, 0 unsubscribed, 1 bounced" in lines
    assert "2024-11-09  moon 2024: failed 1, sent 1" in lines
    assert any(bad in line and "550 5.1.1 No such user" in line for line in lines)
    assert [m.rcpt_tos[0] for m in world.sink.messages] == [good]


SECRET_ENV = {"PUBLISHER_SECRET_KEY": "test-secret-" + "x" * 32}
CONNECTIONS = 4


def start_send(world: World, connections: int = CONNECTIONS,
               database_url: str | None = None) -> subprocess.Popen[str]:
    """Start `publisher send` for DAY in a process of its own, with ``connections``."""
    config = write_config(world, database_url)
    config.write_text(config.read_text(encoding="utf-8") + f"connections = {connections}\n",
                      encoding="utf-8")
    return subprocess.Popen([sys.executable, "-m", "publisher", "--config", str(config), "send",
                             "--date", DAY.isoformat()], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, **SECRET_ENV})


def wait_for_messages(sink: SmtpSink, count: int, process: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + 60
    while len(sink.messages) < count:
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, f"{len(sink.messages)} messages arrived"
        time.sleep(0.01)


def now_past_the_lease(world: World) -> None:
    """Move the test clock to the real time, past the lease of a send started just now."""
    lease = world.config().schedule.lease_seconds
    world.clock.now = datetime.now(UTC) + timedelta(seconds=lease + 1)


def test_cli_send_with_several_connections(world: World) -> None:
    readers = world.subscribe(60)
    done = start_send(world)
    out, err = done.communicate(timeout=120)
    assert done.returncode == 0, err
    assert "sent 60, deferred 0, failed 0, bounced 0, skipped 0" in out
    assert per_recipient(world.sink) == Counter({r: 1 for r in readers})
    assert len({m.peer for m in world.sink.messages}) == CONNECTIONS
    assert world.statuses() == Counter({"sent": 60})


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_stop_signal_ends_every_connection_after_the_message_in_flight(
        world: World, signum: signal.Signals, code: int) -> None:
    readers = world.subscribe(300)
    world.sink.delay = 0.02  # a slow server: the signal surely comes in the middle
    sending = start_send(world)
    wait_for_messages(world.sink, 20, sending)
    signalled = time.monotonic()
    sending.send_signal(signum)
    out, err = sending.communicate(timeout=60)
    assert sending.returncode == code, err
    assert "Traceback" not in err and "Aborted" not in err
    arrived = len(world.sink.messages)
    # After the signal, each connection finished at most the message it had in flight.
    late = Counter(m.peer for m in world.sink.messages if m.at > signalled)
    assert max(late.values(), default=0) <= 1 and len(late) <= CONNECTIONS
    time.sleep(0.5)
    assert len(world.sink.messages) == arrived  # nothing goes on once the command ended
    # The usual summary, counting every message that arrived; the rest went back to the queue.
    assert f"sent {arrived}, deferred 0, failed 0, bounced 0, skipped 0" in out
    assert f"stopped by {signum.name}" in out
    assert world.statuses() == Counter({"sent": arrived, "pending": 300 - arrived})
    assert len({m.message["Message-ID"] for m in world.sink.messages}) == arrived
    world.sink.delay = 0
    now_past_the_lease(world)
    assert world.send().sent == 300 - arrived
    assert per_recipient(world.sink) == Counter({r: 1 for r in readers})


def assert_sent_again_only_with_the_same_message_id(world: World, readers: list[str],
                                                    connections: int) -> None:
    """Check every reader got the event, and that a second copy is an exact repeat."""
    counts = per_recipient(world.sink)
    assert set(counts) == set(readers)
    twice = [reader for reader, count in counts.items() if count > 1]
    # With a server that does not pipeline: at most the message being recorded per connection.
    assert len(twice) <= connections and max(counts.values()) <= 2
    for reader in twice:
        first, second = world.sink.received_by(reader)
        assert first.message["Message-ID"] == second.message["Message-ID"]
        assert first.data == second.data
    assert world.statuses() == Counter({"sent": len(readers)})


def test_a_send_killed_mid_way_loses_nothing_and_nothing_goes_on_sending(world: World) -> None:
    readers = world.subscribe(300)
    world.sink.delay = 0.02
    sending = start_send(world)
    wait_for_messages(world.sink, 20, sending)
    sending.kill()
    assert sending.wait(timeout=30) == -signal.SIGKILL
    arrived = len(world.sink.messages)
    time.sleep(0.5)
    assert len(world.sink.messages) == arrived  # no connection outlives its process
    for pipe in (sending.stdout, sending.stderr):
        assert pipe is not None
        pipe.close()

    world.sink.delay = 0
    now_past_the_lease(world)
    world.email["smtp"] = {**world.sink.email_table()["smtp"], "connections": CONNECTIONS}
    world.send()
    assert_sent_again_only_with_the_same_message_id(world, readers, CONNECTIONS)


@pytest.mark.postgres
def test_the_database_going_away_mid_send_is_one_line_and_loses_nothing(
        tmp_path: Path, postgres_url: str, smtp_server: SmtpSink,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(*next(iter(SECRET_ENV.items())))
    world = World(tmp_path, postgres_url, smtp_server)
    world.article("moon", date(2020, 11, 9))
    readers = world.subscribe(300)
    world.sink.delay = 0.02
    relay = Relay()
    try:
        sending = start_send(world, database_url=relay.url(postgres_url))
        wait_for_messages(world.sink, 20, sending)
        relay.cut()
        out, err = sending.communicate(timeout=60)
    finally:
        relay.cut()
    assert sending.returncode == EXIT_PROBLEMS, (out, err)
    assert "Traceback" not in err
    (line,) = err.splitlines()
    assert line.startswith("error: database error: ")

    world.sink.delay = 0
    now_past_the_lease(world)
    world.email["smtp"] = {**world.sink.email_table()["smtp"], "connections": CONNECTIONS}
    world.send()
    assert_sent_again_only_with_the_same_message_id(world, readers, CONNECTIONS)


def test_cli_send_exits_1_when_articles_are_broken(world: World) -> None:
    world.subscribe(1)
    (world.content / "broken.md").write_text("---\ntitle: [unclosed\n---\n", encoding="utf-8")
    result = CliRunner().invoke(cli, ["--config", str(write_config(world)), "send", "--date",
                                      "2024-11-09"])
    assert result.exit_code == EXIT_PROBLEMS
    assert "broken.md" in result.stderr
    assert len(world.sink.messages) == 1  # the good article still went out


def test_missing_smtp_password_stops_before_anything_is_queued(
        world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    world.subscribe(2)
    monkeypatch.delenv("PUBLISHER_SMTP_PASSWORD", raising=False)
    smtp = {**world.sink.email_table()["smtp"], "username": "mailer"}
    with pytest.raises(TransportError, match="PUBLISHER_SMTP_PASSWORD"):
        send_date(world.config(smtp=smtp), DAY, clock=world.clock)
    assert world.statuses() == Counter()


def test_template_error_defers_the_event_and_says_why(world: World) -> None:
    world.subscribe(3)
    templates = world.root / "templates"
    templates.mkdir()
    (templates / "email.txt").write_text("Hello {{ no_such_variable }}\n", encoding="utf-8")
    config = world.config()
    broken = from_mapping({
        "site": {"title": "Anniversaries", "base_url": "https://example.org/", "timezone": "UTC",
                 "content_dir": str(world.content), "templates_dir": str(templates)},
        "state": {"database_url": world.database_url},
        "email": world.sink.email_table(),
    }, base_dir=world.root)
    report = send_date(broken, DAY, clock=world.clock)
    assert (report.sent, report.deferred) == (0, 3)
    assert len(report.problems) == 1  # one edition, tried once, whatever the number of readers
    assert "email.txt" in report.problems[0] and "no_such_variable" in report.problems[0]
    (templates / "email.txt").unlink()
    world.clock.advance(minutes=1)
    assert send_date(config, DAY, clock=world.clock).sent == 3
