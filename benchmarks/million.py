"""Measure one event sent to a million subscribers on SQLite, against smtp-source.

Usage: .venv/bin/python benchmarks/million.py [--subscribers 1000000] [--size 20000]
                                              [--baseline-messages 100000] [--status-every 20]
                                              [--keep DIR] [--rtt MS]

Every step runs as the command line runs it, each a fresh process on one SQLite ledger (the
package's bytecode written first, as installing it does), with one instance and one SMTP
connection into postfix's ``smtp-sink`` on loopback:

1. ``publisher subscribers import`` of a CSV of ``--subscribers`` rows (``email,name,timezone``;
   half with a name, a third with a time zone): wall time and peak RSS.
2. Queueing the event alone (``enqueue_event``, as ``publisher send`` does first), timed in a
   fresh process on a copy of the ledger, so that the send below starts from the same state.
3. ``publisher send --date`` of the event: wall time (queueing included), the peak of the summed
   PSS of the sending process and any it starts (sampled), and its peak RSS. Meanwhile
   ``publisher status`` runs every ``--status-every`` seconds, each timed.
4. The baseline, in the same run: ``smtp-source -s 1 -d`` sending ``--baseline-messages``
   messages of the same size into the same sink (scaled to ``--subscribers``; 0 sends them all),
   half of them right before the send and half right after.

``--rtt MS`` adds the run through a latency proxy (see :func:`proxied_projection`).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from contextlib import closing
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from build import compile_package
from latency import free_port, relay
from send import DAY, ROOT, article_text, body_for, message_size, sink, tool

PUBLISHER = [sys.executable, "-m", "publisher"]
ZONES = ("Europe/Paris", "America/New_York", "Asia/Tokyo")
SAMPLE_SECONDS = 0.2


@dataclass
class Sampled:
    """The peak memory of a process tree, sampled while it runs."""

    pss_kib: int = 0
    rss_kib: int = 0


def tree(pid: int) -> list[int]:
    """Return ``pid`` and its descendants still running."""
    found, queue = [], [pid]
    while queue:
        current = queue.pop()
        found.append(current)
        try:
            for task in os.listdir(f"/proc/{current}/task"):
                with open(f"/proc/{current}/task/{task}/children") as children:
                    queue += [int(child) for child in children.read().split()]
        except OSError:
            continue  # ended between two reads
    return found


def memory_kib(pid: int) -> tuple[int, int]:
    """Return the summed PSS and RSS of ``pid``'s process tree, in KiB."""
    pss = rss = 0
    for member in tree(pid):
        try:
            with open(f"/proc/{member}/smaps_rollup") as rollup:
                for line in rollup:
                    if line.startswith("Pss:"):
                        pss += int(line.split()[1])
                    elif line.startswith("Rss:"):
                        rss += int(line.split()[1])
        except OSError:
            continue
    return pss, rss


@dataclass
class Run:
    """One command's wall time, peak RSS (from the kernel) and sampled peak PSS."""

    seconds: float
    peak_rss_kib: int
    sampled: Sampled
    output: str


def run_measured(command: list[str],
                 during: Callable[[threading.Event], None] | None = None) -> Run:
    """Run a command to its end, sampling its memory; ``during`` runs alongside until it ends."""
    sampled = Sampled()
    started = time.perf_counter()
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    finished = threading.Event()

    def sample() -> None:
        while not finished.wait(SAMPLE_SECONDS):
            pss, rss = memory_kib(process.pid)
            sampled.pss_kib = max(sampled.pss_kib, pss)
            sampled.rss_kib = max(sampled.rss_kib, rss)

    threads = [threading.Thread(target=sample, daemon=True)]
    if during is not None:
        threads.append(threading.Thread(target=during, args=(finished,), daemon=True))
    for thread in threads:
        thread.start()
    assert process.stdout is not None
    output = process.stdout.read()  # to the end, so the pipe never fills
    usage = wait_for(process)
    seconds = time.perf_counter() - started
    finished.set()
    for thread in threads:
        thread.join()
    if process.returncode:
        raise SystemExit(f"{' '.join(command[2:])} failed ({process.returncode}):\n{output}")
    return Run(seconds, usage.ru_maxrss, sampled, output)


def wait_for(process: subprocess.Popen[str] | subprocess.Popen[bytes]) -> resource.struct_rusage:
    """Wait for ``process`` to end; return the kernel's figures for it alone (wait4)."""
    _pid, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    return usage


def write_site(folder: Path, port: int, body: int, connections: int = 1) -> Path:
    """Write the article and a publisher.toml sending to ``port``; return the config's path."""
    (folder / "content").mkdir(exist_ok=True)
    (folder / "content" / "bench.txt").write_text(article_text(body), encoding="utf-8")
    return write_config(folder, f"""[email]
transport = "smtp"
[email.smtp]
host = "127.0.0.1"
port = {port}
security = "none"
connections = {connections}
""")


def write_config(folder: Path, more: str = "") -> Path:
    """Write a publisher.toml for ``folder``, ``more`` added to [site]; return its path."""
    config = folder / "publisher.toml"
    config.write_text(f"""
[state]
database_url = "sqlite:///{folder / 'ledger.db'}"
[site]
title = "Benchmark"
base_url = "https://example.org/"
content_dir = "content"
{more}""", encoding="utf-8")
    return config


def write_csv(path: Path, count: int) -> None:
    """Write ``count`` distinct subscribers in no order, some named, some with a time zone."""
    with path.open("w", encoding="utf-8") as out:
        out.write("email,name,timezone\n")
        for n in range(count):
            name = f"Reader {n}" if n % 2 else ""
            zone = ZONES[n % 9] if n % 9 < len(ZONES) else ""
            # A scrambled prefix: a real list is in no order its addresses' index knows.
            scrambled = n * 2654435761 % 2**32
            out.write(f"{scrambled:08x}.{n}@mail{n % 97}.example.org,{name},{zone}\n")


def enqueue_child(config_path: Path) -> None:
    """Queue the day's event as ``publisher send`` does, timed; print JSON figures."""
    from publisher.calendar import Calendar, utcnow
    from publisher.config import load
    from publisher.content import load_articles
    from publisher.dispatch import SendPolicy, enqueue_event
    from publisher.ledger import ALL_ZONES, Ledger

    config = load(config_path)
    calendar = Calendar(load_articles(config.site.content_dir).articles, config.site.leap_day)
    policy = SendPolicy.from_config(config)
    with Ledger.open(config.state.database_url) as ledger:
        started = time.perf_counter()
        now = utcnow()
        queued = sum(enqueue_event(ledger, event, now, ALL_ZONES, config.site.timezone,
                                   give_up_after=policy.give_up_after, now=now)
                     for event in calendar.events_on(DAY))
        seconds = time.perf_counter() - started
    print(json.dumps({"queued": queued, "seconds": seconds}))


def copy_ledger(source: Path, target: Path) -> None:
    """Copy an SQLite ledger nobody is writing to, with its write-ahead log if any."""
    for suffix in ("", "-wal"):
        if Path(f"{source}{suffix}").exists():
            shutil.copyfile(f"{source}{suffix}", f"{target}{suffix}")


@dataclass
class StatusTimes:
    """How long each ``publisher status`` took while the send ran: wall and processor time."""

    seconds: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)
    failed: int = 0

    def loop(self, command: list[str], every: float, finished: threading.Event) -> None:
        """Run ``publisher status`` until ``finished``, waiting ``every`` seconds between runs."""
        while not finished.wait(every):
            started = time.perf_counter()
            process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL,
                                       stderr=subprocess.DEVNULL)
            usage = wait_for(process)
            if process.returncode:
                self.failed += 1
                continue
            self.seconds.append(time.perf_counter() - started)
            self.cpu.append(usage.ru_utime + usage.ru_stime)

    def summary(self) -> str:
        """Describe the times measured."""
        failed = f"; {self.failed} failed" if self.failed else ""
        if not self.seconds:
            return f"not measured (the send ended first{failed})"
        return (f"median {statistics.median(self.seconds):.2f} s, slowest "
                f"{max(self.seconds):.2f} s over {len(self.seconds)} runs (processor time: "
                f"median {statistics.median(self.cpu):.2f} s){failed}")


def baseline_seconds(port: int, size: int, messages: int) -> float:
    """Return how long ``smtp-source -s 1 -d`` takes to send ``messages`` of ``size`` bytes."""
    source = tool("smtp-source")
    assert source is not None
    started = time.perf_counter()
    subprocess.run([source, "-d", "-s", "1", "-l", str(size), "-m", str(messages), "-f",
                    "publisher@example.org", "-t", "reader@example.org", f"127.0.0.1:{port}"],
                   check=True)
    return time.perf_counter() - started


def proxied_projection(args: argparse.Namespace, folder: Path, sink_port: int) -> None:
    """Send through a latency proxy with many connections, stop early, project the total.

    The "20 ms proxy, 64 connections, stopped after 100,000 messages" run: ``smtp-sink``
    behind the proxy of ``benchmarks/latency.py`` adding ``--rtt`` ms of round trip, and
    ``publisher send`` with ``--rtt-connections`` connections on a copy of the imported ledger,
    interrupted (as by Ctrl-C) once ``--rtt-stop-after`` messages are accepted. The projected
    total is the time to the first accepted message (queueing) plus every message at the rate
    measured after it.
    """
    stop_after = min(args.rtt_stop_after, args.subscribers)
    site = folder / "proxied"  # holds a copy of the ledger as imported
    with relay(sink_port, args.rtt) as proxy_port:
        config = write_site(site, proxy_port, args.body, args.rtt_connections)
        started = time.perf_counter()
        process = subprocess.Popen([*PUBLISHER, "--config", str(config), "send", "--date",
                                    DAY.isoformat()], cwd=ROOT, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL)
        peak_pss = sent = 0
        first: float | None = None  # when the first message was accepted
        while process.poll() is None and sent < stop_after:
            time.sleep(SAMPLE_SECONDS)
            peak_pss = max(peak_pss, memory_kib(process.pid)[0])
            sent = accepted_count(site / "ledger.db")
            if sent and first is None:
                first = time.perf_counter() - started
        seconds = time.perf_counter() - started
        process.send_signal(signal.SIGINT)
        process.wait()
    if first is None:
        raise SystemExit("the proxied send accepted nothing")
    rate = sent / max(seconds - first, 1e-3)
    print(f"{args.rtt:g} ms proxy, {args.rtt_connections} connections: {sent:,} accepted in "
          f"{seconds:.1f} s ({rate:,.0f} msg/s after {first:.1f} s of queueing); projected "
          f"{first + args.subscribers / rate:.0f} s for {args.subscribers:,}; peak PSS "
          f"{peak_pss / 1024:.0f} MiB (sampled)", flush=True)


def accepted_count(ledger: Path) -> int:
    """Return how many messages the server accepted, read without a write lock."""
    with closing(sqlite3.connect(f"file:{ledger}?mode=ro", uri=True)) as conn:
        (sent,) = conn.execute("SELECT count(*) FROM deliveries WHERE status = 'sent'").fetchone()
        (unfolded,) = conn.execute("SELECT count(*) FROM accepted").fetchone()
    return int(sent) + int(unfolded)


def main() -> None:
    """Measure and print figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subscribers", type=int, default=1_000_000)
    parser.add_argument("--size", type=int, default=20_000, help="bytes per email (about)")
    parser.add_argument("--baseline-messages", type=int, default=100_000,
                        help="messages smtp-source sends, scaled to --subscribers (0: as many)")
    parser.add_argument("--status-every", type=float, default=20.0,
                        help="seconds between two `publisher status` runs during the send")
    parser.add_argument("--keep", type=Path, default=None,
                        help="work in this folder and keep it (default: a temporary one)")
    parser.add_argument("--rtt", type=float, default=0.0,
                        help="also send through a proxy adding this round trip (ms)")
    parser.add_argument("--rtt-connections", type=int, default=64)
    parser.add_argument("--rtt-stop-after", type=int, default=100_000)
    parser.add_argument("--enqueue-child", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.enqueue_child is not None:
        enqueue_child(args.enqueue_child)
        return
    if tool("smtp-sink") is None or tool("smtp-source") is None:
        raise SystemExit("needs postfix's smtp-sink and smtp-source (make system-bench-deps)")
    os.environ.setdefault("PUBLISHER_SECRET_KEY", "benchmark-secret-" + "x" * 32)
    compile_package()
    folder = args.keep or Path(tempfile.mkdtemp(prefix="million-bench-"))
    folder.mkdir(parents=True, exist_ok=True)
    args.body = body_for(args.size)
    size = message_size(args.body)
    try:
        with sink(free_port()) as (_kind, port, _pid):
            measure(args, folder, port, size)
    finally:
        if args.keep is None:
            shutil.rmtree(folder, ignore_errors=True)


def measure(args: argparse.Namespace, folder: Path, port: int, size: int) -> None:
    """Import, queue and send to ``--subscribers``, then run the baseline; print figures."""
    n = args.subscribers
    print(f"{n:,} subscribers, messages of {size:,} bytes, SQLite ledger, one connection "
          "into smtp-sink on loopback", flush=True)
    config = write_site(folder, port, args.body)
    command = [*PUBLISHER, "--config", str(config)]
    for name in ("ledger.db", "ledger.db-wal", "ledger.db-shm", "ledger.db-writers"):
        (folder / name).unlink(missing_ok=True)
    csv_path = folder / "subscribers.csv"
    write_csv(csv_path, n)

    imported = run_measured([*command, "subscribers", "import", str(csv_path)])
    print(f"import:  {imported.seconds:7.1f} s ({n / imported.seconds:,.0f} rows/s), peak RSS "
          f"{imported.peak_rss_kib / 1024:.0f} MiB; target <= 60 s for 1M "
          f"(ratio {imported.seconds * 1_000_000 / n / 60:.2f})", flush=True)

    queue_folder = folder / "enqueue"
    for copy in [queue_folder, *([folder / "proxied"] if args.rtt else [])]:
        copy.mkdir(exist_ok=True)
        copy_ledger(folder / "ledger.db", copy / "ledger.db")
    queue_config = write_site(queue_folder, port, args.body)
    out = subprocess.run([sys.executable, __file__, "--enqueue-child", str(queue_config)],
                         cwd=ROOT, check=True, capture_output=True, text=True).stdout
    queued = json.loads(out)
    shutil.rmtree(queue_folder)
    print(f"enqueue: {queued['seconds']:7.1f} s for {queued['queued']:,} rows; target <= 20 s "
          f"for 1M (ratio {queued['seconds'] * 1_000_000 / n / 20:.2f})", flush=True)

    # The baseline in two halves, one right before the send and one right after: on a machine
    # shared with other work, the load drifts over a send of minutes, and a baseline taken only
    # on one side of it measures another machine.
    messages = args.baseline_messages or n
    halves = (messages // 2, messages - messages // 2)
    before = baseline_seconds(port, size, halves[0])
    status = StatusTimes()
    sent = run_measured(
        [*command, "send", "--date", DAY.isoformat()],
        during=partial(status.loop, [*command, "status", "--date", DAY.isoformat()],
                       args.status_every))
    if f"sent {n}," not in sent.output:
        raise SystemExit(f"the send went wrong:\n{sent.output}")
    print(f"send:    {sent.seconds:7.1f} s ({n / sent.seconds:,.0f} msg/s, queueing included); "
          f"peak PSS {sent.sampled.pss_kib / 1024:.0f} MiB (sampled), peak RSS "
          f"{sent.peak_rss_kib / 1024:.0f} MiB; target <= 200 MiB", flush=True)
    print(f"status during the send: {status.summary()}; target <= 1 s", flush=True)

    after = baseline_seconds(port, size, halves[1])
    theirs = (before + after) * n / messages
    scaled = f", measured on {messages:,} and scaled" if messages != n else ""
    print(f"smtp-source -s 1 -d: {theirs:7.1f} s for {n:,} ({n / theirs:,.0f} msg/s{scaled}; "
          f"{halves[0] / before:,.0f} msg/s before the send, {halves[1] / after:,.0f} after); "
          f"send ratio {sent.seconds / theirs:.2f} (target <= 1.2)", flush=True)
    if args.rtt:
        proxied_projection(args, folder, port)


if __name__ == "__main__":
    main()
