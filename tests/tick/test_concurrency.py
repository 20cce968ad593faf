"""Two processes ticking at the same instants on one ledger send each delivery once."""

from __future__ import annotations

import multiprocessing
from datetime import UTC, datetime, timedelta
from multiprocessing.synchronize import Barrier
from pathlib import Path
from typing import Any

from publisher.config import from_mapping
from publisher.ledger import Ledger
from publisher.schedule import Ticker
from tests.fixtures.content import WriteArticle
from tests.fixtures.ticks import FakeClock, MakeWorld

SUBSCRIBERS = 120
TICKS = [datetime(2025, 6, 5, 9, 0, 30, tzinfo=UTC) + timedelta(seconds=30 * n)
         for n in range(3)]
DEADLINE_SECONDS = 120


def tick_in_this_process(mapping: dict[str, Any], base_dir: str, barrier: Barrier,
                         results: multiprocessing.Queue[tuple[int, int]]) -> None:
    """Open the ledger, wait for the other process, then tick at each instant of TICKS."""
    config = from_mapping(mapping, base_dir=Path(base_dir))
    clock = FakeClock(TICKS[0])
    with Ledger.open(config.state.database_url) as ledger:
        ticker = Ticker(config, ledger, clock=clock)
        queued = sent = 0
        for now in TICKS:
            barrier.wait(DEADLINE_SECONDS)
            clock.now = now
            report = ticker.tick(now)
            queued += report.queued
            sent += report.sent.sent if report.sent else 0
    results.put((queued, sent))


def test_two_processes_ticking_at_once_send_each_delivery_once(
        make_world: MakeWorld, write_article: WriteArticle, database_url: str,
        tmp_path: Path) -> None:
    write_article("today", date="2019-06-05")
    # Small batches, so that the two processes' claims interleave many times.
    world = make_world(database_url, timezone="UTC", publish_time="09:00", batch_size=7)
    for number in range(SUBSCRIBERS):
        world.subscribe(f"reader{number:03d}@example.org")
    world.ledger.close()

    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(2)
    results: multiprocessing.Queue[tuple[int, int]] = context.Queue()
    workers = [context.Process(target=tick_in_this_process,
                               args=(world.mapping, str(tmp_path), barrier, results))
               for _ in range(2)]
    for worker in workers:
        worker.start()
    outcomes = [results.get(timeout=DEADLINE_SECONDS) for _ in workers]
    for worker in workers:
        worker.join(DEADLINE_SECONDS)
        assert worker.exitcode == 0

    counts = world.counts()
    assert len(counts) == SUBSCRIBERS
    assert set(counts.values()) == {1}
    assert sum(queued for queued, _ in outcomes) == SUBSCRIBERS
    assert sum(sent for _, sent in outcomes) == SUBSCRIBERS
