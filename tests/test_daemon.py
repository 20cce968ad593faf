"""The clock around the tick: APScheduler job settings, stop signals, log formats."""

from __future__ import annotations

import io
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from apscheduler.triggers.interval import IntervalTrigger
from sqlalchemy import select

from publisher import config as config_module
from publisher.config import Config
from publisher.daemon import TICK_JOB_ID, configure_logging, run, start_clock
from publisher.errors import ConfigError
from publisher.ledger import Ledger, deliveries
from publisher.status import LAST_TICK_KEY
from publisher.subscriptions.fields import subscriber_row
from tests.fixtures.content import WriteArticle
from tests.fixtures.database import sqlite_url
from tests.fixtures.smtp import SmtpSink
from tests.fixtures.ticks import write_config

DEADLINE_SECONDS = 20.0


@pytest.fixture
def clock_config(tmp_path: Path) -> Config:
    """Return a configuration with a one-second tick in a zone with a :45 offset."""
    return config_module.from_mapping(
        {"site": {"timezone": "Asia/Kathmandu"},
         "schedule": {"tick_seconds": 1, "misfire_grace_seconds": 120}},
        base_dir=tmp_path)


@pytest.fixture
def restore_logging() -> Iterator[None]:
    """Put the root logger back as it was after a test reconfigures it."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def test_the_clock_fires_the_tick_at_once_with_the_configured_job_settings(
        clock_config: Config) -> None:
    fired = threading.Event()
    scheduler = start_clock(clock_config, fired.set)
    try:
        job = scheduler.get_job(TICK_JOB_ID)
        assert job.coalesce is True
        assert job.max_instances == 1
        assert job.misfire_grace_time == 120
        assert isinstance(job.trigger, IntervalTrigger)
        assert job.trigger.interval_length == 1
        assert str(scheduler.timezone) == "Asia/Kathmandu"
        assert fired.wait(DEADLINE_SECONDS)
    finally:
        scheduler.shutdown(wait=True)


def test_the_clock_keeps_firing_after_the_first_tick(clock_config: Config) -> None:
    calls: list[int] = []
    third = threading.Event()

    def tick() -> None:
        calls.append(1)
        if len(calls) == 3:
            third.set()

    scheduler = start_clock(clock_config, tick)
    try:
        assert third.wait(DEADLINE_SECONDS)
    finally:
        scheduler.shutdown(wait=True)


def test_sigterm_lets_the_tick_in_progress_finish_and_returns(clock_config: Config) -> None:
    stop = threading.Event()
    finished: list[bool] = []

    def tick() -> None:
        os.kill(os.getpid(), signal.SIGTERM)
        # The message in flight: it ends only once the stop request has been seen.
        finished.append(stop.wait(DEADLINE_SECONDS))

    run(clock_config, tick, stop)
    assert finished == [True]
    assert stop.is_set()


def test_a_second_signal_during_shutdown_does_not_kill_the_process(clock_config: Config) -> None:
    stop = threading.Event()
    finished: list[bool] = []

    def tick() -> None:
        os.kill(os.getpid(), signal.SIGINT)
        finished.append(stop.wait(DEADLINE_SECONDS))
        os.kill(os.getpid(), signal.SIGTERM)

    run(clock_config, tick, stop)
    # Still alive, and the signal mask is back to normal: SIGINT raises KeyboardInterrupt again.
    assert finished == [True]
    assert signal.pthread_sigmask(signal.SIG_BLOCK, []) & {signal.SIGTERM, signal.SIGINT} == set()


def test_a_signal_taken_by_a_thread_started_earlier_still_stops_cleanly(
        clock_config: Config) -> None:
    stop = threading.Event()
    release = threading.Event()
    # Started before run(), so it does not block the stop signals and may receive them.
    bystander = threading.Thread(target=release.wait, args=(DEADLINE_SECONDS,))
    bystander.start()
    finished: list[bool] = []

    def tick() -> None:
        assert bystander.ident is not None
        signal.pthread_kill(bystander.ident, signal.SIGTERM)
        finished.append(stop.wait(DEADLINE_SECONDS))

    try:
        run(clock_config, tick, stop)
    finally:
        release.set()
        bystander.join()
    assert finished == [True]
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL


def test_setting_the_stop_event_ends_the_run_without_a_signal(clock_config: Config) -> None:
    stop = threading.Event()
    calls: list[int] = []

    def tick() -> None:
        calls.append(1)
        stop.set()

    run(clock_config, tick, stop)
    assert calls == [1]


def test_json_logs_are_one_object_per_line_with_extra_fields(restore_logging: None) -> None:
    stream = io.StringIO()
    configure_logging("json", stream=stream)
    log = logging.getLogger("publisher.test")
    log.info("tick: %d sent", 3, extra={"sent": 3, "zone": "Asia/Tokyo"})
    try:
        raise ValueError("boom")
    except ValueError:
        log.exception("tick failed")
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2
    first, second = (json.loads(line) for line in lines)
    assert first["message"] == "tick: 3 sent"
    assert first["level"] == "info"
    assert first["logger"] == "publisher.test"
    assert (first["sent"], first["zone"]) == (3, "Asia/Tokyo")
    assert first["time"].endswith("+00:00")
    assert "ValueError: boom" in second["exception"]


def test_text_logs_are_readable_lines_and_hide_scheduler_chatter(restore_logging: None) -> None:
    stream = io.StringIO()
    configure_logging("text", stream=stream)
    logging.getLogger("publisher.test").info("tick: %d sent", 3)
    logging.getLogger("apscheduler.executors.default").info('Running job "tick"')
    logging.getLogger("apscheduler.scheduler").warning(
        'Execution of job "tick" skipped: maximum number of running instances reached (1)')
    logging.getLogger("apscheduler.executors.default").warning(
        'Run time of job "tick" was missed by 0:10:00')
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2
    assert lines[0].endswith("INFO publisher.test: tick: 3 sent")
    assert "was missed by" in lines[1]


@pytest.mark.parametrize("seconds", [0, 61])
def test_a_tick_slower_than_once_a_minute_or_zero_is_refused(seconds: int) -> None:
    with pytest.raises(ConfigError, match=r"schedule\.tick_seconds"):
        config_module.from_mapping({"schedule": {"tick_seconds": seconds}})


def wait_until(condition: Callable[[], bool], what: str, seconds: float) -> None:
    """Poll ``condition`` until it holds; fail naming ``what`` after ``seconds``."""
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"gave up waiting: {what}")
        time.sleep(0.05)


def test_publisher_run_sends_once_per_subscriber_at_the_publish_time_and_stops_on_sigterm(
        tmp_path: Path, write_article: WriteArticle, content_dir: Path,
        smtp_server: SmtpSink) -> None:
    zone = ZoneInfo("Asia/Kathmandu")  # UTC+05:45
    # The next whole minute: at most a minute ahead.
    publish = (datetime.now(UTC) + timedelta(seconds=60)).astimezone(zone).replace(
        second=0, microsecond=0)
    write_article("today", date=publish.date().replace(year=publish.year - 4).isoformat(),
                  title="Back again today")
    url = sqlite_url(tmp_path)
    config_path = write_config(tmp_path / "publisher.toml", {
        "site": {"timezone": "Asia/Kathmandu", "publish_time": f"{publish:%H:%M}",
                 "content_dir": str(content_dir), "output_dir": str(tmp_path / "site"),
                 "base_url": "https://example.org/"},
        "state": {"database_url": url, "key_file": str(tmp_path / "secret.key")},
        "email": smtp_server.email_table(),
        "schedule": {"tick_seconds": 1},
    })
    readers = {"plain@example.org": None, "zoned@example.org": "Asia/Kathmandu"}
    with Ledger.open(url) as ledger:
        for email, zone_name in readers.items():
            ledger.add_subscriber(subscriber_row(email, None, zone_name))

    daemon = subprocess.Popen(
        [sys.executable, "-m", "publisher", "run", "--config", str(config_path),
         "--log-format", "json"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_until(lambda: len(smtp_server.messages) >= len(readers), "one email per reader",
                   publish.timestamp() - time.time() + DEADLINE_SECONDS)
        seen_at = datetime.now(UTC)
        # Let the daemon tick a few more times: nothing more may arrive.
        with Ledger.open(url) as ledger:
            def ticked_since() -> bool:
                last = ledger.get_state(LAST_TICK_KEY)
                return last is not None and (
                    datetime.fromisoformat(last) > seen_at + timedelta(seconds=2))

            wait_until(ticked_since, "two more ticks", DEADLINE_SECONDS)
            with ledger.engine.connect() as conn:
                sent_at = list(conn.scalars(select(deliveries.c.sent_at)))
    finally:
        daemon.send_signal(signal.SIGTERM)
        _, err = daemon.communicate(timeout=DEADLINE_SECONDS)

    assert daemon.returncode == 0, err
    assert sorted(m.rcpt_tos[0] for m in smtp_server.messages) == sorted(readers)
    assert all(m.message["Subject"].startswith("Back again today") for m in smtp_server.messages)
    assert len(sent_at) == len(readers)
    assert all(when >= publish for when in sent_at)
    records = [json.loads(line) for line in err.splitlines()]
    ticks = [r for r in records if r["logger"] == "publisher.schedule"]
    batches = [r for r in records if r["logger"] == "publisher.dispatch"]
    assert sum(r["sent"] for r in ticks) == len(readers)
    assert sum(r["sent"] for r in batches) == len(readers)
    assert records[-1]["message"] == "stopped"
