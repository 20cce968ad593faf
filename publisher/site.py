"""The static archive: pages and feeds rendered into a temporary folder, then swapped in."""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import errno
import fcntl
import functools
import multiprocessing
import os
import shutil
import tempfile
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, Generic, TypeVar, cast

import jinja2
from markupsafe import Markup

from publisher.calendar import Calendar, Event
from publisher.config import Config, SiteConfig
from publisher.content import (
    Article,
    ArticleCache,
    FileStamp,
    LoadResult,
    content_stamps,
    load_articles,
)
from publisher.errors import ConfigError, ContentError, OutputError, PublisherError, TemplateError
from publisher.feeds import FEEDS, build_feeds, clean_text
from publisher.render import make_environment, render

INDEX_TEMPLATE = "index.html"
ARTICLE_TEMPLATE = "article.html"
STYLESHEET = "style.css"
RECENT_EVENTS = 12  # how many earlier appearances the index lists under "recent"
# Threads writing finished pages while the next ones render: creating thousands of folders and
# files is kernel time that another core can spend while Jinja2 holds the GIL.
WRITER_THREADS = 2
WRITES_AHEAD = 64  # rendered pages waiting for a writer, at most
PARALLEL_FROM = 1000  # from this many files to parse or pages to render, a helper takes half

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


def site_files(site: SiteConfig, calendar: Calendar, day: date, env: jinja2.Environment,
               pages: Sequence[Article] | None = None) -> Iterator[tuple[str, FileMaker]]:
    """Yield every file of the site on ``day`` as (relative path, function making its bytes).

    ``pages``: only these articles' pages (default: every article published by ``day``).
    """
    yield STYLESHEET, lambda: render_stylesheet(site, env).encode("utf-8")
    yield "index.html", lambda: render_index(site, calendar, day, env).encode("utf-8")
    yield from article_pages(site, calendar, calendar.published(day) if pages is None else pages,
                             day, env)
    feeds = functools.cache(lambda: build_feeds(site, calendar, day, env))
    for feed in FEEDS:
        yield feed.name, functools.partial(lambda name: feeds()[name], feed.name)


def article_pages(site: SiteConfig, calendar: Calendar, articles: Iterable[Article], day: date,
                  env: jinja2.Environment) -> Iterator[tuple[str, FileMaker]]:
    """Yield the page of each article as (relative path, function making its bytes)."""
    for article in articles:
        yield (f"articles/{article.slug}/index.html",
               functools.partial(_article_bytes, site, calendar, article, day, env))


def _article_bytes(site: SiteConfig, calendar: Calendar, article: Article, day: date,
                   env: jinja2.Environment) -> bytes:
    return render_article(site, calendar, article, day, env).encode("utf-8")


def _loaded(config: Config, articles: LoadResult | Sequence[Article] | None,
            cache: ArticleCache | None, stamps: tuple[FileStamp, ...] | None = None
            ) -> LoadResult:
    if articles is None:
        cache = cache or ArticleCache()
        if stamps is not None:
            _parse_in_parallel(cache, stamps)
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
                                   unchanged=len(self.files))


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
    day = day or site_today(site)
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
    site = config.site
    calendar = Calendar(loaded.articles, site.leap_day)
    report = BuildReport(day=day, output_dir=target, errors=list(loaded.errors))
    relatives = _write_site(config, calendar, day, env, target, report)
    report.pages = 1 + sum(1 for article in calendar.articles if article.date <= day)
    report.feeds = len(FEEDS)
    report.events_today = len(calendar.events_on(day))
    report.feed_items = len(calendar.recent(day, site.feed_items))
    return _Built(inputs, source, kept, _stamps(target, relatives), report)


@dataclass(frozen=True)
class _Written:
    """What one process wrote into the staging folder."""

    relatives: list[str]
    written: int
    unchanged: int


def _write_files(files: Iterable[tuple[str, FileMaker]], staging: Path, target: Path
                 ) -> _Written:
    """Render each file and have threads write it into ``staging`` meanwhile."""
    relatives: list[str] = []
    written = 0
    with ThreadPoolExecutor(WRITER_THREADS, thread_name_prefix="site-writer") as writers:
        pending: deque[Future[bool]] = deque()
        try:
            for relative, make in files:
                data = make()
                relatives.append(relative)
                pending.append(writers.submit(_place, staging / relative, target / relative,
                                              data))
                while len(pending) > WRITES_AHEAD or (pending and pending[0].done()):
                    written += pending.popleft().result()
            while pending:
                written += pending.popleft().result()
        finally:
            for future in pending:
                future.cancel()
    return _Written(relatives, written, len(relatives) - written)


class _Helper(Generic[T]):
    """Work running in a forked copy of this process, and the way to its result."""

    def __init__(self, work: Callable[[], T]) -> None:
        context = multiprocessing.get_context("fork")
        self._receiver, sender = context.Pipe(duplex=False)
        self._child = context.Process(target=_send_result, args=(work, sender),
                                      name="site-helper", daemon=True)
        self._child.start()
        sender.close()

    @staticmethod
    def start(work: Callable[[], T]) -> _Helper[T] | None:
        """Start ``work`` in a forked copy of this process; None where that is not safe.

        A copy of a process running other threads (the daemon's clock, the web service)
        could inherit a lock held half-way, so only a single-threaded process forks, and only
        where a second core can run the copy.
        """
        if ((os.cpu_count() or 1) < 2 or threading.active_count() > 1
                or "fork" not in multiprocessing.get_all_start_methods()):
            return None
        return _Helper(work)

    def result(self) -> T:
        """Wait for the work to finish; return its result or raise its exception."""
        try:
            outcome = self._receiver.recv()
        except EOFError:
            self._child.join()
            raise OutputError(f"the helper process ended with code {self._child.exitcode}",
                              field="output") from None
        finally:
            self._receiver.close()
        self._child.join()
        if isinstance(outcome, BaseException):
            raise outcome
        return cast(T, outcome)

    def stop(self) -> None:
        """End the copy if it still runs (the work it was given is no longer wanted)."""
        if self._child.is_alive():
            self._child.terminate()
        self._child.join()
        self._receiver.close()


def _send_result(work: Callable[[], object], sender: Connection) -> None:
    try:
        outcome = work()
    except BaseException as exc:  # handed to the parent, which raises it
        outcome = exc
    sender.send(outcome)
    sender.close()


def _parse_in_parallel(cache: ArticleCache, stamps: tuple[FileStamp, ...]) -> None:
    """Parse the files the cache lacks on two cores: a forked copy parses half of them."""
    stale = cache.stale(stamps)
    if len(stale) < PARALLEL_FROM:
        return
    half = len(stale) // 2
    helper = _Helper.start(functools.partial(ArticleCache().parse, stale[half:]))
    if helper is None:
        return  # load_articles parses them all
    try:
        cache.parse(stale[:half])
        cache.absorb(helper.result())
    finally:
        helper.stop()


def _write_site(config: Config, calendar: Calendar, day: date, env: jinja2.Environment,
                target: Path, report: BuildReport) -> list[str]:
    """Render every file into a staging folder, then swap it in; return the files written.

    A large site's article pages are shared with a forked copy of this process, so that
    rendering runs on two cores; the rest is written by this one.
    """
    published = calendar.published(day)
    staging = _staging_folder(target)
    helper: _Helper[_Written] | None = None
    try:
        ours = published
        if len(published) >= PARALLEL_FROM:
            half = len(published) // 2
            theirs = article_pages(config.site, calendar, published[half:], day, env)
            helper = _Helper.start(functools.partial(_write_files, theirs, staging, target))
            if helper is not None:
                ours = published[:half]
        results = [_write_files(site_files(config.site, calendar, day, env, ours), staging,
                                target)]
        if helper is not None:
            results.append(helper.result())
        _swap_in(staging, target)
    except OSError as exc:
        raise OutputError(exc.strerror or str(exc), path=exc.filename or target,
                          field="output") from None
    finally:
        if helper is not None:
            helper.stop()
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    report.written += sum(result.written for result in results)
    report.unchanged += sum(result.unchanged for result in results)
    return [relative for result in results for relative in result.relatives]


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
