"""A stop request during a send finishes the message in flight and leaves the rest queued."""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

from publisher.config import Config
from publisher.ledger import Ledger
from publisher.schedule import Ticker
from publisher.transports import Envelope, MaildirTransport, Outcome, Stop, open_transport
from tests.fixtures.content import WriteArticle
from tests.fixtures.database import sqlite_url
from tests.fixtures.ticks import FakeClock, MakeWorld

READERS = 5
AFTER_PUBLISH = datetime(2025, 6, 5, 9, 0, 30, tzinfo=UTC)


class StopAfterFirst:
    """The real maildir transport; the stop request arrives while the first message is sent."""

    def __init__(self, inner: MaildirTransport, stop: threading.Event) -> None:
        self.inner = inner
        self.stop = stop

    def send(self, envelopes: Iterable[Envelope], stop: Stop | None = None
             ) -> Iterator[tuple[Envelope, Outcome]]:
        """Send through the maildir, requesting a stop as the first message goes out."""
        for delivered in self.inner.send(envelopes, stop):
            self.stop.set()
            yield delivered

    def close(self) -> None:
        """Close the maildir transport."""
        self.inner.close()


def test_stop_during_a_send_finishes_one_message_and_the_next_run_sends_the_rest(
        make_world: MakeWorld, write_article: WriteArticle, tmp_path: Path) -> None:
    write_article("today", date="2019-06-05")
    world = make_world(sqlite_url(tmp_path), timezone="UTC", publish_time="09:00")
    for number in range(READERS):
        world.subscribe(f"reader{number}@example.org")
    stop = threading.Event()

    def stopping(config: Config) -> StopAfterFirst:
        transport = open_transport(config)
        assert isinstance(transport, MaildirTransport)
        return StopAfterFirst(transport, stop)

    first = Ticker(world.config, world.ledger, stop=stop, clock=world.clock,
                   open_transport=stopping)
    world.clock.now = AFTER_PUBLISH
    report = first.tick(AFTER_PUBLISH)
    assert report.queued == READERS
    assert report.sent is not None and report.sent.sent == 1
    assert len(world.sent()) == 1
    # The rest went back to the queue, not left claimed by a process that stopped.
    assert world.ledger.count_due(AFTER_PUBLISH) == READERS - 1

    # The next start sends the others, and only them.
    later = AFTER_PUBLISH + timedelta(minutes=1)
    world.clock.now = later
    with Ledger.open(world.config.state.database_url) as ledger:
        Ticker(world.config, ledger, clock=FakeClock(later)).tick(later)
    counts = world.counts()
    assert len(counts) == READERS
    assert set(counts.values()) == {1}
