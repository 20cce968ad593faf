"""The round trip: send an edition, the returns arrive in the mailbox (IMAP or Maildir),
``publisher bounces`` reads them, and the next anniversary reaches exactly the right people."""

from __future__ import annotations

from collections import Counter
from datetime import date

import pytest
from click.testing import CliRunner

from publisher.cli import cli
from tests.fixtures.imap import IMAP_PASSWORD, ImapServer
from tests.fixtures.returns import BounceWorld, sample_bytes

READERS = [f"reader{n}@example.org" for n in range(12)]
# What comes back for whom: five hard bounces in five servers' formats, two complaints, two
# soft bounces, an out-of-office reply; readers 0 and 11 hear nothing back.
RETURNS = {
    1: "postfix_hard.eml", 2: "exim_dsn.eml", 3: "exchange_online.eml", 4: "gmail_failure.eml",
    5: "qmail.eml", 6: "arf_yahoo.eml", 7: "arf_outlook.eml", 8: "gmail_delay.eml",
    9: "postfix_delayed.eml", 10: "autoreply_exchange.eml",
}
GONE = {READERS[n] for n in range(1, 8)}


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
@pytest.mark.parametrize("source", ["imap", "maildir"])
def test_bounced_and_complained_addresses_get_nothing_more_the_rest_get_theirs_once(
        bounce_world: BounceWorld, source: str, request: pytest.FixtureRequest,
        monkeypatch: pytest.MonkeyPatch) -> None:
    world = bounce_world
    deliver = world.deliver
    if source == "imap":
        imap_server: ImapServer = request.getfixturevalue("imap_server")
        monkeypatch.setenv("PUBLISHER_IMAP_PASSWORD", IMAP_PASSWORD)
        world.bounces = {"imap": imap_server.bounces_table()}
        deliver = imap_server.deliver
    world.subscribe(*READERS)
    runner = CliRunner()
    config = str(world.config_file())

    sent = runner.invoke(cli, ["--config", config, "send", "--date", "2024-11-09"])
    assert sent.exit_code == 0, sent.output
    assert Counter(m.rcpt_tos[0] for m in world.sink.messages) == dict.fromkeys(READERS, 1)

    for n, name in RETURNS.items():
        deliver(world.report(name, READERS[n]))
    deliver(world.report("human_reply.eml", READERS[11]))
    deliver(world.report("postfix_hard.eml", READERS[1]))  # a second copy of one report
    deliver(sample_bytes("exim_text.eml", recipient="stranger@example.net",
                         return_path="bounces@example.org", message_id="<x@example.net>"))

    read = runner.invoke(cli, ["--config", config, "bounces"])
    assert read.exit_code == 0, read.output
    assert read.output.strip() == (
        "read 13: hard 6, soft 2, complaints 2, auto-replies 1, unmatched 1, other 1, "
        "already recorded 1; subscribers marked bounced 5, unsubscribed by complaint 2")
    again = runner.invoke(cli, ["--config", config, "bounces"])
    assert again.output.startswith("read 0: ")

    world.sink.messages.clear()
    following = runner.invoke(cli, ["--config", config, "send", "--date", "2025-11-09"])
    assert following.exit_code == 0, following.output
    received = Counter(m.rcpt_tos[0] for m in world.sink.messages)
    assert received == {reader: 1 for reader in READERS if reader not in GONE}
    assert not GONE & set(received)

    status = runner.invoke(cli, ["--config", config, "status", "--date", "2024-11-09"])
    assert ("  2024-11-09  moon 2024: sent 12, hard 5 (41.67%), soft 2, complaints 2 (16.67%)"
            in status.output.splitlines())
    assert status.output.count("warning: moon 2024:") == 2
    assert date(2025, 11, 9).isoformat() in runner.invoke(
        cli, ["--config", config, "status"]).output
