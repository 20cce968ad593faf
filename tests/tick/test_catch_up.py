"""After downtime, deliveries within schedule.catch_up_days go out once; older ones are skipped."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

from click.testing import CliRunner

from publisher.cli import cli
from tests.fixtures.content import WriteArticle
from tests.fixtures.ticks import MakeWorld, write_config

# Publish time 09:00 UTC; the last tick before the downtime is on 1 June after it.
LAST_TICK = datetime(2025, 6, 1, 10, 0, tzinfo=UTC)


def test_one_day_of_downtime_is_caught_up_once(
        make_world: MakeWorld, write_article: WriteArticle, database_url: str) -> None:
    write_article("missed", date="2020-06-02")
    world = make_world(database_url, timezone="UTC", publish_time="09:00")
    world.subscribe("reader@example.org")
    world.tick(LAST_TICK)
    assert world.sent() == []

    restart = LAST_TICK + timedelta(days=1, hours=3)
    world.run(restart, restart + timedelta(hours=2), timedelta(minutes=10))

    sent = world.sent()
    assert world.counts() == {("reader@example.org", "missed", 2025): 1}
    assert sent[0].sent_at == restart  # at the first tick after the restart
    assert sum(r.skipped for r in world.reports) == 0


def test_five_days_of_downtime_skips_what_is_older_than_the_window(
        make_world: MakeWorld, write_article: WriteArticle, database_url: str,
        tmp_path: Path) -> None:
    write_article("too-old", date="2020-06-02")
    write_article("in-window", date="2020-06-05")
    world = make_world(database_url, timezone="UTC", publish_time="09:00", catch_up_days=2)
    world.subscribe("reader@example.org")
    world.subscribe("other@example.org", "Asia/Tokyo")
    world.tick(LAST_TICK)

    restart = LAST_TICK + timedelta(days=5)
    world.run(restart, restart + timedelta(days=1), timedelta(hours=1))

    # 2 June is five days back: recorded as skipped for both zones, never sent. 5 June is two
    # days back, inside the window: sent once each.
    assert world.counts() == {("reader@example.org", "in-window", 2025): 1,
                              ("other@example.org", "in-window", 2025): 1}
    assert sum(r.skipped for r in world.reports) == 2

    config_path = write_config(tmp_path / "publisher.toml", world.mapping)
    result = CliRunner().invoke(cli, ["status", "--config", str(config_path)])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert "2025-06-02  too-old 2025: skipped 2" in lines
    assert "2025-06-05  in-window 2025: sent 2" in lines
    assert "last tick: 2025-06-07 10:00:00 UTC" in lines
    assert "next anniversary moments:" in lines
    # Relative to the real date, so only the shape is known: local time, zone, UTC, article.
    upcoming = re.compile(r"  \d{4}-\d\d-\d\d 09:00 (UTC|Asia/Tokyo) = .* UTC: "
                          r".*in-window \(\d+ years\)")
    assert any(upcoming.fullmatch(line) for line in lines)


def test_without_catch_up_only_the_current_day_is_sent(
        make_world: MakeWorld, write_article: WriteArticle, database_url: str) -> None:
    write_article("yesterday", date="2020-06-02")
    write_article("today", date="2020-06-03")
    world = make_world(database_url, timezone="UTC", publish_time="09:00", catch_up_days=0)
    world.subscribe("reader@example.org")
    world.tick(LAST_TICK)
    world.tick(datetime(2025, 6, 3, 12, 0, tzinfo=UTC))
    assert world.counts() == {("reader@example.org", "today", 2025): 1}
    assert world.reports[-1].skipped == 1
