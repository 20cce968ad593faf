"""Enqueue events and send due deliveries: the library behind ``publisher send`` and the daemon."""

from __future__ import annotations

import logging
import os
import secrets
import socket
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta

from publisher.calendar import Calendar, Clock, Event, local_date, utcnow
from publisher.config import Config
from publisher.content import Article, load_articles
from publisher.digest import digest_edition
from publisher.errors import PublisherError, SubscriberError
from publisher.ledger import (
    ALL_ZONES,
    Claim,
    Ledger,
    ZoneChoice,
)
from publisher.mail import Edition, Mailer, Recipient
from publisher.preferences import DeliveryGroup
from publisher.tokens import load_secret
from publisher.transports import Envelope, Outcome, Stop, Transport, open_transport

logger = logging.getLogger(__name__)

Progress = Callable[[int, int], None]
MAX_LISTED_FAILURES = 20
# How often a batch still being handed over looks again for subscribers who left meanwhile.
RECHECK = timedelta(seconds=0.5)


@dataclass(frozen=True)
class SendPolicy:
    """How many rows to claim at once, for how long, and how to retry."""

    batch_size: int
    lease: timedelta
    retry_base: timedelta
    give_up_after: timedelta
    max_attempts: int

    @classmethod
    def from_config(cls, config: Config) -> SendPolicy:
        """Read the policy from ``[email]`` and ``[schedule]``."""
        email = config.email
        return cls(
            batch_size=email.batch_size,
            lease=timedelta(seconds=config.schedule.lease_seconds),
            retry_base=timedelta(seconds=email.retry_base_seconds),
            give_up_after=timedelta(hours=email.give_up_hours),
            max_attempts=email.max_attempts,
        )

    def retry_at(self, attempts: int, now: datetime, give_up_at: datetime) -> datetime | None:
        """Return when to try again after ``attempts`` tries, or None to give up."""
        if attempts >= self.max_attempts:
            return None
        when = now + self.retry_base * 2 ** max(attempts - 1, 0)
        return when if when <= give_up_at else None


@dataclass(frozen=True)
class EventSummary:
    """One event handled by ``send``: its identity and how many deliveries were queued."""

    slug: str
    year: int
    title: str
    queued: int


@dataclass
class SendReport:
    """What a send did (or, for a dry run, would do)."""

    day: date | None = None
    dry_run: bool = False
    events: list[EventSummary] = field(default_factory=list)
    due: int = 0
    sent: int = 0
    deferred: int = 0
    failed: int = 0
    bounced: int = 0
    skipped: int = 0
    failures: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    stopped: str | None = None

    @property
    def queued(self) -> int:
        """Return the deliveries queued (or, in a dry run, to be queued) for the day's events."""
        return sum(e.queued for e in self.events)

    @property
    def ok(self) -> bool:
        """Return whether nothing needs the operator's attention."""
        return not self.problems and self.stopped is None

    def note_failure(self, claim: Claim, reply: str) -> None:
        """Keep the first failures for the summary (the ledger keeps them all)."""
        if len(self.failures) < MAX_LISTED_FAILURES:
            self.failures.append(f"{claim.email} ({claim.slug} {claim.year}): {reply}")


def worker_name() -> str:
    """Return a lease owner name unique to this process and call."""
    return f"{socket.gethostname()}/{os.getpid()}/{secrets.token_hex(4)}"


def enqueue_event(ledger: Ledger, event: Event, due_at: datetime, zone: ZoneChoice,
                  site_zone: str, *, give_up_after: timedelta, now: datetime | None = None,
                  groups: Sequence[DeliveryGroup] | None = None,
                  site_time: time | None = None, changed_since: datetime | None = None) -> int:
    """Queue ``event`` for the confirmed subscribers of ``zone`` (or ``groups``) who want it.

    ``changed_since``: only those whose zone or choices changed after it. Return how many
    rows were new.
    """
    return ledger.enqueue(event.article.slug, event.year, event.on, due_at=due_at,
                          give_up_at=due_at + give_up_after, zone=zone, site_zone=site_zone,
                          now=now, groups=groups, site_time=site_time,
                          years_since=event.years_since, tags=event.article.tags,
                          changed_since=changed_since)


def enqueue_digests(ledger: Ledger, day: date, due_at: datetime, *, give_up_after: timedelta,
                    now: datetime | None = None, changed_since: datetime | None = None) -> int:
    """Queue the digest of local date ``day`` for whoever has appearances waiting in one.

    ``changed_since``: only for those whose zone or choices changed after it.
    """
    return ledger.enqueue_digests(day, due_at=due_at, give_up_at=due_at + give_up_after,
                                  now=now, changed_since=changed_since)


def skip_event(ledger: Ledger, event: Event, due_at: datetime, zone: ZoneChoice,
               site_zone: str, reason: str, now: datetime | None = None, *,
               groups: Sequence[DeliveryGroup] | None = None,
               site_time: time | None = None) -> int:
    """Record ``event`` as skipped for the subscribers of ``zone`` that never got it."""
    return ledger.enqueue(event.article.slug, event.year, event.on, due_at=due_at,
                          give_up_at=due_at, zone=zone, site_zone=site_zone, status="skipped",
                          reason=reason, now=now, groups=groups, site_time=site_time,
                          years_since=event.years_since, tags=event.article.tags)


class _Batch:
    """One claimed batch: its rows, those not recorded yet, and how its messages went."""

    def __init__(self, claims: list[Claim], now: datetime) -> None:
        self.claims = {c.delivery_id: c for c in claims}
        self.open = set(self.claims)  # claimed and not yet recorded
        self.handed = 0
        self.awaited = 0  # handed to the transport, outcome not known yet
        self.systemic = 0  # outcomes that blame the connection rather than the message
        self.systemic_reply = ""  # the last of them, which says what is wrong
        self.sent = 0
        self.renewed = now  # when the lease was last pushed forward
        self.checked = now  # when its subscribers were last seen confirmed
        self.departed: set[int] = set()  # rows skipped because their subscriber left
        self.lost = False  # the lease ran out and another worker took rows over
        self.exhausted = False  # nothing more of it will be handed to the transport


class _Sender:
    """The state of one :func:`send_due` call: editions, open batches, messages in flight."""

    def __init__(self, ledger: Ledger, mailer: Mailer, calendar: Calendar, policy: SendPolicy,
                 worker: str, clock: Clock, report: SendReport, stop: Stop | None) -> None:
        self.ledger = ledger
        self.mailer = mailer
        self.policy = policy
        self.worker = worker
        self.clock = clock
        self.report = report
        self.stop = stop
        self.articles: dict[str, Article] = {a.slug: a for a in calendar.articles}
        # By event, and digests by the appearances they hold: a day's subscribers share one.
        self.editions: dict[tuple[object, ...], Edition | str] = {}
        self.batches: list[_Batch] = []  # claimed, not yet closed
        self.in_flight: dict[int, tuple[_Batch, str]] = {}  # delivery id: batch, Message-ID
        self.unreachable = False
        self.done = 0

    def stopped(self) -> bool:
        """Return whether no more messages should be handed to the transport."""
        return self.unreachable or (self.stop is not None and self.stop.is_set())

    def edition(self, claim: Claim) -> Edition | str:
        """Return the claim's Edition, built once per event or per digest's appearances.

        A string says why there is none.
        """
        key = claim.items if claim.is_digest else (claim.slug, claim.year)
        if key not in self.editions:
            self.editions[key] = self._build(claim)
        return self.editions[key]

    def _event(self, slug: str, on: date) -> Event | str:
        article = self.articles.get(slug)
        if article is None:
            return f"article {slug!r} is not among the loaded articles"
        if article.date > on:
            return f"article {slug!r} is now dated after {on}"
        return Event(article, on, on.year - article.date.year)

    def _build(self, claim: Claim) -> Edition | str:
        if claim.is_digest:
            failed = f"cannot build the digest of {claim.event_on}: "
            events = [self._event(slug, on) for slug, _, on in claim.items]
        else:
            failed = f"cannot build the email for {claim.slug} {claim.year}: "
            events = [self._event(claim.slug, claim.event_on)]
        found = [event for event in events if isinstance(event, Event)]
        problem = next((event for event in events if isinstance(event, str)), None)
        if problem is not None:
            problem = failed + problem if claim.is_digest else problem
        else:
            try:
                edition = (digest_edition(self.mailer, found, claim.event_on) if claim.is_digest
                           else self.mailer.edition(found[0]))
            except PublisherError as exc:
                problem = f"{failed}{exc}"
            else:
                if edition.size_warning:
                    self.report.warnings.append(edition.size_warning)
                return edition
        self.report.problems.append(problem)
        return problem

    def build(self, claim: Claim) -> tuple[Envelope, str] | Outcome:
        """Return a claim's envelope and Message-ID, or the outcome that replaces sending."""
        if claim.is_digest and not claim.items:
            # Its appearances went another way (the subscriber left, say): nothing to send.
            return Outcome("failed", None, "the digest holds no appearance")
        edition = self.edition(claim)
        if isinstance(edition, str):
            # The operator can fix the article or template: retry on the usual schedule.
            return Outcome("deferred", None, edition)
        recipient = Recipient(claim.subscriber_id, claim.email, claim.name, claim.timezone,
                              claim.unsubscribe_key, claim.send_time)
        try:
            data, stuffed, message_id = edition.content(recipient)
        except SubscriberError as exc:
            return Outcome("failed", None, f"cannot address the message: {exc}")
        except PublisherError as exc:
            return Outcome("deferred", None, f"cannot build the message: {exc}")
        sender = self.mailer.return_path(claim.delivery_id, slug=claim.slug, year=claim.year,
                                         subscriber_id=claim.subscriber_id)
        envelope = Envelope(claim.delivery_id, sender, claim.email, data, stuffed)
        return envelope, message_id

    def envelopes(self) -> Generator[Envelope, None, None]:
        """Claim batch after batch and yield one envelope per claim, until told to stop.

        The next batch is claimed as soon as the last envelope of one is handed over, so that
        every connection stays busy across batches.
        """
        while not self.stopped():
            claims = self.ledger.claim(self.worker, self.policy.batch_size, self.policy.lease,
                                       self.clock())
            if not claims:
                return
            batch = _Batch(claims, self.clock())
            self.batches.append(batch)
            for claim in claims:
                now = self.clock()
                if self.stopped() or not self.keep_lease(batch, now):
                    break
                if claim.delivery_id in self.departed(batch, now):
                    continue
                built = self.build(claim)
                if isinstance(built, Outcome):
                    self.record(batch, claim, built, None, self.clock())
                    continue
                envelope, message_id = built
                self.in_flight[claim.delivery_id] = (batch, message_id)
                batch.handed += 1
                batch.awaited += 1
                yield envelope
            batch.exhausted = True
            self.close(batch)

    def delivered(self, envelope: Envelope, outcome: Outcome) -> None:
        """Record the transport's outcome for a message it was handed."""
        entry = self.in_flight.pop(envelope.delivery_id, None)
        if entry is None:
            return  # handed over by an earlier call that ended in an error
        batch, message_id = entry
        batch.awaited -= 1
        now = self.clock()
        if outcome.status == "unsent":
            batch.handed -= 1  # stays open: handed back when the batch closes
        else:
            self.record(batch, batch.claims[envelope.delivery_id], outcome, message_id, now)
            if outcome.status == "sent":
                batch.sent += 1
            elif outcome.status == "deferred" and outcome.code in (None, 421):
                batch.systemic += 1
                batch.systemic_reply = outcome.reply
        if batch.exhausted:
            self.close(batch)
        for held in self.batches:
            self.keep_lease(held, now)

    def record(self, batch: _Batch, claim: Claim, outcome: Outcome, message_id: str | None,
               now: datetime) -> None:
        """Write one outcome to the ledger, counting it in the report."""
        batch.open.discard(claim.delivery_id)
        report = self.report
        status = outcome.status
        reply = outcome.reply
        retry_at = None
        if status == "deferred":
            retry_at = self.policy.retry_at(claim.attempts, now, claim.give_up_at)
            if retry_at is None:
                status = "failed"
                reply = f"{reply} (gave up after {claim.attempts} attempts)"
        if status == "sent":
            self.ledger.record_sent(claim.delivery_id, code=outcome.code, reply=reply,
                                    message_id=message_id, now=now)
        else:
            self.ledger.finish(
                claim.delivery_id, self.worker, "deferred" if status == "deferred" else "failed",
                code=outcome.code, reply=reply, message_id=message_id, retry_at=retry_at,
                bounce=status == "bounced", now=now)
        if status == "sent":
            report.sent += 1
        elif status == "deferred":
            report.deferred += 1
        else:
            if status == "bounced":
                report.bounced += 1
            else:
                report.failed += 1
            report.note_failure(claim, reply)
        self.done += 1

    def departed(self, batch: _Batch, now: datetime) -> set[int]:
        """Skip the batch's rows not handed over whose subscriber left; return all so skipped.

        A batch through a distant relay takes seconds: someone who unsubscribes meanwhile gets
        nothing handed over more than ``RECHECK`` after they left.
        """
        if now - batch.checked >= RECHECK:
            batch.checked = now
            waiting = [i for i in batch.open if i not in self.in_flight]
            for delivery_id in self.ledger.skip_departed(waiting, self.worker, now):
                batch.open.discard(delivery_id)
                batch.departed.add(delivery_id)
                self.report.skipped += 1
        return batch.departed

    def keep_lease(self, batch: _Batch, now: datetime) -> bool:
        """Renew a batch's lease once half of it has passed; return whether it is still held.

        Fewer rows renewed than are open means the lease ran out (the server stalled longer
        than the lease, or the clocks of two hosts disagree) and another worker took rows
        over: nothing more of the batch is handed out, so only messages already in flight can
        go out twice.
        """
        if not batch.lost and batch.open and now - batch.renewed > self.policy.lease / 2:
            held = self.ledger.extend_lease(batch.open, self.worker, now + self.policy.lease)
            batch.renewed = now
            if held < len(batch.open):
                batch.lost = True
                logger.warning("the lease of a batch ran out and another worker took over %d "
                               "of its rows: stopping this batch", len(batch.open) - held)
        return not batch.lost

    def close(self, batch: _Batch) -> None:
        """Once a batch's messages all have their outcome, hand back the rows never sent."""
        if batch.awaited or batch not in self.batches:
            return
        self.batches.remove(batch)
        if batch.open:
            # Stopped before these were handed over: give them back for the next run.
            self.ledger.release(batch.open, self.worker, self.clock())
        # One line per batch for the daemon's log (`publisher run`).
        claimed = len(batch.claims)
        logger.info("batch: %d claimed, %d handed to the transport, %d sent", claimed,
                    batch.handed, batch.sent,
                    extra={"claimed": claimed, "handed": batch.handed, "sent": batch.sent})
        # The server could not be reached at all, or the maildir not written: the rows wait
        # for their retry time instead of every remaining row failing the same way.
        if batch.handed and not batch.sent and batch.systemic == batch.handed:
            self.unreachable = True
            self.report.stopped = f"{batch.systemic_reply}; deferred rows will be retried"

    def finish(self) -> None:
        """Close every batch still open (the transport took no more of them)."""
        for batch in list(self.batches):
            batch.exhausted = True
            self.close(batch)


def send_due(ledger: Ledger, mailer: Mailer, transport: Transport, calendar: Calendar,
             clock: Clock, worker_id: str, stop: Stop | None = None, *,
             policy: SendPolicy, progress: Progress | None = None,
             report: SendReport | None = None) -> SendReport:
    """Claim and send due deliveries in batches until none is left (or ``stop`` is set)."""
    # Exactly once per (article, year, subscriber) as far as SMTP allows: rows are queued
    # idempotently, claimed under a lease and marked sent only after the server accepted the
    # message. A process that dies between the server's 250 and the ledger write leaves a row
    # ``sending``; once its lease runs out it goes again with the same Message-ID (at least
    # once, rather than lose mail).
    report = report or SendReport()
    skipped, failed = ledger.expire(clock())
    report.skipped += skipped
    report.failed += failed
    sender = _Sender(ledger, mailer, calendar, policy, worker_id, clock, report, stop)
    total = ledger.count_due(clock()) if progress is not None else 0
    envelopes = sender.envelopes()
    outcomes = transport.send(envelopes, stop)
    try:
        for envelope, outcome in outcomes:
            sender.delivered(envelope, outcome)
            if progress is not None:
                progress(sender.done, max(total, sender.done))
    finally:
        # On an error, the transport stops sending before the claims go away with this call.
        if isinstance(outcomes, Generator):
            outcomes.close()
        envelopes.close()
    sender.finish()
    # Each claim folds the accepted messages recorded so far; this folds the last batch's.
    ledger.settle()
    return report


def send_all(config: Config, ledger: Ledger, mailer: Mailer, calendar: Calendar,
             clock: Clock, stop: Stop | None = None, *, policy: SendPolicy,
             open_transport: Callable[[Config], Transport] = open_transport,
             progress: Progress | None = None, report: SendReport | None = None
             ) -> SendReport:
    """Send everything due over the configured transport and its connections."""
    transport = open_transport(config)
    try:
        return send_due(ledger, mailer, transport, calendar, clock, worker_name(), stop,
                        policy=policy, progress=progress, report=report)
    finally:
        transport.close()


def send_date(config: Config, day: date | None = None, *, dry_run: bool = False,
              clock: Clock | None = None, progress: Progress | None = None,
              stop: Stop | None = None) -> SendReport:
    """Queue ``day``'s events for every confirmed subscriber in any zone, then send all due."""
    clock = clock or utcnow
    now = clock()
    day = day or local_date(now, config.site.zone)
    report = SendReport(day=day, dry_run=dry_run)
    loaded = load_articles(config.site.content_dir)
    report.problems.extend(str(error) for error in loaded.errors)
    calendar = Calendar(loaded.articles, config.site.leap_day)
    policy = SendPolicy.from_config(config)
    site_zone = config.site.timezone
    events = calendar.events_on(day)
    with Ledger.open(config.state.database_url) as ledger:
        mailer = Mailer(config, load_secret(config))
        if dry_run:
            _preview(ledger, mailer, events, site_zone, report)
            report.due = ledger.count_due(now)
            return report
        # Opened first: a transport misconfigured (e.g. no password) stops before any write.
        open_transport(config).close()
        for event in events:
            queued = enqueue_event(ledger, event, now, ALL_ZONES, site_zone,
                                   give_up_after=policy.give_up_after, now=now)
            report.events.append(EventSummary(event.article.slug, event.year,
                                              event.article.title, queued))
        enqueue_digests(ledger, day, now, give_up_after=policy.give_up_after, now=now)
        send_all(config, ledger, mailer, calendar, clock, stop, policy=policy,
                 progress=progress, report=report)
    return report


def _preview(ledger: Ledger, mailer: Mailer, events: list[Event], site_zone: str,
             report: SendReport) -> None:
    # A dry run renders each edition (so template errors show) and counts, writing nothing.
    for event in events:
        try:
            edition = mailer.edition(event)
        except PublisherError as exc:
            report.problems.append(f"cannot build the email for {event.key}: {exc}")
        else:
            if edition.size_warning:
                report.warnings.append(edition.size_warning)
        queued = ledger.count_unqueued(event.article.slug, event.year, ALL_ZONES, site_zone,
                                       years_since=event.years_since, tags=event.article.tags)
        report.events.append(EventSummary(event.article.slug, event.year, event.article.title,
                                          queued))
