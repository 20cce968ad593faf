"""The build, check, calendar and import commands, driven through click's CliRunner."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from publisher.cli import EXIT_CONFIG, EXIT_PROBLEMS, cli
from tests.fixtures.content import WriteArticle, WriteFile


@pytest.fixture
def site_folder(tmp_path: Path, content_dir: Path) -> Path:
    """Write publisher.toml next to the content folder and return its path."""
    config = tmp_path / "publisher.toml"
    config.write_text(
        "[site]\n"
        'title = "Command Test"\n'
        'base_url = "https://example.org/"\n'
        'timezone = "Europe/Berlin"\n'
        f'content_dir = "{content_dir.name}"\n'
        'output_dir = "public"\n',
        encoding="utf-8")
    return config


def run(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args))


def write_every_bad_input(write_article: WriteArticle, write_file: WriteFile,
                          templates: Path) -> None:
    write_article("good", date="2024-05-01")
    write_file("bad-yaml.md", "---\ntitle: x\ndate: [2024-01-01\n---\nbody\n")
    write_file("no-date.md", "---\ntitle: Dateless\n---\nbody\n")
    write_file("impossible.md", "---\ntitle: x\ndate: 2023-02-30\n---\nbody\n")
    write_file("latin1.txt", "date 2024-01-01 Caf\xe9 text.".encode("latin-1"))
    write_file("good.txt", "date 2024-06-01 Same slug as the Markdown one.")
    templates.mkdir()
    (templates / "index.html").write_text(
        '{% extends "base.html" %}\n{% block content %}\n{{ todays_events }}\n{% endblock %}\n',
        encoding="utf-8")


def test_build_writes_the_site_and_exits_zero(site_folder: Path,
                                              write_article: WriteArticle) -> None:
    write_article("moon", date="2021-07-20")
    result = run("--config", str(site_folder), "build", "--date", "2025-07-20")
    assert result.exit_code == 0, result.output
    assert "built 2025-07-20" in result.stdout
    output = site_folder.parent / "public"
    assert (output / "articles/moon/index.html").is_file()
    assert b"moon/2025" in (output / "feed.xml").read_bytes()


def test_build_finds_publisher_toml_in_the_working_directory(
    site_folder: Path, write_article: WriteArticle, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch
) -> None:
    write_article("moon", date="2021-07-20")
    monkeypatch.chdir(site_folder.parent)
    result = run("build", "--date", "2025-07-20", "--out", str(tmp_path / "other"))
    assert result.exit_code == 0, result.output
    assert (tmp_path / "other" / "index.html").is_file()
    assert not (site_folder.parent / "public").exists()


def test_build_publishes_valid_articles_and_lists_broken_ones(
    site_folder: Path, write_article: WriteArticle, write_file: WriteFile
) -> None:
    write_article("moon", date="2021-07-20")
    broken = write_file("broken.md", "---\ntitle: x\ndate: 2023-02-30\n---\n")
    result = run("build", "--config", str(site_folder), "--date", "2025-07-20")
    assert result.exit_code == EXIT_PROBLEMS
    assert f"error: {broken}:3: date: impossible date '2023-02-30'" in result.stderr
    assert (site_folder.parent / "public" / "articles/moon/index.html").is_file()
    assert not (site_folder.parent / "public" / "articles/broken").exists()


def test_check_reports_every_problem_at_once(
    site_folder: Path, write_article: WriteArticle, write_file: WriteFile, content_dir: Path
) -> None:
    templates = site_folder.parent / "look"
    with site_folder.open("a", encoding="utf-8") as config:
        config.write('templates_dir = "look"\n')
    write_every_bad_input(write_article, write_file, templates)
    result = run("--config", str(site_folder), "check", "--date", "2025-01-01")
    assert result.exit_code == EXIT_PROBLEMS
    lines = result.stdout.splitlines()
    expected = [
        f"{content_dir / 'bad-yaml.md'}:4: front matter: invalid YAML",
        f"{content_dir / 'good.txt'}: slug: slug 'good' is already used by",
        f"{content_dir / 'impossible.md'}:3: date: impossible date '2023-02-30'",
        f"{content_dir / 'latin1.txt'}:1: encoding: not UTF-8 text",
        f"{content_dir / 'no-date.md'}:1: date: required field is missing",
        f"{templates / 'index.html'}:3: variable: unknown variable: 'todays_events'",
    ]
    assert len(lines) == len(expected), lines
    for line, start in zip(sorted(lines), expected, strict=True):
        assert line.startswith(start), (line, start)
    assert "6 problem(s) found" in result.stderr
    assert not (site_folder.parent / "public").exists()


def test_build_stops_on_a_template_error_and_keeps_the_old_site(
    site_folder: Path, write_article: WriteArticle
) -> None:
    write_article("moon", date="2021-07-20")
    assert run("--config", str(site_folder), "build", "--date", "2025-07-20").exit_code == 0
    index = site_folder.parent / "public" / "index.html"
    before = index.read_bytes()
    templates = site_folder.parent / "look"
    templates.mkdir()
    (templates / "index.html").write_text("{{ nothing_here }}\n", encoding="utf-8")
    with site_folder.open("a", encoding="utf-8") as config:
        config.write('templates_dir = "look"\n')
    result = run("--config", str(site_folder), "build", "--date", "2025-07-21")
    assert result.exit_code == EXIT_PROBLEMS
    assert f"error: {templates / 'index.html'}:1: variable: unknown variable" in result.stderr
    assert index.read_bytes() == before


def test_check_passes_on_good_content(site_folder: Path, write_article: WriteArticle) -> None:
    write_article("moon", date="2021-07-20")
    result = run("--config", str(site_folder), "check")
    assert result.exit_code == 0, result.output
    assert result.stdout == "no problems found\n"


def test_bad_configuration_exits_with_the_config_code(tmp_path: Path) -> None:
    config = tmp_path / "publisher.toml"
    config.write_text('[site]\nleap_day = "never"\n', encoding="utf-8")
    for command in ("build", "check", "calendar"):
        result = run("--config", str(config), command)
        assert result.exit_code == EXIT_CONFIG, command
        assert f"error: {config}: site.leap_day: must be one of feb28, mar1, skip" in result.stderr


def test_bad_date_is_a_usage_error(site_folder: Path) -> None:
    result = run("--config", str(site_folder), "build", "--date", "2023-02-30")
    assert result.exit_code == 2
    assert "--date" in result.stderr


@pytest.mark.parametrize(("policy", "expected"), [
    ("feb28", ["2025-02-28    1  leap  Leap"]),
    ("mar1", ["2025-03-01    1  leap  Leap"]),
    ("skip", []),
])
def test_calendar_lists_feb_29_by_policy(site_folder: Path, write_article: WriteArticle,
                                         policy: str, expected: list[str]) -> None:
    write_article("leap", date="2024-02-29")
    with site_folder.open("a", encoding="utf-8") as config:
        config.write(f'leap_day = "{policy}"\n')
    result = run("--config", str(site_folder), "calendar", "--from", "2025-02-27", "--days", "3")
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == expected


def test_calendar_lists_upcoming_events_and_broken_files(
    site_folder: Path, write_article: WriteArticle, write_file: WriteFile
) -> None:
    write_article("moon", title="Moon landing", date="2021-07-20")
    write_article("first-flight", title="Flight", date="2019-07-21")
    write_file("new.txt", "date 2026-07-22 A brand new article.")
    broken = write_file("broken.md", "---\ntitle: x\n---\n")
    result = run("--config", str(site_folder), "calendar", "--from", "2026-07-20", "--days", "3")
    assert result.exit_code == EXIT_PROBLEMS
    assert result.stdout.splitlines() == [
        "2026-07-20    5  moon          Moon landing",
        "2026-07-21    7  first-flight  Flight",
        "2026-07-22    0  new           A brand new article",
    ]
    assert f"error: {broken}:1: date: required field is missing" in result.stderr


def test_import_writes_markdown_and_renames_the_source(
    site_folder: Path, write_file: WriteFile, content_dir: Path
) -> None:
    source = write_file("tides.txt", "date 2021-06-21 The tide turns. It always does.")
    result = run("import", str(source))
    assert result.exit_code == 0, result.output
    assert result.stdout == (f"{source} -> {content_dir / 'tides.md'} "
                             "(source renamed to tides.txt.imported)\n")
    assert (content_dir / "tides.md").read_text(encoding="utf-8").startswith(
        "---\ntitle: The tide turns\n")
    check = run("--config", str(site_folder), "check")
    assert check.exit_code == 0, check.output


def test_import_reports_each_failure_and_goes_on(
    write_file: WriteFile, write_article: WriteArticle, tmp_path: Path
) -> None:
    broken = write_file("broken.txt", "no date here")
    markdown = write_article("already", date="2020-01-01")
    fine = write_file("fine.txt", "date 2022-02-02 Fine text.")
    out = tmp_path / "converted"
    result = run("import", str(broken), str(markdown), str(fine), "--out", str(out))
    assert result.exit_code == EXIT_PROBLEMS
    assert sorted(p.name for p in out.iterdir()) == ["fine.md"]
    assert f"error: {broken}:1: date:" in result.stderr
    assert f"error: {markdown}: file: only plain .txt articles" in result.stderr
    assert broken.exists() and not fine.exists()


def test_import_refuses_to_overwrite(write_file: WriteFile) -> None:
    source = write_file("taken.txt", "date 2021-01-01 Already converted.")
    existing = write_file("taken.md", "hand edited")
    result = run("import", str(source))
    assert result.exit_code == EXIT_PROBLEMS
    assert f"{existing} already exists (overwrite it with --force)" in result.stderr
    assert existing.read_text(encoding="utf-8") == "hand edited"
    assert source.exists()


def test_import_force_overwrites_and_keep_leaves_the_source(write_file: WriteFile) -> None:
    source = write_file("taken.txt", "date 2021-01-01 Converted again.")
    existing = write_file("taken.md", "hand edited")
    result = run("import", str(source), "--force", "--keep")
    assert result.exit_code == 0, result.output
    assert result.stdout == f"{source} -> {existing}\n"
    assert source.exists()
    assert "title: Converted again" in existing.read_text(encoding="utf-8")


def test_importing_the_command_line_loads_no_command_modules() -> None:
    # Each command imports what it needs: `publisher build` never loads the ledger, mail or web.
    heavy = ["sqlalchemy", "publisher.ledger", "publisher.mail", "publisher.web",
             "publisher.dispatch", "publisher.daemon", "publisher.site"]
    code = f"import sys, publisher.cli; print([m for m in {heavy!r} if m in sys.modules])"
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True).stdout
    assert loaded.strip() == "[]"
