"""Rebuilding the site: nothing is done when nothing changed, every kind of change is noticed,
and a large build shared with a worker process gives the same bytes as one process.
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import threading
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from publisher import content, site
from publisher.config import Config
from publisher.content import (
    Article,
    ArticleCache,
    content_stamps,
    load_articles,
)
from publisher.errors import TemplateError
from publisher.site import build
from tests.fixtures.content import SMALL_SITE_DAY, WriteArticle
from tests.site.test_build import leftovers, snapshot, with_templates

Change = Callable[[Config, Path], Config]


def moved(config: Config, folder: Path) -> Config:
    """Return the config writing into ``folder``."""
    return dataclasses.replace(config, site=dataclasses.replace(config.site, output_dir=folder))


def counting_loads(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """Record each call of load_articles made by the build."""
    calls: list[Path] = []

    def load(content_dir: Path, cache: ArticleCache | None = None, **options: Any) -> object:
        calls.append(content_dir)
        return load_articles(content_dir, cache, **options)

    monkeypatch.setattr(build, "load_articles", load)
    return calls


def test_a_rebuild_with_nothing_changed_loads_renders_and_writes_nothing(
        small_site: Config, monkeypatch: pytest.MonkeyPatch) -> None:
    first = site.build_site(small_site, SMALL_SITE_DAY, cache=ArticleCache())
    before = snapshot(small_site.site.output_dir)
    loads = counting_loads(monkeypatch)
    again = site.build_site(small_site, SMALL_SITE_DAY)
    assert loads == []
    assert (again.written, again.unchanged) == (0, first.written)
    assert first.changed_feeds == ["feed.xml", "atom.xml", "feed.json"]
    assert again.changed_feeds == []  # nothing for a WebSub hub to hear about
    assert dataclasses.replace(again, written=first.written, unchanged=0,
                               changed_feeds=first.changed_feeds) == first
    assert snapshot(small_site.site.output_dir) == before


def edit_article(config: Config, _: Path) -> Config:
    path = config.site.content_dir / "leap.md"
    path.write_text(path.read_text(encoding="utf-8").replace("mostly", "usually"),
                    encoding="utf-8")
    return config


def add_article(config: Config, _: Path) -> Config:
    (config.site.content_dir / "new.md").write_text(
        "---\ntitle: New\ndate: 2025-05-05\n---\n\nNew.\n", encoding="utf-8")
    return config


def delete_output_file(config: Config, _: Path) -> Config:
    (config.site.output_dir / "articles" / "pi" / "index.html").unlink()
    return config


def edit_output_file(config: Config, _: Path) -> Config:
    page = config.site.output_dir / "articles" / "pi" / "index.html"
    with page.open("ab") as handle:
        handle.write(b"<!-- edited by hand -->")
    return config


def touch_template(config: Config, folder: Path) -> Config:
    return with_templates(config, folder / "templates", style_css="body { color: teal; }\n")


def change_setting(config: Config, _: Path) -> Config:
    return dataclasses.replace(config, site=dataclasses.replace(config.site, title="Renamed"))


@pytest.mark.parametrize("change", [edit_article, add_article, delete_output_file,
                                    edit_output_file, touch_template, change_setting])
def test_a_rebuild_notices_each_kind_of_change(
        small_site: Config, tmp_path: Path, change: Change) -> None:
    cache = ArticleCache()
    site.build_site(small_site, SMALL_SITE_DAY, cache=cache)
    changed = change(small_site, tmp_path)
    report = site.build_site(changed, SMALL_SITE_DAY, cache=cache)
    assert report.written > 0
    fresh = moved(changed, tmp_path / "fresh")
    site.build_site(fresh, SMALL_SITE_DAY)
    assert snapshot(changed.site.output_dir) == snapshot(fresh.site.output_dir)


def test_another_day_is_built_again(small_site: Config) -> None:
    cache = ArticleCache()
    site.build_site(small_site, SMALL_SITE_DAY, cache=cache)
    later = site.build_site(small_site, SMALL_SITE_DAY.replace(day=2), cache=cache)
    assert later.written > 0 and later.day == SMALL_SITE_DAY.replace(day=2)


@pytest.fixture
def workers(monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """Share every build with a worker process, and record whether each share was possible."""
    monkeypatch.setattr(build, "PARALLEL_FROM", 2)
    started: list[bool] = []
    possible = build._may_fork

    def may_fork() -> bool:
        started.append(possible())
        return started[-1]

    monkeypatch.setattr(build, "_may_fork", may_fork)
    return started


def alone(monkeypatch: pytest.MonkeyPatch) -> None:
    """Build in this process only from now on."""
    monkeypatch.setattr(build, "_may_fork", lambda: False)


def test_a_build_shared_with_a_worker_process_gives_the_same_bytes(
        small_site: Config, write_article: WriteArticle, tmp_path: Path,
        workers: list[bool], monkeypatch: pytest.MonkeyPatch) -> None:
    # Broken and duplicated articles are among the files either process parses.
    write_article("zz-duplicate", slug="moon", date="2022-01-01")
    (small_site.site.content_dir / "broken.md").write_text("no front matter\n", "utf-8")
    shared = site.build_site(small_site, SMALL_SITE_DAY, cache=ArticleCache())
    assert workers and all(workers)  # the build was shared with a worker

    alone(monkeypatch)
    by_itself = moved(small_site, tmp_path / "alone")
    single = site.build_site(by_itself, SMALL_SITE_DAY, cache=ArticleCache())
    assert snapshot(small_site.site.output_dir) == snapshot(by_itself.site.output_dir)
    assert dataclasses.replace(shared, output_dir=by_itself.site.output_dir) == (
        dataclasses.replace(single, errors=shared.errors))
    assert [str(e) for e in shared.errors] == [str(e) for e in single.errors]


def tree(folder: Path) -> list[str]:
    """Return every file and folder below ``folder``."""
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*"))


def test_the_page_of_a_slug_two_files_claim_belongs_to_the_first_in_a_shared_build(
        small_site: Config, write_article: WriteArticle, tmp_path: Path,
        workers: list[bool], monkeypatch: pytest.MonkeyPatch) -> None:
    # The two processes parse every other file: the files claiming one slug are parsed apart.
    write_article("a-first", slug="one", date="2022-01-01")  # here, and first
    write_article("h-second", slug="one", date="2022-02-02")  # the copy's, not first
    write_article("h-third", slug="two", date="2022-03-03")  # the copy's, and first
    write_article("m-fourth", slug="two", date="2022-04-04")  # here, not first
    write_article("b-later", slug="three", date="2030-01-01")  # first, but not published yet
    write_article("h-fifth", slug="three", date="2022-05-05")
    write_article("h-later", slug="four", date="2030-01-01")  # the copy's, not published yet
    write_article("z-seventh", slug="four", date="2022-06-06")
    shared = site.build_site(small_site, SMALL_SITE_DAY, cache=ArticleCache())
    assert workers and all(workers)

    alone(monkeypatch)
    by_itself = moved(small_site, tmp_path / "alone")
    single = site.build_site(by_itself, SMALL_SITE_DAY, cache=ArticleCache())
    output = small_site.site.output_dir
    assert snapshot(output) == snapshot(by_itself.site.output_dir)
    assert tree(output) == tree(by_itself.site.output_dir)
    assert "articles/three" not in tree(output) and "articles/four" not in tree(output)
    assert dataclasses.replace(shared, output_dir=by_itself.site.output_dir) == (
        dataclasses.replace(single, errors=shared.errors))
    assert [str(e) for e in shared.errors] == [str(e) for e in single.errors]


def test_a_shared_build_over_the_previous_site_keeps_unchanged_files(
        small_site: Config, tmp_path: Path, workers: list[bool],
        monkeypatch: pytest.MonkeyPatch) -> None:
    cache = ArticleCache()
    site.build_site(small_site, SMALL_SITE_DAY, cache=cache)
    output = small_site.site.output_dir
    inodes = {name: (output / name).stat().st_ino for name in snapshot(output)}
    next_day = SMALL_SITE_DAY + timedelta(days=1)
    later = site.build_site(small_site, next_day, cache=cache)
    assert workers and all(workers)
    kept = [name for name in snapshot(output) if inodes.get(name) == (output / name).stat().st_ino]
    assert later.unchanged == len(kept) > 0
    assert later.written + later.unchanged == len(snapshot(output))

    alone(monkeypatch)
    fresh = moved(small_site, tmp_path / "fresh")
    site.build_site(fresh, next_day)
    assert snapshot(output) == snapshot(fresh.site.output_dir)
    assert site.build_site(small_site, next_day, cache=cache).written == 0


def parsed_here(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Record each article file this process parses (a worker records into its own copy)."""
    parsed: list[str] = []
    load = content.load_article

    def record(path: Path) -> Article:
        parsed.append(str(path))
        return load(path)

    monkeypatch.setattr(content, "load_article", record)
    return parsed


def test_the_articles_the_worker_parsed_are_not_parsed_again(
        small_site: Config, tmp_path: Path, workers: list[bool],
        monkeypatch: pytest.MonkeyPatch) -> None:
    parsed = parsed_here(monkeypatch)
    shared = site.build_site(small_site, SMALL_SITE_DAY, cache=ArticleCache())
    assert workers and all(workers)
    stamps = content_stamps(small_site.site.content_dir)
    assert sorted(parsed) == sorted(name for name, _, _ in stamps[0::2])  # none of the worker's

    alone(monkeypatch)
    by_itself = moved(small_site, tmp_path / "alone")
    single = site.build_site(by_itself, SMALL_SITE_DAY, cache=ArticleCache())
    assert snapshot(small_site.site.output_dir) == snapshot(by_itself.site.output_dir)
    assert (shared.written, shared.pages) == (single.written, single.pages)


def test_a_template_error_in_the_worker_leaves_the_previous_site(
        small_site: Config, tmp_path: Path, workers: list[bool]) -> None:
    site.build_site(small_site, SMALL_SITE_DAY)
    before = snapshot(small_site.site.output_dir)
    # Fail only on a page the worker renders: every other published article's, from the second.
    calendar, _ = site.load_calendar(small_site)
    theirs = site.day_view(small_site.site, calendar, SMALL_SITE_DAY).published[1].slug
    broken = with_templates(small_site, tmp_path / "templates", article_html=(
        '{% extends "base.html" %}{% block content %}'
        f'{{% if article.slug == "{theirs}" %}}{{{{ no_such_value }}}}{{% endif %}}'
        '{% endblock %}'))
    with pytest.raises(TemplateError, match="no_such_value"):
        site.build_site(broken, SMALL_SITE_DAY, cache=ArticleCache())
    assert workers[-1]
    assert snapshot(small_site.site.output_dir) == before
    assert leftovers(small_site.site.output_dir) == []
    assert multiprocessing.active_children() == []


def test_a_process_running_threads_builds_alone(
        small_site: Config, workers: list[bool], monkeypatch: pytest.MonkeyPatch) -> None:
    # A forked copy of a process with other threads could inherit a lock held mid-way.
    monkeypatch.setattr(threading, "active_count", lambda: 2)
    started: list[object] = []
    monkeypatch.setattr(build, "_pool", lambda: started.append(1))
    report = site.build_site(small_site, SMALL_SITE_DAY, cache=ArticleCache())
    assert report.ok and workers and not any(workers) and started == []


def test_the_worker_keeps_every_parsed_article_for_the_next_process(
        small_site: Config, workers: list[bool], monkeypatch: pytest.MonkeyPatch) -> None:
    site.build_site(small_site, SMALL_SITE_DAY, cache=ArticleCache())
    assert workers and all(workers)
    parsed = parsed_here(monkeypatch)
    leap = small_site.site.content_dir / "leap.md"
    leap.write_text(leap.read_text(encoding="utf-8").replace("mostly", "usually"), "utf-8")
    site.build_site(small_site, SMALL_SITE_DAY, cache=ArticleCache())
    assert parsed == [str(leap)]
