"""Reading returns from a real IMAP server: Dovecot on loopback, started for each test."""

from __future__ import annotations

from pathlib import Path

import pytest

from publisher.bounces import read_imap
from tests.fixtures.imap import IMAP_PASSWORD, ImapServer, running_dovecot
from tests.fixtures.returns import BounceWorld

READERS = [f"reader{n}@example.org" for n in range(4)]


@pytest.fixture
def world(bounce_world: BounceWorld, imap_server: ImapServer,
          monkeypatch: pytest.MonkeyPatch) -> BounceWorld:
    """Return a world that has sent an edition to READERS and reads returns over IMAP."""
    monkeypatch.setenv("PUBLISHER_IMAP_PASSWORD", IMAP_PASSWORD)
    bounce_world.bounces = {"imap": imap_server.bounces_table()}
    bounce_world.subscribe(*READERS)
    bounce_world.send()
    return bounce_world


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
@pytest.mark.parametrize("security", ["none", "starttls", "ssl"])
def test_returns_are_read_and_moved_to_the_processed_folder(
        world: BounceWorld, imap_server: ImapServer, security: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SSL_CERT_FILE", str(imap_server.cafile))
    world.bounces = {"imap": imap_server.bounces_table(security)}
    imap_server.deliver(world.report("exchange_online.eml", READERS[0]))
    imap_server.deliver(world.report("arf_yahoo.eml", READERS[1]))
    imap_server.deliver(world.report("autoreply_gmail.eml", READERS[2]))
    report = world.read_returns()
    assert report.problems == []
    assert (report.read, report.hard, report.complaints, report.auto_replies) == (3, 1, 1, 1)
    assert [world.status(r) for r in READERS] == ["bounced", "unsubscribed", "confirmed",
                                                  "confirmed"]
    assert imap_server.messages("INBOX") == []
    assert len(imap_server.messages("processed")) == 3
    assert {row.source for row in world.returns()} == {"imap"}
    assert world.read_returns().read == 0


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_wrong_password_is_reported_and_nothing_is_moved(
        world: BounceWorld, imap_server: ImapServer, monkeypatch: pytest.MonkeyPatch) -> None:
    imap_server.deliver(world.report("postfix_hard.eml", READERS[0]))
    monkeypatch.setenv("PUBLISHER_IMAP_PASSWORD", "not the password")
    report = world.read_returns()
    assert report.read == 0
    [problem] = report.problems
    assert problem.startswith(f"imap: IMAP {imap_server.username}@127.0.0.1:{imap_server.port}:")
    assert "AUTHENTICATIONFAILED" in problem
    assert len(imap_server.messages("INBOX")) == 1
    assert world.status(READERS[0]) == "confirmed"


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_an_untrusted_certificate_stops_the_read_rather_than_go_on_unprotected(
        world: BounceWorld, imap_server: ImapServer, monkeypatch: pytest.MonkeyPatch) -> None:
    # The certificate is not trusted: the connection fails instead of going on unprotected.
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    world.bounces = {"imap": imap_server.bounces_table("starttls")}
    imap_server.deliver(world.report("postfix_hard.eml", READERS[0]))
    report = world.read_returns()
    assert report.read == 0 and "CERTIFICATE_VERIFY_FAILED" in report.problems[0]
    assert len(imap_server.messages("INBOX")) == 1


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_run_that_dies_mid_way_leaves_the_rest_for_the_next_run(
        world: BounceWorld, imap_server: ImapServer) -> None:
    for reader in READERS[:3]:
        imap_server.deliver(world.report("gmail_failure.eml", reader))
    settings = world.config().bounces.imap
    assert settings is not None
    tally = world.read_until_killed(lambda handle: read_imap(settings, handle), "imap")
    assert tally.hard == 2
    assert len(imap_server.messages("INBOX")) == 2
    again = world.read_returns()
    assert (again.read, again.repeated, again.hard) == (2, 1, 1)
    assert [world.status(r) for r in READERS] == ["bounced"] * 3 + ["confirmed"]
    assert len(world.returns()) == 3
    assert imap_server.messages("INBOX") == []


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_server_without_move_gets_copy_and_expunge(
        bounce_world: BounceWorld, tmp_path: Path, tls_certificate: tuple[Path, Path],
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PUBLISHER_IMAP_PASSWORD", IMAP_PASSWORD)
    # An older server: the capabilities of IMAP4rev1 with UIDPLUS, no MOVE (RFC 6851).
    basic = "imap_capability = IMAP4rev1 LITERAL+ SASL-IR ID ENABLE IDLE UIDPLUS\n"
    with running_dovecot(tmp_path / "old-dovecot", tls_certificate, basic) as server:
        with server.session() as session:
            assert b"MOVE" not in session.capability()[1][0].split()
        bounce_world.bounces = {"imap": server.bounces_table()}
        bounce_world.subscribe(*READERS)
        bounce_world.send()
        server.deliver(bounce_world.report("postfix_hard.eml", READERS[0]))
        server.deliver(bounce_world.report("human_reply.eml", READERS[1]))
        report = bounce_world.read_returns()
        assert (report.read, report.hard, report.other, report.problems) == (2, 1, 1, [])
        assert server.messages("INBOX") == []
        assert len(server.messages("processed")) == 2
