"""Measure `publisher send`: personalised ~20 KB emails to a local SMTP sink, against smtp-source.

Usage: .venv/bin/python benchmarks/send.py [--messages 5000] [--size 20000] [--connections 1]
                                           [--database URL]

For each run a child process sets up a fresh ledger with N confirmed subscribers and one article
whose email is about ``--size`` bytes, then times ``send_date`` (enqueue, claim, build each
message, SMTP, ledger writes) and reports its own peak RSS. The same is done with a tenth of the
subscribers, to show that memory does not grow with the list. The baseline is postfix's
``smtp-source -d`` (same size, count and connections) into the same ``smtp-sink``; without
postfix (``make system-bench-deps``) an aiosmtpd sink is used and the baseline is skipped.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DAY = date(2024, 11, 9)
WORDS = ("anniversary", "archive", "observatory", "expedition", "harbour", "manuscript",
         "telegraph", "meridian", "lighthouse", "almanac", "voyage", "chronicle")
SBIN = ("/usr/sbin", "/usr/bin")


def tool(name: str) -> str | None:
    """Return the path of a postfix tool (they live in /usr/sbin), or None."""
    return shutil.which(name) or shutil.which(name, path=os.pathsep.join(SBIN))


def free_port() -> int:
    """Return a loopback port nobody listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextmanager
def sink(port: int) -> Iterator[tuple[str, int]]:
    """Run an SMTP sink on ``port``: postfix's smtp-sink, else aiosmtpd."""
    smtp_sink = tool("smtp-sink")
    if smtp_sink is None:
        from tests.fixtures.smtp import running_sink
        with running_sink() as fallback:
            yield "aiosmtpd", fallback.port
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
        yield "smtp-sink", port
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
    from publisher.ledger import Ledger, SubscriberRow

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
    started = time.perf_counter()
    report = send_date(config, DAY, clock=lambda: datetime.now(UTC))
    seconds = time.perf_counter() - started
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"sent": report.sent, "seconds": seconds, "peak_kib": peak_kib,
                      "problems": report.problems}))


def run_child(args: argparse.Namespace, messages: int, port: int) -> dict[str, Any]:
    """Run one measured send in a fresh process and return its figures."""
    command = [sys.executable, __file__, "--child", "--messages", str(messages), "--port",
               str(port), "--body", str(args.body), "--connections", str(args.connections)]
    if args.database:
        command += ["--database", args.database]
    out = subprocess.run(command, check=True, capture_output=True, text=True, cwd=ROOT).stdout
    result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
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


def baseline(args: argparse.Namespace, port: int, size: int) -> float:
    """Return smtp-source's messages per second for the same count, size and connections."""
    source = tool("smtp-source")
    assert source is not None
    started = time.perf_counter()
    subprocess.run([source, "-d", "-s", str(args.connections), "-l", str(size), "-m",
                    str(args.messages), "-f", "publisher@example.org", "-t",
                    "reader@example.org", f"127.0.0.1:{port}"], check=True)
    return float(args.messages) / (time.perf_counter() - started)


def main() -> None:
    """Measure and print figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=5000)
    parser.add_argument("--size", type=int, default=20_000, help="bytes per email (about)")
    parser.add_argument("--connections", type=int, default=1)
    parser.add_argument("--database", default=None, help="SQLAlchemy URL (default: SQLite)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--body", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    args.body = body_for(args.size)
    size = message_size(args.body)
    with sink(free_port()) as (kind, port):
        small = run_child(args, max(1, args.messages // 10), port)
        ours = run_child(args, args.messages, port)
        rate = ours["sent"] / ours["seconds"]
        print(f"sink: {kind}; {args.messages} messages of {size} bytes, "
              f"{args.connections} connection(s), ledger: {args.database or 'SQLite file'}")
        print(f"publisher send: {rate:,.0f} messages/s ({ours['seconds']:.2f} s)")
        print(f"peak RSS: {ours['peak_kib'] / 1024:.1f} MiB for {args.messages} subscribers, "
              f"{small['peak_kib'] / 1024:.1f} MiB for {small['sent']}")
        if kind == "smtp-sink" and tool("smtp-source"):
            theirs = baseline(args, port, size)
            print(f"smtp-source -d: {theirs:,.0f} messages/s")
            print(f"ratio (publisher send / smtp-source): {rate / theirs:.3f}")
        else:
            print("smtp-source not installed (make system-bench-deps): no baseline")


if __name__ == "__main__":
    main()
