"""Reading reports: DSNs as Postfix, Exim, qmail, Exchange and Gmail send them, feedback reports
as Yahoo and Outlook.com send them, automatic replies, and what is none of those."""

from __future__ import annotations

import pytest

from publisher.bounces import edition_of, read_report, return_key, status_code
from publisher.mail import message_id_for
from publisher.tokens import check_return_path_tag, read_return_path_tag, return_path_tag
from tests.fixtures.returns import (
    SAMPLE_MESSAGE_ID,
    SAMPLE_RETURN_PATH,
    SAMPLES,
    Sample,
    sample_bytes,
)


@pytest.mark.parametrize("sample", SAMPLES, ids=lambda s: s.name)
def test_each_sample_is_read_as_what_it_is(sample: Sample) -> None:
    report = read_report(sample_bytes(sample.name))
    assert report.category == sample.category
    if sample.kind is None:
        assert report.returns == ()
        return
    [item] = report.returns
    assert (item.kind, item.email, item.status) == (sample.kind, sample.recipient, sample.status)
    # Every sample quotes the returned message: its Message-ID and envelope sender are found.
    assert item.message_id == SAMPLE_MESSAGE_ID
    assert SAMPLE_RETURN_PATH in item.return_paths


@pytest.mark.parametrize(("name", "expected"), [
    ("postfix_hard.eml", "550 5.1.1 <gone.reader@example.com>: Recipient address rejected: "
                         "User unknown in virtual mailbox table"),
    ("exchange_online.eml", "550 5.1.10 RESOLVER.ADR.RecipientNotFound; Recipient "
                            "j.doe@contoso.com not found by SMTP address lookup"),
    ("qmail.eml", "Sorry, no mailbox here by that name. (#5.1.1)"),
    ("postfix_delayed.eml", "connect to mx.example.net[192.0.2.80]:25: Connection timed out"),
])
def test_the_diagnostic_is_the_servers_own_words_on_one_line(name: str, expected: str) -> None:
    [item] = read_report(sample_bytes(name)).returns
    assert item.diagnostic == expected


def test_a_report_read_twice_has_the_same_keys() -> None:
    data = sample_bytes("postfix_hard.eml")
    first, second = read_report(data), read_report(data)
    assert [return_key(first.identity, r) for r in first.returns] == \
        [return_key(second.identity, r) for r in second.returns]
    other = read_report(sample_bytes("gmail_failure.eml"))
    assert return_key(first.identity, first.returns[0]) != \
        return_key(other.identity, other.returns[0])


def test_a_report_without_message_id_is_named_by_its_bytes() -> None:
    data = sample_bytes("qmail.eml")
    assert read_report(data).identity == read_report(data).identity
    assert read_report(data).identity != read_report(data + b"\n").identity


def test_a_4xx_failure_is_soft_even_when_the_server_gave_up() -> None:
    # Postfix reports "Action: failed" once a message expired, with the 4.x.x it last met.
    [item] = read_report(sample_bytes("postfix_soft.eml")).returns
    assert item.kind == "soft"


def test_a_feedback_report_without_a_complaint_type_is_no_complaint() -> None:
    data = sample_bytes("arf_yahoo.eml").replace(b"Feedback-Type: abuse",
                                                 b"Feedback-Type: not-spam")
    assert read_report(data).category == "other"


def test_an_auto_reply_is_recognised_by_its_subject_alone() -> None:
    data = (b"From: someone@example.net\r\nTo: publisher@example.org\r\n"
            b"Subject: =?utf-8?q?R=C3=A9ponse_automatique=3A_absent?=\r\n\r\nAbsent.\r\n")
    assert read_report(data).category == "auto-reply"


def test_auto_submitted_no_is_a_person_writing() -> None:
    data = (b"From: someone@example.net\r\nAuto-Submitted: no\r\nSubject: Thanks\r\n\r\nHi.\r\n")
    assert read_report(data).category == "other"


def test_a_message_that_says_nothing_is_other_mail() -> None:
    assert read_report(b"From: x@example.net\n\n\x00\xff not a report").category == "other"


@pytest.mark.parametrize(("text", "code"), [
    ("550 5.1.1 <a@b>: User unknown", "5.1.1"),
    ("smtp; 452 4.2.2 Mailbox full", "4.2.2"),
    ("host mx[203.0.113.25] said: 550 5.7.1 blocked", "5.7.1"),
    ("Remote host 15.20.8137.20 (TLS1.2) refused", None),
    ("Sorry (#5.1.1)", "5.1.1"),
])
def test_status_codes_are_found_but_not_in_addresses(text: str, code: str | None) -> None:
    assert status_code(text) == code


def test_our_message_ids_name_their_edition() -> None:
    message_id = message_id_for("moon-landing.v2", 2024, "reader@example.org", "example.org")
    assert edition_of(message_id) == ("moon-landing.v2", 2024)
    assert edition_of("<CAJx0vacation9f8e7d6c5b4a3@mail.gmail.com>") is None
    assert edition_of("<confirm.0123456789abcdef0123456789abcdef@example.org>") is None
    # Digits of other scripts are no year, and no reason to fail.
    assert edition_of("<moon.\u00b2\u2070\u00b2\u2074.0123456789abcdef0123456789abcdef"
                      "@example.org>") is None


def test_raw_8bit_headers_are_read_as_utf8() -> None:
    data = ("From: Zoë <zoe@example.net>\nMessage-ID: <réponse.1@example.net>\n"
            "Subject: Réponse automatique : absente\n\nAbsente.\n").encode()
    report = read_report(data)
    assert report.category == "auto-reply"
    assert report.identity == "mail:<réponse.1@example.net>"
    hard = sample_bytes("postfix_hard.eml").replace(
        b"User unknown in virtual mailbox table\n", "Benutzer unbekannt, gelöscht\n".encode())
    [item] = read_report(hard).returns
    assert item.diagnostic is not None
    assert item.diagnostic.endswith("Benutzer unbekannt, gelöscht")


def test_a_return_path_tag_names_one_delivery_under_one_secret() -> None:
    tag = return_path_tag(b"secret", 123456, "moon", 2024, 7)
    assert tag == tag.lower() and len(tag) <= 40
    parsed = read_return_path_tag(tag.upper())  # a server may change the case
    assert parsed is not None and parsed[0] == 123456
    assert check_return_path_tag(b"secret", parsed[1], 123456, "moon", 2024, 7)
    for other in ((b"secret", 123456, "moon", 2025, 7), (b"secret", 123456, "moon", 2024, 8),
                  (b"secret", 123456, "sun", 2024, 7), (b"other", 123456, "moon", 2024, 7)):
        assert not check_return_path_tag(other[0], parsed[1], *other[1:])
    assert read_return_path_tag("not-hex") is None
    assert read_return_path_tag("+1-00") is None
