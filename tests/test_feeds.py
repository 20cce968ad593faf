"""RSS, Atom and JSON Feed: golden bytes, read back by feedparser, and the validator's rules."""

from __future__ import annotations

import dataclasses
import json
import os
import random
import re
from collections.abc import Callable
from datetime import date, datetime
from html import unescape
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import feedparser
import pytest
from lxml import etree

from publisher import content, feeds
from publisher.calendar import Calendar, Event, publish_instant
from publisher.config import Config
from publisher.content import load_articles
from publisher.render import language, make_environment
from tests.fixtures.content import BASE_URL, SMALL_SITE_DAY, WriteArticle, WriteFile

GOLDEN = Path(__file__).parent / "golden" / "feeds"
NS = {"atom": "http://www.w3.org/2005/Atom", "content": "http://purl.org/rss/1.0/modules/content/",
      "dc": "http://purl.org/dc/elements/1.1/"}
EXPECTED_KEYS = [
    ("leap", "2024-02-29", 2026), ("flight", "2019-12-17", 2025), ("moon", "2021-07-20", 2025),
    ("pi", "2020-03-14", 2025), ("leap", "2024-02-29", 2025), ("flight", "2019-12-17", 2024),
    ("moon", "2021-07-20", 2024), ("eclipse", "2024-04-08", 2024), ("pi", "2020-03-14", 2024),
    ("leap", "2024-02-29", 2024),
]
EXPECTED_IDS = [f"tag:example.org,{when}:{slug}/{year}" for slug, when, year in EXPECTED_KEYS]
# RFC 822 as RSS wants it, with a numeric zone; RFC 3339 for Atom and JSON Feed.
RFC822 = re.compile(r"^(Mon|Tue|Wed|Thu|Fri|Sat|Sun), \d{2} "
                    r"(Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) \d{4} "
                    r"\d{2}:\d{2}:\d{2} [+-]\d{4}$")
RFC3339 = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(Z|[+-]\d{2}:\d{2})$")
# RFC 4151 tag URIs, as the W3C validator checks them.
TAG_URI = re.compile(r"^tag:[a-z0-9.-]+,\d{4}(-\d{2}(-\d{2})?)?:"
                     r"[0-9a-zA-Z;/?:@&=+$.\-_!~*'()%,#]+$")


def site_feeds(config: Config, day: date = SMALL_SITE_DAY) -> dict[str, bytes]:
    result = load_articles(config.site.content_dir)
    assert result.errors == []
    calendar = Calendar(result.articles, config.site.leap_day)
    env = make_environment(config.site.templates_dir)
    return feeds.build_feeds(config.site, calendar, day, env)


class _Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.urls += [value or "" for name, value in attrs if name in ("href", "src")]


def urls_in(fragment: str) -> list[str]:
    parser = _Links()
    parser.feed(fragment)
    return parser.urls


@pytest.fixture
def small_feeds(small_site: Config) -> dict[str, bytes]:
    return site_feeds(small_site)


@pytest.mark.golden
@pytest.mark.parametrize("name", [feeds.RSS_NAME, feeds.ATOM_NAME, feeds.JSON_NAME])
def test_feed_matches_golden_file(small_feeds: dict[str, bytes], name: str) -> None:
    golden = GOLDEN / name
    if os.environ.get("UPDATE_GOLDEN") == "1":
        golden.parent.mkdir(parents=True, exist_ok=True)
        golden.write_bytes(small_feeds[name])
    assert golden.is_file(), f"{golden} is missing: run `make golden`"
    assert small_feeds[name] == golden.read_bytes(), f"{name} changed: review, then `make golden`"


def test_same_input_and_date_give_the_same_bytes(small_site: Config) -> None:
    assert site_feeds(small_site) == site_feeds(small_site)


@pytest.mark.parametrize("name", [feeds.RSS_NAME, feeds.ATOM_NAME])
def test_feedparser_reads_the_expected_items(small_feeds: dict[str, bytes], name: str) -> None:
    parsed = feedparser.parse(small_feeds[name])
    assert parsed.bozo == 0, parsed.get("bozo_exception")
    assert parsed.feed.title == "Test Anniversaries"
    assert [entry.id for entry in parsed.entries] == EXPECTED_IDS
    first, moon = parsed.entries[0], parsed.entries[2]
    assert first.title == "Leap day (2 years ago)"
    assert first.link == f"{BASE_URL}articles/leap/#year-2026"
    assert first.published_parsed[:5] == (2026, 2, 28, 8, 0)  # 09:00 in Berlin is 08:00 UTC
    assert moon.author == "Archive desk"
    assert [tag.term for tag in moon.tags] == ["spaceflight", "Apollo"]
    assert "First published on 20 July 2021, 4 years ago." in moon.content[0].value
    assert "56 years since 20 July 1969." in moon.content[0].value
    # RSS carries the summary as HTML, Atom as text: both read back as the same words.
    assert unescape(moon.summary) == "Apollo 11 landed on 20 July 1969 & came home."


def test_articles_after_the_date_are_absent(small_feeds: dict[str, bytes]) -> None:
    for data in small_feeds.values():
        assert b"future" not in data and b"From the future" not in data


def test_feed_items_limit_and_order_newest_first(small_site: Config) -> None:
    config = dataclasses.replace(small_site,
                                 site=dataclasses.replace(small_site.site, feed_items=3))
    parsed = feedparser.parse(site_feeds(config)[feeds.ATOM_NAME])
    assert [entry.id for entry in parsed.entries] == EXPECTED_IDS[:3]


def test_rss_follows_the_validator_rules(small_feeds: dict[str, bytes]) -> None:
    root = etree.fromstring(small_feeds[feeds.RSS_NAME])
    channel = root.find("channel")
    assert channel is not None
    assert root.get("version") == "2.0"
    assert channel.findtext("link") == BASE_URL
    [self_link] = channel.findall("atom:link", NS)
    assert (self_link.get("href"), self_link.get("rel")) == (f"{BASE_URL}feed.xml", "self")
    assert self_link.get("type") == "application/rss+xml"
    dates = [channel.findtext("lastBuildDate")]
    dates += [item.findtext("pubDate") for item in channel.iter("item")]
    assert all(d is not None and RFC822.match(d) for d in dates), dates
    assert dates[0] == dates[1]  # the newest item's time, not the clock
    items = channel.findall("item")
    guids = [item.find("guid") for item in items]
    assert all(g is not None and g.get("isPermaLink") == "false" for g in guids)
    assert len({g.text for g in guids if g is not None}) == len(items)
    for item in items:
        assert item.find("author") is None  # RSS <author> must be an e-mail address
        link = item.findtext("link") or ""
        html = item.findtext("content:encoded", namespaces=NS) or ""
        for url in [link, *urls_in(html)]:
            assert url.startswith(BASE_URL) or url.startswith("https://example.net/"), url
    creators = [c.text for c in root.iterfind(".//dc:creator", NS)]
    assert creators == ["Archive desk", "Archive desk"]


def test_atom_follows_the_validator_rules(small_feeds: dict[str, bytes]) -> None:
    root = etree.fromstring(small_feeds[feeds.ATOM_NAME])
    atom = "{http://www.w3.org/2005/Atom}"
    assert root.tag == f"{atom}feed"
    assert root.findtext("atom:id", namespaces=NS) == BASE_URL
    assert root.findtext("atom:author/atom:name", namespaces=NS) == "Test Anniversaries"
    self_links = [link.get("href") for link in root.findall("atom:link", NS)
                  if link.get("rel") == "self"]
    assert self_links == [f"{BASE_URL}atom.xml"]
    updated = root.findtext("atom:updated", namespaces=NS)
    assert updated is not None and RFC3339.match(updated)
    ids = []
    for entry in root.findall("atom:entry", NS):
        for child in ("id", "title", "updated", "published"):
            text = entry.findtext(f"atom:{child}", namespaces=NS)
            assert text, child
        ids.append(entry.findtext("atom:id", namespaces=NS))
        assert RFC3339.match(entry.findtext("atom:updated", namespaces=NS) or "")
        content = entry.find("atom:content", NS)
        assert content is not None and content.get("type") == "html"
        # An Atom link without rel is an alternate link (RFC 4287, 4.2.7.2).
        [alternate] = [link for link in entry.findall("atom:link", NS)
                       if link.get("rel", "alternate") == "alternate"]
        assert (alternate.get("href") or "").startswith(BASE_URL)
        for url in urls_in(content.text or ""):
            assert re.match(r"^(https?|mailto):", url), url
    assert ids == EXPECTED_IDS
    assert all(TAG_URI.match(i or "") for i in ids)


@pytest.mark.parametrize(("site_author", "fallback"), [
    (None, "Test Anniversaries"),  # no site author: the title stands for it
    ("Archive desk", "Archive desk"),  # the moon article's author equals the site's
])
def test_every_atom_entry_names_its_author(small_site: Config, site_author: str | None,
                                           fallback: str) -> None:
    config = dataclasses.replace(
        small_site, site=dataclasses.replace(small_site.site, author=site_author))
    data = site_feeds(config)[feeds.ATOM_NAME]
    parsed = feedparser.parse(data)
    assert parsed.bozo == 0, parsed.get("bozo_exception")
    assert parsed.feed.author == fallback
    authors = {entry.id: entry.get("author") for entry in parsed.entries}
    assert list(authors) == EXPECTED_IDS
    moon = "tag:example.org,2021-07-20:moon/"
    assert authors == {key: "Archive desk" if key.startswith(moon) else fallback
                       for key in authors}
    # In the XML itself, not inherited by the parser: one author element in every entry.
    root = etree.fromstring(data)
    assert [len(entry.findall("atom:author/atom:name", NS))
            for entry in root.findall("atom:entry", NS)] == [1] * len(EXPECTED_IDS)


def test_json_feed_has_the_required_fields(small_feeds: dict[str, bytes]) -> None:
    document: dict[str, Any] = json.loads(small_feeds[feeds.JSON_NAME])
    assert document["version"] == "https://jsonfeed.org/version/1.1"
    assert document["title"] == "Test Anniversaries"
    assert document["feed_url"] == f"{BASE_URL}feed.json"
    assert document["home_page_url"] == BASE_URL
    assert document["authors"] == [{"name": "Test Anniversaries"}]
    items = document["items"]
    assert [item["id"] for item in items] == EXPECTED_IDS
    for item in items:
        assert isinstance(item["content_html"], str) and item["content_html"]
        assert item["url"].startswith(BASE_URL)
        assert RFC3339.match(item["date_published"])
    moon = items[2]
    assert moon["authors"] == [{"name": "Archive desk"}]
    assert moon["tags"] == ["spaceflight", "Apollo"]
    assert "summary" in moon and "<" not in moon["summary"]


def test_relative_links_become_absolute_against_the_article_url(
    small_feeds: dict[str, bytes]
) -> None:
    moon = next(entry for entry in feedparser.parse(small_feeds[feeds.ATOM_NAME]).entries
                if entry.id.startswith("tag:example.org,2021-07-20:moon/"))
    urls = urls_in(moon.content[0].value)
    page = f"{BASE_URL}articles/moon/"
    for expected in (f"{BASE_URL}articles/leap/", BASE_URL, f"{page}#notes",
                     "https://example.net/x?a=1&b=2", f"{page}images/moon.png",
                     f"{BASE_URL}articles/pi/", f"{page}images/raw.png"):
        assert expected in urls


@pytest.mark.parametrize(("fragment", "expected"), [
    ('<a href="x.html">x</a>', '<a href="https://s.org/a/b/x.html">x</a>'),
    ('<a href="/top">x</a>', '<a href="https://s.org/top">x</a>'),
    ('<a href="//cdn.org/y">x</a>', '<a href="https://cdn.org/y">x</a>'),
    ('<a href="#n">x</a>', '<a href="https://s.org/a/b/#n">x</a>'),
    ('<a href="mailto:a@b.org">x</a>', '<a href="mailto:a@b.org">x</a>'),
    ("<img src='p.png' alt='a'>", '<img src="https://s.org/a/b/p.png" alt=\'a\'>'),
    ("<img alt=\"1 > 0\" src=p.png>", '<img alt="1 > 0" src="https://s.org/a/b/p.png">'),
    ('<a href="q?a=1&amp;b=2">x</a>', '<a href="https://s.org/a/b/q?a=1&amp;b=2">x</a>'),
    ('<p>say href="x" in text</p>', '<p>say href="x" in text</p>'),
    ('<p>&lt;a href="x"&gt;</p>', '<p>&lt;a href="x"&gt;</p>'),
])
def test_absolute_links(fragment: str, expected: str) -> None:
    assert content.absolute_links(fragment, "https://s.org/a/b/") == expected


FORBIDDEN = "\x00\x01\x08\x0b\x0c\x0e\x1f\x7f\x85\x9f\ufffd\ufffe\uffff"


def test_xml_forbidden_characters_in_files_are_removed(
    write_file: WriteFile, make_config: Callable[..., Config]
) -> None:
    write_file("ctrl.txt", f"date 2024-01-01 Bad{FORBIDDEN} title here. Body{FORBIDDEN} ok.")
    write_file("ctrl-md.md", f"---\ntitle: Fine\ndate: 2024-01-01\n---\n\nText{FORBIDDEN} end.\n")
    built = site_feeds(make_config(), date(2024, 1, 1))
    for name in (feeds.RSS_NAME, feeds.ATOM_NAME):
        parsed = feedparser.parse(built[name])
        assert parsed.bozo == 0
        # Some of these count as white space to the plain-text loader; the rest vanish.
        assert [" ".join(e.title.split()) for e in parsed.entries] == ["Bad title here", "Fine"]
        assert "Text end." in " ".join(parsed.entries[1].content[0].value.split())
    text = json.loads(built[feeds.JSON_NAME])["items"][0]["content_html"]
    assert "Body ok." in " ".join(text.split())
    assert not any(char in text for char in FORBIDDEN)


def test_lone_surrogates_and_controls_in_memory_are_removed(
    small_site: Config
) -> None:
    articles = load_articles(small_site.site.content_dir).articles
    leap = next(a for a in articles if a.slug == "leap")
    dirty = dataclasses.replace(leap, title="Leap\ud800 day\x00", summary="Sum\udfffmary\x0b",
                                body_html="<p>Bo\ud83ddy\x1b</p>", author="Ed\x07",
                                tags=("cal\ufffeendars",))
    calendar = Calendar([dirty], "feb28")
    site = dataclasses.replace(small_site.site, title="Site\x01", description="Desc\ud800")
    built = feeds.build_feeds(site, calendar, SMALL_SITE_DAY, make_environment())
    for name in (feeds.RSS_NAME, feeds.ATOM_NAME):
        parsed = feedparser.parse(built[name])
        assert parsed.bozo == 0
        assert parsed.feed.title == "Site"
        assert parsed.entries[0].title == "Leap day (2 years ago)"
        assert parsed.entries[0].author == "Ed"
        assert "<p>Body</p>" in parsed.entries[0].content[0].value
    document = json.loads(built[feeds.JSON_NAME])
    assert (document["description"], document["items"][0]["summary"]) == ("Desc", "Summary")
    assert document["items"][0]["tags"] == ["calendars"]


def test_empty_feed_is_dated_at_the_publish_time_of_the_day(
    make_config: Callable[..., Config]
) -> None:
    site = make_config(timezone="America/New_York", publish_time="06:15").site
    built = feeds.build_feeds(site, Calendar([]), date(2026, 7, 1), make_environment())
    root = etree.fromstring(built[feeds.RSS_NAME])
    assert root.findtext("channel/lastBuildDate") == "Wed, 01 Jul 2026 06:15:00 -0400"
    assert etree.fromstring(built[feeds.ATOM_NAME]).findtext(
        "atom:updated", namespaces=NS) == "2026-07-01T06:15:00-04:00"
    assert json.loads(built[feeds.JSON_NAME])["items"] == []


def test_seed_returns_on_each_anniversary_with_its_own_guid(
    seed_path: Path, make_config: Callable[..., Config]
) -> None:
    config = make_config(content_dir=str(seed_path.parent))
    [seed] = load_articles(seed_path.parent).articles
    seen = {}
    for day in (date(2024, 11, 9), date(2026, 11, 9)):
        parsed = feedparser.parse(site_feeds(config, day)[feeds.RSS_NAME])
        assert parsed.bozo == 0
        newest = parsed.entries[0]
        years = day.year - seed.date.year
        assert newest.id == f"tag:example.org,{seed.date.isoformat()}:{seed.slug}/{day.year}"
        assert newest.title == f"{seed.title} ({years} {'year' if years == 1 else 'years'} ago)"
        assert newest.published_parsed[:3] == (day.year, 11, 9)
        seen[day] = newest.id
    assert len(set(seen.values())) == 2


def test_user_template_shapes_the_item_content(
    small_site: Config, tmp_path: Path
) -> None:
    templates = tmp_path / "templates"
    templates.mkdir()
    (templates / "feed_item.html").write_text(
        "<p>{{ event.years_since }}|{{ article.slug }}|{{ item_url }}</p>{{ body }}",
        encoding="utf-8")
    config = dataclasses.replace(
        small_site, site=dataclasses.replace(small_site.site, templates_dir=templates))
    entry = feedparser.parse(site_feeds(config)[feeds.ATOM_NAME]).entries[0]
    assert entry.content[0].value.startswith(
        f"<p>2|leap|{BASE_URL}articles/leap/#year-2026</p>")


def test_event_identity_helpers(small_site: Config) -> None:
    [leap] = [a for a in load_articles(small_site.site.content_dir).articles if a.slug == "leap"]
    event = Event(leap, date(2026, 2, 28), 2)
    assert feeds.event_id(small_site.site, event) == "tag:example.org,2024-02-29:leap/2026"
    assert feeds.event_url(small_site.site, event) == f"{BASE_URL}articles/leap/#year-2026"
    english, german = language("en"), language("de")
    assert feeds.event_title(Event(leap, leap.date, 0), english) == "Leap day"
    assert feeds.event_title(event, english) == "Leap day (2 years ago)"
    assert feeds.event_title(Event(leap, date(2025, 2, 28), 1), english) == "Leap day (1 year ago)"
    assert feeds.event_title(event, german) == "Leap day (vor 2 Jahren)"
    site = small_site.site
    assert publish_instant(date(2026, 2, 28), site.publish_time,
                           site.zone) == datetime.fromisoformat("2026-02-28T09:00:00+01:00")


def test_items_of_one_day_get_distinct_times_newest_first(
    write_article: WriteArticle, make_config: Callable[..., Config]
) -> None:
    for slug in ("alpha", "bravo", "charlie"):
        write_article(slug, date="2020-05-04")
    write_article("delta", date="2021-05-03")
    built = site_feeds(make_config(feed_items=10), date(2025, 5, 4))
    root = etree.fromstring(built[feeds.ATOM_NAME])
    updated = [e.findtext("atom:updated", namespaces=NS) for e in root.findall("atom:entry", NS)]
    # The W3C validator warns when two Atom entries share one updated value.
    assert updated == ["2025-05-04T09:00:00+02:00", "2025-05-04T08:59:59+02:00",
                       "2025-05-04T08:59:58+02:00", "2025-05-03T09:00:00+02:00",
                       "2024-05-04T09:00:00+02:00", "2024-05-04T08:59:59+02:00",
                       "2024-05-04T08:59:58+02:00", "2024-05-03T09:00:00+02:00",
                       "2023-05-04T09:00:00+02:00", "2023-05-04T08:59:59+02:00"]
    assert root.findtext("atom:updated", namespaces=NS) == updated[0]
    assert [e.findtext("atom:title", namespaces=NS) for e in root.findall("atom:entry", NS)][
        :4] == ["Alpha (5 years ago)", "Bravo (5 years ago)", "Charlie (5 years ago)",
                "Delta (4 years ago)"]


@pytest.mark.parametrize(("url", "expected"), [
    ("HTTPS://Example.ORG/News/", "https://example.org/News/"),
    ("http://example.org:80/", "http://example.org/"),
    ("https://example.org:443/a/", "https://example.org/a/"),
    ("http://127.0.0.1:8000/", "http://127.0.0.1:8000/"),
    ("http://[::1]:8000/", "http://[::1]:8000/"),
])
def test_canonical_url(url: str, expected: str) -> None:
    assert feeds.canonical_url(url) == expected


def test_empty_site_description_still_gives_valid_feeds(
    small_site: Config
) -> None:
    site = dataclasses.replace(small_site.site, description="", base_url="https://EXAMPLE.org:443/")
    calendar = Calendar(load_articles(site.content_dir).articles)
    built = feeds.build_feeds(site, calendar, SMALL_SITE_DAY, make_environment())
    rss = etree.fromstring(built[feeds.RSS_NAME])
    assert rss.findtext("channel/description") == "Test Anniversaries"
    atom = etree.fromstring(built[feeds.ATOM_NAME])
    assert atom.find("atom:subtitle", NS) is None
    assert atom.findtext("atom:id", namespaces=NS) == "https://example.org/"
    assert feedparser.parse(built[feeds.ATOM_NAME]).bozo == 0


CLEANING_PIECES = [
    "a", " ", "é", "·", "…", "\t", "\n", "\r", "\x00", "\x01", "\x0b", "\x1f", "\x7f", "\x80",
    "\x85", "\x9f", "\xa0", "\xbf", "\ud7ff", "\ud800", "\udfff", "\ue000", "\uefbf", "\ufeff",
    "\uffc0", "\ufffc", "\ufffd", "\ufffe", "\uffff", "\U00010000", "\U0010ffff",
]


def test_clean_utf8_gives_the_bytes_of_clean_text() -> None:
    rng = random.Random(7)
    texts = ["", "plain ascii", "Title · Site", *CLEANING_PIECES]
    texts += ["".join(rng.choice(CLEANING_PIECES) for _ in range(rng.randint(1, 12)))
              for _ in range(5000)]
    for text in texts:
        assert feeds.clean_utf8(text) == feeds.clean_text(text).encode("utf-8"), repr(text)
