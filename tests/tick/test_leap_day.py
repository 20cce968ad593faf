"""A Feb 29 article over eight years, through the tick, under each leap_day policy."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest

from tests.fixtures.content import WriteArticle
from tests.fixtures.database import sqlite_url
from tests.fixtures.ticks import MakeWorld

YEARS = range(2021, 2029)
LEAP_YEARS = (2024, 2028)


def expected_days(policy: str) -> list[date]:
    """Return the days the article should be sent on from 2021 to 2028."""
    days = []
    for year in YEARS:
        if year in LEAP_YEARS:
            days.append(date(year, 2, 29))
        elif policy == "feb28":
            days.append(date(year, 2, 28))
        elif policy == "mar1":
            days.append(date(year, 3, 1))
    return days


@pytest.mark.parametrize("policy", ["feb28", "mar1", "skip"])
def test_leap_day_article_is_sent_once_a_year_on_the_policy_day(
        make_world: MakeWorld, write_article: WriteArticle, tmp_path: Path, policy: str) -> None:
    write_article("leap", date="2020-02-29")
    world = make_world(sqlite_url(tmp_path), timezone="UTC", publish_time="09:00",
                       leap_day=policy)
    world.subscribe("reader@example.org")

    for year in YEARS:
        # Twice a day around the turn of February, with the rest of the year as downtime.
        start = datetime(year, 2, 26, 3, 0, tzinfo=UTC)
        world.run(start, start + timedelta(days=5), timedelta(hours=12))

    sent = world.sent()
    assert [s.sent_at.date() for s in sent] == expected_days(policy)
    assert [s.date.date() for s in sent] == expected_days(policy)
    assert [s.year for s in sent] == [d.year for d in expected_days(policy)]
    assert set(world.counts().values()) <= {1}
    # Nothing was ever old enough to be skipped: each send fell within its own day's ticks.
    assert sum(r.skipped for r in world.reports) == 0
