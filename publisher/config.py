"""Load and validate ``publisher.toml``; every default lives here."""

# Without postponed annotations: the readers below take each field's type from its dataclass.
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from datetime import time
from email.utils import formataddr
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, TypeVar, get_args, get_origin
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from publisher.errors import ConfigError

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

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
MAX_TICK_SECONDS = 60  # every zone's publish time is served within a minute
# Each table's fields are read by their types; a number's least (and greatest) value in the
# file follows its type in Annotated (without one, at least 0).
Positive = Annotated[int, 1]


@dataclass(frozen=True)
class SiteConfig:
    """The ``[site]`` table: what the archive is and where its files live."""

    title: str = "Anniversaries"
    base_url: str = "http://127.0.0.1:8000/"
    timezone: str = "UTC"
    publish_time: time = time(9, 0)
    language: str = "en"
    content_dir: Path = Path("content")
    output_dir: Path = Path("var/site")
    leap_day: LeapDay = "feb28"
    feed_items: Positive = 50
    description: str = "Articles brought back on their anniversaries."
    author: str | None = None
    templates_dir: Path | None = None
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

    host: str = "localhost"
    port: Positive = 587
    security: Security = "starttls"
    username: str | None = None
    timeout: float = 30.0
    connections: Positive = 1
    rate_limit: float = 0.0

    @property
    def password(self) -> str | None:
        """Return the password from ``PUBLISHER_SMTP_PASSWORD``, if set."""
        return os.environ.get("PUBLISHER_SMTP_PASSWORD")


@dataclass(frozen=True)
class DkimConfig:
    """The ``[email.dkim]`` table: present only when signing is wanted."""

    domain: str
    selector: str = "publisher"
    private_key: Path = Path("dkim.key")


@dataclass(frozen=True)
class EmailConfig:
    """The ``[email]`` table: sender, subject, transport and retry policy."""

    sender: str
    reply_to: str | None = None
    subject: str = "{{ article.title }} — {{ event|ago }}"
    transport: TransportName = "maildir"
    maildir: Path = Path("var/outbox")
    smtp: SmtpConfig = field(default_factory=SmtpConfig)
    dkim: DkimConfig | None = None
    batch_size: Positive = 200
    max_attempts: Positive = 12
    retry_base_seconds: Positive = 60
    give_up_hours: Positive = 48
    unsubscribe_mailto: str | None = None
    confirm_subject: str = "Confirm your subscription to {{ site.title }}"
    digest_subject: str = "{{ site.title }}: {{ day|longdate }}"
    bounce_address: str | None = None


@dataclass(frozen=True)
class ScheduleConfig:
    """The ``[schedule]`` table: tick cadence and catch-up window."""

    catch_up_days: int = 2
    tick_seconds: Annotated[int, 1, MAX_TICK_SECONDS] = 30
    misfire_grace_seconds: Positive = 300
    lease_seconds: Annotated[int, 10] = 300


@dataclass(frozen=True)
class WebConfig:
    """The ``[web]`` table: the HTTP service."""

    host: str = "127.0.0.1"
    port: Positive = 8000
    preview_token: str | None = None
    pending_days: Positive = 7
    confirm_hours: Positive = 48
    rate_limit_per_ip: Positive = 10
    rate_limit_per_address: Positive = 3
    # Host names answered besides base_url's and loopback's: "name", "*.name", or "*" for any.
    allowed_hosts: tuple[str, ...] = ()


@dataclass(frozen=True)
class ImapConfig:
    """The ``[bounces.imap]`` table: the mailbox that receives bounces and complaints."""

    host: str = "localhost"
    port: Positive = 993
    security: Security = "ssl"
    username: str = ""
    folder: str = "INBOX"
    processed_folder: str = "processed"
    timeout: float = 30.0

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
    poll_minutes: Positive = 5
    soft_limit: Positive = 3
    soft_days: Positive = 30
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
T = TypeVar("T", bound="DataclassInstance")


class _Table:
    """Read typed values from one TOML table and name the key in every error."""

    def __init__(self, data: Mapping[str, Any], name: str, path: Path | None) -> None:
        self.data = data
        self.name = name
        self.path = path
        self.used: set[str] = set()
        self.tables: list[_Table] = []

    def _field(self, key: str) -> str:
        return f"{self.name}.{key}" if self.name else key

    def _fail(self, key: str, problem: str) -> ConfigError:
        return ConfigError(problem, path=self.path, field=self._field(key))

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

    def read(self, key: str, hint: Any, default: Any, base: Path) -> Any:
        """Return ``key`` as a field of type ``hint``; relative paths are taken from ``base``."""
        kind, *limits = get_args(hint) if get_origin(hint) is Annotated else (hint,)
        if kind in (int, float):
            value = self.get(key, kind, default)
            least = kind(limits[0] if limits else 0)
            if value < least:
                raise self._fail(key, f"must be at least {least}, got {value}")
            if len(limits) > 1 and value > limits[1]:
                raise self._fail(key, f"must be at most {limits[1]}, got {value}")
            return value
        if get_origin(kind) is Literal:
            value = self.get(key, str, default)
            if value not in get_args(kind):
                raise self._fail(key, f"must be one of {', '.join(get_args(kind))}; got {value!r}")
            return value
        if kind in (Path, Path | None):
            value = self.get(key, str, default)
            return None if value is None else base / os.path.expanduser(value)
        if kind is time:
            value = self.get(key, str, None)
            if value is None:
                return default
            if not (match := _TIME.match(value)):
                raise self._fail(key, f"expected HH:MM on a 24-hour clock, got {value!r}")
            return time(int(match[1]), int(match[2]))
        if kind == str | None:
            return self.get(key, str, None) or None  # empty is absent
        return self.get(key, kind, default)

    def table(self, key: str) -> "_Table":
        """Return a sub-table (empty when absent) for reading."""
        self.used.add(key)
        value = self.data.get(key, {})
        if not isinstance(value, dict):
            raise self._fail(key, f"expected a table, got {type(value).__name__}")
        self.tables.append(_Table(value, self._field(key), self.path))
        return self.tables[-1]

    def has(self, key: str) -> bool:
        """Return whether the table sets ``key``."""
        return key in self.data

    def reject_unknown(self) -> None:
        """Raise ConfigError for the first key, in a sub-table first, that no read asked for."""
        for table in self.tables:
            table.reject_unknown()
        if unknown := sorted(set(self.data) - self.used):
            raise self._fail(unknown[0], "unknown key" if self.name else "unknown table")


def _read(cls: type[T], t: _Table, base: Path, defaults: Mapping[str, Any] | None = None,
          **given: Any) -> T:
    """Build ``cls`` from ``given`` and, for each other field, the table's value or default."""
    for f in fields(cls):
        if f.name not in given:
            given[f.name] = t.read(f.name, f.type, (defaults or {}).get(f.name, f.default), base)
    return cls(**given)


def _site(t: _Table, base: Path) -> SiteConfig:
    site = _read(SiteConfig, t, base)
    for key, url in (("base_url", site.base_url), ("websub_hub", site.websub_hub)):
        if url is not None and not _absolute_http(url):
            raise t._fail(key, f"must be an absolute http(s) URL, got {url!r}")
    try:
        ZoneInfo(site.timezone)
    except (ZoneInfoNotFoundError, ValueError):
        raise t._fail("timezone", f"unknown IANA time zone {site.timezone!r}") from None
    if not _LANGUAGE_TAG.fullmatch(site.language):
        raise t._fail("language", f"expected a BCP 47 language tag such as 'de' or 'pt-BR', "
                                  f"got {site.language!r}")
    return site if site.base_url.endswith("/") else replace(site, base_url=site.base_url + "/")


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
    url = _resolve_sqlite(t.get("database_url", str, "sqlite:///var/publisher.db"), base)
    if "://" not in url:
        raise t._fail("database_url", f"expected an SQLAlchemy URL, got {url!r}")
    default_key = "var/secret.key"
    if url.startswith("sqlite:////"):
        default_key = str(Path(url[len("sqlite:///"):]).parent / "secret.key")
    return StateConfig(url, t.read("key_file", Path, default_key, base))


def _email(t: _Table, base: Path, site: SiteConfig) -> EmailConfig:
    # formataddr quotes a title holding specials such as "<" or "," so the default stays parseable.
    sender = t.get("from", str, formataddr((site.title, f"publisher@{site.domain}")))
    if "@" not in sender:
        raise t._fail("from", f"expected 'Name <address>' or an address, got {sender!r}")
    dkim = (_read(DkimConfig, t.table("dkim"), base, {"domain": site.domain})
            if t.has("dkim") else None)
    smtp = _read(SmtpConfig, t.table("smtp"), base)
    email = _read(EmailConfig, t, base, sender=sender, smtp=smtp, dkim=dkim)
    if email.bounce_address is None:
        return email
    address = email.bounce_address.strip()
    if address.count("@") != 1 or "<" in address or " " in address:
        raise t._fail("bounce_address", f"expected a bare address, got {email.bounce_address!r}")
    return replace(email, bounce_address=address)


def _bounces(t: _Table, base: Path) -> BouncesConfig:
    imap: ImapConfig | None = None
    if t.has("imap"):
        i = t.table("imap")
        port = 993 if i.get("security", str, "ssl") == "ssl" else 143
        imap = _read(ImapConfig, i, base, {"port": port})
        if not imap.username:
            raise i._fail("username", "the mailbox's login name is required")
    webhooks: dict[str, WebhookConfig] = {}
    for name, (keys, required, secret_key) in WEBHOOKS.items():
        if not t.has(name):
            continue
        w = t.table(name)
        settings = {key: value for key in keys if (value := w.get(key, str, None))}
        if required is not None and required not in settings:
            raise w._fail(required, "required when the table is present")
        webhooks[name] = WebhookConfig(name, settings, secret_key)
    return _read(BouncesConfig, t, base, imap=imap, webhooks=webhooks)


def _web(t: _Table, base: Path) -> WebConfig:
    names = t.get("allowed_hosts", list, [])
    for name in names:
        if not isinstance(name, str) or not _HOST_PATTERN.fullmatch(name):
            raise t._fail("allowed_hosts", "expected host names without ports, such as "
                          f"\"example.org\", \"*.example.org\", \"[::1]\" or \"*\"; got {name!r}")
    return _read(WebConfig, t, base, allowed_hosts=tuple(name.lower() for name in names))


def from_mapping(data: Mapping[str, Any], *, path: Path | None = None,
                 base_dir: Path | None = None) -> Config:
    """Validate a parsed TOML document into a :class:`Config`."""
    base = base_dir or (path.parent if path else Path.cwd())
    root = _Table(data, "", path)
    site = _site(root.table("site"), base)
    config = Config(
        site=site,
        state=_state(root.table("state"), base),
        email=_email(root.table("email"), base, site),
        schedule=_read(ScheduleConfig, root.table("schedule"), base),
        web=_web(root.table("web"), base),
        path=path,
        base_dir=base,
        bounces=_bounces(root.table("bounces"), base),
    )
    root.reject_unknown()
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
        line = re.search(r"line (\d+)", str(exc))  # the only place the error names its line
        raise ConfigError(f"invalid TOML: {exc}", path=path,
                          line=int(line[1]) if line else None) from None
    return from_mapping(data, path=path)
