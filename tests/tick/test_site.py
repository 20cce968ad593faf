"""The tick rebuilds the site at start-up, once a day after the publish time, and on edits."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from publisher import content
from publisher.content import Article
from publisher.schedule import Ticker
from publisher.status import clock_status
from tests.fixtures.content import WriteArticle
from tests.fixtures.database import sqlite_url
from tests.fixtures.ticks import MakeWorld, World

# Publish time 09:00 in Berlin (UTC+2 in June): 07:00 UTC.
MORNING = datetime(2025, 6, 5, 6, 0, tzinfo=UTC)
AFTER_PUBLISH = datetime(2025, 6, 5, 7, 0, 30, tzinfo=UTC)


@pytest.fixture
def world(make_world: MakeWorld, write_article: WriteArticle, tmp_path: Path) -> World:
    """Return a world with two articles, one of them due on 5 June, and one subscriber."""
    write_article("june", date="2019-06-05")
    write_article("winter", date="2018-01-10")
    made = make_world(sqlite_url(tmp_path), timezone="Europe/Berlin", publish_time="09:00")
    made.subscribe("reader@example.org")
    return made


@pytest.fixture
def parses(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """Record every article file actually parsed (the real parser still runs)."""
    seen: list[Path] = []
    real = content.load_article

    def counting(path: Path) -> Article:
        seen.append(path)
        return real(path)

    monkeypatch.setattr(content, "load_article", counting)
    return seen


def index(world: World) -> str:
    """Return the built front page."""
    return (world.config.site.output_dir / "index.html").read_text(encoding="utf-8")


def test_start_up_builds_then_waits_for_the_publish_time(world: World) -> None:
    first = world.tick(MORNING)
    assert first.built is not None and first.built.day.isoformat() == "2025-06-04"
    assert "4 June 2025" in index(world)
    assert world.tick(MORNING + timedelta(minutes=30)).built is None

    published = world.tick(AFTER_PUBLISH)
    assert published.built is not None and published.built.day.isoformat() == "2025-06-05"
    assert "5 June 2025" in index(world)
    assert world.tick(AFTER_PUBLISH + timedelta(hours=1)).built is None


def test_a_restart_builds_again_and_a_second_process_does_not_redo_a_build(
        world: World) -> None:
    world.tick(MORNING)
    other = Ticker(world.config, world.ledger, clock=world.clock)
    assert other.tick(MORNING).built is not None  # its own start-up
    assert world.tick(AFTER_PUBLISH).built is not None
    # The new day was built by the first ticker; the ledger says so to the second.
    assert other.tick(AFTER_PUBLISH + timedelta(seconds=30)).built is None
    status = clock_status(world.config, now=AFTER_PUBLISH)
    assert status.site_built is not None and status.site_built.isoformat() == "2025-06-05"
    assert status.last_tick == AFTER_PUBLISH + timedelta(seconds=30)


def test_unchanged_articles_are_not_parsed_again_and_edits_are_picked_up(
        world: World, write_article: WriteArticle, parses: list[Path]) -> None:
    world.tick(MORNING)
    assert len(parses) == 2
    parses.clear()
    assert world.tick(MORNING + timedelta(minutes=1)).built is None
    assert parses == []

    edited = write_article("winter", date="2018-01-10", title="A much longer winter title")
    added = write_article("late-june", date="2020-06-05", title="Added while running")
    report = world.tick(MORNING + timedelta(minutes=2))
    assert sorted(parses) == sorted([edited, added])
    assert report.built is not None
    assert "A much longer winter title" in index(world)

    world.tick(AFTER_PUBLISH)
    assert world.counts() == {("reader@example.org", "june", 2025): 1,
                              ("reader@example.org", "late-june", 2025): 1}


def test_a_broken_article_is_left_out_and_the_rest_still_goes_out(
        world: World, write_article: WriteArticle, content_dir: Path) -> None:
    (content_dir / "broken.md").write_text("---\ntitle: [unclosed\n---\nbody\n", encoding="utf-8")
    report = world.tick(AFTER_PUBLISH)
    assert report.built is not None
    assert [e.path for e in report.built.errors] == [content_dir / "broken.md"]
    assert world.counts() == {("reader@example.org", "june", 2025): 1}


def test_a_failing_build_is_reported_and_retried_later_not_every_tick(
        make_world: MakeWorld, write_article: WriteArticle, tmp_path: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    templates = tmp_path / "templates"
    templates.mkdir()
    (templates / "index.html").write_text("{{ no_such_variable }}", encoding="utf-8")
    write_article("june", date="2019-06-05")
    world = make_world(sqlite_url(tmp_path), timezone="UTC", publish_time="09:00",
                       templates_dir=str(templates))
    world.subscribe("reader@example.org")

    def problems(now: datetime) -> list[str]:
        return world.tick(now).problems

    start = datetime(2025, 6, 5, 9, 0, 30, tzinfo=UTC)
    first = problems(start)
    assert len(first) == 1 and "site not rebuilt for 2025-06-05" in first[0]
    assert "no_such_variable" in first[0]
    assert first[0] in caplog.text
    # The email does not depend on the site: it went out all the same.
    assert world.counts() == {("reader@example.org", "june", 2025): 1}
    assert problems(start + timedelta(minutes=1)) == []
    assert len(problems(start + timedelta(minutes=5))) == 1

    (templates / "index.html").unlink()
    assert world.tick(start + timedelta(minutes=10)).built is not None


def test_a_database_failure_is_logged_and_the_next_tick_does_the_work(
        world: World, caplog: pytest.LogCaptureFixture) -> None:
    with world.ledger.engine.begin() as conn:
        conn.exec_driver_sql("ALTER TABLE state RENAME TO state_away")
    world.clock.now = AFTER_PUBLISH
    world.ticker.tick_safely()
    assert "tick failed: database error" in caplog.text
    assert world.sent() == []

    with world.ledger.engine.begin() as conn:
        conn.exec_driver_sql("ALTER TABLE state_away RENAME TO state")
    world.clock.now = AFTER_PUBLISH + timedelta(seconds=30)
    world.ticker.tick_safely()
    assert world.counts() == {("reader@example.org", "june", 2025): 1}
