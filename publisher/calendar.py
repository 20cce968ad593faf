"""The anniversary calendar: which articles come back on which day."""

from __future__ import annotations

import calendar as _stdlib_calendar
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from publisher.config import LeapDay
from publisher.content import Article

FEB_29 = (2, 29)
# The longest gap between two appearances of one month-day: Feb 29 under the "skip" policy
# across a century year that is not a leap year (2096 to 2104).
LONGEST_GAP_DAYS = 8 * 366


def count_years(years: int) -> str:
    """Return a number of years in English: ``1 year``, ``7 years``."""
    return f"{years} year{'' if years == 1 else 's'}"


@dataclass(frozen=True)
class Event:
    """One appearance of an article: its first publication (year 0) or an anniversary."""

    article: Article
    on: date
    years_since: int

    @property
    def year(self) -> int:
        """Return the anniversary year: the calendar year of this appearance."""
        return self.on.year

    @property
    def original_date(self) -> date:
        """Return the article's own date."""
        return self.article.date

    @property
    def is_first(self) -> bool:
        """Return whether this is the first publication rather than an anniversary."""
        return self.years_since == 0

    @property
    def years_since_commemorated(self) -> int | None:
        """Return the years since the commemorated event, when the article names its year."""
        if self.article.commemorated is None:
            return None
        return self.on.year - self.article.commemorated.year

    @property
    def ago(self) -> str:
        """Return an English phrase for the distance in time, e.g. ``3 years ago today``."""
        if self.years_since == 0:
            return "published today"
        return f"{count_years(self.years_since)} ago today"

    @property
    def years_on(self) -> str:
        """Return an English phrase for the years since first publication, e.g. ``7 years on``."""
        if self.years_since == 0:
            return "first publication"
        return f"{count_years(self.years_since)} on"

    @property
    def key(self) -> tuple[str, int]:
        """Return the identity of this event: (slug, anniversary year)."""
        return (self.article.slug, self.year)


def anniversary_in(month_day: tuple[int, int], year: int, leap_day: LeapDay) -> date | None:
    """Return the day a month-day falls on in ``year`` under the Feb 29 policy (None: skipped)."""
    if month_day == FEB_29 and not _stdlib_calendar.isleap(year):
        if leap_day == "feb28":
            return date(year, 2, 28)
        if leap_day == "mar1":
            return date(year, 3, 1)
        return None
    return date(year, *month_day)


def publish_moment(day: date, at: time, zone: ZoneInfo) -> datetime:
    """Return the instant local date ``day`` reaches wall time ``at`` in ``zone``, as local time."""
    # fold=0 takes the offset in force before a transition: a wall time skipped by a DST gap moves
    # forward by the gap, a repeated one is its first occurrence. The round trip through UTC
    # turns a skipped wall time into the one the clocks really show at that instant.
    return datetime.combine(day, at, tzinfo=zone).astimezone(UTC).astimezone(zone)


class Calendar:
    """Index articles by month-day so that one day's events cost only that day's articles."""

    def __init__(self, articles: Iterable[Article], leap_day: LeapDay = "feb28") -> None:
        self.leap_day = leap_day
        self._by_date: dict[date, list[Article]] = defaultdict(list)
        self._by_month_day: dict[tuple[int, int], list[Article]] = defaultdict(list)
        self.articles: list[Article] = sorted(articles, key=lambda a: a.slug)
        for article in self.articles:
            self._by_date[article.date].append(article)
            if article.recurring:
                self._by_month_day[article.anniversary].append(article)
        self.first_date = min((a.date for a in self.articles), default=None)

    def _month_days(self, day: date) -> list[tuple[int, int]]:
        keys = [(day.month, day.day)]
        # In a common year a Feb 29 anniversary moves to the day its policy names.
        substitute = {"feb28": (2, 28), "mar1": (3, 1)}.get(self.leap_day)
        if not _stdlib_calendar.isleap(day.year) and (day.month, day.day) == substitute:
            keys.append(FEB_29)
        return keys

    def events_on(self, day: date) -> list[Event]:
        """Return the events of one day, ordered by slug."""
        events = [Event(a, day, 0) for a in self._by_date.get(day, ())]
        for key in self._month_days(day):
            for article in self._by_month_day.get(key, ()):
                years = day.year - article.date.year
                if years >= 1:
                    events.append(Event(article, day, years))
        events.sort(key=lambda e: e.article.slug)
        return events

    def between(self, start: date, end: date) -> Iterator[Event]:
        """Yield the events from ``start`` to ``end`` inclusive, oldest day first."""
        # By ordinal: a range ending on date.max has no day after its last to step to.
        for ordinal in range(start.toordinal(), end.toordinal() + 1):
            yield from self.events_on(date.fromordinal(ordinal))

    def recent(self, day: date, limit: int) -> list[Event]:
        """Return up to ``limit`` events on or before ``day``, newest day first."""
        found: list[Event] = []
        if self.first_date is None:
            return found
        for ordinal in range(day.toordinal(), self.first_date.toordinal() - 1, -1):
            if len(found) >= limit:
                break
            found.extend(self.events_on(date.fromordinal(ordinal))[: limit - len(found)])
        return found

    def next_anniversaries(self, day: date) -> list[Event]:
        """Return the anniversaries of published articles on the next day that has any, by slug."""
        # Empty when none comes within the longest gap, or before the calendar's last day.
        probe, last = day, day + timedelta(days=min(LONGEST_GAP_DAYS, (date.max - day).days))
        while self._by_month_day and probe < last:
            probe += timedelta(days=1)
            # Only articles already published: the others have no page yet.
            found = [e for e in self.events_on(probe) if not e.is_first and e.article.date <= day]
            if found:
                return found
        return []

    def published(self, day: date) -> list[Article]:
        """Return the articles dated on or before ``day``, newest first."""
        return sorted((a for a in self.articles if a.date <= day),
                      key=lambda a: (a.date, a.slug), reverse=True)

    def history(self, article: Article, day: date) -> list[Event]:
        """Return one article's events up to ``day``, oldest first."""
        events = [Event(article, article.date, 0)] if article.date <= day else []
        if article.recurring:
            for year in range(article.date.year + 1, day.year + 1):
                when = anniversary_in(article.anniversary, year, self.leap_day)
                if when is not None and when <= day:
                    events.append(Event(article, when, year - article.date.year))
        return events

    def next_anniversary(self, article: Article, day: date) -> date | None:
        """Return the first anniversary of an article after ``day`` (None: it does not recur)."""
        if not article.recurring:
            return None
        # Under "skip" a Feb 29 anniversary can wait up to eight years (e.g. 2096 to 2104).
        for year in range(max(day.year, article.date.year + 1), day.year + 9):
            when = anniversary_in(article.anniversary, year, self.leap_day)
            if when is not None and when > day:
                return when
        return None
