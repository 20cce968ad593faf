"""The web service: the built site, double opt-in sign-up, RFC 8058 unsubscribe, previews."""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import hmac
import ipaddress
import logging
import mimetypes
import os
import signal
import socket
import stat
import time
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import date
from email.utils import formatdate, parsedate_to_datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

import anyio
import jinja2
import uvicorn
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.datastructures import FormData, Headers
from starlette.exceptions import HTTPException
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import (
    FileResponse,
    HTMLResponse,
    PlainTextResponse,
    RedirectResponse,
    Response,
)
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from publisher import transports
from publisher.calendar import Clock, Event, local_date, utcnow
from publisher.config import Config
from publisher.content import ArticleCache, load_articles
from publisher.digest import digest_edition
from publisher.errors import ContentError, PublisherError, SubscriberError, TokenError
from publisher.feeds import FEEDS, build_feeds
from publisher.ledger import DIGEST_SLUG, Ledger, Subscriber
from publisher.mail import Mailer, Preview, Recipient
from publisher.preferences import Choices, parse_choices
from publisher.render import render
from publisher.site import load_calendar, site_environment, upcoming_events
from publisher.site.pages import feed_links
from publisher.subscriptions.links import Subscriptions
from publisher.tokens import load_secret
from publisher.topics import tag_key
from publisher.webhooks import Webhooks

log = logging.getLogger(__name__)

RATE_WINDOW_SECONDS = 3600  # web.rate_limit_per_ip and _per_address count sign-ups per hour
RATE_LIMIT_KEYS = 100_000  # addresses and clients remembered at most, oldest forgotten first
PURGE_INTERVAL_SECONDS = 3600
MAX_BODY_BYTES = 16 * 1024  # the largest form is an address, a name and a zone
CACHE_FILE_BYTES = 2 * 1024 * 1024  # larger files are streamed from disk on every request
CACHE_TOTAL_BYTES = 64 * 1024 * 1024
GZIP_MIN_BYTES = 256
SWAP_RETRIES = 10  # the builder's swap leaves the output folder absent for a moment
SWAP_WAIT_SECONDS = 0.01
START_TIMEOUT_SECONDS = 30
PREVIEW_DAYS = 30
PREVIEW_MAX_DAYS = 366
PREVIEW_TOKEN_HEADER = "x-preview-token"
SAMPLE_RECIPIENT = Recipient(subscriber_id=0, email="reader@example.org", name="Sample Reader",
                             unsubscribe_key="sample")

PAGE_CACHE = "no-store"
NO_REFERRER = {"referrer-policy": "no-referrer"}  # pages whose address holds a token
PREVIEW_HEADERS = {"cache-control": PAGE_CACHE, **NO_REFERRER, "x-robots-tag": "noindex"}
SITE_CACHE = "public, no-cache"  # readers revalidate each time; the answer is usually a 304

_MEDIA_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".htm": "text/html; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".txt": "text/plain; charset=utf-8",
    ".xml": "application/xml",
    ".json": "application/json",
    ".ics": "text/calendar; charset=utf-8",
}
# The builder's feeds by file name, each with the media type feed readers look for.
_FEED_TYPES = {feed.name: feed.media_type for feed in FEEDS}
_COMPRESSIBLE = ("text/", "application/rss+xml", "application/atom+xml", "application/xml",
                 "application/json", "application/feed+json", "image/svg+xml")
_LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "[::1]")  # as Host headers name them
_FORWARDING_HEADERS = ("forwarded", "x-forwarded-for", "x-real-ip")


def media_type(relative: str) -> str:
    """Return the Content-Type of a file from its path relative to the site folder."""
    suffix = os.path.splitext(relative)[1].lower()
    return (_FEED_TYPES.get(relative) or _MEDIA_TYPES.get(suffix)
            or mimetypes.guess_type(relative)[0] or "application/octet-stream")


# Not Starlette's StaticFiles and GZipMiddleware: `make bench` web.py, feed req/s 1.4-7x theirs.
@dataclass(frozen=True)
class StaticFile:
    """One file held in memory with its validators and, when worth it, a gzipped copy."""

    body: bytes
    gzipped: bytes | None
    content_type: str
    etag: str
    last_modified: str | None
    mtime: int | None

    @classmethod
    def of(cls, relative: str, body: bytes, mtime: float | None = None) -> StaticFile:
        """Build the in-memory copy of a file's bytes (``relative``: its path in the site)."""
        content_type = media_type(relative)
        # The ETag follows the bytes, not the mtime: a rebuild that rewrites an unchanged
        # feed still answers 304 to every reader.
        digest = hashlib.blake2b(body, digest_size=12).hexdigest()
        gzipped = None
        if content_type.startswith(_COMPRESSIBLE) and len(body) >= GZIP_MIN_BYTES:
            gzipped = gzip.compress(body, compresslevel=9, mtime=0)
        return cls(
            body=body, gzipped=gzipped, content_type=content_type, etag=f'"{digest}"',
            last_modified=formatdate(mtime, usegmt=True) if mtime is not None else None,
            mtime=int(mtime) if mtime is not None else None,
        )

    def response(self, request: Request) -> Response:
        """Answer a GET or HEAD: 304, gzipped or identity."""
        gzip_etag = self.etag[:-1] + '-gz"'
        accepted = request.headers.get("accept-encoding", "")
        zipped = self.gzipped is not None and accepts_gzip(accepted)
        headers = {"etag": gzip_etag if zipped else self.etag, "cache-control": SITE_CACHE}
        if self.gzipped is not None:
            headers["vary"] = "Accept-Encoding"
        if self.last_modified is not None:
            headers["last-modified"] = self.last_modified
        if not_modified(request.headers, (self.etag, gzip_etag), self.mtime):
            return Response(status_code=304, headers=headers)
        headers["content-type"] = self.content_type
        if zipped:
            headers["content-encoding"] = "gzip"
        return Response(self.gzipped if zipped else self.body, headers=headers)


@dataclass(frozen=True)
class LargeFile:
    """A site file too big to keep in memory: streamed from disk."""

    path: Path
    relative: str
    stat: os.stat_result

    def response(self, request: Request) -> Response:
        """Answer a GET or HEAD from disk, honouring the file's validators."""
        response = FileResponse(self.path, stat_result=self.stat,
                                headers={"cache-control": SITE_CACHE,
                                         "content-type": media_type(self.relative)})
        if not_modified(request.headers, (response.headers["etag"],), int(self.stat.st_mtime)):
            return Response(status_code=304, headers={
                key: response.headers[key] for key in ("etag", "last-modified", "cache-control")})
        return response


@dataclass(frozen=True)
class Redirect:
    """A folder asked for without its trailing slash."""

    location: str

    def response(self, request: Request) -> Response:
        """Redirect to the folder, keeping the query."""
        query = f"?{request.url.query}" if request.url.query else ""
        return RedirectResponse(self.location + query, status_code=301)


def site_path(url_path: str) -> str | None:
    """Map a URL path to a path relative to the site folder; None when it may not be served."""
    if "\\" in url_path or "\x00" in url_path:
        return None
    segments = url_path.lstrip("/").split("/")
    # Hidden names (``.git``, the builder's ``.site.build-*``) and ``..`` are refused, so no
    # request reaches outside the folder or into a half-built one.
    if any(s.startswith(".") or (not s and i < len(segments) - 1)
           for i, s in enumerate(segments)):
        return None
    if not segments[-1]:
        segments[-1] = "index.html"
    return "/".join(segments)


class SiteFiles:
    """Serve the files of the built site, re-resolved on every request since builds swap it."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._cache: OrderedDict[str, tuple[tuple[int, int, int], StaticFile]] = OrderedDict()
        self._cached_bytes = 0

    async def find(self, url_path: str) -> StaticFile | LargeFile | Redirect | None:
        """Return what a GET of ``url_path`` should serve, or None for a 404."""
        relative = site_path(url_path)
        if relative is None:
            return None
        path = self.root / relative
        for _ in range(SWAP_RETRIES):
            try:
                info = path.stat()
                break
            except FileNotFoundError:
                if self.root.exists():
                    return None
                await anyio.sleep(SWAP_WAIT_SECONDS)  # between the builder's two renames
            except OSError:  # e.g. a file name used as a folder: nothing to serve
                return None
        else:
            return None
        if stat.S_ISDIR(info.st_mode):
            return Redirect(url_path + "/") if (path / "index.html").is_file() else None
        if not stat.S_ISREG(info.st_mode):
            return None
        if info.st_size > CACHE_FILE_BYTES:
            return LargeFile(path, relative, info)
        # Small files stay in memory (gzipped too) until their (mtime, size, inode) changes;
        # the least recently used go first past CACHE_TOTAL_BYTES.
        key = (info.st_mtime_ns, info.st_size, info.st_ino)
        entry = self._cache.get(relative)
        if entry is not None and entry[0] == key:
            self._cache.move_to_end(relative)
            return entry[1]
        try:
            fresh, key = await anyio.to_thread.run_sync(self._read, path, relative)
        except OSError:
            return None
        self._remember(relative, key, fresh)
        return fresh

    @staticmethod
    def _read(path: Path, relative: str) -> tuple[StaticFile, tuple[int, int, int]]:
        # fstat on the open file: the bytes and the key describe the same version even if the
        # builder swaps the folder in between.
        with path.open("rb") as handle:
            info = os.fstat(handle.fileno())
            body = handle.read()
        return (StaticFile.of(relative, body, info.st_mtime),
                (info.st_mtime_ns, info.st_size, info.st_ino))

    def _remember(self, relative: str, key: tuple[int, int, int], file: StaticFile) -> None:
        old = self._cache.pop(relative, None)
        if old is not None:
            self._cached_bytes -= _footprint(old[1])
        self._cache[relative] = (key, file)
        self._cached_bytes += _footprint(file)
        while self._cached_bytes > CACHE_TOTAL_BYTES and self._cache:
            _, (_, dropped) = self._cache.popitem(last=False)
            self._cached_bytes -= _footprint(dropped)


def _footprint(file: StaticFile) -> int:
    return len(file.body) + len(file.gzipped or b"")


def accepts_gzip(accept_encoding: str) -> bool:
    """Return whether an Accept-Encoding header allows gzip (``q=0`` refuses it)."""
    allowed: bool | None = None
    wildcard = False
    for item in accept_encoding.lower().split(","):
        coding, _, params = item.strip().partition(";")
        quality = 1.0
        for param in params.split(";"):
            name, _, value = param.strip().partition("=")
            if name == "q":
                try:
                    quality = float(value)
                except ValueError:
                    quality = 0.0
        if coding.strip() in ("gzip", "x-gzip"):
            allowed = quality > 0
        elif coding.strip() == "*":
            wildcard = quality > 0
    return allowed if allowed is not None else wildcard


def etag_matches(if_none_match: str, etags: Iterable[str]) -> bool:
    """Return whether If-None-Match names one of ``etags`` (weak comparison, ``*`` matches)."""
    listed = {tag.strip().removeprefix("W/") for tag in if_none_match.split(",")}
    return "*" in listed or not listed.isdisjoint(etags)


def not_modified(headers: Headers, etags: Iterable[str], mtime: int | None) -> bool:
    """Decide a conditional GET: If-None-Match first, else If-Modified-Since (RFC 9110 13.2.2)."""
    if_none_match = headers.get("if-none-match")
    if if_none_match is not None:
        return etag_matches(if_none_match, etags)
    since = headers.get("if-modified-since")
    if since is None or mtime is None:
        return False
    try:
        when = parsedate_to_datetime(since)
    except (TypeError, ValueError):
        return False
    return when.tzinfo is not None and mtime <= when.timestamp()


class SlidingWindow:
    """Allow at most ``limit`` events per key within any ``window`` seconds, in memory."""

    # One process only: each worker of a multi-process server would keep its own counts.
    def __init__(self, limit: int, window: float, max_keys: int = RATE_LIMIT_KEYS) -> None:
        self.limit = limit
        self.window = window
        self.max_keys = max_keys
        self._hits: OrderedDict[str, deque[float]] = OrderedDict()

    def hit(self, key: str, now: float) -> float | None:
        """Record an event for ``key`` and return None, or the seconds to wait when over."""
        hits = self._hits.setdefault(key, deque())
        self._hits.move_to_end(key)
        while hits and hits[0] <= now - self.window:
            hits.popleft()
        if len(hits) >= self.limit:
            return hits[0] + self.window - now
        hits.append(now)
        while len(self._hits) > self.max_keys:
            self._hits.popitem(last=False)
        return None


def origin_of(url: str) -> str:
    """Return the ``scheme://host[:port]`` origin of an absolute URL."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}".lower()


def same_origin(headers: Headers, own: Iterable[str]) -> bool:
    """Return whether a form post comes from our own pages (Fetch Metadata, then Origin)."""
    fetch_site = headers.get("sec-fetch-site")
    if fetch_site in ("same-origin", "none"):
        return True
    origin = headers.get("origin")
    if origin is not None:
        return origin.lower() in set(own)
    # A browser sends at least one of Sec-Fetch-Site and Origin with every cross-site POST; a
    # request carrying neither is not a browser's, so it cannot be a forged cross-site form.
    return fetch_site is None


def preview_allowed(request: Request, token: str | None) -> bool:
    """Return whether a request may see previews: by token if one is set, else loopback only."""
    if token:  # required from everyone, even loopback clients
        given = request.headers.get(PREVIEW_TOKEN_HEADER) or request.query_params.get("token")
        return given is not None and hmac.compare_digest(given.encode(), token.encode())
    # Without a token only this machine may look, and a request relayed by a proxy may come
    # from anywhere.
    if any(name in request.headers for name in _FORWARDING_HEADERS) or request.client is None:
        return False
    try:
        return ipaddress.ip_address(request.client.host).is_loopback
    except ValueError:
        return request.client.host == "localhost"


def allowed_hosts(config: Config) -> list[str]:
    """Return the host names answered: base_url's, this machine's and ``[web] allowed_hosts``."""
    # Any other name in the Host header may be a name an attacker points at this machine
    # (DNS rebinding), to make a visitor's browser read what only this machine may see.
    own = config.site.domain
    return [f"[{own}]" if ":" in own else own, *_LOOPBACK_HOSTS, *config.web.allowed_hosts]


def content_security_policy(config: Config) -> str:
    """Return the CSP of every page: scripts only from files of this site, no framing."""
    base = origin_of(config.site.base_url)
    return "; ".join((
        "default-src 'self'",
        f"script-src 'self' {base}",
        # Article HTML and the site's stylesheet may use style attributes.
        f"style-src 'self' {base} 'unsafe-inline'",
        "img-src 'self' https: data:",
        "media-src 'self' https:",
        "object-src 'none'",
        "base-uri 'none'",
        f"form-action 'self' {base}",
        "frame-ancestors 'none'",
    ))


# An email is shown as its recipient would see it: inline styles and remote images, no script.
EMAIL_PREVIEW_POLICY = ("default-src 'none'; style-src 'unsafe-inline'; img-src https: http: "
                        "data:; frame-ancestors 'none'; base-uri 'none'; form-action 'none'")


class SecurityHeaders:
    """ASGI middleware adding security headers to every response that did not set its own."""

    def __init__(self, app: ASGIApp, config: Config) -> None:
        self.app = app
        self.headers = [(name.encode("latin-1"), value.encode("latin-1")) for name, value in (
            ("content-security-policy", content_security_policy(config)),
            ("x-content-type-options", "nosniff"),
            ("x-frame-options", "DENY"),
            ("referrer-policy", "same-origin"),
            ("cross-origin-opener-policy", "same-origin"),
        )]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Pass the request on, adding the headers to the response start."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            """Add the missing security headers to the response start, then send it."""
            if message["type"] == "http.response.start":
                raw: list[tuple[bytes, bytes]] = list(message.get("headers", []))
                present = {name.lower() for name, _ in raw}
                raw.extend(item for item in self.headers if item[0] not in present)
                message["headers"] = raw
            await send(message)

        await self.app(scope, receive, send_with_headers)


class Previews:
    """Emails and feeds as they will look on any date, for a sample subscriber."""

    def __init__(self, config: Config, mailer: Mailer, env: jinja2.Environment) -> None:
        self.config = config
        self.mailer = mailer
        self.env = env
        self.cache = ArticleCache()

    def events(self, start: date, days: int) -> tuple[list[Event], list[ContentError]]:
        """Return the appearances from ``start`` for ``days`` days, with the broken files."""
        return upcoming_events(self.config, start, days, cache=self.cache)

    def email(self, slug: str, day: date) -> Preview | None:
        """Return the sample's email of one article (``@digest``: the digest) on a day, or None."""
        events = load_calendar(self.config, self.cache)[0].events_on(day)
        if slug == DIGEST_SLUG:
            return (digest_edition(self.mailer, events, day).preview(SAMPLE_RECIPIENT)
                    if events else None)
        event = next((event for event in events if event.article.slug == slug), None)
        return self.mailer.edition(event).preview(SAMPLE_RECIPIENT) if event else None

    def feed(self, day: date, name: str) -> bytes | None:
        """Return one feed file as it stands on ``day``, or None for an unknown name."""
        if name not in _FEED_TYPES:
            return None
        calendar, _ = load_calendar(self.config, self.cache)
        return build_feeds(self.config.site, calendar, day, self.env)[name]


def _parse_day(value: str) -> date:
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise HTTPException(400, f"Expected a date as YYYY-MM-DD, got {value!r}.") from None


class WebService:
    """The request handlers, over one configuration, ledger, secret and mailer."""

    def __init__(self, config: Config, ledger: Ledger, secret: bytes, *,
                 env: jinja2.Environment | None = None,
                 clock: Clock = utcnow,
                 open_transport: Callable[[Config], transports.Transport]
                 = transports.open_transport) -> None:
        self.config = config
        self.site = config.site
        self.env = env or site_environment(config)
        self.clock = clock
        self.mailer = Mailer(config, secret, self.env, clock=clock)
        self.subscriptions = Subscriptions(config, ledger, secret, self.mailer, clock,
                                           open_transport)
        self.previews = Previews(config, self.mailer, self.env)
        self.webhooks = Webhooks(config, ledger, secret, clock=clock)
        self.files = SiteFiles(config.site.output_dir)
        self.articles = ArticleCache()  # for the topics the choice fields offer
        self.per_ip = SlidingWindow(config.web.rate_limit_per_ip, RATE_WINDOW_SECONDS)
        self.per_address = SlidingWindow(config.web.rate_limit_per_address, RATE_WINDOW_SECONDS)
        self.origins = frozenset({origin_of(config.site.base_url)})
        # Rendered once at start-up: a broken override fails here, not on a visitor's request.
        self.script = StaticFile.of("subscribe.js", render(self.env, "subscribe.js", {
            "site": self.site}).encode("utf-8"))

    def page(self, template: str, request: Request, status: int = 200,
             headers: Mapping[str, str] | None = None, **values: Any) -> HTMLResponse:
        """Render one of the service's pages inside the site's layout."""
        # Relative: the page loads its stylesheet and script, and posts its forms, to the host
        # that served it (a local preview, a staging name), whatever base_url says.
        root = relative_root(request.url.path)
        context = {"site": self.site, "root": root, "service_root": root,
                   "feeds": feed_links(self.site), "page_url": self.site.url(request.url.path),
                   **values}
        html_text = render(self.env, template, context)
        return HTMLResponse(html_text, status_code=status, headers={
            "cache-control": PAGE_CACHE, "x-robots-tag": "noindex", **(headers or {})})

    async def form(self, request: Request, *, one_click: bool = False) -> FormData:
        """Read a posted form; refuse one from another site, bar RFC 8058's if ``one_click``."""
        form = await request.form(max_files=0, max_fields=20)
        # A mail provider posts the one-click body from its own servers, with no cookie and no
        # Origin; the signed token in the URL is the whole authorisation, as RFC 8058 intends.
        cross_site_ok = one_click and form.get("List-Unsubscribe") == "One-Click"
        # Our origin is the configured one, or the one the browser used to reach us (e.g. over
        # an SSH tunnel or before DNS points at the server).
        used = f"{request.url.scheme}://{request.headers.get('host', '')}".lower()
        if not cross_site_ok and not same_origin(request.headers, {*self.origins, used}):
            raise HTTPException(403, "This form can only be sent from this site's own pages.")
        return form

    async def static(self, request: Request) -> Response:
        """Serve a file of the built site."""
        found = await self.files.find(request.url.path)
        if found is None:
            raise HTTPException(404, "There is no page at this address.")
        return found.response(request)

    async def subscribe_script(self, request: Request) -> Response:
        """Serve the script that fills in the browser's time zone."""
        return self.script.response(request)

    async def subscribe_page(self, request: Request) -> Response:
        """Show the sign-up form on its own page, with the choices a subscriber can make."""
        return self.page("subscribe.html", request, email="", name="", error=None,
                         **await self.choice_fields(Choices()))

    async def choice_fields(self, choices: Choices) -> dict[str, Any]:
        """Return what the choice fields show: the choices, the archive's topics, the time."""
        return {"choices": choices, "tags": await anyio.to_thread.run_sync(self.topics),
                "publish_time": self.site.publish_time.strftime("%H:%M")}

    def topics(self) -> list[tuple[str, str]]:
        """Return the tags of the archive's articles as (key, name), by key."""
        try:
            articles = load_articles(self.site.content_dir, self.articles).articles
        except ContentError:
            return []
        return sorted({tag_key(tag): tag for article in articles for tag in article.tags
                       if tag_key(tag)}.items())

    async def subscribe(self, request: Request) -> Response:
        """Take a sign-up: the same page and status whether or not the address is known."""
        client = request.client.host if request.client else "unknown"
        now = self.clock().timestamp()
        wait = self.per_ip.hit(client, now)
        if wait is not None:
            raise HTTPException(429, "Too many sign-ups from your network; please try later.",
                                headers={"Retry-After": str(int(wait) + 1)})
        form = await self.form(request)
        email, name = str(form.get("email", "")), str(form.get("name", ""))
        try:
            choices = choices_from_form(form)
            sign_up = await anyio.to_thread.run_sync(
                self.subscriptions.sign_up, email, name, str(form.get("timezone", "")), choices)
        except SubscriberError as exc:
            return self.page("subscribe.html", request, status=400, email=email, name=name,
                             error=_form_error(exc), **await self.choice_fields(Choices()))
        response = self.page("subscribe_sent.html", request, email=sign_up.email)
        pending = sign_up.pending
        # Past the per-address limit nothing is sent, and the page says the same as ever:
        # the limit must not tell anyone which addresses are being signed up.
        if pending is not None and self.per_address.hit(sign_up.email, now) is None:
            response.background = BackgroundTask(self.subscriptions.deliver_confirmation,
                                                 pending)
        return response

    async def confirm_page(self, request: Request) -> Response:
        """Show the button that confirms a sign-up; a GET alone changes nothing."""
        token = request.path_params["token"]
        email = await anyio.to_thread.run_sync(self.subscriptions.confirm_address, token)
        return self.page("subscribe_confirm.html", request, email=email,
                         action=f"{relative_root(request.url.path)}confirm/{token}")

    async def confirm(self, request: Request) -> Response:
        """Confirm a sign-up."""
        await self.form(request)
        subscriber = await anyio.to_thread.run_sync(self.subscriptions.confirm,
                                                    request.path_params["token"])
        return self.page("subscribe_confirmed.html", request, email=subscriber.email,
                         preferences=self.subscriptions.preferences_link(subscriber))

    async def unsubscribe_page(self, request: Request) -> Response:
        """Show the unsubscribe button; link scanners that GET this page unsubscribe nobody."""
        token = request.path_params["token"]
        email = await anyio.to_thread.run_sync(self.subscriptions.unsubscribe_address, token)
        if email is None:  # nothing to offer: say so rather than show a button
            return self._unsubscribed(request, None, changed=False)
        return self.page("unsubscribe.html", request, email=email,
                         action=f"{relative_root(request.url.path)}unsubscribe/{token}",
                         headers=NO_REFERRER)

    async def unsubscribe(self, request: Request) -> Response:
        """Unsubscribe at once: the button's form, or a mail provider's RFC 8058 POST."""
        await self.form(request, one_click=True)
        done = await anyio.to_thread.run_sync(self.subscriptions.unsubscribe,
                                              request.path_params["token"])
        return self._unsubscribed(request, done.email, changed=done.changed)

    def _unsubscribed(self, request: Request, email: str | None, *, changed: bool
                      ) -> HTMLResponse:
        return self.page("unsubscribe_done.html", request, email=email, changed=changed,
                         headers=NO_REFERRER)

    async def _preferences(self, request: Request, subscriber: Subscriber | None, *,
                           status: int = 200, saved: bool = False, error: str | None = None
                           ) -> Response:
        token = request.path_params["token"]
        if subscriber is None:  # unsubscribed since, or never confirmed: nothing to choose
            return self._unsubscribed(request, None, changed=False)
        root = relative_root(request.url.path)
        return self.page("preferences.html", request, status=status, email=subscriber.email,
                         action=f"{root}preferences/{token}", saved=saved, error=error,
                         unsubscribe=f"{root}unsubscribe/{token}",
                         headers=NO_REFERRER, **await self.choice_fields(subscriber.choices))

    async def preferences_page(self, request: Request) -> Response:
        """Show a subscriber's choices, as their emails' link names them; change nothing."""
        found = await anyio.to_thread.run_sync(self.subscriptions.preferences_of,
                                               request.path_params["token"])
        return await self._preferences(request, found)

    async def save_preferences(self, request: Request) -> Response:
        """Store the choices posted from the preferences page (from this site's pages only)."""
        form = await self.form(request)
        token = request.path_params["token"]
        found = await anyio.to_thread.run_sync(self.subscriptions.preferences_of, token)
        try:
            choices = choices_from_form(form)
        except SubscriberError as exc:
            return await self._preferences(request, found, status=400, error=_form_error(exc))
        saved = await anyio.to_thread.run_sync(self.subscriptions.save_preferences, token,
                                               choices)
        return await self._preferences(request, saved, saved=saved is not None)

    def _check_preview(self, request: Request) -> dict[str, str]:
        if not preview_allowed(request, self.config.web.preview_token):
            raise HTTPException(403, "Previews are served to this machine only, or with the "
                                     "preview token (web.preview_token).")
        token = request.query_params.get("token")
        return {"token": token} if token else {}

    async def preview_index(self, request: Request) -> Response:
        """List the coming appearances with links to each email and to the feeds of each day."""
        keep = self._check_preview(request)
        given = request.query_params.get("from")
        start = _parse_day(given) if given else local_date(self.clock(), self.site.zone)
        try:
            days = min(max(int(request.query_params.get("days", PREVIEW_DAYS)), 1),
                       PREVIEW_MAX_DAYS)
        except ValueError:
            raise HTTPException(400, "days must be a whole number") from None
        if start.toordinal() + days - 1 > date.max.toordinal():
            raise HTTPException(400, f"{days} days from {start.isoformat()} go past "
                                     f"{date.max.isoformat()}, the last day there is.")
        events, errors = await anyio.to_thread.run_sync(self.previews.events, start, days)
        query = f"?{urlencode(keep)}" if keep else ""
        return self.page("preview.html", request, start=start, days=days, events=events,
                         errors=errors, query=query, token=keep.get("token"),
                         sample=SAMPLE_RECIPIENT,
                         feed_names=[feed.name for feed in FEEDS], headers=NO_REFERRER)

    async def preview_email(self, request: Request) -> Response:
        """Show one email, HTML (``.html``) or text (``.txt``), for the sample subscriber."""
        self._check_preview(request)
        day = _parse_day(request.path_params["day"])
        name: str = request.path_params["name"]
        slug, dot, kind = name.rpartition(".")
        if not dot or kind not in ("html", "txt"):
            raise HTTPException(404, "Ask for SLUG.html or SLUG.txt.")
        preview = await anyio.to_thread.run_sync(self.previews.email, slug, day)
        if preview is None:
            raise HTTPException(404, f"No article {slug!r} appears on {day.isoformat()}.")
        if kind == "txt":
            return PlainTextResponse(f"Subject: {preview.subject}\n\n{preview.text}",
                                     headers=PREVIEW_HEADERS)
        return HTMLResponse(preview.html, headers={
            **PREVIEW_HEADERS, "content-security-policy": EMAIL_PREVIEW_POLICY})

    async def preview_feed(self, request: Request) -> Response:
        """Serve one feed as it will stand on a day (``?view=text`` shows it as plain text)."""
        self._check_preview(request)
        day = _parse_day(request.path_params["day"])
        name: str = request.path_params["name"]
        body = await anyio.to_thread.run_sync(self.previews.feed, day, name)
        if body is None:
            raise HTTPException(404, f"No feed is called {name!r}.")
        content_type = ("text/plain; charset=utf-8" if request.query_params.get("view") == "text"
                        else media_type(name))
        return Response(body, headers={"content-type": content_type, **PREVIEW_HEADERS})

    async def http_error(self, request: Request, exc: Exception) -> Response:
        """Render an HTTP error on the error page, keeping its headers (e.g. Retry-After)."""
        assert isinstance(exc, HTTPException)
        try:
            return self.page("error.html", request, status=exc.status_code,
                             headers=exc.headers, status_code=exc.status_code,
                             message=exc.detail)
        except PublisherError:
            log.exception("cannot render error.html")
            return PlainTextResponse(exc.detail, status_code=exc.status_code,
                                     headers=exc.headers)

    async def token_error(self, request: Request, exc: Exception) -> Response:
        """Answer a forged, garbled or expired link (TokenError) with a 400 error page."""
        return await self.http_error(request, HTTPException(400, str(exc)))

    async def server_error(self, request: Request, exc: Exception) -> Response:
        """Answer an unexpected failure without showing its details (the server logs them)."""
        return await self.http_error(request, HTTPException(
            500, "Something went wrong on our side; please try again later."))

    async def purge_regularly(self) -> None:
        """Delete stale pending sign-ups now and every hour while the app runs."""
        while True:
            try:
                purged = await anyio.to_thread.run_sync(self.subscriptions.purge)
            except PublisherError as exc:
                log.warning("purging stale sign-ups failed: %s", exc)
            else:
                if purged:
                    log.info("purged %d sign-up(s) never confirmed", purged)
            await anyio.sleep(PURGE_INTERVAL_SECONDS)

    def routes(self) -> list[Route]:
        """Return the routes, the built site last so that it catches every other GET."""
        return [
            Route("/subscribe", self.subscribe_page, methods=["GET"]),
            Route("/subscribe", self.subscribe, methods=["POST"]),
            Route("/subscribe.js", self.subscribe_script, methods=["GET"]),
            Route("/confirm/{token}", self.confirm_page, methods=["GET"]),
            Route("/confirm/{token}", self.confirm, methods=["POST"]),
            Route("/unsubscribe/{token}", self.unsubscribe_page, methods=["GET"]),
            Route("/unsubscribe/{token}", self.unsubscribe, methods=["POST"]),
            Route("/preferences/{token}", self.preferences_page, methods=["GET"]),
            Route("/preferences/{token}", self.save_preferences, methods=["POST"]),
            Route("/preview", self.preview_index, methods=["GET"]),
            Route("/preview/", self.preview_index, methods=["GET"]),
            Route("/preview/email/{day}/{name}", self.preview_email, methods=["GET"]),
            Route("/preview/feeds/{day}/{name}", self.preview_feed, methods=["GET"]),
            *self.webhooks.routes(),
            Route("/{path:path}", self.static, methods=["GET"]),
        ]


def relative_root(url_path: str) -> str:
    """Return the relative URL of the service's root from a page at ``url_path``."""
    depth = url_path.count("/") - 1
    return "../" * depth if depth > 0 else "./"


def choices_from_form(form: FormData) -> Choices:
    """Read the choice fields of a posted form; SubscriberError names a bad one."""
    which = str(form.get("anniversaries", "every"))
    return parse_choices(
        years=str(form.get("years", "")) if which == "years" else which,
        frequency=str(form.get("frequency", "")), at=str(form.get("time", "")),
        tags=[str(tag) for tag in form.getlist("tags")])


def _form_error(exc: SubscriberError) -> str:
    if exc.field == "name":
        return f"Please shorten the name: it is {exc.message}."
    if exc.field in ("years", "frequency", "time", "tags"):
        return f"Please check the {exc.field}: {exc.message}."
    return f"Please check the address: {exc.message}"


def create_app(config: Config, *, ledger: Ledger | None = None, secret: bytes | None = None,
               env: jinja2.Environment | None = None,
               clock: Clock = utcnow,
               open_transport: Callable[[Config], transports.Transport]
               = transports.open_transport,
               purge: bool = True) -> Starlette:
    """Build the Starlette application; the ledger is opened here unless one is given."""
    with contextlib.ExitStack() as stack:
        if ledger is None:
            ledger = stack.enter_context(Ledger.open(config.state.database_url))
        service = WebService(config, ledger, secret or load_secret(config), env=env,
                             clock=clock, open_transport=open_transport)
        owned = stack.pop_all()  # an opened ledger stays open until the app shuts down

    @contextlib.asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        """Purge stale sign-ups while the app runs; close an owned ledger at shutdown."""
        async with anyio.create_task_group() as tasks:
            if purge:
                tasks.start_soon(service.purge_regularly)
            try:
                yield
            finally:
                tasks.cancel_scope.cancel()
                owned.close()

    app = Starlette(
        routes=service.routes(),
        exception_handlers={HTTPException: service.http_error, TokenError: service.token_error,
                            500: service.server_error},
        lifespan=lifespan,
        max_body_size=MAX_BODY_BYTES,
    )
    app.add_middleware(TrustedHostMiddleware, allowed_hosts=allowed_hosts(config),
                       www_redirect=False)
    app.add_middleware(SecurityHeaders, config=config)
    app.state.service = service
    return app


def _server_config(app: ASGIApp, *, access_log: bool) -> uvicorn.Config:
    return uvicorn.Config(
        app, log_config=None, access_log=access_log, server_header=False,
        # Behind a proxy on this machine, X-Forwarded-For names the real client, which the
        # per-client limit and the preview check need.
        proxy_headers=True, lifespan="on",
    )


def bind(host: str, port: int) -> socket.socket:
    """Open a listening TCP socket (port 0: any free port)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP explicitly: asyncio turns Nagle's algorithm off only on sockets that say so,
    # and with it on every response waits ~40 ms for the client's delayed ACK.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(socket.SOMAXCONN)
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


def serve(config: Config, sock: socket.socket, *, access_log: bool = True) -> None:
    """Serve the application on a bound socket in the foreground until SIGINT or SIGTERM."""
    # uvicorn shuts down gracefully on either signal, then raises it again under the previous
    # handler; both then end here as KeyboardInterrupt (exit status 0, no traceback).
    previous = signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        with sock:
            app = create_app(config)
            log.info("serving %s on http://%s", config.site.base_url, _address(sock))
            uvicorn.Server(_server_config(app, access_log=access_log)).run(sockets=[sock])
    except KeyboardInterrupt:
        log.info("stopped")
    finally:
        signal.signal(signal.SIGTERM, previous)


def _address(sock: socket.socket, *, reachable: bool = False) -> str:
    host, port = sock.getsockname()[:2]
    # A wildcard address listens on loopback too, the address previews without a token answer.
    if reachable and ipaddress.ip_address(host).is_unspecified:
        host = "::1" if ":" in host else "127.0.0.1"
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def own_url(sock: socket.socket) -> str:
    """Return the ``http://`` root at which this machine reaches a bound socket."""
    return f"http://{_address(sock, reachable=True)}/"


@contextlib.contextmanager
def beside(config: Config, sock: socket.socket | None, *, access_log: bool = True
           ) -> Iterator[None]:
    """Serve the application in the background while the block runs, if given a socket."""
    if sock is None:
        yield
        return
    with contextlib.closing(sock), serving(create_app(config), sock,
                                           access_log=access_log) as url:
        log.info("serving %s on %s", config.site.base_url, url)
        yield


@contextlib.contextmanager
def serving(app: ASGIApp, sock: socket.socket, *, access_log: bool = True) -> Iterator[str]:
    """Serve ``app`` on a bound socket from a background thread; yield its ``http://`` address."""
    server = uvicorn.Server(_server_config(app, access_log=access_log))
    # The thread starts with SIGINT and SIGTERM blocked, so they reach the main thread (e.g.
    # the daemon's wait) rather than the server.
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    with contextlib.closing(sock), ThreadPoolExecutor(1, "web") as pool:
        try:
            running = pool.submit(server.run, sockets=[sock])
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, previous)
        try:
            deadline = time.monotonic() + START_TIMEOUT_SECONDS
            while not server.started and not running.done() and time.monotonic() < deadline:
                time.sleep(0.01)
            if not server.started:
                raise RuntimeError("the web server did not start") from (
                    running.exception() if running.done() else None)
            yield f"http://{_address(sock)}"
        finally:
            server.should_exit = True
