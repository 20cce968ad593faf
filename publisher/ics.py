"""The anniversary calendar (RFC 5545, through icalendar): one yearly all-day event per article."""

from __future__ import annotations

import functools
from collections.abc import Iterable
from datetime import date, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from publisher.calendar import FEB_29, Calendar, anniversary_in, publish_instant
from publisher.config import LeapDay, SiteConfig
from publisher.content import Article, ArticleHead
from publisher.feeds import clean_site, clean_text

ICS_NAME = "anniversaries.ics"
MEDIA_TYPE = "text/calendar"
PRODUCT_ID = "-//anniversary-publisher//anniversaries//EN"
REFRESH = timedelta(days=1)  # how often a subscribed calendar should be fetched again


def yearly_rule(month_day: tuple[int, int], leap_day: LeapDay) -> dict[str, Any]:
    """Return the RRULE that repeats ``month_day`` every year under the Feb 29 policy."""
    month, day = month_day
    if month_day != FEB_29 or leap_day == "skip":
        # A plain yearly rule on Feb 29 skips common years (RFC 5545 3.3.10: invalid dates
        # are ignored), which is what "skip" asks for.
        return {"freq": "yearly", "bymonth": month, "bymonthday": day}
    if leap_day == "feb28":
        return {"freq": "yearly", "bymonth": 2, "bymonthday": -1}  # the last day of February
    return {"freq": "yearly", "byyearday": 60}  # Feb 29 in a leap year, else 1 March


def first_anniversary(article: Article, leap_day: LeapDay) -> date | None:
    """Return the article's first anniversary (None: it never comes back)."""
    if not article.recurring:
        return None
    # Under "skip" a Feb 29 anniversary can wait up to eight years (e.g. 2096 to 2104).
    for year in range(article.date.year + 1, article.date.year + 9):
        when = anniversary_in(article.anniversary, year, leap_day)
        if when is not None:
            return when
    return None


def _uid(site: SiteConfig, article: Article, suffix: str = "") -> str:
    # The article's date and slug: stable across builds, unique on the site, and no comma,
    # which iCalendar would have to escape.
    return f"{article.slug}-{article.date.isoformat()}{suffix}@{site.domain}"


def _event(site: SiteConfig, article: Article, start: date, uid: str,
           rule: dict[str, Any] | None) -> list[str]:
    """Return the content lines of one event, its properties in icalendar's order."""
    # Holds the cold build <= 1.0 x Hugo (make bench, build.py): icalendar's components cost
    # a millisecond an event, so the lines are put together here, each value encoded by it.
    from icalendar.prop import vCategory, vText, vUri

    # iCalendar text admits no control characters (RFC 5545 3.3.11): the feeds' cleaning, of
    # the fields an event shows only.
    url = site.article_url(article.slug)
    summary = clean_text(article.summary)
    description = f"{summary}\n\n{url}" if summary else url
    lines = [f"SUMMARY:{_value(vText(clean_text(article.title)))}",
             f"DTSTART;VALUE=DATE:{_day(start)}",
             f"DTEND;VALUE=DATE:{_day(start + timedelta(days=1))}",
             f"DTSTAMP:{_stamp(article.date, site.publish_time, site.zone)}",
             f"UID:{_value(vText(uid))}"]
    if rule is not None:
        lines.append(f"RRULE:{_rule(tuple(rule.items()))}")
    if article.tags:
        lines.append(f"CATEGORIES:{_value(vCategory([clean_text(tag) for tag in article.tags]))}")
    lines += [f"DESCRIPTION:{_value(vText(description))}",
              "TRANSP:TRANSPARENT",  # an anniversary does not make anyone busy
              f"URL:{_value(vUri(url))}"]
    return ["BEGIN:VEVENT", *lines, "END:VEVENT"]


# A large calendar repeats few days, moments and rules: each is encoded once.
@functools.lru_cache(maxsize=1 << 16)
def _day(day: date) -> str:
    from icalendar.prop import vDate

    return _value(vDate(day))


@functools.lru_cache(maxsize=1 << 16)
def _stamp(day: date, at: time, zone: ZoneInfo) -> str:
    from icalendar.prop import vDatetime

    # The moment the article was first published, not the build time: the same bytes each day.
    return _value(vDatetime(publish_instant(day, at, zone)))


@functools.lru_cache(maxsize=1 << 12)
def _rule(rule: tuple[tuple[str, Any], ...]) -> str:
    from icalendar.prop import vRecur

    return _value(vRecur(dict(rule)))


def _value(value: Any) -> str:
    return str(value.to_ical().decode("utf-8"))


def article_events(site: SiteConfig, article: Article, leap_day: LeapDay) -> list[str]:
    """Return the events of one article as content lines: its first publication, then every
    anniversary.

    One recurring event when the anniversaries fall on the article's own month-day; else a
    single event for the first publication and a recurring one from the first anniversary.
    """
    first = first_anniversary(article, leap_day)
    rule = yearly_rule(article.anniversary, leap_day)
    if first is not None and (article.date.month, article.date.day) == article.anniversary:
        return _event(site, article, article.date, _uid(site, article), rule)
    lines = _event(site, article, article.date, _uid(site, article, "-published"), None)
    if first is not None:
        lines += _event(site, article, first, _uid(site, article), rule)
    return lines


def calendar_ics(site: SiteConfig, articles: Iterable[Article], leap_day: LeapDay,
                 name: str | None = None, path: str = ICS_NAME) -> bytes:
    """Return the iCalendar file of ``articles``; ``name`` is the calendar's display name.

    ``path``: where the file is published, relative to the site.
    """
    # Imported here, not with the module: make bench, build.py, one article edited.
    import icalendar

    # iCalendar text admits no control characters (RFC 5545 3.3.11): the feeds' cleaning.
    site = clean_site(site)
    ical = icalendar.Calendar()
    ical.add("prodid", PRODUCT_ID)
    ical.add("version", "2.0")
    ical.add("calscale", "GREGORIAN")
    title = name or site.title
    ical.add("name", title)  # RFC 7986
    ical.add("x-wr-calname", title)  # the same, for clients older than RFC 7986
    if site.description:
        ical.add("description", site.description)
        ical.add("x-wr-caldesc", site.description)
    ical.add("url", site.url())
    ical.add("source", site.url(path))
    ical.add("refresh-interval", REFRESH, parameters={"VALUE": "DURATION"})
    ical.add("x-published-ttl", icalendar.vDuration(REFRESH))
    head = ical.content_lines()[:-2]  # without END:VCALENDAR and the final empty line
    parts = [fold(line) + b"\r\n" for line in head]
    parts += [_article_block(site, article, leap_day)
              for article in sorted(articles, key=lambda a: a.slug)]
    parts.append(b"END:VCALENDAR\r\n")
    return b"".join(parts)


# Each article's events, by the fields they show (all but the bodies), kept from one build
# to the next (and, through the build cache, to the next process): the daemon's daily rebuild
# and a rebuild after one article changed encode only that article's (~1 KB each).
Blocks = dict[tuple[SiteConfig, ArticleHead, LeapDay], bytes]
_blocks: Blocks = {}
MAX_BLOCKS = 1 << 14


def kept_blocks() -> Blocks:
    """Return the events kept, to be handed to :func:`keep_blocks` later."""
    return dict(_blocks)


def keep_blocks(blocks: Blocks) -> None:
    """Take back events kept by :func:`kept_blocks` (e.g. in another process)."""
    _blocks.update(blocks)


def _article_block(site: SiteConfig, article: Article, leap_day: LeapDay) -> bytes:
    key = (site, article.head, leap_day)
    found = _blocks.get(key)
    if found is None:
        if len(_blocks) >= MAX_BLOCKS:
            _blocks.clear()
        found = _blocks[key] = _encode(site, article, leap_day)
    return found


def _encode(site: SiteConfig, article: Article, leap_day: LeapDay) -> bytes:
    return b"".join(fold(line) + b"\r\n" for line in article_events(site, article, leap_day))


def fold(line: str, limit: int = 75) -> bytes:
    """Return a content line folded into lines of at most ``limit`` octets (RFC 5545 3.1).

    icalendar folds character by character, which takes most of a large calendar's time;
    this cuts the UTF-8 bytes, never inside a character or after the backslash of an escape.
    """
    data = line.encode("utf-8")
    parts: list[bytes] = []
    start, width = 0, limit
    while len(data) - start > width:
        end = start + width
        while data[end] & 0xC0 == 0x80:  # a continuation byte: back to the character's start
            end -= 1
        if data[end - 1] == 0x5C and end - 1 > start:  # keep "\," "\;" "\n" together
            end -= 1
        parts.append(data[start:end])
        start, width = end, limit - 1  # a continuation line starts with a space
    parts.append(data[start:])
    return b"\r\n ".join(parts)


def build_ics(site: SiteConfig, calendar: Calendar, day: date) -> bytes:
    """Return ``anniversaries.ics`` as it stands on ``day``: every article published by then."""
    return calendar_ics(site, calendar.published(day), calendar.leap_day)

