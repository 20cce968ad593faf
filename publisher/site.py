"""The static archive: pages and feeds rendered into a temporary folder, then swapped in."""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import errno
import fcntl
import functools
import mmap
import multiprocessing
import os
import pickle
import shutil
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import date, timedelta
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, Generic, NamedTuple, TypeVar, cast

import jinja2
from markupsafe import Markup

from publisher.calendar import Calendar, Event, local_date, utcnow
from publisher.config import Config, SiteConfig
from publisher.content import (
    Article,
    ArticleCache,
    FileStamp,
    LoadResult,
    content_stamps,
    load_articles,
)
from publisher.errors import ContentError, OutputError, PublisherError, TemplateError
from publisher.feeds import FEEDS, build_feeds, clean_text, clean_utf8
from publisher.ics import ICS_NAME, build_ics
from publisher.render import config_environment, language_of, render, template_file
from publisher.sitemap import (
    ROBOTS_NAME,
    robots_txt,
    sitemap_entries,
    sitemap_files,
    sitemap_names,
)

INDEX_TEMPLATE = "index.html"
ARTICLE_TEMPLATE = "article.html"
STYLESHEET = "style.css"
ICON = "favicon.ico"  # copied as it is: browsers and feed readers ask for /favicon.ico
RECENT_EVENTS = 12  # how many earlier appearances the index lists under "recent"
# Threads writing finished pages while the next ones render, in a build without a helper
# process: creating thousands of folders and files is kernel time that another core can spend
# while Jinja2 holds the GIL.
WRITER_THREADS = 2
WRITES_AHEAD = 64  # rendered pages waiting for a writer, at most
PARALLEL_FROM = 1000  # from this many article files or pages, a helper process takes a share
# The helper's share of the article files: this process also makes the index and the feeds,
# and takes over what the helper parsed.
HELPER_SHARE = 0.54
# In every built site: the latest Last-Modified second any of its files was given, so that the
# next build (after a restart, or by another instance) dates its new files strictly later.
MODIFIED_MARK = ".modified"

FileMaker = Callable[[], bytes]
T = TypeVar("T")
OutputStamp = tuple[str, int, int, int]  # relative path, inode, size, mtime


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
    changed_feeds: list[str] = field(default_factory=list)  # feed files given new bytes

    @property
    def ok(self) -> bool:
        """Return whether every article loaded."""
        return not self.errors


def site_environment(config: Config) -> jinja2.Environment:
    """Return the Jinja2 environment of the site, checking that ``templates_dir`` exists."""
    return config_environment(config)


def load_calendar(config: Config, cache: ArticleCache | None = None
                  ) -> tuple[Calendar, list[ContentError]]:
    """Load the content folder into a calendar; return it with the files that failed."""
    result = load_articles(config.site.content_dir, cache)
    return Calendar(result.articles, config.site.leap_day), result.errors


def upcoming_events(config: Config, start: date | None = None, days: int = 30, *,
                    cache: ArticleCache | None = None) -> tuple[list[Event], list[ContentError]]:
    """Return the appearances in ``days`` days from ``start`` (default today), and load errors."""
    calendar, errors = load_calendar(config, cache)
    first = start or local_date(utcnow(), config.site.zone)
    return list(calendar.between(first, last_day(first, days))), errors


def last_day(first: date, days: int) -> date:
    """Return the last of ``days`` days from ``first``, or the last day there is."""
    return date.fromordinal(min(first.toordinal() + days - 1, date.max.toordinal()))


class PageFeed(NamedTuple):
    """One feed as every page links to it (``feed.url`` or ``feed["url"]`` in a template)."""

    url: str
    type: str  # the media type
    title: str  # the site's title and the format
    label: str  # the format: RSS, Atom, JSON Feed


def feed_links(site: SiteConfig) -> list[PageFeed]:
    """Return the feeds for ``<link rel="alternate">``: url, type and title of each."""
    # Named fields rather than a mapping: a template reads them on every page, and Jinja2
    # tries an attribute first.
    return [PageFeed(site.url(feed.name), feed.media_type, f"{site.title} ({feed.label})",
                     feed.label) for feed in FEEDS]


def _page(env: jinja2.Environment, template: str, site: SiteConfig, day: date, root: str,
          page_url: str, values: Mapping[str, Any], feeds: list[PageFeed]) -> str:
    """Render one page as the template gives it, before clean_text."""
    context = {"site": site, "day": day, "root": root, "service_root": site.url(),
               "page_url": page_url, "feeds": feeds, **values}
    return render(env, template, context)


def render_index(site: SiteConfig, calendar: Calendar, day: date, env: jinja2.Environment,
                 template: str = INDEX_TEMPLATE) -> str:
    """Render the front page as it stands on ``day`` (``template`` may extend index.html)."""
    # One pass over the finished page removes what HTML and UTF-8 cannot carry, wherever
    # it came from (article, configuration or template).
    return clean_text(_index_page(site, calendar, day, env, feed_links(site), template))


def _index_page(site: SiteConfig, calendar: Calendar, day: date, env: jinja2.Environment,
                feeds: list[PageFeed], template: str = INDEX_TEMPLATE) -> str:
    return _page(env, template, site, day, "./", site.url(), {
        "today": calendar.events_on(day),
        "recent": calendar.recent(day - timedelta(days=1), RECENT_EVENTS),
        "next_anniversaries": calendar.next_anniversaries(day),
        "archive": calendar.published(day),
    }, feeds)


def render_article(site: SiteConfig, calendar: Calendar, article: Article, day: date,
                   env: jinja2.Environment) -> str:
    """Render one article's page as it stands on ``day``."""
    return clean_text(_article_page(site, calendar, article, day, env, feed_links(site)))


def _article_page(site: SiteConfig, calendar: Calendar, article: Article, day: date,
                  env: jinja2.Environment, feeds: list[PageFeed]) -> str:
    return _page(env, ARTICLE_TEMPLATE, site, day, "../../", site.article_url(article.slug), {
        "locale": language_of(article.lang, site.language),
        "article": article,
        "body": Markup(article.body_html),
        "history": calendar.history(article, day),
        "next_anniversary": calendar.next_anniversary(article, day),
    }, feeds)


def render_stylesheet(site: SiteConfig, env: jinja2.Environment) -> str:
    """Render the stylesheet (a template, so a user's ``style.css`` replaces it)."""
    return render(env, STYLESHEET, {"site": site})


def site_files(site: SiteConfig, calendar: Calendar, day: date, env: jinja2.Environment,
               pages: Sequence[Article] | None = None) -> Iterator[tuple[str, FileMaker]]:
    """Yield every file of the site on ``day`` as (relative path, function making its bytes).

    ``pages``: only these articles' pages (default: every article published by ``day``).
    """
    yield STYLESHEET, lambda: render_stylesheet(site, env).encode("utf-8")
    yield ICON, lambda: template_file(env, ICON)
    yield "index.html", lambda: clean_utf8(_index_page(site, calendar, day, env,
                                                       feed_links(site)))
    yield from article_pages(site, calendar, calendar.published(day) if pages is None else pages,
                             day, env)
    feeds = functools.cache(lambda: build_feeds(site, calendar, day, env))
    for feed in FEEDS:
        yield feed.name, functools.partial(lambda name: feeds()[name], feed.name)
    yield ICS_NAME, lambda: build_ics(site, calendar, day)
    maps = functools.cache(lambda: sitemap_files(site, sitemap_entries(site, calendar, day)))
    for name in sitemap_names(1 + len(calendar.published(day))):
        yield name, functools.partial(lambda name: maps()[name], name)
    yield ROBOTS_NAME, lambda: robots_txt(site)


def article_pages(site: SiteConfig, calendar: Calendar, articles: Iterable[Article], day: date,
                  env: jinja2.Environment) -> Iterator[tuple[str, FileMaker]]:
    """Yield the page of each article as (relative path, function making its bytes)."""
    feeds = feed_links(site)  # the same on every page: built once
    for article in articles:
        yield (f"articles/{article.slug}/index.html",
               functools.partial(_article_bytes, site, calendar, article, day, env, feeds))


def _article_bytes(site: SiteConfig, calendar: Calendar, article: Article, day: date,
                   env: jinja2.Environment, feeds: list[PageFeed]) -> bytes:
    return clean_utf8(_article_page(site, calendar, article, day, env, feeds))


def _loaded(config: Config, articles: LoadResult | Sequence[Article] | None,
            cache: ArticleCache | None, stamps: tuple[FileStamp, ...] | None = None
            ) -> LoadResult:
    if articles is None:
        return load_articles(config.site.content_dir, cache, stamps=stamps)
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
    day = day or local_date(utcnow(), config.site.zone)
    for _, make in site_files(config.site, calendar, day, env):
        try:
            make()
        except TemplateError as exc:
            # A broken template fails the same way on every page: report it once.
            if str(exc) not in seen:
                seen.add(str(exc))
                problems.append(exc)
    return problems


@dataclass(frozen=True)
class _Built:
    """What one build put into an output folder, so that a rebuild can tell nothing changed."""

    inputs: tuple[object, ...]  # site settings, day, template files
    source: tuple[object, ...]  # the article files' stamps, or the given articles' identities
    kept: tuple[Article, ...]  # the given articles, held so that their identities stay theirs
    files: tuple[OutputStamp, ...]  # every file written, as this build left it
    report: BuildReport

    def still_holds(self, inputs: tuple[object, ...], source: tuple[object, ...],
                    target: Path) -> bool:
        """Return whether the inputs are the same and every file is as this build left it."""
        if inputs != self.inputs or source != self.source:
            return False
        try:
            return _stamps(target, (stamp[0] for stamp in self.files)) == self.files
        except OSError:
            return False  # a file was removed: build again

    def again(self) -> BuildReport:
        """Return this build's report for a rebuild that found nothing to do."""
        return dataclasses.replace(self.report, errors=list(self.report.errors), written=0,
                                   unchanged=len(self.files), changed_feeds=[])


# What this process last built into each output folder (the daemon and benchmarks rebuild in
# one process; a new process always builds).
_last_builds: dict[Path, _Built] = {}
_last_builds_lock = threading.Lock()


def _stamps(target: Path, relatives: Iterable[str]) -> tuple[OutputStamp, ...]:
    stamps = []
    for relative in relatives:
        stat = os.stat(os.path.join(target, relative))
        stamps.append((relative, stat.st_ino, stat.st_size, stat.st_mtime_ns))
    return tuple(stamps)


def _template_stamps(env: jinja2.Environment) -> tuple[object, ...] | None:
    """Return the template files the environment can load, with their sizes and mtimes."""
    loader = env.loader
    if not isinstance(loader, jinja2.FileSystemLoader):
        return None  # templates from elsewhere: no way to tell they did not change
    stamps: list[object] = []
    for folder in loader.searchpath:
        for root, _dirs, names in os.walk(folder):
            for name in sorted(names):
                stat = os.stat(os.path.join(root, name))
                stamps.append((root, name, stat.st_size, stat.st_mtime_ns))
    return tuple(stamps)


def build_site(config: Config, day: date | None = None, out: Path | None = None,
               articles: LoadResult | Sequence[Article] | None = None, *,
               cache: ArticleCache | None = None,
               env: jinja2.Environment | None = None) -> BuildReport:
    """Write the site as it stands on ``day`` into ``out`` (default: ``site.output_dir``).

    Broken articles are left out and listed in the report; a template or output failure
    raises and leaves the previous site in place. When this process built the same folder
    from the same article files (or articles), templates and day before, and finds its files
    as it left them, nothing is loaded, rendered or written.
    """
    site = config.site
    day = day or local_date(utcnow(), site.zone)
    target = (out or site.output_dir).absolute()
    env = env or site_environment(config)
    templates = _template_stamps(env)
    inputs = (site, day, templates)
    # Stamped before loading: a file edited meanwhile costs one more build, never a stale one.
    stamps = content_stamps(site.content_dir) if articles is None else None
    with _build_lock(target):
        with _last_builds_lock:
            previous = _last_builds.pop(target, None)
        if (stamps is not None and previous is not None and templates is not None
                and previous.still_holds(inputs, stamps, target)):
            built = previous
        elif stamps is not None and len(stamps) >= PARALLEL_FROM and _Helper.possible():
            built = _build_shared(config, day, env, target, cache or ArticleCache(), stamps,
                                  inputs)
        else:
            loaded = _loaded(config, articles, cache, stamps)
            kept = tuple(loaded.articles) if stamps is None else ()
            source = stamps if stamps is not None else (
                *map(id, kept), *(str(error) for error in loaded.errors))
            if (previous is not None and templates is not None and stamps is None
                    and previous.still_holds(inputs, source, target)):
                built = previous
            else:
                built = _build(config, day, env, target, loaded, inputs, source, kept)
        if templates is not None:
            with _last_builds_lock:
                _last_builds[target] = built
    if built is previous:
        return built.again()
    return dataclasses.replace(built.report, errors=list(built.report.errors))


def _build(config: Config, day: date, env: jinja2.Environment, target: Path,
           loaded: LoadResult, inputs: tuple[object, ...], source: tuple[object, ...],
           kept: tuple[Article, ...]) -> _Built:
    """Build the site into ``target`` and return what was built."""
    calendar = Calendar(loaded.articles, config.site.leap_day)
    report = BuildReport(day=day, output_dir=target, errors=list(loaded.errors))
    files = _write_site(config, calendar, day, env, target, report)
    _count(report, config.site, calendar)
    return _Built(inputs, source, kept, files, report)


def _count(report: BuildReport, site: SiteConfig, calendar: Calendar) -> None:
    """Fill in the report's counts of pages, feeds and events."""
    day = report.day
    report.pages = 1 + sum(1 for article in calendar.articles if article.date <= day)
    report.feeds = len(FEEDS)
    report.events_today = len(calendar.events_on(day))
    report.feed_items = len(calendar.recent(day, site.feed_items))


@dataclass(frozen=True)
class _Written:
    """What one process wrote into the staging folder."""

    files: list[OutputStamp]  # each file placed, as it was left
    kept: set[str]  # those linked to the previous site's file rather than written

    @property
    def written(self) -> int:
        """Return how many files got new bytes."""
        return len(self.files) - len(self.kept)

    def changed_feeds(self) -> list[str]:
        """Return the feed files among those that got new bytes, in the order of FEEDS."""
        new = {stamp[0] for stamp in self.files} - self.kept
        return [feed.name for feed in FEEDS if feed.name in new]


@dataclass(frozen=True)
class _Output:
    """Where one build writes, what it replaces, and the date it gives files with new bytes."""

    staging: Path
    previous: Path | None  # the site being replaced (None: a first build, nothing to compare)
    last: int  # the latest Last-Modified second of the previous site, as its mark says
    modified: int  # Unix seconds: the mtime, hence Last-Modified, of each file with new bytes

    @classmethod
    def next_to(cls, target: Path) -> _Output:
        """Make the staging folder next to ``target`` and date this build's new files.

        Strictly later than any date the previous site gave, even within the same second:
        a feed reader that sends that date as If-Modified-Since (libcurl's do) throws away an
        answer that is not newer. A few builds within one second thus date their files a few
        seconds ahead of the clock; strictly increasing dates matter more to readers.
        """
        previous = target if target.is_dir() else None
        last = _last_modified(previous)
        return cls(_staging_folder(target), previous, last, max(int(time.time()), last + 1))

    def publish(self, target: Path, wrote: bool) -> None:
        """Mark the staging folder with its latest date, then swap it in.

        ``wrote``: whether any file got new bytes, and so this build's date.
        """
        latest = self.modified if wrote else self.last
        (self.staging / MODIFIED_MARK).write_text(f"{latest}\n", encoding="ascii")
        _swap_in(self.staging, target)


def _last_modified(site: Path | None) -> int:
    """Return the latest Last-Modified second a built site gave any of its files (0: none)."""
    if site is None:
        return 0
    try:
        return int((site / MODIFIED_MARK).read_text(encoding="ascii"))
    except (OSError, ValueError):
        pass
    # No mark (e.g. deleted by hand): the newest file tells.
    newest = 0
    for folder, _dirs, names in os.walk(site):
        for name in names:
            with contextlib.suppress(OSError):
                newest = max(newest, int(os.stat(os.path.join(folder, name)).st_mtime))
    return newest


def _write_files(files: Iterable[tuple[str, FileMaker]], out: _Output,
                 threads: int = WRITER_THREADS) -> _Written:
    """Render each file and write it into the staging folder; return what was written.

    Files whose bytes equal the previous site's are kept (linked) rather than written.
    ``threads``: how many threads write while the next files render (0: each file in turn).
    """
    done = _Written([], set())
    for relative, placed in _placed(files, out, threads):
        if placed is None:
            continue  # placed by the other process: reconciled at the end
        new, stat = placed
        done.files.append((relative, stat.st_ino, stat.st_size, stat.st_mtime_ns))
        if not new:
            done.kept.add(relative)
    return done


def _placed(files: Iterable[tuple[str, FileMaker]], out: _Output,
            threads: int) -> Iterator[tuple[str, tuple[bool, os.stat_result] | None]]:
    """Render and place each file; yield it with what :func:`_place` returned, in order."""
    staging, previous, modified = out.staging, out.previous, out.modified * 1_000_000_000

    def place(relative: str, data: bytes) -> tuple[bool, os.stat_result] | None:
        return _place(os.path.join(staging, relative),
                      None if previous is None else os.path.join(previous, relative), data,
                      modified)

    if not threads:
        for relative, make in files:
            yield relative, place(relative, make())
        return
    with ThreadPoolExecutor(threads, thread_name_prefix="site-writer") as writers:
        pending: deque[tuple[str, Future[tuple[bool, os.stat_result] | None]]] = deque()
        try:
            for relative, make in files:
                pending.append((relative, writers.submit(place, relative, make())))
                while len(pending) > WRITES_AHEAD or (pending and pending[0][1].done()):
                    done, future = pending.popleft()
                    yield done, future.result()
            while pending:
                done, future = pending.popleft()
                yield done, future.result()
        finally:
            for _, future in pending:
                future.cancel()


Post = Callable[[object], None]


class _Helper(Generic[T]):
    """Work running in a forked copy of this process, and the way to what it sends back.

    The work is given a function to post one early result before it returns its final one.
    The posted result travels through ``room`` bytes of memory shared with the copy, when it
    fits there (only the part used is ever allocated): through a pipe, a large result would
    take longer, and the copy would wait until this process reads it.
    """

    def __init__(self, work: Callable[[Post], T], room: int) -> None:
        context = multiprocessing.get_context("fork")
        self._receiver, sender = context.Pipe(duplex=False)
        self._shared: mmap.mmap | None = None
        if room:
            with contextlib.suppress(OSError):  # e.g. more than the system would reserve
                self._shared = mmap.mmap(-1, room)
        self._child = context.Process(target=_run_helper, args=(work, sender, self._shared),
                                      name="site-helper", daemon=True)
        self._child.start()
        sender.close()

    @staticmethod
    def possible() -> bool:
        """Return whether this process may start a helper.

        Only where forking is safe (no other thread runs) and a second core can run the copy.
        """
        # A copy of a process running other threads (the daemon's clock, the web service)
        # could inherit a lock held half-way by one of them.
        return ((os.cpu_count() or 1) >= 2 and threading.active_count() == 1
                and "fork" in multiprocessing.get_all_start_methods())

    @staticmethod
    def start(work: Callable[[Post], T], room: int = 0) -> _Helper[T] | None:
        """Start ``work`` in a forked copy of this process; None where that is not safe."""
        return _Helper(work, room) if _Helper.possible() else None

    def posted(self) -> object:
        """Wait for the work's early result and return it (or raise the work's exception)."""
        return self._receive()

    def result(self) -> T:
        """Wait for the work to finish; return its result or raise its exception."""
        outcome = self._receive()
        self._child.join()
        return cast(T, outcome)

    def _receive(self) -> object:
        try:
            kind, value = self._receiver.recv()
        except EOFError:
            self._child.join()
            raise OutputError(f"the helper process ended with code {self._child.exitcode}",
                              field="output") from None
        if kind == "raised":
            raise value
        if kind == "shared":
            assert self._shared is not None
            with memoryview(self._shared)[:value] as posted:
                return pickle.loads(posted)
        return value

    def stop(self) -> None:
        """End the copy if it still runs (the work it was given is no longer wanted)."""
        if self._child.is_alive():
            self._child.terminate()
        self._child.join()
        self._receiver.close()
        if self._shared is not None:
            self._shared.close()


def _run_helper(work: Callable[[Post], object], sender: Connection,
                shared: mmap.mmap | None) -> None:
    def post(value: object) -> None:
        if shared is not None:
            try:
                pickle.Pickler(shared, pickle.HIGHEST_PROTOCOL).dump(value)
            except ValueError:  # larger than the room reserved: through the pipe instead
                pass
            else:
                sender.send(("shared", shared.tell()))
                return
        sender.send(("value", value))

    try:
        outcome: tuple[str, object] = ("value", work(post))
    except BaseException as exc:  # handed to the parent, which raises it
        outcome = ("raised", exc)
    sender.send(outcome)
    sender.close()


def _split(stamps: Sequence[FileStamp], share: float
           ) -> tuple[list[FileStamp], list[FileStamp]]:
    """Return about ``share`` of the files, spread evenly among them, and the others."""
    # Spread rather than cut: file names often follow dates, and an older article lists more
    # years, so a cut would hand one process more work.
    theirs: list[FileStamp] = []
    ours: list[FileStamp] = []
    for number, stamp in enumerate(stamps):
        (theirs if int((number + 1) * share) > int(number * share) else ours).append(stamp)
    return theirs, ours


@dataclass(frozen=True)
class _Share:
    """What one process wrote of the article pages, and whose page each is."""

    written: _Written
    sources: dict[str, str]  # relative path of each page to its article's file


def _build_shared(config: Config, day: date, env: jinja2.Environment, target: Path,
                  cache: ArticleCache, stamps: tuple[FileStamp, ...],
                  inputs: tuple[object, ...]) -> _Built:
    """Build the site from the article files on two cores, and return what was built.

    A forked copy of this process parses a share of the files and writes their pages, while
    this one does the same with the rest, then takes the copy's articles for the index, the
    feeds and the cache. Neither waits for the other until the end, where the pages written
    without knowing every article (of a slug that two files claim) are put right.
    """
    site = config.site
    theirs, ours = _split(stamps, HELPER_SHARE)
    out = _Output.next_to(target)
    # Room for the copy's parsed articles: each file's text twice (Markdown and HTML) and
    # some more; a larger result takes the pipe instead.
    room = sum(3 * size + 2048 for _, size, _ in cache.stale(theirs)) + (1 << 20)
    helper: _Helper[_Share] | None = None
    try:
        with _output_errors(target):
            helper = _Helper.start(functools.partial(
                _write_share, cache, stamps, theirs, site, day, env, out), room)
            if helper is None:  # no longer possible: this process takes every share
                ours = list(stamps)
            shares = [_write_share(cache, stamps, ours, site, day, env, out)]
            if helper is not None:
                cache.absorb(cast(ArticleCache, helper.posted()))
        loaded = load_articles(site.content_dir, cache, stamps=stamps)
        calendar = Calendar(loaded.articles, site.leap_day)
        with _output_errors(target):
            rest = _write_files(site_files(site, calendar, day, env, pages=()), out, 0)
            if helper is not None:
                shares.append(helper.result())
            pages = _reconcile(site, calendar, day, env, out, shares)
            out.publish(target, bool(rest.written + pages.written))
    finally:
        _clean_up(helper, out.staging)
    report = BuildReport(day=day, output_dir=target, errors=list(loaded.errors),
                         written=rest.written + pages.written,
                         unchanged=len(rest.kept) + len(pages.kept),
                         changed_feeds=rest.changed_feeds())
    _count(report, site, calendar)
    return _Built(inputs, stamps, (), (*rest.files, *pages.files), report)


def _write_share(cache: ArticleCache, stamps: Sequence[FileStamp], share: Sequence[FileStamp],
                 site: SiteConfig, day: date, env: jinja2.Environment, out: _Output,
                 post: Post | None = None) -> _Share:
    """Parse the share's files the cache lacks, then write the pages of its articles.

    ``post``: where a forked copy sends what it parsed, before it writes. A page is written
    for each article published by ``day`` that is the first, of those known here, to claim
    its slug.
    """
    parsed = ArticleCache().parse(cache.stale(share))
    if post is not None:
        post(parsed)
    cache.absorb(parsed)
    first: dict[str, str] = {}
    for name, article in cache.fresh(stamps):
        first.setdefault(article.slug, name)
    articles = [article for name, article in cache.fresh(share)
                if article.date <= day and first[article.slug] == name]
    calendar = Calendar(articles, site.leap_day)
    written = _write_files(article_pages(site, calendar, articles, day, env), out, 0)
    return _Share(written, {_page_path(article): str(article.source) for article in articles})


def _page_path(article: Article) -> str:
    return f"articles/{article.slug}/index.html"


def _reconcile(site: SiteConfig, calendar: Calendar, day: date, env: jinja2.Environment,
               out: _Output, shares: Sequence[_Share]) -> _Written:
    """Keep each page written for the right article, replace the others; return the pages.

    A process that did not know every article may have written a page for an article whose
    slug an earlier file claims, where the page belongs to that file's article or to none.
    """
    pages = {_page_path(article): article for article in calendar.published(day)}
    right = _Written([], set())
    for share in shares:
        for stamp in share.written.files:
            relative = stamp[0]
            article = pages.get(relative)
            if article is not None and share.sources[relative] == str(article.source):
                right.files.append(stamp)
                if relative in share.written.kept:
                    right.kept.add(relative)
            else:
                os.unlink(os.path.join(out.staging, relative))
                with contextlib.suppress(OSError):  # the folder stays if its page is missing
                    os.rmdir(os.path.dirname(os.path.join(out.staging, relative)))
    placed = {stamp[0] for stamp in right.files}
    missing = [article for relative, article in pages.items() if relative not in placed]
    fixed = _write_files(article_pages(site, calendar, missing, day, env), out, 0)
    right.files.extend(fixed.files)
    right.kept.update(fixed.kept)
    return right


def _clean_up(helper: _Helper[Any] | None, staging: Path) -> None:
    """Stop the helper if it still runs, and remove what is left of the staging folder."""
    if helper is not None:
        helper.stop()
    if staging.exists():
        shutil.rmtree(staging, ignore_errors=True)


def _write_site(config: Config, calendar: Calendar, day: date, env: jinja2.Environment,
                target: Path, report: BuildReport) -> tuple[OutputStamp, ...]:
    """Render every file into a staging folder, then swap it in; return the files written.

    A large site's article pages are shared with a forked copy of this process, so that
    rendering runs on two cores; the rest is written by this one.
    """
    published = calendar.published(day)
    out = _Output.next_to(target)
    helper: _Helper[_Written] | None = None
    try:
        with _output_errors(target):
            ours = published
            if len(published) >= PARALLEL_FROM:
                # Every other page each: an older article lists more years, so the newer and
                # the older half would not be equal work.
                theirs = article_pages(config.site, calendar, published[1::2], day, env)
                # Two processes keep both cores busy: writer threads would only add hand-overs.
                helper = _Helper.start(lambda _post: _write_files(theirs, out, 0))
                if helper is not None:
                    ours = published[0::2]
            results = [_write_files(site_files(config.site, calendar, day, env, ours), out,
                                    WRITER_THREADS if helper is None else 0)]
            if helper is not None:
                results.append(helper.result())
            out.publish(target, any(result.written for result in results))
    finally:
        _clean_up(helper, out.staging)
    report.written += sum(result.written for result in results)
    report.unchanged += sum(len(result.kept) for result in results)
    report.changed_feeds += [name for result in results for name in result.changed_feeds()]
    return tuple(stamp for result in results for stamp in result.files)


@contextlib.contextmanager
def _output_errors(target: Path) -> Iterator[None]:
    """Report a failure to write the site as an OutputError naming the file."""
    try:
        yield
    except OSError as exc:
        raise OutputError(exc.strerror or str(exc), path=exc.filename or target,
                          field="output") from None


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


def _place(path: str, previous: str | None, data: bytes, modified: int
           ) -> tuple[bool, os.stat_result] | None:
    """Put ``data`` at ``path``; hard-link the previous file instead when its bytes are equal.

    Return whether new bytes were written and the file's status as this build leaves it, or
    None where ``path`` exists already (placed by the other process of a shared build). An
    unchanged file keeps its inode and mtime, so HTTP caches and rsync see it as unchanged;
    new bytes get the mtime ``modified`` (nanoseconds). The old site is never modified in
    place, nor is a file once placed.
    """
    folder = os.path.dirname(path)
    try:
        os.mkdir(folder)  # a page's own folder: usually new
    except FileExistsError:
        pass
    except FileNotFoundError:
        os.makedirs(folder, exist_ok=True)
    if previous is not None:
        try:
            old = os.stat(previous)
            same = old.st_size == len(data) and _read(previous) == data
        except OSError:
            same = False
        if same:
            try:
                os.link(previous, path)
                return False, old
            except FileExistsError:
                return None
            except OSError:
                # e.g. a file system without hard links: write a copy, with the same date
                modified = old.st_mtime_ns
    # os-level calls: a file object would add a status and a terminal check per file.
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666)
    except FileExistsError:
        return None
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.utime(fd, ns=(modified, modified))
        return True, os.fstat(fd)
    finally:
        os.close(fd)


def _read(path: str) -> bytes:
    with open(path, "rb") as handle:
        return handle.read()


_RENAME_EXCHANGE = 2  # linux/fs.h


def _exchange(first: Path, second: Path) -> bool:
    """Swap two paths in one step (renameat2 RENAME_EXCHANGE); return False if unsupported."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_cwd = -100  # AT_FDCWD: the paths are absolute or relative to the working directory
    result = renameat2(at_cwd, os.fsencode(first), at_cwd, os.fsencode(second), _RENAME_EXCHANGE)
    if result == 0:
        return True
    error = ctypes.get_errno()
    if error in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):
        return False  # the kernel or the file system cannot exchange: fall back to two renames
    raise OSError(error, os.strerror(error), str(first))


def _swap_in(staging: Path, target: Path) -> None:
    """Replace ``target`` with ``staging``, so that readers see the old site or the new one."""
    if not target.exists():
        staging.rename(target)
        return
    retired = staging.with_name(staging.name.replace(".build-", ".old-", 1))
    # On Linux the two folders trade places in one system call: no reader ever finds the
    # target missing. Elsewhere the old folder is renamed away first, leaving a brief gap.
    if _exchange(staging, target):
        staging.rename(retired)
    else:
        target.rename(retired)
        try:
            staging.rename(target)
        except OSError:
            retired.rename(target)  # put the previous site back rather than leave none
            raise
    shutil.rmtree(retired, ignore_errors=True)
