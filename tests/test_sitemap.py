"""sitemap.xml lists every page with its last change; robots.txt names it."""

from __future__ import annotations

import urllib.robotparser
from datetime import date
from pathlib import Path
from typing import Any

from lxml import etree

from publisher import sitemap
from publisher.calendar import Calendar
from publisher.content import load_articles
from publisher.site import build_site
from tests.fixtures.content import BASE_URL, SMALL_SITE_DAY

NS = {"sm": sitemap.SITEMAP_NS}


def entries(data: bytes) -> dict[str, str]:
    root = etree.fromstring(data)
    return {url.findtext("sm:loc", namespaces=NS) or "": url.findtext("sm:lastmod",
                                                                      namespaces=NS) or ""
            for url in root.findall("sm:url", NS)}


def test_sitemap_lists_each_page_with_the_day_it_last_changed(small_site: Any) -> None:
    build_site(small_site, SMALL_SITE_DAY)
    out = small_site.site.output_dir
    found = entries((out / "sitemap.xml").read_bytes())
    assert found == {
        BASE_URL: "2026-03-01",  # the front page names the day
        f"{BASE_URL}articles/moon/": "2025-07-20",  # its latest appearance
        f"{BASE_URL}articles/leap/": "2026-02-28",  # Feb 29 in a common year: feb28
        f"{BASE_URL}articles/pi/": "2025-03-14",
        f"{BASE_URL}articles/flight/": "2025-12-17",
        f"{BASE_URL}articles/eclipse/": "2024-04-08",  # not recurring: its own date
    }  # "future" is dated after the day: not listed
    for page in found:
        relative = page.removeprefix(BASE_URL)
        assert (out / relative / "index.html").is_file()


def test_robots_names_the_sitemap_and_keeps_crawlers_off_private_pages(
        small_site: Any) -> None:
    build_site(small_site, SMALL_SITE_DAY)
    text = (small_site.site.output_dir / "robots.txt").read_text(encoding="utf-8")
    robots = urllib.robotparser.RobotFileParser()
    robots.parse(text.splitlines())
    assert robots.site_maps() == [f"{BASE_URL}sitemap.xml"]
    assert robots.can_fetch("AnyBot", f"{BASE_URL}articles/moon/")
    assert not robots.can_fetch("AnyBot", "https://example.org/anniversaries/preview/")
    assert not robots.can_fetch("AnyBot", "https://example.org/anniversaries/unsubscribe/x")


def test_a_large_site_gets_a_sitemap_index(small_site: Any, monkeypatch: Any) -> None:
    monkeypatch.setattr(sitemap, "MAX_URLS", 2)
    calendar = Calendar(load_articles(small_site.site.content_dir).articles)
    files = sitemap.sitemap_files(small_site.site,
                                  sitemap.sitemap_entries(small_site.site, calendar,
                                                          SMALL_SITE_DAY))
    assert sorted(files) == sorted(sitemap.sitemap_names(6))
    assert sorted(files) == ["sitemap-1.xml", "sitemap-2.xml", "sitemap-3.xml", "sitemap.xml"]
    index = etree.fromstring(files["sitemap.xml"])
    assert index.tag == f"{{{sitemap.SITEMAP_NS}}}sitemapindex"
    parts = [loc.text for loc in index.iterfind(".//sm:loc", NS)]
    assert parts == [f"{BASE_URL}sitemap-{n}.xml" for n in (1, 2, 3)]
    listed: dict[str, str] = {}
    for name in parts:
        listed.update(entries(files[(name or "").removeprefix(BASE_URL)]))
    assert len(listed) == 6


def test_last_appearance_follows_the_leap_day_policy(tmp_path: Path, write_article: Any) -> None:
    write_article("leap", date="2024-02-29")
    articles = load_articles(tmp_path / "content").articles
    [leap] = articles
    assert Calendar(articles, "skip").last_appearance(leap, date(2027, 6, 1)) == date(2024, 2, 29)
    assert Calendar(articles, "mar1").last_appearance(leap, date(2027, 6, 1)) == date(2027, 3, 1)
    assert Calendar(articles, "feb28").last_appearance(leap, date(2024, 2, 28)) is None
