"""Time the daemon's tick: start-up, an idle tick, and the ticks that queue and send a day.

Usage: .venv/bin/python benchmarks/tick.py [--articles 5000] [--subscribers 2000] [--zones 8]

Generates articles (as benchmarks/build.py does) and confirmed subscribers spread over several
time zones in an SQLite ledger, then drives a Ticker with a set clock through one day: the
start-up tick, idle ticks (the steady state every ``tick_seconds``), and one tick every five
minutes from midnight to midnight UTC, which queues and sends (to a maildir) as each zone's
publish time passes. Prints the figures, and the cost of an idle tick against re-reading every
article (what each tick would cost without the article cache).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

from build import DAY, write_articles

from publisher.config import from_mapping
from publisher.content import load_articles
from publisher.ledger import Ledger
from publisher.schedule import Ticker
from publisher.subscriptions.fields import SubscriberRow

ZONES = ("Europe/Berlin", "Asia/Tokyo", "Asia/Kolkata", "America/Los_Angeles",
         "America/New_York", "Australia/Adelaide", "Asia/Kathmandu", "Africa/Lagos",
         "America/St_Johns", "Pacific/Auckland")
IDLE_TICKS = 20


def seconds(work: Callable[[], object]) -> float:
    """Return the wall time of one call."""
    start = time.perf_counter()
    work()
    return time.perf_counter() - start


def main() -> None:
    """Generate the data, drive the ticks and print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--articles", type=int, default=5000)
    parser.add_argument("--size", type=int, default=2048, help="approximate bytes per article")
    parser.add_argument("--subscribers", type=int, default=2000)
    parser.add_argument("--zones", type=int, default=8, choices=range(1, len(ZONES) + 1))
    args = parser.parse_args()

    folder = Path(tempfile.mkdtemp(prefix="publisher-bench-"))
    try:
        content = folder / "content"
        content.mkdir()
        write_articles(content, args.articles, args.size)
        config = from_mapping({
            "site": {"base_url": "https://bench.example.org/", "content_dir": str(content),
                     "output_dir": str(folder / "site"), "timezone": "UTC",
                     "publish_time": "09:00"},
            "state": {"database_url": f"sqlite:///{folder / 'ledger.db'}",
                      "key_file": str(folder / "secret.key")},
            "email": {"transport": "maildir", "maildir": str(folder / "outbox")},
        }, base_dir=folder)
        zones = ZONES[: args.zones]
        with Ledger.open(config.state.database_url) as ledger:
            ledger.insert_new([SubscriberRow(f"reader{n:06d}@example.org", None,
                                             zones[n % len(zones)])
                               for n in range(args.subscribers)])
            now = datetime.combine(DAY, datetime.min.time(), tzinfo=UTC)

            def clock() -> datetime:
                return now

            ticker = Ticker(config, ledger, clock=clock)
            startup = seconds(ticker.tick)
            idle = [seconds(ticker.tick) for _ in range(IDLE_TICKS)]
            rescan = seconds(lambda: load_articles(content))

            sent = queued = busy_ticks = 0
            busy = 0.0
            end = now + timedelta(days=1)
            while now < end:
                now += timedelta(minutes=5)
                started = time.perf_counter()
                report = ticker.tick(now)
                took = time.perf_counter() - started
                if report.queued or (report.sent and report.sent.sent):
                    busy_ticks += 1
                    busy += took
                queued += report.queued
                sent += report.sent.sent if report.sent else 0

        idle_ms = statistics.median(idle) * 1000
        print(f"articles:               {args.articles}, subscribers: {args.subscribers} "
              f"in {len(zones)} zones")
        print(f"start-up tick:          {startup:7.2f} s  (parse all, build the site)")
        print(f"idle tick (median):     {idle_ms:7.1f} ms")
        print(f"re-reading all articles:{rescan * 1000:7.0f} ms  "
              f"(idle tick is {rescan * 1000 / idle_ms:.0f}x cheaper)")
        print(f"one day of ticks:       {queued} queued, {sent} sent in {busy_ticks} busy ticks, "
              f"{busy:.2f} s ({sent / busy if busy else 0:,.0f} messages/s)")
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
