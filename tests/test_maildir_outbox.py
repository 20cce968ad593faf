"""The Maildir outbox on a disk of its own: an empty mount point is made a maildir, and a full
disk is reported as what it is while the messages wait for their retry. The disk is a real one:
a 16 KiB tmpfs, filled up, in a mount namespace of the send's own (so nothing stays mounted,
whatever becomes of the test)."""

from __future__ import annotations

import subprocess
import sys
from collections import Counter
from pathlib import Path

from click.testing import CliRunner
from sqlalchemy import select

from publisher.cli import EXIT_PROBLEMS, cli
from publisher.ledger import Ledger, deliveries
from publisher.transports import Envelope, MaildirTransport
from tests.fixtures.content import WriteArticle
from tests.fixtures.database import sqlite_url
from tests.fixtures.isolation import own_mounts
from tests.fixtures.ticks import write_config

ROOT = Path(__file__).resolve().parents[1]
READERS = ("ada@example.org", "grace@example.org", "hedy@example.org")
# Mount a tiny tmpfs on the maildir, fill it, then send: $1 the maildir, the rest the command.
ON_A_FULL_DISK = """
mount -t tmpfs -o size=16k publisher-test "$1"
mkdir "$1/tmp" "$1/new" "$1/cur"
head -c 1048576 /dev/zero > "$1/filler" 2>/dev/null || true
shift
exec "$@"
"""


def test_a_full_disk_defers_the_messages_and_says_so(tmp_path: Path, content_dir: Path,
                                                     write_article: WriteArticle) -> None:
    prefix = own_mounts()
    write_article("landing", date="2020-05-01")
    outbox = tmp_path / "outbox"
    outbox.mkdir()
    url = sqlite_url(tmp_path)
    config = str(write_config(tmp_path / "publisher.toml", {
        "site": {"base_url": "https://example.org/", "content_dir": str(content_dir),
                 "output_dir": str(tmp_path / "public"), "timezone": "UTC"},
        "state": {"database_url": url, "key_file": str(tmp_path / "key")},
        "email": {"transport": "maildir", "maildir": str(outbox)},
    }))
    for reader in READERS:
        assert CliRunner().invoke(cli, ["--config", config, "subscribers", "add",
                                        reader]).exit_code == 0
    done = subprocess.run([*prefix, ON_A_FULL_DISK, "sh", str(outbox), sys.executable, "-m",
                           "publisher", "--config", config, "send", "--date", "2025-05-01"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == EXIT_PROBLEMS, done.stderr
    assert "sent 0, deferred 3, failed 0" in done.stdout
    assert (f"stopped: cannot write to {outbox}: No space left on device; deferred rows will "
            "be retried") in done.stdout
    assert "mail server" not in done.stdout
    with Ledger.open(url) as ledger, ledger.engine.connect() as conn:
        rows = conn.execute(select(deliveries.c.status, deliveries.c.last_reply)).all()
    assert Counter(status for status, _ in rows) == Counter({"deferred": 3})
    assert all("No space left on device" in (reply or "") for _, reply in rows)
    assert list(outbox.iterdir()) == []  # the tmpfs went with the send's namespace


def test_an_existing_empty_folder_becomes_the_maildir(tmp_path: Path) -> None:
    outbox = tmp_path / "outbox"
    outbox.mkdir()
    transport = MaildirTransport(outbox)
    envelope = Envelope(1, "a@example.org", "b@example.org", b"Subject: hello\n\nHi.\n")
    ((_, outcome),) = transport.send([envelope])
    assert outcome.status == "sent"
    assert [path.read_bytes() for path in (outbox / "new").iterdir()] == [envelope.data]
