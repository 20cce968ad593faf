"""The archive build: every page and feed, atomic swap, unchanged files kept, templates."""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import stat
import threading
from collections.abc import Callable
from datetime import UTC, date, datetime
from pathlib import Path

import pytest
from playwright.sync_api import Browser

from publisher import site
from publisher.calendar import Calendar, local_date
from publisher.config import Config
from publisher.content import load_articles
from publisher.errors import ConfigError, OutputError, TemplateError
from publisher.render import make_environment
from publisher.site import output as site_output
from publisher.site import pages
from publisher.site.view import RECENT_EVENTS
from tests.fixtures.content import BASE_URL, SMALL_SITE_DAY, WriteArticle, WriteFile

REPO = Path(__file__).resolve().parents[2]
SMALL_SITE_FILES = {
    "style.css", "favicon.ico", "index.html", "feed.xml", "atom.xml", "feed.json",
    "anniversaries.ics", "sitemap.xml", "robots.txt",
    *(f"articles/{slug}/index.html" for slug in ("eclipse", "flight", "leap", "moon", "pi")),
}


def snapshot(folder: Path) -> dict[str, bytes]:
    """Return every file a site folder serves (not the hidden ones): relative path to bytes."""
    return {p.relative_to(folder).as_posix(): p.read_bytes()
            for p in sorted(folder.rglob("*")) if p.is_file() and not p.name.startswith(".")}


def leftovers(output: Path) -> list[str]:
    """Return the staging or retired folders a build left next to the output folder."""
    return sorted(p.name for p in output.parent.iterdir()
                  if p.name.startswith(f".{output.name}.")
                  and not p.name.endswith((".lock", ".cache")))


def forget_last_build(folder: Path) -> None:
    """Remove the build cache kept beside a site folder."""
    shutil.rmtree(site_output.cache_folder(folder))


def with_templates(config: Config, folder: Path, **templates: str) -> Config:
    """Return the config with a user templates folder holding the given files."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in templates.items():
        (folder / name.replace("_", ".")).write_text(text, encoding="utf-8")
    return dataclasses.replace(config, site=dataclasses.replace(config.site, templates_dir=folder))


def test_build_writes_every_page_and_feed(small_site: Config) -> None:
    report = site.build_site(small_site, SMALL_SITE_DAY)
    output = small_site.site.output_dir
    assert report.output_dir == output
    assert set(snapshot(output)) == SMALL_SITE_FILES
    assert (report.pages, report.feeds, report.feed_items, report.events_today) == (6, 3, 10, 0)
    assert (report.written, report.unchanged, report.ok) == (len(SMALL_SITE_FILES), 0, True)
    assert leftovers(output) == []


def test_articles_after_the_date_appear_nowhere(small_site: Config) -> None:
    site.build_site(small_site, SMALL_SITE_DAY)
    for name, data in snapshot(small_site.site.output_dir).items():
        assert b"future" not in data and b"From the future" not in data, name


def test_index_lists_today_recent_and_archive(small_site: Config) -> None:
    site.build_site(small_site, date(2026, 2, 28))
    index = (small_site.site.output_dir / "index.html").read_text(encoding="utf-8")
    today, rest = index.split('id="recent"', 1)
    recent, archive = rest.split('id="archive"', 1)
    assert 'href="./articles/leap/"' in today and "2 years ago today" in today
    # Recent: the appearances before today, newest first, as many as the index shows.
    recent_days = re.findall(r'<time datetime="([\d-]+)"', recent)
    assert recent_days[0] == "2025-12-17"
    assert recent_days == sorted(recent_days, reverse=True)
    assert len(recent_days) == RECENT_EVENTS
    # The archive: newest year first, each article once, newest first within a year.
    years = re.findall(r"<h3>(\d{4})</h3>", archive)
    assert years == ["2024", "2021", "2020", "2019"]
    slugs = re.findall(r'href="\./articles/([a-z]+)/"', archive)
    assert slugs == ["eclipse", "leap", "moon", "pi", "flight"]
    for feed in ("feed.xml", "atom.xml", "feed.json"):
        assert '<link rel="alternate" type="application/' in index
        assert f'href="{BASE_URL}{feed}"' in index


def test_index_on_a_quiet_day_names_the_next_anniversary_with_a_link(small_site: Config,
                                                                     tmp_path: Path) -> None:
    # 30 November 2026: nothing comes back; "future" is first published the next day, but it
    # is not published yet, so the next anniversary is the flight's, on 17 December.
    site.build_site(small_site, date(2026, 11, 30))
    output = small_site.site.output_dir
    today = (output / "index.html").read_text(encoding="utf-8").split('id="recent"', 1)[0]
    assert "Nothing comes back today." in today
    found = re.search(r'Next: <time datetime="2026-12-17">17 December 2026</time> — '
                      r'<a href="\./articles/([a-z]+)/">Twelve seconds of powered flight</a>, '
                      r'7 years on</p>', today)
    assert found is not None, today
    assert (output / "articles" / found.group(1) / "index.html").is_file()
    assert "future" not in today
    # The same content, configuration and day give the same bytes.
    site.build_site(small_site, date(2026, 11, 30), out=tmp_path / "again")
    assert snapshot(tmp_path / "again") == snapshot(output)


def test_index_on_a_day_with_anniversaries_does_not_look_ahead(small_site: Config) -> None:
    site.build_site(small_site, date(2026, 2, 28))
    index = (small_site.site.output_dir / "index.html").read_text(encoding="utf-8")
    assert "2 years ago today" in index
    assert "Next:" not in index and "Nothing comes back today." not in index


def test_article_page_shows_history_body_and_feeds(small_site: Config) -> None:
    site.build_site(small_site, SMALL_SITE_DAY)
    page = (small_site.site.output_dir / "articles/moon/index.html").read_text(encoding="utf-8")
    assert "<title>Two people walk on the Moon · Test Anniversaries</title>" in page
    assert f'<link rel="canonical" href="{BASE_URL}articles/moon/">' in page
    assert 'href="../../style.css"' in page
    assert '<time datetime="2021-07-20">20 July 2021</time> by Archive desk' in page
    assert 'remembering <time datetime="1969-07-20">' in page
    assert re.findall(r'id="year-(\d{4})"', page) == ["2021", "2022", "2023", "2024", "2025"]
    assert "Next anniversary: <time datetime=\"2026-07-20\">" in page
    # The page keeps the author's relative links: they resolve against the page itself.
    assert '<a href="../leap/">the leap day</a>' in page
    assert page.count('rel="alternate"') == 4  # three feeds and the calendar


def test_history_lists_each_year_and_how_long_ago(small_site: Config) -> None:
    site.build_site(small_site, SMALL_SITE_DAY)
    page = (small_site.site.output_dir / "articles/moon/index.html").read_text(encoding="utf-8")
    items = re.findall(r'<li id="year-\d{4}"><time datetime="[\d-]+">[^<]+</time>([^<]*)</li>',
                       page)
    assert items == ["", " (1 year)", " (2 years)", " (3 years)", " (4 years)"]


def test_templates_read_a_feed_link_by_attribute_or_key(small_site: Config) -> None:
    env = make_environment()
    template = env.from_string("{% for feed in feeds %}{{ feed.label }}={{ feed['type'] }} "
                               "{% endfor %}")
    assert template.render(feeds=pages.feed_links(small_site.site)) == (
        "RSS=application/rss+xml Atom=application/atom+xml JSON Feed=application/feed+json ")


def test_first_publication_day_and_last_appearance(small_site: Config) -> None:
    site.build_site(small_site, date(2024, 4, 8))
    output = small_site.site.output_dir
    eclipse = (output / "articles/eclipse/index.html").read_text(encoding="utf-8")
    assert re.findall(r'id="year-(\d{4})"', eclipse) == ["2024"]
    assert "Next anniversary" not in eclipse
    assert "published today" in (output / "index.html").read_text(encoding="utf-8")


def test_rebuild_gives_identical_bytes_and_keeps_unchanged_files(
    small_site: Config, write_article: WriteArticle
) -> None:
    output = small_site.site.output_dir
    site.build_site(small_site, SMALL_SITE_DAY)
    before = snapshot(output)
    inodes = {name: (output / name).stat().st_ino for name in before}
    again = site.build_site(small_site, SMALL_SITE_DAY)
    assert snapshot(output) == before
    assert (again.written, again.unchanged) == (0, len(before))
    assert {name: (output / name).stat().st_ino for name in before} == inodes
    # An edit rewrites the pages that show it, and only those.
    write_article("eclipse", "A different text now.", title="Total eclipse", date="2024-04-08",
                  recurring=False)
    edited = site.build_site(small_site, SMALL_SITE_DAY)
    changed = {name for name, data in snapshot(output).items() if data != before[name]}
    assert changed == {"articles/eclipse/index.html", "feed.xml", "atom.xml", "feed.json",
                       "anniversaries.ics"}  # the summary, in the calendar's description
    assert edited.written == len(changed)
    for name in set(before) - changed:
        assert (output / name).stat().st_ino == inodes[name], name


def mtimes(output: Path) -> dict[str, int]:
    """Return the mtime (hence Last-Modified) in whole seconds of every file a site serves."""
    return {name: int((output / name).stat().st_mtime) for name in snapshot(output)}


@pytest.mark.parametrize("mark", ["kept", "removed"])
def test_new_bytes_are_dated_after_every_date_the_site_gave_before(
        small_site: Config, write_article: WriteArticle, mark: str) -> None:
    output = small_site.site.output_dir
    site.build_site(small_site, SMALL_SITE_DAY)
    first = mtimes(output)
    assert set(first.values()) == {int((output / site.MODIFIED_MARK).read_text())}
    # As if earlier builds within this second (or another host with a clock running ahead)
    # had served a date the clock has not reached yet.
    ahead = max(first.values()) + 30
    if mark == "kept":
        (output / site.MODIFIED_MARK).write_text(f"{ahead}\n")
    else:
        (output / site.MODIFIED_MARK).unlink()  # the newest file then stands for the mark
        os.utime(output / "feed.json", (ahead, ahead))
    forget_last_build(output)  # another instance sharing the folder, with no record of it
    write_article("eclipse", "A different text now.", title="Total eclipse", date="2024-04-08",
                  recurring=False)
    site.build_site(small_site, SMALL_SITE_DAY)
    second = mtimes(output)
    changed = {"articles/eclipse/index.html", "feed.xml", "atom.xml", "feed.json",
               "anniversaries.ics"}  # the summary is in the calendar too
    assert {name: second[name] for name in changed} == dict.fromkeys(changed, ahead + 1)
    assert {name: second[name] for name in set(first) - changed} == {
        name: first[name] for name in set(first) - changed}  # unchanged bytes, same date
    assert (output / site.MODIFIED_MARK).read_text() == f"{ahead + 1}\n"
    # A rebuild that changes no bytes gives no new date.
    forget_last_build(output)
    site.build_site(small_site, SMALL_SITE_DAY)
    assert mtimes(output) == second
    assert (output / site.MODIFIED_MARK).read_text() == f"{ahead + 1}\n"


def test_failed_build_leaves_the_previous_site_whole(small_site: Config, tmp_path: Path) -> None:
    output = small_site.site.output_dir
    site.build_site(small_site, SMALL_SITE_DAY)
    before = snapshot(output)
    broken = with_templates(small_site, tmp_path / "templates", article_html=(
        '{% extends "base.html" %}\n{% block content %}\n<h1>{{ article.title }}</h1>\n'
        "<p>{{ article.subtitle }}</p>\n{% endblock %}\n"))
    with pytest.raises(TemplateError) as caught:
        site.build_site(broken, date(2026, 3, 2))
    error = caught.value
    assert (error.path, error.line, error.field) == (tmp_path / "templates/article.html", 4,
                                                     "variable")
    assert "subtitle" in error.message
    assert snapshot(output) == before
    assert leftovers(output) == []


def test_readers_see_a_whole_site_during_rebuilds(small_site: Config) -> None:
    output = small_site.site.output_dir
    days = [date(2026, 2, 28), SMALL_SITE_DAY]
    versions: dict[str, set[bytes]] = {"index.html": set(), "feed.xml": set()}
    for day in days:
        site.build_site(small_site, day)
        for name in versions:
            versions[name].add((output / name).read_bytes())
    stop = threading.Event()
    seen: list[tuple[str, bytes]] = []
    missing: list[str] = []

    def read() -> None:
        while not stop.is_set():
            for name in versions:
                try:
                    seen.append((name, (output / name).read_bytes()))
                except FileNotFoundError:
                    missing.append(name)

    reader = threading.Thread(target=read)
    reader.start()
    try:
        for n in range(20):
            site.build_site(small_site, days[n % 2])
    finally:
        stop.set()
        reader.join()
    assert seen
    for name, data in seen:
        assert data in versions[name], f"{name} was read half-written"
    assert leftovers(output) == []
    if exchange_supported(output.parent):
        # The folders trade places in one step: a reader never finds the site missing.
        assert missing == []


def exchange_supported(folder: Path) -> bool:
    """Return whether this file system swaps two folders in one step."""
    first, second = folder / "probe-a", folder / "probe-b"
    first.mkdir()
    second.mkdir()
    try:
        return site_output.exchange(first, second)
    finally:
        first.rmdir()
        second.rmdir()


def test_new_output_folder_is_readable_by_others(small_site: Config) -> None:
    output = small_site.site.output_dir
    site.build_site(small_site, SMALL_SITE_DAY)
    assert stat.S_IMODE(output.stat().st_mode) == 0o755
    output.chmod(0o750)
    site.build_site(small_site, SMALL_SITE_DAY)
    assert stat.S_IMODE(output.stat().st_mode) == 0o750


def test_build_into_another_folder(small_site: Config, tmp_path: Path) -> None:
    report = site.build_site(small_site, SMALL_SITE_DAY, out=tmp_path / "elsewhere" / "www")
    assert set(snapshot(tmp_path / "elsewhere" / "www")) == SMALL_SITE_FILES
    assert report.output_dir == tmp_path / "elsewhere" / "www"
    assert not small_site.site.output_dir.exists()


def test_output_that_is_a_file_is_refused(small_site: Config, tmp_path: Path) -> None:
    target = tmp_path / "occupied"
    target.write_text("not a folder", encoding="utf-8")
    with pytest.raises(OutputError, match="not a folder"):
        site.build_site(small_site, SMALL_SITE_DAY, out=target)
    assert target.read_text(encoding="utf-8") == "not a folder"


def test_broken_articles_are_reported_and_the_rest_published(
    small_site: Config, write_file: WriteFile
) -> None:
    write_file("broken.md", "---\ntitle: x\ndate: 2023-02-30\n---\n")
    report = site.build_site(small_site, SMALL_SITE_DAY)
    assert not report.ok
    assert [(e.path.name if e.path else None, e.line, e.field) for e in report.errors] == [
        ("broken.md", 3, "date")]
    assert set(snapshot(small_site.site.output_dir)) == SMALL_SITE_FILES


def test_given_articles_are_used_instead_of_the_content_folder(small_site: Config) -> None:
    loaded = load_articles(small_site.site.content_dir)
    only_leap = [a for a in loaded.articles if a.slug == "leap"]
    report = site.build_site(small_site, SMALL_SITE_DAY, articles=only_leap)
    files = set(snapshot(small_site.site.output_dir))
    assert {f for f in files if f.startswith("articles/")} == {"articles/leap/index.html"}
    assert report.pages == 2
    assert site.build_site(small_site, SMALL_SITE_DAY, articles=loaded).pages == 6


def test_pages_drop_characters_html_cannot_carry(
    small_site: Config, write_file: WriteFile
) -> None:
    write_file("ctrl.txt", "date 2025-01-01 Control\x01 chars\x7f here. Body\x00 text.")
    site.build_site(small_site, SMALL_SITE_DAY)
    page = (small_site.site.output_dir / "articles/ctrl/index.html").read_text(encoding="utf-8")
    assert "<h1>Control chars here</h1>" in page
    assert not re.search("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]", page)


def test_user_templates_replace_packaged_ones_by_name(small_site: Config, tmp_path: Path) -> None:
    config = with_templates(small_site, tmp_path / "look", style_css="body { color: teal; }\n")
    site.build_site(config, SMALL_SITE_DAY)
    output = config.site.output_dir
    assert (output / "style.css").read_text(encoding="utf-8") == "body { color: teal; }\n"
    assert "<h1>Two people walk on the Moon</h1>" in (
        output / "articles/moon/index.html").read_text(encoding="utf-8")


def test_subscribe_block_can_be_replaced_by_a_child_template(
    small_site: Config, tmp_path: Path
) -> None:
    config = with_templates(
        small_site, tmp_path / "web",
        signup_html=('{% extends "index.html" %}\n'
                     '{% block subscribe %}<form id="signup"></form>{% endblock %}\n'),
        bare_html='{% extends "index.html" %}\n{% block subscribe %}{% endblock %}\n')
    calendar = Calendar(load_articles(config.site.content_dir).articles)
    env = make_environment(config.site.templates_dir)
    bare = pages.render_index(config.site, calendar, SMALL_SITE_DAY, env, "bare.html")
    filled = pages.render_index(config.site, calendar, SMALL_SITE_DAY, env, "signup.html")
    assert "<form" not in bare
    assert filled.index('<form id="signup">') < filled.index('id="archive"')
    assert filled.replace('<form id="signup"></form>', "") == bare


def test_check_reports_a_template_error_once(small_site: Config, tmp_path: Path) -> None:
    config = with_templates(small_site, tmp_path / "templates",
                            article_html="{{ article.title }} {{ no_such_name }}\n")
    problems = site.check_site(config, SMALL_SITE_DAY)
    assert len(problems) == 1
    assert isinstance(problems[0], TemplateError)
    assert str(problems[0]).startswith(f"{tmp_path / 'templates/article.html'}:1: variable: ")
    assert not config.site.output_dir.exists()


def test_missing_templates_folder_is_a_config_error(small_site: Config, tmp_path: Path) -> None:
    config = dataclasses.replace(small_site, site=dataclasses.replace(
        small_site.site, templates_dir=tmp_path / "absent"))
    with pytest.raises(ConfigError) as caught:
        site.build_site(config, SMALL_SITE_DAY)
    assert caught.value.field == "site.templates_dir"


def test_sample_content_builds_without_errors(
    make_config: Callable[..., Config], tmp_path: Path
) -> None:
    config = make_config(content_dir=str(REPO / "content"))
    articles = [p for p in (REPO / "content").iterdir() if p.suffix in (".md", ".txt")]
    assert site.check_site(config, date(2026, 7, 20)) == []
    report = site.build_site(config, date(2026, 7, 20))
    assert report.ok
    assert report.pages == len(articles) + 1


def test_upcoming_events_lists_the_coming_days(small_site: Config) -> None:
    events, errors = site.upcoming_events(small_site, date(2026, 2, 27), 3)
    assert errors == []
    assert [(e.on, e.article.slug, e.years_since) for e in events] == [
        (date(2026, 2, 28), "leap", 2)]
    events, _ = site.upcoming_events(small_site, date(2026, 3, 14), 1)
    assert [(e.article.slug, e.years_since) for e in events] == [("pi", 6)]


def test_site_today_uses_the_site_zone(make_config: Callable[..., Config]) -> None:
    config = make_config(timezone="Pacific/Kiritimati")  # UTC+14
    assert local_date(datetime(2026, 1, 1, 11, 0, tzinfo=UTC), config.site.zone) == date(2026, 1, 2)


@pytest.mark.browser
def test_pages_fit_a_phone_screen(small_site: Config, chromium: Browser) -> None:
    site.build_site(small_site, date(2026, 2, 28))
    output = small_site.site.output_dir
    context = chromium.new_context(viewport={"width": 360, "height": 740})
    try:
        page = context.new_page()
        for name in ("index.html", "articles/moon/index.html"):
            page.goto((output / name).as_uri())
            # No sideways scrolling, and the stylesheet was found and applied.
            assert page.evaluate("document.documentElement.scrollWidth") <= 360, name
            assert page.evaluate("getComputedStyle(document.body).maxWidth") != "none"
            feeds = page.eval_on_selector_all(
                'link[rel="alternate"]', "links => links.map(l => l.href)")
            assert feeds == [f"{BASE_URL}feed.xml", f"{BASE_URL}atom.xml",
                             f"{BASE_URL}feed.json", f"{BASE_URL}anniversaries.ics"]
        page.goto((output / "articles/moon/index.html").as_uri() + "#year-2024")
        assert page.evaluate("document.querySelector(':target').id") == "year-2024"
    finally:
        context.close()
