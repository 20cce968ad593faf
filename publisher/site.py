"""The static archive: pages and feeds rendered into a temporary folder, then swapped in."""

from __future__ import annotations

import contextlib
import fcntl
import functools
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

import jinja2
from markupsafe import Markup

from publisher.calendar import Calendar, Event
from publisher.config import Config, SiteConfig
from publisher.content import Article, ArticleCache, LoadResult, load_articles
from publisher.errors import ConfigError, ContentError, OutputError, PublisherError, TemplateError
from publisher.feeds import FEEDS, build_feeds, clean_text
from publisher.render import make_environment, render

INDEX_TEMPLATE = "index.html"
ARTICLE_TEMPLATE = "article.html"
STYLESHEET = "style.css"
RECENT_EVENTS = 12  # how many earlier appearances the index lists under "recent"

FileMaker = Callable[[], bytes]


@dataclass
class BuildReport:
    """What one build wrote, and the articles it had to leave out."""

    day: date
    output_dir: Path
    pages: int = 0
    feeds: int = 0
    events_today: int = 0
    feed_items: int = 0
    written: int = 0
    unchanged: int = 0
    errors: list[ContentError] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Return whether every article loaded."""
        return not self.errors

    def summary(self) -> str:
        """Describe the build in one line."""
        return (
            f"built {self.day.isoformat()} into {self.output_dir}: {self.pages} pages, "
            f"{self.feeds} feeds ({self.feed_items} items, {self.events_today} today); "
            f"{self.written} files written, {self.unchanged} unchanged"
        )


def site_today(site: SiteConfig, now: datetime | None = None) -> date:
    """Return the current date in the site's zone (``now`` may be any aware instant)."""
    return (now or datetime.now(site.zone)).astimezone(site.zone).date()


def site_environment(config: Config) -> jinja2.Environment:
    """Return the Jinja2 environment of the site, checking that ``templates_dir`` exists."""
    templates = config.site.templates_dir
    if templates is not None and not templates.is_dir():
        raise ConfigError(f"templates folder {templates} does not exist", path=config.path,
                          field="site.templates_dir")
    return make_environment(templates)


def load_calendar(config: Config, cache: ArticleCache | None = None
                  ) -> tuple[Calendar, list[ContentError]]:
    """Load the content folder into a calendar; return it with the files that failed."""
    result = load_articles(config.site.content_dir, cache)
    return Calendar(result.articles, config.site.leap_day), result.errors


def upcoming_events(config: Config, start: date | None = None, days: int = 30, *,
                    cache: ArticleCache | None = None) -> tuple[list[Event], list[ContentError]]:
    """Return the appearances in ``days`` days from ``start`` (default today), and load errors."""
    calendar, errors = load_calendar(config, cache)
    first = start or site_today(config.site)
    return list(calendar.between(first, first + timedelta(days=days - 1))), errors


def feed_links(site: SiteConfig) -> list[dict[str, str]]:
    """Return the feeds for ``<link rel="alternate">``: url, type and title of each."""
    return [{"url": site.url(feed.name), "type": feed.media_type,
             "title": f"{site.title} ({feed.label})", "label": feed.label} for feed in FEEDS]


def _page(env: jinja2.Environment, template: str, site: SiteConfig, day: date, root: str,
          page_url: str, values: Mapping[str, Any]) -> str:
    context = {"site": site, "day": day, "root": root, "page_url": page_url,
               "feeds": feed_links(site), **values}
    # One pass over the finished page removes what HTML and UTF-8 cannot carry, wherever
    # it came from (article, configuration or template).
    return clean_text(render(env, template, context))


def render_index(site: SiteConfig, calendar: Calendar, day: date, env: jinja2.Environment,
                 template: str = INDEX_TEMPLATE) -> str:
    """Render the front page as it stands on ``day`` (``template`` may extend index.html)."""
    return _page(env, template, site, day, "./", site.url(), {
        "today": calendar.events_on(day),
        "recent": calendar.recent(day - timedelta(days=1), RECENT_EVENTS),
        "archive": calendar.published(day),
    })


def render_article(site: SiteConfig, calendar: Calendar, article: Article, day: date,
                   env: jinja2.Environment) -> str:
    """Render one article's page as it stands on ``day``."""
    return _page(env, ARTICLE_TEMPLATE, site, day, "../../", site.article_url(article.slug), {
        "article": article,
        "body": Markup(article.body_html),
        "history": calendar.history(article, day),
        "next_anniversary": calendar.next_anniversary(article, day),
    })


def render_stylesheet(site: SiteConfig, env: jinja2.Environment) -> str:
    """Render the stylesheet (a template, so a user's ``style.css`` replaces it)."""
    return render(env, STYLESHEET, {"site": site})


def site_files(site: SiteConfig, calendar: Calendar, day: date,
               env: jinja2.Environment) -> Iterator[tuple[str, FileMaker]]:
    """Yield every file of the site on ``day`` as (relative path, function making its bytes)."""
    yield STYLESHEET, lambda: render_stylesheet(site, env).encode("utf-8")
    yield "index.html", lambda: render_index(site, calendar, day, env).encode("utf-8")
    for article in calendar.published(day):
        yield (f"articles/{article.slug}/index.html",
               functools.partial(_article_bytes, site, calendar, article, day, env))
    feeds = functools.cache(lambda: build_feeds(site, calendar, day, env))
    for feed in FEEDS:
        yield feed.name, functools.partial(lambda name: feeds()[name], feed.name)


def _article_bytes(site: SiteConfig, calendar: Calendar, article: Article, day: date,
                   env: jinja2.Environment) -> bytes:
    return render_article(site, calendar, article, day, env).encode("utf-8")


def _loaded(config: Config, articles: LoadResult | Sequence[Article] | None,
            cache: ArticleCache | None) -> LoadResult:
    if articles is None:
        return load_articles(config.site.content_dir, cache)
    if isinstance(articles, LoadResult):
        return articles
    return LoadResult(articles=list(articles))


def check_site(config: Config, day: date | None = None, *,
               cache: ArticleCache | None = None) -> list[PublisherError]:
    """Load and render the whole site in memory; return every problem found, writing nothing."""
    env = site_environment(config)
    try:
        calendar, errors = load_calendar(config, cache)
    except ContentError as exc:
        return [exc]
    problems: list[PublisherError] = list(errors)
    seen: set[str] = set()
    for _, make in site_files(config.site, calendar, day or site_today(config.site), env):
        try:
            make()
        except TemplateError as exc:
            # A broken template fails the same way on every page: report it once.
            if str(exc) not in seen:
                seen.add(str(exc))
                problems.append(exc)
    return problems


def build_site(config: Config, day: date | None = None, out: Path | None = None,
               articles: LoadResult | Sequence[Article] | None = None, *,
               cache: ArticleCache | None = None,
               env: jinja2.Environment | None = None) -> BuildReport:
    """Write the site as it stands on ``day`` into ``out`` (default: ``site.output_dir``).

    Broken articles are left out and listed in the report; a template or output failure
    raises and leaves the previous site in place.
    """
    site = config.site
    day = day or site_today(site)
    target = (out or site.output_dir).absolute()
    loaded = _loaded(config, articles, cache)
    env = env or site_environment(config)
    calendar = Calendar(loaded.articles, site.leap_day)
    report = BuildReport(day=day, output_dir=target, errors=list(loaded.errors))
    with _build_lock(target):
        staging = _staging_folder(target)
        try:
            for relative, make in site_files(site, calendar, day, env):
                if _place(staging / relative, target / relative, make()):
                    report.written += 1
                else:
                    report.unchanged += 1
            _swap_in(staging, target)
        except OSError as exc:
            raise OutputError(exc.strerror or str(exc), path=exc.filename or target,
                              field="output") from None
        finally:
            if staging.exists():
                shutil.rmtree(staging, ignore_errors=True)
    report.pages = 1 + len(calendar.published(day))
    report.feeds = len(FEEDS)
    report.events_today = len(calendar.events_on(day))
    report.feed_items = len(calendar.recent(day, site.feed_items))
    return report


@contextlib.contextmanager
def _build_lock(target: Path) -> Iterator[None]:
    # Two builds of one site (the daemon and a manual `publisher build`) must not swap at once.
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.exists() and not target.is_dir():
        raise OutputError("exists and is not a folder", path=target, field="output")
    with open(target.parent / f".{target.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _staging_folder(target: Path) -> Path:
    # Next to the target, so that the final rename stays on one file system.
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.build-"))
    # mkdtemp makes the folder private; a web server running as another user must read it.
    mode = target.stat().st_mode & 0o7777 if target.is_dir() else 0o755
    staging.chmod(mode)
    return staging


def _place(path: Path, previous: Path, data: bytes) -> bool:
    """Put ``data`` at ``path``; hard-link the previous file instead when its bytes are equal.

    Return whether new bytes were written. An unchanged file keeps its inode and mtime, so
    HTTP caches and rsync see it as unchanged; the old site is never modified in place.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        same = previous.stat().st_size == len(data) and previous.read_bytes() == data
    except OSError:
        same = False
    if same:
        try:
            os.link(previous, path)
            return False
        except OSError:
            pass  # e.g. a file system without hard links: write a copy instead
    path.write_bytes(data)
    return True


def _swap_in(staging: Path, target: Path) -> None:
    """Replace ``target`` with ``staging``: rename the old away, the new in, delete the old."""
    if not target.exists():
        staging.rename(target)
        return
    retired = staging.with_name(staging.name.replace(".build-", ".old-", 1))
    target.rename(retired)
    try:
        staging.rename(target)
    except OSError:
        retired.rename(target)  # put the previous site back rather than leave none
        raise
    shutil.rmtree(retired, ignore_errors=True)
