"""Rebuilding the site: nothing is done when nothing changed, every kind of change is noticed,
and a large build shared with a forked copy of the process gives the same bytes as one process.
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from publisher import site
from publisher.calendar import Calendar
from publisher.config import Config
from publisher.content import ArticleCache, load_articles
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

    def load(content_dir: Path, cache: ArticleCache | None = None) -> object:
        calls.append(content_dir)
        return load_articles(content_dir, cache)

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
    assert dataclasses.replace(again, written=first.written, unchanged=0) == first
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

    def start(work: Callable[..., object]) -> object:
        helper = real(work)
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
    assert helpers and all(helpers)  # the parsing and the rendering were both shared

    monkeypatch.setattr(site._Helper, "start", staticmethod(lambda work: None))
    alone = moved(small_site, tmp_path / "alone")
    single = site.build_site(alone, SMALL_SITE_DAY, cache=ArticleCache())
    assert snapshot(small_site.site.output_dir) == snapshot(alone.site.output_dir)
    assert dataclasses.replace(shared, output_dir=alone.site.output_dir) == dataclasses.replace(
        single, errors=shared.errors)
    assert [str(e) for e in shared.errors] == [str(e) for e in single.errors]


def test_a_template_error_in_the_forked_copy_leaves_the_previous_site(
        small_site: Config, tmp_path: Path, helpers: list[bool]) -> None:
    site.build_site(small_site, SMALL_SITE_DAY)
    before = snapshot(small_site.site.output_dir)
    # Fail only on a page the copy renders: the second half of the published articles.
    calendar = Calendar(load_articles(small_site.site.content_dir).articles)
    published = calendar.published(SMALL_SITE_DAY)
    theirs = published[len(published) // 2].slug
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
