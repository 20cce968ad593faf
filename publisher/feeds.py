"""RSS 2.0 and Atom (feedgen) and JSON Feed 1.1 (by hand): the same bytes for the same date."""

from __future__ import annotations

import dataclasses
import functools
import html
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import jinja2
from markupsafe import Markup

from publisher.calendar import Calendar, Event, publish_instant
from publisher.config import SiteConfig
from publisher.content import Article, absolute_links
from publisher.render import Language, language_of, render

# Loaded when a feed is written: make bench, build.py, one article edited (new process).
if TYPE_CHECKING:
    from feedgen.feed import FeedGenerator

RSS_NAME = "feed.xml"
ATOM_NAME = "atom.xml"
JSON_NAME = "feed.json"
JSON_FEED_VERSION = "https://jsonfeed.org/version/1.1"
GENERATOR = "anniversary-publisher"
ITEM_TEMPLATE = "feed_item.html"

# XML 1.0 allows tab, LF, CR, U+0020-U+D7FF, U+E000-U+FFFD and U+10000 up. The C1 controls
# (U+007F-U+009F) are allowed but "discouraged" and never meant as text, and the W3C validator
# warns about them and about U+FFFD (a replacement for a character already lost), so they go
# too. Surrogates fall outside every allowed range, so lone ones are removed as well. Listed
# rather than the allowed ranges negated: compiling that class cost 0.06 G instructions, a
# twentieth of make bench, build.py, one article edited (new process).
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ud800-\udfff\ufffd-\uffff]")

# An HTML start tag, with quoted attribute values that may themselves contain ">".


@dataclass(frozen=True)
class FeedLink:
    """One published feed: file name, media type and a label for ``<link rel="alternate">``."""

    name: str
    media_type: str
    label: str


FEEDS = (
    FeedLink(RSS_NAME, "application/rss+xml", "RSS"),
    FeedLink(ATOM_NAME, "application/atom+xml", "Atom"),
    FeedLink(JSON_NAME, "application/feed+json", "JSON Feed"),
)


@dataclass(frozen=True)
class FeedItem:
    """One event as every feed format shows it; built once, written three times."""

    id: str
    url: str
    title: str
    published: datetime
    summary: str
    content_html: str
    author: str | None
    tags: tuple[str, ...]
    language: str | None


def clean_text(text: str) -> str:
    """Remove the characters XML forbids (and C1 controls), so any text can go into a feed."""
    # Most texts have none: their bytes checked in C, the pattern only for those that may
    # (make bench, build.py, cold build <= 1.0 x Hugo: every feed item's and event's fields).
    try:
        if _clean(text.encode("utf-8")):
            return text
    except UnicodeEncodeError:  # lone surrogates, which the pattern removes
        pass
    return _NOT_XML.sub("", text)


# Every byte but those that can begin a character clean_text removes, in UTF-8: the controls
# below U+0020 (but tab, LF and CR) and DEL, and the lead bytes of U+0080-U+009F (C2) and of
# U+FFFD-U+FFFF (EF).
_SAFE_BYTES = bytes(b for b in range(256) if b in (0x09, 0x0A, 0x0D) or 0x20 <= b <= 0x7E
                    or (b >= 0x80 and b not in (0xC2, 0xEF)))


def clean_utf8(text: str) -> bytes:
    """Return ``clean_text(text)`` encoded as UTF-8, checking bytes rather than characters."""
    try:
        data = text.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates, which clean_text removes
        return clean_text(text).encode("utf-8")
    return data if _clean(data) else clean_text(text).encode("utf-8")


def _clean(data: bytes) -> bool:
    """Return whether UTF-8 ``data`` holds nothing that clean_text removes."""
    # A page is thousands of characters with at most a few to remove; the byte checks below
    # run in C at memory speed, where the pattern tests each character in turn.
    suspects = data.translate(None, _SAFE_BYTES)
    return not suspects or not (suspects.strip(b"\xc2\xef") or _removable(data, suspects))


def _removable(data: bytes, leads: bytes) -> bool:
    """Return whether UTF-8 ``data`` (lead bytes C2, EF: ``leads``) holds U+0080-9F, U+FFFD-F."""
    if b"\xc2" in leads:
        at = data.find(b"\xc2")
        while at != -1:
            if data[at + 1] <= 0x9F:  # C2 80-9F; C2 A0-BF are U+00A0-U+00BF, which stay
                return True
            at = data.find(b"\xc2", at + 2)
    if b"\xef" in leads:
        at = data.find(b"\xef\xbf")
        while at != -1:
            if data[at + 2] >= 0xBD:
                return True
            at = data.find(b"\xef\xbf", at + 3)
    return False


def _clean_optional(text: str | None) -> str | None:
    return clean_text(text) if text is not None else None


def clean_article(article: Article) -> Article:
    """Return the article with XML-forbidden characters removed from every text field."""
    fields: dict[str, Any] = {
        "title": clean_text(article.title),
        "body_html": clean_text(article.body_html),
        "body_text": clean_text(article.body_text),
        "summary": clean_text(article.summary),
        "tags": tuple(clean_text(tag) for tag in article.tags),
        "author": _clean_optional(article.author),
        "lang": _clean_optional(article.lang),
    }
    return _replaced(article, fields)


def clean_site(site: SiteConfig) -> SiteConfig:
    """Return the site settings with XML-forbidden characters removed from their texts."""
    return _replaced(site, {"title": clean_text(site.title),
                            "description": clean_text(site.description),
                            "author": _clean_optional(site.author)})


_Fields = TypeVar("_Fields", Article, SiteConfig)


def _replaced(value: _Fields, fields: dict[str, Any]) -> _Fields:
    """Return ``value`` with ``fields`` replaced, or ``value`` itself when none changed."""
    # A copy of every item's article and settings: make bench, build.py, cold build.
    if all(new == getattr(value, name) for name, new in fields.items()):
        return value
    return dataclasses.replace(value, **fields)


def canonical_url(url: str) -> str:
    """Return ``url`` with scheme and host in lower case and no default port (RFC 3986 6.2.3)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"  # an IPv6 address keeps its brackets
    default = {"http": 80, "https": 443}.get(parts.scheme.lower())
    if parts.port is not None and parts.port != default:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme.lower(), host, parts.path or "/", parts.query,
                       parts.fragment))


def event_id(site: SiteConfig, event: Event) -> str:
    """Return the event's permanent tag URI: one per (article, anniversary year), forever."""
    return f"tag:{site.domain},{event.article.date.isoformat()}:{event.article.slug}/{event.year}"


def event_url(site: SiteConfig, event: Event) -> str:
    """Return the article page URL with a fragment naming the year of this appearance."""
    return f"{site.article_url(event.article.slug)}#year-{event.year}"


def event_title(event: Event, locale: Language) -> str:
    """Return the item title: the article's title, plus how long ago for an anniversary."""
    if event.is_first:
        return event.article.title
    return locale.ngettext("%(title)s (%(n)s year ago)", "%(title)s (%(n)s years ago)",
                           event.years_since) % {"title": event.article.title,
                                                 "n": locale.number(event.years_since)}


def feed_item(site: SiteConfig, event: Event, env: jinja2.Environment,
              position: int = 0) -> FeedItem:
    """Build one feed item: links made absolute, HTML rendered through ``feed_item.html``."""
    site = clean_site(site)
    article = clean_article(event.article)
    if article is not event.article:
        event = dataclasses.replace(event, article=article)
    page = site.article_url(article.slug)
    body = Markup(absolute_links(article.body_html, page))
    locale = language_of(article.lang, site.language)
    content = render(env, ITEM_TEMPLATE, {
        "locale": locale,
        "site": site, "event": event, "article": article, "body": body,
        "article_url": page, "item_url": event_url(site, event),
    })
    return FeedItem(
        id=event_id(site, event),
        url=event_url(site, event),
        title=clean_text(event_title(event, locale)),
        # A second earlier per place (``position``) among the day's items: no two share a date
        # (the W3C validator warns about equal Atom ``updated`` values), newest still first.
        published=(publish_instant(event.on, site.publish_time, site.zone).astimezone(site.zone)
                   - timedelta(seconds=position)),
        summary=article.summary,
        content_html=clean_text(content),
        author=article.author or site.author,
        tags=article.tags,
        language=article.lang,
    )


ATOM_NS = "http://www.w3.org/2005/Atom"


@functools.cache
def _hub_link() -> type[Any]:
    """Return the feedgen extension naming the WebSub hub in an RSS channel."""
    from feedgen.ext.base import BaseExtension

    class HubLink(BaseExtension):  # type: ignore[misc]
        """Name the WebSub hub in an RSS channel, after the channel's ``atom:link rel="self"``."""

        hub: str | None = None

        def extend_ns(self) -> dict[str, str]:
            """Declare the Atom namespace, which the hub link uses."""
            return {"atom": ATOM_NS}

        def extend_rss(self, feed: Any) -> Any:
            """Add ``<atom:link rel="hub">`` after the channel's self link (feedgen's only)."""
            if self.hub is not None:
                channel = feed[0]
                self_link = channel.find(f"{{{ATOM_NS}}}link")
                link = channel.makeelement(f"{{{ATOM_NS}}}link",
                                           {"href": self.hub, "rel": "hub"})
                if self_link is not None:
                    self_link.addnext(link)
                else:
                    channel.append(link)
            return feed

    return HubLink


def feed_author(site: SiteConfig) -> str:
    """Return the name the feeds give as their author: ``site.author``, else the title."""
    return site.author or site.title


def _generator(site: SiteConfig, self_name: str, updated: datetime,
               title: str | None) -> FeedGenerator:
    from feedgen.feed import FeedGenerator

    fg = FeedGenerator()
    fg.title(title or site.title)
    feed = next(f for f in FEEDS if f.name == self_name.rpartition("/")[2])
    fg.link(href=site.url(self_name), rel="self", type=feed.media_type)
    if site.websub_hub is not None:
        # WebSub discovery (W3C WebSub 4): the hub and the topic's own URL, side by side.
        fg.link(href=site.websub_hub, rel="hub")
    # feedgen takes the last link added as the RSS channel's <link>: the home page.
    fg.link(href=site.url(), rel="alternate", type="text/html")
    fg.language(site.language)
    # feedgen stamps "now" and its own version by default; both would change the bytes.
    fg.updated(updated)
    fg.generator(GENERATOR)
    return fg


def rss_feed(site: SiteConfig, items: Sequence[FeedItem], updated: datetime, *,
             folder: str = "", title: str | None = None) -> bytes:
    """Write RSS 2.0: full HTML in content:encoded, authors as dc:creator, guids not permalinks.

    ``folder`` and ``title``: a feed of some of the items (a tag's), published in a folder.
    """
    site = clean_site(site)
    fg = _generator(site, folder + RSS_NAME, updated, title and clean_text(title))
    # RSS <author> must be an e-mail address; Dublin Core's creator takes a plain name.
    fg.load_extension("dc", atom=False, rss=True)
    if site.websub_hub is not None:
        fg.register_extension("websub", _hub_link(), atom=False, rss=True)
        fg.websub.hub = site.websub_hub
    fg.description(site.description or site.title)  # RSS requires a non-empty description
    for item in items:
        fe = fg.add_entry(order="append")
        fe.guid(item.id, permalink=False)
        fe.title(item.title)
        fe.link(href=item.url)
        if item.summary:
            # An RSS description is HTML; the summary is plain text.
            fe.description(html.escape(item.summary, quote=False))
        fe.content(item.content_html)
        fe.pubDate(item.published)
        for tag in item.tags:
            fe.category(term=tag)
        if item.author:
            fe.dc.dc_creator(item.author)
    return bytes(fg.rss_str(pretty=True))


def atom_feed(site: SiteConfig, items: Sequence[FeedItem], updated: datetime, *,
              folder: str = "", title: str | None = None) -> bytes:
    """Write Atom: an author on the feed and on every entry, HTML content, text summary."""
    site = clean_site(site)
    fg = _generator(site, folder + ATOM_NAME, updated, title and clean_text(title))
    fg.id(canonical_url(site.url(folder)))  # the validator warns about a non-canonical id
    fg.author(name=feed_author(site))
    if site.description:
        fg.subtitle(site.description)
    for item in items:
        fe = fg.add_entry(order="append")
        fe.id(item.id)
        fe.title(item.title)
        fe.link(href=item.url, rel="alternate", type="text/html")
        fe.updated(item.published)
        fe.published(item.published)
        # Readers show an entry's own author and ignore the feed's (RFC 4287 allows either).
        fe.author(name=item.author or feed_author(site))
        fe.content(item.content_html, type="html")
        if item.summary:
            fe.summary(item.summary, type="text")
        for tag in item.tags:
            fe.category(term=tag)
    return bytes(fg.atom_str(pretty=True))


def json_feed(site: SiteConfig, items: Sequence[FeedItem], *, folder: str = "",
              title: str | None = None) -> bytes:
    """Write JSON Feed 1.1 by hand (feedgen has no writer for it; it has no feed date)."""
    site = clean_site(site)
    document: dict[str, object] = {
        "version": JSON_FEED_VERSION,
        "title": clean_text(title) if title else site.title,
        "home_page_url": site.url(),
        "feed_url": site.url(folder + JSON_NAME),
        "description": site.description,
        **({"hubs": [{"type": "WebSub", "url": site.websub_hub}]} if site.websub_hub else {}),
        "language": site.language,
        "authors": [{"name": feed_author(site)}],
        "items": [_json_item(item) for item in items],
    }
    return (json.dumps(document, ensure_ascii=False, indent=2) + "\n").encode("utf-8")


def _json_item(item: FeedItem) -> dict[str, object]:
    entry: dict[str, object] = {
        "id": item.id,
        "url": item.url,
        "title": item.title,
        "content_html": item.content_html,
    }
    if item.summary:
        entry["summary"] = item.summary
    entry["date_published"] = item.published.isoformat()
    if item.author:
        entry["authors"] = [{"name": item.author}]
    if item.tags:
        entry["tags"] = list(item.tags)
    if item.language:
        entry["language"] = item.language
    return entry


def feed_items(site: SiteConfig, events: Sequence[Event],
               env: jinja2.Environment) -> list[FeedItem]:
    """Return the events (newest first) as feed items."""
    items: list[FeedItem] = []
    position, previous = 0, None
    for event in events:
        position = position + 1 if event.on == previous else 0
        previous = event.on
        items.append(feed_item(site, event, env, position))
    return items


def build_feeds(site: SiteConfig, calendar: Calendar, day: date,
                env: jinja2.Environment) -> dict[str, bytes]:
    """Return every feed file as it stands on ``day``: file name to bytes."""
    return feed_files(site, calendar.recent(day, site.feed_items), day, env)


def feed_files(site: SiteConfig, events: Sequence[Event], day: date,
               env: jinja2.Environment, *, folder: str = "", title: str | None = None
               ) -> dict[str, bytes]:
    """Return every feed file of ``events``, the newest ``feed_items`` up to ``day``.

    ``folder`` and ``title``: the feeds of a part of the archive (a tag's), published in
    ``folder`` (ending in ``/``) under their own title.
    """
    if folder:
        # Only the main feeds are announced to a WebSub hub: they alone are pinged (websub.py).
        site = dataclasses.replace(site, websub_hub=None)
    items = feed_items(site, events, env)
    # The newest item's time, not the clock, so that a rebuild gives the same bytes.
    updated = max((item.published for item in items), default=publish_instant(
        day, site.publish_time, site.zone).astimezone(site.zone))
    return {
        RSS_NAME: rss_feed(site, items, updated, folder=folder, title=title),
        ATOM_NAME: atom_feed(site, items, updated, folder=folder, title=title),
        JSON_NAME: json_feed(site, items, folder=folder, title=title),
    }
