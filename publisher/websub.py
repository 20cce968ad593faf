"""Ping the WebSub hub for each changed feed, retried with backoff kept in the ledger."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timedelta
from http.client import HTTPException
from typing import Any
from urllib.parse import urlencode

from publisher import __version__
from publisher.calendar import utcnow
from publisher.config import Config
from publisher.feeds import FEEDS
from publisher.ledger import Ledger
from publisher.ledger_reads import LedgerReads

STATE_KEY = "websub:{name}"
TIMEOUT_SECONDS = 10.0  # per ping; the pings of one build run at the same time
FIRST_RETRY = timedelta(minutes=1)
LONGEST_WAIT = timedelta(hours=1)
MAX_ATTEMPTS = 12  # about seven hours of trying, then the ping waits for the next change
CONTENT_TYPE = "application/x-www-form-urlencoded"
USER_AGENT = f"anniversary-publisher/{__version__}"


@dataclass(frozen=True)
class PingResult:
    """What the hub answered to one ping: accepted or not, and how to say so."""

    ok: bool
    detail: str  # e.g. "204 No Content", "connection refused"


@dataclass(frozen=True)
class PingState:
    """One feed's ping as the ledger keeps it: pending or not, and the last attempt's result."""

    name: str  # the feed's file name
    topic: str  # the feed's URL, sent as hub.url
    hub: str
    pending: bool = False
    attempts: int = 0  # failed attempts since the feed last changed
    next_at: datetime | None = None
    last_at: datetime | None = None
    last_ok: bool | None = None
    last_detail: str | None = None

    def to_json(self) -> str:
        """Return the state as the ledger stores it."""
        return json.dumps(asdict(self), sort_keys=True, default=datetime.isoformat)

    @classmethod
    def from_json(cls, text: str | None, name: str, topic: str, hub: str) -> PingState:
        """Read a stored state; a missing or damaged one is a feed never pinged."""
        fresh = cls(name=name, topic=topic, hub=hub)
        try:
            data = json.loads(text or "")
            return replace(
                fresh, pending=bool(data["pending"]), attempts=int(data["attempts"]),
                next_at=_instant(data["next_at"]), last_at=_instant(data["last_at"]),
                last_ok=data["last_ok"], last_detail=data["last_detail"])
        except (ValueError, KeyError, TypeError):
            return fresh


def _instant(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    """Report a redirect as the hub's answer: following it would turn the POST into a GET."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        """Follow no redirect."""
        return None


_opener = urllib.request.build_opener(_NoRedirects())


def ping(hub: str, topic: str, timeout: float = TIMEOUT_SECONDS) -> PingResult:
    """POST ``hub.mode=publish`` and ``hub.url=topic`` to ``hub``; return its answer."""
    body = urlencode({"hub.mode": "publish", "hub.url": topic}).encode("ascii")
    request = urllib.request.Request(hub, data=body, method="POST", headers={
        "Content-Type": CONTENT_TYPE, "User-Agent": USER_AGENT})
    try:
        with _opener.open(request, timeout=timeout) as response:
            return PingResult(200 <= response.status < 300, f"{response.status} {response.reason}")
    except urllib.error.HTTPError as exc:
        return PingResult(False, f"{exc.code} {exc.reason}")
    except urllib.error.URLError as exc:
        reason = exc.reason
        return PingResult(False, getattr(reason, "strerror", None) or str(reason))
    except TimeoutError:
        return PingResult(False, f"no answer within {timeout:g} s")
    except (OSError, HTTPException) as exc:
        return PingResult(False, str(exc) or type(exc).__name__)


Pinger = Callable[[str, str], PingResult]


def retry_delay(attempts: int) -> timedelta:
    """Return the wait after ``attempts`` failed attempts: 1 minute, doubling, at most 1 hour."""
    wait: timedelta = FIRST_RETRY * 2 ** max(attempts - 1, 0)
    return min(wait, LONGEST_WAIT)


def ping_states(config: Config, ledger: LedgerReads) -> list[PingState]:
    """Return each feed's ping state as the ledger keeps it."""
    hub = config.site.websub_hub or ""
    return [PingState.from_json(ledger.get_state(STATE_KEY.format(name=feed.name)), feed.name,
                                config.site.url(feed.name), hub) for feed in FEEDS]


def _store(ledger: Ledger, state: PingState, now: datetime) -> None:
    ledger.set_state(STATE_KEY.format(name=state.name), state.to_json(), now)


def mark_changed(config: Config, ledger: Ledger, names: Iterable[str],
                 now: datetime | None = None) -> None:
    """Record that the feeds ``names`` changed: each is to be pinged now, whatever came before."""
    now = now or utcnow()
    changed = set(names)
    for state in ping_states(config, ledger):
        if state.name in changed:
            _store(ledger, replace(state, pending=True, attempts=0, next_at=now), now)


def deliver_due(config: Config, ledger: Ledger, now: datetime | None = None,
                pinger: Pinger = ping) -> list[PingState]:
    """Ping the hub for every pending feed whose time has come; return their new states."""
    hub = config.site.websub_hub
    if hub is None:
        return []
    now = now or utcnow()
    due = [state for state in ping_states(config, ledger)
           if state.pending and (state.next_at is None or state.next_at <= now)]
    if not due:
        return []
    # At the same time: a hub that does not answer costs one timeout, not one per feed.
    with ThreadPoolExecutor(len(due), thread_name_prefix="websub") as pool:
        results = list(pool.map(lambda state: pinger(hub, state.topic), due))
    done: list[PingState] = []
    for state, result in zip(due, results, strict=True):
        attempts = 0 if result.ok else state.attempts + 1
        retry = not result.ok and attempts < MAX_ATTEMPTS
        new = replace(state, hub=hub, pending=retry, attempts=attempts,
                      next_at=now + retry_delay(attempts) if retry else None, last_at=now,
                      last_ok=result.ok, last_detail=result.detail)
        _store(ledger, new, now)
        done.append(new)
    return done


def announce(config: Config, changed: Sequence[str], now: datetime | None = None,
             pinger: Pinger = ping) -> list[PingState]:
    """After a build: mark the changed feeds and ping every due one (none without a hub)."""
    if config.site.websub_hub is None:
        return []
    with Ledger.open(config.state.database_url) as ledger:
        mark_changed(config, ledger, changed, now)
        return deliver_due(config, ledger, now, pinger)
