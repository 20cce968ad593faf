"""The build cache beside the site: a new process rebuilds nothing when nothing changed, only
what one changed article shows, and never serves a page made of something that changed."""

from __future__ import annotations

import dataclasses
import os
import pickle
import re
import subprocess
import sys
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

import publisher
from publisher import content, site, topics
from publisher.calendar import Calendar
from publisher.config import Config, load
from publisher.content import Article
from publisher.ics import calendar_ics
from publisher.site import build, output, pages
from publisher.site.view import day_view
from publisher.sitemap import sitemap_entries, sitemap_files
from tests.fixtures.content import SMALL_SITE_DAY
from tests.site.test_build import snapshot, with_templates


def moved(config: Config, folder: Path) -> Config:
    """Return the config writing into ``folder``."""
    return dataclasses.replace(config, site=dataclasses.replace(config.site, output_dir=folder))


def assert_fresh(config: Config, folder: Path, day: object = SMALL_SITE_DAY) -> None:
    """Assert that the site holds what a build with no cache at all writes."""
    fresh = moved(config, folder / "fresh")
    site.build_site(fresh, day)  # type: ignore[arg-type]
    assert snapshot(config.site.output_dir) == snapshot(fresh.site.output_dir)


def rendered_pages(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Record the slug of each article page rendered from now on."""
    slugs: list[str] = []
    render = pages._article_bytes

    def record(view: object, article: Article, *rest: object) -> bytes:
        slugs.append(article.slug)
        return render(view, article, *rest)  # type: ignore[arg-type]

    monkeypatch.setattr(pages, "_article_bytes", record)
    return slugs


# The files made of every article's fields but the bodies.
OF_EVERY_ARTICLE = {"index.html", "anniversaries.ics", "sitemap.xml", "tags/*/anniversaries.ics"}


def rendered_files(monkeypatch: pytest.MonkeyPatch) -> set[str]:
    """Record which of OF_EVERY_ARTICLE are rendered from now on."""
    names: set[str] = set()
    for module, function, name in ((pages, "_index", "index.html"),
                                   (pages, "calendar_ics", "anniversaries.ics"),
                                   (pages, "sitemap_files", "sitemap.xml"),
                                   (topics, "_calendar", "tags/*/anniversaries.ics")):
        make = getattr(module, function)

        def record(*args: object, _name: str = name, _make: Any = make) -> object:
            names.add(_name)
            return _make(*args)

        monkeypatch.setattr(module, function, record)
    return names


def parsed_files(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Record the name of each article file parsed from now on."""
    names: list[str] = []
    load = content.load_article

    def record(path: Path) -> Article:
        names.append(path.name)
        return load(path)

    monkeypatch.setattr(content, "load_article", record)
    return names


def publisher_build(config_file: Path, day: str) -> str:
    """Run ``publisher build`` as a new process in the site's parent folder; return its output.

    The folder changes with every build (the swap, the cache): that must not look like a
    change of code, for it is on the import path of ``python -m``.
    """
    done = subprocess.run([sys.executable, "-m", "publisher", "--config", str(config_file),
                           "build", "--date", day], capture_output=True, text=True, check=True,
                          cwd=config_file.parent)
    return done.stdout


def test_a_new_process_finds_nothing_to_do_then_only_the_edited_article(
        tmp_path: Path, small_site: Config) -> None:
    config_file = tmp_path / "publisher.toml"
    config_file.write_text(
        f'[site]\nbase_url = "{small_site.site.base_url}"\nfeed_items = 10\n'
        f'content_dir = "{small_site.site.content_dir}"\n'
        f'output_dir = "{small_site.site.output_dir}"\n', encoding="utf-8")
    day = SMALL_SITE_DAY.isoformat()
    first = publisher_build(config_file, day)
    # 14, and the feeds of the milestones (3) and of three tags (3 and a calendar each).
    assert "29 files written, 0 unchanged" in first
    built = snapshot(small_site.site.output_dir)
    inodes = {name: (small_site.site.output_dir / name).stat().st_ino for name in built}

    assert "0 files written, 29 unchanged" in publisher_build(config_file, day)
    assert {name: (small_site.site.output_dir / name).stat().st_ino for name in built} == inodes

    pi = small_site.site.content_dir / "pi.txt"
    pi.write_text(pi.read_text(encoding="utf-8") + "\nMore digits.\n", encoding="utf-8")
    edited = publisher_build(config_file, day)
    changed = {name for name, data in snapshot(small_site.site.output_dir).items()
               if data != built[name]}
    # Its first paragraph, the summary in the calendar, is as it was.
    assert changed == {"articles/pi/index.html", "feed.xml", "atom.xml", "feed.json",
                       "milestones/feed.xml", "milestones/atom.xml", "milestones/feed.json"}
    assert f"{len(changed)} files written, {29 - len(changed)} unchanged" in edited
    assert_fresh(load(config_file), tmp_path)


def test_one_edited_article_renders_its_own_page_only(
        small_site: Config, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    site.build_site(small_site, SMALL_SITE_DAY)
    slugs = rendered_pages(monkeypatch)
    parsed = parsed_files(monkeypatch)
    leap = small_site.site.content_dir / "leap.md"
    leap.write_text(leap.read_text(encoding="utf-8").replace("mostly", "usually"), "utf-8")
    report = site.build_site(small_site, SMALL_SITE_DAY)
    assert slugs == ["leap"] and parsed == ["leap.md"]
    assert report.written > 0
    monkeypatch.undo()
    assert_fresh(small_site, tmp_path)


def test_a_body_edit_renders_nothing_made_of_every_article(
        small_site: Config, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = small_site.site.output_dir
    site.build_site(small_site, SMALL_SITE_DAY)
    inodes = {name: (folder / name).stat().st_ino for name in snapshot(folder)}
    rendered = rendered_files(monkeypatch)
    replace_in(small_site, "moon.md", "single quotes", "quoted")
    site.build_site(small_site, SMALL_SITE_DAY)
    assert rendered == set()
    assert (folder / "index.html").stat().st_ino == inodes["index.html"]
    monkeypatch.undo()
    assert_fresh(small_site, tmp_path)


def one_item_feeds(config: Config) -> Config:
    """Return the config whose feeds hold one item each, of which the eclipse is none."""
    return dataclasses.replace(config, site=dataclasses.replace(config.site, feed_items=1))


def unpacked_files(monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    """Record each kept file of parsed articles loaded whole from now on."""
    loaded: list[bytes] = []
    unpack = build._unpack

    def record(data: bytes, *rest: Any) -> Any:
        loaded.append(data)
        return unpack(data, *rest)

    monkeypatch.setattr(build, "_unpack", record)
    return loaded


def test_a_body_edit_of_an_article_in_no_feed_loads_no_other_article(
        small_site: Config, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = one_item_feeds(small_site)
    # An older article kept in the same file as the eclipse, in no feed either.
    eclipse = str(config.site.content_dir / "eclipse.md")
    neighbour = next(path for n in range(1000) if output.kept_shard(
        str(path := config.site.content_dir / f"old-{n}.md")) == output.kept_shard(eclipse))
    neighbour.write_text("---\ntitle: Old\ndate: 2001-05-05\nrecurring: false\n---\n\nOld "
                         "*news*.\n", "utf-8")
    first = site.build_site(config, SMALL_SITE_DAY)
    slugs, parsed = rendered_pages(monkeypatch), parsed_files(monkeypatch)
    unpacked = unpacked_files(monkeypatch)
    replace_in(config, "eclipse.md", "continent.", "continent.\n\nIt swept over.")
    report = site.build_site(config, SMALL_SITE_DAY)
    assert slugs == ["eclipse"] and parsed == ["eclipse.md"] and unpacked == []
    assert (report.written, report.unchanged) == (1, first.written - 1)
    assert (report.pages, report.feed_items, report.changed_feeds) == (first.pages, 1, [])
    monkeypatch.undo()
    assert_fresh(config, tmp_path)
    # What it kept serves the next build, which shows every kept body on the next day.
    parsed = parsed_files(monkeypatch)
    next_day = SMALL_SITE_DAY + timedelta(days=1)
    site.build_site(config, next_day)
    assert parsed == []
    monkeypatch.undo()
    assert_fresh(config, tmp_path / "next", next_day)
    assert b"swept over" in (config.site.output_dir / "articles/eclipse/index.html").read_bytes()


def test_what_was_kept_of_an_older_file_is_not_taken_for_the_last_build(
        small_site: Config, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = one_item_feeds(small_site)
    site.build_site(config, SMALL_SITE_DAY)
    replace_in(config, "eclipse.md", "Total eclipse", "Partial eclipse")

    def not_kept(*_: object) -> tuple[bytes, bytes]:
        raise ValueError("a value marshal cannot write")

    monkeypatch.setattr(build, "_pack", not_kept)
    site.build_site(config, SMALL_SITE_DAY)  # its file keeps the article as the first build
    monkeypatch.undo()
    # Back to the title kept, which the site no longer shows.
    replace_in(config, "eclipse.md", "Partial eclipse", "Total eclipse")
    replace_in(config, "eclipse.md", "continent.", "continent.\n\nIt swept over.")
    site.build_site(config, SMALL_SITE_DAY)
    assert_fresh(config, tmp_path)


def edit_a_page_by_hand(config: Config) -> None:
    (config.site.output_dir / "articles/moon/index.html").write_text("changed", "utf-8")


def break_the_edited_article(config: Config) -> None:
    replace_in(config, "eclipse.md", "title:", "title: [")


def add_an_article(config: Config) -> None:
    (config.site.content_dir / "added.md").write_text(
        "---\ntitle: Added\ndate: 2002-02-02\n---\n\nNew.\n", "utf-8")


@pytest.mark.parametrize("other", [edit_a_page_by_hand, break_the_edited_article,
                                   add_an_article])
def test_a_body_edit_beside_another_change_builds_what_that_change_needs(
        small_site: Config, tmp_path: Path, other: Callable[[Config], None]) -> None:
    config = one_item_feeds(small_site)
    site.build_site(config, SMALL_SITE_DAY)
    replace_in(config, "eclipse.md", "continent.", "continent.\n\nIt swept over.")
    other(config)
    report = site.build_site(config, SMALL_SITE_DAY)
    assert report.ok == (other is not break_the_edited_article)
    assert_fresh(config, tmp_path)


def replace_in(config: Config, name: str, old: str, new: str) -> None:
    """Replace ``old`` with ``new`` in the article file ``name``."""
    path = config.site.content_dir / name
    path.write_text(path.read_text(encoding="utf-8").replace(old, new), "utf-8")


@pytest.mark.parametrize(("name", "old", "new"), [
    ("moon.md", "walk on", "land on"),  # the title
    ("leap.md", "2024-02-29", "2024-02-28"),  # the date
    ("leap.md", "- calendars", "- Calendars\n- time"),  # the tags
    ("pi.txt", "go round", "go around"),  # the first paragraph: the plain form's summary
    ("moon.md", "came home", "returned"),  # the summary
])
def test_an_edit_of_what_every_article_shows_renders_those_files_again(
        small_site: Config, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str,
        old: str, new: str) -> None:
    site.build_site(small_site, SMALL_SITE_DAY)
    rendered = rendered_files(monkeypatch)
    replace_in(small_site, name, old, new)
    assert site.build_site(small_site, SMALL_SITE_DAY).written > 0
    assert rendered == OF_EVERY_ARTICLE
    monkeypatch.undo()
    assert_fresh(small_site, tmp_path)


def test_a_front_page_of_ones_own_is_rendered_after_any_edit(
        small_site: Config, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # It may show anything, bodies too.
    own = with_templates(small_site, tmp_path / "look", index_html=(
        "{% for article in archive %}{{ article.body_html }}{% endfor %}\n"))
    site.build_site(own, SMALL_SITE_DAY)
    rendered = rendered_files(monkeypatch)
    replace_in(small_site, "moon.md", "single quotes", "quoted")
    site.build_site(own, SMALL_SITE_DAY)
    assert rendered == {"index.html"}
    assert b"quoted" in (own.site.output_dir / "index.html").read_bytes()
    monkeypatch.undo()
    assert_fresh(own, tmp_path)


def test_the_files_made_of_every_article_read_no_body(small_site: Config, tmp_path: Path
                                                     ) -> None:
    loaded = content.load_articles(small_site.site.content_dir).articles

    def unread() -> tuple[str, str]:
        raise AssertionError("a body was read")

    bodiless = [Article.from_head(article.head, unread) for article in loaded]
    calendar = Calendar(bodiless, small_site.site.leap_day)
    env = site.site_environment(small_site)
    pages.render_index(small_site.site, calendar, SMALL_SITE_DAY, env)
    view = day_view(small_site.site, calendar, SMALL_SITE_DAY)
    calendar_ics(small_site.site, view.published, calendar.leap_day)
    sitemap_files(small_site.site, sitemap_entries(small_site.site, calendar, SMALL_SITE_DAY))
    # Only while the front page is made of the packaged templates alone.
    assert pages.packaged_only(env, pages.INDEX_TEMPLATE)
    styled = with_templates(small_site, tmp_path / "styled", style_css="body {}\n")
    assert pages.packaged_only(site.site_environment(styled), pages.INDEX_TEMPLATE)
    own = with_templates(small_site, tmp_path / "own", base_html="{% block content %}{% endblock %}"
                         "\n")
    assert not pages.packaged_only(site.site_environment(own), pages.INDEX_TEMPLATE)


def test_a_tag_feed_is_made_again_when_the_article_naming_the_tag_changes(
        small_site: Config, tmp_path: Path) -> None:
    # One item a feed: the moon names the tag "Apollo" but is not among its items.
    config = dataclasses.replace(small_site, site=dataclasses.replace(small_site.site,
                                                                      feed_items=1))
    (config.site.content_dir / "apollo.md").write_text(
        "---\ntitle: Apollo again\ndate: 2025-12-01\ntags: [apollo]\nslug: zz-apollo\n---\n\n"
        "Again.\n", "utf-8")
    site.build_site(config, SMALL_SITE_DAY)
    assert b"Test Anniversaries: Apollo<" in (
        config.site.output_dir / "tags/apollo/feed.xml").read_bytes()
    replace_in(config, "moon.md", "- Apollo", "- APOLLO")
    site.build_site(config, SMALL_SITE_DAY)
    assert b"Test Anniversaries: APOLLO<" in (
        config.site.output_dir / "tags/apollo/feed.xml").read_bytes()
    assert_fresh(config, tmp_path)


def test_kept_articles_read_their_bodies_when_asked_and_pickle_whole(
        small_site: Config) -> None:
    site.build_site(small_site, SMALL_SITE_DAY)
    # Not yet published: no file shows it.
    future = small_site.site.content_dir / "future.md"
    os.utime(future, ns=(future.stat().st_atime_ns, future.stat().st_mtime_ns + 1_000_000))
    cache = content.ArticleCache()
    site.build_site(small_site, SMALL_SITE_DAY, cache=cache)  # parses it, renders nothing
    # Those kept in another file than its own were neither parsed again nor shown.
    kept = [article for name, _, _, article in cache.entries()
            if output.kept_shard(name) != output.kept_shard(str(future))]
    assert kept and all("body_html" not in vars(article) for article in kept)
    for article in kept:
        fresh = content.load_article(article.source)
        assert article == fresh and hash(article) == hash(fresh)
        assert pickle.loads(pickle.dumps(article)) == fresh


def edit_article_keeping_its_size(config: Config, _: Path) -> Config:
    path = config.site.content_dir / "moon.md"
    text = path.read_text(encoding="utf-8")
    path.write_text(text.replace("Two people", "Two persons"[:10]), encoding="utf-8")
    assert len(path.read_bytes()) == len(text.encode("utf-8"))
    return config


def remove_article(config: Config, _: Path) -> Config:
    (config.site.content_dir / "eclipse.md").unlink()
    return config


def duplicate_slug(config: Config, _: Path) -> Config:
    # An earlier file now claims the slug: the page is that file's article.
    (config.site.content_dir / "a-moon.md").write_text(
        "---\ntitle: Another moon\ndate: 2023-03-03\nslug: moon\n---\n\nOther.\n", "utf-8")
    return config


def touch_packaged_template(config: Config, folder: Path) -> Config:
    # The user's folder gains a file of the same name: it replaces the packaged one.
    return with_templates(config, folder / "templates", base_html=(
        "{% block content %}{% endblock %}"))


def edit_user_template(config: Config, folder: Path) -> Config:
    changed = with_templates(config, folder / "look", style_css="body { color: teal; }\n")
    site.build_site(changed, SMALL_SITE_DAY)
    style = folder / "look" / "style.css"
    stat = style.stat()
    style.write_text("body { color: navy; }\n", encoding="utf-8")  # the same size
    os.utime(style, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    return changed


def change_language(config: Config, _: Path) -> Config:
    return dataclasses.replace(config, site=dataclasses.replace(config.site, language="de"))


def new_version(config: Config, _: Path) -> Config:
    publisher.__version__ = f"{publisher.__version__}+next"
    return config


def library_installed(config: Config, folder: Path) -> Config:
    # A folder on the import path gains an entry, as when pip installs or upgrades a library.
    (folder / "site-packages" / "newer-1.0.dist-info").mkdir(parents=True)
    return config


def damaged_cache(config: Config, _: Path) -> Config:
    cache = output.cache_folder(config.site.output_dir.absolute())
    (cache / output.MANIFEST).write_bytes(b"not a pickle")
    for kept in cache.glob("articles-*"):
        kept.write_bytes(b"\x80\x05garbage")
    edit_article_keeping_its_size(config, _)
    return config


def allow_code_changes(monkeypatch: pytest.MonkeyPatch, folder: Path) -> None:
    """Let a change bump the version or install a library under ``folder``, undone afterwards."""
    monkeypatch.setattr(publisher, "__version__", publisher.__version__)
    monkeypatch.syspath_prepend(str(folder / "site-packages"))
    (folder / "site-packages").mkdir(exist_ok=True)


Change = Callable[[Config, Path], Config]


@pytest.mark.parametrize("change", [
    edit_article_keeping_its_size, remove_article, duplicate_slug, touch_packaged_template,
    edit_user_template, change_language, new_version, library_installed, damaged_cache])
def test_the_cache_never_serves_what_a_change_makes_stale(
        small_site: Config, tmp_path: Path, change: Change,
        monkeypatch: pytest.MonkeyPatch) -> None:
    allow_code_changes(monkeypatch, tmp_path)
    site.build_site(small_site, SMALL_SITE_DAY)
    before = snapshot(small_site.site.output_dir)
    changed = change(small_site, tmp_path)
    report = site.build_site(changed, SMALL_SITE_DAY)
    if change in (new_version, library_installed):
        assert report.unchanged == len(before)  # built again: the same bytes, the same files
    else:
        assert report.written > 0
    assert_fresh(changed, tmp_path)


@pytest.mark.parametrize("change", [new_version, library_installed])
def test_other_code_parses_every_article_again(
        small_site: Config, tmp_path: Path, change: Change,
        monkeypatch: pytest.MonkeyPatch) -> None:
    allow_code_changes(monkeypatch, tmp_path)
    site.build_site(small_site, SMALL_SITE_DAY)
    parsed = parsed_files(monkeypatch)
    slugs = rendered_pages(monkeypatch)
    change(small_site, tmp_path)
    site.build_site(small_site, SMALL_SITE_DAY)
    assert len(parsed) == 6 and len(slugs) == 5


def test_a_touched_article_is_parsed_again_and_its_page_kept(
        small_site: Config, monkeypatch: pytest.MonkeyPatch) -> None:
    site.build_site(small_site, SMALL_SITE_DAY)
    parsed = parsed_files(monkeypatch)
    moon = small_site.site.content_dir / "moon.md"
    os.utime(moon, ns=(moon.stat().st_atime_ns, moon.stat().st_mtime_ns + 1_000_000))
    report = site.build_site(small_site, SMALL_SITE_DAY)
    assert parsed == ["moon.md"] and report.written == 0


def test_the_next_day_renders_every_page_again(
        small_site: Config, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    site.build_site(small_site, SMALL_SITE_DAY)
    slugs = rendered_pages(monkeypatch)
    next_day = SMALL_SITE_DAY + timedelta(days=1)
    site.build_site(small_site, next_day)
    assert sorted(slugs) == ["eclipse", "flight", "leap", "moon", "pi"]
    monkeypatch.undo()
    assert_fresh(small_site, tmp_path, next_day)


def test_a_build_of_given_articles_leaves_nothing_for_the_next_to_trust(
        small_site: Config, tmp_path: Path) -> None:
    site.build_site(small_site, SMALL_SITE_DAY)
    loaded = content.load_articles(small_site.site.content_dir)
    site.build_site(small_site, SMALL_SITE_DAY, articles=loaded.articles[:1])
    again = site.build_site(small_site, SMALL_SITE_DAY)
    assert again.written > 0
    assert_fresh(small_site, tmp_path)


def test_the_cache_lives_beside_the_site_not_in_it(small_site: Config) -> None:
    site.build_site(small_site, SMALL_SITE_DAY)
    folder = small_site.site.output_dir
    cache = folder.parent / f".{folder.name}.cache"
    names = sorted(p.name for p in cache.iterdir())
    assert names[-2:] == [output.MANIFEST, "templates"]
    assert names[:-2] and all(re.fullmatch(r"articles-\d\d\.pickle", name) for name in names[:-2])
    assert {p.suffix for p in (cache / "templates").iterdir()} == {".cache"}
    assert not [p for p in folder.rglob("*") if p.name not in snapshot(folder)
                and p.is_file() and p.name != output.MODIFIED_MARK]


def test_an_update_in_place_leaves_whole_files_and_no_trace(
        small_site: Config, tmp_path: Path) -> None:
    folder = small_site.site.output_dir
    site.build_site(small_site, SMALL_SITE_DAY)
    inodes = {name: (folder / name).stat().st_ino for name in snapshot(folder)}
    (small_site.site.content_dir / "eclipse.md").unlink()
    leap = small_site.site.content_dir / "leap.md"
    leap.write_text(leap.read_text(encoding="utf-8").replace("mostly", "usually"), "utf-8")
    report = site.build_site(small_site, SMALL_SITE_DAY)
    after = snapshot(folder)
    assert not (folder / "articles" / "eclipse").exists()  # the page and its folder
    assert sorted(p.name for p in folder.rglob(".*")) == [output.MODIFIED_MARK]
    # The site folder itself stays; so does each file whose bytes did not change.
    kept = {name for name in after if (folder / name).stat().st_ino == inodes.get(name)}
    assert "articles/moon/index.html" in kept and "articles/leap/index.html" not in kept
    assert report.unchanged == len(kept) and report.written == len(after) - len(kept)
    assert int((folder / output.MODIFIED_MARK).read_text()) == int(
        (folder / "articles/leap/index.html").stat().st_mtime)
    assert_fresh(small_site, tmp_path)
