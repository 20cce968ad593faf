"""The anniversary calendar: first publication, anniversaries, Feb 29 policies, look-ups."""

from __future__ import annotations

from collections import Counter
from datetime import date, timedelta
from pathlib import Path
from typing import get_args

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from publisher.calendar import Calendar, Event, anniversary_in
from publisher.config import LeapDay
from publisher.content import Article

POLICIES: tuple[LeapDay, ...] = get_args(LeapDay)


def article(slug: str, when: date, *, anniversary: tuple[int, int] | None = None,
            commemorated: date | None = None, recurring: bool = True) -> Article:
    """Build an article in memory; the calendar needs no file."""
    return Article(
        slug=slug, title=slug.title(), date=when,
        anniversary=anniversary or (when.month, when.day),
        body_html="<p>x</p>\n", body_text="x", summary="x", source=Path(f"{slug}.md"),
        commemorated=commemorated, recurring=recurring,
    )


def days_of(year: int) -> list[date]:
    start = date(year, 1, 1)
    return [start + timedelta(days=n) for n in range((date(year + 1, 1, 1) - start).days)]


def test_first_publication_then_yearly_anniversaries() -> None:
    moon = article("moon", date(2021, 7, 20))
    cal = Calendar([moon])
    assert cal.events_on(date(2021, 7, 20)) == [Event(moon, date(2021, 7, 20), 0)]
    assert cal.events_on(date(2024, 7, 20)) == [Event(moon, date(2024, 7, 20), 3)]
    assert cal.events_on(date(2020, 7, 20)) == []
    assert cal.events_on(date(2024, 7, 21)) == []


def test_month_day_anniversary_differs_from_the_publication_date() -> None:
    metre = article("metre", date(2022, 5, 23), anniversary=(5, 20))
    cal = Calendar([metre])
    assert [e.years_since for e in cal.events_on(date(2022, 5, 23))] == [0]
    assert cal.events_on(date(2022, 5, 20)) == []
    assert cal.events_on(date(2023, 5, 23)) == []
    assert [e.years_since for e in cal.events_on(date(2023, 5, 20))] == [1]


def test_not_recurring_appears_only_on_its_date() -> None:
    eclipse = article("eclipse", date(2024, 4, 8), recurring=False)
    cal = Calendar([eclipse])
    appearances = [e.on for e in cal.between(date(2024, 1, 1), date(2030, 12, 31))]
    assert appearances == [date(2024, 4, 8)]
    assert cal.history(eclipse, date(2030, 1, 1)) == [Event(eclipse, date(2024, 4, 8), 0)]
    assert cal.next_anniversary(eclipse, date(2024, 4, 8)) is None


@pytest.mark.parametrize(("policy", "in_2025"), [
    ("feb28", date(2025, 2, 28)),
    ("mar1", date(2025, 3, 1)),
    ("skip", None),
])
def test_feb_29_follows_the_leap_day_policy(policy: LeapDay, in_2025: date | None) -> None:
    leap = article("leap", date(2024, 2, 29))
    cal = Calendar([leap], policy)
    seen_2025 = [(e.on, e.years_since) for e in cal.between(date(2025, 1, 1), date(2025, 12, 31))]
    assert seen_2025 == ([] if in_2025 is None else [(in_2025, 1)])
    assert anniversary_in((2, 29), 2025, policy) == in_2025
    # In a leap year every policy uses the real day.
    seen_2028 = [(e.on, e.years_since) for e in cal.between(date(2028, 1, 1), date(2028, 12, 31))]
    assert seen_2028 == [(date(2028, 2, 29), 4)]
    assert anniversary_in((2, 29), 2028, policy) == date(2028, 2, 29)


def test_feb_29_history_and_next_anniversary_agree_with_the_days() -> None:
    leap = article("leap", date(2024, 2, 29))
    for policy in POLICIES:
        cal = Calendar([leap], policy)
        day = date(2029, 12, 31)
        by_day = [e for e in cal.between(leap.date, day)]
        assert cal.history(leap, day) == by_day
    assert Calendar([leap], "skip").next_anniversary(leap, date(2024, 3, 1)) == date(2028, 2, 29)
    assert Calendar([leap], "mar1").next_anniversary(leap, date(2024, 3, 1)) == date(2025, 3, 1)
    assert Calendar([leap], "feb28").next_anniversary(leap, date(2025, 2, 28)) == date(2026, 2, 28)


def test_skip_policy_waits_over_a_century_year() -> None:
    leap = article("leap", date(2096, 2, 29))
    assert Calendar([leap], "skip").next_anniversary(leap, date(2096, 3, 1)) == date(2104, 2, 29)


@st.composite
def articles(draw: st.DrawFn) -> list[Article]:
    dates = draw(st.lists(st.dates(date(1990, 1, 1), date(2030, 12, 31)), min_size=1,
                          max_size=25))
    made = []
    for n, when in enumerate(dates):
        commemorated = draw(st.one_of(st.none(), st.dates(date(1800, 1, 1), when)))
        anniversary = (commemorated.month, commemorated.day) if commemorated else None
        made.append(article(f"a{n:02d}", when, anniversary=anniversary,
                            commemorated=commemorated, recurring=draw(st.booleans())))
    return made


@settings(max_examples=40, deadline=None)
@given(articles(), st.sampled_from([2025, 2028]), st.sampled_from(POLICIES))
def test_over_a_whole_year_each_article_appears_as_expected(
    made: list[Article], year: int, policy: LeapDay
) -> None:
    cal = Calendar(made, policy)
    counts = Counter(e.article.slug for day in days_of(year) for e in cal.events_on(day))
    for a in made:
        expected = 0
        if a.date.year == year:
            expected += 1
        if a.recurring and a.date.year < year:
            skipped = a.anniversary == (2, 29) and policy == "skip" and year % 4 != 0
            expected += 0 if skipped else 1
        assert counts[a.slug] == expected, (a.slug, a.date, a.anniversary, a.recurring)


def test_recent_is_newest_first_and_limited() -> None:
    made = [article("b", date(2020, 3, 1)), article("a", date(2021, 3, 1)),
            article("c", date(2022, 1, 15))]
    cal = Calendar(made)
    recent = cal.recent(date(2023, 3, 1), 4)
    assert [(e.article.slug, e.on) for e in recent] == [
        ("a", date(2023, 3, 1)), ("b", date(2023, 3, 1)),
        ("c", date(2023, 1, 15)), ("a", date(2022, 3, 1)),
    ]
    everything = cal.recent(date(2023, 3, 1), 100)
    assert len(everything) == len({e.key for e in everything})
    assert everything[-1] == Event(made[0], date(2020, 3, 1), 0)
    assert Calendar([]).recent(date(2023, 3, 1), 10) == []


def test_published_lists_articles_up_to_the_day_newest_first() -> None:
    made = [article("old", date(2020, 1, 1)), article("new", date(2024, 1, 1)),
            article("later", date(2030, 1, 1))]
    assert [a.slug for a in Calendar(made).published(date(2024, 1, 1))] == ["new", "old"]


def test_event_describes_itself() -> None:
    moon = article("moon", date(2021, 7, 20), anniversary=(7, 20), commemorated=date(1969, 7, 20))
    first, later = Event(moon, date(2021, 7, 20), 0), Event(moon, date(2024, 7, 20), 3)
    assert (first.is_first, first.ago, first.year) == (True, "published today", 2021)
    assert (later.is_first, later.ago, later.key) == (False, "3 years ago today", ("moon", 2024))
    assert Event(moon, date(2022, 7, 20), 1).ago == "1 year ago today"
    assert later.years_since_commemorated == 55
    assert later.original_date == date(2021, 7, 20)


def test_next_anniversaries_are_those_of_the_first_day_after_that_has_any() -> None:
    flight = article("flight", date(2019, 12, 17))
    metre = article("metre", date(2022, 5, 23), anniversary=(12, 17))
    moon = article("moon", date(2021, 7, 20))
    eclipse = article("eclipse", date(2024, 4, 8), recurring=False)
    # Published after the day: neither its first publication nor its anniversaries count yet.
    future = article("future", date(2026, 12, 5))
    cal = Calendar([flight, metre, moon, eclipse, future])
    assert cal.next_anniversaries(date(2026, 12, 1)) == [
        Event(flight, date(2026, 12, 17), 7), Event(metre, date(2026, 12, 17), 4)]
    # The day itself is not "next".
    assert cal.next_anniversaries(date(2026, 12, 17)) == [Event(moon, date(2027, 7, 20), 6)]


def test_next_anniversaries_wait_years_for_a_skipped_leap_day() -> None:
    leap = article("leap", date(2020, 2, 29))
    cal = Calendar([leap], leap_day="skip")
    # 2100 is a common year: from March 2097 the next 29 February is in 2104.
    assert cal.next_anniversaries(date(2097, 3, 1)) == [Event(leap, date(2104, 2, 29), 84)]


def test_next_anniversaries_are_empty_when_none_comes() -> None:
    eclipse = article("eclipse", date(2024, 4, 8), recurring=False)
    future = article("future", date(2030, 1, 1))
    assert Calendar([eclipse, future]).next_anniversaries(date(2026, 1, 1)) == []
    assert Calendar([]).next_anniversaries(date(2026, 1, 1)) == []
    # Near the last date a calendar can name, the search stops there.
    assert Calendar([article("pi", date(2020, 3, 14))]).next_anniversaries(
        date(9999, 12, 30)) == []


@pytest.mark.parametrize(("years", "phrase"), [(0, "first publication"), (1, "1 year on"),
                                               (7, "7 years on")])
def test_years_on_names_the_years_since_first_publication(years: int, phrase: str) -> None:
    flight = article("flight", date(2019, 12, 17))
    assert Event(flight, date(2019 + years, 12, 17), years).years_on == phrase


def test_look_ups_reach_the_first_and_last_days_there_are() -> None:
    first = article("first", date.min, recurring=False)
    last = article("last", date(2020, 12, 31))
    cal = Calendar([first, last])
    assert [e.on for e in cal.between(date(9999, 12, 30), date.max)] == [date.max]
    assert [e.article for e in cal.recent(date(1, 1, 2), 10)] == [first]
    assert [e.article for e in cal.recent(date(2021, 1, 1), 10)] == [last, first]
