"""One build of the site, in the order it happens: load, the day's view, the files, the output."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import gc
import marshal
import os
import threading
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING

from publisher.calendar import Calendar, local_date, utcnow
from publisher.config import Config, LeapDay, SiteConfig
from publisher.content import (
    Article,
    ArticleCache,
    ArticleHead,
    FileStamp,
    LoadResult,
    content_stamps,
    load_articles,
)
from publisher.errors import ContentError, PublisherError, TemplateError
from publisher.site import output
from publisher.site.output import InPlace, Manifest, Placing, Staging, Written
from publisher.site.view import DayView, day_view

if TYPE_CHECKING:
    from concurrent.futures import Future, ProcessPoolExecutor

    import jinja2

    from publisher.ics import Blocks
    from publisher.site.pages import SiteFile
    from publisher.websub import PingState

# From this many files, two processes: make bench, build.py, cold build <= 1.0 x Hugo.
PARALLEL_FROM = 1000


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
    pings: list[PingState] = field(default_factory=list)  # the hub's answers, when told

    @property
    def ok(self) -> bool:
        """Return whether every article loaded."""
        return not self.errors


def site_environment(config: Config) -> jinja2.Environment:
    """Return the Jinja2 environment of the site, checking that ``templates_dir`` exists."""
    from publisher.render import config_environment

    return config_environment(config)


def publish_site(config: Config, day: date | None = None, out: Path | None = None) -> BuildReport:
    """Build the site, then tell the WebSub hub (if any) which served feeds changed."""
    report = build_site(config, day, out=out)
    served = out is None or out.absolute() == config.site.output_dir.absolute()
    if config.site.websub_hub is not None and served:
        # Only the folder served at base_url is what the feed URLs name; the ledger and the
        # hub's client are loaded only then.
        from publisher import websub

        report.pings = websub.announce(config, report.changed_feeds)
    return report


def build_site(config: Config, day: date | None = None, out: Path | None = None,
               articles: LoadResult | Sequence[Article] | None = None, *,
               cache: ArticleCache | None = None,
               env: jinja2.Environment | None = None) -> BuildReport:
    """Write the site as it stands on ``day`` into ``out`` (default: ``site.output_dir``).

    Broken articles are left out and listed in the report; a template or output failure
    raises and leaves the previous site in place. When the last build of that folder (in
    any process) had the same settings, day, templates, code and article files, and its
    files are as it left them, nothing is loaded, rendered or written; when only some
    article files changed, only the files showing them are rendered.
    """
    site = config.site
    day = day or local_date(utcnow(), site.zone)
    target = (out or site.output_dir).absolute()
    # Stamped before loading: a file edited meanwhile costs one more build, never a stale one.
    content = content_stamps(site.content_dir) if articles is None else None
    code = output.package_fingerprint()
    with output.build_lock(target), _no_cycle_collection():
        last = output.load_manifest(target, code) if content is not None else None
        if last is not None and content is not None and (env is None or _template_folders(
                env) == last.folders):
            same = (site, day, _template_stamps(last.folders), code)
            if last.holds(same, content, target):
                return _again(last)
            if cache is None and same == last.inputs:
                cache = ArticleCache()  # what it parses serves the full build if it cannot
                edited = _edited(config, day, target, last, content, code, env, cache)
                if edited is not None:
                    return edited
        # Only now: make bench, build.py, again, nothing changed (new process) <= 0.05 x Hugo.
        from publisher.site.pages import site_files

        env = env or site_environment(config)
        folders = _template_folders(env)
        # Given articles, or templates from elsewhere, leave nothing to compare the next time.
        inputs = None if content is None or folders is None else (
            site, day, _template_stamps(folders), code)
        cache = cache if cache is not None else ArticleCache()
        loaded, parsed = _load(config, target, content, articles, cache, code)
        view = day_view(site, Calendar(loaded.articles, site.leap_day), day)
        files = _placing(site_files(view, _steady(env, output.compiled_templates(target))),
                         content, inputs, view.calendar.articles)
        keep = None if not parsed or content is None else functools.partial(
            _keep, target, code, content, parsed, cache)
        writer = _writer(target, last, inputs)
        try:
            with output.output_errors(target):
                written = _write(writer, target, files, len(view.published), keep)
        finally:
            writer.clean_up()
        report = _report(view, target, loaded, written)
        output.save_manifest(target, code, None if inputs is None or content is None
                             or folders is None else Manifest(
            inputs, folders, content, tuple(written.files), written.made_of, report))
    return dataclasses.replace(report, errors=list(report.errors))


@contextlib.contextmanager
def _no_cycle_collection() -> Iterator[None]:
    """Pause the collection of reference cycles while a build runs."""
    # A build makes tens of thousands of lasting objects and few cycles, which the collector
    # would scan over and over: make bench, build.py, one article edited (new process).
    paused = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if paused:
            # What the build made goes to the oldest generation unscanned, rather than being
            # scanned all at once by the first collection after it.
            gc.freeze()
            gc.unfreeze()
            gc.enable()


def _edited(config: Config, day: date, target: Path, last: Manifest,
            content: tuple[FileStamp, ...], code: tuple[object, ...],
            env: jinja2.Environment | None, cache: ArticleCache) -> BuildReport | None:
    """Update the site in place after edits of article bodies alone (None: other changes).

    The same inputs and files, every output file as the last build left it, and each edited
    file parsing to the fields it had: what every file is made of is as recorded, so only
    the files made of an edited file are rendered, from those articles alone.
    """
    # Neither the other articles nor the other files: make bench, build.py, one article
    # edited (new process) <= 0.1 x Hugo.
    if len(content) != len(last.content):
        return None
    edited: dict[str, FileStamp] = {}
    before: dict[str, object] = {}
    for stamp, was in zip(content, last.content, strict=True):
        if stamp != was:
            if not isinstance(was, tuple) or stamp[0] != was[0]:
                return None  # a file added, removed or renamed
            edited[stamp[0]], before[stamp[0]] = stamp, was
    if not edited or len(last.made_of) != len(last.files) or not last.intact(target):
        return None  # a file rendered by every build, or one changed by hand
    kept = output.load_kept(target, code, {output.kept_shard(name) for name in edited})
    heads = _kept_heads(kept.values(), before)
    cache.parse(edited.values())
    articles = []
    for name, size, mtime_ns in edited.values():
        try:
            article = cache.load(name, (size, mtime_ns))
        except ContentError:
            return None
        if heads.get(name) != article.head:
            return None
        articles.append(article)
    view = day_view(config.site, Calendar(articles, config.site.leap_day), day)
    env = _steady(env or site_environment(config), output.compiled_templates(target))
    from publisher.site.pages import site_files

    files = _placing(site_files(view, env, [a for a in articles if a.date <= view.day], ()),
                     tuple(edited.values()), last.inputs, articles)
    showing: dict[str, tuple[object, ...]] = {}
    for path, made in last.made_of.items():  # loops: a generator per file costs more
        if isinstance(made, tuple):
            for part in made:
                if isinstance(part, tuple) and part[0] in edited:
                    showing[path] = made
                    break
    if {path: made for path, made, _ in files} != {path: tuple(
            (part[0], edited[part[0]][1:]) if isinstance(part, tuple) and part[0] in edited
            else part for part in made) for path, made in showing.items()}:
        return None  # a feed among them: made of other articles too
    writer = InPlace.over(target, last)
    with output.output_errors(target):
        written = writer.rewrite(files)
        writer.publish(target, bool(written.written))
    _splice(target, code, kept, cache)
    report = dataclasses.replace(_again(last), written=written.written,
                                 unchanged=len(written.kept))
    output.save_manifest(target, code, Manifest(
        last.inputs, last.folders, content, tuple(written.files), written.made_of, report))
    return dataclasses.replace(report, errors=list(report.errors))


def _writer(target: Path, last: Manifest | None, inputs: tuple[object, ...] | None
            ) -> Staging | InPlace:
    """Return how to write: in place when only articles changed since a build left every
    file as it recorded, else staged and swapped in."""
    # In place: make bench, build.py, one article edited (new process) <= 0.1 x Hugo.
    if last is None or inputs is None or last.inputs != inputs:
        return Staging.next_to(target)
    if last.intact(target):
        return InPlace.over(target, last)
    return Staging.next_to(target, last)


def _again(last: Manifest) -> BuildReport:
    """Return the last build's report for a build that found nothing to do."""
    report = last.report
    assert isinstance(report, BuildReport)
    return dataclasses.replace(report, errors=list(report.errors), written=0,
                               unchanged=len(last.files), changed_feeds=[])


def _load(config: Config, target: Path, content: tuple[FileStamp, ...] | None,
          articles: LoadResult | Sequence[Article] | None, cache: ArticleCache,
          code: tuple[object, ...]) -> tuple[LoadResult, list[str]]:
    """Return the articles (given, or those of the files as stamped) and the files that had
    to be parsed."""
    if content is None:
        return (articles if isinstance(articles, LoadResult) else LoadResult(
            articles=list(articles or ()))), []
    from publisher import ics

    stale = cache.stale(content)
    if stale:
        ours = ArticleCache()
        ours.absorb(cache)
        for kept, bodies in output.load_kept(target, code).values():
            if isinstance(kept, bytes):
                ics.keep_blocks(_unpack(kept, bodies, cache))
        cache.absorb(ours)  # what this process parsed is at least as new
        stale = cache.stale(content)
        _parse(cache, stale)
    return (load_articles(config.site.content_dir, cache, stamps=content),
            [name for name, _, _ in stale])


def _keep(target: Path, code: tuple[object, ...], content: tuple[FileStamp, ...],
          parsed: Iterable[str], cache: ArticleCache) -> None:
    """Keep the parsed articles and their calendar events for the next build's process.

    Only the shards holding a file parsed by this build are written again.
    """
    from publisher import ics

    changed = {output.kept_shard(name) for name in parsed}
    shard_of = {name: shard for name, _, _ in content
                if (shard := output.kept_shard(name)) in changed}
    shards = {shard: ArticleCache() for shard in changed}
    for name, size, mtime_ns, result in cache.entries():
        if name in shard_of:
            shards[shard_of[name]].hold(name, size, mtime_ns, result)
    blocks: dict[ArticleHead, Blocks] = defaultdict(dict)
    for key, block in ics.kept_blocks().items():
        blocks[key[1]][key] = block
    for shard, keep in sorted(shards.items()):
        try:
            packed, bodies = _pack(keep, blocks)
        except ValueError:  # a value marshal cannot write: parsed again by the next process
            continue
        output.save_kept(target, code, shard, packed, bodies)


# Marshal, not pickle: make bench, build.py, one article edited (new process) <= 0.1 x Hugo.
def _pack(cache: ArticleCache, blocks: Mapping[ArticleHead, Blocks]) -> tuple[bytes, bytes]:
    """Return the parsed articles of ``cache`` with their calendar events, and their bodies."""
    import pickle

    rows: list[tuple[str, int, int, ArticleHead, int, int]] = []
    bodies: list[bytes] = []
    errors: list[tuple[str, int, int, ContentError]] = []
    settings: list[tuple[SiteConfig, LeapDay]] = []
    events: list[tuple[int, int, bytes]] = []
    for name, size, mtime_ns, result in cache.entries():
        if not isinstance(result, Article):
            errors.append((name, size, mtime_ns, result))
            continue
        for (site, _, leap_day), block in blocks.get(result.head, {}).items():
            if (site, leap_day) not in settings:
                settings.append((site, leap_day))
            events.append((len(rows), settings.index((site, leap_day)), block))
        bodies += (body.encode("utf-8", "surrogatepass")
                   for body in (result.body_html, result.body_text))
        rows.append((name, size, mtime_ns, result.head, len(bodies[-2]), len(bodies[-1])))
    return marshal.dumps((rows, pickle.dumps(errors, pickle.HIGHEST_PROTOCOL),
                          pickle.dumps(settings, pickle.HIGHEST_PROTOCOL), events)), b"".join(
        bodies)


def _unpack(data: bytes, bodies: output.TailReader, cache: ArticleCache) -> Blocks:
    """Put the articles :func:`_pack` kept into ``cache``; return their calendar events.

    Each article reads its bodies from ``bodies`` when first asked for them.
    """
    import pickle

    rows, errors, settings, events = marshal.loads(data)
    articles = []
    start = 0
    for name, size, mtime_ns, head, html, text in rows:
        articles.append(Article.from_head(head, functools.partial(
            _bodies, bodies, start, html, text)))
        cache.hold(name, size, mtime_ns, articles[-1])
        start += html + text
    for name, size, mtime_ns, error in pickle.loads(errors):
        cache.hold(name, size, mtime_ns, error)
    pairs = pickle.loads(settings)
    return {(pairs[pair][0], articles[number].head, pairs[pair][1]): block
            for number, pair, block in events}


def _kept_heads(kept: Iterable[tuple[object, output.TailReader]], files: Mapping[str, object]
                ) -> dict[str, ArticleHead]:
    """Return the fields but the bodies that ``files`` (stamps by path) parsed to, as kept;
    what was kept of another stamp of a file is left out."""
    heads = {}
    for data, _ in kept:
        if isinstance(data, bytes):
            for name, size, mtime_ns, head, _, _ in marshal.loads(data)[0]:
                if files.get(name) == (name, size, mtime_ns):
                    heads[name] = head
    return heads


def _splice(target: Path, code: tuple[object, ...],
            kept: Mapping[int, tuple[object, output.TailReader]], cache: ArticleCache) -> None:
    """Keep the articles of ``cache`` in place of what their files parsed to in ``kept``."""
    new = {name: (size, mtime_ns, result) for name, size, mtime_ns, result in cache.entries()
           if isinstance(result, Article)}
    for shard, (data, bodies) in kept.items():
        if not isinstance(data, bytes):
            continue
        rows, errors, settings, events = marshal.loads(data)
        old = bodies(0, sum(html + text for *_, html, text in rows))
        parts, start = [], 0
        for number, (name, size, mtime_ns, head, html, text) in enumerate(rows):
            if name in new:
                size, mtime_ns, article = new[name]
                parts += [body.encode("utf-8", "surrogatepass") for body in (
                    article.body_html, article.body_text)]
                rows[number] = (name, size, mtime_ns, head, len(parts[-2]), len(parts[-1]))
            else:
                parts.append(old[start:start + html + text])
            start += html + text
        output.save_kept(target, code, shard, marshal.dumps((rows, errors, settings, events)),
                         b"".join(parts))


def _bodies(bodies: output.TailReader, start: int, html: int, text: int) -> tuple[str, str]:
    data = bodies(start, html + text)
    return (str(data[:html], "utf-8", "surrogatepass"),
            str(data[html:], "utf-8", "surrogatepass"))


def _parse(cache: ArticleCache, stale: list[FileStamp]) -> None:
    """Parse the files the cache lacks; a large number of them on two cores."""
    if len(stale) < PARALLEL_FROM or not _may_fork():
        cache.parse(stale)
        return
    # Every other file: names often follow dates, and an older article lists more years.
    with _pool() as pool:
        theirs = pool.submit(_parse_share, stale[1::2])
        cache.parse(stale[0::2])
        cache.absorb(theirs.result())


def _parse_share(share: list[FileStamp]) -> ArticleCache:
    return ArticleCache().parse(share)


def _placing(files: Iterable[SiteFile], content: tuple[FileStamp, ...] | None,
             inputs: tuple[object, ...] | None, articles: Sequence[Article]) -> list[Placing]:
    """Return each file with what it is made of beyond the inputs (None: always rendered)."""
    stamps = {} if content is None else {name: (size, mtime) for name, size, mtime in content}
    heads = functools.cache(lambda: _heads(articles))

    def made_of(depends: tuple[Article | str, ...] | str | None) -> object:
        if inputs is None or depends is None:
            return None
        if isinstance(depends, str):  # HEADS: every field but the bodies of every article
            return heads()
        return tuple((part.file, stamps.get(part.file)) if isinstance(part, Article) else part
                     for part in depends)

    return [(file.path, made_of(file.depends), file.make) for file in files]


def _heads(articles: Sequence[Article]) -> bytes:
    """Return a digest of every field but the bodies of ``articles``, in order."""
    import hashlib

    # Version 2 writes no references, so equal fields always give equal bytes.
    return hashlib.blake2b(marshal.dumps([article.head for article in articles], 2),
                           digest_size=16).digest()


# A share of the files to place, as a forked worker finds it (set just before the fork).
_share: Callable[[], Written] | None = None
_kept: Callable[[], None] | None = None  # and the keeping of the articles, after it


def _write(writer: Staging | InPlace, target: Path, files: list[Placing], pages: int,
           keep: Callable[[], None] | None) -> Written:
    """Place every file and publish the site; keep the parsed articles (``keep``) meanwhile.

    On a large new site a worker process places every other page and the calendar, then
    keeps the articles and their calendar events while this process places the rest.
    """
    from publisher.ics import ICS_NAME

    global _share, _kept
    if isinstance(writer, InPlace) or pages < PARALLEL_FROM or not _may_fork():
        done = writer.write(files)
        writer.publish(target, bool(done.written or done.removed))
        if keep is not None:
            keep()
        return done
    # Spread rather than cut: an older article's page lists more years.
    theirs = [*files[1:pages:2], *(file for file in files[pages:] if file[0] == ICS_NAME)]
    ours = [*files[0:pages:2], *(file for file in files[pages:] if file[0] != ICS_NAME)]
    _share, _kept = (lambda: writer.write(theirs)), keep
    try:
        with _pool() as pool:
            placed: Future[Written] = pool.submit(_write_share)
            # Queued now, not after both shares: make bench, build.py, cold build <= 1.0 x Hugo.
            kept = pool.submit(_keep_share) if keep is not None else None
            done = writer.write(ours)
            done.add(placed.result())
            writer.publish(target, bool(done.written or done.removed))
            if kept is not None:
                kept.result()
    finally:
        _share = _kept = None
    return done


def _write_share() -> Written:
    assert _share is not None
    return _share()


def _keep_share() -> None:
    assert _kept is not None
    _kept()


def _may_fork() -> bool:
    """Return whether this process may fork workers: a second core, no other thread."""
    import multiprocessing

    # A copy of a process running other threads (the daemon's clock, the web service) could
    # inherit a lock held half-way by one of them.
    return ((os.cpu_count() or 1) >= 2 and threading.active_count() == 1
            and "fork" in multiprocessing.get_all_start_methods())


def _pool() -> ProcessPoolExecutor:
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    # Forked: the worker starts with this process's articles, templates and staging folder.
    return ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("fork"))


def _report(view: DayView, target: Path, loaded: LoadResult, written: Written) -> BuildReport:
    from publisher.feeds import FEEDS

    new = {stamp[0] for stamp in written.files} - written.kept
    return BuildReport(
        day=view.day, output_dir=target, pages=1 + len(view.published), feeds=len(FEEDS),
        events_today=len(view.today), feed_items=len(view.feed_events),
        written=written.written, unchanged=len(written.kept), errors=list(loaded.errors),
        changed_feeds=[feed.name for feed in FEEDS if feed.name in new])


def _steady(env: jinja2.Environment, compiled: Path) -> jinja2.Environment:
    """Return the environment for one build: templates checked once, compiled into ``compiled``."""
    import jinja2

    # Each file looked at once, not twice a page: make bench, build.py, cold build <= 1.0 x Hugo.
    # Compiled templates kept: make bench, build.py, one article edited (new process).
    steady = env.overlay(auto_reload=False,
                         bytecode_cache=jinja2.FileSystemBytecodeCache(str(compiled)))
    if steady.cache is not None:
        for key, template in list(steady.cache.items()):
            if not template.is_up_to_date:
                del steady.cache[key]
    return steady


def _template_folders(env: jinja2.Environment) -> tuple[str, ...] | None:
    """Return the folders the environment loads templates from (None: not from folders)."""
    import jinja2

    loader = env.loader
    if not isinstance(loader, jinja2.FileSystemLoader):
        return None  # templates from elsewhere: no way to tell they did not change
    return tuple(map(str, loader.searchpath))


def _template_stamps(folders: Sequence[str]) -> tuple[object, ...]:
    """Return every file in the template folders, with its size and mtime."""
    stamps: list[object] = []
    for folder in folders:
        for root, _dirs, names in os.walk(folder):
            for name in sorted(names):
                stat = os.stat(os.path.join(root, name))
                stamps.append((root, name, stat.st_size, stat.st_mtime_ns))
    return tuple(stamps)


def check_site(config: Config, day: date | None = None, *,
               cache: ArticleCache | None = None) -> list[PublisherError]:
    """Load and render the whole site in memory; return every problem found, writing nothing."""
    from publisher.site.pages import site_files

    env = site_environment(config)
    try:
        loaded = load_articles(config.site.content_dir, cache)
    except ContentError as exc:
        return [exc]
    problems: list[PublisherError] = list(loaded.errors)
    view = day_view(config.site, Calendar(loaded.articles, config.site.leap_day),
                    day or local_date(utcnow(), config.site.zone))
    seen: set[str] = set()
    for file in site_files(view, env):
        try:
            file.make()
        except TemplateError as exc:
            # A broken template fails the same way on every page: report it once.
            if str(exc) not in seen:
                seen.add(str(exc))
                problems.append(exc)
    return problems
