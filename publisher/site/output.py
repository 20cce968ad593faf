"""The only code that touches the site's folder: staging, writing, the swap, the build cache.

A build writes every file into a staging folder next to the site, hard-linking those whose
bytes did not change, then swaps the two folders in one step. Beside the site, a hidden cache
folder keeps what the last build was made of (its inputs, the article files, each output
file's inode, size and mtime) and the parsed articles, so that a new process can tell that
nothing changed, or which pages one changed article touches, without rendering the rest.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import functools
import os
import pickle
import shutil
import sys
import tempfile
import time
import weakref
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import publisher
from publisher.errors import OutputError

# In every built site: the latest Last-Modified second any of its files was given, so that the
# next build (after a restart, or by another instance) dates its new files strictly later.
MODIFIED_MARK = ".modified"
CACHE_FORMAT = 3  # bumped when what the cache files hold changes shape
MANIFEST = "manifest.pickle"
ARTICLES = "articles-{:02d}.pickle"

OutputStamp = tuple[str, int, int, int]  # relative path, inode, size, mtime
FileMaker = Callable[[], bytes]
# A file to place: relative path, what it was made of (None: never reused unrendered), and
# the function making its bytes.
Placing = tuple[str, object, FileMaker]


@contextlib.contextmanager
def build_lock(target: Path) -> Iterator[None]:
    """Hold the site's lock: two builds of one site (the daemon and a manual build) take turns."""
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.exists() and not target.is_dir():
        raise OutputError("exists and is not a folder", path=target, field="output")
    with open(target.parent / f".{target.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


@contextlib.contextmanager
def output_errors(target: Path) -> Iterator[None]:
    """Report a failure to write the site as an OutputError naming the file."""
    try:
        yield
    except OSError as exc:
        raise OutputError(exc.strerror or str(exc), path=exc.filename or target,
                          field="output") from None


# -- the build cache ------------------------------------------------------------------------


def cache_folder(target: Path) -> Path:
    """Return the hidden folder beside the site where its build cache lives."""
    return target.parent / f".{target.name}.cache"


def compiled_templates(target: Path) -> Path:
    """Return the folder beside the site where Jinja2 keeps the templates it compiled."""
    # Jinja2 checks each against its template's source and its own version.
    folder = cache_folder(target) / "templates"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def package_fingerprint() -> tuple[object, ...]:
    """Return what identifies the code that builds: this package's files and the libraries'.

    The package's version; the size and mtime of every file of the package (code, packaged
    templates, catalogs) and of each library folder on the import path (site-packages), whose
    entries change when a library is installed or upgraded; and the interpreter's version.
    """
    package = Path(__file__).resolve().parent.parent
    stamps: list[object] = [publisher.__version__, sys.version, CACHE_FORMAT]
    for folder, dirs, names in os.walk(package):
        dirs[:] = sorted(d for d in dirs if d != "__pycache__")
        for name in sorted(names):
            stat = os.stat(os.path.join(folder, name))
            stamps.append((folder, name, stat.st_size, stat.st_mtime_ns))
    for entry in sys.path:
        # Only where libraries are installed: the working folder changes with every build.
        if os.path.basename(entry) in ("site-packages", "dist-packages"):
            with contextlib.suppress(OSError):
                stamps.append((entry, os.stat(entry).st_mtime_ns))
    return tuple(stamps)


@dataclass(frozen=True)
class Manifest:
    """What one build put into the site, kept beside it for the next build (in any process).

    ``inputs``: settings, day, templates and code; ``folders``: where the templates are;
    ``content``: the article files' stamps;
    ``files``: each file as the build left it; ``made_of``: what each file reused without
    rendering must still be made of; ``report``: the build's report.
    """

    inputs: tuple[object, ...]
    folders: tuple[str, ...]
    content: tuple[object, ...]
    files: tuple[OutputStamp, ...]
    made_of: Mapping[str, object]
    report: object

    def intact(self, target: Path) -> bool:
        """Return whether every file is still as the build left it."""
        try:
            return stamps_of(target, (stamp[0] for stamp in self.files)) == self.files
        except OSError:
            return False  # a file was removed

    def holds(self, inputs: tuple[object, ...], content: tuple[object, ...],
              target: Path) -> bool:
        """Return whether a build of these inputs and files would leave the site as it is."""
        return inputs == self.inputs and content == self.content and self.intact(target)


def load_manifest(target: Path, code: tuple[object, ...]) -> Manifest | None:
    """Return the manifest of the site's last build, if the same code wrote it."""
    found = _load(cache_folder(target) / MANIFEST, code)
    return found if isinstance(found, Manifest) else None


def save_manifest(target: Path, code: tuple[object, ...], manifest: Manifest | None) -> None:
    """Record the build just swapped in (None: forget the last one, nothing to trust)."""
    if manifest is None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(cache_folder(target) / MANIFEST)
        return
    _save(cache_folder(target) / MANIFEST, code, manifest)


KEPT_SHARDS = 16  # the parsed articles are kept in this many files, by file name


def kept_shard(name: str) -> int:
    """Return which of the kept files holds what was parsed from the article file ``name``."""
    return zlib.crc32(name.encode("utf-8", "surrogateescape")) % KEPT_SHARDS


# Reads ``length`` bytes at ``offset`` of what a cache file holds after its value.
TailReader = Callable[[int, int], bytes]


def load_kept(target: Path, code: tuple[object, ...], shards: Iterable[int] = range(KEPT_SHARDS)
              ) -> dict[int, tuple[object, TailReader]]:
    """Return what the last builds kept for the next (parsed articles) in ``shards``, where the
    same code did: by shard, what its file holds, and a reader of the bytes written after it."""
    found = {shard: _load(cache_folder(target) / ARTICLES.format(shard), code, tail=True)
             for shard in shards}
    return {shard: kept for shard, kept in found.items() if isinstance(kept, tuple)}


def save_kept(target: Path, code: tuple[object, ...], shard: int, kept: object,
              tail: bytes) -> None:
    """Keep what the next build's process can reuse of the articles of one shard."""
    # In shards, one rewritten: make bench, build.py, one article edited <= 0.1 x Hugo.
    _save(cache_folder(target) / ARTICLES.format(shard), code, kept, tail)


def _load(path: Path, code: tuple[object, ...], tail: bool = False) -> object:
    """Return what a cache file holds, if the same code wrote it (None: a miss).

    ``tail``: with a reader of the bytes after it, read only where asked for. A cache file
    is replaced, never rewritten, so the reader finds them as they were for as long as it
    is used (it holds the file open).
    """
    try:
        with open(path, "rb") as handle:
            # The code first: what another version wrote is never unpickled.
            if pickle.load(handle) != code:
                return None
            value = pickle.load(handle)
            if not tail:
                return value
            read = functools.partial(_read_at, path, os.dup(handle.fileno()), handle.tell())
            weakref.finalize(read, os.close, read.args[1])
            return value, read
    except FileNotFoundError:
        return None
    except Exception:
        return None


def _read_at(path: Path, fd: int, start: int, offset: int, length: int) -> bytes:
    data = os.pread(fd, length, start + offset)
    if len(data) != length:  # cut short in place, by hand
        raise OutputError("changed while a build read it; remove it", path=path,
                          field="cache")
    return data


def _save(path: Path, code: tuple[object, ...], value: object, tail: bytes = b"") -> None:
    path.parent.mkdir(exist_ok=True)
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as handle:
            pickle.dump(code, handle, pickle.HIGHEST_PROTOCOL)
            pickle.dump(value, handle, pickle.HIGHEST_PROTOCOL)
            handle.write(tail)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise


def stamps_of(target: Path, relatives: Iterable[str]) -> tuple[OutputStamp, ...]:
    """Return the inode, size and mtime of each file below ``target``."""
    stamps = []
    # Relative to the open folder: make bench, build.py, again, nothing changed <= 0.05 x Hugo.
    folder = os.open(target, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for relative in relatives:
            stat = os.stat(relative, dir_fd=folder)
            stamps.append((relative, stat.st_ino, stat.st_size, stat.st_mtime_ns))
    finally:
        os.close(folder)
    return tuple(stamps)


# -- writing ------------------------------------------------------------------------------


@dataclass
class Written:
    """What one process placed into the staging folder."""

    files: list[OutputStamp] = field(default_factory=list)  # each file, as it was left
    kept: set[str] = field(default_factory=set)  # linked to the previous site's file
    made_of: dict[str, object] = field(default_factory=dict)  # of files that may be reused
    removed: int = 0  # files of the previous site no build makes any more

    @property
    def written(self) -> int:
        """Return how many files got new bytes."""
        return len(self.files) - len(self.kept)

    def add(self, other: Written) -> None:
        """Take in what another process placed."""
        self.files += other.files
        self.kept |= other.kept
        self.made_of.update(other.made_of)


@dataclass(frozen=True)
class Staging:
    """Where one build writes, what it replaces, and the date it gives files with new bytes."""

    folder: Path
    previous: Path | None  # the site being replaced (None: a first build, nothing to compare)
    last: int  # the latest Last-Modified second of the previous site, as its mark says
    modified: int  # Unix seconds: the mtime, hence Last-Modified, of each file with new bytes
    # Of the previous site's files that the last build recorded: what each was made of, and
    # its stamp then, so that a file made of the same is linked without being rendered.
    reusable: Mapping[str, tuple[object, OutputStamp]] = field(default_factory=dict)

    @classmethod
    def next_to(cls, target: Path, manifest: Manifest | None = None) -> Staging:
        """Make the staging folder next to ``target`` and date this build's new files.

        Strictly later than any date the previous site gave, even within the same second:
        a feed reader that sends that date as If-Modified-Since (libcurl's do) throws away an
        answer that is not newer. A few builds within one second thus date their files a few
        seconds ahead of the clock; strictly increasing dates matter more to readers.
        ``manifest``: the last build's, when it was made from the same inputs.
        """
        previous = target if target.is_dir() else None
        last = _last_modified(previous)
        reusable = {} if manifest is None or previous is None else {
            stamp[0]: (manifest.made_of[stamp[0]], stamp) for stamp in manifest.files
            if stamp[0] in manifest.made_of}
        return cls(_staging_folder(target), previous, last, max(int(time.time()), last + 1),
                   reusable)

    def write(self, files: Iterable[Placing]) -> Written:
        """Make each file and place it into the staging folder; return what was placed.

        A file made of what the previous site's copy was made of is linked unrendered; one
        whose bytes equal the previous site's is linked rather than written.
        """
        done = Written()
        for relative, made_of, make in files:
            placed = None if made_of is None else self._reuse(relative, made_of)
            if placed is None:
                placed = _place(os.path.join(self.folder, relative), None if self.previous is None
                                else os.path.join(self.previous, relative), make(),
                                self.modified * 1_000_000_000)
            new, stat = placed
            done.files.append((relative, stat.st_ino, stat.st_size, stat.st_mtime_ns))
            if not new:
                done.kept.add(relative)
            if made_of is not None:
                done.made_of[relative] = made_of
        return done

    def _reuse(self, relative: str, made_of: object) -> tuple[bool, os.stat_result] | None:
        found = self.reusable.get(relative)
        if found is None or found[0] != made_of or self.previous is None:
            return None
        previous = os.path.join(self.previous, relative)
        try:
            stat = os.stat(previous)
        except OSError:
            return None
        if (stat.st_ino, stat.st_size, stat.st_mtime_ns) != found[1][1:]:
            return None  # changed since the last build recorded it
        path = os.path.join(self.folder, relative)
        _folder_for(path)
        try:
            os.link(previous, path)
        except OSError:
            return None  # e.g. a file system without hard links: made again
        return False, stat

    def publish(self, target: Path, wrote: bool) -> None:
        """Mark the staging folder with its latest date, then swap it in.

        ``wrote``: whether any file got new bytes, and so this build's date.
        """
        latest = self.modified if wrote else self.last
        (self.folder / MODIFIED_MARK).write_text(f"{latest}\n", encoding="ascii")
        _swap_in(self.folder, target)

    def clean_up(self) -> None:
        """Remove what is left of the staging folder (after a failed build)."""
        if self.folder.exists():
            shutil.rmtree(self.folder, ignore_errors=True)


@dataclass(frozen=True)
class InPlace:
    """A build that replaces the few files that change in the site itself, one by one.

    Only after a build recorded every file and its inputs are the same: then only article
    files changed, and each file they show is written to a temporary name beside it and
    renamed over it, so that a reader finds the old file or the new one. Pages go first,
    the files linking to them (front page, feeds, sitemap) after, and pages of articles that
    are gone are removed last.
    """

    site: Path
    last: int
    modified: int
    reusable: Mapping[str, tuple[object, OutputStamp]]
    recorded: frozenset[str]  # every file the last build recorded

    @classmethod
    def over(cls, target: Path, manifest: Manifest) -> InPlace:
        """Prepare to update ``target`` in place; forget the manifest until the update is done."""
        # A build that stops half-way leaves files the manifest does not know: the next build
        # then stages the whole site.
        save_manifest(target, (), None)
        last = _last_modified(target)
        return cls(target, last, max(int(time.time()), last + 1), {
            stamp[0]: (manifest.made_of.get(stamp[0]), stamp) for stamp in manifest.files},
            frozenset(stamp[0] for stamp in manifest.files))

    def write(self, files: Iterable[Placing]) -> Written:
        """Make the files whose inputs changed and put each in place if its bytes did."""
        done = Written()
        for relative, made_of, make in files:
            found = self.reusable.get(relative)
            if found is not None and made_of is not None and found[0] == made_of:
                stamp = found[1]
                done.files.append(stamp)
                done.kept.add(relative)
            else:
                new, stat = self._replace(relative, make())
                done.files.append((relative, stat.st_ino, stat.st_size, stat.st_mtime_ns))
                if not new:
                    done.kept.add(relative)
            if made_of is not None:
                done.made_of[relative] = made_of
        gone = self.recorded - {stamp[0] for stamp in done.files}
        for relative in sorted(gone):
            path = os.path.join(self.site, relative)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
            with contextlib.suppress(OSError):  # a folder that holds something else stays
                os.rmdir(os.path.dirname(path))
        done.removed = len(gone)
        return done

    def rewrite(self, files: Iterable[Placing]) -> Written:
        """Make only ``files``, putting each in place if its bytes changed; every other file
        stays as the last build recorded it."""
        done, recorded = Written(kept=set(self.reusable)), dict(self.reusable)
        for relative, made_of, make in files:
            new, stat = self._replace(relative, make())
            recorded[relative] = (made_of, (relative, stat.st_ino, stat.st_size,
                                            stat.st_mtime_ns))
            if new:
                done.kept.discard(relative)
        for relative, (made_of, stamp) in recorded.items():
            done.files.append(stamp)
            if made_of is not None:
                done.made_of[relative] = made_of
        return done

    def _replace(self, relative: str, data: bytes) -> tuple[bool, os.stat_result]:
        path = os.path.join(self.site, relative)
        try:
            old = os.stat(path)
            if old.st_size == len(data) and _read(path) == data:
                return False, old
        except FileNotFoundError:
            pass
        _folder_for(path)
        # Hidden, so that the web service never serves it, and named for this process.
        temporary = os.path.join(os.path.dirname(path), f".new-{os.getpid()}")
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)  # left by a build that stopped here
        try:
            _place(temporary, None, data, self.modified * 1_000_000_000)
            os.replace(temporary, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temporary)
            raise
        return True, os.stat(path)

    def publish(self, target: Path, wrote: bool) -> None:
        """Date the site with this build's date if any file got new bytes."""
        if wrote:
            mark = self.site / MODIFIED_MARK
            new = mark.with_name(f"{MODIFIED_MARK}.new")
            new.write_text(f"{self.modified}\n", encoding="ascii")
            new.replace(mark)

    def clean_up(self) -> None:
        """Nothing to remove: each file was put in place whole."""


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


def _staging_folder(target: Path) -> Path:
    # Next to the target, so that the final rename stays on one file system.
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.build-"))
    # mkdtemp makes the folder private; a web server running as another user must read it.
    mode = target.stat().st_mode & 0o7777 if target.is_dir() else 0o755
    staging.chmod(mode)
    return staging


def _folder_for(path: str) -> None:
    folder = os.path.dirname(path)
    try:
        os.mkdir(folder)  # a page's own folder: usually new
    except FileExistsError:
        pass
    except FileNotFoundError:
        os.makedirs(folder, exist_ok=True)


def _place(path: str, previous: str | None, data: bytes, modified: int
           ) -> tuple[bool, os.stat_result]:
    """Put ``data`` at ``path``; hard-link the previous file instead when its bytes are equal.

    Return whether new bytes were written and the file's status as this build leaves it. An
    unchanged file keeps its inode and mtime, so HTTP caches and rsync see it as unchanged;
    new bytes get the mtime ``modified`` (nanoseconds). The old site is never modified in
    place, nor is a file once placed.
    """
    _folder_for(path)
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
            except OSError:
                # e.g. a file system without hard links: write a copy, with the same date
                modified = old.st_mtime_ns
    # os-level calls, no file object: make bench, build.py, cold build <= 1.0 x Hugo.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666)
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


def exchange(first: Path, second: Path) -> bool:
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
    if exchange(staging, target):
        staging.rename(retired)
    else:
        target.rename(retired)
        try:
            staging.rename(target)
        except OSError:
            retired.rename(target)  # put the previous site back rather than leave none
            raise
    shutil.rmtree(retired, ignore_errors=True)
