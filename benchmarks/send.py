"""Measure `publisher send`: personalised ~20 KB emails to a local SMTP sink, against smtp-source.

Usage: .venv/bin/python benchmarks/send.py [--messages 5000] [--size 20000] [--connections 1,2,4]
                                           [--rtt MS] [--memory] [--profile] [--database URL]

For each connection count a child process sets up a fresh ledger with N confirmed subscribers
and one article whose email is about ``--size`` bytes, then times ``send_date`` (enqueue, claim,
build each message, SMTP with pipelining where offered, one ledger write per message). The
baseline is postfix's ``smtp-source -d`` (same size, count and connections, one message per
session kept open) into the same ``smtp-sink``, run right after; the ratio is ours / theirs.
Without postfix (``make system-bench-deps``) an aiosmtpd sink is used and there is no baseline.

``--rtt MS`` puts benchmarks/latency.py between both senders and the sink: a relay MS
milliseconds away (half each way), on loopback. Each line also gives the peak memory of the
whole send: the proportional set size (PSS) of the sending process and of any process it
started, summed and sampled every 20 ms.

``--memory`` also sends to ``--memory-small`` and ``--memory-large`` subscribers, each in a fresh
process, and compares their peak RSS (the list must not be held in memory). ``--profile`` prints
where the main thread spends the send (cProfile, cumulative).
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import pstats
import random
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

from latency import free_port, relay

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DAY = date(2024, 11, 9)
WORDS = ("anniversary", "archive", "observatory", "expedition", "harbour", "manuscript",
         "telegraph", "meridian", "lighthouse", "almanac", "voyage", "chronicle")
SBIN = ("/usr/sbin", "/usr/bin")
SENDING = "sending"  # the child's word that the measured part begins
BENCHMARKS = Path(__file__).resolve().parent


def tool(name: str) -> str | None:
    """Return the path of a postfix tool (they live in /usr/sbin), or None."""
    return shutil.which(name) or shutil.which(name, path=os.pathsep.join(SBIN))


@contextmanager
def sink(port: int) -> Iterator[tuple[str, int, int]]:
    """Run an SMTP sink on ``port``: postfix's smtp-sink (and its pid), else aiosmtpd (0)."""
    smtp_sink = tool("smtp-sink")
    if smtp_sink is None:
        from tests.fixtures.smtp import running_sink
        with running_sink() as fallback:
            yield "aiosmtpd", fallback.port, 0
        return
    user = ["-u", "nobody"] if os.geteuid() == 0 else []
    process = subprocess.Popen([smtp_sink, *user, f"127.0.0.1:{port}", "256"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(100):
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.05)
        yield "smtp-sink", port, process.pid
    finally:
        process.terminate()
        process.wait()


def article_text(body_bytes: int) -> str:
    """Return a plain-form article of about ``body_bytes`` of prose, dated DAY four years back."""
    rng = random.Random(7)
    paragraphs: list[str] = []
    while sum(len(p) + 2 for p in paragraphs) < body_bytes:
        paragraphs.append(" ".join(rng.choices(WORDS, k=rng.randint(40, 90))).capitalize() + ".")
    return f"date {DAY.replace(year=2020).isoformat()} " + "\n\n".join(paragraphs) + "\n"


def child(args: argparse.Namespace) -> None:
    """Set up a ledger with N subscribers, time one send, print JSON figures."""
    folder = Path(tempfile.mkdtemp(prefix="send-bench-"))
    os.environ.setdefault("PUBLISHER_SECRET_KEY", "benchmark-secret-" + "x" * 32)
    (folder / "content").mkdir()
    (folder / "content" / "bench.txt").write_text(article_text(args.body), encoding="utf-8")
    with scratch_database(args.database, folder) as url:
        send_once(args, folder, url)
    shutil.rmtree(folder, ignore_errors=True)


@contextmanager
def scratch_database(database: str | None, folder: Path) -> Iterator[str]:
    """Yield an empty database: an SQLite file, or a fresh schema in the PostgreSQL given."""
    if not database:
        yield f"sqlite:///{folder / 'ledger.db'}"
        return
    from sqlalchemy import create_engine, text

    schema = f"bench_{os.getpid()}_{int(time.time())}"
    admin = create_engine(database, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    separator = "&" if "?" in database else "?"
    try:
        yield f"{database}{separator}options=-csearch_path%3D{schema}"
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


def send_once(args: argparse.Namespace, folder: Path, url: str) -> None:
    """Fill the ledger with subscribers, then time one ``send_date``."""
    from publisher.config import from_mapping
    from publisher.dispatch import send_date
    from publisher.ledger import Ledger
    from publisher.subscriptions.fields import SubscriberRow

    config = from_mapping({
        "site": {"title": "Benchmark", "base_url": "https://example.org/", "timezone": "UTC",
                 "content_dir": str(folder / "content")},
        "state": {"database_url": url},
        "email": {"transport": "smtp", "batch_size": 200, "smtp": {
            "host": "127.0.0.1", "port": args.port, "security": "none",
            "connections": args.connections}},
    }, base_dir=folder)
    with Ledger.open(url) as ledger:
        chunk: list[SubscriberRow] = []
        for n in range(args.messages):
            chunk.append(SubscriberRow(f"reader{n}@example.org", f"Reader {n}" if n % 2 else None))
            if len(chunk) == 1000:
                ledger.insert_new(chunk)
                chunk.clear()
        ledger.insert_new(chunk)
    profile = cProfile.Profile() if args.profile else None
    print(SENDING, flush=True)
    cpu_before = cpu_seconds()
    switches_before = resource.getrusage(resource.RUSAGE_SELF).ru_nivcsw
    started = time.perf_counter()
    if profile is not None:
        profile.enable()
    report = send_date(config, DAY, clock=lambda: datetime.now(UTC))
    seconds = time.perf_counter() - started
    cpu = cpu_seconds() - cpu_before
    # Taken from the processor while running: on loopback, mostly by the sink that a write woke.
    preempted = resource.getrusage(resource.RUSAGE_SELF).ru_nivcsw - switches_before
    if profile is not None:
        profile.disable()
        pstats.Stats(profile, stream=sys.stdout).sort_stats("cumulative").print_stats(25)
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"sent": report.sent, "seconds": seconds, "cpu": cpu, "preempted": preempted,
                      "peak_kib": peak_kib, "problems": report.problems}))


def process_seconds(pid: int) -> float:
    """Return the processor time (user and system) a running process has used so far."""
    if not pid:
        return 0.0
    with open(f"/proc/{pid}/stat", encoding="ascii") as handle:
        fields = handle.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_seconds() -> float:
    """Return the processor time of this process and of the processes it waited for."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def process_tree(pid: int) -> list[int]:
    """Return ``pid`` and every process descended from it."""
    found, waiting = [], [pid]
    while waiting:
        current = waiting.pop()
        found.append(current)
        try:
            tasks = os.listdir(f"/proc/{current}/task")
        except OSError:
            continue
        for task in tasks:
            try:
                with open(f"/proc/{current}/task/{task}/children", encoding="ascii") as handle:
                    waiting += [int(child) for child in handle.read().split()]
            except OSError:
                pass
    return found


def pss_kib(pid: int) -> int:
    """Return the summed proportional set size of a process and its descendants, in KiB."""
    total = 0
    for member in process_tree(pid):
        try:
            with open(f"/proc/{member}/smaps_rollup", encoding="ascii") as handle:
                for line in handle:
                    if line.startswith("Pss:"):
                        total += int(line.split()[1])
                        break
        except OSError:
            pass  # ended meanwhile
    return total


def run_child(args: argparse.Namespace, messages: int, port: int, connections: int,
              profile: bool = False) -> dict[str, Any]:
    """Run one measured send in a fresh process and return its figures, peak PSS included."""
    command = [sys.executable, __file__, "--child", "--messages", str(messages), "--port",
               str(port), "--body", str(args.body), "--connections", str(connections)]
    if args.database:
        command += ["--database", args.database]
    if profile:
        command.append("--profile")
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, cwd=ROOT)
    peak = [0]
    sampling = threading.Event()
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.02):
            if sampling.is_set():
                peak[0] = max(peak[0], pss_kib(process.pid))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    assert process.stdout is not None
    lines = []
    for line in process.stdout:
        if line.strip() == SENDING:
            sampling.set()  # the ledger is filled: from here on it is the send
        else:
            lines.append(line.rstrip("\n"))
    done.set()
    sampler.join()
    if process.wait() != 0:
        raise SystemExit(f"the measured send failed with code {process.returncode}")
    if profile:
        print("\n".join(lines[:-1]))
    result: dict[str, Any] = json.loads(lines[-1])
    result["pss_kib"] = peak[0]
    if result["problems"] or result["sent"] != messages:
        raise SystemExit(f"the send went wrong: {result}")
    return result


def message_size(body: int) -> int:
    """Return the size of one built message for an article body of ``body`` bytes."""
    from publisher.calendar import Event
    from publisher.config import from_mapping
    from publisher.content import parse_plain
    from publisher.mail import Mailer, Recipient

    article = parse_plain(Path("bench.txt"), article_text(body))
    config = from_mapping({"site": {"base_url": "https://example.org/"}})
    edition = Mailer(config, b"x" * 32).edition(Event(article, DAY, 4))
    return len(edition.message(Recipient(1, "reader1@example.org", "Reader 1")))


def body_for(size: int) -> int:
    """Return the article body size whose email is about ``size`` bytes."""
    body = size // 2
    for _ in range(4):
        body = max(200, int(body * size / message_size(body)))
    return body


def baseline(args: argparse.Namespace, port: int, size: int, connections: int,
             messages: int) -> float:
    """Return smtp-source's messages per second for the same count, size and connections."""
    source = tool("smtp-source")
    assert source is not None
    started = time.perf_counter()
    subprocess.run([source, "-d", "-s", str(connections), "-l", str(size), "-m",
                    str(messages), "-f", "publisher@example.org", "-t",
                    "reader@example.org", f"127.0.0.1:{port}"], check=True)
    return float(messages) / (time.perf_counter() - started)


def connection_counts(text: str) -> list[int]:
    """Parse ``1,2,4`` into connection counts."""
    return [int(part) for part in text.split(",") if part.strip()]


def messages_for(args: argparse.Namespace, connections: int) -> int:
    """Return how many messages to send: ``--messages``, or through a proxy enough per connection.

    Through a distant relay one connection sends a few dozen messages a second: the count grows
    with the connections so that each run takes seconds, not minutes.
    """
    if not args.rtt:
        return int(args.messages)
    return min(int(args.messages), max(200, 50 * connections))


def children_seconds() -> float:
    """Return the processor time of the child processes this process has waited for."""
    used = resource.getrusage(resource.RUSAGE_CHILDREN)
    return used.ru_utime + used.ru_stime


def speed(args: argparse.Namespace, kind: str, port: int, size: int, sink_pid: int) -> None:
    """Print our rate and smtp-source's for each connection count, with the ratios.

    Each line also gives the sink's processor time per message: on two cores shared with other
    work, a sender's wall time per message is close to its own processor time plus the sink's.
    """
    has_baseline = kind == "smtp-sink" and tool("smtp-source") is not None
    ratios: dict[int, float] = {}
    rates: dict[int, float] = {}
    memory: dict[int, float] = {}
    for connections in connection_counts(args.connections):
        messages = messages_for(args, connections)
        sink_before = process_seconds(sink_pid)
        ours = run_child(args, messages, port, connections, profile=args.profile)
        sink_ours = (process_seconds(sink_pid) - sink_before) / messages * 1e6
        rates[connections] = ours["sent"] / ours["seconds"]
        memory[connections] = ours["pss_kib"] / 1024
        line = (f"{connections} connection(s), {messages} messages: publisher send "
                f"{rates[connections]:7,.1f} msg/s ({ours['seconds']:.2f} s, "
                f"{ours['cpu'] / ours['sent'] * 1e6:.0f} us of processor time per message, "
                + (f"the sink's {sink_ours:.0f} us, " if sink_pid else "")
                + f"preempted {ours['preempted'] / messages:.2f} times per message; "
                f"peak PSS of the whole send {memory[connections]:.1f} MiB)")
        if has_baseline:
            sink_before, source_before = process_seconds(sink_pid), children_seconds()
            theirs = baseline(args, port, size, connections, messages)
            source_us = (children_seconds() - source_before) / messages * 1e6
            sink_theirs = (process_seconds(sink_pid) - sink_before) / messages * 1e6
            ratios[connections] = rates[connections] / theirs
            line += (f"; smtp-source -d {theirs:7,.1f} msg/s ({source_us:.0f} us of processor "
                     f"time per message, the sink's {sink_theirs:.0f} us); "
                     f"ratio {ratios[connections]:.2f}")
        print(line, flush=True)
    if not has_baseline:
        print("smtp-source not installed (make system-bench-deps): no baseline")
        return
    if args.rtt:
        print_distant_targets(args.rtt, ratios, memory)
        return
    best = max(rates, key=rates.__getitem__)
    if 1 in ratios:
        print(f"ratio on one connection: {ratios[1]:.2f} (target >= 1.0: "
              f"{met(ratios[1] >= 1.0)})")
    print(f"ratio at our best connection count ({best}): {ratios[best]:.2f} (target >= 0.8: "
          f"{met(ratios[best] >= 0.8)})")


def met(held: bool) -> str:
    """Say whether a target was met."""
    return "met" if held else "NOT met"


def print_distant_targets(rtt: float, ratios: dict[int, float], memory: dict[int, float]
                          ) -> None:
    """Print the targets for a relay ``rtt`` ms away that the measured counts allow."""
    if 1 in ratios:
        print(f"{rtt:g} ms, 1 connection: ratio {ratios[1]:.2f} (target >= 1.5: "
              f"{met(ratios[1] >= 1.5)})")
    most = max(ratios)
    if most > 1:
        print(f"{rtt:g} ms, {most} connections: ratio {ratios[most]:.2f} (target >= 1.0: "
              f"{met(ratios[most] >= 1.0)})")
        print(f"{rtt:g} ms, {most} connections: peak PSS {memory[most]:.1f} MiB (target <= 150: "
              f"{met(memory[most] <= 150)})")
    if most > 1 and 1 in memory:
        growth = memory[most] / memory[1]
        print(f"peak PSS with {most} connections / with 1: {growth:.2f} (target <= 1.3: "
              f"{met(growth <= 1.3)})")


def memory(args: argparse.Namespace, port: int) -> None:
    """Print the peak RSS of sending to few and to many subscribers, each in a fresh process."""
    connections = connection_counts(args.connections)[0]
    small = run_child(args, args.memory_small, port, connections)
    large = run_child(args, args.memory_large, port, connections)
    ratio = large["peak_kib"] / small["peak_kib"]
    print(f"peak RSS: {small['peak_kib'] / 1024:.1f} MiB for {args.memory_small:,} subscribers, "
          f"{large['peak_kib'] / 1024:.1f} MiB for {args.memory_large:,} "
          f"({large['sent'] / large['seconds']:,.0f} msg/s); ratio {ratio:.2f} "
          f"(target <= 1.2)")


def main() -> None:
    """Measure and print figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=5000)
    parser.add_argument("--size", type=int, default=20_000, help="bytes per email (about)")
    parser.add_argument("--connections", default="1,2,4",
                        help="connection counts to measure, comma-separated")
    parser.add_argument("--memory", action="store_true", help="also compare peak memory")
    parser.add_argument("--memory-small", type=int, default=1000)
    parser.add_argument("--memory-large", type=int, default=100_000)
    parser.add_argument("--profile", action="store_true", help="print a cProfile summary")
    parser.add_argument("--database", default=None, help="SQLAlchemy URL (default: SQLite)")
    parser.add_argument("--rtt", type=float, default=0.0,
                        help="round trip to the sink in ms, through a latency proxy (0: none)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--body", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        args.connections = connection_counts(args.connections)[0]
        child(args)
        return
    args.body = body_for(args.size)
    size = message_size(args.body)
    with sink(free_port()) as (kind, sink_port, sink_pid), relay(sink_port, args.rtt) as port:
        distance = f"a relay {args.rtt:g} ms away (proxy)" if args.rtt else "loopback"
        print(f"sink: {kind}, {distance}; messages of {size} bytes; "
              f"ledger: {args.database or 'SQLite file'}", flush=True)
        speed(args, kind, port, size, sink_pid)
        if args.memory:
            memory(args, port)

if __name__ == "__main__":
    main()
