"""Time site builds over generated articles, against Hugo building the same articles.

Usage: .venv/bin/python benchmarks/build.py [--articles 5000] [--size 4096] [--repeat 3]
                                            [--no-hugo] [--keep]

Generates ``--articles`` Markdown articles of about ``--size`` bytes, then times, each
``--repeat`` times (the median is printed):

* a cold build: an empty output folder and an empty article cache, so every article is parsed,
  every page rendered and written (what the first build of ``publisher run`` does; imports and
  interpreter start-up are not included, see the last line for a fresh ``publisher build``);
* a rebuild with nothing changed, in the same process (the daemon's case): the build cache
  beside the site shows the same inputs and its previous output intact, so nothing is rendered;
* a rebuild on the next day (the daemon's daily build): a few pages change;
* Hugo (Debian package ``hugo``) building the same articles with minimal layouts (a page per
  article, an index listing every article, the RSS feed of the newest ``feed_items``), first into
  an empty folder, then again over its own output, as its command-line build always works.

then ``publisher build`` as a new process (interpreter start-up and imports included), each
``--repeat`` times: into an empty folder, again with nothing changed, and after one article
was edited (the build cache kept beside the site is what makes the last two fast).

Prints each figure, Hugo's, and the ratios (ours / Hugo's: below 1.0 is faster). The cold
builds also show their processor time (user and system, children included), which a busy
machine or disk disturbs less than the wall time.
"""

from __future__ import annotations

import argparse
import compileall
import os
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path

import publisher
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
FEED_ITEMS = 50  # the [site] feed_items default; Hugo's rssLimit is set to the same

# Minimal Hugo layouts with the same pages as ours: one per article, an index of all articles
# by date, and the RSS feed (Hugo's built-in template). Taxonomies and extras are turned off.
HUGO_CONFIG = f"""baseURL = "https://bench.example.org/"
title = "Benchmark"
languageCode = "en"
disableKinds = ["taxonomy", "term", "section", "sitemap", "robotsTXT", "404"]
rssLimit = {FEED_ITEMS}
[outputs]
home = ["HTML", "RSS"]
page = ["HTML"]
[markup.goldmark.renderer]
unsafe = true
"""
HUGO_SINGLE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{{ .Title }} · {{ .Site.Title }}</title>
<link rel="alternate" type="application/rss+xml" href="{{ "index.xml" | absURL }}"></head>
<body><article><h1>{{ .Title }}</h1>
<p>First published <time datetime="{{ .Date.Format "2006-01-02" }}">
{{- .Date.Format "2 January 2006" }}</time></p>
<div class="body">{{ .Content }}</div>
{{ with .Params.tags }}<p>Tags: {{ delimit . ", " }}</p>{{ end }}
</article></body></html>
"""
HUGO_INDEX = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{{ .Site.Title }}</title>
<link rel="alternate" type="application/rss+xml" href="{{ "index.xml" | absURL }}"></head>
<body><h1>Archive</h1><ul>
{{ range .Site.RegularPages.ByDate.Reverse }}<li>
<time datetime="{{ .Date.Format "2006-01-02" }}">{{ .Date.Format "2 January 2006" }}</time>
<a href="{{ .RelPermalink }}">{{ .Title }}</a></li>
{{ end }}</ul></body></html>
"""


@dataclass(frozen=True)
class Timing:
    """How long one build took (wall and processor time) and what it wrote."""

    seconds: float
    processor: float
    report: BuildReport


def processor_time() -> float:
    """Return the user and system time of this process and of its children that ended."""
    # Children count too: a build's worker process and Hugo are both reaped children.
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(
        resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


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
    """Run one complete build (load, render, write, swap) and return its times."""
    start, processor = time.perf_counter(), processor_time()
    report = build_site(config, day, cache=cache)
    return Timing(time.perf_counter() - start, processor_time() - processor, report)


def site_config(folder: Path, content: Path, output: Path) -> Config:
    """Return the configuration of a benchmark site writing into ``output``."""
    return from_mapping({"site": {
        "base_url": "https://bench.example.org/", "content_dir": str(content),
        "output_dir": str(output), "feed_items": FEED_ITEMS,
    }}, base_dir=folder)


def hugo_site(folder: Path, content: Path) -> Path:
    """Lay out a Hugo site over the same articles; return its folder.

    The generated articles' front matter (title, date, tags) is already Hugo's YAML front
    matter, so each file is linked in unchanged under ``content/articles/``.
    """
    site = folder / "hugo"
    articles = site / "content" / "articles"
    (site / "layouts" / "_default").mkdir(parents=True)
    articles.mkdir(parents=True)
    (site / "config.toml").write_text(HUGO_CONFIG, encoding="utf-8")
    (site / "layouts" / "_default" / "single.html").write_text(HUGO_SINGLE, encoding="utf-8")
    (site / "layouts" / "index.html").write_text(HUGO_INDEX, encoding="utf-8")
    for path in sorted(content.glob("*.md")):
        os.link(path, articles / path.name)
    return site


def time_hugo(hugo: str, site: Path, output: Path) -> tuple[float, float]:
    """Run one Hugo build of ``site`` into ``output``; return its wall and processor time."""
    start, processor = time.perf_counter(), processor_time()
    subprocess.run([hugo, "--quiet", "--source", str(site), "--destination", str(output),
                    "--cacheDir", str(site / ".cache")], check=True)
    return time.perf_counter() - start, processor_time() - processor


def time_command(folder: Path) -> tuple[float, float]:
    """Time one ``publisher build`` in a fresh process (interpreter start-up and imports too);
    return its wall and processor time."""
    command = [str(Path(sys.executable).with_name("publisher")), "build", "--date",
               DAY.isoformat()]
    start, processor = time.perf_counter(), processor_time()
    subprocess.run(command, check=True, cwd=folder, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start, processor_time() - processor


def compile_package() -> None:
    """Write the package's bytecode, as installing it does, for the new processes to load."""
    # Otherwise, with PYTHONDONTWRITEBYTECODE set or a read-only checkout, every new process
    # compiles the package again (~0.06 s), which no installed copy does.
    compileall.compile_dir(Path(publisher.__file__).parent, quiet=1)


def median(runs: list[float]) -> float:
    """Return the median of some timings."""
    return statistics.median(runs)


def repeated(count: int, run: Callable[[int], float]) -> list[float]:
    """Return the timings of ``count`` runs, each told its number."""
    return [run(number) for number in range(count)]


def main() -> None:
    """Generate the articles, build them with both generators and print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--articles", type=int, default=5000)
    parser.add_argument("--size", type=int, default=4096, help="approximate bytes per article")
    parser.add_argument("--repeat", type=int, default=3, help="runs per figure (median)")
    parser.add_argument("--no-hugo", action="store_true", help="skip the Hugo baseline")
    parser.add_argument("--keep", action="store_true", help="keep the generated folder")
    args = parser.parse_args()
    hugo = None if args.no_hugo else shutil.which("hugo")

    folder = Path(tempfile.mkdtemp(prefix="publisher-bench-"))
    try:
        content = folder / "content"
        content.mkdir()
        started = time.perf_counter()
        written = write_articles(content, args.articles, args.size)
        generated = time.perf_counter() - started
        hugo_folder = hugo_site(folder, content) if hugo else None

        def cold(number: int) -> tuple[float, float]:
            out = folder / f"cold-{number}"
            timing = time_build(site_config(folder, content, out), DAY, ArticleCache())
            return timing.seconds, timing.processor

        def hugo_cold(number: int) -> tuple[float, float]:
            assert hugo and hugo_folder
            return time_hugo(hugo, hugo_folder, folder / f"hugo-{number}")

        # Interleaved, so that a slow spell of the disk hits both generators alike.
        ours_cold: list[tuple[float, float]] = []
        theirs_cold: list[tuple[float, float]] = []
        for number in range(args.repeat):
            if hugo:
                theirs_cold.append(hugo_cold(number))
            ours_cold.append(cold(number))
        config = site_config(folder, content, folder / "site")
        cache = ArticleCache()
        first = time_build(config, DAY, cache)
        same = [time_build(config, DAY, cache) for _ in range(args.repeat)]
        next_day = time_build(config, DAY + timedelta(days=1), cache)
        theirs_again = (repeated(args.repeat, lambda _: hugo_cold(0)[0]) if hugo else [])

        def command_cold(number: int) -> tuple[float, float]:
            (folder / "publisher.toml").write_text(
                f'[site]\nbase_url = "https://bench.example.org/"\ncontent_dir = "{content}"\n'
                f'output_dir = "{folder / f"cli-{number}"}"\n', encoding="utf-8")
            return time_command(folder)

        def command_edited(number: int) -> tuple[float, float]:
            article = content / f"article-{number:05d}.md"
            article.write_text(article.read_text(encoding="utf-8") + "\nEdited.\n",
                               encoding="utf-8")
            return time_command(folder)

        compile_package()
        # The last cold one stays configured for the others.
        commands = [command_cold(number) for number in range(args.repeat)]
        commands_same = [time_command(folder) for _ in range(args.repeat)]
        commands_one = [command_edited(number) for number in range(args.repeat)]
        command, command_cpu = (median([t[i] for t in commands]) for i in (0, 1))
        command_same, same_cpu = (median([t[i] for t in commands_same]) for i in (0, 1))
        command_one, one_cpu = (median([t[i] for t in commands_one]) for i in (0, 1))

        cold_s, same_s = median([wall for wall, _ in ours_cold]), median([t.seconds for t in same])
        cold_cpu = median([processor for _, processor in ours_cold])
        print(f"load average:            {' '.join(f'{n:.1f}' for n in os.getloadavg())} "
              f"({os.cpu_count()} cores)")
        print(f"articles:                {args.articles} ({written / 1e6:.1f} MB, "
              f"generated in {generated:.2f} s); median of {args.repeat} runs")
        print(f"cold build:              {cold_s:7.3f} s  ({first.report.written} files; "
              f"processor time {cold_cpu:.3f} s)")
        print(f"rebuild, nothing changed:{same_s:7.3f} s  "
              f"({same[-1].report.written} files written, {same[-1].report.unchanged} kept)")
        print(f"rebuild, next day:       {next_day.seconds:7.3f} s  "
              f"({next_day.report.written} files written, {next_day.report.unchanged} kept)")
        print(f"publisher build command: {command:7.3f} s  (new process, empty folder; "
              f"processor time {command_cpu:.3f} s)")
        print(f"  again, nothing changed:{command_same:7.3f} s  (processor time {same_cpu:.3f} s)")
        print(f"  again, one article edited:{command_one:7.3f} s  (processor time "
              f"{one_cpu:.3f} s)")
        if hugo:
            hugo_cold_s, hugo_again_s = median([wall for wall, _ in theirs_cold]), median(
                theirs_again)
            hugo_cpu = median([processor for _, processor in theirs_cold])
            print(f"hugo, empty folder:      {hugo_cold_s:7.3f} s  (processor time "
                  f"{hugo_cpu:.3f} s)")
            print(f"hugo, over its output:   {hugo_again_s:7.3f} s")
            print(f"ratio cold build / hugo (empty folder):          "
                  f"{cold_s / hugo_cold_s:6.3f}  (target <= 1.0)")
            print(f"  the same, processor time:                      "
                  f"{cold_cpu / hugo_cpu:6.3f}")
            print(f"ratio rebuild, nothing changed / hugo (empty):   "
                  f"{same_s / hugo_cold_s:6.3f}  (target <= 0.05)")
            print(f"ratio rebuild, nothing changed / hugo (again):   "
                  f"{same_s / hugo_again_s:6.3f}")
            print(f"ratio publisher build command / hugo (empty):    "
                  f"{command / hugo_cold_s:6.3f}")
            print(f"ratio command, nothing changed / hugo (empty):   "
                  f"{command_same / hugo_cold_s:6.3f}  (target <= 0.05)")
            print(f"  the same, processor time:                      "
                  f"{same_cpu / hugo_cpu:6.3f}")
            print(f"ratio command, one article edited / hugo (empty):"
                  f"{command_one / hugo_cold_s:6.3f}  (target <= 0.1)")
            print(f"  the same, processor time:                      "
                  f"{one_cpu / hugo_cpu:6.3f}")
        else:
            print("hugo not found (make system-bench-deps installs it): no baseline")
        if args.keep:
            print(f"kept: {folder}")
    finally:
        if not args.keep:
            shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
