"""Transports against real parts: a maildir on disk and an aiosmtpd server on loopback."""

from __future__ import annotations

import asyncio
import mailbox
import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from publisher.config import from_mapping
from publisher.errors import TransportError
from publisher.transports import (
    Envelope,
    MaildirTransport,
    Outcome,
    RateLimiter,
    SmtpTransport,
    classify,
    ehlo_name,
    open_transport,
    to_crlf,
)
from tests.fixtures.smtp import DROP, SMTP_PASSWORD, SmtpSink, settings, transports_to

SENDER = "publisher@example.org"


def message(number: int, recipient: str | None = None, body: str = "Hello.") -> Envelope:
    """Return a small, valid message for one recipient."""
    to = recipient or f"reader{number}@example.org"
    data = (f"From: {SENDER}\r\nTo: {to}\r\nSubject: number {number}\r\n"
            f"Message-ID: <{number}@example.org>\r\n\r\n{body}\r\n").encode()
    return Envelope(number, SENDER, to, data)


@pytest.fixture
def smtp_transport(smtp_server: SmtpSink) -> Iterator[Callable[..., SmtpTransport]]:
    """Return a factory of transports to the test server, closed after the test."""
    with transports_to(smtp_server) as make:
        yield make


def outcomes(transport: SmtpTransport | MaildirTransport, envelopes: list[Envelope]
             ) -> dict[int, Outcome]:
    """Send and return the outcome of each envelope by delivery id."""
    return {e.delivery_id: o for e, o in transport.send(envelopes)}


# --- reply classification -------------------------------------------------------------------


@pytest.mark.parametrize(("code", "reply", "stage", "status"), [
    (250, "2.0.0 OK", "data", "sent"),
    (451, "4.7.1 Greylisted", "data", "deferred"),
    (421, "4.3.2 Shutting down", "rcpt", "deferred"),
    (550, "5.1.1 No such user", "rcpt", "bounced"),
    (550, "5.1.10 Null MX", "data", "bounced"),
    (550, "5.1.1 No such user", "mail", "failed"),  # after MAIL FROM it is about our sender
    (553, "5.1.7 Bad sender address syntax", "rcpt", "failed"),
    (550, "No such user here", "rcpt", "failed"),  # no enhanced code: maybe a policy block
    (552, "5.3.4 Message too big", "data", "failed"),
    (554, "5.7.1 Rejected as spam", "data", "failed"),
    (-1, "garbled", "data", "deferred"),
])
def test_classify_maps_reply_classes(code: int, reply: str, stage: Any, status: str) -> None:
    outcome = classify(code, reply, stage)
    assert outcome.status == status
    assert outcome.code == code
    assert outcome.reply == f"{code} {reply}"


def test_to_crlf_fixes_bare_line_feeds_only() -> None:
    assert to_crlf(b"a\nb\r\nc\n") == b"a\r\nb\r\nc\r\n"
    already = b"a\r\nb\r\n"
    assert to_crlf(already) is already


@pytest.mark.parametrize(("domain", "name"), [
    ("example.org", "example.org"), ("127.0.0.1", "[127.0.0.1]"), ("::1", "[IPv6:::1]")])
def test_ehlo_name_uses_address_literals_for_ip_hosts(domain: str, name: str) -> None:
    assert ehlo_name(domain) == name


# --- maildir ----------------------------------------------------------------------------------


def test_maildir_stores_each_message_once(tmp_path: Path) -> None:
    path = tmp_path / "var" / "outbox"
    transport = MaildirTransport(path)
    results = outcomes(transport, [message(1), message(2)])
    assert {r.status for r in results.values()} == {"sent"}
    stored = sorted(m["Subject"] for m in mailbox.Maildir(path, create=False))
    assert stored == ["number 1", "number 2"]
    # Maildir files use the local line end, as an MTA would store them.
    files = list((path / "new").iterdir())
    assert all(b"\r\n" not in f.read_bytes() for f in files)


def test_maildir_that_cannot_be_created_is_a_transport_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(TransportError, match="cannot create the maildir"):
        MaildirTransport(blocker / "outbox")


def test_open_transport_defaults_to_the_maildir(tmp_path: Path) -> None:
    config = from_mapping({}, base_dir=tmp_path)
    transport = open_transport(config)
    assert isinstance(transport, MaildirTransport)
    assert transport.path == tmp_path / "var" / "outbox"


# --- SMTP -------------------------------------------------------------------------------------


def test_smtp_sends_every_message_over_one_reused_connection(
        smtp_server: SmtpSink, smtp_transport: Callable[..., SmtpTransport]) -> None:
    transport = smtp_transport()
    envelopes = [message(n) for n in range(1, 6)]
    results = outcomes(transport, envelopes)
    assert [results[n].status for n in range(1, 6)] == ["sent"] * 5
    assert results[1].code == 250 and results[1].reply.startswith("250 2.0.0")
    assert sorted(m.rcpt_tos[0] for m in smtp_server.messages) == sorted(
        e.recipient for e in envelopes)
    # The bytes arrive as built, and the next batch still uses the same session.
    assert smtp_server.received_by("reader3@example.org")[0].data == envelopes[2].data
    outcomes(transport, [message(6)])
    assert smtp_server.connections == 1


def test_smtp_converts_bare_line_feeds_before_sending(
        smtp_server: SmtpSink, smtp_transport: Callable[..., SmtpTransport]) -> None:
    lf = Envelope(1, SENDER, "lf@example.org", b"Subject: lf\n\nline one\n.dot line\n")
    assert outcomes(smtp_transport(), [lf])[1].status == "sent"
    assert smtp_server.messages[0].data == b"Subject: lf\r\n\r\nline one\r\n.dot line\r\n"


def test_smtp_parallel_connections_deliver_each_message_once(
        smtp_server: SmtpSink, smtp_transport: Callable[..., SmtpTransport]) -> None:
    transport = smtp_transport(connections=3)
    results = outcomes(transport, [message(n) for n in range(40)])
    assert len(results) == 40 and {o.status for o in results.values()} == {"sent"}
    received = sorted(m.rcpt_tos[0] for m in smtp_server.messages)
    assert received == sorted(f"reader{n}@example.org" for n in range(40))
    assert 1 <= smtp_server.connections <= 3


def test_smtp_outcomes_follow_the_server_replies(
        smtp_server: SmtpSink, smtp_transport: Callable[..., SmtpTransport]) -> None:
    smtp_server.answer("451 4.7.1 Greylisted, try again", to="reader1@example.org")
    smtp_server.answer("550 5.1.1 No such user", stage="rcpt", to="reader2@example.org")
    smtp_server.answer("552 5.3.4 Message too big", to="reader3@example.org")
    results = outcomes(smtp_transport(), [message(n) for n in range(1, 5)])
    assert (results[1].status, results[1].code) == ("deferred", 451)
    assert (results[2].status, results[2].reply) == ("bounced", "550 5.1.1 No such user")
    assert (results[3].status, results[3].code) == ("failed", 552)
    assert results[4].status == "sent"
    assert [m.rcpt_tos[0] for m in smtp_server.messages] == ["reader4@example.org"]
    # Refusals reset the transaction; they do not cost the connection.
    assert smtp_server.connections == 1


def test_smtp_refused_sender_fails_without_bouncing(
        smtp_server: SmtpSink, smtp_transport: Callable[..., SmtpTransport]) -> None:
    smtp_server.answer("550 5.1.8 Sender domain has no MX", stage="mail")
    result = outcomes(smtp_transport(), [message(1)])[1]
    assert (result.status, result.code) == ("failed", 550)


def test_smtp_dropped_connection_defers_that_message_and_reconnects(
        smtp_server: SmtpSink, smtp_transport: Callable[..., SmtpTransport]) -> None:
    smtp_server.answer(DROP, to="reader2@example.org")
    results = outcomes(smtp_transport(), [message(n) for n in range(1, 5)])
    assert results[2].status == "deferred" and results[2].code is None
    assert "connection lost during DATA" in results[2].reply
    assert [results[n].status for n in (1, 3, 4)] == ["sent"] * 3
    assert sorted(m.rcpt_tos[0] for m in smtp_server.messages) == [
        "reader1@example.org", "reader3@example.org", "reader4@example.org"]
    assert smtp_server.connections == 2


def test_smtp_idle_connection_closed_by_the_server_is_reopened_transparently(
        smtp_server: SmtpSink, smtp_transport: Callable[..., SmtpTransport]) -> None:
    transport = smtp_transport()
    assert outcomes(transport, [message(1)])[1].status == "sent"
    # The server hangs up on the next command: nothing of message 2 was sent yet, so the
    # transport may safely reconnect and send it rather than defer it.
    smtp_server.answer(DROP, stage="mail")
    assert outcomes(transport, [message(2)])[2].status == "sent"
    assert len(smtp_server.messages) == 2 and smtp_server.connections == 2


def test_smtp_server_closing_with_421_defers(
        smtp_server: SmtpSink, smtp_transport: Callable[..., SmtpTransport]) -> None:
    smtp_server.answer("421 4.3.2 Service shutting down", to="reader1@example.org")
    results = outcomes(smtp_transport(), [message(1), message(2)])
    assert (results[1].status, results[1].code) == ("deferred", 421)
    assert results[2].status == "sent"


def test_smtp_unreachable_server_defers_with_the_reason() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # closed again below: nobody listens there
    config = from_mapping({"email": {"transport": "smtp", "smtp": {
        "host": "127.0.0.1", "port": port, "security": "none", "timeout": 5.0}}})
    transport = SmtpTransport(config.email.smtp, "client.example.org")
    try:
        result = outcomes(transport, [message(1)])[1]
    finally:
        transport.close()
    assert result.status == "deferred" and result.code is None
    assert result.reply.startswith(f"cannot connect to 127.0.0.1:{port}")


def test_smtp_starttls_and_login(smtp_server_tls: SmtpSink, monkeypatch: pytest.MonkeyPatch
                                 ) -> None:
    assert smtp_server_tls.cafile is not None
    monkeypatch.setenv("SSL_CERT_FILE", str(smtp_server_tls.cafile))
    monkeypatch.setenv("PUBLISHER_SMTP_PASSWORD", SMTP_PASSWORD)
    transport = SmtpTransport(settings(smtp_server_tls), "client.example.org")
    try:
        assert outcomes(transport, [message(1)])[1].status == "sent"
    finally:
        transport.close()
    assert len(smtp_server_tls.messages) == 1


def test_smtp_starttls_and_login_on_several_connections(
        smtp_server_tls: SmtpSink, monkeypatch: pytest.MonkeyPatch) -> None:
    assert smtp_server_tls.cafile is not None
    monkeypatch.setenv("SSL_CERT_FILE", str(smtp_server_tls.cafile))
    monkeypatch.setenv("PUBLISHER_SMTP_PASSWORD", SMTP_PASSWORD)
    transport = SmtpTransport(settings(smtp_server_tls, connections=3), "client.example.org")
    try:
        results = outcomes(transport, [message(n) for n in range(12)])
    finally:
        transport.close()
    assert {o.status for o in results.values()} == {"sent"}
    assert len(smtp_server_tls.messages) == 12 and smtp_server_tls.connections == 3


# aiosmtpd cannot tell that an implicit-TLS connection is encrypted, and warns about AUTH.
@pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS:UserWarning")
def test_smtp_implicit_tls_and_login(smtp_server_ssl: SmtpSink, monkeypatch: pytest.MonkeyPatch
                                     ) -> None:
    assert smtp_server_ssl.cafile is not None
    monkeypatch.setenv("SSL_CERT_FILE", str(smtp_server_ssl.cafile))
    monkeypatch.setenv("PUBLISHER_SMTP_PASSWORD", SMTP_PASSWORD)
    transport = SmtpTransport(settings(smtp_server_ssl), "client.example.org")
    try:
        assert outcomes(transport, [message(1), message(2)])[2].status == "sent"
    finally:
        transport.close()
    assert len(smtp_server_ssl.messages) == 2 and smtp_server_ssl.connections == 1


def test_smtp_wrong_password_defers_instead_of_failing(
        smtp_server_tls: SmtpSink, monkeypatch: pytest.MonkeyPatch) -> None:
    assert smtp_server_tls.cafile is not None
    monkeypatch.setenv("SSL_CERT_FILE", str(smtp_server_tls.cafile))
    monkeypatch.setenv("PUBLISHER_SMTP_PASSWORD", "wrong")
    transport = SmtpTransport(settings(smtp_server_tls), "client.example.org")
    try:
        result = outcomes(transport, [message(1)])[1]
    finally:
        transport.close()
    assert (result.status, result.code) == ("deferred", 535)
    assert "refused the session" in result.reply
    assert smtp_server_tls.messages == []


def test_smtp_untrusted_certificate_is_refused(smtp_server_tls: SmtpSink,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PUBLISHER_SMTP_PASSWORD", SMTP_PASSWORD)
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    transport = SmtpTransport(settings(smtp_server_tls), "client.example.org")
    try:
        result = outcomes(transport, [message(1)])[1]
    finally:
        transport.close()
    assert result.status == "deferred" and "CERTIFICATE_VERIFY_FAILED" in result.reply
    assert smtp_server_tls.messages == []


def test_smtp_username_without_password_is_refused_up_front(
        smtp_server_tls: SmtpSink, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PUBLISHER_SMTP_PASSWORD", raising=False)
    with pytest.raises(TransportError, match="PUBLISHER_SMTP_PASSWORD"):
        SmtpTransport(settings(smtp_server_tls), "client.example.org")


def test_smtp_international_address_uses_smtputf8(
        smtp_server: SmtpSink, smtp_transport: Callable[..., SmtpTransport]) -> None:
    envelope = message(1, recipient="jürgen@example.org", body="Grüße")
    assert outcomes(smtp_transport(), [envelope])[1].status == "sent"
    assert smtp_server.messages[0].rcpt_tos == ("jürgen@example.org",)


def test_caller_stopping_early_gets_the_outcomes_on_the_next_call(
        smtp_server: SmtpSink, smtp_transport: Callable[..., SmtpTransport]) -> None:
    # Two connections: each takes the envelopes it sends lazily, at most three at a time.
    transport = smtp_transport(connections=2)
    stream = transport.send([message(n) for n in range(1, 13)])
    first = next(stream)
    stream.close()  # no more content goes out once the messages in flight are done...
    rest = list(transport.send([]))  # ...and no outcome of what was handed over is lost
    handed = sorted([first[0].delivery_id] + [e.delivery_id for e, _ in rest])
    assert handed == list(range(1, len(handed) + 1)) and 2 <= len(handed) <= 6
    assert {o.status for _, o in rest} <= {"sent", "unsent"}
    # What arrived is exactly what was reported sent; envelopes never taken were never sent.
    reported = sorted(e.recipient for e, o in [first, *rest] if o.status == "sent")
    assert sorted(m.rcpt_tos[0] for m in smtp_server.messages) == reported


class StopAfter:
    """A stop flag that is set once ``count`` outcomes have been seen."""

    def __init__(self, count: int) -> None:
        self.count = count
        self.seen = 0

    def is_set(self) -> bool:
        return self.seen >= self.count


def test_a_stop_finishes_the_message_in_flight_on_each_connection(
        smtp_server: SmtpSink, smtp_transport: Callable[..., SmtpTransport]) -> None:
    transport = smtp_transport(connections=3)
    stop = StopAfter(4)
    results = []
    for envelope, outcome in transport.send((message(n) for n in range(1, 41)), stop):
        results.append((envelope, outcome))
        stop.seen += 1
    statuses = [o.status for _, o in results]
    # At most one message per connection was in flight when the stop came; everything else
    # handed over comes back unsent, and nothing more is taken from the caller.
    assert "sent" in statuses and set(statuses) <= {"sent", "unsent"}
    assert 4 <= statuses.count("sent") <= 4 + 3
    assert len(results) <= 4 + 3 * 3
    sent = sorted(e.recipient for e, o in results if o.status == "sent")
    assert sorted(m.rcpt_tos[0] for m in smtp_server.messages) == sent
    # The next send goes on over the same transport.
    assert outcomes(transport, [message(99)])[99].status == "sent"


# --- rate limit -------------------------------------------------------------------------------


class FakeTime:
    """A monotonic clock that only moves when someone sleeps."""

    def __init__(self) -> None:
        self.now = 100.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(round(seconds, 6))


def test_rate_limiter_spaces_messages_evenly() -> None:
    fake = FakeTime()
    limiter = RateLimiter(4.0, fake.clock, fake.sleep)
    # The clock stands still, so each caller is given the next free quarter-second slot.
    assert [round(limiter.reserve(), 6) for _ in range(5)] == [0.0, 0.25, 0.5, 0.75, 1.0]


def test_rate_limiter_is_shared_by_connections() -> None:
    fake = FakeTime()
    limiter = RateLimiter(10.0, fake.clock, fake.sleep)

    async def five() -> None:
        for _ in range(5):
            await limiter.wait()

    async def four_connections() -> None:
        await asyncio.gather(*(five() for _ in range(4)))

    asyncio.run(four_connections())
    # Twenty messages, one slot each, a tenth of a second apart: no two connections share one.
    assert sorted(fake.sleeps) == [round(n / 10, 6) for n in range(1, 20)]


def test_rate_limit_zero_means_unlimited() -> None:
    fake = FakeTime()
    limiter = RateLimiter(0.0, fake.clock, fake.sleep)
    assert [limiter.reserve() for _ in range(3)] == [0.0, 0.0, 0.0]
    asyncio.run(limiter.wait())
    assert fake.sleeps == []


def test_smtp_transport_waits_for_the_rate_limiter(
        smtp_server: SmtpSink) -> None:
    fake = FakeTime()
    transport = SmtpTransport(settings(smtp_server, rate_limit=2.0), "client.example.org",
                              RateLimiter(2.0, fake.clock, fake.sleep))
    try:
        outcomes(transport, [message(n) for n in range(3)])
    finally:
        transport.close()
    assert fake.sleeps == [0.5, 1.0]
    assert len(smtp_server.messages) == 3


def test_the_rate_limit_is_shared_by_every_connection(smtp_server: SmtpSink) -> None:
    fake = FakeTime()
    transport = SmtpTransport(settings(smtp_server, rate_limit=2.0, connections=3),
                              "client.example.org", RateLimiter(2.0, fake.clock, fake.sleep))
    try:
        outcomes(transport, [message(n) for n in range(6)])
    finally:
        transport.close()
    # Six messages over three connections still take one half-second slot each.
    assert sorted(fake.sleeps) == [0.5, 1.0, 1.5, 2.0, 2.5]
    assert len(smtp_server.messages) == 6
