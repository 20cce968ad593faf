"""Load and validate ``publisher.toml``; every default lives here."""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import time
from email.utils import formataddr
from pathlib import Path
from typing import Any, Literal, cast, get_args
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from publisher.errors import ConfigError

CONFIG_NAME = "publisher.toml"
LeapDay = Literal["feb28", "mar1", "skip"]
TransportName = Literal["smtp", "maildir"]
Security = Literal["starttls", "ssl", "none"]
# Named here, in a module without heavy imports, because the command line offers them as
# choices: the daemon's log formats and the ledger's subscriber states.
LogFormat = Literal["text", "json"]
LOG_FORMATS: tuple[LogFormat, ...] = get_args(LogFormat)
SubscriberStatus = Literal["pending", "confirmed", "unsubscribed", "bounced"]
SUBSCRIBER_STATUSES: tuple[SubscriberStatus, ...] = get_args(SubscriberStatus)


@dataclass(frozen=True)
class SiteConfig:
    """The ``[site]`` table: what the archive is and where its files live."""

    title: str
    base_url: str
    timezone: str
    publish_time: time
    language: str
    content_dir: Path
    output_dir: Path
    leap_day: LeapDay
    feed_items: int
    description: str
    author: str | None
    templates_dir: Path | None
    websub_hub: str | None = None

    @property
    def zone(self) -> ZoneInfo:
        """Return the site's time zone."""
        return ZoneInfo(self.timezone)

    @property
    def domain(self) -> str:
        """Return the host name of ``base_url``."""
        return urlsplit(self.base_url).hostname or "localhost"

    def url(self, path: str = "") -> str:
        """Return the absolute URL of a path below ``base_url``."""
        return self.base_url + path.lstrip("/")

    def article_url(self, slug: str) -> str:
        """Return the absolute URL of an article's archive page."""
        return self.url(f"articles/{slug}/")


@dataclass(frozen=True)
class StateConfig:
    """The ``[state]`` table: where the ledger lives."""

    database_url: str
    key_file: Path


@dataclass(frozen=True)
class SmtpConfig:
    """The ``[email.smtp]`` table."""

    host: str
    port: int
    security: Security
    username: str | None
    timeout: float
    connections: int
    rate_limit: float

    @property
    def password(self) -> str | None:
        """Return the password from ``PUBLISHER_SMTP_PASSWORD``, if set."""
        return os.environ.get("PUBLISHER_SMTP_PASSWORD")


@dataclass(frozen=True)
class DkimConfig:
    """The ``[email.dkim]`` table: present only when signing is wanted."""

    domain: str
    selector: str
    private_key: Path


@dataclass(frozen=True)
class EmailConfig:
    """The ``[email]`` table: sender, subject, transport and retry policy."""

    sender: str
    reply_to: str | None
    subject: str
    transport: TransportName
    maildir: Path
    smtp: SmtpConfig
    dkim: DkimConfig | None
    batch_size: int
    max_attempts: int
    retry_base_seconds: int
    give_up_hours: int
    unsubscribe_mailto: str | None
    confirm_subject: str = "Confirm your subscription to {{ site.title }}"
    digest_subject: str = "{{ site.title }}: {{ day|longdate }}"
    bounce_address: str | None = None


@dataclass(frozen=True)
class ScheduleConfig:
    """The ``[schedule]`` table: tick cadence and catch-up window."""

    catch_up_days: int
    tick_seconds: int
    misfire_grace_seconds: int
    lease_seconds: int


@dataclass(frozen=True)
class WebConfig:
    """The ``[web]`` table: the HTTP service."""

    host: str
    port: int
    preview_token: str | None
    pending_days: int
    confirm_hours: int
    rate_limit_per_ip: int
    rate_limit_per_address: int
    # Host names answered besides base_url's and loopback's: "name", "*.name", or "*" for any.
    allowed_hosts: tuple[str, ...] = ()


@dataclass(frozen=True)
class ImapConfig:
    """The ``[bounces.imap]`` table: the mailbox that receives bounces and complaints."""

    host: str
    port: int
    security: Security
    username: str
    folder: str
    processed_folder: str
    timeout: float

    @property
    def password(self) -> str | None:
        """Return the password from ``PUBLISHER_IMAP_PASSWORD``, if set."""
        return os.environ.get("PUBLISHER_IMAP_PASSWORD")


@dataclass(frozen=True)
class WebhookConfig:
    """One provider's table in ``[bounces]`` (``ses``, ``postmark``, …): present turns it on."""

    name: str
    settings: Mapping[str, str]
    secret_key: str | None = None

    @property
    def secret_env(self) -> str | None:
        """Return the environment variable that may hold the secret instead of the file."""
        return f"PUBLISHER_{self.name}_{self.secret_key}".upper() if self.secret_key else None

    def get(self, key: str) -> str | None:
        """Return a setting; the secret comes from its environment variable when that is set."""
        if key == self.secret_key and self.secret_env and os.environ.get(self.secret_env):
            return os.environ[self.secret_env]
        return self.settings.get(key)


# Each provider's table: the keys it takes, the one that must be set, and the secret (which
# its environment variable, e.g. PUBLISHER_MAILGUN_SIGNING_KEY, may hold instead).
WEBHOOKS: dict[str, tuple[tuple[str, ...], str | None, str | None]] = {
    "ses": (("topic_arn",), "topic_arn", None),
    "postmark": (("username", "password"), "username", "password"),
    "sendgrid": (("public_key",), None, "public_key"),
    "mailgun": (("signing_key",), None, "signing_key"),
}


@dataclass(frozen=True)
class BouncesConfig:
    """The ``[bounces]`` table: where returns are read, and what they do to a subscriber."""

    maildir: Path | None = None
    imap: ImapConfig | None = None
    poll_minutes: int = 5
    soft_limit: int = 3
    soft_days: int = 30
    webhooks: Mapping[str, WebhookConfig] = field(default_factory=dict)

    @property
    def mailboxes(self) -> bool:
        """Return whether any mailbox is configured to be read."""
        return self.maildir is not None or self.imap is not None


@dataclass(frozen=True)
class Config:
    """The whole validated configuration."""

    site: SiteConfig
    state: StateConfig
    email: EmailConfig
    schedule: ScheduleConfig
    web: WebConfig
    path: Path | None = None
    base_dir: Path = field(default_factory=Path.cwd)
    bounces: BouncesConfig = field(default_factory=BouncesConfig)


_LANGUAGE_TAG = re.compile(r"[A-Za-z]{2,8}(-[A-Za-z0-9]{1,8})*")
_TIME = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)$")
_HOST_PATTERN = re.compile(r"\*|(?:\*\.)?[a-z0-9_-]+(?:\.[a-z0-9_-]+)*\.?|\[[0-9a-f:.]+\]",
                           re.IGNORECASE)


class _Table:
    """Read typed values from one TOML table and name the key in every error."""

    def __init__(self, data: Mapping[str, Any], name: str, path: Path | None) -> None:
        self.data = data
        self.name = name
        self.path = path
        self.used: set[str] = set()

    def _fail(self, key: str, problem: str) -> ConfigError:
        return ConfigError(problem, path=self.path, field=f"{self.name}.{key}")

    def get(self, key: str, kind: type, default: Any) -> Any:
        """Return ``key`` checked to be of ``kind``, or ``default`` when absent."""
        self.used.add(key)
        if key not in self.data:
            return default
        value = self.data[key]
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise self._fail(key, f"expected {kind.__name__}, got {type(value).__name__} {value!r}")
        return value

    def text(self, key: str, default: str) -> str:
        """Return a string value."""
        return cast(str, self.get(key, str, default))

    def optional_text(self, key: str) -> str | None:
        """Return a string value, or None when absent or empty."""
        value = self.get(key, str, None)
        return cast("str | None", value) or None

    def number(self, key: str, default: int, minimum: int = 0) -> int:
        """Return an integer of at least ``minimum``."""
        value = cast(int, self.get(key, int, default))
        if value < minimum:
            raise self._fail(key, f"must be at least {minimum}, got {value}")
        return value

    def real(self, key: str, default: float, minimum: float = 0.0) -> float:
        """Return a number of at least ``minimum`` as a float."""
        value = cast(float, self.get(key, float, default))
        if value < minimum:
            raise self._fail(key, f"must be at least {minimum}, got {value}")
        return value

    def choice(self, key: str, default: str, kind: object) -> Any:
        """Return a string that is one of the values of the ``Literal`` type ``kind``."""
        choices: tuple[str, ...] = get_args(kind)
        value = self.text(key, default)
        if value not in choices:
            raise self._fail(key, f"must be one of {', '.join(choices)}; got {value!r}")
        return value

    def clock_time(self, key: str, default: str) -> time:
        """Return an ``HH:MM`` value (24-hour clock) as a time."""
        value = self.text(key, default)
        match = _TIME.match(value)
        if not match:
            raise self._fail(key, f"expected HH:MM on a 24-hour clock, got {value!r}")
        return time(int(match.group(1)), int(match.group(2)))

    def path_value(self, key: str, default: str | None, base: Path) -> Path | None:
        """Return a path, ``~`` expanded and relative ones taken from ``base``."""
        value = self.get(key, str, default)
        if value is None:
            return None
        candidate = Path(os.path.expanduser(value))
        return candidate if candidate.is_absolute() else base / candidate

    def table(self, key: str) -> _Table:
        """Return a sub-table (empty when absent) for reading."""
        self.used.add(key)
        value = self.data.get(key, {})
        if not isinstance(value, dict):
            raise self._fail(key, f"expected a table, got {type(value).__name__}")
        return _Table(value, f"{self.name}.{key}" if self.name else key, self.path)

    def has(self, key: str) -> bool:
        """Return whether the table sets ``key``."""
        return key in self.data

    def reject_unknown(self) -> None:
        """Raise ConfigError for the first key that no read asked for."""
        unknown = sorted(set(self.data) - self.used)
        if unknown:
            raise self._fail(unknown[0], "unknown key")


def _site(t: _Table, base: Path) -> SiteConfig:
    base_url = t.text("base_url", "http://127.0.0.1:8000/")
    if not _absolute_http(base_url):
        raise t._fail("base_url", f"must be an absolute http(s) URL, got {base_url!r}")
    if not base_url.endswith("/"):
        base_url += "/"
    zone = t.text("timezone", "UTC")
    try:
        ZoneInfo(zone)
    except (ZoneInfoNotFoundError, ValueError):
        raise t._fail("timezone", f"unknown IANA time zone {zone!r}") from None
    publish = t.clock_time("publish_time", "09:00")
    language = t.text("language", "en")
    if not _LANGUAGE_TAG.fullmatch(language):
        raise t._fail("language", f"expected a BCP 47 language tag such as 'de' or 'pt-BR', "
                                  f"got {language!r}")
    hub = t.optional_text("websub_hub")
    if hub is not None and not _absolute_http(hub):
        raise t._fail("websub_hub", f"must be an absolute http(s) URL, got {hub!r}")
    feed_items = t.number("feed_items", 50, minimum=1)
    return SiteConfig(
        title=t.text("title", "Anniversaries"),
        base_url=base_url,
        timezone=zone,
        publish_time=publish,
        language=language,
        content_dir=cast(Path, t.path_value("content_dir", "content", base)),
        output_dir=cast(Path, t.path_value("output_dir", "var/site", base)),
        leap_day=t.choice("leap_day", "feb28", LeapDay),
        feed_items=feed_items,
        description=t.text("description", "Articles brought back on their anniversaries."),
        author=t.optional_text("author"),
        templates_dir=t.path_value("templates_dir", None, base),
        websub_hub=hub,
    )


def _absolute_http(url: str) -> bool:
    parts = urlsplit(url)
    return parts.scheme in ("http", "https") and bool(parts.netloc)


def _resolve_sqlite(url: str, base: Path) -> str:
    # A relative SQLite path would otherwise follow the process's working directory.
    prefix = "sqlite:///"
    if url.startswith(prefix) and not url.startswith(prefix + "/") and url != "sqlite://":
        rest = url[len(prefix):]
        if rest and rest != ":memory:":
            return prefix + str(base / rest)
    return url


def _state(t: _Table, base: Path) -> StateConfig:
    url = _resolve_sqlite(t.text("database_url", "sqlite:///var/publisher.db"), base)
    if "://" not in url:
        raise t._fail("database_url", f"expected an SQLAlchemy URL, got {url!r}")
    default_key = "var/secret.key"
    if url.startswith("sqlite:////"):
        default_key = str(Path(url[len("sqlite:///"):]).parent / "secret.key")
    return StateConfig(
        database_url=url,
        key_file=cast(Path, t.path_value("key_file", default_key, base)),
    )


def _email(t: _Table, base: Path, site: SiteConfig) -> EmailConfig:
    s = t.table("smtp")
    smtp = SmtpConfig(
        host=s.text("host", "localhost"),
        port=s.number("port", 587, minimum=1),
        security=s.choice("security", "starttls", Security),
        username=s.optional_text("username"),
        timeout=s.real("timeout", 30.0),
        connections=s.number("connections", 1, minimum=1),
        rate_limit=s.real("rate_limit", 0.0),
    )
    s.reject_unknown()
    dkim: DkimConfig | None = None
    if t.has("dkim"):
        d = t.table("dkim")
        dkim = DkimConfig(
            domain=d.text("domain", site.domain),
            selector=d.text("selector", "publisher"),
            private_key=cast(Path, d.path_value("private_key", "dkim.key", base)),
        )
        d.reject_unknown()
    # formataddr quotes a title holding specials such as "<" or "," so the default stays parseable.
    sender = t.text("from", formataddr((site.title, f"publisher@{site.domain}")))
    if "@" not in sender:
        raise t._fail("from", f"expected 'Name <address>' or an address, got {sender!r}")
    return EmailConfig(
        sender=sender,
        reply_to=t.optional_text("reply_to"),
        subject=t.text("subject", "{{ article.title }} — {{ event|ago }}"),
        transport=t.choice("transport", "maildir", TransportName),
        maildir=cast(Path, t.path_value("maildir", "var/outbox", base)),
        smtp=smtp,
        dkim=dkim,
        batch_size=t.number("batch_size", 200, minimum=1),
        max_attempts=t.number("max_attempts", 12, minimum=1),
        retry_base_seconds=t.number("retry_base_seconds", 60, minimum=1),
        give_up_hours=t.number("give_up_hours", 48, minimum=1),
        unsubscribe_mailto=t.optional_text("unsubscribe_mailto"),
        confirm_subject=t.text("confirm_subject", EmailConfig.confirm_subject),
        digest_subject=t.text("digest_subject", EmailConfig.digest_subject),
        bounce_address=_bounce_address(t),
    )


def _bounce_address(t: _Table) -> str | None:
    value = t.optional_text("bounce_address")
    if value is not None and (value.count("@") != 1 or "<" in value or " " in value.strip()):
        raise t._fail("bounce_address", f"expected a bare address, got {value!r}")
    return value.strip() if value is not None else None


def _bounces(t: _Table, base: Path) -> BouncesConfig:
    imap: ImapConfig | None = None
    if t.has("imap"):
        i = t.table("imap")
        security = i.choice("security", "ssl", Security)
        imap = ImapConfig(
            host=i.text("host", "localhost"),
            port=i.number("port", 993 if security == "ssl" else 143, minimum=1),
            security=security,
            username=i.text("username", ""),
            folder=i.text("folder", "INBOX"),
            processed_folder=i.text("processed_folder", "processed"),
            timeout=i.real("timeout", 30.0),
        )
        if not imap.username:
            raise i._fail("username", "the mailbox's login name is required")
        i.reject_unknown()
    webhooks: dict[str, WebhookConfig] = {}
    for name, (keys, required, secret_key) in WEBHOOKS.items():
        if not t.has(name):
            continue
        w = t.table(name)
        settings = {key: value for key in keys if (value := w.optional_text(key)) is not None}
        w.reject_unknown()
        if required is not None and required not in settings:
            raise w._fail(required, "required when the table is present")
        webhooks[name] = WebhookConfig(name, settings, secret_key)
    return BouncesConfig(
        maildir=t.path_value("maildir", None, base),
        imap=imap,
        poll_minutes=t.number("poll_minutes", 5, minimum=1),
        soft_limit=t.number("soft_limit", 3, minimum=1),
        soft_days=t.number("soft_days", 30, minimum=1),
        webhooks=webhooks,
    )


MAX_TICK_SECONDS = 60  # every zone's publish time is served within a minute


def _schedule(t: _Table) -> ScheduleConfig:
    tick_seconds = t.number("tick_seconds", 30, minimum=1)
    if tick_seconds > MAX_TICK_SECONDS:
        raise t._fail("tick_seconds", f"must be at most {MAX_TICK_SECONDS}, got {tick_seconds}")
    return ScheduleConfig(
        catch_up_days=t.number("catch_up_days", 2),
        tick_seconds=tick_seconds,
        misfire_grace_seconds=t.number("misfire_grace_seconds", 300, minimum=1),
        lease_seconds=t.number("lease_seconds", 300, minimum=10),
    )


def _web(t: _Table) -> WebConfig:
    return WebConfig(
        host=t.text("host", "127.0.0.1"),
        port=t.number("port", 8000, minimum=1),
        preview_token=t.optional_text("preview_token"),
        pending_days=t.number("pending_days", 7, minimum=1),
        confirm_hours=t.number("confirm_hours", 48, minimum=1),
        rate_limit_per_ip=t.number("rate_limit_per_ip", 10, minimum=1),
        rate_limit_per_address=t.number("rate_limit_per_address", 3, minimum=1),
        allowed_hosts=_host_names(t, "allowed_hosts"),
    )


def _host_names(t: _Table, key: str) -> tuple[str, ...]:
    names = t.get(key, list, [])
    for name in names:
        if not isinstance(name, str) or not _HOST_PATTERN.fullmatch(name):
            raise t._fail(key, "expected host names without ports, such as \"example.org\", "
                               f"\"*.example.org\", \"[::1]\" or \"*\"; got {name!r}")
    return tuple(name.lower() for name in names)


def from_mapping(data: Mapping[str, Any], *, path: Path | None = None,
                 base_dir: Path | None = None) -> Config:
    """Validate a parsed TOML document into a :class:`Config`."""
    base = base_dir or (path.parent if path else Path.cwd())
    root = _Table(data, "", path)
    site_t, state_t, email_t = root.table("site"), root.table("state"), root.table("email")
    schedule_t, web_t, bounces_t = root.table("schedule"), root.table("web"), root.table("bounces")
    site = _site(site_t, base)
    config = Config(
        site=site,
        state=_state(state_t, base),
        email=_email(email_t, base, site),
        schedule=_schedule(schedule_t),
        web=_web(web_t),
        path=path,
        base_dir=base,
        bounces=_bounces(bounces_t, base),
    )
    for table in (site_t, state_t, email_t, schedule_t, web_t, bounces_t):
        table.reject_unknown()
    unknown = sorted(set(data) - root.used)
    if unknown:
        raise ConfigError("unknown table", path=path, field=unknown[0])
    return config


def load(path: Path | str | None = None) -> Config:
    """Load ``path``, or ``publisher.toml`` in the working directory, or the embedded defaults."""
    if path is None:
        candidate = Path.cwd() / CONFIG_NAME
        if not candidate.exists():
            return from_mapping({}, base_dir=Path.cwd())
        path = candidate
    path = Path(path).resolve()
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read: {exc.strerror}", path=path) from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ConfigError(f"not UTF-8 ({exc.reason})", path=path) from None
    except tomllib.TOMLDecodeError as exc:
        line = _toml_line(str(exc))
        raise ConfigError(f"invalid TOML: {exc}", path=path, line=line) from None
    return from_mapping(data, path=path)


def _toml_line(message: str) -> int | None:
    match = re.search(r"line (\d+)", message)
    return int(match.group(1)) if match else None
