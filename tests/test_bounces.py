"""Returns after a real send: tagged envelope senders, matching, the policy, exactly once, the
Maildir source, ``publisher bounces``, ``publisher status`` and the daemon's poll."""

from __future__ import annotations

import mailbox
import tomllib
from datetime import date, datetime, timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import create_engine

from publisher import config as config_module
from publisher.bounces import POLL_STATE_KEY, read_maildir
from publisher.cli import EXIT_CONFIG, EXIT_PROBLEMS, cli, return_lines
from publisher.errors import ConfigError
from publisher.ledger import MIGRATIONS, Ledger, returns
from publisher.schedule import Ticker
from publisher.status import return_status
from publisher.subscriptions.fields import subscriber_row
from tests.fixtures.database import migrate_to_before
from tests.fixtures.returns import DAY, SENT_AT, BounceWorld, sample_bytes

READERS = [f"reader{n}@example.org" for n in range(6)]
LATER = SENT_AT + timedelta(days=1)


def sent_world(world: BounceWorld, *readers: str) -> BounceWorld:
    world.subscribe(*(readers or READERS))
    world.send()
    return world


# --- the envelope sender names the delivery -----------------------------------------------------


def test_each_message_goes_out_from_a_signed_bounce_address_of_its_own(
        bounce_world: BounceWorld) -> None:
    sent_world(bounce_world)
    senders = [bounce_world.last_message(r).mail_from for r in READERS]
    assert len(set(senders)) == len(READERS)
    for sender in senders:
        local, _, domain = sender.partition("@")
        assert domain == "example.org" and local.startswith("bounces+")
        assert local == local.lower() and len(local) <= 64
        # The From header stays the publisher's own address.
    assert all(r.message["From"].addresses[0].addr_spec == "publisher@example.org"
               for r in bounce_world.sink.messages)


def test_without_a_bounce_address_the_from_address_is_the_envelope_sender(
        bounce_world: BounceWorld) -> None:
    bounce_world.email = {}
    sent_world(bounce_world)
    assert {m.mail_from for m in bounce_world.sink.messages} == {"publisher@example.org"}


# --- the policy ------------------------------------------------------------------------------


def test_a_hard_bounce_marks_the_subscriber_bounced_once(bounce_world: BounceWorld) -> None:
    world = sent_world(bounce_world)
    world.deliver(world.report("postfix_hard.eml", "reader1@example.org"))
    report = world.read_returns()
    assert (report.read, report.hard, report.bounced, report.unmatched) == (1, 1, 1, 0)
    assert world.status("reader1@example.org") == "bounced"
    assert {world.status(r) for r in READERS if r != "reader1@example.org"} == {"confirmed"}
    [row] = world.returns()
    assert (row.source, row.kind, row.status_code, row.matched_by, row.effect) == (
        "maildir", "hard", "5.1.1", "tag", "bounced")
    assert (row.slug, row.year, row.email) == ("moon", 2024, "reader1@example.org")
    assert row.diagnostic.startswith("550 5.1.1 <reader1@example.org>: Recipient address")
    # The same report again (a second copy of it, or a run that died before moving it).
    world.deliver(world.report("postfix_hard.eml", "reader1@example.org"))
    again = world.read_returns()
    assert (again.read, again.hard, again.repeated, again.bounced) == (1, 0, 1, 0)
    assert len(world.returns()) == 1


def test_a_complaint_unsubscribes_and_skips_what_was_queued(bounce_world: BounceWorld) -> None:
    world = sent_world(bounce_world)
    # The next edition is queued (not sent yet) when the complaint arrives.
    world.article("sputnik", date(1957, 11, 10))
    with world.ledger() as ledger:
        queued = ledger.enqueue("sputnik", 67, date(2024, 11, 10), due_at=LATER,
                                give_up_at=LATER + timedelta(days=2), zone=None,
                                site_zone="UTC")
    assert queued == len(READERS)
    world.deliver(world.report("arf_yahoo.eml", "reader2@example.org"))
    report = world.read_returns()
    assert (report.complaints, report.unsubscribed) == (1, 1)
    assert world.status("reader2@example.org") == "unsubscribed"
    with world.ledger() as ledger:
        skipped = [c for c in ledger.delivery_counts(date(2024, 11, 10)) if c.status == "skipped"]
    assert [c.count for c in skipped] == [1]


def test_a_complaint_without_the_recipient_is_matched_by_its_tag(
        bounce_world: BounceWorld) -> None:
    world = sent_world(bounce_world)
    world.deliver(world.report("arf_outlook.eml", "reader3@example.org"))
    assert world.read_returns().unsubscribed == 1
    assert world.status("reader3@example.org") == "unsubscribed"
    [row] = world.returns()
    assert (row.kind, row.email, row.matched_by) == ("complaint", None, "tag")


def test_soft_bounces_mark_the_subscriber_at_the_soft_limit_within_soft_days(
        bounce_world: BounceWorld) -> None:
    world = bounce_world
    world.bounces = {"soft_limit": 3, "soft_days": 30}
    for slug in ("apollo", "sputnik", "vostok"):
        world.article(slug, date(2000, 11, 9))
    world.subscribe("far.away@example.com")
    world.send()
    sent = world.sink.received_by("far.away@example.com")
    assert len(sent) == 4

    def soft(n: int, *, same_message_as: int | None = None) -> bytes:
        message = sent[n if same_message_as is None else same_message_as]
        return world.report("gmail_delay.eml", "far.away@example.com",
                            message_id=str(message.message["Message-ID"]).strip(),
                            return_path=message.mail_from, report_id=f"<delay.{n}@mx.google.com>")

    world.deliver(soft(0))
    world.deliver(soft(1, same_message_as=0))  # a second warning about the same message
    world.deliver(soft(2))
    assert world.read_returns().soft == 3
    assert world.status("far.away@example.com") == "confirmed"  # two messages so far
    # A third message comes back soft after soft_days: the first two no longer count.
    world.deliver(soft(3))
    assert world.read_returns(at=SENT_AT + timedelta(days=40)).bounced == 0
    assert world.status("far.away@example.com") == "confirmed"
    # Within the window, the third message that came back soft is the limit.
    world.deliver(soft(4, same_message_as=3))
    world.deliver(soft(5, same_message_as=1))
    assert world.read_returns(at=SENT_AT + timedelta(days=2)).bounced == 1
    assert world.status("far.away@example.com") == "bounced"


def test_a_return_about_mail_sent_before_the_person_confirmed_again_changes_nothing(
        bounce_world: BounceWorld) -> None:
    world = sent_world(bounce_world)
    world.deliver(world.report("postfix_hard.eml", "reader1@example.org"))
    world.read_returns()
    with world.ledger() as ledger:
        ledger.add_subscriber(subscriber_row("reader1@example.org"), resubscribe=True,
                              now=LATER + timedelta(hours=1))
    # Another server's report about the same old message arrives late.
    world.deliver(world.report("gmail_failure.eml", "reader1@example.org"))
    report = world.read_returns(at=LATER + timedelta(hours=2))
    assert (report.hard, report.bounced) == (1, 0)
    assert world.status("reader1@example.org") == "confirmed"
    assert [row.effect for row in world.returns()] == ["bounced", "none"]


# --- matching ----------------------------------------------------------------------------------


def test_without_a_tag_the_original_message_id_names_the_delivery(
        bounce_world: BounceWorld) -> None:
    bounce_world.email = {}
    world = sent_world(bounce_world)
    # The relay rewrote the recipient (a forward), so the address alone would find nobody.
    data = world.report("exim_dsn.eml", "reader4@example.org", return_path="publisher@example.org")
    world.deliver(data.replace(b"reader4@example.org", b"r4@forward.example.net"))
    assert world.read_returns().bounced == 1
    assert world.status("reader4@example.org") == "bounced"
    assert world.returns()[0].matched_by == "message-id"


def test_a_forged_tag_is_not_trusted(bounce_world: BounceWorld) -> None:
    world = sent_world(bounce_world)
    genuine = world.last_message("reader1@example.org").mail_from
    other = world.last_message("reader2@example.org").mail_from
    # reader2's delivery number with reader1's signature: a tag nobody signed.
    forged = other.split("-")[0] + "-" + genuine.split("-")[1]
    data = sample_bytes("postfix_hard.eml", recipient="stranger@example.net",
                        return_path=forged, message_id="<unknown@example.net>")
    world.deliver(data)
    report = world.read_returns()
    assert (report.hard, report.unmatched, report.bounced) == (1, 1, 0)
    assert {world.status(r) for r in READERS} == {"confirmed"}
    [row] = world.returns()
    assert (row.matched_by, row.subscriber_id, row.delivery_id) == (None, None, None)


def test_the_recipient_address_is_the_last_resort(bounce_world: BounceWorld) -> None:
    world = sent_world(bounce_world)
    data = world.report("qmail.eml", "reader5@example.org", return_path="bounces@example.org",
                        message_id="<lost@example.net>")
    world.deliver(data)
    assert world.read_returns().bounced == 1
    [row] = world.returns()
    assert (row.matched_by, row.delivery_id, row.slug) == ("address", None, None)


# --- the Maildir source ---------------------------------------------------------------------------


def test_read_messages_move_to_the_processed_folder_and_others_stay_read(
        bounce_world: BounceWorld) -> None:
    world = sent_world(bounce_world)
    world.deliver(world.report("postfix_hard.eml", "reader1@example.org"))
    world.deliver(world.report("autoreply_gmail.eml", "reader2@example.org"))
    world.deliver(world.report("human_reply.eml", "reader3@example.org"))
    report = world.read_returns()
    assert (report.read, report.hard, report.auto_replies, report.other) == (3, 1, 1, 1)
    assert list(mailbox.Maildir(world.maildir)) == []
    assert len(list(mailbox.Maildir(world.maildir).get_folder("processed"))) == 3
    assert world.read_returns().read == 0


def test_a_run_that_dies_mid_way_records_each_return_once(bounce_world: BounceWorld) -> None:
    world = sent_world(bounce_world)
    for reader in READERS[:3]:
        world.deliver(world.report("gmail_failure.eml", reader))
    tally = world.read_until_killed(lambda handle: read_maildir(world.maildir, handle),
                                    "maildir")
    assert tally.hard == 2
    assert len(list(mailbox.Maildir(world.maildir))) == 2  # the second was never moved
    again = world.read_returns()
    assert (again.read, again.repeated, again.hard, again.bounced) == (2, 1, 1, 1)
    assert sorted(world.status(r) for r in READERS) == ["bounced"] * 3 + ["confirmed"] * 3
    assert len(world.returns()) == 3


def test_a_message_that_breaks_the_reader_is_noted_and_set_aside(
        bounce_world: BounceWorld) -> None:
    world = sent_world(bounce_world)
    world.deliver(b"Subject: no sender at all\n\n\x00\xff")  # flufl.bounce needs a From
    world.deliver(world.report("postfix_hard.eml", "reader1@example.org"))
    report = world.read_returns()
    assert (report.read, report.hard, len(report.problems)) == (2, 1, 1)
    assert "could not be read" in report.problems[0]
    assert list(mailbox.Maildir(world.maildir)) == []


# --- commands -----------------------------------------------------------------------------------


def test_cli_bounces_prints_the_counts(bounce_world: BounceWorld) -> None:
    world = sent_world(bounce_world)
    world.deliver(world.report("postfix_hard.eml", "reader1@example.org"))
    world.deliver(world.report("arf_yahoo.eml", "reader2@example.org"))
    world.deliver(world.report("autoreply_exchange.eml", "reader3@example.org"))
    result = CliRunner().invoke(cli, ["--config", str(world.config_file()), "bounces"])
    assert result.exit_code == 0, result.output
    assert result.output.strip() == (
        "read 3: hard 1, soft 0, complaints 1, auto-replies 1, unmatched 0, other 0; "
        "subscribers marked bounced 1, unsubscribed by complaint 1")


def test_cli_bounces_without_a_mailbox_is_a_configuration_error(
        bounce_world: BounceWorld, tmp_path: Path) -> None:
    path = tmp_path / "empty.toml"
    path.write_text('[state]\ndatabase_url = "sqlite:///ledger.db"\n', encoding="utf-8")
    result = CliRunner().invoke(cli, ["--config", str(path), "bounces"])
    assert result.exit_code == EXIT_CONFIG
    assert "bounces: no mailbox to read" in result.output


def test_cli_bounces_exits_1_when_a_mailbox_cannot_be_read(
        bounce_world: BounceWorld, monkeypatch: pytest.MonkeyPatch) -> None:
    bounce_world.bounces = {"imap": {"host": "127.0.0.1", "port": 1, "security": "none",
                                     "username": "nobody", "timeout": 2.0}}
    world = sent_world(bounce_world)
    world.deliver(world.report("postfix_hard.eml", "reader1@example.org"))
    monkeypatch.setenv("PUBLISHER_IMAP_PASSWORD", "x")
    result = CliRunner().invoke(
        cli, ["--config", str(world.config_file()), "bounces"])
    assert result.exit_code == EXIT_PROBLEMS
    assert "error: imap: IMAP nobody@127.0.0.1:1: cannot connect" in result.stderr
    # The Maildir was still read.
    assert result.stdout.startswith("read 1: hard 1")


def test_status_shows_rates_per_edition_and_warns_over_the_limits(
        bounce_world: BounceWorld) -> None:
    world = sent_world(bounce_world)
    world.deliver(world.report("postfix_hard.eml", "reader1@example.org"))
    world.deliver(world.report("arf_yahoo.eml", "reader2@example.org"))
    world.read_returns()
    status = return_status(world.config())
    [edition] = status.editions
    assert (edition.on, edition.slug, edition.year, edition.sent, edition.hard,
            edition.complaints) == (DAY, "moon", 2024, 6, 1, 1)
    result = CliRunner().invoke(cli, ["--config", str(world.config_file()), "status"])
    assert result.exit_code == 0, result.output
    assert "  2024-11-09  moon 2024: sent 6, hard 1 (16.67%), soft 0, complaints 1 (16.67%)" \
        in result.output.splitlines()
    assert ("warning: moon 2024: complaint rate 16.67% is over 0.1% (large mailbox providers "
            "refuse bulk mail from 0.3%)") in result.output
    assert "warning: moon 2024: hard bounce rate 16.67% is over 2%" in result.output


def test_rates_under_the_limits_warn_nothing(bounce_world: BounceWorld) -> None:
    many = [f"r{n}@example.org" for n in range(60)]
    world = sent_world(bounce_world, *many)
    world.deliver(world.report("postfix_hard.eml", many[0]))
    world.read_returns()
    status = return_status(world.config())
    assert status.editions[0].hard_rate == pytest.approx(1 / 60)
    assert not [line for line in return_lines(status) if line.startswith("warning")]
    assert return_status(world.config(), date(2024, 11, 10)).editions == []


# --- the daemon ---------------------------------------------------------------------------------


def test_the_tick_reads_the_mailbox_every_poll_minutes(bounce_world: BounceWorld) -> None:
    bounce_world.bounces = {"poll_minutes": 5}
    world = sent_world(bounce_world)
    config = world.config()
    clock_now = [LATER]
    with Ledger.open(world.database_url) as ledger:
        ticker = Ticker(config, ledger, clock=lambda: clock_now[0])
        world.deliver(world.report("postfix_hard.eml", "reader1@example.org"))
        ticker.tick(LATER)
        assert world.status("reader1@example.org") == "bounced"
        assert ledger.get_state(POLL_STATE_KEY) == LATER.isoformat()
        world.deliver(world.report("arf_yahoo.eml", "reader2@example.org"))
        clock_now[0] = LATER + timedelta(minutes=4)
        ticker.tick(clock_now[0])
        assert world.status("reader2@example.org") == "confirmed"  # not yet due
        clock_now[0] = LATER + timedelta(minutes=5)
        ticker.tick(clock_now[0])
        assert world.status("reader2@example.org") == "unsubscribed"


def test_a_mailbox_that_cannot_be_read_is_a_tick_problem_not_a_failure(
        bounce_world: BounceWorld, monkeypatch: pytest.MonkeyPatch) -> None:
    bounce_world.bounces = {"imap": {"host": "127.0.0.1", "port": 1, "security": "none",
                                     "username": "nobody", "timeout": 2.0}}
    monkeypatch.delenv("PUBLISHER_IMAP_PASSWORD", raising=False)
    world = sent_world(bounce_world)
    with Ledger.open(world.database_url) as ledger:
        report = Ticker(world.config(), ledger, clock=lambda: LATER).tick(LATER)
    assert report.problems == ["imap: PUBLISHER_IMAP_PASSWORD is not set"]


# --- configuration ----------------------------------------------------------------------------


def test_the_example_configuration_lists_every_bounces_key(
        monkeypatch: pytest.MonkeyPatch) -> None:
    example = Path(__file__).resolve().parents[1] / "publisher.example.toml"
    document = tomllib.loads(example.read_text(encoding="utf-8"))
    read: set[tuple[str, str]] = set()
    original_get = config_module._Table.get

    def recording_get(self: config_module._Table, key: str, kind: type, default: object
                      ) -> object:
        read.add((self.name, key))
        return original_get(self, key, kind, default)

    monkeypatch.setattr(config_module._Table, "get", recording_get)
    loaded = config_module.load(example)
    assert loaded.email.bounce_address == "bounces@example.org"
    assert loaded.bounces.imap is not None and set(loaded.bounces.webhooks) == {
        "ses", "postmark", "sendgrid", "mailgun"}
    defaults = config_module.from_mapping({})
    assert (loaded.bounces.poll_minutes, loaded.bounces.soft_limit, loaded.bounces.soft_days) \
        == (defaults.bounces.poll_minutes, defaults.bounces.soft_limit,
            defaults.bounces.soft_days) == (5, 3, 30)
    for table, key in sorted(read):
        if table == "bounces" or table.startswith("bounces.") or key == "bounce_address":
            section: object = document
            for part in table.split("."):
                section = section[part]  # type: ignore[index]
            assert key in section, f"{table}.{key} is missing"  # type: ignore[operator]


@pytest.mark.parametrize(("toml", "field", "words"), [
    ('[email]\nbounce_address = "Bounces <b@example.org>"', "email.bounce_address", "bare"),
    ('[bounces.imap]\nhost = "imap.example.org"', "bounces.imap.username", "required"),
    ("[bounces.ses]\n", "bounces.ses.topic_arn", "required"),
    ('[bounces.postmark]\npassword = "p"', "bounces.postmark.username", "required"),
    ('[bounces]\npoll_minutes = 0', "bounces.poll_minutes", "at least 1"),
    ('[bounces]\nmailbox = "var/bounces"', "bounces.mailbox", "unknown key"),
    ('[bounces.mailgun]\nsecret = "s"', "bounces.mailgun.secret", "unknown key"),
])
def test_bad_bounce_settings_name_the_key(tmp_path: Path, toml: str, field: str,
                                          words: str) -> None:
    path = tmp_path / "publisher.toml"
    path.write_text(toml + "\n", encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        config_module.load(path)
    assert caught.value.field == field
    assert words in caught.value.message


def test_webhook_secrets_may_come_from_the_environment(
        monkeypatch: pytest.MonkeyPatch) -> None:
    loaded = config_module.from_mapping({"bounces": {"mailgun": {}, "postmark": {
        "username": "pm", "password": "from-file"}}})
    assert loaded.bounces.webhooks["mailgun"].get("signing_key") is None
    assert loaded.bounces.webhooks["postmark"].get("password") == "from-file"
    monkeypatch.setenv("PUBLISHER_MAILGUN_SIGNING_KEY", "from-env")
    monkeypatch.setenv("PUBLISHER_POSTMARK_PASSWORD", "env-password")
    assert loaded.bounces.webhooks["mailgun"].get("signing_key") == "from-env"
    assert loaded.bounces.webhooks["postmark"].get("password") == "env-password"
    assert loaded.bounces.webhooks["postmark"].get("username") == "pm"


def test_the_poll_time_survives_a_damaged_state_value(bounce_world: BounceWorld) -> None:
    world = bounce_world
    with world.ledger() as ledger:
        ledger.set_state(POLL_STATE_KEY, "yesterday-ish")
        ticker = Ticker(world.config(), ledger, clock=lambda: LATER)
        assert ticker.returns.due(LATER)
        ledger.set_state(POLL_STATE_KEY, (LATER - timedelta(minutes=1)).isoformat())
        assert not ticker.returns.due(LATER)
        assert ticker.returns.due(datetime.fromisoformat("2030-01-01T00:00:00+00:00"))


def test_a_database_of_the_previous_version_gains_the_returns_table(database_url: str) -> None:
    engine = create_engine(database_url)
    with engine.begin() as conn:
        migrate_to_before(conn, returns.create)
    # `publisher status` on a database it may not migrate: no returns table, no returns.
    assert Ledger(engine, read_only=True).return_counts() == []
    engine.dispose()
    with Ledger.open(database_url) as ledger:
        assert ledger.schema_version() == len(MIGRATIONS)
        assert ledger.return_counts() == []
