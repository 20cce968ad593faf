"""Enqueue events and send due deliveries: the library behind ``publisher send`` and the daemon."""

from __future__ import annotations

import logging
import os
import secrets
import signal
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from datetime import date, datetime, timedelta
from functools import partial
from multiprocessing import synchronize
from multiprocessing.connection import Connection, wait
from multiprocessing.sharedctypes import SynchronizedArray
from typing import Protocol, cast

from publisher.calendar import Calendar, Event
from publisher.config import Config
from publisher.content import Article, load_articles
from publisher.errors import PublisherError, SubscriberError
from publisher.ledger import (
    ALL_ZONES,
    Claim,
    DeliveryCount,
    Ledger,
    Problem,
    SubscriberStatus,
    ZoneChoice,
    utcnow,
)
from publisher.mail import Edition, Mailer, Recipient
from publisher.tokens import load_secret
from publisher.transports import Envelope, Outcome, Transport, open_transport
from publisher.workers import StartMethod, Worker, WorkerDied, context, start_method

logger = logging.getLogger(__name__)

Clock = Callable[[], datetime]
Progress = Callable[[int, int], None]
MAX_LISTED_FAILURES = 20
# How often a parent waiting for its sending processes looks at its stop flag.
STOP_POLL_SECONDS = 0.5


class Stop(Protocol):
    """A flag that asks a send to stop after the message in flight (a threading.Event)."""

    def is_set(self) -> bool:
        """Return whether the send should stop."""


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

    def lines(self) -> list[str]:
        """Describe the run for a terminal: events, counts, then failures and warnings."""
        head = f"{self.day}: " if self.day else ""
        out = [f"{head}{len(self.events)} event(s)"]
        verb = "would queue" if self.dry_run else "queued"
        out += [f"  {e.slug} {e.year} ({e.title}): {verb} {e.queued}" for e in self.events]
        if self.dry_run:
            out.append(f"dry run: {self.queued} delivery(ies) to queue, {self.due} already due; "
                       "nothing was changed")
        else:
            out.append(f"sent {self.sent}, deferred {self.deferred}, failed {self.failed}, "
                       f"bounced {self.bounced}, skipped {self.skipped}")
        if self.failures:
            out.append("failures:")
            out += [f"  {failure}" for failure in self.failures]
        out += [f"warning: {warning}" for warning in self.warnings]
        if self.stopped:
            out.append(f"stopped: {self.stopped}")
        return out

    def note_failure(self, claim: Claim, reply: str) -> None:
        """Keep the first failures for the summary (the ledger keeps them all)."""
        if len(self.failures) < MAX_LISTED_FAILURES:
            self.failures.append(f"{claim.email} ({claim.slug} {claim.year}): {reply}")

    def absorb(self, other: SendReport) -> None:
        """Add what another sending process did; each of its notes is kept once."""
        self.sent += other.sent
        self.deferred += other.deferred
        self.failed += other.failed
        self.bounced += other.bounced
        self.skipped += other.skipped
        room = MAX_LISTED_FAILURES - len(self.failures)
        self.failures.extend(other.failures[:max(room, 0)])
        # Every process builds the same editions, so their warnings and problems repeat.
        self.problems.extend(p for p in other.problems if p not in self.problems)
        self.warnings.extend(w for w in other.warnings if w not in self.warnings)
        self.stopped = self.stopped or other.stopped


def worker_name() -> str:
    """Return a lease owner name unique to this process and call."""
    return f"{socket.gethostname()}/{os.getpid()}/{secrets.token_hex(4)}"


def enqueue_event(ledger: Ledger, event: Event, due_at: datetime, zone: ZoneChoice,
                  site_zone: str, *, give_up_after: timedelta,
                  now: datetime | None = None) -> int:
    """Queue ``event`` for the confirmed subscribers of ``zone``; return how many rows were new."""
    return ledger.enqueue(event.article.slug, event.year, event.on, due_at=due_at,
                          give_up_at=due_at + give_up_after, zone=zone, site_zone=site_zone,
                          now=now)


def skip_event(ledger: Ledger, event: Event, due_at: datetime, zone: ZoneChoice,
               site_zone: str, reason: str, now: datetime | None = None) -> int:
    """Record ``event`` as skipped for the subscribers of ``zone`` that never got it."""
    return ledger.enqueue(event.article.slug, event.year, event.on, due_at=due_at,
                          give_up_at=due_at, zone=zone, site_zone=site_zone, status="skipped",
                          reason=reason, now=now)


class _Batch:
    """Send one claimed batch: build each message lazily, record each outcome as it arrives."""

    def __init__(self, sender: _Sender, claims: list[Claim], stop: Stop | None
                 ) -> None:
        self.sender = sender
        self.claims = {c.delivery_id: c for c in claims}
        self.stop = stop
        self.open = set(self.claims)  # claimed and not yet recorded
        self.message_ids: dict[int, str] = {}
        self.handed = 0
        self.systemic = 0  # outcomes that blame the connection rather than the message
        self.systemic_reply = ""  # the last of them, which says what is wrong
        self.sent = 0
        self.renewed = sender.clock()  # when the lease was last pushed forward
        self.lost = False  # the lease ran out and another worker took rows over

    def envelopes(self) -> Iterator[Envelope]:
        """Yield one envelope per claim until told to stop or the lease is lost."""
        for claim in self.claims.values():
            if self.stop is not None and self.stop.is_set():
                return
            if not self.sender.keep_lease(self):
                return
            built = self.sender.build(claim)
            if isinstance(built, Outcome):
                self.record(claim, built)
                continue
            envelope, self.message_ids[claim.delivery_id] = built
            self.handed += 1
            yield envelope

    def record(self, claim: Claim, outcome: Outcome) -> None:
        """Write one outcome to the ledger and the report."""
        self.open.discard(claim.delivery_id)
        self.sender.record(claim, outcome, self.message_ids.get(claim.delivery_id))

    def delivered(self, envelope: Envelope, outcome: Outcome) -> None:
        """Record the transport's outcome for a message it was handed."""
        self.record(self.claims[envelope.delivery_id], outcome)
        if outcome.status == "sent":
            self.sent += 1
        elif outcome.status == "deferred" and outcome.code in (None, 421):
            self.systemic += 1
            self.systemic_reply = outcome.reply


class _Sender:
    """The state shared by the batches of one :func:`send_due` call."""

    def __init__(self, ledger: Ledger, mailer: Mailer, calendar: Calendar, policy: SendPolicy,
                 worker: str, clock: Clock, report: SendReport) -> None:
        self.ledger = ledger
        self.mailer = mailer
        self.policy = policy
        self.worker = worker
        self.clock = clock
        self.report = report
        self.articles: dict[str, Article] = {a.slug: a for a in calendar.articles}
        self.editions: dict[tuple[str, int], Edition | str] = {}
        self.done = 0

    def edition(self, claim: Claim) -> Edition | str:
        """Return the event's Edition, built on first use; a string says why there is none."""
        key = (claim.slug, claim.year)
        if key not in self.editions:
            self.editions[key] = self._build(claim)
        return self.editions[key]

    def _build(self, claim: Claim) -> Edition | str:
        article = self.articles.get(claim.slug)
        if article is None:
            problem = f"article {claim.slug!r} is not among the loaded articles"
        elif article.date > claim.event_on:
            problem = f"article {claim.slug!r} is now dated after {claim.event_on}"
        else:
            try:
                built = self.mailer.edition(
                    Event(article, claim.event_on, claim.event_on.year - article.date.year))
            except PublisherError as exc:
                problem = f"cannot build the email for {claim.slug} {claim.year}: {exc}"
            else:
                if built.size_warning:
                    self.report.warnings.append(built.size_warning)
                return built
        self.report.problems.append(problem)
        return problem

    def build(self, claim: Claim) -> tuple[Envelope, str] | Outcome:
        """Return a claim's envelope and Message-ID, or the outcome that replaces sending."""
        edition = self.edition(claim)
        if isinstance(edition, str):
            # The operator can fix the article or template: retry on the usual schedule.
            return Outcome("deferred", None, edition)
        recipient = Recipient(claim.subscriber_id, claim.email, claim.name, claim.timezone,
                              claim.unsubscribe_key)
        try:
            data, wire = edition.messages(recipient)
        except SubscriberError as exc:
            return Outcome("failed", None, f"cannot address the message: {exc}")
        except PublisherError as exc:
            return Outcome("deferred", None, f"cannot build the message: {exc}")
        sender = self.mailer.return_path(claim.delivery_id, slug=claim.slug, year=claim.year,
                                         subscriber_id=claim.subscriber_id)
        envelope = Envelope(claim.delivery_id, sender, claim.email, data, wire)
        return envelope, edition.message_id(recipient)

    def record(self, claim: Claim, outcome: Outcome, message_id: str | None) -> None:
        """Write one outcome to the ledger, counting it in the report."""
        now = self.clock()
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
                claim.delivery_id, self.worker, "failed" if status == "bounced" else status,
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

    def keep_lease(self, batch: _Batch) -> bool:
        """Renew a batch's lease once half of it has passed; return whether it is still held.

        Fewer rows renewed than are open means the lease ran out (the server stalled longer
        than the lease, or the clocks of two hosts disagree) and another worker took rows
        over: nothing more of the batch is handed out, so only messages already in flight can
        go out twice.
        """
        now = self.clock()
        if not batch.lost and batch.open and now - batch.renewed > self.policy.lease / 2:
            held = self.ledger.extend_lease(batch.open, self.worker, now + self.policy.lease)
            batch.renewed = now
            if held < len(batch.open):
                batch.lost = True
                logger.warning("the lease of a batch ran out and another worker took over %d "
                               "of its rows: stopping this batch", len(batch.open) - held)
        return not batch.lost

    def run(self, claims: list[Claim], transport: Transport, stop: Stop | None,
            progress: Progress | None, total: int) -> _Batch:
        """Send one batch, keep its lease alive, and hand back what was never sent."""
        batch = _Batch(self, claims, stop)
        for envelope, outcome in transport.send(batch.envelopes()):
            batch.delivered(envelope, outcome)
            if progress is not None:
                progress(self.done, max(total, self.done))
            self.keep_lease(batch)
        if batch.open:
            # Stopped before these were handed over: give them back for the next run.
            self.ledger.release(batch.open, self.worker, self.clock())
        return batch


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
    sender = _Sender(ledger, mailer, calendar, policy, worker_id, clock, report)
    total = ledger.count_due(clock()) if progress is not None else 0
    while stop is None or not stop.is_set():
        claims = ledger.claim(worker_id, policy.batch_size, policy.lease, clock())
        if not claims:
            break
        batch = sender.run(claims, transport, stop, progress, total)
        # One line per batch for the daemon's log (`publisher run`).
        logger.info("batch: %d claimed, %d handed to the transport, %d sent", len(claims),
                    batch.handed, batch.sent,
                    extra={"claimed": len(claims), "handed": batch.handed, "sent": batch.sent})
        # The server could not be reached at all, or the maildir not written: the rows wait
        # for their retry time instead of every remaining row failing the same way.
        if batch.handed and not batch.sent and batch.systemic == batch.handed:
            report.stopped = f"{batch.systemic_reply}; deferred rows will be retried"
            break
    # Each claim folds the accepted messages recorded so far; this folds the last batch's.
    ledger.settle()
    return report


@dataclass(frozen=True)
class _Share:
    """What one more sending process needs: picklable, for a fork server."""

    config: Config
    secret: bytes
    articles: tuple[Article, ...]
    policy: SendPolicy
    clock: Clock
    open_transport: Callable[[Config], Transport]


def sending_processes(config: Config) -> int:
    """Return how many processes send: one per SMTP connection, where each can have its own."""
    connections = config.email.smtp.connections
    if (config.email.transport != "smtp" or connections < 2 or start_method() is None
            or Ledger.in_memory(config.state.database_url)):
        return 1
    return connections


def _one_connection(config: Config, processes: int) -> Config:
    # Each process drives one connection in its own thread, and takes its part of the rate.
    smtp = config.email.smtp
    return replace(config, email=replace(config.email, smtp=replace(
        smtp, connections=1, rate_limit=smtp.rate_limit / processes)))


def _count_progress(counts: SynchronizedArray[int], slot: int, done: int, _total: int) -> None:
    counts[slot] = done


def _send_share(share: _Share, stop: Stop, counts: SynchronizedArray[int] | None, slot: int
                ) -> SendReport:
    """Claim and send due deliveries in this process, alongside the one that started it."""
    # The parent decides when to stop (through ``stop``): a Ctrl-C reaching the whole process
    # group must not cut this process off between a server's 250 and its ledger write.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    report = SendReport()
    config = share.config
    progress = None if counts is None else partial(_count_progress, counts, slot)
    try:
        with Ledger.open(config.state.database_url) as ledger:
            transport = share.open_transport(config)
            try:
                send_due(ledger, Mailer(config, share.secret, clock=share.clock), transport,
                         Calendar(share.articles, config.site.leap_day), share.clock,
                         worker_name(), stop, policy=share.policy, progress=progress,
                         report=report)
            finally:
                transport.close()
    except PublisherError as exc:
        report.problems.append(f"a sending process stopped: {exc}")
    return report


def send_all(config: Config, ledger: Ledger, mailer: Mailer, calendar: Calendar,
             clock: Clock, stop: Stop | None = None, *, policy: SendPolicy,
             open_transport: Callable[[Config], Transport] = open_transport,
             progress: Progress | None = None, report: SendReport | None = None
             ) -> SendReport:
    """Send everything due over the configured connections, each in a process of its own."""
    report = report or SendReport()
    processes = sending_processes(config)
    method = start_method()
    if processes == 1 or method is None:
        transport = open_transport(config)
        try:
            return send_due(ledger, mailer, transport, calendar, clock, worker_name(), stop,
                            policy=policy, progress=progress, report=report)
        finally:
            transport.close()
    # One interpreter runs one core: SMTP connections driven by threads of one process wait
    # for each other, so every connection gets a process, each claiming its own batches
    # from the ledger exactly as separate instances would.
    own = _one_connection(config, processes)
    articles = tuple(calendar.articles)
    if method == "forkserver":
        # Everything a fork server hands over is pickled: only the articles with due mail.
        due = set(ledger.due_slugs(clock()))
        articles = tuple(a for a in articles if a.slug in due)
    share = _Share(own, mailer.secret, articles, policy, clock, open_transport)
    senders = _start_senders(share, processes - 1, method, progress is not None)
    counts = senders.counts
    if progress is not None and counts is not None:
        shown = progress

        def progress(done: int, total: int) -> None:
            counts[0] = done
            shown(sum(counts[:]), total)

    try:
        transport = open_transport(own)
        try:
            send_due(ledger, mailer, transport, calendar, clock, worker_name(), stop,
                     policy=policy, progress=progress, report=report)
        finally:
            transport.close()
    finally:
        senders.finish(stop, report)
    return report


class _Senders:
    """The extra sending processes of one :func:`send_all` call."""

    def __init__(self, workers: list[Worker[SendReport]], halt: synchronize.Event,
                 counts: SynchronizedArray[int] | None) -> None:
        self.workers = workers
        self.halt = halt
        self.counts = counts

    def finish(self, stop: Stop | None, report: SendReport) -> None:
        """Wait for every process (passing ``stop`` on), adding what each did to ``report``."""
        waiting = {worker.receiver: worker for worker in self.workers}
        while waiting:
            if stop is not None and stop.is_set():
                self.halt.set()
            for ready in wait(list(waiting), timeout=STOP_POLL_SECONDS):
                worker = waiting.pop(cast(Connection, ready))
                try:
                    report.absorb(worker.result())
                except WorkerDied as exc:
                    report.problems.append(
                        f"a sending process ended with code {exc.exitcode}: the rows it held "
                        "go out again once their lease runs out")
                except Exception as exc:  # a bug in one process must not hide the others' work
                    logger.exception("a sending process failed")
                    report.problems.append(f"a sending process failed: {exc!r}")


def _start_senders(share: _Share, count: int, method: StartMethod, counted: bool) -> _Senders:
    ctx = context(method)
    halt = ctx.Event()
    counts = ctx.Array("q", count + 1, lock=False) if counted else None
    workers = [Worker(partial(_send_share, share, halt, counts, slot), name=f"sender-{slot}",
                      method=method) for slot in range(1, count + 1)]
    return _Senders(workers, halt, counts)


def send_date(config: Config, day: date | None = None, *, dry_run: bool = False,
              clock: Clock | None = None, progress: Progress | None = None,
              stop: Stop | None = None) -> SendReport:
    """Queue ``day``'s events for every confirmed subscriber in any zone, then send all due."""
    clock = clock or utcnow
    now = clock()
    day = day or now.astimezone(config.site.zone).date()
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
        queued = ledger.count_unqueued(event.article.slug, event.year, ALL_ZONES, site_zone)
        report.events.append(EventSummary(event.article.slug, event.year, event.article.title,
                                          queued))


@dataclass(frozen=True)
class Status:
    """The ledger at a glance: deliveries per event and state, problems, subscribers."""

    day: date | None
    counts: list[DeliveryCount]
    problems: list[Problem]
    subscribers: dict[SubscriberStatus, int]
    due: int

    def lines(self) -> list[str]:
        """Describe the ledger for a terminal."""
        out = ["subscribers: " + ", ".join(f"{n} {s}" for s, n in self.subscribers.items())]
        scope = f" for {self.day}" if self.day else ""
        if not self.counts:
            out.append(f"no deliveries{scope}")
        per_event: dict[tuple[date, str, int], list[str]] = {}
        for c in self.counts:
            per_event.setdefault((c.event_on, c.slug, c.year), []).append(f"{c.status} {c.count}")
        for (on, slug, year), states in per_event.items():
            out.append(f"{on}  {slug} {year}: {', '.join(states)}")
        out.append(f"due now: {self.due}")
        if self.problems:
            out.append(f"failed and retrying{scope}, newest first:")
        for p in self.problems:
            retry = (f" (next try {p.next_attempt_at:%Y-%m-%d %H:%M} UTC)"
                     if p.status == "deferred" else "")
            out.append(f"  {p.status:<8} {p.email}  {p.slug} {p.year}  attempts {p.attempts}  "
                       f"{p.reply or ''}{retry}")
        return out


def delivery_status(config: Config, day: date | None = None, *, limit: int = 50,
                    now: datetime | None = None) -> Status:
    """Return delivery counts and failures (for the events of ``day``, or all)."""
    with Ledger.open(config.state.database_url, read_only=True) as ledger:
        # Read only: messages accepted by a sender that has not folded them in yet (still
        # sending, or died) count as sent, as they will once folded.
        return Status(day, ledger.delivery_counts(day), ledger.problems(day, limit),
                      ledger.subscriber_counts(), ledger.count_due(now or utcnow()))
