"""anniversaries.ics: parsed by icalendar, expanded by recurring-ical-events, checked against
``publisher calendar`` day by day, under each Feb 29 policy."""

from __future__ import annotations

from datetime import date, timedelta
from pathlib import Path

import icalendar
import pytest
import recurring_ical_events
from click.testing import CliRunner

from publisher import ics
from publisher.cli import cli
from tests.fixtures.content import WriteArticle
from tests.fixtures.ticks import write_config

TEN_YEARS = 3653  # days from one date to the same date ten years on, leap days included


@pytest.fixture
def content(write_article: WriteArticle) -> None:
    """Articles of every kind the calendar must express."""
    write_article("moon", title="Two people, walk; on the Moon", date="2021-07-20",
                  anniversary="1969-07-20", summary="Apollo 11, with a comma.", tags=["space"])
    write_article("leap", title="Leap day", date="2024-02-29")
    write_article("metre", title="Metre", date="2022-05-23", anniversary="05-20")
    write_article("leap-later", title="A leap anniversary", date="2023-06-01", anniversary="02-29")
    write_article("eclipse", title="Eclipse", date="2024-04-08", recurring=False)
    write_article("new-year", title="New year", date="2025-12-31")
    write_article("future", title="Not yet", date="2030-01-01")


def site_config(tmp_path: Path, leap_day: str) -> Path:
    return write_config(tmp_path / "publisher.toml", {"site": {
        "title": "Calendar test", "base_url": "https://example.org/days/", "timezone": "UTC",
        "content_dir": "content", "output_dir": "public", "leap_day": leap_day}})


def ics_dates(data: bytes, start: date, days: int) -> list[tuple[str, str]]:
    """Return (ISO date, slug) of every occurrence from ``start`` over ``days`` days."""
    parsed = icalendar.Calendar.from_ical(data)
    found = []
    for event in recurring_ical_events.of(parsed).between(start, start + timedelta(days=days)):
        url = str(event["URL"])
        found.append((event.decoded("DTSTART").isoformat(), url.rstrip("/").rsplit("/", 1)[1]))
    return sorted(found)


def calendar_dates(config: Path, start: date, days: int) -> list[tuple[str, str]]:
    """Return (ISO date, slug) of every line ``publisher calendar`` prints."""
    result = CliRunner().invoke(cli, ["--config", str(config), "calendar", "--from",
                                      start.isoformat(), "--days", str(days)])
    assert result.exit_code == 0, result.output
    return sorted((line.split()[0], line.split()[2]) for line in result.output.splitlines())


@pytest.mark.parametrize("leap_day", ["feb28", "mar1", "skip"])
@pytest.mark.parametrize("start", [date(2026, 3, 1), date(2095, 1, 1)])
def test_ten_years_of_the_calendar_match_publisher_calendar(
        tmp_path: Path, content: None, leap_day: str, start: date) -> None:
    config = site_config(tmp_path, leap_day)
    build = CliRunner().invoke(cli, ["--config", str(config), "build", "--date",
                                     start.isoformat()])
    assert build.exit_code == 0, build.output
    data = (tmp_path / "public" / ics.ICS_NAME).read_bytes()
    expected = calendar_dates(config, start, TEN_YEARS)
    if start.year < 2030:
        # Built before its date, the future article is not in the calendar yet.
        assert ("2030-01-01", "future") in expected
        expected = [(day, slug) for day, slug in expected if slug != "future"]
    found = ics_dates(data, start, TEN_YEARS)
    assert found == expected
    feb = {day for day, slug in found if slug in ("leap", "leap-later")}
    # 2100 is a common year: the policy decides, as in every other common year.
    if start.year == 2095:
        assert {"feb28": "2100-02-28", "mar1": "2100-03-01", "skip": None}[leap_day] in (
            feb | {None})
        assert not any(day.startswith("2100-02-29") for day in feb)


def test_events_are_all_day_yearly_with_stable_uids_title_summary_and_link(
        tmp_path: Path, content: None) -> None:
    config = site_config(tmp_path, "feb28")
    runner = CliRunner()
    runner.invoke(cli, ["--config", str(config), "build", "--date", "2026-03-01"])
    first = (tmp_path / "public" / ics.ICS_NAME).read_bytes()
    runner.invoke(cli, ["--config", str(config), "build", "--date", "2026-09-01"])
    later = (tmp_path / "public" / ics.ICS_NAME).read_bytes()
    assert first == later  # nothing in it depends on the day it was built
    parsed = icalendar.Calendar.from_ical(first)
    assert str(parsed["VERSION"]) == "2.0" and str(parsed["X-WR-CALNAME"]) == "Calendar test"
    events = list(parsed.walk("VEVENT"))
    uids = [str(event["UID"]) for event in events]
    assert len(set(uids)) == len(uids)
    by_uid = {str(event["UID"]): event for event in events}
    moon = by_uid["moon-2021-07-20@example.org"]
    assert moon.decoded("DTSTART") == date(2021, 7, 20)
    assert moon.decoded("DTEND") == date(2021, 7, 21)  # one whole day
    assert moon["RRULE"].to_ical() == b"FREQ=YEARLY;BYMONTHDAY=20;BYMONTH=7"
    assert str(moon["SUMMARY"]) == "Two people, walk; on the Moon"
    assert str(moon["URL"]) == "https://example.org/days/articles/moon/"
    assert str(moon["DESCRIPTION"]).startswith("Apollo 11, with a comma.")
    assert b"SUMMARY:Two people\\, walk\\; on the Moon" in first  # RFC 5545 TEXT escapes
    # The first publication on another month-day is an event of its own.
    assert by_uid["metre-2022-05-23-published@example.org"].get("RRULE") is None
    assert by_uid["metre-2022-05-23@example.org"].decoded("DTSTART") == date(2023, 5, 20)
    assert by_uid["eclipse-2024-04-08-published@example.org"].get("RRULE") is None
    assert "eclipse-2024-04-08@example.org" not in by_uid
    assert b"\r\n" in first and all(len(line) <= 75 for line in first.split(b"\r\n"))


def test_the_leap_day_rule_expresses_the_policy() -> None:
    assert ics.yearly_rule((2, 29), "feb28") == {"freq": "yearly", "bymonth": 2,
                                                 "bymonthday": -1}
    assert ics.yearly_rule((2, 29), "mar1") == {"freq": "yearly", "byyearday": 60}
    assert ics.yearly_rule((2, 29), "skip") == {"freq": "yearly", "bymonth": 2,
                                                "bymonthday": 29}


def test_every_page_links_the_calendar_as_webcal_and_https(tmp_path: Path,
                                                           content: None) -> None:
    config = site_config(tmp_path, "feb28")
    CliRunner().invoke(cli, ["--config", str(config), "build", "--date", "2026-03-01"])
    for page in ("index.html", "articles/moon/index.html"):
        html = (tmp_path / "public" / page).read_text(encoding="utf-8")
        assert 'href="webcal://example.org/days/anniversaries.ics"' in html
        assert 'href="https://example.org/days/anniversaries.ics" type="text/calendar"' in html
        assert ('<link rel="alternate" type="text/calendar"' in html)


def test_long_lines_fold_within_75_octets_and_read_back_whole(tmp_path: Path,
                                                             write_article: WriteArticle) -> None:
    title = "ذكرى, افتتاح; الأرشيف \\ " * 9 + "é" * 40
    summary = "Ein Satz, der lang ist; mit Kommas, Semikolons und Ümlauten. " * 6
    write_article("long", title=title, date="2021-07-20", summary=summary)
    config = site_config(tmp_path, "feb28")
    assert CliRunner().invoke(cli, ["--config", str(config), "build", "--date",
                                    "2026-03-01"]).exit_code == 0
    data = (tmp_path / "public" / ics.ICS_NAME).read_bytes()
    assert all(len(line) <= 75 for line in data.split(b"\r\n"))
    data.decode("utf-8")  # no character cut in two
    [event] = icalendar.Calendar.from_ical(data).walk("VEVENT")
    assert str(event["SUMMARY"]) == title
    assert str(event["DESCRIPTION"]).startswith(summary.strip())
