"""Parse article files (Markdown with front matter, or the plain ``date`` form) into Articles."""

from __future__ import annotations

import contextlib
import errno
import functools
import html
import os
import re
import stat
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urljoin

from markdown_it_pyrs import MarkdownIt

from publisher.errors import ContentError, DuplicateSlugError, UnreadableError

if TYPE_CHECKING:
    import yaml

ARTICLE_SUFFIXES = (".md", ".txt")
# What one article may cost: its file, and each field that every page, feed and email repeats.
MAX_ARTICLE_BYTES = 1 << 20
FIELD_LIMITS = {"title": 300, "summary": 1000, "author": 200, "lang": 35, "slug": 200}
MAX_TAGS = 50
TAG_LENGTH = 100
IMPORTED_SUFFIX = ".imported"  # what `publisher import` appends to a converted source
TITLE_LENGTH = 80
SUMMARY_LENGTH = 280
_SLUG = re.compile(r"^[a-z0-9][a-z0-9_-]*$")
_ISO_DATE = re.compile(r"^(\d{4})-(\d{2})-(\d{2})$")
_MONTH_DAY = re.compile(r"^(\d{2})-(\d{2})$")
_PLAIN_HEAD = re.compile(r"\A(\s*)date[ \t]+(\S+)[ \t]*")
_PARAGRAPH_BREAK = re.compile(r"\n[ \t]*\n")
_SENTENCE_END = re.compile(r"[.!?](?=\s|$)")
_START_TAG = re.compile(
    r"""<[a-zA-Z][a-zA-Z0-9:-]*(?:\s+[^\s"'>/=]+(?:\s*=\s*(?:"[^"]*"|'[^']*'|[^\s"'=<>`]+))?)*"""
    r"""\s*/?>"""
)
_URL_ATTRIBUTE = re.compile(
    r"""(\s(?:href|src|poster|cite)\s*=\s*)(?:"([^"]*)"|'([^']*)'|([^\s"'=<>`]+))""",
    re.IGNORECASE,
)
_FIELDS = {"title", "date", "anniversary", "summary", "tags", "author", "lang", "slug", "recurring"}


# Inside Article the field named "date" hides the type, so the other date field uses this name.
_Date = date


# Every field but the bodies, as plain values for marshal: dates as ordinals, the path as text.
ArticleHead = tuple[str, str, int, tuple[int, int], str, str, int | None, tuple[str, ...],
                    str | None, str | None, bool]


@dataclass(frozen=True)
class Article:
    """One dated article, ready to be published on its date and its anniversaries."""

    slug: str
    title: str
    date: date
    anniversary: tuple[int, int]
    body_html: str = field(repr=False)
    body_text: str = field(repr=False)
    summary: str = field(repr=False)
    source: Path
    commemorated: _Date | None = None
    tags: tuple[str, ...] = ()
    author: str | None = None
    lang: str | None = None
    recurring: bool = True

    def __hash__(self) -> int:
        # Not the bodies: an article the build cache kept reads them when a page shows them.
        return hash((self.slug, self.date))

    @functools.cached_property
    def head(self) -> ArticleHead:
        """Return every field but the bodies, as :meth:`from_head` takes them."""
        return (self.slug, self.title, self.date.toordinal(), self.anniversary, self.summary,
                str(self.source), None if self.commemorated is None
                else self.commemorated.toordinal(), self.tags, self.author, self.lang,
                self.recurring)

    @property
    def file(self) -> str:
        """Return the path of the article's file as text, as file stamps name it."""
        return self.head[5]

    @classmethod
    def from_head(cls, head: ArticleHead, bodies: Callable[[], tuple[str, str]]) -> Article:
        """Return the article of ``head`` whose bodies (HTML, text) ``bodies`` returns."""
        # Path made and bodies read on first use: make bench, build.py, one article edited.
        (slug, title, day, anniversary, summary, _, commemorated, tags, author, lang,
         recurring) = head
        article = object.__new__(cls)
        article.__dict__.update(
            slug=slug, title=title, date=_Date.fromordinal(day), anniversary=anniversary,
            summary=summary, tags=tags, author=author, lang=lang, recurring=recurring,
            commemorated=None if commemorated is None else _Date.fromordinal(commemorated),
            head=head, _bodies=bodies)
        return article

    def __getattr__(self, name: str) -> Any:
        """Return the path or a body of an article from :meth:`from_head`, made on first use."""
        known = self.__dict__
        if name == "source" and "head" in known:
            known["source"] = Path(self.head[5])
        elif name in ("body_html", "body_text") and "_bodies" in known:
            known["body_html"], known["body_text"] = known.pop("_bodies")()
        else:
            raise AttributeError(name)
        return known[name]

    def __reduce__(self) -> tuple[object, ...]:
        # Pickled whole, bodies read: what reads them is no part of the article.
        return (Article, tuple(getattr(self, name) for name in self.__dataclass_fields__))

    @property
    def month_day(self) -> str:
        """Return the anniversary as ``MM-DD``."""
        return f"{self.anniversary[0]:02d}-{self.anniversary[1]:02d}"


@dataclass
class LoadResult:
    """Articles that loaded and the errors of those that did not."""

    articles: list[Article] = field(default_factory=list)
    errors: list[ContentError] = field(default_factory=list)


# markdown-it's Rust port: the same CommonMark rules and HTML as markdown-it-py, about ten
# times faster, which is most of the time a cold build of a large archive takes.
_markdown = MarkdownIt("commonmark")


def render_markdown(text: str) -> str:
    """Render CommonMark text to HTML."""
    return str(_markdown.render(text))


@functools.cache
def _front_matter_loader() -> type[yaml.SafeLoader]:
    """Return the safe YAML loader that keeps dates as text, so that impossible ones get a
    clear error."""
    # Imported on the first parse: make bench, build.py, again, nothing changed <= 0.05 x Hugo.
    import yaml

    # libyaml's parser where PyYAML was built with it: the pure-Python one costs more than
    # rendering the Markdown of a typical article.
    safe: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

    class FrontMatterLoader(safe):  # type: ignore[valid-type,misc]
        pass

    FrontMatterLoader.yaml_implicit_resolvers = {
        first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:timestamp"]
        for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
    }
    return FrontMatterLoader


def read_article_bytes(path: Path) -> bytes:
    """Read an article file, refusing what is not a regular file or is over the size limit.

    Never blocks: a named pipe or a device is refused before anything is read from it.
    """
    try:
        # O_NONBLOCK: opening a named pipe must not wait for a writer.
        descriptor = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            found = os.fstat(descriptor)
            if not stat.S_ISREG(found.st_mode):
                raise UnreadableError(f"not a regular file but {_kind_of(found.st_mode)}",
                                      path=path, field="file")
            raw = b""
            if found.st_size <= MAX_ARTICLE_BYTES:
                with open(descriptor, "rb", closefd=False) as file:
                    # As much as the file holds: a buffer of the limit's size for each file
                    # would cost more than reading it.
                    raw = file.read(found.st_size + 1)
                    if len(raw) > found.st_size:  # it grew meanwhile: read on, to the limit
                        raw += file.read(MAX_ARTICLE_BYTES + 1 - len(raw))
        finally:
            os.close(descriptor)
    except OSError as exc:
        raise UnreadableError(_unreadable(path, exc), path=path, field="file") from None
    if found.st_size > MAX_ARTICLE_BYTES or len(raw) > MAX_ARTICLE_BYTES:
        raise ContentError(f"larger than {MAX_ARTICLE_BYTES // 1024} KiB, the most an article "
                           "may be", path=path, field="file")
    return raw


def _kind_of(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISFIFO(mode):
        return "a named pipe"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "a device"


def _unreadable(path: Path, exc: OSError) -> str:
    reason = f"cannot read: {exc.strerror or exc}"
    if exc.errno in (errno.ENOENT, errno.ELOOP) and os.path.islink(path):
        with contextlib.suppress(OSError):
            reason += f" (a symbolic link to {os.readlink(path)})"
    return reason


def read_text(path: Path) -> str:
    """Read a file as UTF-8 text with ``\\n`` line ends; name the line of the first bad byte."""
    raw = read_article_bytes(path)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise ContentError(
            f"not UTF-8 text (byte 0x{raw[exc.start]:02x} at offset {exc.start})",
            path=path, line=line, field="encoding",
        ) from None
    return text.removeprefix("\ufeff").replace("\r\n", "\n").replace("\r", "\n")


def parse_date(value: object, *, path: Path, line: int | None, name: str) -> date:
    """Parse a ``YYYY-MM-DD`` value, naming the field when it is missing or impossible."""
    if isinstance(value, date):
        return value
    text = str(value).strip() if value is not None else ""
    match = _ISO_DATE.match(text)
    if not match:
        raise ContentError(f"expected a date as YYYY-MM-DD, got {text!r}",
                           path=path, line=line, field=name)
    try:
        return date(int(match.group(1)), int(match.group(2)), int(match.group(3)))
    except ValueError as exc:
        raise ContentError(f"impossible date {text!r} ({exc})",
                           path=path, line=line, field=name) from None


def _parse_anniversary(
    value: object, *, path: Path, line: int | None
) -> tuple[tuple[int, int], date | None]:
    text = str(value).strip()
    match = _MONTH_DAY.match(text)
    if match:
        month, day = int(match.group(1)), int(match.group(2))
        try:
            date(2000, month, day)  # a leap year, so 02-29 is accepted
        except ValueError:
            raise ContentError(f"impossible month-day {text!r}", path=path, line=line,
                               field="anniversary") from None
        return (month, day), None
    full = parse_date(text, path=path, line=line, name="anniversary")
    return (full.month, full.day), full


def slug_from_name(path: Path) -> str:
    """Derive a URL-safe slug from a file name."""
    slug = re.sub(r"[^a-z0-9_-]+", "-", path.stem.lower()).strip("-")
    return slug or "article"


def cut_at_word(text: str, limit: int) -> str:
    """Shorten text to at most ``limit`` characters at a word boundary, adding an ellipsis."""
    text = " ".join(text.split())
    if len(text) <= limit:
        return text
    cut = text[: limit - 1]
    space = cut.rfind(" ")
    if space > limit // 2:
        cut = cut[:space]
    return cut.rstrip(" ,;:.-") + "…"


def title_from_text(text: str) -> str:
    """Derive a title from the first sentence of a text."""
    flat = " ".join(text.split())
    match = _SENTENCE_END.search(flat)
    sentence = flat[: match.start() + 1] if match else flat
    sentence = sentence.removesuffix(".")
    return cut_at_word(sentence, TITLE_LENGTH) or "Untitled"


def _paragraphs(body: str) -> list[str]:
    return [" ".join(p.split()) for p in _PARAGRAPH_BREAK.split(body) if p.strip()]


def _text_of_html(fragment: str) -> str:
    return html.unescape(re.sub(r"<[^>]+>", "", fragment))


def parse_plain(path: Path, text: str) -> Article:
    """Parse the plain form: ``date YYYY-MM-DD`` glued to the first paragraph."""
    match = _PLAIN_HEAD.match(text)
    if not match:
        raise ContentError("expected the text to start with 'date YYYY-MM-DD'",
                           path=path, line=1, field="date")
    line = match.group(1).count("\n") + 1
    when = parse_date(match.group(2), path=path, line=line, name="date")
    paragraphs = _paragraphs(text[match.end():])
    if not paragraphs:
        raise ContentError("the article has no text after its date", path=path, line=line,
                           field="body")
    return Article(
        slug=slug_from_name(path),
        title=title_from_text(paragraphs[0]),
        date=when,
        anniversary=(when.month, when.day),
        body_html="".join(f"<p>{html.escape(p, quote=False)}</p>\n" for p in paragraphs),
        body_text="\n\n".join(paragraphs),
        summary=cut_at_word(paragraphs[0], SUMMARY_LENGTH),
        source=path,
    )


_FRONT_MATTER_END = re.compile(r"^(?:---|\.\.\.)[ \t]*$", re.MULTILINE)


def _front_matter(path: Path, text: str) -> tuple[dict[str, Any], dict[str, int], str, int]:
    if not text.startswith("---\n"):
        raise ContentError("expected YAML front matter opening with '---'", path=path, line=1,
                           field="front matter")
    end = _FRONT_MATTER_END.search(text, 4)
    if end is None:
        raise ContentError("front matter is not closed by '---'", path=path, line=1,
                           field="front matter")
    block = text[4 : end.start()]
    body_start = end.end() + 1
    body_line = text.count("\n", 0, body_start) + 1
    data, lines = yaml_front_matter(path, block)
    return data, lines, text[body_start:], body_line


def yaml_front_matter(path: Path, block: str) -> tuple[dict[str, Any], dict[str, int]]:
    """Read a front matter block with libyaml: its fields, and the file line of each key."""
    import yaml

    loader = _front_matter_loader()(block)
    try:
        node = loader.get_single_node()
        if node is not None and "*" in block:  # no alias without its star
            _refuse_aliases(path, node)
        data = loader.construct_document(node) if node is not None else {}
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 2 if mark is not None else None
        raise ContentError(f"invalid YAML: {exc.problem or exc}", path=path, line=line,
                           field="front matter") from None
    except yaml.reader.ReaderError as exc:  # a character YAML does not allow, e.g. a control
        # Its position counts bytes or characters depending on the parser: find it instead.
        where = block.find(chr(exc.character))
        raise ContentError(f"invalid YAML: {exc.reason} (character U+{exc.character:04X})",
                           path=path, line=block.count("\n", 0, where) + 2 if where >= 0
                           else None, field="front matter") from None
    finally:
        loader.dispose()
    if not isinstance(data, dict):
        raise ContentError("front matter must be a mapping of fields", path=path, line=2,
                           field="front matter")
    lines: dict[str, int] = {}
    if node is not None:
        for key_node, _ in node.value:
            lines[str(key_node.value)] = key_node.start_mark.line + 2
    return data, lines


def _refuse_aliases(path: Path, document: yaml.Node) -> None:
    """Raise for a YAML alias (``*name``): a few bytes of one can stand for megabytes."""
    import yaml

    # The composer turns an alias into the node it names, so a node met twice is an alias.
    if not isinstance(document, yaml.MappingNode):
        return  # refused as it is, whatever it holds
    seen: set[int] = set()
    for key, value in document.value:
        pending: list[yaml.Node] = [key, value]
        while pending:
            node = pending.pop()
            if id(node) in seen:
                raise ContentError("YAML aliases (*name) are not accepted in front matter",
                                   path=path, line=key.start_mark.line + 2,
                                   field=str(key.value) if isinstance(key, yaml.ScalarNode)
                                   else "front matter")
            seen.add(id(node))
            if isinstance(node, yaml.SequenceNode):
                pending.extend(node.value)
            elif isinstance(node, yaml.MappingNode):
                pending.extend(item for pair in node.value for item in pair)


def _optional_text(data: Mapping[str, Any], name: str, path: Path, line: int | None) -> str | None:
    value = data.get(name)
    if value is None:
        return None
    if not isinstance(value, str | int | float) or isinstance(value, bool):
        raise ContentError(f"expected text, got {type(value).__name__}", path=path, line=line,
                           field=name)
    text = str(value).strip()
    _check_length(text, FIELD_LIMITS[name], path, line, name)
    return text or None


def _check_length(text: str, limit: int, path: Path, line: int | None, name: str) -> None:
    if len(text) > limit:
        raise ContentError(f"{len(text)} characters long, more than the {limit} allowed",
                           path=path, line=line, field=name)


def parse_markdown(path: Path, text: str) -> Article:
    """Parse Markdown with YAML front matter (``title`` and ``date`` required)."""
    data, lines, body, _ = _front_matter(path, text)

    def where(name: str) -> int | None:
        return lines.get(name, 1)

    unknown = sorted(set(map(str, data)) - _FIELDS)
    if unknown:
        raise ContentError(f"unknown field (known: {', '.join(sorted(_FIELDS))})", path=path,
                           line=where(unknown[0]), field=unknown[0])
    title = _optional_text(data, "title", path, where("title"))
    if not title:
        raise ContentError("required field is missing or empty", path=path, line=where("title"),
                           field="title")
    if "date" not in data:
        raise ContentError("required field is missing", path=path, line=1, field="date")
    when = parse_date(data["date"], path=path, line=where("date"), name="date")
    anniversary, commemorated = (when.month, when.day), None
    if data.get("anniversary") is not None:
        anniversary, commemorated = _parse_anniversary(data["anniversary"], path=path,
                                                       line=where("anniversary"))
    slug = _optional_text(data, "slug", path, where("slug")) or slug_from_name(path)
    if not _SLUG.match(slug):
        raise ContentError(f"slug must match {_SLUG.pattern}, got {slug!r}", path=path,
                           line=where("slug"), field="slug")
    tags = data.get("tags") or []
    if isinstance(tags, str):
        tags = [t.strip() for t in tags.split(",")]
    if not isinstance(tags, list) or not all(isinstance(t, str | int) for t in tags):
        raise ContentError("expected a list of tags", path=path, line=where("tags"), field="tags")
    if len(tags) > MAX_TAGS:
        raise ContentError(f"{len(tags)} tags, more than the {MAX_TAGS} allowed", path=path,
                           line=where("tags"), field="tags")
    for tag in tags:
        _check_length(str(tag).strip(), TAG_LENGTH, path, where("tags"), "tags")
    recurring = data.get("recurring", True)
    if not isinstance(recurring, bool):
        raise ContentError(f"expected true or false, got {recurring!r}", path=path,
                           line=where("recurring"), field="recurring")
    body_html = render_markdown(body)
    summary = _optional_text(data, "summary", path, where("summary"))
    if summary is None:
        first = body_html.split("</p>", 1)[0] if "<p>" in body_html else ""
        summary = cut_at_word(_text_of_html(first), SUMMARY_LENGTH)
    return Article(
        slug=slug,
        title=title,
        date=when,
        anniversary=anniversary,
        commemorated=commemorated,
        body_html=body_html,
        body_text=body.strip(),
        summary=summary,
        source=path,
        tags=tuple(str(t).strip() for t in tags if str(t).strip()),
        author=_optional_text(data, "author", path, where("author")),
        lang=_optional_text(data, "lang", path, where("lang")),
        recurring=recurring,
    )


def load_article(path: Path) -> Article:
    """Load one article file of either form."""
    text = read_text(path)
    if path.suffix == ".md":
        return parse_markdown(path, text)
    return parse_plain(path, text)


FileStamp = tuple[str, int, int]  # path, size, modification time (ns)
# The size in the stamp of an entry that could not even be looked at: loading it reports why.
UNREADABLE = -1


def content_stamps(content_dir: Path) -> tuple[FileStamp, ...]:
    """Return each article file with its size and modification time, in the order it loads.

    Equal stamps mean :func:`load_articles` would read the same files as before, so a rebuild
    can compare them instead of loading anything. An entry that cannot be looked at (a link
    loop, a folder without permission, a file gone meanwhile) is listed too, for its load to
    report it.
    """
    if not content_dir.is_dir():
        raise ContentError("content folder does not exist", path=content_dir)
    try:
        return tuple(_article_stamps(str(content_dir)))
    except OSError as exc:  # the folder itself: each entry below has its own stamp
        raise ContentError(f"cannot read the content folder: {exc.strerror or exc}",
                           path=content_dir) from None


def _article_stamps(folder: str) -> Iterator[FileStamp]:
    # os.scandir reads each entry's type with its name, so a rebuild of a large archive does not
    # stat every file twice; sorting each folder's names gives the order of sorted paths.
    with os.scandir(folder) as scan:
        entries = sorted((e for e in scan if not e.name.startswith(".")), key=lambda e: e.name)
    for entry in entries:
        try:
            if entry.is_dir(follow_symlinks=False):
                yield from _article_stamps(entry.path)
            elif entry.name.endswith(ARTICLE_SUFFIXES):
                # Not only regular files: a pipe, a folder or a link to nothing with an
                # article's name is reported by its load rather than passed over.
                found = entry.stat()
                yield entry.path, found.st_size, found.st_mtime_ns
        except OSError:  # a link loop, a folder without permission, an entry gone meanwhile
            yield entry.path, UNREADABLE, 0


class ArticleCache:
    """Remember parsed articles by path, size and modification time, so reloads are cheap."""

    def __init__(self) -> None:
        # Keyed by the path as text, as file stamps name it: a Path costs more to make.
        self._entries: dict[str, tuple[int, int, Article | ContentError]] = {}

    def load(self, path: Path | str, stamp: tuple[int, int] | None = None) -> Article:
        """Return the article at ``path``, parsing it only when the file changed.

        ``stamp``: the file's size and modification time as just listed, instead of asking the
        file system again.
        """
        # Text until parsed: make bench, build.py, one article edited (new process) <= 0.1 x Hugo.
        if stamp is None:
            path = Path(path)
            try:
                found = path.stat()
            except OSError:
                stamp = (UNREADABLE, 0)
            else:
                stamp = (found.st_size, found.st_mtime_ns)
        key = str(path)
        entry = self._entries.get(key)
        if entry is not None and entry[0] == stamp[0] and entry[1] == stamp[1]:
            result = entry[2]
        else:
            try:
                result = load_article(Path(path))
            except UnreadableError:
                # Not remembered: a permission given back changes no stamp.
                self._entries.pop(key, None)
                raise
            except ContentError as exc:
                result = exc
            self._entries[key] = (stamp[0], stamp[1], result)
        if isinstance(result, ContentError):
            raise result
        return result

    def stale(self, stamps: Iterable[FileStamp]) -> list[FileStamp]:
        """Return the files among ``stamps`` that :meth:`load` would parse again."""
        stale = []
        for stamp in stamps:
            entry = self._entries.get(stamp[0])
            if entry is None or entry[0] != stamp[1] or entry[1] != stamp[2]:
                stale.append(stamp)
        return stale

    def parse(self, files: Iterable[FileStamp]) -> ArticleCache:
        """Parse the listed files into this cache (broken ones too, as their errors); return it."""
        for name, size, mtime_ns in files:
            with contextlib.suppress(ContentError, OSError):
                self.load(Path(name), (size, mtime_ns))
        return self

    def entries(self) -> Iterator[tuple[str, int, int, Article | ContentError]]:
        """Yield each file held: its path, size, modification time and what it parsed to."""
        for name, (size, mtime_ns, result) in self._entries.items():
            yield name, size, mtime_ns, result

    def hold(self, name: str, size: int, mtime_ns: int, result: Article | ContentError) -> None:
        """Hold what the file ``name`` parsed to (e.g. in an earlier process)."""
        self._entries[name] = (size, mtime_ns, result)

    def absorb(self, other: ArticleCache) -> None:
        """Take over what another cache parsed (e.g. in another process)."""
        self._entries.update(other._entries)

    def forget_missing(self, seen: Iterable[Path | str]) -> None:
        """Drop entries for files that no longer exist."""
        keep = set(map(str, seen))
        for name in list(self._entries):
            if name not in keep:
                del self._entries[name]


def load_articles(content_dir: Path, cache: ArticleCache | None = None, *,
                  stamps: Iterable[FileStamp] | None = None) -> LoadResult:
    """Load every article below ``content_dir``; a broken file is reported, never fatal.

    ``stamps``: the files as :func:`content_stamps` has just listed them, which are then
    neither listed nor looked at again (a file changed since is parsed by the next load).
    """
    result = LoadResult()
    cache = cache or ArticleCache()
    seen: dict[str, str] = {}
    names: list[str] = []
    for name, size, mtime_ns in content_stamps(content_dir) if stamps is None else stamps:
        names.append(name)
        try:
            article = cache.load(name, (size, mtime_ns))
        except ContentError as exc:
            result.errors.append(exc)
            continue
        if article.slug in seen:
            result.errors.append(DuplicateSlugError(
                f"slug {article.slug!r} is already used by {seen[article.slug]}",
                path=Path(name), field="slug"))
            continue
        seen[article.slug] = name
        result.articles.append(article)
    cache.forget_missing(names)
    return result


def import_plain(path: Path, out_dir: Path | None = None, *, force: bool = False,
                 keep_source: bool = False) -> tuple[Path, Path | None]:
    """Turn a plain ``.txt`` article into Markdown; return the new file and the renamed source.

    The Markdown file keeps the source's name (so its slug) and goes next to the source or
    into ``out_dir``. The source is renamed to ``NAME.txt.imported`` so that the article is
    not loaded twice, unless ``keep_source`` is set.
    """
    if path.suffix != ".txt":
        raise ContentError("only plain .txt articles can be imported", path=path, field="file")
    article = load_article(path)
    target = (out_dir or path.parent) / f"{path.stem}.md"
    if target.exists() and not force:
        raise ContentError(f"{target} already exists (overwrite it with --force)", path=path,
                           field="output")
    retired = None if keep_source else path.with_name(path.name + IMPORTED_SUFFIX)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(to_markdown(article), encoding="utf-8")
        if retired is not None:
            path.rename(retired)
    except OSError as exc:
        raise ContentError(f"cannot write: {exc.strerror}", path=exc.filename or target,
                           field="output") from None
    return target, retired


def to_markdown(article: Article) -> str:
    """Write an article as Markdown with front matter, for ``publisher import``."""
    import yaml

    front = {"title": article.title, "date": article.date.isoformat()}
    head = yaml.safe_dump(front, allow_unicode=True, sort_keys=False, width=1000)
    paragraphs = article.body_text.split("\n\n")
    return f"---\n{head}---\n\n" + "\n\n".join(_escape_markdown(p) for p in paragraphs) + "\n"


def _escape_markdown(paragraph: str) -> str:
    # Plain text must stay plain once read as CommonMark: escape what would become markup.
    escaped = re.sub(r"([\\`*_\[\]<>&])", r"\\\1", paragraph)
    escaped = re.sub(r"^(\d+)([.)])(?=\s)", r"\1\\\2", escaped)
    return re.sub(r"^([#+=|>~-])", r"\\\1", escaped)


def absolute_links(fragment: str, base: str) -> str:
    """Rewrite relative ``href``/``src``/``poster``/``cite`` values in HTML to absolute URLs."""

    def attribute(match: re.Match[str]) -> str:
        """Return one URL attribute, double-quoted, with its value made absolute."""
        raw = next(value for value in match.groups()[1:] if value is not None)
        url = urljoin(base, html.unescape(raw).strip())
        return f'{match.group(1)}"{html.escape(url, quote=True)}"'

    def tag(match: re.Match[str]) -> str:
        """Return one start tag with its URL attributes made absolute."""
        return _URL_ATTRIBUTE.sub(attribute, match.group(0))

    return _START_TAG.sub(tag, fragment)
