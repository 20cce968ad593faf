"""The daily digest email: one message holding a day's appearances, built like an edition."""

from __future__ import annotations

import dataclasses
import re
from datetime import date
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from pathlib import Path

import pytest

from publisher.bounces import edition_of
from publisher.calendar import Event
from publisher.content import Article, load_article
from publisher.digest import digest_edition
from publisher.ledger import DIGEST_SLUG
from publisher.mail import GMAIL_CLIP_BYTES, Mailer, Recipient, message_id_for
from publisher.tokens import read_unsubscribe_token
from tests.test_mail import ADA, BASE_URL, SECRET, check_golden, make_config

SAMPLES = Path(__file__).resolve().parents[1] / "content"
DAY = date(2026, 7, 20)


def parse(data: bytes) -> EmailMessage:
    """Parse message bytes with the modern policy."""
    message = BytesParser(policy=policy.default).parsebytes(data)
    assert isinstance(message, EmailMessage)
    return message


def samples() -> list[Event]:
    """Return three sample articles as appearances on DAY."""
    found = []
    for name in ("moon-landing.md", "sputnik.md", "pi-day.txt"):
        article = load_article(SAMPLES / name)
        found.append(Event(article, DAY, DAY.year - article.date.year))
    return found


@pytest.fixture
def mailer(tmp_path: Path) -> Mailer:
    """Return a mailer with the default templates and settings."""
    return Mailer(make_config(tmp_path), SECRET)


def test_a_digest_is_multipart_with_one_unsubscribe_and_preferences_link(
        mailer: Mailer) -> None:
    digest = digest_edition(mailer, samples(), DAY)
    message = parse(digest.message(ADA))
    assert message.get_content_type() == "multipart/alternative"
    assert [p.get_content_type() for p in message.iter_parts()] == ["text/plain", "text/html"]
    assert message["Subject"] == "Test Anniversaries: 20 July 2026"
    assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    link = re.fullmatch(r"<(https://\S+)>", str(message["List-Unsubscribe"]))
    assert link is not None and link.group(1).startswith(BASE_URL + "unsubscribe/")
    token = link.group(1).rsplit("/", 1)[1]
    assert read_unsubscribe_token(SECRET, token) == ADA.unsubscribe_key
    text = message.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    html = message.get_body(("html",)).get_content()  # type: ignore[union-attr]
    for part in (text, html):
        assert part.count(BASE_URL + "unsubscribe/" + token) == 1
        assert part.count(BASE_URL + "preferences/" + token) == 1
        for event in samples():
            assert BASE_URL + f"articles/{event.article.slug}/" in part
    assert "Dear Ada Lovelace," in text
    # One Message-ID per (subscriber, local date), the same on every resend.
    assert message["Message-ID"] == digest.message_id(ADA)
    assert str(message["Message-ID"]).startswith("<digest.20260720.")
    assert digest.message(ADA) == digest.message(ADA)


def test_a_digest_of_twenty_long_articles_stays_under_gmails_limit(mailer: Mailer) -> None:
    moon = load_article(SAMPLES / "moon-landing.md")
    events = [Event(dataclasses.replace(moon, slug=f"article-{n}", title=f"{moon.title} {n}",
                                        summary="A summary of some length. " * 38), DAY, n)
              for n in range(1, 21)]
    digest = digest_edition(mailer, events, DAY)
    assert digest.size_warning is None
    message = parse(digest.message(ADA))
    html = message.get_body(("html",))
    assert html is not None
    assert len(html.get_content().encode("utf-8")) < GMAIL_CLIP_BYTES
    assert len(digest.message(ADA)) < GMAIL_CLIP_BYTES * 2  # both parts, encoded


def test_an_article_in_another_language_keeps_its_direction(mailer: Mailer) -> None:
    moon = load_article(SAMPLES / "moon-landing.md")
    arabic: Article = dataclasses.replace(moon, slug="arabic", lang="ar")
    html = parse(digest_edition(mailer, [Event(arabic, DAY, 5)], DAY).message(ADA)).get_body(
        ("html",))
    assert html is not None
    assert 'lang="ar" dir="rtl"' in html.get_content()


@pytest.mark.golden
def test_golden_digest(tmp_path: Path) -> None:
    config = make_config(tmp_path, reply_to="Desk <desk@example.org>",
                         unsubscribe_mailto="leave@example.org")
    digest = digest_edition(Mailer(config, SECRET), samples(), DAY)
    check_golden("digest.eml", digest.message(Recipient(
        42, "ada@example.org", "Ada Lovelace", timezone="America/New_York",
        unsubscribe_key=ADA.unsubscribe_key)))


def test_a_return_quoting_a_digest_names_its_delivery(mailer: Mailer) -> None:
    message_id = digest_edition(mailer, samples(), DAY).message_id(ADA)
    assert edition_of(message_id) == (DIGEST_SLUG, 20260720)
    # An article called "digest" keeps its own four-digit years.
    assert edition_of(message_id_for("digest", 2026, ADA.email, "example.org")) == ("digest",
                                                                                   2026)
