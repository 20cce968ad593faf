"""Time looking up one day's events among many articles, once the calendar is loaded.

Usage: .venv/bin/python benchmarks/calendar_day.py [--articles 100000] [--days 366]

Builds ``--articles`` articles in memory (dated 1900 to 2026, some on Feb 29, a tenth not
recurring), indexes them in a :class:`publisher.calendar.Calendar`, then asks for the events of
each day of a leap and a common year. Prints the time to index, the median and slowest lookup,
and the same lookup done by scanning every article (what the calendar's month-day index
avoids), with the ratios. Target: the slowest day within 50 ms.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from datetime import date, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from publisher.calendar import Calendar, Event, anniversary_in
from publisher.config import LeapDay
from publisher.content import Article

TARGET_MS = 50.0
YEARS = (2024, 2026)  # a leap year and a common one: Feb 29 moves in the second


def articles(count: int, seed: int = 3) -> list[Article]:
    """Return ``count`` small articles with random dates."""
    rng = random.Random(seed)
    first, last = date(1900, 1, 1), date(2026, 12, 31)
    span = (last - first).days
    made = []
    for n in range(count):
        when = first + timedelta(days=rng.randrange(span))
        made.append(Article(slug=f"a{n:06d}", title=f"Article {n}", date=when,
                            anniversary=(when.month, when.day), body_html="<p>x</p>",
                            body_text="x", summary="x", source=Path(f"a{n:06d}.md"),
                            recurring=rng.random() > 0.1))
    return made


def scan(all_articles: list[Article], day: date, leap_day: LeapDay) -> list[Event]:
    """Return the events of ``day`` by looking at every article (the baseline)."""
    events = []
    for article in all_articles:
        if article.date == day:
            events.append(Event(article, day, 0))
        elif (article.recurring and article.date < day
              and anniversary_in(article.anniversary, day.year, leap_day) == day):
            events.append(Event(article, day, day.year - article.date.year))
    events.sort(key=lambda e: e.article.slug)
    return events


def main() -> None:
    """Index the articles, look up every day and print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--articles", type=int, default=100_000)
    parser.add_argument("--days", type=int, default=366, help="days per year to look up")
    parser.add_argument("--scan-days", type=int, default=20, help="days for the slow baseline")
    args = parser.parse_args()

    made = articles(args.articles)
    started = time.perf_counter()
    calendar = Calendar(made)
    indexed = time.perf_counter() - started

    days = [date(year, 1, 1) + timedelta(days=n) for year in YEARS for n in range(args.days)
            if (date(year, 1, 1) + timedelta(days=n)).year == year]
    lookups: list[float] = []
    found = 0
    for day in days:
        started = time.perf_counter()
        found += len(calendar.events_on(day))
        lookups.append(time.perf_counter() - started)

    sample = random.Random(5).sample(days, min(args.scan_days, len(days)))
    scans: list[float] = []
    for day in sample:
        started = time.perf_counter()
        expected = scan(calendar.articles, day, calendar.leap_day)
        scans.append(time.perf_counter() - started)
        if [e.key for e in expected] != [e.key for e in calendar.events_on(day)]:
            raise SystemExit(f"the index and the scan disagree on {day}")

    median_ms = statistics.median(lookups) * 1000
    slowest_ms = max(lookups) * 1000
    scan_ms = statistics.median(scans) * 1000
    print(f"articles:               {args.articles:,}; calendar built in {indexed:.2f} s")
    print(f"events_on, median day:  {median_ms:8.3f} ms  "
          f"({found / len(days):.0f} events a day over {len(days)} days)")
    print(f"events_on, slowest day: {slowest_ms:8.3f} ms  (target <= {TARGET_MS:.0f} ms: "
          f"{'met' if slowest_ms <= TARGET_MS else 'NOT met'})")
    print(f"scanning every article: {scan_ms:8.3f} ms  (median of {len(sample)} days)")
    print(f"ratio slowest day / target:    {slowest_ms / TARGET_MS:8.4f}")
    print(f"ratio median day / full scan:  {median_ms / scan_ms:8.4f}")


if __name__ == "__main__":
    main()
