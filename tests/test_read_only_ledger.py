"""Commands that only read work on an SQLite database this process cannot write: a read-only
bind mount of its folder (file and folder both read-only, even for root), made in a mount
namespace of the command's own."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from publisher.cli import cli
from publisher.ledger import Ledger
from publisher.subscriptions.fields import subscriber_row
from tests.fixtures.content import WriteArticle
from tests.fixtures.isolation import own_mounts
from tests.fixtures.ticks import write_config

ROOT = Path(__file__).resolve().parents[1]
# Make $1 read-only (a bind mount of itself), then run the rest: the publisher command.
READ_ONLY = """
mount --bind "$1" "$1"
mount -o remount,bind,ro "$1"
if touch "$1/probe" 2>/dev/null; then echo "the folder is still writable" >&2; exit 99; fi
shift
exec "$@"
"""


@pytest.fixture
def setup(tmp_path: Path, content_dir: Path, write_article: WriteArticle) -> tuple[Path, str]:
    """Return the database's folder and a configuration with a delivery sent and two
    subscribers."""
    write_article("landing", date="2020-05-01")
    state = tmp_path / "state"
    config = str(write_config(tmp_path / "publisher.toml", {
        "site": {"base_url": "https://example.org/", "content_dir": str(content_dir),
                 "output_dir": str(tmp_path / "public"), "timezone": "UTC"},
        "state": {"database_url": f"sqlite:///{state / 'publisher.db'}",
                  "key_file": str(tmp_path / "key")},
        "email": {"transport": "maildir", "maildir": str(tmp_path / "outbox")},
    }))
    runner = CliRunner()
    for reader in ("ada@example.org", "grace@example.org"):
        assert runner.invoke(cli, ["--config", config, "subscribers", "add", reader]
                             ).exit_code == 0
    assert runner.invoke(cli, ["--config", config, "send", "--date", "2025-05-01"]).exit_code == 0
    return state, config


def read_only(state: Path, config: str, *command: str) -> subprocess.CompletedProcess[str]:
    """Run ``publisher COMMAND`` with the database's folder mounted read-only."""
    return subprocess.run([*own_mounts(), READ_ONLY, "sh", str(state), sys.executable, "-m",
                           "publisher", "--config", config, *command],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_status_and_subscriber_listings_work_on_a_read_only_database(
        setup: tuple[Path, str]) -> None:
    state, config = setup
    before = {path.name for path in state.iterdir()}
    status = read_only(state, config, "status")
    assert status.returncode == 0, status.stderr
    assert "2025-05-01  landing 2025: sent 2" in status.stdout
    assert "0 pending, 2 confirmed" in status.stdout
    listing = read_only(state, config, "subscribers", "list")
    assert listing.returncode == 0, listing.stderr
    assert [line.split("\t")[:2] for line in listing.stdout.splitlines()] == [
        ["ada@example.org", "confirmed"], ["grace@example.org", "confirmed"]]
    export = read_only(state, config, "subscribers", "export")
    assert export.returncode == 0, export.stderr
    assert "grace@example.org" in export.stdout
    assert {path.name for path in state.iterdir()} == before


def test_a_read_only_reader_sees_what_a_writer_has_not_checkpointed(
        setup: tuple[Path, str]) -> None:
    state, config = setup
    with Ledger.open(f"sqlite:///{state / 'publisher.db'}") as writer:
        writer.add_subscriber(subscriber_row("hedy@example.org", None, None))
        assert (state / "publisher.db-wal").stat().st_size > 0  # still only in the log
        listing = read_only(state, config, "subscribers", "list")
    assert listing.returncode == 0, listing.stderr
    assert "hedy@example.org\tconfirmed" in listing.stdout


def test_a_command_that_writes_says_the_database_is_read_only(setup: tuple[Path, str]) -> None:
    state, config = setup
    added = read_only(state, config, "subscribers", "add", "new@example.org")
    assert added.returncode == 1
    assert added.stderr.startswith("error: ") and "Read-only file system" in added.stderr
    assert "Traceback" not in added.stderr
