"""What ``publisher status`` shows, and the marks the tick leaves in the ledger for it."""

from __future__ import annotations

import hashlib
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import TYPE_CHECKING

# The ledger, the calendar and the articles only: the command runs beside sends of a million
# messages, where the tick's modules (mail, site, SMTP, mailboxes) doubled its time.
from publisher.calendar import Calendar, Moment, upcoming, utcnow
from publisher.config import Config, SubscriberStatus
from publisher.content import ArticleCache, load_articles
from publisher.errors import ContentError
from publisher.ledger_reads import DeliveryCount, LedgerReads, Problem, SqliteReads, sqlite_file

if TYPE_CHECKING:
    from publisher.websub import PingState

LAST_TICK_KEY = "schedule.last_tick"
SITE_BUILT_KEY = "schedule.site_built"
NEXT_MOMENTS = 5
COMPLAINT_RATE_LIMIT = 0.001  # large mailbox providers refuse bulk mail from 0.3 % on
HARD_BOUNCE_RATE_LIMIT = 0.02


def parse_instant(value: str | None) -> datetime | None:
    """Return a stored instant (UTC when it names no zone); None when missing or damaged."""
    if value is None:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None  # a damaged value counts as "never": the tick then starts afresh
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


def _parse_day(value: str) -> date | None:
    try:
        return date.fromisoformat(value)
    except ValueError:
        return None


def zone_groups(config: Config, ledger: LedgerReads) -> list[str]:
    """Return the time zones of confirmed subscribers; those without one count as the site's."""
    site_zone = config.site.timezone
    return list(dict.fromkeys(zone or site_zone for zone in ledger.subscriber_zones()))


def site_state_key(config: Config) -> str:
    """Return the state key recording what was last built into this host's output folder."""
    # One key per host and folder: instances on two hosts sharing a ledger each publish their
    # own copy, often at the same path, and each must build it. Hashed, as a path can be
    # longer than the state table's keys.
    place = f"{socket.gethostname()}\0{config.site.output_dir.absolute()}"
    return f"{SITE_BUILT_KEY}:{hashlib.sha256(place.encode()).hexdigest()[:32]}"


def coming_calendar(config: Config, cache: ArticleCache | None = None) -> Calendar:
    """Return the calendar of the valid articles (empty when the content folder is missing)."""
    try:
        articles = load_articles(config.site.content_dir, cache).articles
    except ContentError:
        articles = []  # no content folder: nothing is coming
    return Calendar(articles, config.site.leap_day)


@dataclass(frozen=True)
class Status:
    """The ledger at a glance: deliveries per event and state, problems, subscribers."""

    day: date | None
    counts: list[DeliveryCount]
    problems: list[Problem]
    subscribers: dict[SubscriberStatus, int]
    due: int


@dataclass(frozen=True)
class EditionReturns:
    """One edition's sent messages and the deliveries of it that came back, per kind."""

    on: date
    slug: str
    year: int
    sent: int
    hard: int = 0
    soft: int = 0
    complaints: int = 0

    @property
    def hard_rate(self) -> float:
        """Return hard bounces as a share of the messages sent."""
        return self.hard / self.sent if self.sent else 0.0

    @property
    def complaint_rate(self) -> float:
        """Return complaints as a share of the messages sent."""
        return self.complaints / self.sent if self.sent else 0.0


@dataclass(frozen=True)
class ReturnStatus:
    """What ``publisher status`` shows about returns: per edition, and those of no edition."""

    editions: list[EditionReturns]
    elsewhere: dict[str, int]


@dataclass(frozen=True)
class ClockStatus:
    """What ``publisher status`` shows about the clock: last tick, last build, what comes next."""

    last_tick: datetime | None
    site_built: date | None
    upcoming: list[Moment]


@dataclass(frozen=True)
class WebSubStatus:
    """What ``publisher status`` shows about WebSub: the hub and each feed's last ping."""

    hub: str | None
    feeds: list[PingState]


@dataclass(frozen=True)
class Overview:
    """Everything ``publisher status`` shows: deliveries, returns, the clock and WebSub."""

    deliveries: Status
    returns: ReturnStatus
    clock: ClockStatus
    websub: WebSubStatus


@contextmanager
def _reading(config: Config, ledger: LedgerReads | None = None) -> Iterator[LedgerReads]:
    if ledger is not None:
        yield ledger
        return
    url = config.state.database_url
    database = sqlite_file(url)
    # SQLite at this publisher's schema is read without importing SQLAlchemy: million.py,
    # status during the send, 1,592 M instructions at 200,000 deliveries, 683 M without.
    reads = SqliteReads.open(database) if database is not None else None
    if reads is not None:
        with reads:
            yield reads
        return
    # Other databases, and a ledger to create or migrate first.
    from publisher.ledger import Ledger

    with Ledger.open(url, read_only=True) as opened:
        yield opened


def delivery_status(config: Config, day: date | None = None, *, limit: int = 50,
                    now: datetime | None = None, ledger: LedgerReads | None = None) -> Status:
    """Return delivery counts and failures (for the events of ``day``, or all)."""
    with _reading(config, ledger) as found:
        # Read only: messages accepted by a sender that has not folded them in yet (still
        # sending, or died) count as sent, as they will once folded.
        return Status(day, found.delivery_counts(day), found.problems(day, limit),
                      found.subscriber_counts(), found.count_due(now or utcnow()))


def return_status(config: Config, day: date | None = None, *, ledger: LedgerReads | None = None
                  ) -> ReturnStatus:
    """Return the bounce and complaint counts and rates per edition (of ``day``, or all)."""
    with _reading(config, ledger) as found:
        counts = found.return_counts()
        # Counting deliveries reads an index entry per delivery (a third of a second for a
        # million): only worth it when something came back.
        deliveries = found.delivery_counts(day) if counts else []
    sent: dict[tuple[str, int], tuple[date, int]] = {}
    for c in deliveries:
        on, total = sent.get((c.slug, c.year), (c.event_on, 0))
        sent[(c.slug, c.year)] = (on, total + (c.count if c.status == "sent" else 0))
    per_edition: dict[tuple[str, int], dict[str, int]] = {}
    elsewhere: dict[str, int] = {}
    for count in counts:
        if count.slug is None or count.year is None:
            if day is None:
                elsewhere[count.kind] = elsewhere.get(count.kind, 0) + count.count
        elif (count.slug, count.year) in sent:
            per_edition.setdefault((count.slug, count.year), {})[count.kind] = count.count
    editions = [EditionReturns(sent[key][0], key[0], key[1], sent[key][1], kinds.get("hard", 0),
                               kinds.get("soft", 0), kinds.get("complaint", 0))
                for key, kinds in per_edition.items()]
    editions.sort(key=lambda e: (e.on, e.slug))
    return ReturnStatus(editions, elsewhere)


def clock_status(config: Config, now: datetime | None = None, limit: int = NEXT_MOMENTS, *,
                 ledger: LedgerReads | None = None) -> ClockStatus:
    """Return the last tick, the day the site was last built for and the next publish moments."""
    now = now or utcnow()
    calendar = coming_calendar(config)
    with _reading(config, ledger) as found:
        zones = zone_groups(config, found) or [config.site.timezone]
        last_tick = parse_instant(found.get_state(LAST_TICK_KEY))
        built = found.get_state(site_state_key(config))
    return ClockStatus(
        last_tick=last_tick,
        site_built=_parse_day(built.split(" ")[0]) if built else None,
        upcoming=upcoming(calendar, zones, config.site.publish_time, now, limit),
    )


def websub_status(config: Config, *, ledger: LedgerReads | None = None) -> WebSubStatus:
    """Return the hub and the last ping of each feed, as recorded in the ledger."""
    if config.site.websub_hub is None:
        return WebSubStatus(None, [])
    # Imported only with a hub: the feeds' names come with the feed renderer.
    from publisher.websub import ping_states

    with _reading(config, ledger) as found:
        return WebSubStatus(config.site.websub_hub, ping_states(config, found))


def overview(config: Config, day: date | None = None) -> Overview:
    """Return the deliveries and returns (of ``day``'s events, or all), the clock and WebSub."""
    with _reading(config) as ledger:
        return Overview(delivery_status(config, day, ledger=ledger),
                        return_status(config, day, ledger=ledger),
                        clock_status(config, ledger=ledger), websub_status(config, ledger=ledger))
