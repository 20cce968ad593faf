"""Subscribers in different zones receive on their own local date at their local publish time."""

from __future__ import annotations

import shutil
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

from publisher.calendar import publish_instant
from publisher.content import load_article
from tests.fixtures.content import WriteArticle
from tests.fixtures.database import sqlite_url
from tests.fixtures.ticks import MakeWorld

STEP = timedelta(minutes=5)
ANNIVERSARY = date(2025, 6, 5)
READERS = {
    "tokyo@example.org": "Asia/Tokyo",
    "kolkata@example.org": "Asia/Kolkata",
    "kathmandu@example.org": "Asia/Kathmandu",
    "la@example.org": "America/Los_Angeles",
    "berlin@example.org": None,  # no zone of their own: the site's
}


def test_each_zone_receives_on_its_local_anniversary_at_its_local_publish_time(
        make_world: MakeWorld, write_article: WriteArticle, database_url: str) -> None:
    write_article("solstice-eve", date="2019-06-05")
    world = make_world(database_url, timezone="Europe/Berlin", publish_time="08:15")
    for email, zone in READERS.items():
        world.subscribe(email, zone)

    # From before Tokyo's 5 June begins to after Los Angeles' 5 June ends.
    world.run(datetime(2025, 6, 4, 14, 0, tzinfo=UTC), datetime(2025, 6, 6, 8, 0, tzinfo=UTC),
              STEP)

    sent = world.sent()
    assert sorted(s.to for s in sent) == sorted(READERS)
    for message in sent:
        tz = ZoneInfo(READERS[message.to] or "Europe/Berlin")
        expected = publish_instant(ANNIVERSARY, time(8, 15), tz)
        assert expected <= message.sent_at < expected + STEP, message.to
        assert message.sent_at.astimezone(tz).date() == ANNIVERSARY
        assert message.date == expected
        assert (message.slug, message.year) == ("solstice-eve", 2025)
    # Each zone was queued as its own publish time came: five separate moments, one row each.
    assert [r.queued for r in world.reports if r.queued] == [1] * len(READERS)


def test_a_subscriber_joining_after_the_publish_time_waits_for_the_next_event(
        make_world: MakeWorld, write_article: WriteArticle, database_url: str) -> None:
    write_article("first", date="2019-06-05")
    write_article("second", date="2019-06-06")
    world = make_world(database_url, timezone="UTC", publish_time="09:00")
    world.subscribe("early@example.org")
    world.tick(datetime(2025, 6, 5, 9, 0, 30, tzinfo=UTC))
    world.subscribe("late@example.org")
    world.run(datetime(2025, 6, 5, 9, 1, tzinfo=UTC), datetime(2025, 6, 6, 9, 1, tzinfo=UTC),
              timedelta(hours=1))
    assert world.counts() == {("early@example.org", "first", 2025): 1,
                              ("early@example.org", "second", 2025): 1,
                              ("late@example.org", "second", 2025): 1}


def test_the_sample_article_comes_back_on_its_anniversary_in_its_zone(
        make_world: MakeWorld, content_dir: Path, seed_path: Path, tmp_path: Path) -> None:
    shutil.copy(seed_path, content_dir / seed_path.name)
    article = load_article(content_dir / seed_path.name)
    world = make_world(sqlite_url(tmp_path), timezone="Asia/Baku", publish_time="09:00")
    world.subscribe("reader@example.org")
    anniversary = article.date.replace(year=article.date.year + 3)
    start = datetime.combine(anniversary - timedelta(days=1), time(0), tzinfo=UTC)
    world.run(start, start + timedelta(days=2), timedelta(minutes=30))
    sent = world.sent()
    assert [(s.slug, s.year) for s in sent] == [(article.slug, anniversary.year)]
    assert sent[0].sent_at.astimezone(ZoneInfo("Asia/Baku")).date() == anniversary
