"""The build cache beside the site: a new process rebuilds nothing when nothing changed, only
what one changed article shows, and never serves a page made of something that changed."""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import sys
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import pytest

import publisher
from publisher import content, site
from publisher.config import Config, load
from publisher.content import Article
from publisher.site import output, pages
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
    assert names[-1] == output.MANIFEST
    assert names[:-1] and all(re.fullmatch(r"articles-\d\d\.pickle", name) for name in names[:-1])
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
