"""The long-running process: an APScheduler clock that fires the tick, signals, and log output."""

from __future__ import annotations

import contextlib
import json
import logging
import signal
import sys
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, TextIO
from urllib.parse import quote
from zoneinfo import ZoneInfoNotFoundError

from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.interval import IntervalTrigger

from publisher.config import Config, LogFormat
from publisher.content import ArticleCache
from publisher.errors import PublisherError
from publisher.ledger import Ledger
from publisher.schedule import Ticker, coming_up

TICK_JOB_ID = "tick"
STOP_SIGNALS = frozenset({signal.SIGTERM, signal.SIGINT})
# How often the main thread looks at the stop event when no signal arrives.
_SIGNAL_POLL_SECONDS = 0.5
# Attributes every LogRecord has; anything else came in through ``extra=`` and is worth keeping.
_STANDARD_RECORD_KEYS = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime"}

logger = logging.getLogger(__name__)


class JsonFormatter(logging.Formatter):
    """Format each record as one JSON object on one line, ``extra=`` fields included."""

    def format(self, record: logging.LogRecord) -> str:
        """Return the record as a single line of JSON."""
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry.update((key, value) for key, value in vars(record).items()
                     if key not in _STANDARD_RECORD_KEYS and not key.startswith("_"))
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str, ensure_ascii=False)


def _not_a_busy_skip(record: logging.LogRecord) -> bool:
    # A tick that sends a large edition outlasts many intervals; the next tick picks up
    # whatever is left, so APScheduler's warning of each skipped interval is no warning.
    return "maximum number of running instances" not in record.getMessage()


def configure_logging(log_format: LogFormat = "text", *, level: int = logging.INFO,
                      stream: TextIO | None = None) -> None:
    """Send log records to stderr as readable lines or as one JSON object per line."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else
                         logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(handlers=[handler], level=level, force=True)
    # APScheduler reports every job run at INFO; the tick logs what it did itself.
    logging.getLogger("apscheduler").setLevel(logging.WARNING)
    # addFilter skips a filter already there, so configuring twice filters once.
    logging.getLogger("apscheduler.scheduler").addFilter(_not_a_busy_skip)


def start_clock(config: Config, tick: Callable[[], object]) -> BackgroundScheduler:
    """Start a scheduler that calls ``tick`` now and every ``schedule.tick_seconds`` after."""
    zone = config.site.zone
    scheduler = BackgroundScheduler(
        timezone=zone,
        # One worker: ticks never overlap in one process (max_instances says so too).
        executors={"default": ThreadPoolExecutor(max_workers=1)},
    )
    scheduler.add_job(
        tick,
        # Elapsed-time interval, not a wall-clock cron: it does not care about DST, and the tick
        # itself works out from UTC instants which local dates have become due.
        trigger=IntervalTrigger(seconds=config.schedule.tick_seconds, timezone=zone),
        id=TICK_JOB_ID,
        name="tick",
        coalesce=True,
        max_instances=1,
        misfire_grace_time=config.schedule.misfire_grace_seconds,
        next_run_time=datetime.now(zone),
    )
    scheduler.start()
    return scheduler


def wait_for_stop(stop: threading.Event, received: list[int]) -> None:
    """Block until a stop signal arrives (or is in ``received``) or ``stop`` is set."""
    while not stop.is_set() and not received:
        taken = signal.sigtimedwait(STOP_SIGNALS, _SIGNAL_POLL_SECONDS)
        if taken is not None:
            received.append(taken.si_signo)
    if received:
        logger.info("received %s: finishing the message in flight, then stopping",
                    signal.Signals(received[0]).name)


def run(config: Config, tick: Callable[[], object], stop: threading.Event) -> None:
    """Fire ``tick`` on the clock until a stop signal, letting the tick in progress finish."""
    received: list[int] = []

    def record(signum: int, _frame: object) -> None:
        """Note a stop signal delivered to a thread that does not block it."""
        received.append(signum)

    # Call this from the main thread: it blocks the stop signals (so does every thread started
    # from here) and takes them synchronously, so no handler ever interrupts a lock holder. A
    # thread started earlier that does not block them may still receive one; this handler only
    # records it, and the wait notices within half a second.
    handlers = {sig: signal.signal(sig, record) for sig in STOP_SIGNALS}
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        scheduler = start_clock(config, tick)
        logger.info("running: one tick every %d s in %s", config.schedule.tick_seconds,
                    config.site.timezone)
        try:
            wait_for_stop(stop, received)
        finally:
            stop.set()
            scheduler.shutdown(wait=True)
        logger.info("stopped")
    finally:
        # A second signal during shutdown stays pending; unblocking it would kill the process
        # after a clean stop, so consume it first.
        while signal.sigtimedwait(STOP_SIGNALS, 0) is not None:
            pass
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)
        for sig, handler in handlers.items():
            signal.signal(sig, handler)


def announce(config: Config, preview_root: str | None = None, ledger: Ledger | None = None,
             *, cache: ArticleCache | None = None, now: datetime | None = None) -> None:
    """Log the next appearances and the address of the first one's email preview."""
    root = preview_root or config.site.base_url
    try:
        with contextlib.ExitStack() as stack:
            if ledger is None:
                ledger = stack.enter_context(Ledger.open(config.state.database_url))
            coming = coming_up(config, ledger, now, cache=cache)
    except (PublisherError, ZoneInfoNotFoundError) as exc:
        # Only a log line is lost: the daemon carries on, and its ticks report the problem.
        logger.warning("cannot tell what comes next: %s", exc)
        return
    if not coming:
        logger.info("next appearance: none ahead")
        return
    for appearance in coming:
        logger.info("next appearance: %s", appearance.line(), extra={
            "day": appearance.event.on.isoformat(), "slug": appearance.event.article.slug,
            "publish_at": appearance.first.instant.isoformat(), "reach": appearance.reach})
    first = coming[0].event
    url = f"{root}preview/email/{first.on.isoformat()}/{quote(first.article.slug)}.html"
    # The token is a secret and logs travel further than the configuration: it is named, not
    # written out.
    token = " (add ?token= and web.preview_token)" if config.web.preview_token else ""
    logger.info("preview of the next email: %s%s", url, token, extra={"preview_url": url})


def run_daemon(config: Config, stop: threading.Event | None = None, *,
               preview_root: str | None = None) -> None:
    """Open the ledger, log what comes next (previews at ``preview_root``), tick until stopped."""
    stop = stop or threading.Event()
    with Ledger.open(config.state.database_url) as ledger:
        ticker = Ticker(config, ledger, stop=stop)
        announce(config, preview_root, ledger, cache=ticker.cache)
        run(config, ticker.tick_safely, stop)
