"""Subscribers' choices on the command line and in CSV files."""

from __future__ import annotations

import csv
import functools
import io
from collections.abc import Callable
from pathlib import Path

import pytest

import tests.test_subscribers as subscribers_tests
from publisher.errors import SubscriberError
from publisher.ledger import ALL_ZONES, Ledger
from publisher.preferences import (
    Choices,
    is_milestone,
    parse_choices,
    parse_tags,
    parse_time,
    parse_years,
    tag_key,
)
from publisher.subscriptions.csvfiles import CHOICE_COLUMNS, export_csv, import_csv
from publisher.subscriptions.fields import subscriber_row

Run = Callable[..., tuple[int, str, str]]
# The command line on a configuration using the test's database.
run = subscribers_tests.run


def test_milestones_are_1_5_10_then_every_25() -> None:
    assert [n for n in range(0, 260) if is_milestone(n)] == [
        1, 5, 10, 25, 50, 75, 100, 125, 150, 175, 200, 225, 250]


@pytest.mark.parametrize(("text", "expected"), [
    ("", None), ("every", None), ("Milestones", "milestones"), ("10, 1 50", (1, 10, 50)),
    ("5,5", (5,)),
])
def test_years_are_read_from_text(text: str, expected: object) -> None:
    assert parse_years(text) == expected


@pytest.mark.parametrize(("function", "text", "field"), [
    (parse_years, "ten", "years"), (parse_years, "0", "years"), (parse_time, "7:30", "time"),
    (parse_time, "24:00", "time"), (parse_years, ",".join(map(str, range(1, 60))), "years"),
])
def test_bad_choices_name_their_field(function: Callable[[str], object], text: str,
                                      field: str) -> None:
    with pytest.raises(SubscriberError) as raised:
        function(text)
    assert raised.value.field == field


def test_tags_are_keys_of_the_front_matter_tags() -> None:
    assert tag_key("Space Race") == "space-race"
    assert tag_key("  Apollo_11 ") == "apollo-11"
    assert parse_tags("Space Race, science,, SCIENCE") == ("science", "space-race")
    assert parse_tags(" , ") is None
    assert Choices(tags=("science",)).wants(3, ["Science", "x"])
    assert not Choices(tags=("science",)).wants(0, [])


def test_set_changes_only_what_is_given(run: Run) -> None:
    assert run("subscribers", "add", "ada@example.org")[0] == 0
    code, out, _ = run("subscribers", "set", "ada@example.org", "--milestones", "--digest",
                       "--time", "07:30", "--tags", "Space Race,science",
                       "--timezone", "Asia/Tokyo")
    assert (code, out) == (0, "ada@example.org: digest milestones at 07:30 tags "
                              "science,space-race (Asia/Tokyo)\n")
    code, out, _ = run("subscribers", "set", "ada@example.org", "--years", "1,10,50")
    assert out == ("ada@example.org: digest 1,10,50 at 07:30 tags science,space-race "
                   "(Asia/Tokyo)\n")
    code, out, _ = run("subscribers", "list")
    assert out == ("ada@example.org\tconfirmed\tAsia/Tokyo\t\tdigest\t1,10,50\t07:30\t"
                   "science,space-race\n")
    code, out, _ = run("subscribers", "set", "ada@example.org", "--every", "--each",
                       "--all-tags", "--time", "")
    assert out == "ada@example.org: each every at publish time tags all (Asia/Tokyo)\n"


def test_set_refuses_bad_input_and_unknown_addresses(run: Run) -> None:
    assert run("subscribers", "add", "ada@example.org")[0] == 0
    code, _, err = run("subscribers", "set", "ada@example.org", "--time", "25:00")
    assert code == 1 and err.startswith("error: time: ")
    code, _, err = run("subscribers", "set", "ada@example.org", "--tags", "a", "--all-tags")
    assert code == 2
    code, _, err = run("subscribers", "set", "nobody@example.org", "--digest")
    assert code == 1 and "not a subscriber" in err


def test_csv_carries_the_choices_both_ways(ledger: Ledger, tmp_path: Path) -> None:
    path = tmp_path / "in.csv"
    path.write_text("email,name,frequency,years,time,tags\n"
                    "ada@example.org,Ada,digest,milestones,07:30,\"science,Space Race\"\n"
                    "bo@example.org,Bo,,1 10,,\n"
                    "cy@example.org,Cy,weekly,,,\n"
                    "dee@example.org,Dee,,,9am,\n", encoding="utf-8")
    report = import_csv(ledger, path)
    assert report.added == 2
    assert [(e.line, e.field) for e in report.errors] == [(4, "frequency"), (5, "time")]
    out = io.StringIO()
    export_csv(ledger, out)
    rows = {row["email"]: row for row in csv.DictReader(io.StringIO(out.getvalue()))}
    assert {c: rows["ada@example.org"][c] for c in CHOICE_COLUMNS} == {
        "frequency": "digest", "years": "milestones", "time": "07:30",
        "tags": "science,space-race"}
    assert {c: rows["bo@example.org"][c] for c in CHOICE_COLUMNS} == {
        "frequency": "each", "years": "1,10", "time": "", "tags": ""}
    again = tmp_path / "again.csv"
    again.write_text(out.getvalue(), encoding="utf-8")
    other = Ledger.open(f"sqlite:///{tmp_path / 'other.db'}")
    try:
        assert import_csv(other, again).added == 2
        ada = other.find_subscriber("ada@example.org")
        assert ada is not None
        assert ada.choices == parse_choices(years="milestones", frequency="digest",
                                            at="07:30", tags="science,space-race")
    finally:
        other.close()


def test_the_reach_of_an_appearance_counts_only_those_who_want_it(ledger: Ledger) -> None:
    for email, choices in (("every@example.org", Choices()),
                           ("milestones@example.org", Choices("milestones")),
                           ("science@example.org", Choices(tags=("science",)))):
        ledger.add_subscriber(subscriber_row(email, choices=choices))
    reach = functools.partial(ledger.count_unqueued, "moon", 2026, ALL_ZONES, "UTC")
    assert reach() == 3
    assert reach(years_since=10, tags=["Science"]) == 3
    assert reach(years_since=7, tags=["Science"]) == 2
    assert reach(years_since=7, tags=["history"]) == 1
    assert reach(years_since=0, tags=[]) == 2


def changed_at(ledger: Ledger, email: str) -> object:
    """Return when a subscriber's zone or choices last changed (None: never)."""
    found = ledger.find_subscriber(email)
    assert found is not None
    return found.changed_at


def test_a_new_time_or_zone_is_recorded_with_its_instant(run: Run, ledger: Ledger,
                                                         tmp_path: Path) -> None:
    assert run("subscribers", "add", "ada@example.org", "--timezone", "Europe/London")[0] == 0
    assert run("subscribers", "add", "bo@example.org")[0] == 0
    assert changed_at(ledger, "ada@example.org") is None
    # Choices or a name that stay as they were change nothing.
    assert run("subscribers", "set", "ada@example.org", "--every", "--each")[0] == 0
    assert run("subscribers", "add", "ada@example.org", "--name", "Ada")[0] == 0
    assert changed_at(ledger, "ada@example.org") is None
    assert run("subscribers", "set", "ada@example.org", "--time", "07:30")[0] == 0
    moved = changed_at(ledger, "ada@example.org")
    assert moved is not None
    assert run("subscribers", "add", "bo@example.org", "--timezone", "Asia/Tokyo")[0] == 0
    assert changed_at(ledger, "bo@example.org") is not None
    # Importing known addresses leaves them as they are, their choices included.
    path = tmp_path / "known.csv"
    path.write_text("email,time\nada@example.org,06:00\ncy@example.org,06:00\n",
                    encoding="utf-8")
    assert import_csv(ledger, path).added == 1
    assert changed_at(ledger, "ada@example.org") == moved
    assert changed_at(ledger, "cy@example.org") is None
