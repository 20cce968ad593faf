"""Subscribers: validation, operator and web-service functions, CSV import/export, the CLI."""

from __future__ import annotations

import csv
import io
import random
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner
from email_validator import EmailNotValidError, validate_email
from sqlalchemy import MetaData, Table, create_engine, insert

from publisher.cli import EXIT_PROBLEMS, cli
from publisher.errors import SubscriberError
from publisher.ledger import ALL_ZONES, MIGRATIONS, Ledger, schema_migrations
from publisher.subscriptions import csvfiles
from publisher.subscriptions.csvfiles import (
    EXPORT_COLUMNS,
    as_cell,
    export_csv,
    from_cell,
    import_csv,
)
from publisher.subscriptions.fields import clean_name, normalise_address, subscriber_row

T0 = datetime(2024, 11, 9, 8, 0, tzinfo=UTC)


# --- validation -------------------------------------------------------------------------------


@pytest.mark.parametrize(("given", "stored"), [
    ("Reader@Example.ORG", "reader@example.org"),
    ("  reader@example.org ", "reader@example.org"),
    ("jane@bücher.de", "jane@xn--bcher-kva.de"),  # one spelling per domain
])
def test_addresses_are_normalised(given: str, stored: str) -> None:
    assert normalise_address(given) == stored


@pytest.mark.parametrize("bad", ["", "no-at-sign", "two@@example.org", "a@b", "x@-example.org",
                                 "jürgen@example.org"])  # our To header cannot carry it
def test_bad_addresses_name_the_field(bad: str) -> None:
    with pytest.raises(SubscriberError) as caught:
        normalise_address(bad)
    assert caught.value.field == "email"


def _validator_verdict(value: str) -> str:
    """Return what email-validator alone makes of an address: the stored form, or its error."""
    try:
        info = validate_email(value.strip(), check_deliverability=False, allow_smtputf8=False)
    except EmailNotValidError as exc:
        return f"error: email: {exc}"
    return (info.ascii_email or info.normalized).lower()


def _our_verdict(value: str) -> str:
    try:
        return normalise_address(value)
    except SubscriberError as exc:
        return f"error: {exc}"


def _random_addresses(count: int) -> list[str]:
    rng = random.Random(12)
    # Repeated characters are drawn more often: most draws look like addresses.
    local_chars = "a" * 200 + "Z" * 20 + "9" * 20 + "." * 8 + "_-+!#'`~%\"\\ @é"
    label_chars = "a" * 200 + "Z" * 20 + "9" * 20 + "-" * 10 + ".é_"
    tlds = ["org", "Com", "c1", "123", "xn--p1ai", "localhost", "test", "i", "example", ""]
    found = []
    for _ in range(count):
        local = "".join(rng.choices(local_chars, k=rng.choice([1, 3, 12, 64, 65, 180, 240])))
        labels = ["".join(rng.choices(label_chars, k=rng.choice([1, 3, 10, 63, 64])))
                  for _ in range(rng.choice([0, 1, 1, 2, 4]))]
        found.append(f"{local}@{'.'.join([*labels, rng.choice(tlds)])}")
    return found


def test_address_check_agrees_with_email_validator() -> None:
    # Plain addresses skip most of email-validator's work; every verdict must stay its own.
    long_local = "a" * 64
    samples = [
        "Ada@Example.ORG", "x.y+tag@mail.example.co.uk", "a..b@example.org", ".a@example.org",
        "a.@example.org", "a@example..org", "a@.example.org", "a@example.org.", "a@-x.org",
        "a@x-.org", "a@xn--bcher-kva.example", "a@XN--BCHER-KVA.example", "a@ab--cd.example",
        "a@localhost", "a@example.test", "a@example.local", "a@b.c1", "a@b.123", "a@1.2.3.4",
        "a@[127.0.0.1]", "\"quoted\"@example.org", "Ada <ada@example.org>", "info@Example.org",
        "a b@example.org", "a@ex ample.org", "a@exämple.org", "ä@example.org",
        f"{long_local}@example.org", f"{long_local}x@example.org",
        f"{'b' * 240}@example.org", f"{'b' * 241}@example.org", f"{'c' * 250}@ex.org",
        f"a@{'d' * 63}.org", f"a@{'d' * 64}.org", f"a@{('e' * 62 + '.') * 4}org",
        # Short in punycode, too long once the domain is written in Unicode.
        f"{'f' * 200}@xn--fiqaaaaaaaaaaaaaaaaaaa.org",
        "POSTMASTER@EXAMPLE.ORG", "a@example.org\n", "\ta@example.org",
    ]
    for address in samples + _random_addresses(3000):
        assert _our_verdict(address) == _validator_verdict(address), address


def test_names_lose_control_characters_and_line_breaks() -> None:
    assert clean_name("  Ada\r\nBcc: x@example.org\x00 ") == "Ada Bcc: x@example.org"
    assert clean_name("   ") is None
    with pytest.raises(SubscriberError, match="longer than 200"):
        clean_name("x" * 201)


def test_unknown_time_zone_is_refused() -> None:
    with pytest.raises(SubscriberError) as caught:
        subscriber_row("a@example.org", timezone="Mars/Olympus_Mons")
    assert caught.value.field == "timezone"
    assert subscriber_row("a@example.org", timezone=" ").timezone is None


# --- operator and web-service functions -------------------------------------------------------


def test_operator_add_confirms_and_updates(ledger: Ledger) -> None:
    subscriber, outcome = ledger.add_subscriber(subscriber_row("Ada@Example.org", "Ada"), now=T0)
    assert outcome == "added"
    assert (subscriber.email, subscriber.status, subscriber.confirmed_at) == (
        "ada@example.org", "confirmed", T0)
    assert ledger.add_subscriber(subscriber_row("ada@example.org"))[1] == "unchanged"
    later = T0 + timedelta(days=1)
    updated, outcome = ledger.add_subscriber(
        subscriber_row("ada@example.org", "Ada L.", "Europe/London"), now=later)
    assert outcome == "updated"
    assert (updated.name, updated.timezone, updated.updated_at) == (
        "Ada L.", "Europe/London", later)
    assert updated.created_at == T0


def test_operator_add_does_not_silently_resubscribe(ledger: Ledger) -> None:
    subscriber, _ = ledger.add_subscriber(subscriber_row("ada@example.org"), now=T0)
    ledger.unsubscribe_link(email=subscriber.email, now=T0)
    with pytest.raises(SubscriberError, match=r"unsubscribed .*--resubscribe"):
        ledger.add_subscriber(subscriber_row("ada@example.org"))
    again, outcome = ledger.add_subscriber(subscriber_row("ada@example.org"), resubscribe=True)
    assert (outcome, again.status, again.unsubscribed_at) == ("resubscribed", "confirmed", None)


def test_operator_add_confirms_a_pending_sign_up(ledger: Ledger) -> None:
    ledger.add_pending(subscriber_row("ada@example.org"), now=T0)
    subscriber, outcome = ledger.add_subscriber(subscriber_row("ada@example.org"))
    assert (outcome, subscriber.status) == ("confirmed", "confirmed")


def test_double_opt_in_life_cycle(ledger: Ledger) -> None:
    pending = ledger.add_pending(subscriber_row("ada@example.org", "Ada"), now=T0)
    assert pending is not None and (pending.email, pending.name) == ("ada@example.org", "Ada")
    stored = ledger.get_subscriber(pending.subscriber_id)
    assert stored is not None and (stored.status, stored.confirmed_at) == ("pending", None)
    assert ledger.find_sign_up(pending.key) == stored
    assert ledger.confirm_sign_up("no-such-key") is None
    confirmed = ledger.confirm_sign_up(pending.key, now=T0 + timedelta(hours=1))
    assert confirmed is not None and confirmed.status == "confirmed"
    # Confirming twice, or signing up again once confirmed, changes nothing.
    assert ledger.confirm_sign_up(pending.key) == confirmed
    assert ledger.add_pending(subscriber_row("ada@example.org"), now=T0) is None
    assert ledger.get_subscriber(pending.subscriber_id) == confirmed
    assert confirmed.unsubscribe_key is not None
    gone, changed = ledger.unsubscribe_link(key=confirmed.unsubscribe_key,
                                            now=T0 + timedelta(days=1))
    assert changed and gone is not None and gone.status == "unsubscribed"
    assert ledger.unsubscribe_link(key=confirmed.unsubscribe_key) == (gone, False)
    assert ledger.unsubscribe_link(key="no-such-key") == (None, False)
    # A confirm link from before cannot bring the address back: only a new sign-up can.
    assert ledger.confirm_sign_up(pending.key) is None
    again = ledger.add_pending(subscriber_row("ada@example.org", "Ada B.", "Asia/Tokyo"),
                               now=T0 + timedelta(days=2))
    assert again is not None and again.key != pending.key
    assert ledger.get_subscriber(pending.subscriber_id) == gone  # still unsubscribed
    back = ledger.confirm_sign_up(again.key, now=T0 + timedelta(days=3))
    assert back is not None and (back.status, back.name, back.timezone) == (
        "confirmed", "Ada B.", "Asia/Tokyo")
    assert (back.id, back.unsubscribe_key) == (gone.id, gone.unsubscribe_key)
    assert back.unsubscribed_at is None and back.confirmed_at == T0 + timedelta(days=3)


def test_a_sign_up_waiting_keeps_its_key_and_an_unsubscribe_drops_it(ledger: Ledger) -> None:
    first = ledger.add_pending(subscriber_row("ada@example.org"), now=T0)
    second = ledger.add_pending(subscriber_row("ada@example.org", "Ada"), now=T0)
    assert first is not None and second is not None and first.key == second.key
    subscriber, _ = ledger.add_subscriber(subscriber_row("bo@example.org"), now=T0)
    ledger.unsubscribe_link(email=subscriber.email, now=T0)
    waiting = ledger.add_pending(subscriber_row("bo@example.org"), now=T0)
    assert waiting is not None
    ledger.unsubscribe_link(email="bo@example.org", now=T0)  # already so: nothing changes
    assert ledger.find_sign_up(waiting.key) is not None
    ledger.add_subscriber(subscriber_row("bo@example.org"), resubscribe=True, now=T0)
    ledger.unsubscribe_link(email="bo@example.org", now=T0)
    assert ledger.find_sign_up(waiting.key) is None
    assert ledger.confirm_sign_up(waiting.key) is None


@pytest.mark.parametrize("leave", ["unsubscribed", "bounced"])
def test_purging_sign_ups_never_lifts_a_suppression(ledger: Ledger, leave: str) -> None:
    subscriber, _ = ledger.add_subscriber(subscriber_row("gone@example.org", "Gone"), now=T0)
    if leave == "bounced":
        ledger.bounce(subscriber.id, "5.1.1 no such user", now=T0)
    else:
        ledger.unsubscribe_link(email=subscriber.email, now=T0)
    before = ledger.find_subscriber("gone@example.org")
    ledger.add_pending(subscriber_row("gone@example.org", "Someone"), now=T0)
    assert ledger.find_subscriber("gone@example.org") == before
    assert ledger.purge_pending(timedelta(days=7), now=T0 + timedelta(days=8)) == 1
    assert ledger.find_subscriber("gone@example.org") == before
    assert ledger.enqueue("moon", 2024, T0.date(), due_at=T0, give_up_at=T0 + timedelta(days=1),
                          zone=ALL_ZONES, site_zone="UTC", now=T0) == 0


def test_unsubscribe_skips_mail_not_yet_sent(ledger: Ledger) -> None:
    subscriber, _ = ledger.add_subscriber(subscriber_row("ada@example.org"), now=T0)
    ledger.enqueue("moon", 2024, T0.date(), due_at=T0, give_up_at=T0 + timedelta(days=1),
                   zone=ALL_ZONES, site_zone="UTC", now=T0)
    ledger.unsubscribe_link(email=subscriber.email, now=T0)
    (count,) = ledger.delivery_counts()
    assert (count.status, count.count) == ("skipped", 1)


def test_purge_removes_only_stale_pending_sign_ups(ledger: Ledger) -> None:
    ledger.add_pending(subscriber_row("old@example.org"), now=T0)
    ledger.add_pending(subscriber_row("new@example.org"), now=T0 + timedelta(days=6))
    ledger.add_subscriber(subscriber_row("kept@example.org"), now=T0)
    assert ledger.purge_pending(timedelta(days=7), now=T0 + timedelta(days=8)) == 1
    assert [s.email for s in ledger.iter_subscribers()] == ["kept@example.org",
                                                            "new@example.org"]


def test_subscribers_stream_by_zone_group(ledger: Ledger) -> None:
    for email, zone in (("a@example.org", None), ("b@example.org", "Europe/Paris"),
                        ("c@example.org", "Asia/Tokyo")):
        ledger.add_subscriber(subscriber_row(email, timezone=zone), now=T0)
    paris = [s.email for s in ledger.iter_subscribers("confirmed", "Europe/Paris",
                                                      "Europe/Paris")]
    assert paris == ["a@example.org", "b@example.org"]  # no zone: the site's
    assert [s.email for s in ledger.iter_subscribers(zone="Asia/Tokyo")] == ["c@example.org"]
    assert len(list(ledger.iter_subscribers(zone=ALL_ZONES))) == 3


def test_bounce_reported_later_stops_mail(ledger: Ledger) -> None:
    subscriber, _ = ledger.add_subscriber(subscriber_row("ada@example.org"), now=T0)
    ledger.enqueue("moon", 2024, T0.date(), due_at=T0, give_up_at=T0 + timedelta(days=1),
                   zone=ALL_ZONES, site_zone="UTC", now=T0)
    assert ledger.bounce(subscriber.id, "DSN 5.1.1", now=T0)
    assert not ledger.bounce(subscriber.id, "DSN 5.1.1")  # already bounced
    found = ledger.get_subscriber(subscriber.id)
    assert found is not None and found.status == "bounced"
    (count,) = ledger.delivery_counts()
    assert (count.status, count.count) == ("skipped", 1)


def test_upgrade_gives_every_subscriber_a_key_and_suppresses_again(database_url: str) -> None:
    # A database as version 2 left it, with rows the sign-ups of that version had turned back
    # into "pending": they still carry the time they were confirmed or unsubscribed.
    engine = create_engine(database_url)
    naive = T0.replace(tzinfo=None)
    with engine.begin() as conn:
        schema_migrations.create(conn)
        for version, step in enumerate(MIGRATIONS[:2], start=1):
            step(conn)
            conn.execute(schema_migrations.insert().values(version=version, applied_at=T0))
        old = Table("subscribers", MetaData(), autoload_with=conn)
        assert "unsubscribe_key" not in old.c
        rows = [("kept", "confirmed", naive, None), ("left", "unsubscribed", naive, naive),
                ("flipped-left", "pending", naive, naive), ("flipped-bounced", "pending", naive,
                                                            None),
                ("imported-left", "pending", None, naive), ("new", "pending", None, None)]
        rows += [(f"reader{n}", "confirmed", naive, None) for n in range(2500)]
        conn.execute(insert(old), [
            {"email": f"{who}@example.org", "status": status, "created_at": naive,
             "updated_at": naive, "confirmed_at": confirmed, "unsubscribed_at": left}
            for who, status, confirmed, left in rows])
    engine.dispose()

    with Ledger.open(database_url) as ledger:
        assert ledger.schema_version() == len(MIGRATIONS) >= 3
        found = list(ledger.iter_subscribers())
        keys = {s.unsubscribe_key for s in found}
        assert len(found) == len(keys) == len(rows) and None not in keys
        assert all(len(str(key)) == 22 for key in keys)
        statuses = ledger.statuses_of(f"{who}@example.org" for who, *_ in rows[:6])
        assert statuses == {
            "kept@example.org": "confirmed", "left@example.org": "unsubscribed",
            "flipped-left@example.org": "unsubscribed",
            "flipped-bounced@example.org": "bounced",
            "imported-left@example.org": "unsubscribed", "new@example.org": "pending"}
        added, _ = ledger.add_subscriber(subscriber_row("later@example.org"))
        assert added.unsubscribe_key is not None and added.unsubscribe_key not in keys


def test_remove_keeps_an_address_that_left_suppressed(ledger: Ledger) -> None:
    subscriber, _ = ledger.add_subscriber(subscriber_row("ada@example.org", "Ada", "UTC"),
                                          now=T0)
    ledger.enqueue("moon", 2024, T0.date(), due_at=T0, give_up_at=T0 + timedelta(days=1),
                   zone=ALL_ZONES, site_zone="UTC", now=T0)
    assert ledger.remove("ADA@example.org", now=T0) == "suppressed"
    kept = ledger.find_subscriber("ada@example.org")
    assert kept is not None
    assert (kept.status, kept.name, kept.timezone, kept.unsubscribed_at) == (
        "unsubscribed", None, None, T0)
    assert kept.unsubscribe_key == subscriber.unsubscribe_key  # its links still work
    assert ledger.delivery_counts() == []
    assert ledger.remove("ada@example.org") == "suppressed"  # idempotent
    ledger.bounce(ledger.add_subscriber(subscriber_row("bo@example.org"))[0].id, "5.1.1")
    assert ledger.remove("bo@example.org") == "suppressed"
    assert ledger.statuses_of(["ada@example.org", "bo@example.org"]) == {
        "ada@example.org": "unsubscribed", "bo@example.org": "bounced"}


def test_remove_deletes_a_sign_up_never_confirmed_and_forget_deletes_any(ledger: Ledger
                                                                        ) -> None:
    ledger.add_pending(subscriber_row("new@example.org"), now=T0)
    ledger.add_subscriber(subscriber_row("ada@example.org"), now=T0)
    assert ledger.remove("new@example.org") == "deleted"
    assert ledger.remove("ada@example.org", forget=True) == "deleted"
    assert ledger.remove("ada@example.org") is None
    assert list(ledger.iter_subscribers()) == []


# --- CSV --------------------------------------------------------------------------------------


def write_csv(tmp_path: Path, text: str, name: str = "subscribers.csv") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def export_text(ledger: Ledger) -> str:
    out = io.StringIO()
    export_csv(ledger, out)
    return out.getvalue()


BAD_ROWS = (
    "email,name,timezone\n"
    "ada@example.org,Ada,Europe/London\n"        # line 2: good
    "not-an-address,Bob,\n"                      # line 3: bad address
    "\n"                                         # line 4: blank, ignored
    'carl@example.org,"Carl\n'                   # lines 5-6: a quoted name over two lines
    'the Second",UTC\n'
    "dora@example.org,Dora,Moon/Base\n"          # line 7: bad zone
    "eve@example.org,Eve,UTC,extra\n"            # line 8: too many columns
    "FRED@Example.org,,\n"                       # line 9: good, normalised
)


def test_import_reports_every_bad_row_by_line_and_keeps_the_good(
        ledger: Ledger, tmp_path: Path) -> None:
    report = import_csv(ledger, write_csv(tmp_path, BAD_ROWS), now=T0)
    assert (report.added, report.unchanged) == (3, 0)
    problems = [(e.line, e.field) for e in report.errors]
    assert problems == [(3, "email"), (7, "timezone"), (8, None)]
    assert all(e.path is not None and e.path.name == "subscribers.csv" for e in report.errors)
    assert "subscribers.csv:3: email:" in str(report.errors[0])
    stored = {s.email: s for s in ledger.iter_subscribers()}
    assert sorted(stored) == ["ada@example.org", "carl@example.org", "fred@example.org"]
    assert stored["carl@example.org"].name == "Carl the Second"  # line break folded away
    assert {s.status for s in stored.values()} == {"confirmed"}


def test_reimport_changes_nothing(ledger: Ledger, tmp_path: Path) -> None:
    path = write_csv(tmp_path, BAD_ROWS)
    import_csv(ledger, path, now=T0)
    before = export_text(ledger)
    report = import_csv(ledger, path, now=T0 + timedelta(days=1))
    assert (report.added, report.unchanged, len(report.errors)) == (0, 3, 3)
    assert export_text(ledger) == before


def test_import_never_overwrites_a_known_subscriber(ledger: Ledger, tmp_path: Path) -> None:
    ledger.add_subscriber(subscriber_row("ada@example.org", "Ada"), now=T0)
    report = import_csv(ledger, write_csv(tmp_path, "ada@example.org,Someone,UTC\n"))
    assert (report.added, report.unchanged) == (0, 1)
    found = ledger.find_subscriber("ada@example.org")
    assert found is not None and (found.status, found.name) == ("confirmed", "Ada")


def test_import_reports_suppressed_addresses_and_leaves_them_out(
        ledger: Ledger, tmp_path: Path) -> None:
    subscriber, _ = ledger.add_subscriber(subscriber_row("ada@example.org", "Ada"), now=T0)
    ledger.unsubscribe_link(email=subscriber.email, now=T0)
    bounced, _ = ledger.add_subscriber(subscriber_row("bo@example.org"), now=T0)
    ledger.bounce(bounced.id, "5.1.1", now=T0)
    before = export_text(ledger)
    path = write_csv(tmp_path, "ada@example.org,Someone,UTC\nbo@example.org\nnew@example.org\n")
    report = import_csv(ledger, path)
    assert (report.added, report.unchanged, report.resubscribed) == (1, 0, 0)
    assert report.suppressed == [("ada@example.org", "unsubscribed"),
                                 ("bo@example.org", "bounced")]
    statuses = {s.email: s.status for s in ledger.iter_subscribers()}
    assert statuses == {"ada@example.org": "unsubscribed", "bo@example.org": "bounced",
                        "new@example.org": "confirmed"}
    ledger.remove("new@example.org", forget=True)
    assert export_text(ledger) == before
    # The operator's explicit word subscribes them again.
    report = import_csv(ledger, path, include_suppressed=True)
    assert (report.added, report.resubscribed, report.suppressed) == (1, 2, [])
    found = ledger.find_subscriber("ada@example.org")
    assert found is not None and (found.status, found.name) == ("confirmed", "Someone")


def test_import_in_chunks_keeps_the_first_of_each_address_and_its_dates(
        ledger: Ledger, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(csvfiles, "IMPORT_CHUNK", 3)  # rows 1-3, 4-6, 7
    rows = ("email,name,status\n"
            "ada@example.org,Ada,\nbob@example.org,Bob,unsubscribed\n"
            "ADA@example.org,Ada Again,\ncy@example.org,Cy,bounced\n"
            "dee@example.org,Dee,confirmed\nbob@example.org,Bob Again,\n"
            "dee@example.org,Dee Again,\n")
    report = import_csv(ledger, write_csv(tmp_path, rows), now=T0)
    assert (report.added, report.unchanged) == (4, 2)
    assert report.suppressed == [("bob@example.org", "unsubscribed")]
    stored = {s.email: s for s in ledger.iter_subscribers()}
    assert {email: (s.name, s.status, s.created_at, s.updated_at, s.confirmed_at,
                    s.unsubscribed_at) for email, s in stored.items()} == {
        "ada@example.org": ("Ada", "confirmed", T0, T0, T0, None),
        "bob@example.org": ("Bob", "unsubscribed", T0, T0, None, T0),
        "cy@example.org": ("Cy", "bounced", T0, T0, None, T0),
        "dee@example.org": ("Dee", "confirmed", T0, T0, T0, None),
    }
    # Each has a key of its own for its unsubscribe links.
    keys = {s.unsubscribe_key for s in stored.values()}
    assert None not in keys and len(keys) == 4


def test_headerless_csv_reads_columns_in_order(ledger: Ledger, tmp_path: Path) -> None:
    report = import_csv(ledger, write_csv(tmp_path, "ada@example.org,Ada,UTC\nbob@example.org\n"))
    assert report.added == 2 and report.errors == []
    ada = ledger.find_subscriber("ada@example.org")
    assert ada is not None and (ada.name, ada.timezone) == ("Ada", "UTC")


def test_header_with_byte_order_mark_and_reordered_columns(ledger: Ledger, tmp_path: Path
                                                           ) -> None:
    path = tmp_path / "excel.csv"
    path.write_bytes("\ufeffName,Email\nAda,ada@example.org\n".encode())
    assert import_csv(ledger, path).added == 1
    ada = ledger.find_subscriber("ada@example.org")
    assert ada is not None and ada.name == "Ada"


def test_unknown_column_stops_the_import_naming_it(ledger: Ledger, tmp_path: Path) -> None:
    report = import_csv(ledger, write_csv(tmp_path, "email,phone\nada@example.org,123\n"))
    assert report.added == 0
    (error,) = report.errors
    assert (error.line, error.field) == (1, "phone")


def test_non_utf8_file_is_reported_with_the_line(ledger: Ledger, tmp_path: Path) -> None:
    path = tmp_path / "latin1.csv"
    path.write_bytes(b"ada@example.org,Ada\n" * 3 + "zoë@example.org,Zoë\n".encode("latin-1"))
    report = import_csv(ledger, path)
    assert report.errors and report.errors[-1].field == "encoding"
    assert "not UTF-8" in str(report.errors[-1])


def test_export_round_trip_keeps_unsubscribed_addresses_suppressed(
        ledger: Ledger, database_url: str, tmp_path: Path) -> None:
    import_csv(ledger, write_csv(tmp_path, BAD_ROWS), now=T0)
    carl = ledger.find_subscriber("carl@example.org")
    assert carl is not None
    ledger.unsubscribe_link(email=carl.email, now=T0)
    ledger.add_pending(subscriber_row("pending@example.org"), now=T0)
    exported = export_text(ledger)
    rows = list(csv.DictReader(io.StringIO(exported)))
    assert tuple(rows[0]) == EXPORT_COLUMNS
    assert [r["email"] for r in rows] == sorted(r["email"] for r in rows)

    fresh = Ledger.open(f"sqlite:///{tmp_path / 'other.db'}")
    try:
        report = import_csv(fresh, write_csv(tmp_path, exported, "export.csv"))
        assert (report.added, report.skipped_pending, report.errors) == (3, 1, [])
        statuses = {s.email: s.status for s in fresh.iter_subscribers()}
    finally:
        fresh.close()
    assert statuses == {"ada@example.org": "confirmed", "carl@example.org": "unsubscribed",
                        "fred@example.org": "confirmed"}


FORMULAS = ['=HYPERLINK("https://evil.example","click")', "+1+2", "-2+3", "@SUM(A1:A9)",
            "'quoted", "''twice", "=", "plain"]
FORMULA_ADDRESSES = ["=cmd@example.org", "-dash@example.org", "+plus@example.org",
                     "'quote@example.org"]
STARTS_A_FORMULA = ("=", "+", "-", "@", "\t", "\r")


def test_export_neutralises_formulas_and_import_restores_them(
        ledger: Ledger, tmp_path: Path) -> None:
    for n, name in enumerate(FORMULAS):
        ledger.add_subscriber(subscriber_row(f"reader{n}@example.org", name), now=T0)
    for email in FORMULA_ADDRESSES:
        ledger.add_subscriber(subscriber_row(email, "Name"), now=T0)
    exported = export_text(ledger)
    rows = list(csv.reader(io.StringIO(exported)))[1:]
    cells = [cell for row in rows for cell in row[:3]]
    assert [c for c in cells if c.startswith(STARTS_A_FORMULA)] == []
    assert "'" + FORMULAS[0] in cells
    assert {"''quoted", "'''twice", "'-dash@example.org", "''quote@example.org"} <= set(cells)

    fresh = Ledger.open(f"sqlite:///{tmp_path / 'other.db'}")
    try:
        report = import_csv(fresh, write_csv(tmp_path, exported, "export.csv"))
        assert (report.added, report.errors) == (len(FORMULAS) + len(FORMULA_ADDRESSES), [])
        restored = {s.email: s.name for s in fresh.iter_subscribers()}
    finally:
        fresh.close()
    assert restored == {s.email: s.name for s in ledger.iter_subscribers()}
    assert [restored[f"reader{n}@example.org"] for n in range(len(FORMULAS))] == FORMULAS
    assert set(FORMULA_ADDRESSES) <= set(restored)


@pytest.mark.parametrize("value", ["=1+1", "+1", "-1", "@A1", "\tx", "\rx", "'x", "''", "",
                                   "x=1", " =1"])
def test_cells_round_trip(value: str) -> None:
    assert from_cell(as_cell(value)) == value
    assert not as_cell(value).startswith(STARTS_A_FORMULA)


def test_export_streams_in_chunks(ledger: Ledger, tmp_path: Path) -> None:
    rows = "".join(f"reader{n:04d}@example.org,Reader {n}\n" for n in range(1200))
    assert import_csv(ledger, write_csv(tmp_path, rows)).added == 1200
    stream = ledger.iter_subscribers("confirmed")
    first = next(stream)
    assert first.email == "reader0000@example.org"
    assert sum(1 for _ in stream) == 1199


# --- command line -----------------------------------------------------------------------------


@pytest.fixture
def run(tmp_path: Path, database_url: str) -> Callable[..., tuple[int, str, str]]:
    """Return a runner of ``publisher --config … ARGS`` on a config using ``database_url``."""
    config = tmp_path / "publisher.toml"
    config.write_text(f'[state]\ndatabase_url = "{database_url}"\n', encoding="utf-8")

    def invoke(*args: str) -> tuple[int, str, str]:
        result = CliRunner().invoke(cli, ["--config", str(config), *args])
        if result.exception and not isinstance(result.exception, SystemExit):
            raise result.exception
        return result.exit_code, result.stdout, result.stderr

    return invoke


# The choices' columns of `subscribers list` for a subscriber who chose nothing.
DEFAULTS = "\teach\tevery\t-\tall"


def test_cli_add_list_remove(run: Callable[..., tuple[int, str, str]]) -> None:
    assert run("subscribers", "add", "Ada@example.org", "--name", "Ada",
               "--timezone", "Europe/London") == (0, "ada@example.org: added\n", "")
    assert run("subscribers", "add", "bob@example.org")[0] == 0
    code, out, _ = run("subscribers", "list")
    assert out.splitlines() == ["ada@example.org\tconfirmed\tEurope/London\tAda" + DEFAULTS,
                                "bob@example.org\tconfirmed\t-\t" + DEFAULTS]
    code, out, _ = run("subscribers", "remove", "bob@example.org")
    assert (code, out) == (0, "removed bob@example.org; kept as suppressed, so no import or "
                              "unconfirmed sign-up adds it back\n")
    assert run("subscribers", "list", "--status", "unsubscribed")[1] == (
        "bob@example.org\tunsubscribed\t-\t" + DEFAULTS + "\n")
    assert run("subscribers", "remove", "--forget", "bob@example.org") == (
        0, "removed bob@example.org\n", "")
    code, _, err = run("subscribers", "remove", "bob@example.org")
    assert code == EXIT_PROBLEMS and "not a subscriber" in err
    assert run("subscribers", "list", "--status", "bounced")[1] == ""


def test_cli_import_leaves_out_suppressed_addresses_even_after_remove(
        run: Callable[..., tuple[int, str, str]], tmp_path: Path) -> None:
    history = write_csv(tmp_path, "email,name,status\nada@example.org,Ada,unsubscribed\n"
                                  "bo@example.org,Bo,bounced\ncy@example.org,Cy,\n", "old.csv")
    assert run("subscribers", "import", str(history))[0] == 0
    assert run("subscribers", "remove", "ada@example.org")[0] == 0
    assert run("subscribers", "remove", "cy@example.org")[0] == 0
    again = write_csv(tmp_path, "ada@example.org,Ada\nbo@example.org\ncy@example.org\n"
                                "dee@example.org\n", "again.csv")
    code, out, err = run("subscribers", "import", str(again))
    assert (code, out) == (0, "1 added, 0 already known, 3 suppressed, 0 rejected\n")
    assert err.splitlines() == [
        f"suppressed: {email} is {status}; left out (--include-suppressed subscribes it again)"
        for email, status in (("ada@example.org", "unsubscribed"), ("bo@example.org", "bounced"),
                              ("cy@example.org", "unsubscribed"))]
    code, out, _ = run("subscribers", "list", "--status", "confirmed")
    assert out == "dee@example.org\tconfirmed\t-\t" + DEFAULTS + "\n"
    code, out, err = run("subscribers", "import", "--include-suppressed", str(again))
    assert (code, out, err) == (0, "0 added, 1 already known, 3 resubscribed, 0 rejected\n", "")
    assert run("subscribers", "list", "--status", "confirmed")[1].count("\tconfirmed\t") == 4


def test_cli_add_rejects_bad_input_with_the_field(run: Callable[..., tuple[int, str, str]]
                                                  ) -> None:
    code, _, err = run("subscribers", "add", "nobody")
    assert code == EXIT_PROBLEMS and err.startswith("error: email: ")
    code, _, err = run("subscribers", "add", "ada@example.org", "--timezone", "Nowhere")
    assert code == EXIT_PROBLEMS and "timezone: unknown IANA time zone 'Nowhere'" in err


def test_cli_import_and_export(run: Callable[..., tuple[int, str, str]], tmp_path: Path) -> None:
    path = write_csv(tmp_path, BAD_ROWS)
    code, out, err = run("subscribers", "import", str(path))
    assert code == EXIT_PROBLEMS
    assert out == "3 added, 0 already known, 3 rejected\n"
    lines = err.splitlines()
    assert len(lines) == 3
    for line, number in zip(lines, (3, 7, 8), strict=True):
        assert line.startswith(f"error: {path}:{number}: ")
    code, out, _ = run("subscribers", "import", str(write_csv(tmp_path, "ada@example.org\n",
                                                              "again.csv")))
    assert (code, out) == (0, "0 added, 1 already known, 0 rejected\n")
    code, out, _ = run("subscribers", "export")
    assert code == 0
    assert [r["email"] for r in csv.DictReader(io.StringIO(out))] == [
        "ada@example.org", "carl@example.org", "fred@example.org"]
