"""Publish instants, due dates and catch-up windows computed from UTC instants."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from publisher.calendar import (
    Calendar,
    due_dates,
    latest_due_date,
    local_date,
    next_appearances,
    plan_zone,
    publish_instant,
    upcoming,
)
from publisher.content import Article

BERLIN = ZoneInfo("Europe/Berlin")
NEW_YORK = ZoneInfo("America/New_York")
HALF_PAST_TWO = time(2, 30)

# (zone, change day, what 02:30 names that day, in UTC)
DST_DAYS = [
    pytest.param(BERLIN, date(2024, 3, 31), datetime(2024, 3, 31, 1, 30, tzinfo=UTC),
                 id="berlin-spring-gap"),
    pytest.param(BERLIN, date(2024, 10, 27), datetime(2024, 10, 27, 0, 30, tzinfo=UTC),
                 id="berlin-autumn-overlap"),
    pytest.param(NEW_YORK, date(2024, 3, 10), datetime(2024, 3, 10, 7, 30, tzinfo=UTC),
                 id="new-york-spring-gap"),
    pytest.param(NEW_YORK, date(2024, 11, 3), datetime(2024, 11, 3, 7, 30, tzinfo=UTC),
                 id="new-york-autumn"),
]


def article(slug: str, day: date, *, anniversary: tuple[int, int] | None = None) -> Article:
    """Build a minimal article for calendar tests."""
    return Article(slug=slug, title=slug, date=day, anniversary=anniversary or (day.month, day.day),
                   body_html="<p>x</p>", body_text="x", summary="x", source=Path(f"{slug}.md"))


def ticks(start: datetime, end: datetime, step: timedelta) -> list[datetime]:
    """Return the instants from ``start`` to ``end`` every ``step``."""
    found = []
    while start <= end:
        found.append(start)
        start += step
    return found


@pytest.mark.parametrize(("zone", "day", "expected"), DST_DAYS)
def test_publish_time_on_a_dst_change_day_names_one_instant(
        zone: ZoneInfo, day: date, expected: datetime) -> None:
    instant = publish_instant(day, HALF_PAST_TWO, zone)
    assert instant == expected
    assert local_date(instant, zone) == day


def test_wall_time_in_a_gap_is_read_with_the_offset_before_the_change() -> None:
    local = publish_instant(date(2024, 3, 31), HALF_PAST_TWO, BERLIN).astimezone(BERLIN)
    assert (local.hour, local.minute) == (3, 30)
    assert local.utcoffset() == timedelta(hours=2)


def test_wall_time_in_an_overlap_is_its_first_occurrence() -> None:
    instant = publish_instant(date(2024, 10, 27), HALF_PAST_TWO, BERLIN)
    assert instant.astimezone(BERLIN).utcoffset() == timedelta(hours=2)
    # One hour later the same wall time comes round again; that one is not the publish instant.
    assert (instant + timedelta(hours=1)).astimezone(BERLIN).strftime("%H:%M") == "02:30"


@pytest.mark.parametrize(("zone", "day", "expected"), DST_DAYS)
@pytest.mark.parametrize("step_minutes", [1, 7, 30])
def test_ticks_across_a_dst_change_find_each_date_once(
        zone: ZoneInfo, day: date, expected: datetime, step_minutes: int) -> None:
    start = datetime.combine(day - timedelta(days=1), time(0), tzinfo=zone).astimezone(UTC)
    seen: list[date] = []
    previous = None
    for now in ticks(start, start + timedelta(hours=48), timedelta(minutes=step_minutes)):
        seen.extend(due_dates(HALF_PAST_TWO, zone, previous, now))
        previous = now
    assert seen == [day - timedelta(days=1), day]


@pytest.mark.parametrize("zone", ["Asia/Kolkata", "Asia/Kathmandu", "Australia/Eucla",
                                  "America/St_Johns", "Pacific/Chatham"])
def test_every_offset_is_served_within_one_tick_of_its_publish_time(zone: str) -> None:
    tz = ZoneInfo(zone)
    start = datetime(2025, 5, 31, 12, 0, tzinfo=UTC)
    previous = start
    fired: list[tuple[datetime, date]] = []
    minute = timedelta(seconds=60)
    for now in ticks(start + minute, start + timedelta(hours=50), minute):
        fired.extend((now, d) for d in due_dates(time(9, 0), tz, previous, now))
        previous = now
    days = [d for _, d in fired]
    # 50 hours hold two or three publish instants, on consecutive local dates, each seen once.
    assert len(days) >= 2
    assert days == [days[0] + timedelta(days=n) for n in range(len(days))]
    for now, day in fired:
        expected = publish_instant(day, time(9, 0), tz)
        assert expected.astimezone(tz).strftime("%H:%M") == "09:00"
        assert timedelta(0) <= now - expected < timedelta(seconds=60)


def test_without_a_previous_tick_only_the_current_date_can_be_due() -> None:
    now = datetime(2025, 6, 3, 12, 0, tzinfo=UTC)
    assert due_dates(time(9, 0), BERLIN, None, now) == [date(2025, 6, 3)]
    assert due_dates(time(15, 0), BERLIN, None, now) == []


def test_a_clock_that_went_back_makes_nothing_due() -> None:
    now = datetime(2025, 6, 3, 12, 0, tzinfo=UTC)
    assert due_dates(time(9, 0), BERLIN, now + timedelta(days=3), now) == []


def test_latest_due_date_switches_at_the_publish_instant() -> None:
    instant = publish_instant(date(2025, 6, 3), time(9, 0), BERLIN)
    assert latest_due_date(time(9, 0), BERLIN, instant - timedelta(seconds=1)) == date(2025, 6, 2)
    assert latest_due_date(time(9, 0), BERLIN, instant) == date(2025, 6, 3)


def test_catch_up_within_the_window_sends_every_missed_date() -> None:
    last = datetime(2025, 6, 1, 10, 0, tzinfo=UTC)
    plan = plan_zone("UTC", time(9, 0), last, last + timedelta(days=2), catch_up_days=2)
    assert plan.send == (date(2025, 6, 2), date(2025, 6, 3))
    assert plan.skip == ()


def test_catch_up_after_a_long_downtime_skips_what_is_older_than_the_window() -> None:
    last = datetime(2025, 6, 1, 10, 0, tzinfo=UTC)
    plan = plan_zone("UTC", time(9, 0), last, last + timedelta(days=5), catch_up_days=2)
    assert plan.skip == (date(2025, 6, 2), date(2025, 6, 3))
    assert plan.send == (date(2025, 6, 4), date(2025, 6, 5), date(2025, 6, 6))


def test_no_catch_up_sends_only_the_current_local_date() -> None:
    last = datetime(2025, 6, 1, 10, 0, tzinfo=UTC)
    plan = plan_zone("Asia/Tokyo", time(9, 0), last, last + timedelta(days=1), catch_up_days=0)
    assert plan.send == (date(2025, 6, 2),)
    assert plan.skip == ()


def test_upcoming_moments_follow_each_zone_and_come_soonest_first() -> None:
    calendar = Calendar([article("alpha", date(2020, 6, 5)), article("beta", date(2021, 6, 7))])
    now = datetime(2025, 6, 4, 12, 0, tzinfo=UTC)
    moments = upcoming(calendar, ["Asia/Tokyo", "America/Los_Angeles", "Asia/Tokyo"],
                       time(9, 0), now, limit=3)
    assert [(m.zone, m.day) for m in moments] == [
        ("Asia/Tokyo", date(2025, 6, 5)),
        ("America/Los_Angeles", date(2025, 6, 5)),
        ("Asia/Tokyo", date(2025, 6, 7)),
    ]
    assert all(m.instant > now and m.local.strftime("%H:%M") == "09:00" for m in moments)
    assert [e.article.slug for e in moments[0].events] == ["alpha"]


def test_upcoming_finds_a_leap_day_article_years_ahead_when_it_is_skipped() -> None:
    calendar = Calendar([article("leap", date(2020, 2, 29))], leap_day="skip")
    moments = upcoming(calendar, ["UTC"], time(9, 0), datetime(2025, 3, 1, tzinfo=UTC), limit=1)
    assert [m.day for m in moments] == [date(2028, 2, 29)]


def test_upcoming_is_empty_without_articles() -> None:
    assert upcoming(Calendar([]), ["UTC"], time(9, 0), datetime(2025, 3, 1, tzinfo=UTC), 5) == []


def test_next_appearances_come_by_date_with_each_zone_still_ahead() -> None:
    calendar = Calendar([article("alpha", date(2020, 6, 5)), article("beta", date(2021, 6, 7)),
                         article("gamma", date(2019, 6, 7)), article("delta", date(2018, 6, 9))])
    zones = ["America/Los_Angeles", "Asia/Tokyo", "America/Los_Angeles"]
    # 03:00 UTC on 5 June: 09:00 has passed in Tokyo (00:00 UTC), not in Los Angeles (16:00).
    now = datetime(2025, 6, 5, 3, 0, tzinfo=UTC)
    found = next_appearances(calendar, zones, time(9, 0), now, limit=3)
    assert [(a.event.article.slug, a.event.on) for a in found] == [
        ("alpha", date(2025, 6, 5)), ("beta", date(2025, 6, 7)), ("gamma", date(2025, 6, 7))]
    assert [m.zone for m in found[0].moments] == ["America/Los_Angeles"]
    assert [m.zone for m in found[1].moments] == ["Asia/Tokyo", "America/Los_Angeles"]
    assert all(m.instant > now and m.day == a.event.on for a in found for m in a.moments)
    assert found[0].line() == ('2025-06-05 at 09:00 America/Los_Angeles (2025-06-05 16:00 UTC): '
                               '"alpha" (alpha), 5 years on, to 0 subscribers')
    assert found[1].line() == ('2025-06-07 at 09:00 Asia/Tokyo (2025-06-07 00:00 UTC, then in '
                               '1 more zone): "beta" (beta), 4 years on, to 0 subscribers')


def test_an_appearance_in_utc_is_named_once() -> None:
    calendar = Calendar([article("alpha", date(2020, 6, 5))])
    [found] = next_appearances(calendar, ["UTC"], time(9, 0),
                               datetime(2025, 6, 1, tzinfo=UTC), limit=1)
    assert found.line() == '2025-06-05 at 09:00 UTC: "alpha" (alpha), 5 years on, to 0 subscribers'
