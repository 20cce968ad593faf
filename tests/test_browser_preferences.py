"""A subscriber changes their choices in Debian's Chromium from the link of an email they got;
the next send follows them (uvicorn on loopback, mail through the aiosmtpd test server)."""

from __future__ import annotations

from datetime import date
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser

import pytest
from playwright.sync_api import Page

from publisher.dispatch import send_date
from publisher.preferences import Choices
from publisher.subscriptions.fields import subscriber_row
from publisher.tokens import SECRET_ENV
from tests.fixtures.browser import SITE_DAY, LiveSite, WriteArticle, link_in, text_part

pytestmark = pytest.mark.browser

EQUINOX = date(2026, 3, 20)  # "spring" is 5 years old then: a milestone


def received(live: LiveSite, email: str) -> list[EmailMessage]:
    """Return the messages the SMTP test server accepted for ``email``, parsed."""
    parser = BytesParser(policy=policy.default)
    found = []
    for message in live.smtp.received_by(email):
        parsed = parser.parsebytes(message.data)
        assert isinstance(parsed, EmailMessage)
        found.append(parsed)
    return found


def send(live: LiveSite, day: date, monkeypatch: pytest.MonkeyPatch) -> None:
    """Send a day's emails as `publisher send --date` does."""
    monkeypatch.setenv(SECRET_ENV, live.secret.decode())
    report = send_date(live.config, day)
    assert report.sent > 0 and not report.problems, report.lines()


def test_digest_and_milestones_chosen_from_an_email_apply_to_the_next_send(
        live_site: LiveSite, browser_page: Page, write_article: WriteArticle,
        monkeypatch: pytest.MonkeyPatch) -> None:
    live_site.ledger.add_subscriber(subscriber_row("reader@example.org", "Reader"))
    # 7 years on the equinox: not a milestone, so it must not come once chosen.
    write_article("seventh", "Another spring.", title="Seventh spring", date="2019-03-20")
    send(live_site, SITE_DAY, monkeypatch)
    [first, *_] = received(live_site, "reader@example.org")

    page = browser_page
    page.goto(link_in(first, live_site.url, "preferences"))
    page.wait_for_selector("text=Preferences")
    assert page.is_checked("input[name=frequency][value=each]")
    page.check("input[name=frequency][value=digest]")
    page.check("input[name=anniversaries][value=milestones]")
    page.click("form.preferences-form button[type=submit]")
    page.wait_for_selector("text=Saved.")
    assert page.is_checked("input[name=frequency][value=digest]")
    found = live_site.ledger.find_subscriber("reader@example.org")
    assert found is not None and found.choices == Choices("milestones", "digest")

    before = len(received(live_site, "reader@example.org"))
    send(live_site, EQUINOX, monkeypatch)
    [digest] = received(live_site, "reader@example.org")[before:]
    assert str(digest["Message-ID"]).startswith("<digest.20260320.")
    text = text_part(digest)
    assert "Equinox" in text and "Seventh spring" not in text
    assert digest["List-Unsubscribe"] and live_site.url + "preferences/" in text
