"""sitemap.xml (with each page's last change) and robots.txt naming it."""

from __future__ import annotations

import html
from collections.abc import Iterable, Iterator, Sequence
from datetime import date
from urllib.parse import urlsplit

from publisher.calendar import Calendar
from publisher.config import SiteConfig
from publisher.content import Article

SITEMAP_NAME = "sitemap.xml"
ROBOTS_NAME = "robots.txt"
SITEMAP_NS = "http://www.sitemaps.org/schemas/sitemap/0.9"
MAX_URLS = 50_000  # per sitemap file (sitemaps.org protocol); more go into numbered parts
# Pages of the web service that a crawler has no business fetching: one-time links and the
# operator's previews.
PRIVATE_PATHS = ("preview/", "confirm/", "unsubscribe/")


def _escape(text: str) -> str:
    # Not xml.sax's, importing http.client: make bench, build.py, one article edited <= 0.1 x Hugo
    return html.escape(text, quote=False)  # &, < and >, as xml.sax.saxutils.escape does


def sitemap_entries(site: SiteConfig, calendar: Calendar, day: date,
                    published: Sequence[Article] | None = None) -> Iterator[tuple[str, date]]:
    """Yield (URL, last change) for the front page and every published article's page.

    ``published``: the calendar's articles published by ``day``, where already known.
    """
    # The front page changes every day; an article's page when it comes back (its list of
    # appearances and its next anniversary change then).
    yield site.url(), day
    for article in calendar.published(day) if published is None else published:
        last = calendar.last_appearance(article, day)
        yield site.article_url(article.slug), last or article.date


def _urlset(entries: Iterable[tuple[str, date]]) -> bytes:
    lines = ['<?xml version="1.0" encoding="UTF-8"?>', f'<urlset xmlns="{SITEMAP_NS}">']
    lines += [f"  <url><loc>{_escape(url)}</loc><lastmod>{when.isoformat()}</lastmod></url>"
              for url, when in entries]
    lines.append("</urlset>\n")
    return "\n".join(lines).encode("utf-8")


def sitemap_names(pages: int) -> list[str]:
    """Return the names of the sitemap files of a site of ``pages`` pages."""
    if pages <= MAX_URLS:
        return [SITEMAP_NAME]
    return [SITEMAP_NAME, *(f"sitemap-{number}.xml"
                            for number in range(1, -(-pages // MAX_URLS) + 1))]


def sitemap_files(site: SiteConfig, entries: Iterable[tuple[str, date]]
                  ) -> dict[str, bytes]:
    """Return ``sitemap.xml``; past MAX_URLS pages, an index of ``sitemap-N.xml`` parts."""
    listed = list(entries)
    if len(listed) <= MAX_URLS:
        return {SITEMAP_NAME: _urlset(listed)}
    files: dict[str, bytes] = {}
    index = ['<?xml version="1.0" encoding="UTF-8"?>', f'<sitemapindex xmlns="{SITEMAP_NS}">']
    for number, start in enumerate(range(0, len(listed), MAX_URLS), start=1):
        part = listed[start:start + MAX_URLS]
        name = f"sitemap-{number}.xml"
        files[name] = _urlset(part)
        newest = max(when for _, when in part)
        index.append(f"  <sitemap><loc>{_escape(site.url(name))}</loc>"
                     f"<lastmod>{newest.isoformat()}</lastmod></sitemap>")
    index.append("</sitemapindex>\n")
    files[SITEMAP_NAME] = "\n".join(index).encode("utf-8")
    return files


def robots_txt(site: SiteConfig) -> bytes:
    """Return robots.txt: everything may be crawled but the private pages; the sitemap named."""
    base = urlsplit(site.base_url).path or "/"
    lines = ["User-agent: *", *(f"Disallow: {base}{path}" for path in PRIVATE_PATHS),
             "", f"Sitemap: {site.url(SITEMAP_NAME)}", ""]
    return "\n".join(lines).encode("utf-8")
