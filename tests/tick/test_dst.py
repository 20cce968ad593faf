"""A 02:30 publish time on the DST change days of Berlin and New York sends exactly once."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from tests.fixtures.content import WriteArticle
from tests.fixtures.database import sqlite_url
from tests.fixtures.ticks import MakeWorld

STEP = timedelta(minutes=5)

# (zone, change day, the instant 02:30 names that day)
CHANGES = [
    pytest.param("Europe/Berlin", date(2024, 3, 31), datetime(2024, 3, 31, 1, 30, tzinfo=UTC),
                 id="berlin-spring"),
    pytest.param("Europe/Berlin", date(2024, 10, 27), datetime(2024, 10, 27, 0, 30, tzinfo=UTC),
                 id="berlin-autumn"),
    pytest.param("America/New_York", date(2024, 3, 10), datetime(2024, 3, 10, 7, 30, tzinfo=UTC),
                 id="new-york-spring"),
    pytest.param("America/New_York", date(2024, 11, 3), datetime(2024, 11, 3, 7, 30, tzinfo=UTC),
                 id="new-york-autumn"),
]


@pytest.mark.parametrize(("zone", "change", "expected"), CHANGES)
@pytest.mark.parametrize("as_site_zone", [True, False], ids=["site-zone", "subscriber-zone"])
def test_publish_time_inside_a_dst_change_sends_once_that_day(
        make_world: MakeWorld, write_article: WriteArticle, tmp_path: Path, zone: str,
        change: date, expected: datetime, as_site_zone: bool) -> None:
    tz = ZoneInfo(zone)
    before, after = change - timedelta(days=1), change + timedelta(days=1)
    write_article("eve", date=before.replace(year=2015).isoformat())
    write_article("change", date=change.replace(year=2016).isoformat())
    write_article("morrow", date=after.replace(year=2017).isoformat())
    world = make_world(sqlite_url(tmp_path), timezone=zone if as_site_zone else "UTC",
                       publish_time="02:30")
    world.subscribe("reader@example.org", None if as_site_zone else zone)

    # 48 hours of ticks, from midnight before the change day to midnight after it.
    start = datetime.combine(before, time(0), tzinfo=tz).astimezone(UTC)
    end = datetime.combine(after, time(0), tzinfo=tz).astimezone(UTC)
    world.run(start, end, STEP)

    assert world.counts() == {("reader@example.org", "eve", before.year): 1,
                              ("reader@example.org", "change", change.year): 1}
    sent = {s.slug: s for s in world.sent()}
    # Sent by the first tick at or after the one instant 02:30 names on the change day.
    assert expected <= sent["change"].sent_at < expected + STEP
    assert sent["change"].sent_at.astimezone(tz).date() == change
    assert sent["change"].date == expected
    assert sum(r.queued for r in world.reports) == 2
