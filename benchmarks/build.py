"""Time a cold site build and a rebuild with nothing changed, over generated articles.

Usage: .venv/bin/python benchmarks/build.py [--articles 5000] [--size 4096] [--keep]

Prints the figures; `time_build` is the function to time for comparisons with other
generators (it runs one complete build, swap included).
"""

from __future__ import annotations

import argparse
import random
import shutil
import tempfile
import time
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path

from publisher.config import Config, from_mapping
from publisher.content import ArticleCache
from publisher.site import BuildReport, build_site

WORDS = (
    "archive", "calendar", "anniversary", "orbit", "measure", "signal", "harbour", "bridge",
    "river", "mountain", "library", "letter", "voyage", "engine", "telescope", "comet",
    "season", "harvest", "station", "museum", "record", "observation", "survey", "treaty",
    "festival", "journey", "island", "lighthouse", "canal", "railway", "clock",
)
DAY = date(2026, 7, 20)


@dataclass(frozen=True)
class Timing:
    """How long one build took and what it wrote."""

    seconds: float
    report: BuildReport


def write_articles(folder: Path, count: int, size: int, seed: int = 1) -> int:
    """Write ``count`` Markdown articles of about ``size`` bytes; return the bytes written."""
    rng = random.Random(seed)
    first = date(2000, 1, 1)
    span = (DAY - first).days
    total = 0
    for n in range(count):
        when = first + timedelta(days=rng.randrange(span))
        paragraphs, length = [], 0
        while length < size:
            sentence = " ".join(rng.choice(WORDS) for _ in range(rng.randint(8, 18)))
            paragraph = f"{sentence.capitalize()}. " * rng.randint(2, 4)
            paragraphs.append(paragraph.strip())
            length += len(paragraph) + 2
        text = (f"---\ntitle: Article {n} about the {rng.choice(WORDS)}\n"
                f"date: {when.isoformat()}\ntags: [{rng.choice(WORDS)}]\n---\n\n"
                + "\n\n".join(paragraphs) + "\n")
        (folder / f"article-{n:05d}.md").write_text(text, encoding="utf-8")
        total += len(text.encode("utf-8"))
    return total


def time_build(config: Config, day: date, cache: ArticleCache) -> Timing:
    """Run one complete build (load, render, write, swap) and return its wall time."""
    start = time.perf_counter()
    report = build_site(config, day, cache=cache)
    return Timing(time.perf_counter() - start, report)


def main() -> None:
    """Generate the articles, build twice and print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--articles", type=int, default=5000)
    parser.add_argument("--size", type=int, default=4096, help="approximate bytes per article")
    parser.add_argument("--keep", action="store_true", help="keep the generated folder")
    args = parser.parse_args()

    folder = Path(tempfile.mkdtemp(prefix="publisher-bench-"))
    try:
        content = folder / "content"
        content.mkdir()
        started = time.perf_counter()
        written = write_articles(content, args.articles, args.size)
        generated = time.perf_counter() - started
        config = from_mapping({"site": {
            "base_url": "https://bench.example.org/", "content_dir": str(content),
            "output_dir": str(folder / "site"),
        }}, base_dir=folder)
        cache = ArticleCache()
        cold = time_build(config, DAY, cache)
        warm = time_build(config, DAY, cache)
        next_day = time_build(config, DAY + timedelta(days=1), cache)
        print(f"articles:          {args.articles} ({written / 1e6:.1f} MB, "
              f"generated in {generated:.2f} s)")
        for label, timing in (("cold build", cold), ("rebuild, same day", warm),
                              ("rebuild, next day", next_day)):
            report = timing.report
            print(f"{label + ':':<19}{timing.seconds:7.2f} s  "
                  f"({report.written} files written, {report.unchanged} unchanged, "
                  f"{(report.written + report.unchanged) / timing.seconds:,.0f} files/s)")
        print(f"rebuild / cold:    {warm.seconds / cold.seconds:7.2f}")
        if args.keep:
            print(f"kept: {folder}")
    finally:
        if not args.keep:
            shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
