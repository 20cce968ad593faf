"""What comes next: the appearances and preview address logged at start-up, seen for real."""

from __future__ import annotations

import json
import logging
import mailbox
import queue
import signal
import socket
import subprocess
import sys
import threading
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx2
import pytest
from sqlalchemy import update

from publisher import daemon, dispatch, web
from publisher.config import from_mapping
from publisher.ledger import Ledger, subscribers
from publisher.schedule import coming_up
from publisher.subscriptions.fields import subscriber_row
from tests.fixtures.browser import wait_for
from tests.fixtures.content import WriteArticle
from tests.fixtures.ticks import MakeWorld, World, write_config

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


def _quiet_world(make_world: MakeWorld, write_article: WriteArticle, url: str) -> World:
    write_article("flight", title="Wheels leave the sand", date="2019-12-17")
    write_article("metre", title="A metre for everyone", date="2022-05-20")
    world = make_world(url, timezone="UTC", publish_time="09:00")
    world.subscribe("ada@example.org", "Europe/London")
    world.subscribe("kenji@example.org", "Asia/Tokyo")
    world.subscribe("rosa@example.org")
    return world


def test_each_appearance_counts_the_subscribers_it_would_still_reach(
        make_world: MakeWorld, write_article: WriteArticle, database_url: str) -> None:
    world = _quiet_world(make_world, write_article, database_url)
    rosa = world.ledger.find_subscriber("rosa@example.org")
    assert rosa is not None
    world.ledger.unsubscribe_link(email=rosa.email)
    found = coming_up(world.config, world.ledger, NOW)
    assert [(a.event.article.slug, a.event.on, a.reach) for a in found][:2] == [
        ("flight", date(2026, 12, 17), 2), ("metre", date(2027, 5, 20), 2)]
    assert [m.zone for m in found[0].moments] == ["Asia/Tokyo", "Europe/London"]
    # Sent ahead of the day, it reaches nobody more on the day.
    dispatch.send_date(world.config, date(2026, 12, 17), clock=lambda: NOW)
    assert [a.reach for a in coming_up(world.config, world.ledger, NOW)][:2] == [0, 2]


def test_the_log_names_the_preview_below_base_url_and_never_the_token(
        make_world: MakeWorld, write_article: WriteArticle, tmp_path: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    world = _quiet_world(make_world, write_article, f"sqlite:///{tmp_path / 'ledger.db'}")
    config = from_mapping({**world.mapping, "web": {"preview_token": "s3cret-token"}},
                          base_dir=tmp_path)
    with caplog.at_level(logging.INFO, logger="publisher.daemon"):
        daemon.announce(config, ledger=world.ledger, now=NOW)
    messages = [r.getMessage() for r in caplog.records if r.name == "publisher.daemon"]
    assert messages[0].startswith("next appearance: 2026-12-17 at 09:00 Asia/Tokyo (")
    assert messages[-1] == (
        f"preview of the next email: {config.site.base_url}preview/email/2026-12-17/flight.html"
        " (add ?token= and web.preview_token)")
    assert not any("s3cret-token" in message for message in messages)


def test_the_log_says_when_nothing_comes(make_world: MakeWorld, tmp_path: Path,
                                         caplog: pytest.LogCaptureFixture) -> None:
    world = make_world(f"sqlite:///{tmp_path / 'ledger.db'}")
    with caplog.at_level(logging.INFO, logger="publisher.daemon"):
        daemon.announce(world.config, "http://127.0.0.1:8000/", world.ledger, now=NOW)
    assert [r.getMessage() for r in caplog.records if r.name == "publisher.daemon"] == [
        "next appearance: none ahead"]


def test_a_time_zone_the_system_no_longer_knows_costs_only_the_log_line(
        make_world: MakeWorld, write_article: WriteArticle, tmp_path: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    world = _quiet_world(make_world, write_article, f"sqlite:///{tmp_path / 'ledger.db'}")
    with world.ledger.engine.begin() as conn:  # e.g. a zone dropped by a tzdata update
        conn.execute(update(subscribers).values(timezone="Mars/Olympus_Mons"))
    with caplog.at_level(logging.INFO, logger="publisher.daemon"):
        daemon.announce(world.config, ledger=world.ledger, now=NOW)
    [record] = [r for r in caplog.records if r.name == "publisher.daemon"]
    assert record.levelname == "WARNING"
    assert record.getMessage().startswith("cannot tell what comes next: ")
    assert "Mars/Olympus_Mons" in record.getMessage()


def test_a_wildcard_address_is_reached_through_loopback() -> None:
    with socket.socket() as sock:  # bound, never listening: nothing can connect
        sock.bind(("0.0.0.0", 0))
        port = sock.getsockname()[1]
        assert web.own_url(sock) == f"http://127.0.0.1:{port}/"


# ---------------------------------------------------------------------------------------------
# The first run: the real command, on a day with no anniversary
# ---------------------------------------------------------------------------------------------


def _ahead(today: date, days: int, years: int) -> tuple[date, date]:
    """Return a day ``days`` after ``today`` (never a 29 February) and that day ``years`` ago."""
    day = today + timedelta(days=days)
    if (day.month, day.day) == (2, 29):
        day += timedelta(days=1)
    return day, day.replace(year=day.year - years)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def first_run(tmp_path: Path, write_article: WriteArticle, content_dir: Path
              ) -> tuple[Path, date]:
    """Write a quiet site (by the real clock) with two subscribers; return config, next date."""
    # The daemon reads the real clock, so the articles are dated around the real today: the
    # next anniversary ten days ahead (time enough that today stays quiet however long the
    # test runs), another one later.
    today = datetime.now(UTC).date()
    after, first = _ahead(today, 10, 7)
    _, second = _ahead(today, 40, 3)
    write_article("wheels", title="Wheels leave the sand", date=first.isoformat())
    write_article("metre", title="A metre for everyone", date=second.isoformat())
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    config = write_config(tmp_path / "publisher.toml", {
        "site": {"timezone": "UTC", "content_dir": str(content_dir),
                 "output_dir": str(tmp_path / "site"), "base_url": "https://example.org/"},
        "state": {"database_url": url, "key_file": str(tmp_path / "secret.key")},
        "email": {"transport": "maildir", "maildir": str(tmp_path / "outbox")},
        "web": {"host": "127.0.0.1", "port": _free_port()},
    })
    with Ledger.open(url) as ledger:
        ledger.add_subscriber(subscriber_row("ada@example.org", "Ada", "Europe/London"))
        ledger.add_subscriber(subscriber_row("kenji@example.org", "Kenji", "Asia/Tokyo"))
    return config, after


class Records:
    """The JSON log records of a process, as they arrive on its stderr."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        self.seen: list[dict[str, Any]] = []
        self._lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._pump, args=(process,), daemon=True).start()

    def _pump(self, process: subprocess.Popen[str]) -> None:
        for line in process.stderr or ():
            self._lines.put(line)

    def find(self, message_start: str) -> dict[str, Any] | None:
        """Return the first record whose message starts so, reading what has arrived."""
        while True:
            try:
                line = self._lines.get_nowait()
            except queue.Empty:
                break
            self.seen.append(json.loads(line))
        return next((r for r in self.seen if r["message"].startswith(message_start)), None)


@pytest.mark.parametrize("command", [["run", "--serve"], ["serve", "--port", "0"]],
                         ids=["run-serve", "serve"])
def test_the_first_run_names_the_next_appearance_and_a_preview_that_answers(
        first_run: tuple[Path, date], command: list[str]) -> None:
    config, after = first_run
    process = subprocess.Popen(
        [sys.executable, "-m", "publisher", *command, "--config", str(config),
         "--log-format", "json"], stderr=subprocess.PIPE, text=True, cwd=config.parent)
    records = Records(process)
    try:
        preview = wait_for(lambda: records.find("preview of the next email: "),
                           "the preview address in the start-up log")
        nexts = [r for r in records.seen if r["message"].startswith("next appearance: ")]
        assert [(r["day"], r["slug"], r["reach"]) for r in nexts][:1] == [
            (after.isoformat(), "wheels", 2)]
        assert nexts[0]["message"] == (
            f'next appearance: {after.isoformat()} at 09:00 Asia/Tokyo '
            f'({after.isoformat()} 00:00 UTC, then in 1 more zone): '
            f'"Wheels leave the sand" (wheels), 7 years on, to 2 subscribers')
        url = preview["preview_url"]
        assert url.startswith("http://127.0.0.1:") and url.endswith(
            f"/preview/email/{after.isoformat()}/wheels.html")
        assert preview["message"] == f"preview of the next email: {url}"
        response = wait_for(lambda: _get(url), "the preview to answer")
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/html")
        assert "Wheels leave the sand" in response.text and "Sample Reader" in response.text
        if command[0] == "run":
            # The daemon's first tick builds the front page: quiet today, it names what is next.
            root = url.split("/preview/", 1)[0]
            page = wait_for(lambda: _front_page_naming_next(root), "the front page").text
            assert "Nothing comes back today." in page
            assert f'<time datetime="{after.isoformat()}">' in page
            assert '<a href="./articles/wheels/">Wheels leave the sand</a>, 7 years on' in page
            assert httpx2.get(f"{root}/articles/wheels/").status_code == 200
            assert list(mailbox.Maildir(config.parent / "outbox", create=True)) == []
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
    assert process.returncode == 0


def _get(url: str) -> httpx2.Response | None:
    try:
        return httpx2.get(url)
    except httpx2.TransportError:
        return None


def _front_page_naming_next(root: str) -> httpx2.Response | None:
    response = _get(root + "/")
    return response if response is not None and "Next:" in response.text else None
