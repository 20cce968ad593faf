"""`publisher status` beside a running send: one ledger session, none of the tick's modules."""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

from publisher.config import from_mapping
from publisher.ledger import ALL_ZONES, MIGRATIONS, Ledger, ReturnRow, ReturnTarget
from publisher.ledger_reads import SCHEMA_VERSION, SqliteReads
from publisher.status import overview
from publisher.subscriptions.fields import subscriber_row

DAY = date(2024, 11, 9)
T0 = datetime(2024, 11, 9, 8, 0, tzinfo=UTC)
LEASE = timedelta(minutes=5)


def test_status_loads_none_of_the_sending_modules(tmp_path: Path) -> None:
    # It runs while a million messages go out: mail, site, SMTP and mailbox code cost it time.
    config = tmp_path / "publisher.toml"
    config.write_text(f'[state]\ndatabase_url = "sqlite:///{tmp_path / "ledger.db"}"\n',
                      encoding="utf-8")
    heavy = ["publisher.mail", "publisher.site", "publisher.transports", "publisher.bounces",
             "publisher.dispatch", "publisher.schedule", "publisher.websub", "jinja2"]
    code = ("import sys; from publisher.cli import cli\n"
            "try:\n    cli(['--config', sys.argv[1], 'status'])\n"
            "except SystemExit:\n    pass\n"
            f"print([m for m in {heavy!r} if m in sys.modules], file=sys.stderr)")
    run = subprocess.run([sys.executable, "-c", code, str(config)], capture_output=True,
                         text=True, check=True, cwd=tmp_path)
    assert "subscribers: 0 pending" in run.stdout
    assert run.stderr.strip().splitlines()[-1] == "[]"


def test_the_overview_reads_one_ledger(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    with Ledger.open(url) as ledger:
        ledger.add_subscriber(subscriber_row("ada@example.org"))
    config = from_mapping({"state": {"database_url": url}}, base_dir=tmp_path)
    found = overview(config)
    assert found.deliveries.subscribers["confirmed"] == 1
    assert found.returns.editions == []
    assert found.clock.last_tick is None
    assert found.websub.hub is None


def test_status_reads_an_sqlite_ledger_without_sqlalchemy(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    Ledger.open(url).close()
    config = tmp_path / "publisher.toml"
    config.write_text(f'[state]\ndatabase_url = "{url}"\n', encoding="utf-8")
    code = ("import sys; from publisher.cli import cli\n"
            "try:\n    cli(['--config', sys.argv[1], 'status'])\n"
            "except SystemExit:\n    pass\n"
            "print('sqlalchemy' in sys.modules, file=sys.stderr)")
    run = subprocess.run([sys.executable, "-c", code, str(config)], capture_output=True,
                         text=True, check=True, cwd=tmp_path)
    assert "subscribers: 0 pending" in run.stdout
    assert run.stderr.strip().splitlines()[-1] == "False"


def test_the_sqlite_reader_knows_the_ledgers_schema_version() -> None:
    assert len(MIGRATIONS) == SCHEMA_VERSION


def test_the_sqlite_reader_reads_what_the_ledger_reads(tmp_path: Path) -> None:
    database = tmp_path / "ledger.db"
    with Ledger.open(f"sqlite:///{database}") as ledger:
        for n, zone in enumerate(("Asia/Tokyo", None, "Europe/Paris", None)):
            ledger.add_subscriber(subscriber_row(f"r{n}@example.org", None, zone), now=T0)
        for slug, day in (("moon", DAY), ("comet", DAY), ("sun", DAY + timedelta(days=1))):
            ledger.enqueue(slug, 2024, day, due_at=T0, give_up_at=T0 + timedelta(hours=48),
                           zone=ALL_ZONES, site_zone="UTC", now=T0)
        claims = ledger.claim("w", 5, LEASE, T0)
        ledger.record_sent(claims[0].delivery_id, code=250, reply="250 ok", message_id=None,
                           now=T0)
        ledger.finish(claims[1].delivery_id, "w", "sent", code=250, reply="250 ok",
                      message_id="<a@example.org>", now=T0)
        ledger.finish(claims[2].delivery_id, "w", "deferred", code=451, reply="451 later",
                      message_id=None, retry_at=T0 + timedelta(minutes=1), now=T0)
        ledger.finish(claims[3].delivery_id, "w", "failed", code=550, reply="550 no",
                      message_id=None, now=T0)
        target = ReturnTarget(claims[1].subscriber_id, claims[1].email, claims[1].delivery_id,
                              claims[1].slug, claims[1].year)
        for key, kind, to in (("a", "soft", target), ("b", "complaint", None)):
            ledger.record_return(ReturnRow(key, "imap", kind, None, None, None, None, to),
                                 soft_limit=3, soft_since=T0, now=T0)
        ledger.set_state("schedule.last_tick", T0.isoformat(), T0)
        ledger.bounce(claims[4].subscriber_id, "550 gone", now=T0)
        reads = SqliteReads.open(str(database))
        assert reads is not None
        with reads:
            for read in ("delivery_counts", "problems", "subscriber_counts", "subscriber_zones",
                         "return_counts"):
                assert getattr(reads, read)() == getattr(ledger, read)(), read
            assert reads.delivery_counts(DAY) == ledger.delivery_counts(DAY) != []
            assert reads.problems(DAY) == ledger.problems(DAY) != []
            for now in (T0, T0 + timedelta(minutes=1), T0 + LEASE + timedelta(seconds=1)):
                assert reads.count_due(now) == ledger.count_due(now)
            assert reads.get_state("schedule.last_tick") == T0.isoformat()
            assert reads.get_state("nothing") is None


def test_the_sqlite_reader_leaves_a_missing_or_older_ledger_to_the_ledger(tmp_path: Path
                                                                          ) -> None:
    database = tmp_path / "ledger.db"
    assert SqliteReads.open(str(database)) is None
    with Ledger.open(f"sqlite:///{database}") as ledger, ledger.engine.begin() as conn:
        conn.exec_driver_sql("DELETE FROM schema_migrations WHERE version = "
                             f"{len(MIGRATIONS)}")
    assert SqliteReads.open(str(database)) is None
