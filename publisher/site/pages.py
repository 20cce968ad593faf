"""Every file of the site, rendered to bytes from the day's view; nothing here touches the disk.

Each producer yields the files of one kind as :class:`SiteFile` entries: the relative path,
what the bytes depend on beyond the build's inputs (see :mod:`publisher.site.output`), and
a function making the bytes. A new set of files is one more producer in :data:`PRODUCERS`.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from datetime import date
from pathlib import Path
from typing import Any, NamedTuple

import jinja2
from markupsafe import Markup

from publisher.calendar import Calendar
from publisher.config import SiteConfig
from publisher.content import Article
from publisher.feeds import FEEDS, clean_text, clean_utf8, feed_files
from publisher.ics import ICS_NAME, calendar_ics
from publisher.render import language_of, packaged_templates, render, template_file
from publisher.site.view import DayView, day_view
from publisher.sitemap import ROBOTS_NAME, robots_txt, sitemap_entries, sitemap_files, sitemap_names
from publisher.topics import topic_files

INDEX_TEMPLATE = "index.html"
ARTICLE_TEMPLATE = "article.html"
STYLESHEET = "style.css"
ICON = "favicon.ico"  # copied as it is: browsers and feed readers ask for /favicon.ico

FileMaker = Callable[[], bytes]
# What a file's bytes depend on besides the build's inputs (settings, day, templates): these
# articles' files and texts (() for none), every field but the bodies of every article
# (HEADS), or anything (None: made again by every build).
Depends = tuple[Article | str, ...] | str | None
HEADS: Depends = "heads"


class SiteFile(NamedTuple):
    """One file of the site: where it goes, what it is made of, and how to make it."""

    path: str
    depends: Depends
    make: FileMaker


Producer = Callable[[DayView, jinja2.Environment], Iterator[SiteFile]]


class PageFeed(NamedTuple):
    """One feed as every page links to it (``feed.url`` or ``feed["url"]`` in a template)."""

    url: str
    type: str  # the media type
    title: str  # the site's title and the format
    label: str  # the format: RSS, Atom, JSON Feed


def feed_links(site: SiteConfig) -> list[PageFeed]:
    """Return the feeds for ``<link rel="alternate">``: url, type and title of each."""
    # Named fields rather than a mapping: a template reads them on every page, and Jinja2
    # tries an attribute first.
    return [PageFeed(site.url(feed.name), feed.media_type, f"{site.title} ({feed.label})",
                     feed.label) for feed in FEEDS]


def _page(env: jinja2.Environment, template: str, view: DayView, root: str, page_url: str,
          values: Mapping[str, Any], feeds: list[PageFeed],
          fragments: dict[object, str] | None = None) -> str:
    """Render one page as the template gives it, before clean_text.

    ``fragments``: the parts of the pages rendered so far (``{% cache %}``) in this build.
    """
    site = view.site
    context = {"site": site, "day": view.day, "root": root, "service_root": site.url(),
               "page_url": page_url, "feeds": feeds, "fragments": fragments, **values}
    return render(env, template, context)


def render_index(site: SiteConfig, calendar: Calendar, day: date, env: jinja2.Environment,
                 template: str = INDEX_TEMPLATE) -> str:
    """Render the front page as it stands on ``day`` (``template`` may extend index.html)."""
    # One pass over the finished page removes what HTML and UTF-8 cannot carry, wherever
    # it came from (article, configuration or template).
    return clean_text(_index(day_view(site, calendar, day), env, feed_links(site), template))


def _index(view: DayView, env: jinja2.Environment, feeds: list[PageFeed],
           template: str = INDEX_TEMPLATE) -> str:
    return _page(env, template, view, "./", view.site.url(), {
        "today": view.today,
        "recent": view.earlier,
        "next_anniversaries": view.next_anniversaries,
        "archive": view.published,
    }, feeds)


def render_article(site: SiteConfig, calendar: Calendar, article: Article, day: date,
                   env: jinja2.Environment) -> str:
    """Render one article's page as it stands on ``day``."""
    view = day_view(site, calendar, day)
    return clean_text(_article(view, article, env, feed_links(site)))


def _article(view: DayView, article: Article, env: jinja2.Environment,
             feeds: list[PageFeed], fragments: dict[object, str] | None = None) -> str:
    site, day = view.site, view.day
    return _page(env, ARTICLE_TEMPLATE, view, "../../", site.article_url(article.slug), {
        "locale": language_of(article.lang, site.language),
        "article": article,
        "body": Markup(article.body_html),
        "history": view.calendar.history(article, day),
        "next_anniversary": view.calendar.next_anniversary(article, day),
    }, feeds, fragments)


def render_stylesheet(site: SiteConfig, env: jinja2.Environment) -> str:
    """Render the stylesheet (a template, so a user's ``style.css`` replaces it)."""
    return render(env, STYLESHEET, {"site": site})


def page_path(article: Article) -> str:
    """Return the relative path of an article's page."""
    return f"articles/{article.slug}/index.html"


def article_pages(view: DayView, env: jinja2.Environment,
                  articles: Iterable[Article]) -> Iterator[SiteFile]:
    """Yield the page of each of ``articles`` (published by the view's day)."""
    feeds = feed_links(view.site)  # the same on every page: built once
    # Parts the same on many pages, rendered once: make bench, build.py, cold build <= 1.0 x Hugo.
    fragments: dict[object, str] = {}
    for article in articles:
        yield SiteFile(page_path(article), (article,), functools.partial(
            _article_bytes, view, article, env, feeds, fragments))


def _article_bytes(view: DayView, article: Article, env: jinja2.Environment,
                   feeds: list[PageFeed], fragments: dict[object, str]) -> bytes:
    return clean_utf8(_article(view, article, env, feeds, fragments))


def assets(view: DayView, env: jinja2.Environment) -> Iterator[SiteFile]:
    """Yield the stylesheet, the icon and robots.txt: the same on every day."""
    site = view.site
    yield SiteFile(STYLESHEET, (), lambda: render_stylesheet(site, env).encode("utf-8"))
    yield SiteFile(ICON, (), lambda: template_file(env, ICON))
    yield SiteFile(ROBOTS_NAME, (), lambda: robots_txt(site))


def front_page(view: DayView, env: jinja2.Environment) -> Iterator[SiteFile]:
    """Yield the front page: today's appearances, recent ones, what comes next, the archive."""
    # The packaged templates show no body there; one's own may show anything.
    yield SiteFile("index.html", HEADS if packaged_only(env, INDEX_TEMPLATE) else None,
                   lambda: clean_utf8(_index(view, env, feed_links(view.site))))


def packaged_only(env: jinja2.Environment, name: str) -> bool:
    """Return whether the template ``name`` and every template it uses are the packaged ones."""
    import jinja2.meta

    loader, packaged = env.loader, str(packaged_templates())
    if not isinstance(loader, jinja2.FileSystemLoader) or packaged not in loader.searchpath:
        return False
    own = [folder for folder in loader.searchpath if folder != packaged]
    pending, seen = [name], {name}
    while own and pending:
        name = pending.pop()
        if any(os.path.exists(os.path.join(folder, name)) for folder in own):
            return False
        for used in jinja2.meta.find_referenced_templates(env.parse(
                (Path(packaged) / name).read_text(encoding="utf-8"))):
            if used is None:  # a name computed while rendering
                return False
            if used not in seen:
                seen.add(used)
                pending.append(used)
    return True


def feed_set(view: DayView, env: jinja2.Environment) -> Iterator[SiteFile]:
    """Yield the RSS, Atom and JSON feeds of the newest appearances."""
    events = view.feed_events
    made = functools.cache(lambda: feed_files(view.site, events, view.day, env))
    depends = tuple(event.article for event in events)
    for feed in FEEDS:
        yield SiteFile(feed.name, depends, functools.partial(lambda name: made()[name],
                                                             feed.name))


def calendar_file(view: DayView, env: jinja2.Environment) -> Iterator[SiteFile]:
    """Yield the iCalendar file of every published article."""
    yield SiteFile(ICS_NAME, HEADS, lambda: calendar_ics(view.site, view.published,
                                                         view.calendar.leap_day))


def sitemaps(view: DayView, env: jinja2.Environment) -> Iterator[SiteFile]:
    """Yield sitemap.xml (in parts, for a large site) listing every page."""
    made = functools.cache(lambda: sitemap_files(view.site, sitemap_entries(
        view.site, view.calendar, view.day, view.published)))
    for name in sitemap_names(1 + len(view.published)):
        yield SiteFile(name, HEADS, functools.partial(lambda name: made()[name], name))


def topic_feeds(view: DayView, env: jinja2.Environment) -> Iterator[SiteFile]:
    """Yield the feeds of the milestones and of each tag, and each tag's calendar."""
    for path, depends, make in topic_files(view.site, view.calendar, view.day, env):
        yield SiteFile(path, HEADS if depends is None else depends, make)


# Every file but the article pages, in the order a build makes them.
PRODUCERS: tuple[Producer, ...] = (assets, front_page, feed_set, calendar_file, sitemaps,
                                   topic_feeds)


def site_files(view: DayView, env: jinja2.Environment,
               pages: Sequence[Article] | None = None,
               producers: Sequence[Producer] = PRODUCERS) -> Iterator[SiteFile]:
    """Yield every file of the site on the view's day.

    ``pages``: only these articles' pages (default: every article published by the day).
    """
    yield from article_pages(view, env, view.published if pages is None else pages)
    for produce in producers:
        yield from produce(view, env)
