"""Every kind of email as two independent programs see it: SpamAssassin and Chromium.

SpamAssassin runs local tests only (``spamassassin -L -t``); each kind of email is scored once
per session. Where ``spamassassin`` or ``/usr/bin/chromium`` is missing the tests skip, except
in CI (``CI=true``), where they fail: ``make test`` installs both packages.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page

from publisher.calendar import Event
from publisher.config import from_mapping
from publisher.content import load_article
from publisher.digest import digest_edition
from publisher.mail import Mailer, Recipient
from tests.fixtures import tool_missing

SAMPLES = Path(__file__).resolve().parents[1] / "content"
BASE_URL = "https://anniversaries.example.org/"
SECRET = b"secret for the mail client tests"
ADA = Recipient(7, "ada@example.net", "Ada Lovelace", timezone="Europe/London")
BOB = Recipient(8, "bob@example.com", None)
# SpamAssassin's own sub-rules for text hidden by its style (display: none, visibility: hidden)
# or by a font too small to read. Alone they score nothing, but together with facts of the
# delivery they do (STY_INVIS_DIRECT, FONT_INVIS_MSGID), so the test makes them a rule it sees.
HIDDEN_TEXT_RULE = "meta T_HIDDEN_TEXT_INVIS (__STY_INVIS || __FONT_INVIS)"
STRUCTURE_RULE = re.compile(r"(?:^|_)(?:HTML|MIME|FONT)_|_INVIS")  # T_HTML_… counts too
INFORMATIONAL = frozenset({"HTML_MESSAGE"})  # "the message has an HTML part", scored 0
SCORED_AT = datetime(2026, 7, 1, 10, 0, tzinfo=UTC)


@dataclass(frozen=True)
class Verdict:
    """SpamAssassin's report on one message: its score and the points of each rule that fired."""

    score: float
    rules: dict[str, float]
    report: str


def sample_messages(tmp_path: Path) -> dict[str, bytes]:
    """Return one message of each kind the publisher sends, built as it builds them."""
    config = from_mapping({
        "site": {"title": "Anniversaries", "base_url": BASE_URL, "timezone": "Europe/Berlin"},
        "state": {"database_url": f"sqlite:///{tmp_path}/publisher.db"},
        "email": {"from": "Anniversaries <news@anniversaries.example.org>",
                  "reply_to": "Archive desk <desk@anniversaries.example.org>"},
    }, base_dir=tmp_path)
    mailer = Mailer(config, SECRET, clock=lambda: SCORED_AT)
    moon = load_article(SAMPLES / "moon-landing.md")
    pi = load_article(SAMPLES / "pi-day.txt")
    day = date(2026, 7, 20)
    day_of = [load_article(SAMPLES / name) for name in ("moon-landing.md", "sputnik.md",
                                                         "leap-day.md", "pi-day.txt")]
    digest = digest_edition(mailer, [Event(a, day, day.year - a.date.year) for a in day_of], day)
    return {
        "edition": mailer.edition(Event(moon, day, 5)).message(ADA),
        "first edition": mailer.edition(Event(pi, pi.date, 0)).message(BOB),
        "confirmation": mailer.confirmation(ADA, BASE_URL + "confirm/Wzcs.c2lnbmF0dXJl"),
        "digest": digest.message(ADA),
    }


def verdict(output: str) -> Verdict:
    """Read the score and the rules from the report ``spamassassin -t`` appends."""
    start = output.rfind("Content analysis details:")
    score = re.match(r"Content analysis details:\s+\((-?\d+(?:\.\d+)?) points", output[start:])
    assert start >= 0 and score is not None, f"no SpamAssassin report in:\n{output}"
    report = output[start:]
    rules = {name: float(points) for points, name in
             re.findall(r"^\s*(-?\d+(?:\.\d+)?)\s+([A-Z][A-Z0-9_]+)\s", report, re.MULTILINE)}
    return Verdict(float(score.group(1)), rules, report)


@pytest.fixture(scope="session")
def spam_verdicts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Verdict]:
    """Score each kind of email once per session (SpamAssassin takes seconds per message)."""
    program = shutil.which("spamassassin")
    if program is None:
        tool_missing("spamassassin is not installed (make test installs Debian's package)")
    home = tmp_path_factory.mktemp("spamassassin-home")
    # Its own home: no user preferences, Bayes data or auto-whitelist from this machine.
    env = {**os.environ, "HOME": str(home)}
    messages = sample_messages(tmp_path_factory.mktemp("spam"))
    # Side by side: most of each run is SpamAssassin loading its rules.
    running = {kind: subprocess.Popen([program, "-L", "-t", "--cf", HIDDEN_TEXT_RULE],
                                      stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                      stderr=subprocess.DEVNULL, env=env)
               for kind in messages}
    verdicts = {}
    try:
        for kind, process in running.items():
            output, _ = process.communicate(messages[kind], timeout=300)
            assert process.returncode == 0, f"spamassassin failed on the {kind}"
            verdicts[kind] = verdict(output.decode("utf-8", "replace"))
    finally:
        for process in running.values():
            if process.poll() is None:
                process.kill()
                process.wait()
    return verdicts


KINDS = ["edition", "first edition", "confirmation", "digest"]


@pytest.mark.parametrize("kind", KINDS)
def test_spamassassin_scores_nothing(spam_verdicts: dict[str, Verdict], kind: str) -> None:
    result = spam_verdicts[kind]
    assert result.score <= 0.0, result.report
    assert all(points <= 0.0 for points in result.rules.values()), result.report


@pytest.mark.parametrize("kind", KINDS)
def test_no_html_or_mime_rule_fires(spam_verdicts: dict[str, Verdict], kind: str) -> None:
    result = spam_verdicts[kind]
    assert "HTML_MESSAGE" in result.rules, "the report was not read: " + result.report
    fired = sorted(name for name in result.rules
                   if STRUCTURE_RULE.search(name) and name not in INFORMATIONAL)
    assert fired == [], result.report


def test_report_is_read() -> None:
    report = verdict("""Content analysis details:   (1.7 points, 5.0 required)

 pts rule name              description
---- ---------------------- --------------------------------------------------
-0.0 NO_RECEIVED            Informational: message has no Received headers
 0.7 HTML_FONT_LOW_CONTRAST BODY: HTML font color similar or identical to
                            background
 1.0 FONT_INVIS_MSGID       Invisible text + suspicious message ID
""")
    assert report.score == 1.7
    assert report.rules == {"NO_RECEIVED": -0.0, "HTML_FONT_LOW_CONTRAST": 0.7,
                            "FONT_INVIS_MSGID": 1.0}


@pytest.fixture(scope="module")
def html_parts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Return the HTML part of each kind of email."""
    parser = BytesParser(policy=policy.default)
    parts = {}
    for kind, data in sample_messages(tmp_path_factory.mktemp("html")).items():
        message = parser.parsebytes(data)
        assert isinstance(message, EmailMessage)
        body = message.get_body(("html",))
        assert body is not None
        parts[kind] = str(body.get_content())
    return parts


@pytest.fixture
def offline_page(chromium: Browser) -> Iterator[Page]:
    """Return a phone-sized page that loads nothing from the network (an email's images)."""
    context = chromium.new_context(viewport={"width": 375, "height": 800})
    context.route("**/*", lambda route: route.abort())
    try:
        yield context.new_page()
    finally:
        context.close()


@pytest.mark.browser
@pytest.mark.parametrize("kind", KINDS)
def test_preheader_is_not_shown(offline_page: Page, html_parts: dict[str, str],
                                kind: str) -> None:
    page = offline_page
    page.set_content(html_parts[kind])
    preheader = page.locator(".preheader")
    assert preheader.count() == 1 and preheader.inner_text().strip()
    assert not preheader.is_visible()  # no room taken: Playwright's test for "not shown"
    masthead = page.locator(".masthead").bounding_box()
    assert masthead is not None and masthead["y"] < 30  # nothing above it but the page's padding
