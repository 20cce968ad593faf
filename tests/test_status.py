"""`publisher status` beside a running send: one ledger session, none of the tick's modules."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from publisher.config import from_mapping
from publisher.ledger import Ledger
from publisher.status import overview
from publisher.subscriptions.fields import subscriber_row


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
