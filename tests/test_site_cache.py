"""Rebuilding the site: nothing is done when nothing changed, every kind of change is noticed,
and a large build shared with a forked copy of the process gives the same bytes as one process.
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
    FileStamp,
    content_stamps,
    load_articles,
)
from publisher.errors import TemplateError
from tests.fixtures.content import SMALL_SITE_DAY, WriteArticle
from tests.test_site import leftovers, snapshot, with_templates

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

    monkeypatch.setattr("publisher.site.load_articles", load)
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
def helpers(monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """Share every build with a forked copy, and record whether each start was possible."""
    monkeypatch.setattr(site, "PARALLEL_FROM", 2)
    started: list[bool] = []
    real = site._Helper.start

    def start(work: Callable[..., object], room: int = 0) -> object:
        helper = real(work, room)
        started.append(helper is not None)
        return helper

    monkeypatch.setattr(site._Helper, "start", staticmethod(start))
    return started


def test_a_build_shared_with_a_forked_copy_gives_the_same_bytes(
        small_site: Config, write_article: WriteArticle, tmp_path: Path,
        helpers: list[bool], monkeypatch: pytest.MonkeyPatch) -> None:
    # Broken and duplicated articles are among the files either process parses.
    write_article("zz-duplicate", slug="moon", date="2022-01-01")
    (small_site.site.content_dir / "broken.md").write_text("no front matter\n", "utf-8")
    shared = site.build_site(small_site, SMALL_SITE_DAY, cache=ArticleCache())
    assert helpers and all(helpers)  # the build was shared with a forked copy

    monkeypatch.setattr(site._Helper, "possible", staticmethod(lambda: False))
    alone = moved(small_site, tmp_path / "alone")
    single = site.build_site(alone, SMALL_SITE_DAY, cache=ArticleCache())
    assert snapshot(small_site.site.output_dir) == snapshot(alone.site.output_dir)
    assert dataclasses.replace(shared, output_dir=alone.site.output_dir) == dataclasses.replace(
        single, errors=shared.errors)
    assert [str(e) for e in shared.errors] == [str(e) for e in single.errors]


def tree(folder: Path) -> list[str]:
    """Return every file and folder below ``folder``."""
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*"))


def test_pages_of_a_slug_two_files_claim_are_put_right_after_a_shared_build(
        small_site: Config, write_article: WriteArticle, tmp_path: Path,
        helpers: list[bool], monkeypatch: pytest.MonkeyPatch) -> None:
    # Files named h-* go to the forked copy. Neither process knows the other's articles while
    # it writes, so each may write a page that an earlier file's article claims.
    def by_name(stamps: list[FileStamp], share: float) -> tuple[list[FileStamp],
                                                                list[FileStamp]]:
        theirs = [stamp for stamp in stamps if Path(stamp[0]).name.startswith("h-")]
        return theirs, [stamp for stamp in stamps if stamp not in theirs]

    monkeypatch.setattr(site, "_split", by_name)
    write_article("a-first", slug="one", date="2022-01-01")  # here, and first
    write_article("h-second", slug="one", date="2022-02-02")  # the copy's, not first
    write_article("h-third", slug="two", date="2022-03-03")  # the copy's, and first
    write_article("m-fourth", slug="two", date="2022-04-04")  # here, not first
    write_article("b-later", slug="three", date="2030-01-01")  # first, but not published yet
    write_article("h-fifth", slug="three", date="2022-05-05")
    write_article("h-later", slug="four", date="2030-01-01")  # the copy's, not published yet
    write_article("z-seventh", slug="four", date="2022-06-06")
    shared = site.build_site(small_site, SMALL_SITE_DAY, cache=ArticleCache())
    assert helpers and all(helpers)

    monkeypatch.setattr(site._Helper, "possible", staticmethod(lambda: False))
    alone = moved(small_site, tmp_path / "alone")
    single = site.build_site(alone, SMALL_SITE_DAY, cache=ArticleCache())
    output = small_site.site.output_dir
    assert snapshot(output) == snapshot(alone.site.output_dir)
    assert tree(output) == tree(alone.site.output_dir)  # no folder of a page taken away
    assert "articles/three" not in tree(output) and "articles/four" not in tree(output)
    assert dataclasses.replace(shared, output_dir=alone.site.output_dir) == dataclasses.replace(
        single, errors=shared.errors)
    assert [str(e) for e in shared.errors] == [str(e) for e in single.errors]


def test_a_shared_build_over_the_previous_site_keeps_unchanged_files(
        small_site: Config, tmp_path: Path, helpers: list[bool],
        monkeypatch: pytest.MonkeyPatch) -> None:
    cache = ArticleCache()
    site.build_site(small_site, SMALL_SITE_DAY, cache=cache)
    output = small_site.site.output_dir
    inodes = {name: (output / name).stat().st_ino for name in snapshot(output)}
    next_day = SMALL_SITE_DAY + timedelta(days=1)
    later = site.build_site(small_site, next_day, cache=cache)
    assert helpers and all(helpers)
    kept = [name for name in snapshot(output) if inodes.get(name) == (output / name).stat().st_ino]
    assert later.unchanged == len(kept) > 0
    assert later.written + later.unchanged == len(snapshot(output))

    monkeypatch.setattr(site._Helper, "possible", staticmethod(lambda: False))
    fresh = moved(small_site, tmp_path / "fresh")
    site.build_site(fresh, next_day)
    assert snapshot(output) == snapshot(fresh.site.output_dir)
    assert site.build_site(small_site, next_day, cache=cache).written == 0


def parsed_here(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Record each article file this process parses (a forked copy records into its own)."""
    parsed: list[str] = []
    load = content.load_article

    def record(path: Path) -> Article:
        parsed.append(str(path))
        return load(path)

    monkeypatch.setattr(content, "load_article", record)
    return parsed


@pytest.mark.parametrize("room", [None, 64])
def test_the_articles_the_copy_parsed_come_back_through_shared_memory_or_the_pipe(
        small_site: Config, tmp_path: Path, helpers: list[bool],
        monkeypatch: pytest.MonkeyPatch, room: int | None) -> None:
    if room is not None:  # too small for them: they take the pipe
        start = site._Helper.start
        monkeypatch.setattr(site._Helper, "start",
                            staticmethod(lambda work, _room=0: start(work, room)))
    parsed = parsed_here(monkeypatch)
    shared = site.build_site(small_site, SMALL_SITE_DAY, cache=ArticleCache())
    assert helpers and all(helpers)
    _, ours = site._split(content_stamps(small_site.site.content_dir), site.HELPER_SHARE)
    assert sorted(parsed) == sorted(name for name, _, _ in ours)  # none of the copy's again

    monkeypatch.setattr(site._Helper, "possible", staticmethod(lambda: False))
    alone = moved(small_site, tmp_path / "alone")
    single = site.build_site(alone, SMALL_SITE_DAY, cache=ArticleCache())
    assert snapshot(small_site.site.output_dir) == snapshot(alone.site.output_dir)
    assert (shared.written, shared.pages) == (single.written, single.pages)


def test_a_template_error_in_the_forked_copy_leaves_the_previous_site(
        small_site: Config, tmp_path: Path, helpers: list[bool]) -> None:
    site.build_site(small_site, SMALL_SITE_DAY)
    before = snapshot(small_site.site.output_dir)
    # Fail only on a page the copy renders: one of the files of its share.
    share, _ = site._split(content_stamps(small_site.site.content_dir), site.HELPER_SHARE)
    articles = ArticleCache().parse(share).fresh(share)
    theirs = next(article.slug for _, article in articles if article.date <= SMALL_SITE_DAY)
    broken = with_templates(small_site, tmp_path / "templates", article_html=(
        '{% extends "base.html" %}{% block content %}'
        f'{{% if article.slug == "{theirs}" %}}{{{{ no_such_value }}}}{{% endif %}}'
        '{% endblock %}'))
    with pytest.raises(TemplateError, match="no_such_value"):
        site.build_site(broken, SMALL_SITE_DAY, cache=ArticleCache())
    assert helpers[-1]
    assert snapshot(small_site.site.output_dir) == before
    assert leftovers(small_site.site.output_dir) == []
    assert multiprocessing.active_children() == []


def test_a_process_running_threads_builds_alone(
        small_site: Config, helpers: list[bool], monkeypatch: pytest.MonkeyPatch) -> None:
    # A forked copy of a process with other threads could inherit a lock held mid-way.
    monkeypatch.setattr(threading, "active_count", lambda: 2)
    report = site.build_site(small_site, SMALL_SITE_DAY, cache=ArticleCache())
    assert report.ok and helpers and not any(helpers)
