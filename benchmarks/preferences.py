"""Measure queueing a day for subscribers with mixed choices, and building a digest's messages.

Usage: .venv/bin/python benchmarks/preferences.py [--subscribers 1000000] [--keep DIR]
                                                  [--recipients 20000]

1. ``publisher subscribers import`` of a CSV of ``--subscribers`` rows, as ``million.py``
   imports them (a third in one of three zones), each with choices: half every anniversary, a
   quarter milestones, a quarter their own years; 30 % a daily digest; 40 % their own delivery
   time (three times); 40 % some tags. The baseline is the same list without choices.
2. Queueing one day of three appearances (1, 7 and 50 years on; with various tags) for
   every subscriber, each in a fresh process on a copy of the imported ledger, two ways:
   ``send`` as ``publisher send --date`` queues (every zone at once: one pass per appearance,
   then the day's digests) and ``tick`` as the daemon's tick queues when every (zone, time)
   group of the day has fallen due since its last tick (one pass per appearance over all the
   groups, then the digests). Each against the baseline list in the same run. ``moved``: the
   tick after one in the evening, when about one subscriber in a thousand has just moved their
   delivery time to one already past (what it queues for them, found through their index).
3. Building the messages of ``--recipients`` recipients from a digest of five appearances
   against the same from one appearance's edition (rendering once, then bytes per recipient).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

from million import PUBLISHER, ZONES, copy_ledger, run_measured, write_config
from send import ROOT

DAY = date(2024, 11, 9)
# (slug, first published, tags): on DAY, 1, 7 and 50 years after.
ARTICLES = (
    ("one", 2023, ["science"]), ("seven", 2017, ["history", "space"]),
    ("fifty", 1974, ["history"]),
)
# The digest's: five appearances on DAY.
DIGEST_ARTICLES = (*ARTICLES, ("ten", 2014, ["space"]), ("twenty", 2004, []))
TIMES = ("", "07:00", "12:30", "18:00")


def write_site(folder: Path, articles: tuple[tuple[str, int, list[str]], ...] = ARTICLES
               ) -> Path:
    """Write the day's articles and a publisher.toml; return the config's path."""
    content = folder / "content"
    content.mkdir(parents=True, exist_ok=True)
    for slug, year, tags in articles:
        (content / f"{slug}.md").write_text(
            f"---\ntitle: The {slug} article\ndate: {DAY.replace(year=year).isoformat()}\n"
            f"tags: [{', '.join(tags)}]\nsummary: A short summary of the {slug} article.\n---\n\n"
            + "A paragraph of text. " * 200 + "\n", encoding="utf-8")
    return write_config(folder, 'timezone = "UTC"\n')


def write_csv(path: Path, count: int, *, choices: bool) -> None:
    """Write ``count`` subscribers in no order, a third with a zone, with or without choices."""
    with path.open("w", encoding="utf-8", newline="") as out:
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(("email", "name", "timezone", "frequency", "years", "time", "tags"))
        for n in range(count):
            zone = ZONES[n % 9] if n % 9 < len(ZONES) else ""
            scrambled = n * 2654435761 % 2**32
            row = [f"{scrambled:08x}.{n}@mail{n % 97}.example.org", "", zone]
            if choices:
                frequency = "digest" if n % 10 < 3 else ""
                years = ("", "", "milestones", "1,7,25")[n % 4]
                at = TIMES[n % 5] if n % 5 < len(TIMES) else ""
                tags = ("", "", "", "science", "space,history")[n % 5] if n % 7 else ""
                row += [frequency, years, at, tags]
            else:
                row += ["", "", "", ""]
            writer.writerow(row)


def enqueue_child(config_path: Path, way: str) -> None:
    """Queue DAY for every subscriber, ``send``'s way or the tick's; print JSON figures."""
    from sqlalchemy import func, select, update

    from publisher.calendar import Calendar
    from publisher.config import load
    from publisher.content import load_articles
    from publisher.dispatch import SendPolicy, enqueue_digests, enqueue_event
    from publisher.ledger import ALL_ZONES, Ledger, deliveries, subscribers
    from publisher.schedule import Ticker, TickReport

    config = load(config_path)
    calendar = Calendar(load_articles(config.site.content_dir).articles, config.site.leap_day)
    policy = SendPolicy.from_config(config)
    with Ledger.open(config.state.database_url) as ledger:
        # After every zone's last delivery time of DAY, with the last tick the day before.
        now = datetime(DAY.year, DAY.month, DAY.day, tzinfo=UTC) + timedelta(days=1, hours=12)
        since = now - timedelta(days=2, hours=12)
        started = time.perf_counter()
        if way == "send":
            for event in calendar.events_on(DAY):
                enqueue_event(ledger, event, now, ALL_ZONES, config.site.timezone,
                              give_up_after=policy.give_up_after, now=now)
            enqueue_digests(ledger, DAY, now, give_up_after=policy.give_up_after, now=now)
        elif way == "tick":
            ticker = Ticker(config, ledger, clock=lambda: now)
            ticker._load(TickReport(now))
            ticker._queue(since, now, TickReport(now))
        else:
            # The tick after one in the evening of DAY (UTC), when one subscriber in 997
            # has just moved to 06:00, in most zones a moment already past.
            evening = datetime(DAY.year, DAY.month, DAY.day, 20, tzinfo=UTC)
            ticker = Ticker(config, ledger, clock=lambda: evening)
            report = TickReport(evening + timedelta(minutes=1))
            ticker._load(TickReport(evening))
            ticker._queue(since, evening, TickReport(evening))
            with ledger.engine.begin() as conn:
                conn.execute(update(subscribers).where(subscribers.c.id % 997 == 0)
                             .values(send_time="06:00", changed_at=evening))
            started = time.perf_counter()
            ticker._queue(evening, evening + timedelta(minutes=1), report)
        seconds = time.perf_counter() - started
        with ledger.engine.connect() as conn:
            rows = int(conn.scalar(select(func.count()).select_from(deliveries)) or 0)
    added = report.queued if way == "moved" else rows
    print(json.dumps({"rows": rows, "seconds": seconds, "added": added}))


def build_child(config_path: Path, recipients: int) -> None:
    """Time the per-recipient bytes of the day's digest against one edition; print JSON."""
    from publisher.calendar import Calendar
    from publisher.config import load
    from publisher.content import load_articles
    from publisher.digest import digest_edition
    from publisher.mail import Mailer, Recipient

    config = load(config_path)
    calendar = Calendar(load_articles(config.site.content_dir).articles, config.site.leap_day)
    events = calendar.events_on(DAY)
    mailer = Mailer(config, b"benchmark-secret-" + b"x" * 32)
    people = [Recipient(n, f"reader{n}@example.org", f"Reader {n}" if n % 2 else None,
                        ZONES[n % 3], f"key{n:020d}") for n in range(recipients)]
    figures: dict[str, float] = {}
    for label, build in (("edition", lambda: mailer.edition(events[1])),
                         ("digest", lambda: digest_edition(mailer, events, DAY))):
        started = time.perf_counter()
        built = build()
        figures[f"{label}_render"] = time.perf_counter() - started
        started = time.perf_counter()
        size = sum(len(built.content(person)[0]) for person in people)
        figures[label] = (time.perf_counter() - started) / recipients
        figures[f"{label}_bytes"] = size / recipients
    print(json.dumps(figures))


def child(*args: str) -> dict[str, float]:
    """Run this script's child mode in a fresh process; return its JSON figures."""
    out = subprocess.run([sys.executable, __file__, *args], cwd=ROOT, check=True,
                         capture_output=True, text=True).stdout
    figures: dict[str, float] = json.loads(out)
    return figures


def main() -> None:
    """Measure and print figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subscribers", type=int, default=1_000_000)
    parser.add_argument("--recipients", type=int, default=20_000)
    parser.add_argument("--keep", type=Path, default=None,
                        help="work in this folder and keep it (default: a temporary one)")
    parser.add_argument("--enqueue-child", nargs=2, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--build-child", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.enqueue_child is not None:
        enqueue_child(Path(args.enqueue_child[0]), args.enqueue_child[1])
        return
    if args.build_child is not None:
        build_child(args.build_child, args.recipients)
        return
    os.environ.setdefault("PUBLISHER_SECRET_KEY", "benchmark-secret-" + "x" * 32)
    folder = args.keep or Path(tempfile.mkdtemp(prefix="preferences-bench-"))
    folder.mkdir(parents=True, exist_ok=True)
    try:
        measure(args, folder)
    finally:
        if args.keep is None:
            shutil.rmtree(folder, ignore_errors=True)


def measure(args: argparse.Namespace, folder: Path) -> None:
    """Import both lists, queue the day each way on copies, time the digest; print figures."""
    n = args.subscribers
    print(f"{n:,} subscribers, SQLite ledger, one day of {len(ARTICLES)} appearances",
          flush=True)
    imported: dict[str, Path] = {}
    for kind in ("mixed", "plain"):
        site = folder / kind
        config = write_site(site)
        for name in ("ledger.db", "ledger.db-wal", "ledger.db-shm"):
            (site / name).unlink(missing_ok=True)
        csv_path = site / "subscribers.csv"
        write_csv(csv_path, n, choices=kind == "mixed")
        run = run_measured([*PUBLISHER, "--config", str(config), "subscribers", "import",
                            str(csv_path)])
        print(f"import, {kind} choices: {run.seconds:7.1f} s", flush=True)
        imported[kind] = site
    for way in ("send", "tick", "moved"):
        seconds: dict[str, float] = {}
        added: dict[str, int] = {}
        for kind, site in imported.items():
            copy = folder / f"{kind}-{way}"
            copy.mkdir(exist_ok=True)
            copy_ledger(site / "ledger.db", copy / "ledger.db")
            config = write_site(copy)
            figures = child("--enqueue-child", str(config), way)
            shutil.rmtree(copy)
            seconds[kind] = figures["seconds"]
            added[kind] = int(figures["added"])
            print(f"enqueue ({way}), {kind} choices: {figures['seconds']:6.1f} s, "
                  f"{int(figures['rows']):,} rows", flush=True)
        if way == "moved":
            print(f"next tick after 1 in 997 moved to a moment past: mixed "
                  f"{seconds['mixed'] * 1e3:.0f} ms, plain {seconds['plain'] * 1e3:.0f} ms, "
                  f"{added['mixed']:,} and {added['plain']:,} rows queued for them",
                  flush=True)
            continue
        print(f"enqueue ({way}): mixed {seconds['mixed']:.1f} s against plain "
              f"{seconds['plain']:.1f} s in the same run (ratio "
              f"{seconds['mixed'] / seconds['plain']:.2f}); target <= 20 s for 1M (ratio "
              f"{seconds['mixed'] * 1_000_000 / n / 20:.2f})", flush=True)
    built = child("--build-child", str(write_site(folder / "digest", DIGEST_ARTICLES)),
                  "--recipients", str(args.recipients))
    print(f"per recipient: digest of {len(DIGEST_ARTICLES)} {built['digest'] * 1e6:.0f} us "
          f"({built['digest_bytes']:,.0f} bytes) against one edition "
          f"{built['edition'] * 1e6:.0f} us ({built['edition_bytes']:,.0f} bytes): ratio "
          f"{built['digest'] / built['edition']:.2f} (target <= 2); rendered once: "
          f"{built['digest_render'] * 1e3:.0f} ms against {built['edition_render'] * 1e3:.0f} ms",
          flush=True)


if __name__ == "__main__":
    main()
