"""Control characters in titles (YAML escapes allow any) reach the terminal escaped: they cannot
fake report lines, move the cursor or recolour the screen."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from publisher.cli import cli, printable
from tests.fixtures.content import WriteFile
from tests.fixtures.database import sqlite_url
from tests.fixtures.ticks import write_config

# A title that, printed raw, would end the report's line and add a forged one in red.
TITLE = 'Real title\\r\\nsent 1000, deferred 0\\x1b[31m\\x07 \\u0085end'
SHOWN = r"Real title\r\nsent 1000, deferred 0\x1b[31m\x07 \x85end"


@pytest.mark.parametrize(("raw", "shown"), [
    ("plain text · ünïcode 😀", "plain text · ünïcode 😀"),
    ("tab\there", r"tab\there"),
    ("\x00\x1f\x7f\x9f", r"\x00\x1f\x7f\x9f"),
    ("\u2028 is not a control", "\u2028 is not a control"),
])
def test_printable_escapes_control_characters_only(raw: str, shown: str) -> None:
    assert printable(raw) == shown


def test_send_and_calendar_print_titles_escaped(tmp_path: Path, content_dir: Path,
                                                       write_file: WriteFile) -> None:
    write_file("evil.md", f'---\ntitle: "{TITLE}"\ndate: 2020-05-01\n---\nBody.\n')
    config = str(write_config(tmp_path / "publisher.toml", {
        "site": {"base_url": "https://example.org/", "content_dir": str(content_dir),
                 "output_dir": str(tmp_path / "public"), "timezone": "UTC"},
        "state": {"database_url": sqlite_url(tmp_path), "key_file": str(tmp_path / "key")},
        "email": {"transport": "maildir", "maildir": str(tmp_path / "outbox")},
    }))
    # color=True: click passes escape sequences on as it would to a terminal.
    runner = CliRunner()
    assert runner.invoke(cli, ["--config", config, "subscribers", "add",
                               "reader@example.org"]).exit_code == 0
    outputs = [runner.invoke(cli, ["--config", config, *command], color=True)
               for command in (["send", "--date", "2025-05-01"],
                               ["calendar", "--from", "2025-05-01", "--days", "1"],
                               ["send", "--date", "2025-05-01", "--dry-run"])]
    for result in outputs:
        assert result.exit_code == 0, result.output
        assert SHOWN in result.output
        assert not any(character in result.output for character in "\r\x1b\x07\x85")
    assert "sent 1, deferred 0" in outputs[0].output
    assert len([line for line in outputs[0].output.splitlines() if line.startswith("sent ")]) == 1
