"""Time, all of it: the clock, publish instants and local dates in each zone, and the calendar.

The calendar indexes articles by month-day (with the Feb 29 policy); DST rules: docs/daemon.md.
"""

from __future__ import annotations

import calendar as _stdlib_calendar
import functools
import itertools
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo

# Types only: the ledger and the web service read the clock without loading content.
if TYPE_CHECKING:
    from publisher.config import LeapDay
    from publisher.content import Article

Clock = Callable[[], datetime]


def utcnow() -> datetime:
    """Return the current instant, in UTC: the clock every component reads unless given one."""
    return datetime.now(UTC)


def publish_instant(day: date, at: time, zone: ZoneInfo) -> datetime:
    """Return the UTC instant at which local date ``day`` reaches wall time ``at`` in ``zone``."""
    # fold=0 takes the offset in force before a transition: a wall time skipped by a DST gap moves
    # forward by the gap, a repeated one is its first occurrence.
    return datetime.combine(day, at, tzinfo=zone).astimezone(UTC)


def local_date(instant: datetime, zone: ZoneInfo) -> date:
    """Return the calendar date in ``zone`` at an aware instant (``utcnow()``: today there)."""
    return instant.astimezone(zone).date()


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


def due_dates(at: time, zone: ZoneInfo, since: datetime | None, now: datetime) -> list[date]:
    """Return the local dates whose publish instant lies in ``(since, now]``, oldest first."""
    # Without ``since`` (nothing was ever done) only the current local date can be due.
    today = local_date(now, zone)
    # A publish instant always falls on its own local date or just after a gap, so one day of
    # margin before ``since``'s local date covers every zone.
    day = today if since is None else min(today, local_date(since, zone) - timedelta(days=1))
    found: list[date] = []
    while day <= today:
        instant = publish_instant(day, at, zone)
        if instant <= now and (since is None or instant > since):
            found.append(day)
        day += timedelta(days=1)
    return found


def latest_due_date(at: time, zone: ZoneInfo, now: datetime) -> date:
    """Return the most recent local date whose publish instant is not after ``now``."""
    today = local_date(now, zone)
    return today if publish_instant(today, at, zone) <= now else today - timedelta(days=1)


@dataclass(frozen=True)
class ZonePlan:
    """What one tick does for one time zone: local dates to deliver and dates too old to send."""

    send: tuple[date, ...]
    skip: tuple[date, ...]


def plan_zone(zone: str, at: time, since: datetime | None, now: datetime,
              catch_up_days: int) -> ZonePlan:
    """Split the local dates that became due since the last tick into sendable and too old."""
    tz = ZoneInfo(zone)
    oldest_sendable = local_date(now, tz) - timedelta(days=catch_up_days)
    due = due_dates(at, tz, since, now)
    return ZonePlan(tuple(d for d in due if d >= oldest_sendable),
                    tuple(d for d in due if d < oldest_sendable))


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

    def recent(self, day: date, limit: int, keep: Callable[[Event], bool] | None = None
               ) -> list[Event]:
        """Return up to ``limit`` events on or before ``day`` that ``keep`` takes, newest first."""
        found: list[Event] = []
        if self.first_date is None:
            return found
        for ordinal in range(day.toordinal(), self.first_date.toordinal() - 1, -1):
            if len(found) >= limit:
                break
            events = self.events_on(date.fromordinal(ordinal))
            if keep is not None:
                events = [event for event in events if keep(event)]
            found.extend(events[: limit - len(found)])
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

    def _anniversaries(self, article: Article, years: range) -> Iterator[date]:
        # The days a recurring article comes back in these years, under the Feb 29 policy.
        if article.recurring:
            for year in years:
                when = anniversary_in(article.anniversary, year, self.leap_day)
                if when is not None:
                    yield when

    def history(self, article: Article, day: date) -> list[Event]:
        """Return one article's events up to ``day``, oldest first."""
        events = [Event(article, article.date, 0)] if article.date <= day else []
        years = range(article.date.year + 1, day.year + 1)
        return events + [Event(article, when, when.year - article.date.year)
                         for when in self._anniversaries(article, years) if when <= day]

    def next_anniversary(self, article: Article, day: date) -> date | None:
        """Return the first anniversary of an article after ``day`` (None: it does not recur)."""
        # Under "skip" a Feb 29 anniversary can wait up to eight years (e.g. 2096 to 2104).
        years = range(max(day.year, article.date.year + 1), day.year + 9)
        return next((when for when in self._anniversaries(article, years) if when > day), None)

    def last_appearance(self, article: Article, day: date) -> date | None:
        """Return the article's latest appearance on or before ``day`` (None: not yet)."""
        if article.date > day:
            return None
        # Under "skip" the latest Feb 29 anniversary can lie eight years back.
        years = range(day.year, max(article.date.year, day.year - 9), -1)
        return next((when for when in self._anniversaries(article, years) if when <= day),
                    article.date)


@dataclass(frozen=True)
class Moment:
    """One upcoming publish moment: a local date in one zone that carries events."""

    instant: datetime
    zone: str
    day: date
    events: tuple[Event, ...]

    @property
    def local(self) -> datetime:
        """Return the moment as a wall-clock time in its zone."""
        return self.instant.astimezone(ZoneInfo(self.zone))


def _moments_in(calendar: Calendar, events_on: EventsByDay, zone: str, at: time,
                now: datetime) -> Iterator[Moment]:
    tz = ZoneInfo(zone)
    day = local_date(now, tz)
    last = day + timedelta(days=LONGEST_GAP_DAYS)
    while day <= last and calendar.articles:
        events = events_on(day)
        if events:
            instant = publish_instant(day, at, tz)
            if instant > now:
                yield Moment(instant, zone, day, events)
        day += timedelta(days=1)


EventsByDay = Callable[[date], tuple[Event, ...]]


def events_by_day(calendar: Calendar) -> EventsByDay:
    """Return a lookup of a day's events that asks the calendar once, however many zones ask."""
    return functools.cache(lambda day: tuple(calendar.events_on(day)))


def _first_moments(calendar: Calendar, zones: Iterable[str], at: time, now: datetime,
                   limit: int) -> list[Moment]:
    """Return the next ``limit`` publish moments with events of each zone, soonest first."""
    events_on = events_by_day(calendar)
    found = [moment for zone in dict.fromkeys(zones)
             for moment in itertools.islice(_moments_in(calendar, events_on, zone, at, now),
                                            limit)]
    found.sort(key=lambda m: (m.instant, m.zone))
    return found


def upcoming(calendar: Calendar, zones: Iterable[str], at: time, now: datetime,
             limit: int) -> list[Moment]:
    """Return the next ``limit`` publish moments with events across ``zones``, soonest first."""
    return _first_moments(calendar, zones, at, now, limit)[:limit]


@dataclass(frozen=True)
class Appearance:
    """One coming appearance: its event, its publish moment in each zone, whom it would reach."""

    event: Event
    moments: tuple[Moment, ...]  # one per zone still ahead, soonest first
    reach: int = 0  # confirmed subscribers who have no delivery of it yet

    @property
    def first(self) -> Moment:
        """Return the first publish moment of the appearance."""
        return self.moments[0]

    def line(self) -> str:
        """Describe the appearance in one line: date, first moment, title, years, reach."""
        first = self.first
        notes = [] if first.zone == "UTC" else [f"{first.instant:%Y-%m-%d %H:%M} UTC"]
        if more := len(self.moments) - 1:
            notes.append(f"then in {more} more zone{'' if more == 1 else 's'}")
        when = f" ({', '.join(notes)})" if notes else ""
        return (f"{self.event.on.isoformat()} at {first.local:%H:%M} {first.zone}{when}: "
                f"\"{self.event.article.title}\" "
                f"({self.event.article.slug}), {self.event.years_on}, to {self.reach} "
                f"subscriber{'' if self.reach == 1 else 's'}")


def next_appearances(calendar: Calendar, zones: Iterable[str], at: time, now: datetime,
                     limit: int) -> list[Appearance]:
    """Return the next ``limit`` appearances by date, each with its moments across ``zones``."""
    # Each of the first ``limit`` days with events is among the first ``limit`` such days of
    # every zone that still has its publish moment ahead.
    by_day: dict[date, list[Moment]] = {}
    for moment in _first_moments(calendar, zones, at, now, limit):
        by_day.setdefault(moment.day, []).append(moment)
    found = [Appearance(event, tuple(moments))
             for _, moments in sorted(by_day.items()) for event in moments[0].events]
    return found[:limit]
