"""Requests per second for the RSS feed under wrk, served by `publisher serve` (uvicorn, one
process) on loopback: full responses, gzipped responses, and conditional requests (If-None-Match
with the current ETag, answered 304); and the same from Starlette's own StaticFiles and
GZipMiddleware serving the same folder (uvicorn, one process), the baseline.

Usage: .venv/bin/python benchmarks/web.py [--duration 10] [--connections 32] [--threads 2]

Needs wrk (Debian package `wrk`: apt-get install wrk). Builds the sample content of content/
into a temporary folder, serves it, and prints one line per case plus the ratios. wrk and the
server share the machine's cores, so the figures are lower bounds for a dedicated server.
"""

from __future__ import annotations

import argparse
import os
import queue
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass
from datetime import date
from pathlib import Path

from publisher.config import from_mapping
from publisher.site import build_site

ROOT = Path(__file__).resolve().parents[1]
DAY = date(2026, 7, 20)
FEED = "feed.xml"
# The baseline: the built folder served by Starlette's StaticFiles and GZipMiddleware alone.
STARLETTE_APP = """
import sys, uvicorn
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.gzip import GZipMiddleware
from starlette.routing import Mount
from starlette.staticfiles import StaticFiles
app = Starlette(routes=[Mount("/", StaticFiles(directory=sys.argv[1], html=True))],
                middleware=[Middleware(GZipMiddleware)])
uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[2]), log_level="warning", access_log=False)
"""
# wrk sends the same request every time; this script makes each one conditional.
CONDITIONAL_LUA = """
wrk.headers["If-None-Match"] = os.getenv("ETAG")
"""


@dataclass(frozen=True)
class Result:
    """One wrk run: requests per second, mean latency, bytes per second, failed responses."""

    name: str
    requests_per_second: float
    latency: str
    transfer: str
    non_2xx: int


def write_config(folder: Path) -> tuple[Path, Path]:
    """Copy the sample content, build the site for DAY, and write a publisher.toml.

    Return the configuration file and the built site's folder.
    """
    shutil.copytree(ROOT / "content", folder / "content")
    toml = folder / "publisher.toml"
    toml.write_text('[site]\nbase_url = "http://127.0.0.1:8000/"\n', encoding="utf-8")
    config = from_mapping({"site": {"base_url": "http://127.0.0.1:8000/"}}, path=toml,
                          base_dir=folder)
    build_site(config, DAY)
    return toml, config.site.output_dir


def start_server(toml: Path) -> tuple[subprocess.Popen[str], str]:
    """Start `publisher serve` on a free port; return the process and its base URL."""
    process = subprocess.Popen(
        [sys.executable, "-m", "publisher", "--config", str(toml), "serve", "--port", "0",
         "--no-access-log"], cwd=toml.parent, stderr=subprocess.PIPE, text=True)
    lines: queue.Queue[str] = queue.Queue()

    def pump() -> None:
        for line in process.stderr or ():
            lines.put(line)

    threading.Thread(target=pump, daemon=True).start()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            line = lines.get(timeout=0.5)
        except queue.Empty:
            continue
        found = re.search(r"on (http://[\d.]+:\d+)", line)
        if found:
            return process, found.group(1) + "/"
    process.kill()
    raise SystemExit("the server did not start")


def start_starlette(site: Path) -> tuple[subprocess.Popen[str], str]:
    """Serve ``site`` with Starlette's StaticFiles and GZipMiddleware; return it and its URL."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    process = subprocess.Popen([sys.executable, "-c", STARLETTE_APP, str(site), str(port)],
                               text=True)
    base = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(base + FEED):
                return process, base
        except OSError:
            time.sleep(0.1)
    process.kill()
    raise SystemExit("the Starlette baseline did not start")


def wrk(name: str, url: str, args: argparse.Namespace, *extra: str,
        env: dict[str, str] | None = None) -> Result:
    """Run wrk against ``url`` and parse its summary."""
    command = ["wrk", f"-t{args.threads}", f"-c{args.connections}", f"-d{args.duration}s",
               "--latency", *extra, url]
    output = subprocess.run(command, capture_output=True, text=True, check=True,
                            env={**os.environ, **(env or {})}).stdout
    rate = re.search(r"Requests/sec:\s+([\d.]+)", output)
    latency = re.search(r"Latency\s+(\S+)", output)
    transfer = re.search(r"Transfer/sec:\s+(\S+)", output)
    non_2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", output)
    if rate is None or latency is None or transfer is None:
        raise SystemExit(f"cannot read wrk's output:\n{output}")
    return Result(name, float(rate.group(1)), latency.group(1), transfer.group(1),
                  int(non_2xx.group(1)) if non_2xx else 0)


def measure(label: str, base: str, args: argparse.Namespace) -> list[Result]:
    """Run the three cases against the feed at ``base``."""
    url = base + FEED
    with urllib.request.urlopen(url) as response:
        etag = response.headers["ETag"]
        size = len(response.read())
    print(f"{label}: {url}: {size} bytes, ETag {etag}; wrk -t{args.threads} "
          f"-c{args.connections} -d{args.duration}s, one uvicorn process")
    with tempfile.NamedTemporaryFile("w", suffix=".lua") as script:
        script.write(CONDITIONAL_LUA)
        script.flush()
        return [
            wrk("full 200 (identity)", url, args),
            wrk("full 200 (gzip)", url, args, "-H", "Accept-Encoding: gzip"),
            wrk("conditional 304", url, args, "-s", script.name, env={"ETAG": etag}),
        ]


def stopped(process: subprocess.Popen[str]) -> None:
    """Stop a server with SIGTERM and wait for it."""
    process.send_signal(signal.SIGTERM)
    process.wait(timeout=30)


def main() -> None:
    """Build, serve, measure, print."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=10, help="seconds per case")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed: apt-get install wrk")
    with tempfile.TemporaryDirectory(prefix="publisher-web-bench-") as temporary:
        toml, site = write_config(Path(temporary))
        process, base = start_server(toml)
        try:
            results = measure("publisher serve", base, args)
        finally:
            stopped(process)
        process, base = start_starlette(site)
        try:
            baseline = measure("Starlette StaticFiles + GZipMiddleware", base, args)
        finally:
            stopped(process)
    for result in results:
        print(f"{result.name:<20} {result.requests_per_second:>8.0f} req/s   "
              f"mean latency {result.latency:>8}   {result.transfer:>9}/s   "
              f"errors {result.non_2xx}")
    full = results[0].requests_per_second
    for result in results[1:]:
        print(f"{result.name} / full 200 (identity): {result.requests_per_second / full:.2f}x")
    for ours, theirs in zip(results, baseline, strict=True):
        ratio = ours.requests_per_second / theirs.requests_per_second
        print(f"{ours.name}: Starlette's StaticFiles {theirs.requests_per_second:.0f} req/s, "
              f"ours / Starlette's {ratio:.2f}x (target >= 1.25)")


if __name__ == "__main__":
    main()
