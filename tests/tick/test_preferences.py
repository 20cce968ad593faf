"""Subscribers' choices, followed by the daemon's ticks: years, topics, their own time, digests."""

from __future__ import annotations

import mailbox
from datetime import UTC, date, datetime, time, timedelta
from email import message_from_bytes, policy
from email.message import EmailMessage
from typing import Literal, cast
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import select

from publisher.calendar import publish_instant
from publisher.cli import delivery_lines
from publisher.ledger import DIGEST_SLUG, deliveries
from publisher.preferences import Choices, parse_choices
from publisher.status import delivery_status
from tests.fixtures.content import WriteArticle
from tests.fixtures.smtp import SmtpSink
from tests.fixtures.ticks import MakeWorld, World

DAY = date(2025, 6, 5)
BEFORE = datetime(2025, 6, 5, 0, 0, tzinfo=UTC)
AFTER = datetime(2025, 6, 6, 0, 0, tzinfo=UTC)
STEP = timedelta(minutes=30)


def choose(world: World, email: str, **choices: str) -> None:
    """Store one subscriber's choices, given as text."""
    assert world.ledger.set_choices(parse_choices(**choices), email=email) is not None


def three_articles(write_article: WriteArticle) -> None:
    """Articles 1, 6 and 10 years old on DAY, with tags; one first published on DAY."""
    write_article("one-year", date="2024-06-05", tags=["Space Race"], title="One year")
    write_article("six-years", date="2019-06-05", tags=["science"], title="Six years")
    write_article("ten-years", date="2015-06-05", tags=["science", "Space Race"],
                  title="Ten years")
    write_article("new-today", date="2025-06-05", title="New today")


def test_years_and_topics_choose_what_arrives(make_world: MakeWorld,
                                              write_article: WriteArticle,
                                              database_url: str) -> None:
    three_articles(write_article)
    world = make_world(database_url, timezone="UTC", publish_time="09:00")
    for who in ("every", "milestones", "own", "science"):
        world.subscribe(f"{who}@example.org")
    choose(world, "milestones@example.org", years="milestones")
    choose(world, "own@example.org", years="6, 25")
    choose(world, "science@example.org", tags="Science")
    world.run(BEFORE, AFTER, STEP)
    got = {(to, slug) for to, slug, _ in world.counts()}
    assert got == {
        *(("every@example.org", slug) for slug in ("one-year", "six-years", "ten-years",
                                                    "new-today")),
        # 1 and 10 are milestones, 6 is not; a first publication reaches everyone.
        ("milestones@example.org", "one-year"), ("milestones@example.org", "ten-years"),
        ("milestones@example.org", "new-today"),
        ("own@example.org", "six-years"), ("own@example.org", "new-today"),
        # Tagged science; an untagged article goes to those who want every topic only.
        ("science@example.org", "six-years"), ("science@example.org", "ten-years"),
    }
    assert all(n == 1 for n in world.counts().values())


def test_a_subscriber_gets_mail_at_their_own_time_in_their_zone(
        make_world: MakeWorld, write_article: WriteArticle, database_url: str) -> None:
    write_article("solstice-eve", date="2019-06-05")
    world = make_world(database_url, timezone="Europe/Berlin", publish_time="08:15")
    world.subscribe("site@example.org")
    world.subscribe("evening@example.org", "Asia/Tokyo")
    choose(world, "evening@example.org", at="19:45")
    world.run(datetime(2025, 6, 4, 12, 0, tzinfo=UTC), datetime(2025, 6, 6, 12, 0, tzinfo=UTC),
              timedelta(minutes=5))
    sent = {s.to: s for s in world.sent()}
    assert set(sent) == {"site@example.org", "evening@example.org"}
    expected = publish_instant(DAY, time(19, 45), ZoneInfo("Asia/Tokyo"))
    assert expected <= sent["evening@example.org"].sent_at < expected + timedelta(minutes=5)
    assert sent["evening@example.org"].date == expected  # the Date header: their own time
    site = publish_instant(DAY, time(8, 15), ZoneInfo("Europe/Berlin"))
    assert site <= sent["site@example.org"].sent_at < site + timedelta(minutes=5)


def test_a_digest_holds_the_day_once(make_world: MakeWorld, write_article: WriteArticle,
                                     database_url: str) -> None:
    three_articles(write_article)
    world = make_world(database_url, timezone="UTC", publish_time="09:00")
    world.subscribe("digest@example.org")
    world.subscribe("each@example.org")
    choose(world, "digest@example.org", frequency="digest", years="milestones")
    world.run(BEFORE, AFTER + timedelta(days=1), STEP)
    counts = world.counts()
    assert counts[("digest@example.org", "digest", 20250605)] == 1
    assert not any(to == "digest@example.org" and slug != "digest" for to, slug, _ in counts)
    assert sum(1 for to, _, _ in counts if to == "each@example.org") == 4
    # The digest holds the wanted appearances, each recorded as sent with the digest.
    subscriber = world.ledger.find_subscriber("digest@example.org")
    assert subscriber is not None
    with world.ledger.engine.connect() as conn:
        rows = conn.execute(select(deliveries.c.slug, deliveries.c.status,
                                   deliveries.c.message_id)
                            .where(deliveries.c.subscriber_id == subscriber.id)).all()
    assert {r.slug: r.status for r in rows} == {
        DIGEST_SLUG: "sent", "one-year": "sent", "ten-years": "sent", "new-today": "sent"}
    assert len({r.message_id for r in rows}) == 1
    [message] = [m for m in messages(world) if m["To"].addresses[0].addr_spec
                 == "digest@example.org"]
    text = message.get_body(("plain",)).get_content()
    titles = [line for line in text.splitlines() if line.endswith(" today") or
              line in ("One year", "Ten years")]
    assert titles == ["New today", "One year", "Ten years"]
    # `publisher status` shows the day's digests as such.
    lines = delivery_lines(delivery_status(world.config, DAY))
    assert "2025-06-05  daily digests: sent 1" in lines


def messages(world: World) -> list[EmailMessage]:
    """Return every message in the world's maildir, parsed."""
    return [cast(EmailMessage, message_from_bytes(m.as_bytes(), policy=policy.default))
            for m in mailbox.Maildir(world.config.email.maildir, create=True)]


def test_switching_mid_day_neither_repeats_nor_drops(make_world: MakeWorld,
                                                     write_article: WriteArticle,
                                                     database_url: str) -> None:
    three_articles(write_article)
    world = make_world(database_url, timezone="UTC", publish_time="09:00")
    world.subscribe("switch@example.org")
    world.subscribe("back@example.org")
    choose(world, "back@example.org", frequency="digest")
    world.run(BEFORE, datetime(2025, 6, 5, 9, 0, tzinfo=UTC), STEP)
    # After the morning's mail: each → digest at a later hour, digest → each.
    choose(world, "switch@example.org", frequency="digest", at="18:00")
    choose(world, "back@example.org", frequency="each", at="18:00")
    world.run(datetime(2025, 6, 5, 9, 30, tzinfo=UTC), AFTER + timedelta(days=1), STEP)
    counts = world.counts()
    assert {slug for to, slug, _ in counts if to == "switch@example.org"} == {
        "one-year", "six-years", "ten-years", "new-today"}
    assert {slug for to, slug, _ in counts if to == "back@example.org"} == {"digest"}
    assert all(n == 1 for n in counts.values())


@pytest.mark.parametrize("leave", ["unsubscribe", "bounce"])
def test_a_held_digest_goes_to_no_one_who_left_since(
        make_world: MakeWorld, write_article: WriteArticle, database_url: str,
        smtp_server: SmtpSink, leave: Literal["unsubscribe", "bounce"]) -> None:
    three_articles(write_article)
    world = make_world(database_url, timezone="UTC", publish_time="09:00",
                       email=smtp_server.email_table())
    for who in ("left", "stayed"):
        world.subscribe(f"{who}@example.org")
        choose(world, f"{who}@example.org", frequency="digest", at="18:00")
    # The server holds the leaving subscriber's digest back; its appearances wait with it.
    smtp_server.answer("451 4.7.1 Try again later", to="left@example.org")
    world.run(BEFORE, datetime(2025, 6, 5, 18, 0, tzinfo=UTC), STEP)
    assert not smtp_server.received_by("left@example.org")
    found = world.ledger.find_subscriber("left@example.org")
    assert found is not None
    if leave == "unsubscribe":
        world.ledger.unsubscribe_link(email=found.email)
    else:
        assert world.ledger.bounce(found.id, "5.1.1 no such user")
    world.run(datetime(2025, 6, 5, 18, 30, tzinfo=UTC), AFTER + timedelta(days=1), STEP)
    assert not smtp_server.received_by("left@example.org")
    assert len(smtp_server.received_by("stayed@example.org")) == 1
    with world.ledger.engine.connect() as conn:
        rows = conn.execute(select(deliveries.c.slug, deliveries.c.status)
                            .where(deliveries.c.subscriber_id == found.id)).all()
    assert {r.slug: r.status for r in rows} == {
        DIGEST_SLUG: "skipped", "one-year": "skipped", "six-years": "skipped",
        "ten-years": "skipped", "new-today": "skipped"}


def test_choices_round_trip_through_their_columns() -> None:
    choices = parse_choices(years="50,1,10", frequency="digest", at="07:30", tags="b, A")
    assert Choices.from_columns(choices.columns()) == choices
    assert choices.cells() == {"frequency": "digest", "years": "1,10,50", "time": "07:30",
                               "tags": "a,b"}
