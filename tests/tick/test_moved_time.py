"""Subscribers who move their delivery time or zone during the day: nothing lost, nothing twice."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta

from sqlalchemy import select

from publisher.ledger import deliveries, subscribers
from publisher.preferences import parse_choices
from tests.fixtures.content import WriteArticle
from tests.fixtures.smtp import SmtpSink
from tests.fixtures.ticks import MakeWorld, World

START = datetime(2025, 6, 5, 0, 0, tzinfo=UTC)
END = datetime(2025, 6, 6, 23, 30, tzinfo=UTC)
STEP = timedelta(minutes=30)


def at(hour: int, minute: int = 0) -> datetime:
    """Return an instant on 5 June 2025, UTC."""
    return datetime(2025, 6, 5, hour, minute, tzinfo=UTC)


def move(world: World, email: str, when: datetime, time: str) -> None:
    """Store a new delivery time for one subscriber, as the preferences page does at ``when``."""
    assert world.ledger.set_choices(parse_choices(at=time), email=email, now=when) is not None


def received(server: SmtpSink) -> Counter[tuple[str, str]]:
    """Return how many messages each (recipient, title in the subject) got."""
    return Counter((m.rcpt_tos[0], str(m.message["Subject"]).split(" — ")[0])
                   for m in server.messages)


def world_with_an_anniversary(make_world: MakeWorld, write_article: WriteArticle,
                              database_url: str, server: SmtpSink) -> World:
    """A UTC site publishing at 09:00, one article back on 5 June, sending through ``server``."""
    write_article("back-today", date="2019-06-05", title="Back today")
    return make_world(database_url, timezone="UTC", publish_time="09:00",
                      email=server.email_table())


def run(world: World, start: datetime, end: datetime) -> None:
    """Tick every half hour from ``start`` to ``end``."""
    world.run(start, end, STEP)


def sent_at(world: World, email: str) -> list[datetime]:
    """Return when the ledger recorded each message to ``email`` as sent."""
    with world.ledger.engine.connect() as conn:
        return list(conn.scalars(
            select(deliveries.c.sent_at).join(subscribers)
            .where(subscribers.c.email == email, deliveries.c.status == "sent")))


def test_moving_earlier_past_the_moment_still_delivers_that_day(
        make_world: MakeWorld, write_article: WriteArticle, database_url: str,
        smtp_server: SmtpSink) -> None:
    world = world_with_an_anniversary(make_world, write_article, database_url, smtp_server)
    world.subscribe("evening@example.org")
    move(world, "evening@example.org", START, "18:00")
    run(world, START, at(10))
    assert not smtp_server.messages
    # At 10:15 they choose 08:00: today's moment went by before they chose it.
    move(world, "evening@example.org", at(10, 15), "08:00")
    run(world, at(10, 30), END)
    assert received(smtp_server) == {("evening@example.org", "Back today"): 1}
    [message] = smtp_server.messages
    assert message.message["Date"].datetime == at(8)  # dated at their new time
    subscriber = world.ledger.find_subscriber("evening@example.org")
    assert subscriber is not None and subscriber.send_time == "08:00"


def test_moving_zone_past_the_moment_still_delivers_that_day(
        make_world: MakeWorld, write_article: WriteArticle, database_url: str,
        smtp_server: SmtpSink) -> None:
    world = world_with_an_anniversary(make_world, write_article, database_url, smtp_server)
    # 09:00 in New York is 13:00 UTC; 09:00 in Berlin is 07:00 UTC.
    world.subscribe("traveller@example.org", "America/New_York")
    run(world, START, at(10))
    world.clock.now = at(10, 15)
    # `publisher subscribers add` with a new zone, as the operator moves a known address.
    world.subscribe("traveller@example.org", "Europe/Berlin")
    run(world, at(10, 30), END)
    assert received(smtp_server) == {("traveller@example.org", "Back today"): 1}
    [when] = sent_at(world, "traveller@example.org")
    assert at(10, 30) <= when < at(11)


def test_moving_later_delivers_once_at_the_new_time(
        make_world: MakeWorld, write_article: WriteArticle, database_url: str,
        smtp_server: SmtpSink) -> None:
    world = world_with_an_anniversary(make_world, write_article, database_url, smtp_server)
    world.subscribe("later@example.org")
    world.subscribe("site@example.org")
    run(world, START, at(8))
    move(world, "later@example.org", at(8, 10), "18:00")
    run(world, at(8, 30), END)
    assert received(smtp_server) == {("later@example.org", "Back today"): 1,
                                     ("site@example.org", "Back today"): 1}
    [when] = sent_at(world, "later@example.org")
    assert at(18) <= when < at(18, 30)


def test_moving_after_the_days_mail_went_sends_nothing_again(
        make_world: MakeWorld, write_article: WriteArticle, database_url: str,
        smtp_server: SmtpSink) -> None:
    world = world_with_an_anniversary(make_world, write_article, database_url, smtp_server)
    for who in ("earlier", "later", "digest"):
        world.subscribe(f"{who}@example.org")
    run(world, START, at(10))
    assert len(smtp_server.messages) == 3
    # After the 09:00 mail: one moves to a moment already past, one to a moment ahead, one
    # switches to a digest at a moment already past.
    move(world, "earlier@example.org", at(10, 5), "07:00")
    move(world, "later@example.org", at(10, 5), "20:00")
    assert world.ledger.set_choices(parse_choices(frequency="digest", at="06:00"),
                                    email="digest@example.org", now=at(10, 5)) is not None
    run(world, at(10, 30), END)
    assert received(smtp_server) == {(f"{who}@example.org", "Back today"): 1
                                     for who in ("earlier", "later", "digest")}


def test_a_digest_moved_earlier_past_the_moment_goes_that_day(
        make_world: MakeWorld, write_article: WriteArticle, database_url: str,
        smtp_server: SmtpSink) -> None:
    write_article("other-today", date="2015-06-05", title="Other today")
    world = world_with_an_anniversary(make_world, write_article, database_url, smtp_server)
    world.subscribe("digest@example.org")
    assert world.ledger.set_choices(parse_choices(frequency="digest", at="18:00"),
                                    email="digest@example.org", now=START) is not None
    run(world, START, at(10))
    move_choices = parse_choices(frequency="digest", at="08:00")
    assert world.ledger.set_choices(move_choices, email="digest@example.org",
                                    now=at(10, 15)) is not None
    run(world, at(10, 30), END)
    [message] = smtp_server.messages
    text = message.message.get_body(("plain",)).get_content()
    assert "Back today" in text and "Other today" in text


def test_choices_widened_after_the_moment_bring_the_days_new_appearances(
        make_world: MakeWorld, write_article: WriteArticle, database_url: str,
        smtp_server: SmtpSink) -> None:
    write_article("tagged-today", date="2015-06-05", title="Tagged today", tags=["science"])
    world = world_with_an_anniversary(make_world, write_article, database_url, smtp_server)
    world.subscribe("reader@example.org")
    assert world.ledger.set_choices(parse_choices(tags="science"), email="reader@example.org",
                                    now=START) is not None
    run(world, START, at(10))
    assert received(smtp_server) == {("reader@example.org", "Tagged today"): 1}
    assert world.ledger.set_choices(parse_choices(), email="reader@example.org",
                                    now=at(10, 15)) is not None
    run(world, at(10, 30), END)
    assert received(smtp_server) == {("reader@example.org", "Tagged today"): 1,
                                     ("reader@example.org", "Back today"): 1}
