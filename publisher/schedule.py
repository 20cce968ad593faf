"""The tick: everything that is due at one instant, taken from the ledger and the calendar."""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from publisher import transports, websub
from publisher.bounces import BounceReport, Poller
from publisher.calendar import (
    Appearance,
    Calendar,
    Clock,
    EventsByDay,
    events_by_day,
    latest_due_date,
    local_date,
    next_appearances,
    plan_zone,
    publish_instant,
    utcnow,
)
from publisher.config import Config
from publisher.content import Article, ArticleCache, LoadResult, load_articles
from publisher.dispatch import (
    SendPolicy,
    SendReport,
    enqueue_digests,
    enqueue_event,
    send_all,
    skip_event,
)
from publisher.errors import ContentError, PublisherError
from publisher.ledger import ALL_ZONES, Ledger
from publisher.mail import Mailer
from publisher.preferences import DeliveryGroup
from publisher.site import BuildReport, build_site, site_environment
from publisher.status import (
    LAST_TICK_KEY,
    NEXT_MOMENTS,
    coming_calendar,
    parse_instant,
    site_state_key,
    zone_groups,
)
from publisher.tokens import load_secret
from publisher.transports import Transport

logger = logging.getLogger(__name__)


# A failed build (e.g. a template error) is retried this often, or at once when content changes.
BUILD_RETRY = timedelta(minutes=5)
# Changes are looked for this far before the previous tick as well: one written by another
# process (the web service) whose clock ran a little behind, or that committed after that tick
# looked, is still seen once.
MOVED_MARGIN = timedelta(minutes=10)


@dataclass
class TickReport:
    """What one tick did."""

    now: datetime
    built: BuildReport | None = None
    queued: int = 0
    skipped: int = 0
    events: set[tuple[str, int]] = field(default_factory=set)
    sent: SendReport | None = None
    pings: list[websub.PingState] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def handled(self) -> bool:
        """Return whether sending recorded any outcome."""
        sent = self.sent
        return sent is not None and bool(sent.sent or sent.deferred or sent.failed
                                         or sent.bounced or sent.skipped)

    @property
    def did_work(self) -> bool:
        """Return whether the tick built, queued, skipped, sent or met a problem."""
        return bool(self.built or self.queued or self.skipped or self.handled or self.pings
                    or self.problems)

    def fields(self) -> dict[str, object]:
        """Return the figures of the tick, for structured logs."""
        sent = self.sent or SendReport()
        return {
            "tick": self.now.isoformat(timespec="seconds"),
            "built": self.built.day.isoformat() if self.built else None,
            "events": len(self.events), "queued": self.queued, "skipped": self.skipped,
            "sent": sent.sent, "deferred": sent.deferred, "failed": sent.failed,
            "bounced": sent.bounced, "expired": sent.skipped, "problems": len(self.problems),
        }

    def summary(self) -> str:
        """Describe the tick in one line."""
        parts = []
        if self.built:
            parts.append(f"built the site for {self.built.day.isoformat()} "
                         f"({self.built.written} files written)")
        if self.queued:
            parts.append(f"queued {self.queued} deliveries of {len(self.events)} event(s)")
        if self.skipped:
            parts.append(f"skipped {self.skipped} deliveries older than the catch-up window")
        sent = self.sent
        if sent is not None and self.handled:
            parts.append(f"sent {sent.sent}, deferred {sent.deferred}, failed {sent.failed}, "
                         f"bounced {sent.bounced}, expired {sent.skipped}")
        if self.pings:
            accepted = sum(1 for ping in self.pings if ping.last_ok)
            parts.append(f"WebSub hub accepted {accepted} of {len(self.pings)} ping(s)")
        if self.problems:
            parts.append(f"{len(self.problems)} problem(s)")
        return f"tick {self.now.isoformat(timespec='seconds')}: " + ("; ".join(parts) or "idle")


def site_lock_name(config: Config) -> str:
    """Return the name of the lock held while building into the site's output folder."""
    # The same on every host, so that hosts sharing one folder (e.g. over NFS) take turns.
    return f"site-build:{config.site.output_dir.absolute()}"


def content_digest(articles: Iterable[Article], errors: Iterable[object]) -> str:
    """Return a short digest of loaded articles and load errors, stable across processes."""
    digest = hashlib.sha256()
    for article in sorted(articles, key=lambda a: a.slug):
        for value in dataclasses.astuple(article):
            digest.update(repr(value).encode("utf-8", "surrogatepass") + b"\0")
    for error in errors:
        digest.update(str(error).encode("utf-8", "surrogatepass") + b"\0")
    return digest.hexdigest()[:16]


class Ticker:
    """Do what is due at an instant: rebuild the site, queue and skip deliveries, send."""

    # One Ticker lives as long as its process and keeps the parsed articles; what must outlive
    # it, or be seen by another process, is in the ledger's state table.

    def __init__(self, config: Config, ledger: Ledger, *, stop: threading.Event | None = None,
                 clock: Clock = utcnow, mailer: Mailer | None = None,
                 open_transport: Callable[[Config], Transport] = transports.open_transport
                 ) -> None:
        self.config = config
        self.ledger = ledger
        self.stop = stop or threading.Event()
        self.clock = clock
        self.env = site_environment(config)
        self.mailer = mailer or Mailer(config, load_secret(config), self.env, clock=clock)
        self.open_transport = open_transport
        self.policy = SendPolicy.from_config(config)
        self.returns = Poller(config, ledger, self.mailer.secret, clock=clock)
        self.cache = ArticleCache()
        self.site_key = site_state_key(config)
        self._loaded: LoadResult | None = None
        self._calendar = Calendar([], config.site.leap_day)
        self._identity: tuple[object, ...] | None = None
        self._digest = ""
        self._started = False
        self._failed_build: tuple[str, datetime] | None = None

    # -- content -------------------------------------------------------------------------------

    def _load(self, report: TickReport) -> None:
        try:
            loaded = load_articles(self.config.site.content_dir, self.cache)
        except ContentError as exc:
            # The folder itself is missing: keep what was loaded before.
            report.problems.append(str(exc))
            return
        # The cache hands back the same Article objects for unchanged files, so identities tell
        # whether anything changed; ``self._loaded`` keeps them alive, so the ids stay unique.
        identity = (tuple(id(a) for a in loaded.articles), tuple(str(e) for e in loaded.errors))
        if identity == self._identity:
            return
        self._identity = identity
        self._loaded = loaded
        self._calendar = Calendar(loaded.articles, self.config.site.leap_day)
        self._digest = content_digest(loaded.articles, loaded.errors)
        for error in loaded.errors:
            logger.warning("article left out: %s", error)

    # -- site ----------------------------------------------------------------------------------

    def _build_site(self, now: datetime, report: TickReport) -> None:
        if self._loaded is None:
            return
        site = self.config.site
        day = latest_due_date(site.publish_time, site.zone, now)
        wanted = f"{day.isoformat()} {self._digest}"
        if self._failed_build is not None and self._failed_build[0] == wanted:
            if now - self._failed_build[1] < BUILD_RETRY:
                return
        elif self._started and self.ledger.get_state(self.site_key) == wanted:
            return  # built already, by this process or another one on this host
        with self.ledger.try_lock(site_lock_name(self.config)) as ours:
            if not ours:
                return  # another instance is writing this folder right now: look again next tick
            try:
                report.built = build_site(self.config, day, articles=self._loaded, env=self.env)
            except PublisherError as exc:
                self._failed_build = (wanted, now)
                report.problems.append(f"site not rebuilt for {day.isoformat()}: {exc}")
                return
        self._failed_build = None
        if report.built.changed_feeds and site.websub_hub is not None:
            websub.mark_changed(self.config, self.ledger, report.built.changed_feeds, now)
        self.ledger.set_state(self.site_key, wanted, now)

    # -- deliveries ----------------------------------------------------------------------------

    def _queue(self, since: datetime | None, now: datetime, report: TickReport) -> None:
        site = self.config.site
        events_on = events_by_day(self._calendar)
        window = self.config.schedule.catch_up_days
        reason = (f"not sent: the publisher was not running within schedule.catch_up_days "
                  f"({window}) of its publish time")
        due: dict[date, list[DeliveryGroup]] = {}
        for group in self.ledger.subscriber_groups(site.timezone, site.publish_time):
            try:
                plan = plan_zone(group.zone, group.at, since, now, window)
            except (ZoneInfoNotFoundError, ValueError) as exc:
                report.problems.append(f"subscribers in time zone {group.zone!r} left out: {exc}")
                continue
            for day in plan.skip:
                moment = publish_instant(day, group.at, ZoneInfo(group.zone))
                for event in events_on(day):
                    report.skipped += skip_event(self.ledger, event, moment, None, site.timezone,
                                                 reason, now=now, groups=[group],
                                                 site_time=site.publish_time)
            for day in plan.send:
                due.setdefault(day, []).append(group)
        give_up_after = self.policy.give_up_after
        for day, groups in sorted(due.items()):
            # One pass over the subscribers per appearance, for every group it fell due for.
            for event in events_on(day):
                report.events.add(event.key)
                # Due from now: a delivery caught up after downtime still gets the full
                # give-up period for its retries.
                report.queued += enqueue_event(
                    self.ledger, event, now, None, site.timezone, give_up_after=give_up_after,
                    now=now, groups=groups, site_time=site.publish_time)
            if events_on(day):
                enqueue_digests(self.ledger, day, now,
                                give_up_after=give_up_after, now=now)
        if since is not None:
            self._queue_moved(since, now, events_on, report)

    def _queue_moved(self, since: datetime, now: datetime, events_on: EventsByDay,
                     report: TickReport) -> None:
        """Queue the day's mail of subscribers who moved to a moment that already went by."""
        # No group's queueing reaches them; the unique keys make queueing what they have a no-op.
        site = self.config.site
        changed_since = since - MOVED_MARGIN
        window = self.config.schedule.catch_up_days
        give_up_after = self.policy.give_up_after
        days: set[date] = set()
        for group in self.ledger.changed_groups(changed_since, site.timezone, site.publish_time):
            try:
                zone = ZoneInfo(group.zone)
            except (ZoneInfoNotFoundError, ValueError):
                continue  # reported by the groups' own queueing
            today = local_date(now, zone)
            oldest = today - timedelta(days=window)
            day = max(local_date(changed_since, zone), oldest)
            while day <= today:
                if publish_instant(day, group.at, zone) <= now and events_on(day):
                    days.add(day)
                    for event in events_on(day):
                        queued = enqueue_event(
                            self.ledger, event, now, None, site.timezone,
                            give_up_after=give_up_after, now=now, groups=[group],
                            site_time=site.publish_time, changed_since=changed_since)
                        if queued:
                            report.events.add(event.key)
                        report.queued += queued
                day += timedelta(days=1)
        for day in sorted(days):
            enqueue_digests(self.ledger, day, now, give_up_after=give_up_after, now=now,
                            changed_since=changed_since)

    def _send(self, report: TickReport) -> None:
        report.sent = send_all(self.config, self.ledger, self.mailer, self._calendar,
                               self.clock, self.stop, policy=self.policy,
                               open_transport=self.open_transport)
        report.problems.extend(report.sent.problems)
        if report.sent.stopped:
            report.problems.append(report.sent.stopped)

    # -- the tick ------------------------------------------------------------------------------

    def tick(self, now: datetime | None = None) -> TickReport:
        """Do what is due at ``now`` (default: the clock's time) and return what was done."""
        now = (self.clock() if now is None else now).astimezone(UTC)
        report = TickReport(now)
        self._load(report)
        self._build_site(now, report)
        self._started = True
        if not self.stop.is_set():
            self._queue(parse_instant(self.ledger.get_state(LAST_TICK_KEY)), now, report)
            # Recorded before sending: what is queued stays queued however the send ends.
            self.ledger.set_state(LAST_TICK_KEY, now.isoformat(), now)
            self._send(report)
            # Bounces and complaints, every [bounces] poll_minutes, after the mail went out.
            report.problems.extend((self.returns.poll(now) or BounceReport()).problems)
        if not self.stop.is_set():
            # After the emails: a slow hub delays nothing else.
            report.pings = websub.deliver_due(self.config, self.ledger, now)
            report.problems.extend(f"WebSub ping of {ping.topic} failed: {ping.last_detail}"
                                   for ping in report.pings if not ping.last_ok)
        for problem in report.problems:
            logger.warning("%s", problem)
        if report.did_work:
            logger.info(report.summary(), extra=report.fields())
        return report

    def tick_safely(self) -> None:
        """Run one tick for the clock: log a failure instead of raising it."""
        try:
            self.tick()
        except PublisherError as exc:
            logger.error("tick failed: %s", exc)
        except Exception:
            logger.exception("tick failed")


def coming_up(config: Config, ledger: Ledger, now: datetime | None = None,
              limit: int = NEXT_MOMENTS, *, cache: ArticleCache | None = None
              ) -> list[Appearance]:
    """Return the next appearances with the subscribers each would reach, soonest first."""
    now = now or utcnow()
    site = config.site
    zones = zone_groups(config, ledger) or [site.timezone]
    found = next_appearances(coming_calendar(config, cache), zones, site.publish_time, now,
                             limit)
    return [dataclasses.replace(appearance, reach=ledger.count_unqueued(
        appearance.event.article.slug, appearance.event.year, ALL_ZONES, site.timezone,
        years_since=appearance.event.years_since, tags=appearance.event.article.tags))
        for appearance in found]
