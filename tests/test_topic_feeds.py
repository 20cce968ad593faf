"""The feeds of each tag and of the milestones, read back with feedparser."""

from __future__ import annotations

import json
from datetime import date

import feedparser
import icalendar

from publisher import site
from publisher.calendar import Calendar
from publisher.config import Config
from publisher.content import load_articles
from publisher.preferences import is_milestone
from publisher.topics import milestone_events
from tests.fixtures.content import BASE_URL, SMALL_SITE_DAY, WriteArticle


def test_a_tag_feed_holds_the_tagged_appearances_with_the_main_feeds_ids(
        small_site: Config) -> None:
    site.build_site(small_site, SMALL_SITE_DAY)
    output = small_site.site.output_dir
    main = {e.id: e for e in feedparser.parse((output / "feed.xml").read_bytes()).entries}
    rss = feedparser.parse((output / "tags/spaceflight/feed.xml").read_bytes())
    assert not rss.bozo
    assert rss.feed.title == "Test Anniversaries: spaceflight"
    assert rss.entries and all("spaceflight" in {t.term for t in e.tags} for e in rss.entries)
    # One id per (article, year), the same as in the main feeds (which hold fewer years).
    ids = [e.id for e in rss.entries]
    assert ids == [f"tag:example.org,2021-07-20:moon/{year}" for year in range(2025, 2020, -1)]
    assert ids[0] in main
    atom = feedparser.parse((output / "tags/apollo/atom.xml").read_bytes())
    assert not atom.bozo
    assert [link.href for link in atom.feed.links if link.rel == "self"] == [
        BASE_URL + "tags/apollo/atom.xml"]
    assert {e.id for e in atom.entries} == {e.id for e in rss.entries}  # only moon has both
    document = json.loads((output / "tags/calendars/feed.json").read_text(encoding="utf-8"))
    assert document["feed_url"] == BASE_URL + "tags/calendars/feed.json"
    assert {item["url"].split("/")[-2] for item in document["items"]} == {"leap"}
    calendar = icalendar.Calendar.from_ical((output / "tags/calendars/anniversaries.ics")
                                            .read_bytes())
    assert [str(event["summary"]) for event in calendar.walk("VEVENT")] == ["Leap day"]


def test_the_milestones_feed_holds_first_publications_and_milestones_only(
        write_article: WriteArticle, make_config: object) -> None:
    assert callable(make_config)
    write_article("old", date="1976-05-01", title="Fifty years")
    write_article("six", date="2020-05-01", title="Six years")
    write_article("one", date="2025-05-01", title="One year")
    write_article("new", date="2026-05-01", title="New")
    config: Config = make_config(feed_items=50)
    day = date(2026, 5, 1)
    site.build_site(config, day)
    parsed = feedparser.parse((config.site.output_dir / "milestones/feed.xml").read_bytes())
    assert not parsed.bozo
    ids = [e.id.rsplit(":", 1)[1] for e in parsed.entries]
    # Newest first: this year's first publication and milestones, then those before.
    assert ids[:3] == ["new/2026", "old/2026", "one/2026"]
    assert "six/2026" not in ids and "old/2025" not in ids
    calendar = Calendar(load_articles(config.site.content_dir).articles)
    events = milestone_events(calendar, day, 50)
    assert all(e.is_first or is_milestone(e.years_since) for e in events)
    assert [f"{e.article.slug}/{e.year}" for e in events] == ids


def test_pages_link_the_tag_and_milestone_feeds(small_site: Config) -> None:
    site.build_site(small_site, SMALL_SITE_DAY)
    output = small_site.site.output_dir
    page = (output / "articles/moon/index.html").read_text(encoding="utf-8")
    assert 'href="../../tags/spaceflight/feed.xml"' in page
    assert 'href="../../tags/apollo/feed.xml"' in page
    index = (output / "index.html").read_text(encoding="utf-8")
    for name in ("feed.xml", "atom.xml", "feed.json"):
        assert f'href="{BASE_URL}milestones/{name}"' in index


def test_only_the_main_feeds_name_the_websub_hub(write_article: WriteArticle,
                                                 make_config: object) -> None:
    assert callable(make_config)
    write_article("moon", date="2020-07-20", tags=["space"])
    config: Config = make_config(websub_hub="https://hub.example.net/")
    site.build_site(config, date(2026, 7, 20))
    output = config.site.output_dir
    assert b"https://hub.example.net/" in (output / "atom.xml").read_bytes()
    for name in ("tags/space/atom.xml", "tags/space/feed.xml", "tags/space/feed.json",
                 "milestones/atom.xml"):
        assert b"hub.example.net" not in (output / name).read_bytes(), name
