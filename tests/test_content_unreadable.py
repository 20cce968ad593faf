"""Entries of the content folder that cannot be read are each one reported problem: link loops,
dangling links, named pipes, folders and files without permission, files gone mid-load."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from datetime import UTC, datetime
from pathlib import Path

from click.testing import CliRunner, Result

from publisher import content
from publisher.cli import EXIT_PROBLEMS, cli
from publisher.content import ArticleCache, LoadResult, load_articles
from publisher.errors import UnreadableError
from tests.fixtures.content import WriteArticle
from tests.fixtures.database import sqlite_url
from tests.fixtures.isolation import unprivileged
from tests.fixtures.ticks import MakeWorld, write_config

ROOT = Path(__file__).resolve().parents[1]
WATCHDOG_SECONDS = 60.0


def hostile_entries(content_dir: Path) -> set[Path]:
    """Add a link loop, a dangling link, a named pipe and a link to a folder, all named as
    articles; return their paths."""
    loop_a, loop_b = content_dir / "a.md", content_dir / "b.md"
    loop_a.symlink_to("b.md")
    loop_b.symlink_to("a.md")
    dangling = content_dir / "nested" / "dangling.txt"
    dangling.parent.mkdir(exist_ok=True)
    dangling.symlink_to("nowhere.txt")
    pipe = content_dir / "pipe.md"
    os.mkfifo(pipe)
    folder = content_dir / "folder.md"
    folder.symlink_to(content_dir / "nested", target_is_directory=True)
    return {loop_a, loop_b, dangling, pipe, folder}


def load_watched(content_dir: Path, *, stamped: bool) -> LoadResult:
    """Load the folder in a thread; fail (after unblocking it) if the load hangs on a pipe."""
    results: list[LoadResult | BaseException] = []

    def load() -> None:
        try:
            stamps = content.content_stamps(content_dir) if stamped else None
            results.append(load_articles(content_dir, ArticleCache(), stamps=stamps))
        except BaseException as exc:  # handed to the test's own thread
            results.append(exc)

    worker = threading.Thread(target=load, daemon=True)
    worker.start()
    worker.join(WATCHDOG_SECONDS)
    if worker.is_alive():
        # Opening the pipe for writing releases a reader blocked on opening it.
        with open(content_dir / "pipe.md", "wb"):
            pass
        worker.join(WATCHDOG_SECONDS)
        raise AssertionError("loading the content folder blocked on a named pipe")
    (result,) = results
    if isinstance(result, BaseException):
        raise result
    return result


def test_unreadable_entries_are_each_reported_and_the_rest_loads(
        write_article: WriteArticle, content_dir: Path) -> None:
    write_article("good", date="2020-05-01")
    hostile = hostile_entries(content_dir)
    write_article("nested/deeper", date="2020-05-02")
    for stamped in (False, True):
        result = load_watched(content_dir, stamped=stamped)
        assert sorted(a.slug for a in result.articles) == ["deeper", "good"]
        assert {e.path for e in result.errors} == hostile
        assert all(isinstance(e, UnreadableError) and e.field == "file" for e in result.errors)
    by_path = {e.path: str(e) for e in result.errors}
    assert "Too many levels of symbolic links" in by_path[content_dir / "a.md"]
    assert "a symbolic link to nowhere.txt" in by_path[content_dir / "nested/dangling.txt"]
    assert "not a regular file but a named pipe" in by_path[content_dir / "pipe.md"]
    assert "not a regular file but a folder" in by_path[content_dir / "folder.md"]


def test_a_file_gone_between_listing_and_loading_is_reported(
        write_article: WriteArticle, content_dir: Path) -> None:
    write_article("stays", date="2020-05-01")
    gone = write_article("goes", date="2020-05-02")
    stamps = content.content_stamps(content_dir)
    gone.unlink()
    result = load_articles(content_dir, ArticleCache(), stamps=stamps)
    assert [a.slug for a in result.articles] == ["stays"]
    (error,) = result.errors
    assert isinstance(error, UnreadableError)
    assert error.path == gone and "No such file or directory" in error.message


def test_files_and_folders_without_permission_are_reported_until_readable(
        write_article: WriteArticle, content_dir: Path) -> None:
    prefix = unprivileged()
    write_article("open", date="2020-05-01")
    locked_file = write_article("locked", date="2020-05-02")
    locked_folder = content_dir / "private"
    locked_folder.mkdir()
    write_article("private/inside", date="2020-05-03")
    locked_file.chmod(0)
    locked_folder.chmod(0)
    # Loaded twice with one cache: before and after the permissions are given back, which
    # changes no file's size or modification time.
    script = """if True:
        import json, sys
        from pathlib import Path
        from publisher.content import ArticleCache, load_articles
        folder, cache, seen = Path(sys.argv[1]), ArticleCache(), []
        for _ in range(2):
            result = load_articles(folder, cache)
            seen.append({"slugs": sorted(a.slug for a in result.articles),
                         "errors": [[str(e.path), str(e)] for e in result.errors]})
            (folder / "locked.md").chmod(0o644)
        print(json.dumps(seen))
    """
    try:
        done = subprocess.run([*prefix, sys.executable, "-c", script, str(content_dir)],
                              cwd=ROOT, capture_output=True, text=True, timeout=120)
    finally:
        locked_folder.chmod(0o755)
        locked_file.chmod(0o644)
    assert done.returncode == 0, done.stderr
    first, second = json.loads(done.stdout)
    assert first["slugs"] == ["open"]
    errors = dict(first["errors"])
    assert set(errors) == {str(locked_file), str(locked_folder)}
    assert all("Permission denied" in text for text in errors.values())
    assert second["slugs"] == ["locked", "open"]
    assert [path for path, _ in second["errors"]] == [str(locked_folder)]


# --- the commands and the daemon's tick -------------------------------------------------------


def run(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args))


def test_build_check_and_send_publish_around_a_link_loop(
        tmp_path: Path, content_dir: Path, write_article: WriteArticle) -> None:
    write_article("good", date="2020-05-01")
    hostile = hostile_entries(content_dir)
    config = write_config(tmp_path / "publisher.toml", {
        "site": {"base_url": "https://example.org/", "content_dir": str(content_dir),
                 "output_dir": str(tmp_path / "public"), "timezone": "UTC"},
        "state": {"database_url": sqlite_url(tmp_path), "key_file": str(tmp_path / "key")},
        "email": {"transport": "maildir", "maildir": str(tmp_path / "outbox")},
    })
    built = run("--config", str(config), "build", "--date", "2025-05-01")
    assert built.exit_code == EXIT_PROBLEMS, built.output
    assert (tmp_path / "public/articles/good/index.html").is_file()
    checked = run("--config", str(config), "check", "--date", "2025-05-01")
    assert checked.exit_code == EXIT_PROBLEMS, checked.output
    assert run("--config", str(config), "subscribers", "add", "reader@example.org").exit_code == 0
    sent = run("--config", str(config), "send", "--date", "2025-05-01")
    assert sent.exit_code == EXIT_PROBLEMS, sent.output
    assert "sent 1," in sent.stdout
    assert len(os.listdir(tmp_path / "outbox" / "new")) == 1
    for result in (built, checked, sent):
        assert result.exception is None or isinstance(result.exception, SystemExit)
        for path in hostile:
            assert f"{path}: file: " in result.output


def test_a_tick_publishes_around_a_link_loop(make_world: MakeWorld, tmp_path: Path,
                                              write_article: WriteArticle,
                                              content_dir: Path) -> None:
    write_article("june", date="2019-06-05")
    hostile = hostile_entries(content_dir)
    world = make_world(sqlite_url(tmp_path), timezone="UTC", publish_time="09:00")
    world.subscribe("reader@example.org")
    report = world.tick(datetime(2025, 6, 5, 9, 0, 30, tzinfo=UTC))
    assert report.built is not None
    assert [(s.to, s.slug, s.year) for s in world.sent()] == [("reader@example.org", "june",
                                                               2025)]
    assert {e.path for e in report.built.errors} == hostile
