"""SMTP pipelining (RFC 2920) against a real aiosmtpd server that offers it.

aiosmtpd reads commands one line at a time from a buffered stream, so it handles pipelined
commands correctly, but it does not announce PIPELINING; the server here adds the keyword to its
EHLO reply and records, for each MAIL FROM, whether RCPT TO and DATA had arrived with it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator

import pytest
from aiosmtpd.smtp import SMTP, Envelope, Session

from publisher.transports import SmtpTransport, data_content
from tests.fixtures.smtp import DROP, SmtpSink, running_sink, settings, transports_to
from tests.test_transports import message, outcomes


class PipeliningSink(SmtpSink):
    """A sink that offers PIPELINING (if ``offer``) and notes how each MAIL FROM arrived."""

    def __init__(self, offer: bool = True) -> None:
        super().__init__()
        self.offer = offer
        self.arrived_together: list[bool] = []

    async def handle_EHLO(self, server: SMTP, session: Session, envelope: Envelope,
                          hostname: str, responses: list[str]) -> list[str]:
        """Offer PIPELINING in the EHLO reply."""
        session.host_name = hostname  # aiosmtpd leaves this to a handler that answers EHLO
        if not self.offer:
            return responses
        return [*responses[:-1], "250-PIPELINING", responses[-1]]

    async def handle_MAIL(self, server: SMTP, session: Session, envelope: Envelope,
                          address: str, mail_options: list[str]) -> str:
        """Note whether RCPT TO and DATA were already read in with MAIL FROM."""
        waiting = bytes(server._reader._buffer)  # type: ignore[attr-defined]
        self.arrived_together.append(b"RCPT TO:" in waiting and b"DATA\r\n" in waiting)
        return await super().handle_MAIL(server, session, envelope, address, mail_options)


@pytest.fixture
def pipelining_server() -> Iterator[PipeliningSink]:
    """Yield a plain SMTP server on 127.0.0.1 that offers PIPELINING."""
    with running_sink(sink=PipeliningSink()) as sink:
        assert isinstance(sink, PipeliningSink)
        yield sink


@pytest.fixture
def transport(pipelining_server: PipeliningSink) -> Iterator[Callable[..., SmtpTransport]]:
    """Return a factory of transports to the pipelining server, closed after the test."""
    with transports_to(pipelining_server) as make:
        yield make


def test_envelope_commands_go_out_in_one_write(
        pipelining_server: PipeliningSink, transport: Callable[..., SmtpTransport]) -> None:
    envelopes = [message(n) for n in range(1, 6)]
    results = outcomes(transport(), envelopes)
    assert [results[n].status for n in range(1, 6)] == ["sent"] * 5
    assert results[1].reply.startswith("250 2.0.0")
    assert pipelining_server.arrived_together == [True] * 5
    assert [m.data for m in pipelining_server.messages] == [e.data for e in envelopes]
    assert pipelining_server.connections == 1


def test_a_server_without_pipelining_gets_one_command_at_a_time() -> None:
    with running_sink(sink=PipeliningSink(offer=False)) as server:
        assert isinstance(server, PipeliningSink)
        plain = SmtpTransport(settings(server), "client.example.org")
        try:
            results = outcomes(plain, [message(1), message(2)])
        finally:
            plain.close()
    assert [results[1].status, results[2].status] == ["sent", "sent"]
    assert server.arrived_together == [False, False]


def test_each_reply_is_judged_for_its_own_command(
        pipelining_server: PipeliningSink, transport: Callable[..., SmtpTransport]) -> None:
    pipelining_server.answer("550 5.1.1 No such user", stage="rcpt", to="reader2@example.org")
    pipelining_server.answer("451 4.7.1 Greylisted", to="reader3@example.org")
    pipelining_server.answer("552 5.3.4 Message too big", to="reader4@example.org")
    results = outcomes(transport(), [message(n) for n in range(1, 6)])
    assert results[1].status == "sent"
    # RCPT refused: the pipelined DATA is refused too (no recipient), and the bounce names
    # the RCPT reply, not DATA's.
    assert (results[2].status, results[2].reply) == ("bounced", "550 5.1.1 No such user")
    assert (results[3].status, results[3].code) == ("deferred", 451)
    assert (results[4].status, results[4].code) == ("failed", 552)
    assert results[5].status == "sent"
    assert [m.rcpt_tos[0] for m in pipelining_server.messages] == [
        "reader1@example.org", "reader5@example.org"]
    # A refusal resets the transaction and keeps the connection.
    assert pipelining_server.connections == 1


def test_a_refused_sender_fails_and_the_later_replies_do_not_hide_it(
        pipelining_server: PipeliningSink, transport: Callable[..., SmtpTransport]) -> None:
    pipelining_server.answer("550 5.1.8 Sender domain has no MX", stage="mail")
    results = outcomes(transport(), [message(1), message(2)])
    assert (results[1].status, results[1].code) == ("failed", 550)
    assert results[1].reply == "550 5.1.8 Sender domain has no MX"
    assert results[2].status == "sent"
    assert [m.rcpt_tos[0] for m in pipelining_server.messages] == ["reader2@example.org"]


def test_421_in_the_middle_of_a_group_defers_and_reconnects(
        pipelining_server: PipeliningSink, transport: Callable[..., SmtpTransport]) -> None:
    pipelining_server.answer("421 4.3.2 Shutting down", stage="rcpt", to="reader1@example.org")
    results = outcomes(transport(), [message(1), message(2)])
    assert (results[1].status, results[1].code) == ("deferred", 421)
    assert results[2].status == "sent"
    assert pipelining_server.connections == 2


def test_a_connection_dropped_after_the_envelope_defers_without_a_duplicate(
        pipelining_server: PipeliningSink, transport: Callable[..., SmtpTransport]) -> None:
    pipelining_server.answer(DROP, to="reader2@example.org")
    results = outcomes(transport(), [message(n) for n in range(1, 4)])
    assert results[2].status == "deferred" and results[2].code is None
    assert "connection lost during DATA" in results[2].reply
    assert [results[n].status for n in (1, 3)] == ["sent", "sent"]
    assert sorted(m.rcpt_tos[0] for m in pipelining_server.messages) == [
        "reader1@example.org", "reader3@example.org"]


def test_an_idle_connection_closed_by_the_server_is_reopened_transparently(
        pipelining_server: PipeliningSink, transport: Callable[..., SmtpTransport]) -> None:
    sender = transport()
    assert outcomes(sender, [message(1)])[1].status == "sent"
    pipelining_server.answer(DROP, stage="mail")
    assert outcomes(sender, [message(2)])[2].status == "sent"
    assert len(pipelining_server.messages) == 2 and pipelining_server.connections == 2


def test_lines_starting_with_a_dot_arrive_intact(
        pipelining_server: PipeliningSink, transport: Callable[..., SmtpTransport]) -> None:
    body = ".first line\r\n..two dots\r\n.\r\nlast"
    envelope = message(1, body=body)
    assert outcomes(transport(), [envelope])[1].status == "sent"
    assert pipelining_server.messages[0].data == envelope.data


def test_international_addresses_use_smtputf8_when_pipelined(
        pipelining_server: PipeliningSink, transport: Callable[..., SmtpTransport]) -> None:
    envelope = message(1, recipient="jürgen@example.org", body="Grüße")
    assert outcomes(transport(), [envelope])[1].status == "sent"
    assert pipelining_server.messages[0].rcpt_tos == ("jürgen@example.org",)
    assert pipelining_server.arrived_together == [True]


def test_parallel_pipelined_connections_deliver_each_message_once(
        pipelining_server: PipeliningSink, transport: Callable[..., SmtpTransport]) -> None:
    results = outcomes(transport(connections=3), [message(n) for n in range(60)])
    assert {o.status for o in results.values()} == {"sent"}
    assert sorted(m.rcpt_tos[0] for m in pipelining_server.messages) == sorted(
        f"reader{n}@example.org" for n in range(60))
    assert all(pipelining_server.arrived_together)


@pytest.mark.parametrize(("data", "content"), [
    (b"a\r\nb\r\n", b"a\r\nb\r\n.\r\n"),
    (b"a\r\nb", b"a\r\nb\r\n.\r\n"),
    (b".a\r\n.\r\nb\r\n", b"..a\r\n..\r\nb\r\n.\r\n"),
])
def test_dot_stuffing(data: bytes, content: bytes) -> None:
    assert data_content(data) == content


def test_a_stop_sends_no_content_after_the_message_in_flight(
        pipelining_server: PipeliningSink, transport: Callable[..., SmtpTransport]) -> None:
    sender = transport()
    stop = threading.Event()
    results = []
    for envelope, outcome in sender.send((message(n) for n in range(1, 11)), stop):
        results.append((envelope.delivery_id, outcome.status))
        stop.set()
    # When the first outcome came, the second message's content was on its way and the third
    # was announced behind it: the second is finished, the third's transaction is dropped.
    assert results == [(1, "sent"), (2, "sent"), (3, "unsent")]
    assert [m.rcpt_tos[0] for m in pipelining_server.messages] == [
        "reader1@example.org", "reader2@example.org"]
    assert outcomes(sender, [message(11)])[11].status == "sent"
    assert pipelining_server.connections == 2
