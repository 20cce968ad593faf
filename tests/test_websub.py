"""WebSub: the feeds name the hub, and each build that changed a feed pings a local hub."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import feedparser
import pytest
from click.testing import CliRunner, Result
from lxml import etree

from publisher import feeds, websub
from publisher.cli import cli, ping_line
from publisher.config import load
from publisher.ledger import Ledger
from publisher.status import websub_status
from tests.fixtures.content import WriteArticle
from tests.fixtures.database import sqlite_url
from tests.fixtures.hub import Hub
from tests.fixtures.ticks import MakeWorld, write_config

HUB = "https://hub.example.net/"
FEED_NAMES = [feeds.RSS_NAME, feeds.ATOM_NAME, feeds.JSON_NAME]


def run(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


@pytest.fixture
def published(tmp_path: Path, write_article: WriteArticle, hub: Hub,
              site_server: tuple[str, Path]) -> tuple[Path, str]:
    """Write a config whose site is served on loopback and names the local hub."""
    base_url, folder = site_server
    write_article("moon", date="2021-07-20")
    write_article("flight", date="2019-12-17")
    config = write_config(tmp_path / "publisher.toml", {
        "site": {"base_url": base_url, "timezone": "UTC", "content_dir": "content",
                 "output_dir": str(folder), "websub_hub": hub.url},
        "state": {"database_url": sqlite_url(tmp_path)},
    })
    return config, base_url


def test_every_feed_names_the_hub_and_itself(make_config: Any,
                                             write_article: WriteArticle) -> None:
    write_article("moon", date="2021-07-20")
    config = make_config(websub_hub=HUB)
    from tests.test_feeds import site_feeds

    built = site_feeds(config, date(2025, 7, 20))
    for name in (feeds.RSS_NAME, feeds.ATOM_NAME):
        parsed = feedparser.parse(built[name])
        links = {(link.rel, link.href) for link in parsed.feed.links}
        assert ("hub", HUB) in links
        assert ("self", config.site.url(name)) in links
    channel = etree.fromstring(built[feeds.RSS_NAME]).find("channel")
    assert channel is not None
    rels = [link.get("rel") for link in channel.findall("{http://www.w3.org/2005/Atom}link")]
    assert rels == ["self", "hub"]  # the channel's <link> is still the home page
    assert channel.findtext("link") == config.site.url()
    document = json.loads(built[feeds.JSON_NAME])
    assert document["hubs"] == [{"type": "WebSub", "url": HUB}]
    assert document["feed_url"] == config.site.url(feeds.JSON_NAME)


def test_without_a_hub_no_feed_names_one(make_config: Any, write_article: WriteArticle) -> None:
    write_article("moon", date="2021-07-20")
    from tests.test_feeds import site_feeds

    built = site_feeds(make_config(), date(2025, 7, 20))
    assert b'rel="hub"' not in built[feeds.RSS_NAME] + built[feeds.ATOM_NAME]
    assert "hubs" not in json.loads(built[feeds.JSON_NAME])


def test_a_build_that_changes_the_feeds_pings_the_hub_once_per_feed(
        published: tuple[Path, str], hub: Hub) -> None:
    config, base_url = published
    result = run("--config", str(config), "build", "--date", "2025-07-20")
    assert result.exit_code == 0, result.output
    assert sorted(hub.topics()) == sorted(base_url + name for name in FEED_NAMES)
    assert hub.problems() == []
    assert result.output.count("accepted") == 3

    status = run("--config", str(config), "status").output
    assert f"websub hub: {hub.url}" in status
    for name in FEED_NAMES:
        assert f"  {name}: accepted " in status and "204 No Content" in status


def test_a_build_that_leaves_the_feeds_alone_sends_nothing(
        published: tuple[Path, str], hub: Hub, write_article: WriteArticle) -> None:
    config, _ = published
    assert run("--config", str(config), "build", "--date", "2025-07-20").exit_code == 0
    assert len(hub.pings) == 3
    # The next day has no appearance: the front page changes, no feed does.
    assert run("--config", str(config), "build", "--date", "2025-07-21").exit_code == 0
    assert len(hub.pings) == 3
    # Building into another folder changes nothing the feed URLs serve.
    write_article("extra", date="2025-07-21")
    other = config.parent / "elsewhere"
    assert run("--config", str(config), "build", "--date", "2025-07-21", "--out",
               str(other)).exit_code == 0
    assert len(hub.pings) == 3
    assert run("--config", str(config), "build", "--date", "2025-07-21").exit_code == 0
    assert len(hub.pings) == 6 and hub.problems() == []


def test_a_refusing_hub_is_retried_with_backoff_and_never_fails_the_build(
        published: tuple[Path, str], hub: Hub) -> None:
    config_path, _ = published
    hub.answers = [503, 503, 503]
    result = run("--config", str(config_path), "build", "--date", "2025-07-20")
    assert result.exit_code == 0
    assert (config_path.parent / "served" / "feed.xml").is_file()
    status = run("--config", str(config_path), "status").output
    assert status.count("failed") == 3 and "503 Service Unavailable; attempt 2 at" in status

    config = load(config_path)
    with Ledger.open(config.state.database_url) as ledger:
        states = websub_status(config).feeds
        first_retry = states[0].next_at
        assert first_retry is not None
        # Not before the backoff has passed.
        assert websub.deliver_due(config, ledger, first_retry - timedelta(seconds=1)) == []
        hub.answers = [500, 500, 500]
        again = websub.deliver_due(config, ledger, first_retry)
        assert [state.attempts for state in again] == [2, 2, 2]
        assert [state.next_at for state in again] == [first_retry + timedelta(minutes=2)] * 3
        done = websub.deliver_due(config, ledger, first_retry + timedelta(minutes=2))
    assert [(state.last_ok, state.pending, state.attempts) for state in done] == [
        (True, False, 0)] * 3
    assert len(hub.pings) == 9 and hub.problems() == []
    assert run("--config", str(config_path), "status").output.count("accepted") == 3


def test_an_unreachable_hub_is_reported_and_the_build_succeeds(
        tmp_path: Path, write_article: WriteArticle) -> None:
    write_article("moon", date="2021-07-20")
    config = write_config(tmp_path / "publisher.toml", {
        "site": {"timezone": "UTC", "content_dir": "content", "output_dir": "public",
                 # Port 9 (discard) on loopback: nothing listens there.
                 "websub_hub": "http://127.0.0.1:9/hub"},
        "state": {"database_url": sqlite_url(tmp_path)},
    })
    result = run("--config", str(config), "build", "--date", "2025-07-20")
    assert result.exit_code == 0
    assert result.output.count("failed") == 3
    assert "refused" in result.output.lower()


def test_giving_up_after_the_last_attempt_waits_for_the_next_change(
        published: tuple[Path, str], hub: Hub) -> None:
    config_path, _ = published
    assert run("--config", str(config_path), "build", "--date", "2025-07-20").exit_code == 0
    config = load(config_path)
    now = datetime(2025, 7, 20, 9, tzinfo=UTC)
    with Ledger.open(config.state.database_url) as ledger:
        websub.mark_changed(config, ledger, [feeds.ATOM_NAME], now)

        def refused(hub_url: str, topic: str) -> websub.PingResult:
            return websub.PingResult(False, "503 Service Unavailable")

        for _ in range(websub.MAX_ATTEMPTS):
            [state] = websub.deliver_due(config, ledger, now, refused)
            now = state.next_at or now
        assert not state.pending and state.attempts == websub.MAX_ATTEMPTS
        assert websub.deliver_due(config, ledger, now + timedelta(days=1), refused) == []
        assert "gave up after 12 attempts" in ping_line(state)
        websub.mark_changed(config, ledger, [feeds.ATOM_NAME], now)
        [state] = websub.deliver_due(config, ledger, now)
    assert state.last_ok and len(hub.pings) == 4 and hub.problems() == []


def test_retry_delays_double_up_to_an_hour() -> None:
    assert [websub.retry_delay(n).total_seconds() for n in (1, 2, 3, 6, 7, 12)] == [
        60, 120, 240, 1920, 3600, 3600]


def test_the_daemon_pings_after_the_build_that_changed_the_feeds(
        make_world: MakeWorld, write_article: WriteArticle, hub: Hub,
        site_server: tuple[str, Path], tmp_path: Path) -> None:
    base_url, folder = site_server
    write_article("june", date="2019-06-05")
    world = make_world(sqlite_url(tmp_path), base_url=base_url, output_dir=str(folder),
                       websub_hub=hub.url, timezone="UTC")
    first = world.tick(datetime(2025, 6, 5, 8, tzinfo=UTC))
    assert first.built is not None and len(first.pings) == 3
    assert all(ping.last_ok for ping in first.pings) and hub.problems() == []
    # A later tick without a build pings nothing more.
    assert world.tick(datetime(2025, 6, 5, 8, 30, tzinfo=UTC)).pings == []
    assert len(hub.pings) == 3
    # The anniversary's build changes the feeds: the hub hears of it.
    published = world.tick(datetime(2025, 6, 5, 9, 1, tzinfo=UTC))
    assert published.built is not None and published.built.changed_feeds == FEED_NAMES
    assert len(hub.pings) == 6 and hub.problems() == []
    assert "WebSub hub accepted 3 of 3 ping(s)" in published.summary()
