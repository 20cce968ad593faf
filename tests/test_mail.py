"""The email itself: MIME structure, headers, personalisation, tokens, DKIM and templates."""

from __future__ import annotations

import base64
import dataclasses
import logging
import os
import re
import smtplib
import string
from collections.abc import Callable, Mapping
from datetime import UTC, date, datetime
from email import policy
from email.header import decode_header, make_header
from email.headerregistry import Address
from email.message import EmailMessage, Message
from email.parser import BytesParser
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import dkim
import jinja2
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from publisher.calendar import Event
from publisher.config import Config, from_mapping
from publisher.content import Article, load_article, parse_markdown
from publisher.errors import ConfigError, SubscriberError, TemplateError, TokenError
from publisher.mail import Edition, Mailer, Recipient, message_id_for, reflow
from publisher.render import make_environment
from publisher.tokens import read_unsubscribe_token
from publisher.transports import Envelope, MaildirTransport, data_content
from tests.fixtures.smtp import SmtpSink

SECRET = b"secret for the mail tests"
BASE_URL = "https://example.org/anniversaries/"
DUE = date(2026, 3, 14)
ADA_KEY = "pV3nLq8ZcT1wXy0bRk5mJA"  # as the ledger makes them
ADA = Recipient(42, "ada@example.org", "Ada Lovelace", unsubscribe_key=ADA_KEY)
ANONYMOUS = Recipient(43, "anon@example.org", None)
GOLDEN = Path(__file__).parent / "golden" / "email"
# An RFC 2047 encoded-word that decodes to a line break: fed back through a vulnerable generator
# (CVE-2024-6923) it would start a new header line.
PAYLOAD = "=?UTF-8?Q?=0A?=Bcc: victim@example.org"
ARTICLE = """\
---
title: Pi Day, measured
date: 2023-03-14
summary: Why a circle's ratio got its own day.
---

On this day the ratio of a circle's circumference to its diameter gets a party, a pie and
a great many digits. Here is *why* it works: 3.14 — March 14.

See [the digits](https://example.net/pi?digits=1000&format=plain) and
[last year's piece](../e-day/) in the archive.

![A pie](images/pie.jpg)
"""


def make_config(tmp_path: Path, *, site: Mapping[str, Any] | None = None,
                **email: Any) -> Config:
    """Return a config for example.org in Berlin with the given [email] keys."""
    return from_mapping({
        "site": {"title": "Test Anniversaries", "base_url": BASE_URL,
                 "timezone": "Europe/Berlin", **(site or {})},
        "state": {"database_url": f"sqlite:///{tmp_path}/publisher.db"},
        "email": email,
    }, base_dir=tmp_path)


def make_article(**changes: Any) -> Article:
    """Return the sample Markdown article, with fields replaced."""
    return dataclasses.replace(parse_markdown(Path("pi-day.md"), ARTICLE), **changes)


def make_event(article: Article | None = None) -> Event:
    """Return the article's third anniversary."""
    return Event(article or make_article(), DUE, 3)


def parse(data: bytes) -> EmailMessage:
    """Parse message bytes with the modern policy."""
    message = BytesParser(policy=policy.default).parsebytes(data)
    assert isinstance(message, EmailMessage)
    return message


def text_of(message: EmailMessage, kind: str) -> str:
    """Return the decoded text of the plain or html part, with line breaks as a reader sees them."""
    part = message.get_body((kind,))
    assert part is not None
    return str(part.get_content()).replace("\r\n", "\n")


def parse_compat(data: bytes) -> Message:
    """Parse message bytes keeping header values as raw (still encoded) text."""
    return BytesParser(policy=policy.compat32).parsebytes(data)


def header_lines(data: bytes) -> list[bytes]:
    """Return the raw lines of the header block."""
    return data.split(b"\r\n\r\n", 1)[0].split(b"\r\n")


def unsubscribe_link(message: EmailMessage) -> str:
    """Return the https URI of the List-Unsubscribe header."""
    match = re.match(r"<(https://[^>]+)>", str(message["List-Unsubscribe"]))
    assert match is not None
    return match.group(1)


@pytest.fixture
def mailer(tmp_path: Path) -> Mailer:
    """Return a mailer with the default templates and settings."""
    return Mailer(make_config(tmp_path), SECRET)


@pytest.fixture
def edition(mailer: Mailer) -> Edition:
    """Return the sample article's edition."""
    return mailer.edition(make_event())


def test_message_is_multipart_alternative_text_first(edition: Edition) -> None:
    message = parse(edition.message(ADA))
    assert message.defects == []
    assert message.get_content_type() == "multipart/alternative"
    parts = list(message.iter_parts())
    assert [p.get_content_type() for p in parts] == ["text/plain", "text/html"]
    assert [p.get_content_charset() for p in parts] == ["utf-8", "utf-8"]
    assert all(p.defects == [] for p in parts)
    assert message["MIME-Version"] == "1.0"


def test_headers(edition: Edition) -> None:
    data = edition.message(ADA)
    message = parse(data)
    assert message["From"] == "Test Anniversaries <publisher@example.org>"
    (to,) = message["To"].addresses
    assert (to.display_name, to.addr_spec) == ("Ada Lovelace", "ada@example.org")
    assert message["Subject"] == "Pi Day, measured — 3 years ago today"
    assert message["Date"].datetime == datetime(2026, 3, 14, 9, 0,
                                                tzinfo=ZoneInfo("Europe/Berlin"))
    assert message["Message-ID"] == edition.message_id(ADA)
    assert message["List-Id"] == "Test Anniversaries <test-anniversaries.example.org>"
    assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert message["Auto-Submitted"] == "auto-generated"
    for absent in ("Reply-To", "Precedence", "Bcc", "Cc"):
        assert absent not in message
    # Only the unsubscribe URL, a single token, may exceed the recommended 78 columns.
    lines = header_lines(data)
    assert all(len(line) <= 78 for line in lines if not line.startswith(b"List-Unsubscribe: "))
    assert all(len(line) <= 998 for line in lines)


def test_message_id_is_deterministic_and_personal(mailer: Mailer, edition: Edition) -> None:
    message_id = edition.message_id(ADA)
    assert message_id == message_id_for("pi-day", 2026, "ada@example.org", "example.org")
    assert re.fullmatch(r"<pi-day\.2026\.[0-9a-f]{32}@example\.org>", message_id)
    assert "ada" not in message_id
    assert edition.message_id(ANONYMOUS) != message_id
    next_year = mailer.edition(Event(make_article(), date(2027, 3, 14), 4))
    assert next_year.message_id(ADA) != message_id


def test_a_resend_has_the_same_bytes(mailer: Mailer, edition: Edition) -> None:
    assert mailer.edition(make_event()).message(ADA) == edition.message(ADA)


def test_date_is_the_due_instant_in_the_recipient_zone(edition: Edition) -> None:
    tokyo = dataclasses.replace(ADA, timezone="Asia/Tokyo")
    assert parse(edition.message(tokyo))["Date"].datetime == datetime(
        2026, 3, 14, 9, 0, tzinfo=ZoneInfo("Asia/Tokyo"))
    with pytest.raises(SubscriberError, match="unknown time zone") as caught:
        edition.message(dataclasses.replace(ADA, timezone="Mars/Olympus"))
    assert caught.value.field == "timezone"


def test_reply_to_and_mailto_unsubscribe(tmp_path: Path) -> None:
    config = make_config(tmp_path, reply_to="Desk <desk@example.org>",
                         unsubscribe_mailto="leave@example.org")
    message = parse(Mailer(config, SECRET).edition(make_event()).message(ADA))
    assert message["Reply-To"] == "Desk <desk@example.org>"
    url = unsubscribe_link(message)
    token = url.rsplit("/", 1)[1]
    assert message["List-Unsubscribe"] == (
        f"<{url}>, <mailto:leave@example.org?subject=unsubscribe%20{token}>")


def test_unsubscribe_url_carries_a_verifiable_token(edition: Edition) -> None:
    message = parse(edition.message(ADA))
    url = unsubscribe_link(message)
    assert message["List-Unsubscribe"] == f"<{url}>"
    assert url.startswith(BASE_URL + "unsubscribe/")
    token = url.rsplit("/", 1)[1]
    assert read_unsubscribe_token(SECRET, token) == ADA_KEY
    with pytest.raises(TokenError):
        read_unsubscribe_token(SECRET, token[:-2] + ("AA" if token[-2:] != "AA" else "BB"))
    assert url in text_of(message, "plain").splitlines()
    footer = text_of(message, "html").split('class="footer"', 1)[1]
    assert f'href="{url}"' in footer


def test_name_is_escaped_in_html_and_plain_in_text(edition: Edition) -> None:
    name = 'Ann "<b>" & Co'
    message = parse(edition.message(Recipient(7, "ann@example.org", name)))
    assert message["To"].addresses[0].display_name == name
    assert "Dear Ann &quot;&lt;b&gt;&quot; &amp; Co," in text_of(message, "html")
    assert text_of(message, "plain").startswith(f"Dear {name},\n")


@pytest.mark.parametrize("name", [None, "", "  \t "])
def test_without_a_name_the_greeting_is_generic(edition: Edition, name: str | None) -> None:
    data = edition.message(Recipient(8, "bo@example.org", name))
    message = parse(data)
    assert message["To"] == "bo@example.org"
    assert text_of(message, "plain").startswith("Hello,\n")
    assert "Hello," in text_of(message, "html")
    assert b"Xq7Slot" not in data


def test_non_ascii_name_and_subject_are_encoded_and_round_trip(edition: Edition) -> None:
    data = edition.message(Recipient(9, "zoe@example.org", "Zoë Ørsted"))
    assert data.split(b"\r\n\r\n", 1)[0].isascii()
    message = parse(data)
    assert message["To"].addresses[0].display_name == "Zoë Ørsted"
    assert message["Subject"] == "Pi Day, measured — 3 years ago today"
    assert "Dear Zoë Ørsted," in text_of(message, "plain")


def test_edition_renders_once_for_many_recipients(tmp_path: Path) -> None:
    renders: list[str] = []

    class CountingTemplate(jinja2.Template):
        def render(self, *args: Any, **kwargs: Any) -> str:
            renders.append(self.name or "subject")
            return super().render(*args, **kwargs)

    env = make_environment(None)
    env.template_class = CountingTemplate
    edition = Mailer(make_config(tmp_path), SECRET, env).edition(make_event())
    expected = sorted(["subject", "email.txt", "email.html"] * 2)  # named and anonymous
    assert sorted(renders) == expected
    recipients = [Recipient(i, f"reader{i}@example.org", f"Reader {i}" if i % 2 else None)
                  for i in range(200)]
    messages = {edition.message(r) for r in recipients}
    assert len(messages) == len(recipients)
    assert sorted(renders) == expected


def test_encoded_word_payload_cannot_create_a_header(mailer: Mailer) -> None:
    edition = mailer.edition(make_event(make_article(title=f"Pi {PAYLOAD}")))
    data = edition.message(Recipient(5, "eve@example.org", PAYLOAD))
    message = parse(data)
    assert "Bcc" not in message
    assert not any(line.lower().startswith(b"bcc") for line in header_lines(data))
    assert message["Subject"] == f"Pi {PAYLOAD} — 3 years ago today"
    assert message["To"].addresses[0].display_name == PAYLOAD
    assert message["To"].addresses[0].addr_spec == "eve@example.org"


def test_line_breaks_and_nul_in_title_and_name_are_removed(mailer: Mailer) -> None:
    title = "Pi\r\nBcc: victim@example.org\x00 Day"
    edition = mailer.edition(make_event(make_article(title=title)))
    data = edition.message(Recipient(5, "eve@example.org", "Eve\nBcc: victim@example.org\r"))
    message = parse(data)
    assert "Bcc" not in message
    assert message["Subject"] == "Pi Bcc: victim@example.org Day — 3 years ago today"
    assert message["To"].addresses[0].display_name == "Eve Bcc: victim@example.org"
    head = data.split(b"\r\n\r\n", 1)[0]
    assert b"\x00" not in head
    assert all(line[:1] in (b" ", b"\t") or re.match(rb"[A-Za-z-]+: ", line)
               for line in header_lines(data))
    assert not any(line.lower().startswith(b"bcc") for line in header_lines(data))


@pytest.mark.parametrize("address", [
    "ada@example.org\r\nBcc: victim@example.org", "not-an-address", "ädä@example.org",
    "a b@example.org", "ada@exa_mple.org>", ".ada@example.org", "ada..byron@example.org",
])
def test_unusable_address_is_a_subscriber_error(edition: Edition, address: str) -> None:
    with pytest.raises(SubscriberError) as caught:
        edition.message(Recipient(11, address, "Ada"))
    assert caught.value.field == "email"
    assert "subscriber 11" in str(caught.value)


def test_address_is_cleaned_and_domain_made_ascii(edition: Edition) -> None:
    message = parse(edition.message(Recipient(12, "ada@bücher.example\n", None)))
    assert message["To"] == "ada@xn--bcher-kva.example"


@pytest.mark.parametrize("name", [
    None, "Ada Lovelace", "O'Brien", "Ada-Marie d'Arc", "x+y=z {a} |b| ~c~ #1 $2 %3 &4 *5 ^6 `7",
    "J. R. R. Tolkien", "Lovelace, Ada", 'Ada "the" Lovelace', "Ada (Countess)", "a@b",
    "Bartholomew " * 6, "Bartholomew-" * 9, "x" * 90, "a  b", "Ann <b>",
])
@pytest.mark.parametrize("address", ["ada@example.org", "ada.byron@mail.example.org",
                                     "a." * 30 + "z@example.org"])
def test_to_is_written_as_the_email_package_writes_it(edition: Edition, name: str | None,
                                                     address: str) -> None:
    data = edition.message(Recipient(14, address, name))
    to = next(line for line in re.split(rb"\r\n(?! )", data) if line.startswith(b"To:"))
    expected = policy.SMTP.header_factory("To", Address(
        " ".join((name or "").split()), addr_spec=address)).fold(policy=policy.SMTP)
    assert to + b"\r\n" == expected.encode("ascii")


def test_body_lines_stay_short_and_values_survive_encoding(edition: Edition) -> None:
    name = "Bartholomew-" * 9 + "Ü"
    data = edition.message(Recipient(13, "bart@example.org", name))
    body = data.split(b"\r\n\r\n", 1)[1]
    assert max(len(line) for line in body.split(b"\r\n")) <= 76
    assert b"\n" not in body.replace(b"\r\n", b"")
    message = parse(data)
    assert f"Dear {name}," in text_of(message, "plain")
    # Python 3.11's address parser puts a space between adjacent encoded-words, which RFC 2047
    # (section 6.2) says to drop; decode_header follows the RFC, as mail clients do.
    raw_to = parse_compat(data)["To"]
    assert str(make_header(decode_header(raw_to))) == f"{name} <bart@example.org>"


@pytest.mark.parametrize("name", [None, "Ada Lovelace", ".Dot", "." * 90, "a.\n.b"])
def test_smtp_content_is_the_message_with_its_leading_dots_doubled(
        mailer: Mailer, name: str | None, tmp_path: Path) -> None:
    # Lines that start with a dot, in the article and in the subscriber's name.
    body = "\n\n".join([".NET turned twenty.", ".", "..", "Text. " * 40 + "\n.after a break"])
    edition = mailer.edition(make_event(make_article(body_html=f"<p>{body}</p>",
                                                     body_text=body)))
    recipient = Recipient(7, "dot@example.org", name)
    wire, stuffed, message_id = edition.content(recipient)
    data = edition.message(recipient)
    assert stuffed and wire == data_content(data)
    assert message_id == edition.message_id(recipient)
    assert b"\r\n.\r\n" not in wire[:-3]  # the end of the content comes only at the end
    # A maildir stores the message itself.
    ((_, outcome),) = MaildirTransport(tmp_path / "box").send(
        [Envelope(1, "a@example.org", "dot@example.org", wire, stuffed=True)])
    assert outcome.status == "sent"
    (stored,) = (tmp_path / "box" / "new").iterdir()
    assert stored.read_bytes() == data.replace(b"\r\n", b"\n")


def test_html_is_inlined_with_dark_mode_and_mobile_rules(edition: Edition) -> None:
    html = text_of(parse(edition.message(ADA)), "html")
    style = re.search(r"<style>(.*?)</style>", html, re.S)
    assert style is not None
    assert "@media (prefers-color-scheme: dark)" in style.group(1)
    assert "max-width: 620px" in style.group(1)
    assert re.search(r'<td class="card" style="[^"]*background-color: #ffffff', html)
    assert 'role="presentation"' in html
    assert '<meta name="color-scheme" content="light dark">' in html
    assert '<meta name="viewport"' in html


def test_links_are_absolute_and_listed_in_the_text(edition: Edition) -> None:
    message = parse(edition.message(ADA))
    html, text = text_of(message, "html"), text_of(message, "plain")
    assert 'href="https://example.org/anniversaries/articles/e-day/"' in html
    assert 'src="https://example.org/anniversaries/articles/pi-day/images/pie.jpg"' in html
    assert 'href="https://example.net/pi?digits=1000&amp;format=plain"' in html
    assert "[1] the digits\n    https://example.net/pi?digits=1000&format=plain" in text
    assert "[2] last year's piece\n    https://example.org/anniversaries/articles/e-day/" in text
    assert "Read it on the web:\nhttps://example.org/anniversaries/articles/pi-day/" in text


def test_text_part_is_wrapped(edition: Edition) -> None:
    text = text_of(parse(edition.message(ADA)), "plain")
    assert max(len(line) for line in text.splitlines() if " " in line) <= 72
    assert "gets a\nparty, a pie and a great many digits." in text


def test_first_publication_and_commemoration_are_worded(mailer: Mailer) -> None:
    first = parse(mailer.edition(Event(make_article(), date(2023, 3, 14), 0)).message(ADA))
    assert first["Subject"] == "Pi Day, measured — published today"
    assert "\nNew today.\n" in text_of(first, "plain")
    assert ">New today</p>" in text_of(first, "html")
    remembered = make_article(commemorated=date(1988, 3, 14))
    message = parse(mailer.edition(make_event(remembered)).message(ADA))
    for kind in ("plain", "html"):
        assert "It marks 38 years since 14 March 1988." in text_of(message, kind)


# Elements that start a new line where a mail program shows them, and elements without content.
BLOCKS = frozenset({"blockquote", "br", "div", "h1", "h2", "h3", "h4", "h5", "h6", "hr", "li",
                    "ol", "p", "pre", "table", "td", "th", "tr", "ul"})
VOID = frozenset({"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta",
                  "source", "track", "wbr"})
UNSEEN = frozenset({"head", "script", "style", "title"})
HIDING = re.compile(r"(?:^|;)\s*(?:display\s*:\s*none|visibility\s*:\s*hidden|opacity\s*:\s*0"
                    r"|max-height\s*:\s*0)\s*(?:;|$)")


class VisibleText(HTMLParser):
    """Collect the text a reader sees: no head, no hidden element (the preheader), blocks apart."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.hidden_depth = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        """Enter an element: hidden ones hide everything inside them."""
        if self.hidden_depth and tag not in VOID:
            self.hidden_depth += 1
        elif tag in UNSEEN or HIDING.search(dict(attrs).get("style") or ""):
            self.hidden_depth = 1
        elif tag in BLOCKS and not self.hidden_depth:
            self.parts.append("\n")

    def handle_endtag(self, tag: str) -> None:
        """Leave an element."""
        if self.hidden_depth:
            self.hidden_depth -= 1
        elif tag in BLOCKS:
            self.parts.append("\n")

    def handle_data(self, data: str) -> None:
        """Keep text that is shown."""
        if not self.hidden_depth:
            self.parts.append(data)


def words(text: str) -> list[str]:
    """Return the words of a text without the punctuation around them."""
    # Split at white space only: two words glued together by a lost space stay one word here.
    return [word.strip(string.punctuation) for word in text.split()]


def visible_words(html: str) -> list[str]:
    """Return the words a reader of an HTML part sees, in order."""
    parser = VisibleText()
    parser.feed(html)
    parser.close()
    return words("".join(parser.parts))


def assert_both_parts_say(message: EmailMessage, *patterns: str) -> None:
    """Assert that each phrase found in the text part reads the same in the HTML part."""
    text, seen = text_of(message, "plain"), visible_words(text_of(message, "html"))
    for pattern in patterns:
        found = re.search(pattern, text)
        assert found is not None, f"{pattern!r} is not in the text part"
        phrase = words(found.group())
        runs = (seen[i:i + len(phrase)] for i in range(len(seen) - len(phrase) + 1))
        assert phrase in runs, f"{found.group()!r} does not read the same in: {' '.join(seen)}"


GREETING = r"\A[^\n]+"


@pytest.mark.parametrize("recipient", [ADA, ANONYMOUS], ids=["named", "anonymous"])
@pytest.mark.parametrize("on, years", [(DUE, 3), (date(2023, 3, 14), 0)],
                         ids=["anniversary", "first"])
def test_edition_greeting_and_closing_read_the_same_in_html(
        mailer: Mailer, recipient: Recipient, on: date, years: int) -> None:
    article = make_article(commemorated=date(1988, 3, 14))
    message = parse(mailer.edition(Event(article, on, years)).message(recipient))
    assert_both_parts_say(message, GREETING, r"It marks [^.]+\.", r"You receive this email[^:]+")


@pytest.mark.parametrize("recipient", [ADA, ANONYMOUS], ids=["named", "anonymous"])
def test_confirmation_greeting_and_closing_read_the_same_in_html(
        mailer: Mailer, recipient: Recipient) -> None:
    message = parse(mailer.confirmation(recipient, BASE_URL + "confirm/abc.def"))
    assert_both_parts_say(message, GREETING, r"please confirm [^.]+\.",
                          r"If you did not ask [^.]+\.")


@pytest.mark.parametrize("kind", ["edition", "confirmation"])
def test_charset_is_declared_first_in_the_head(mailer: Mailer, edition: Edition,
                                               kind: str) -> None:
    data = (edition.message(ADA) if kind == "edition"
            else mailer.confirmation(ADA, BASE_URL + "confirm/abc.def"))
    html = text_of(parse(data), "html").encode("utf-8")
    declaration = re.search(rb'<head><meta charset="utf-8">', html)
    assert declaration is not None
    # A parser looks for the encoding in the first 1,024 bytes only.
    assert declaration.end() <= 1024
    assert declaration.end() <= html.index(b"<style")


def test_reflow_rewraps_prose_and_keeps_structure() -> None:
    source = (
        "A paragraph whose source lines\nbreak early, and then run on far past the width of"
        " the text part.\n\n"
        "- an item long enough to wrap onto a second line that is indented under the text\n"
        "- short\n\n"
        "> quoted words that go on and on and on and on and on and on and on and on\n> more\n\n"
        "```\n" + "code " * 20 + "\n\n```\n"
        "| a | b |\n"
        "Hard break  \nnext\n"
        "https://example.org/" + "long/" * 20
    )
    assert reflow(source, 40).split("\n") == [
        "A paragraph whose source lines break",
        "early, and then run on far past the",
        "width of the text part.",
        "",
        "- an item long enough to wrap onto a",
        "  second line that is indented under the",
        "  text",
        "- short",
        "",
        "> quoted words that go on and on and on",
        "> and on and on and on and on and on",
        "> more",
        "",
        "```",
        "code " * 20,
        "",
        "```",
        "| a | b |",
        "Hard break",
        "next",
        "https://example.org/" + "long/" * 20,
    ]


def test_large_html_sets_the_size_warning(mailer: Mailer,
                                          caplog: pytest.LogCaptureFixture) -> None:
    assert mailer.edition(make_event()).size_warning is None
    paragraph = "<p>" + "A sentence that fills the page. " * 40 + "</p>\n"
    big = make_article(body_html=paragraph * 100)
    with caplog.at_level(logging.WARNING, logger="publisher.mail"):
        edition = mailer.edition(make_event(big))
    assert edition.size_warning is not None
    assert "pi-day 2026" in edition.size_warning and "Gmail" in edition.size_warning
    assert [r.getMessage() for r in caplog.records] == [edition.size_warning]


def test_subject_template_can_use_the_name(tmp_path: Path) -> None:
    config = make_config(tmp_path, subject="{{ subscriber.name or 'Friend' }}: {{ article.title }}")
    edition = Mailer(config, SECRET).edition(make_event())
    assert parse(edition.message(ADA))["Subject"] == "Ada Lovelace: Pi Day, measured"
    assert parse(edition.message(ANONYMOUS))["Subject"] == "Friend: Pi Day, measured"
    zoe = parse(edition.message(Recipient(3, "zoe@example.org", "Zoë")))
    assert zoe["Subject"] == "Zoë: Pi Day, measured"


def test_subject_syntax_error_stops_the_mailer(tmp_path: Path) -> None:
    with pytest.raises(TemplateError) as caught:
        Mailer(make_config(tmp_path, subject="{{ article.title "), SECRET)
    assert "[email] subject" in str(caught.value)


def test_sender_that_is_no_address_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        email: dict[str, Any] = {"from": "Desk <desk at example.org>@"}  # "from" is a keyword
        Mailer(make_config(tmp_path, **email), SECRET)
    assert caught.value.field == "email.from"


def test_user_template_overrides_the_packaged_one(tmp_path: Path) -> None:
    templates = tmp_path / "templates"
    templates.mkdir()
    (templates / "email.txt").write_text(
        "Hi {{ subscriber.name or 'there' }}: {{ article.title }}\n{{ unsubscribe_url }}\n")
    config = make_config(tmp_path, site={"templates_dir": str(templates)})
    edition = Mailer(config, SECRET).edition(make_event())
    message = parse(edition.message(ADA))
    url = unsubscribe_link(message)
    assert text_of(message, "plain") == f"Hi Ada Lovelace: Pi Day, measured\n{url}\n"
    assert text_of(parse(edition.message(ANONYMOUS)), "plain").startswith("Hi there: ")


def test_filter_on_a_personal_value_is_reported(tmp_path: Path) -> None:
    templates = tmp_path / "templates"
    templates.mkdir()
    (templates / "email.txt").write_text("Dear {{ subscriber.name|upper }}\n")
    config = make_config(tmp_path, site={"templates_dir": str(templates)})
    with pytest.raises(TemplateError) as caught:
        Mailer(config, SECRET).edition(make_event())
    assert caught.value.path == templates / "email.txt"
    assert caught.value.field == "personalisation"


def test_preview_fills_in_the_recipient(edition: Edition) -> None:
    preview = edition.preview(Recipient(7, "ann@example.org", "Ann <b>"))
    assert preview.subject == "Pi Day, measured — 3 years ago today"
    assert preview.text.startswith("Dear Ann <b>,\n")
    assert "Dear Ann &lt;b&gt;," in preview.html
    assert "Xq7Slot" not in preview.text + preview.html


def test_seed_article_renders_as_an_email(mailer: Mailer, seed_path: Path) -> None:
    article = load_article(seed_path)
    edition = mailer.edition(Event(article, date(2026, 11, 9), 3))
    message = parse(edition.message(ADA))
    assert message.defects == []
    assert edition.size_warning is None
    opening = " ".join(article.body_text.split()[:8])
    assert opening in " ".join(text_of(message, "plain").split())
    assert opening in " ".join(text_of(message, "html").split())


@pytest.fixture(scope="module")
def dkim_key() -> tuple[bytes, bytes]:
    """Return a fresh RSA key as (PKCS#8 PEM private key, DNS TXT record value)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    public = key.public_key().public_bytes(serialization.Encoding.DER,
                                           serialization.PublicFormat.SubjectPublicKeyInfo)
    return pem, b"v=DKIM1; k=rsa; p=" + base64.b64encode(public)


def dkim_config(tmp_path: Path, pem: bytes, **email: Any) -> Config:
    """Return a config that signs with ``pem`` as selector ``mail2026`` of example.org."""
    key_path = tmp_path / "dkim.key"
    key_path.write_bytes(pem)
    return make_config(tmp_path, dkim={"domain": "example.org", "selector": "mail2026",
                                       "private_key": str(key_path)}, **email)


def dns_for(record: bytes) -> Callable[..., bytes | None]:
    """Return a DNS TXT lookup that knows only the test selector."""

    def lookup(name: bytes, timeout: float = 5) -> bytes | None:
        return record if name == b"mail2026._domainkey.example.org." else None

    return lookup


def test_dkim_signature_verifies(tmp_path: Path, dkim_key: tuple[bytes, bytes]) -> None:
    pem, record = dkim_key
    config = dkim_config(tmp_path, pem, reply_to="desk@example.org")
    data = Mailer(config, SECRET).edition(make_event()).message(ADA)
    assert data.startswith(b"DKIM-Signature: ")
    assert dkim.verify(data, dnsfunc=dns_for(record))
    signed = parse(data)["DKIM-Signature"]
    tag = re.search(r"h=([^;]+);", str(signed))
    assert tag is not None
    names = {name.strip() for name in tag.group(1).split(":")}
    assert {"from", "to", "subject", "date", "message-id", "list-id", "list-unsubscribe",
            "list-unsubscribe-post", "reply-to"} <= names


@pytest.mark.parametrize("change", [
    lambda d: d.replace(b"Date: Sat, 14 Mar 2026", b"Date: Sun, 15 Mar 2026", 1),
    lambda d: d.replace(b"\r\nFrom: ", b"\r\nList-Unsubscribe-Post: x\r\nFrom: ", 1),
    lambda d: d.replace(b"\r\nFrom: ", b"\r\nReply-To: mallory@example.net\r\nFrom: ", 1),
    lambda d: d.replace(b"Read it on the web", b"Read it on the Web", 1),
])
def test_dkim_detects_changes(tmp_path: Path, dkim_key: tuple[bytes, bytes],
                              change: Callable[[bytes], bytes]) -> None:
    pem, record = dkim_key
    data = Mailer(dkim_config(tmp_path, pem), SECRET).edition(make_event()).message(ADA)
    changed = change(data)
    assert changed != data
    assert not dkim.verify(changed, dnsfunc=dns_for(record))


def test_confirmation_is_signed_too(tmp_path: Path, dkim_key: tuple[bytes, bytes]) -> None:
    pem, record = dkim_key
    data = Mailer(dkim_config(tmp_path, pem), SECRET).confirmation(ADA, BASE_URL + "confirm/x")
    assert dkim.verify(data, dnsfunc=dns_for(record))


@pytest.mark.parametrize(("content", "problem"), [
    (None, "cannot read"), (b"not a key", "not a PEM RSA private key"),
])
def test_unusable_dkim_key_is_a_config_error(tmp_path: Path, content: bytes | None,
                                             problem: str) -> None:
    key_path = tmp_path / "dkim.key"
    if content is not None:
        key_path.write_bytes(content)
    config = make_config(tmp_path, dkim={"private_key": str(key_path)})
    with pytest.raises(ConfigError, match=problem) as caught:
        Mailer(config, SECRET)
    assert caught.value.path == key_path


def fixed_clock() -> datetime:
    """Return the instant the confirmation tests pretend it is."""
    return datetime(2026, 3, 1, 17, 30, tzinfo=UTC)


def test_confirmation_email(tmp_path: Path) -> None:
    mailer = Mailer(make_config(tmp_path), SECRET, clock=fixed_clock)
    url = BASE_URL + "confirm/abc.def"
    message = parse(mailer.confirmation(Recipient(3, "new@example.org", "Nia <3"), url))
    assert message.defects == []
    assert message["Subject"] == "Confirm your subscription to Test Anniversaries"
    assert message["To"].addresses[0].display_name == "Nia <3"
    assert message["Date"].datetime == fixed_clock()
    assert message["Auto-Submitted"] == "auto-generated"
    assert "List-Unsubscribe" not in message
    assert re.fullmatch(r"<confirm\.[0-9a-f]{32}@example\.org>", str(message["Message-ID"]))
    assert [p.get_content_type() for p in message.iter_parts()] == ["text/plain", "text/html"]
    assert url in text_of(message, "plain").splitlines()
    html = text_of(message, "html")
    assert f'href="{url}"' in html and "Dear Nia &lt;3," in html
    assert "48 hours" in text_of(message, "plain")


def test_confirmation_subject_is_configurable(tmp_path: Path) -> None:
    config = make_config(tmp_path, confirm_subject="Bitte bestätigen: {{ site.title }}")
    data = Mailer(config, SECRET, clock=fixed_clock).confirmation(ADA, BASE_URL + "confirm/x")
    assert parse(data)["Subject"] == "Bitte bestätigen: Test Anniversaries"


def test_message_arrives_unchanged_over_smtp(edition: Edition, mailer: Mailer,
                                             smtp_server: SmtpSink) -> None:
    data = edition.message(ADA)
    with smtplib.SMTP(smtp_server.host, smtp_server.port, timeout=10) as client:
        client.sendmail(mailer.envelope_sender, [ADA.email], data)
    (received,) = smtp_server.messages
    assert received.mail_from == "publisher@example.org"
    assert received.data == data


def check_golden(name: str, data: bytes) -> None:
    """Compare bytes with a golden file; UPDATE_GOLDEN=1 rewrites it instead."""
    path = GOLDEN / name
    if os.environ.get("UPDATE_GOLDEN"):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    assert path.is_file(), f"{path} is missing: run `make golden`"
    assert data == path.read_bytes()


@pytest.mark.golden
def test_golden_edition(tmp_path: Path) -> None:
    config = make_config(tmp_path, reply_to="Desk <desk@example.org>",
                         unsubscribe_mailto="leave@example.org")
    edition = Mailer(config, SECRET).edition(make_event())
    check_golden("edition.eml", edition.message(Recipient(42, "ada@example.org", "Ada Lovelace",
                                                          timezone="America/New_York",
                                                          unsubscribe_key=ADA_KEY)))


@pytest.mark.golden
def test_golden_confirmation(tmp_path: Path) -> None:
    mailer = Mailer(make_config(tmp_path), SECRET, clock=fixed_clock)
    check_golden("confirm.eml", mailer.confirmation(ADA, BASE_URL + "confirm/abc.def"))
