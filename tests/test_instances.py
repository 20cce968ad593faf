"""Several publisher processes on one PostgreSQL ledger share the deliveries and send each once.

Real processes (``python -m publisher``), the local PostgreSQL (a fresh schema per test; skipped
when it does not answer), and one maildir per process, so that every message can be traced to
the process that wrote it. A process killed with SIGKILL leaves its claimed batch behind; the
others take it over once its lease runs out. Only a message the victim had already written when
it died, but not yet recorded, can arrive twice.
"""

from __future__ import annotations

import filecmp
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from email import message_from_bytes
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from publisher.calendar import Calendar, Event
from publisher.config import Config, from_mapping
from publisher.content import load_article, load_articles
from publisher.dispatch import SendPolicy, enqueue_event, send_due
from publisher.ledger import ALL_ZONES, Ledger, accepted, deliveries
from publisher.mail import Mailer
from publisher.schedule import site_lock_name
from publisher.status import site_state_key
from publisher.subscriptions.fields import SubscriberRow
from publisher.transports import Envelope, MaildirTransport, Outcome, Stop
from tests.fixtures.content import BASE_URL, WriteArticle
from tests.fixtures.ticks import FakeClock, MakeWorld, write_config

SUBSCRIBERS = 5000
INSTANCES = 3
LEASE_SECONDS = 10  # the shortest lease the configuration accepts
DEADLINE_SECONDS = 90
SECRET = "instances-test-secret-" + "k" * 32
_MESSAGE_ID = re.compile(rb"^Message-ID:\s*(\S+)", re.MULTILINE | re.IGNORECASE)
_POLL_SECONDS = 0.05


@dataclass
class Instance:
    """One publisher process with its own configuration, maildir and site folder."""

    number: int
    config_path: Path
    config: Config
    log: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def maildir(self) -> Path:
        """Return the folder this instance writes its messages into."""
        return self.config.email.maildir

    def start(self, *arguments: str) -> None:
        """Start ``python -m publisher --config FILE ARGUMENTS...`` in the background."""
        environment = {**os.environ, "PUBLISHER_SECRET_KEY": SECRET}
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "publisher", "--config", str(self.config_path),
                 *arguments], stdout=log, stderr=subprocess.STDOUT, env=environment,
                cwd=self.config_path.parent)

    @property
    def pid(self) -> int:
        """Return the process id."""
        assert self.process is not None
        return self.process.pid

    def wait(self) -> int:
        """Wait for the process to end and return its exit code."""
        assert self.process is not None
        return self.process.wait(DEADLINE_SECONDS)

    def stop(self) -> None:
        """End the process if it still runs (a test that failed half-way)."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(DEADLINE_SECONDS)

    def message_ids(self) -> list[bytes]:
        """Return the Message-ID of every message this instance wrote to its maildir."""
        found = []
        for path in sorted((self.maildir / "new").glob("*")):
            match = _MESSAGE_ID.search(path.read_bytes())
            assert match is not None, f"no Message-ID in {path}"
            found.append(match.group(1))
        return found

    def output(self) -> str:
        """Return what the process printed (for failure messages)."""
        return self.log.read_text(encoding="utf-8", errors="replace")


@dataclass
class Cluster:
    """Instances sharing one ledger and one content folder, and the ledger to look at."""

    ledger: Ledger
    instances: list[Instance]
    day: date

    def statuses(self) -> Counter[str]:
        """Return how many deliveries are in each state."""
        with self.ledger.engine.connect() as conn:
            return Counter(conn.scalars(select(deliveries.c.status)))

    def held_by(self, instance: Instance) -> dict[int, bytes | None]:
        """Return the deliveries an instance holds (claimed, no outcome): id to Message-ID."""
        # The lease owner is "host/pid/random": the pid names the process. A row whose message
        # was accepted, but not yet folded in, is done: the next claim marks it sent.
        recorded = select(accepted.c.id).where(accepted.c.delivery_id == deliveries.c.id)
        with self.ledger.engine.connect() as conn:
            rows = conn.execute(
                select(deliveries.c.id, deliveries.c.message_id)
                .where(deliveries.c.status == "sending", ~recorded.exists(),
                       deliveries.c.lease_owner.like(f"%/{instance.pid}/%"))).all()
        return {row.id: row.message_id.encode() if row.message_id else None for row in rows}

    def sent_message_ids(self) -> dict[bytes, int]:
        """Return the Message-ID recorded for each sent delivery, mapped to its row id."""
        with self.ledger.engine.connect() as conn:
            rows = conn.execute(select(deliveries.c.id, deliveries.c.message_id)
                                .where(deliveries.c.status == "sent")).all()
        return {row.message_id.encode(): row.id for row in rows}

    def wait_until(self, condition: Callable[[], bool], what: str) -> None:
        """Poll ``condition`` until it holds; fail naming ``what`` after the deadline."""
        deadline = time.monotonic() + DEADLINE_SECONDS
        while not condition():
            for instance in self.instances:
                process = instance.process
                if process is not None and process.poll() not in (None, -signal.SIGKILL):
                    pytest.fail(f"instance {instance.number} ended early ({process.returncode})"
                                f" waiting for {what}:\n{instance.output()}")
            if time.monotonic() > deadline:
                pytest.fail(f"timed out waiting for {what}; deliveries: {self.statuses()}")
            time.sleep(_POLL_SECONDS)


@pytest.fixture
def cluster(postgres_url: str, write_article: WriteArticle, content_dir: Path,
            tmp_path: Path) -> Iterator[Callable[..., Cluster]]:
    """Return a function setting up INSTANCES configurations over one fresh schema."""
    made: list[Cluster] = []

    def make(*, batch_size: int = 200, tick_seconds: int = 1) -> Cluster:
        day = datetime.now(UTC).date() - timedelta(days=2)
        write_article("anniversary", "An article that comes back.",
                      title="It happened", date=day.replace(year=day.year - 5).isoformat())
        instances = []
        for number in range(INSTANCES):
            folder = tmp_path / f"instance-{number}"
            folder.mkdir()
            mapping: dict[str, Any] = {
                "site": {"title": "Instances", "base_url": BASE_URL, "timezone": "UTC",
                         "publish_time": "00:00", "content_dir": str(content_dir),
                         "output_dir": str(folder / "site")},
                "state": {"database_url": postgres_url},
                "email": {"transport": "maildir", "maildir": str(folder / "outbox"),
                          "batch_size": batch_size},
                "schedule": {"lease_seconds": LEASE_SECONDS, "tick_seconds": tick_seconds},
            }
            path = write_config(folder / "publisher.toml", mapping)
            instances.append(Instance(number, path, from_mapping(mapping, path=path),
                                      folder / "output.log"))
        ledger = Ledger.open(postgres_url)
        rows = [SubscriberRow(f"reader{n:05d}@example.org", f"Reader {n}" if n % 3 else None)
                for n in range(SUBSCRIBERS)]
        for start in range(0, SUBSCRIBERS, 1000):
            ledger.insert_new(rows[start:start + 1000])
        built = Cluster(ledger, instances, day)
        made.append(built)
        return built

    yield make
    for built in made:
        for instance in built.instances:
            instance.stop()
        built.ledger.close()


def queue_the_day(cluster: Cluster) -> Event:
    """Queue the anniversary for every subscriber, due now, as a tick would."""
    config = cluster.instances[0].config
    article = load_article(config.site.content_dir / "anniversary.md")
    event = Event(article, cluster.day, cluster.day.year - article.date.year)
    now = datetime.now(UTC)
    queued = enqueue_event(cluster.ledger, event, now, ALL_ZONES, config.site.timezone,
                           give_up_after=timedelta(hours=48), now=now)
    assert queued == SUBSCRIBERS
    return event


def assert_each_sent_once(cluster: Cluster, allowed_twice: frozenset[bytes] = frozenset()
                          ) -> Counter[bytes]:
    """Check that every delivery is sent, recorded once and received once (or as allowed)."""
    assert cluster.statuses() == Counter({"sent": SUBSCRIBERS})
    recorded = cluster.sent_message_ids()
    assert len(recorded) == SUBSCRIBERS  # one distinct Message-ID per subscriber
    received: Counter[bytes] = Counter()
    for instance in cluster.instances:
        received.update(instance.message_ids())
    assert set(received) == set(recorded)
    twice = {message_id for message_id, count in received.items() if count > 1}
    assert twice <= allowed_twice
    assert max(received.values()) <= 2
    return received


@pytest.mark.postgres
def test_three_processes_racing_send_each_delivery_exactly_once(
        cluster: Callable[..., Cluster]) -> None:
    # Small batches, so that the three processes claim in turns many times over.
    world = cluster(batch_size=50)
    day = world.day.isoformat()
    for instance in world.instances:
        instance.start("send", "--date", day)
    for instance in world.instances:
        assert instance.wait() == 0, instance.output()

    received = assert_each_sent_once(world)
    assert sum(received.values()) == SUBSCRIBERS
    per_instance = [len(instance.message_ids()) for instance in world.instances]
    assert sum(per_instance) == SUBSCRIBERS
    # Every process queued the same event at once (idempotently) and took a share of it.
    assert sum(1 for count in per_instance if count) >= 2, per_instance
    for instance in world.instances:
        assert "sent " in instance.output()


@pytest.mark.postgres
def test_a_killed_instance_is_taken_over_after_its_lease_and_nothing_is_lost(
        cluster: Callable[..., Cluster]) -> None:
    # Large batches, so that the victim surely holds unsent rows when it dies.
    world = cluster(batch_size=500)
    queue_the_day(world)
    victim, *survivors = world.instances
    for instance in world.instances:
        instance.start("run")

    world.wait_until(lambda: len(list((victim.maildir / "new").glob("*"))) >= 20
                     and bool(world.held_by(victim)), "the victim to be half-way through a batch")
    assert victim.process is not None
    victim.process.send_signal(signal.SIGKILL)
    assert victim.wait() == -signal.SIGKILL
    orphaned = world.held_by(victim)
    victim_wrote = set(victim.message_ids())
    assert orphaned, "the victim finished its batch before it was killed"

    # The survivors send everything else at once, and the orphaned rows once the lease ends.
    world.wait_until(lambda: world.statuses() == Counter({"sent": SUBSCRIBERS}),
                     "every delivery to be sent")
    for instance in survivors:
        assert instance.process is not None
        instance.process.send_signal(signal.SIGTERM)
        assert instance.wait() == 0, instance.output()

    # A message the victim wrote but had not recorded when it died is the only possible
    # duplicate: it is in the victim's maildir and among the rows it still held.
    recorded = world.sent_message_ids()
    in_flight = {message_id for message_id in victim_wrote if recorded[message_id] in orphaned}
    assert len(in_flight) <= 1
    received = assert_each_sent_once(world, allowed_twice=frozenset(in_flight))
    assert sum(received.values()) == SUBSCRIBERS + len(in_flight)
    taken_over = {message_id for message_id, row in recorded.items() if row in orphaned}
    survivors_wrote: set[bytes] = set()
    for instance in survivors:
        survivors_wrote.update(instance.message_ids())
    assert taken_over <= survivors_wrote

    # Each instance built its own copy of the site from the same content: the same bytes.
    first, second = (instance.config.site.output_dir for instance in survivors)
    assert_same_tree(first, second)


def assert_same_tree(first: Path, second: Path) -> None:
    """Check that two folders hold the same published files with the same bytes."""
    # Hidden files are the build's own bookkeeping (such as the dates it gave), never served.
    def published(folder: Path) -> list[Path]:
        return sorted(p.relative_to(folder) for p in folder.rglob("*")
                      if p.is_file() and not p.name.startswith("."))

    names = published(first)
    assert names, f"{first} is empty"
    assert names == published(second)
    _, mismatch, errors = filecmp.cmpfiles(first, second, [str(n) for n in names], shallow=False)
    assert not mismatch and not errors


@pytest.mark.postgres
def test_the_lock_is_held_by_one_process_at_a_time(postgres_url: str) -> None:
    with Ledger.open(postgres_url) as first, Ledger.open(postgres_url) as second:
        with first.try_lock("site-build:/srv/site") as held:
            assert held
            with second.try_lock("site-build:/srv/site") as also:
                assert not also
            with second.try_lock("site-build:/srv/other") as other:
                assert other
        with second.try_lock("site-build:/srv/site") as after:
            assert after


@pytest.mark.postgres
def test_an_instance_skips_building_a_shared_folder_while_another_builds_it(
        make_world: MakeWorld, write_article: WriteArticle, postgres_url: str) -> None:
    write_article("today", date="2019-06-05")
    world = make_world(postgres_url, timezone="UTC", publish_time="09:00")
    now = datetime(2025, 6, 5, 9, 1, tzinfo=UTC)
    with Ledger.open(postgres_url) as other, other.try_lock(site_lock_name(world.config)):
        busy = world.tick(now)
    assert busy.built is None
    assert not world.config.site.output_dir.exists()
    later = world.tick(now + timedelta(seconds=30))
    assert later.built is not None
    assert (world.config.site.output_dir / "index.html").is_file()


def test_each_host_records_its_own_site_build_however_long_the_path(
        make_config: Callable[..., Config], monkeypatch: pytest.MonkeyPatch) -> None:
    config = make_config(output_dir="/srv/" + "deeply/nested/" * 30 + "site")
    keys = []
    for host in ("host-a", "host-b"):
        monkeypatch.setattr(socket, "gethostname", lambda host=host: host)
        keys.append(site_state_key(config))
    assert keys[0] != keys[1]
    assert all(len(key) <= 100 for key in keys)  # the state table's key column


class StallingTransport:
    """A maildir during whose first message the lease runs out and another worker claims."""

    def __init__(self, inner: MaildirTransport, stall: Callable[[], None]) -> None:
        self.inner = inner
        self.stall = stall

    def send(self, envelopes: Iterable[Envelope], stop: Stop | None = None
             ) -> Iterator[tuple[Envelope, Outcome]]:
        """Store the messages; after the first one, stall past the lease."""
        for number, result in enumerate(self.inner.send(envelopes, stop)):
            yield result
            if number == 0:
                self.stall()

    def close(self) -> None:
        """Nothing to release."""


def test_a_worker_whose_lease_ran_out_stops_handing_over_its_batch(
        database_url: str, write_article: WriteArticle, make_config: Callable[..., Config],
        tmp_path: Path) -> None:
    day = date(2025, 6, 5)
    write_article("today", date="2019-06-05")
    base = make_config(timezone="UTC")
    config = from_mapping({
        "site": {"base_url": BASE_URL, "timezone": "UTC",
                 "content_dir": str(base.site.content_dir)},
        "state": {"database_url": database_url},
        "email": {"maildir": str(tmp_path / "first")},
        "schedule": {"lease_seconds": LEASE_SECONDS},
    }, base_dir=tmp_path)
    clock = FakeClock(datetime(2025, 6, 5, 9, tzinfo=UTC))
    policy = SendPolicy.from_config(config)
    calendar = Calendar(load_articles(config.site.content_dir).articles)
    mailer = Mailer(config, SECRET.encode(), clock=clock)
    with Ledger.open(database_url) as ledger:
        ledger.insert_new([SubscriberRow(f"reader{n}@example.org") for n in range(6)])
        (event,) = calendar.events_on(day)
        enqueue_event(ledger, event, clock(), ALL_ZONES, "UTC",
                      give_up_after=timedelta(hours=48), now=clock())
        taken = []

        def stall() -> None:
            # The server stalls past the lease; meanwhile another worker claims what is due.
            clock.now += policy.lease + timedelta(seconds=1)
            taken.extend(ledger.claim("other", 100, policy.lease, clock()))

        first = StallingTransport(MaildirTransport(tmp_path / "first"), stall)
        report = send_due(ledger, mailer, first, calendar, clock, "first", policy=policy)
        assert report.sent == 1  # the message handed over before the stall, and no other
        assert len(taken) == 5
        assert len(list((tmp_path / "first" / "new").iterdir())) == 1

        # The other worker sends what it took over once its own lease is gone (it stopped).
        clock.now += policy.lease + timedelta(seconds=1)
        second = MaildirTransport(tmp_path / "second")
        assert send_due(ledger, mailer, second, calendar, clock, "second",
                        policy=policy).sent == 5
        assert ledger.count_due(clock()) == 0
    received = [path.read_bytes() for folder in ("first", "second")
                for path in (tmp_path / folder / "new").iterdir()]
    recipients = sorted(str(message_from_bytes(data)["To"]) for data in received)
    assert recipients == sorted(f"reader{n}@example.org" for n in range(6))
