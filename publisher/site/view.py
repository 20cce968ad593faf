"""The day's view of the archive: what one build shows, computed once from the calendar."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from datetime import date

from publisher.calendar import Calendar, Event, local_date, utcnow
from publisher.config import Config, SiteConfig
from publisher.content import Article, ArticleCache, load_articles
from publisher.errors import ContentError

RECENT_EVENTS = 12  # how many earlier appearances the index lists under "recent"


@dataclass(frozen=True)
class DayView:
    """The archive as it stands on one day: every page, feed and file of a build reads this.

    Each list is asked of the calendar once, when first read: a page of one article reads none.
    """

    site: SiteConfig
    calendar: Calendar
    day: date

    @functools.cached_property
    def published(self) -> list[Article]:
        """Return the articles dated on or before the day, newest first."""
        return self.calendar.published(self.day)

    @functools.cached_property
    def today(self) -> list[Event]:
        """Return the day's appearances, by slug."""
        return self.calendar.events_on(self.day)

    @functools.cached_property
    def recent(self) -> list[Event]:
        """Return the appearances up to the day, newest first: the feeds' and the index's."""
        # One walk back serves both: today's events come first, then those the index lists.
        return self.calendar.recent(self.day, max(self.site.feed_items,
                                                  len(self.today) + RECENT_EVENTS))

    @functools.cached_property
    def next_anniversaries(self) -> list[Event]:
        """Return the appearances of published articles on the next day that has any."""
        return self.calendar.next_anniversaries(self.day)

    @property
    def feed_events(self) -> list[Event]:
        """Return the newest ``feed_items`` appearances up to the day, today's included."""
        return self.recent[: self.site.feed_items]

    @property
    def earlier(self) -> list[Event]:
        """Return the appearances before the day that the index lists under "recent"."""
        start = len(self.today)
        return self.recent[start: start + RECENT_EVENTS]


def day_view(site: SiteConfig, calendar: Calendar, day: date) -> DayView:
    """Return the view of ``day``, which asks the calendar once for each thing a build shows."""
    return DayView(site, calendar, day)


def load_calendar(config: Config, cache: ArticleCache | None = None
                  ) -> tuple[Calendar, list[ContentError]]:
    """Load the content folder into a calendar; return it with the files that failed."""
    result = load_articles(config.site.content_dir, cache)
    return Calendar(result.articles, config.site.leap_day), result.errors


def upcoming_events(config: Config, start: date | None = None, days: int = 30, *,
                    cache: ArticleCache | None = None) -> tuple[list[Event], list[ContentError]]:
    """Return the appearances in ``days`` days from ``start`` (default today), and load errors."""
    calendar, errors = load_calendar(config, cache)
    first = start or local_date(utcnow(), config.site.zone)
    return list(calendar.between(first, last_day(first, days))), errors


def last_day(first: date, days: int) -> date:
    """Return the last of ``days`` days from ``first``, or the last day there is."""
    return date.fromordinal(min(first.toordinal() + days - 1, date.max.toordinal()))
