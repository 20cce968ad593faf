"""The parts of the archive, one per tag and one of the milestones, and their feeds.

``tags/<tag>/feed.xml``, ``atom.xml`` and ``feed.json`` hold the newest appearances of the
articles with that tag, with the tag's ``anniversaries.ics`` beside them; ``milestones/…`` hold
those that are a milestone (1, 5, 10, 25, 50, 75, 100 years and every 25 after) or a first
publication, as a subscriber choosing milestones gets them. Items keep the main feeds' ids, one
per (article, anniversary year).
"""

from __future__ import annotations

import functools
import re
from collections import defaultdict
from collections.abc import Callable, Iterator
from datetime import date
from typing import TYPE_CHECKING

from publisher.calendar import Calendar, Event

# Types only: the subscribers' choices (publisher.preferences) use the two rules below
# without loading the feed and calendar libraries.
if TYPE_CHECKING:
    import jinja2

    from publisher.config import SiteConfig
    from publisher.content import Article

TAGS_FOLDER = "tags"
MILESTONES_FOLDER = "milestones"
TAG_ICS_NAME = "anniversaries.ics"
# Milestones: 1, 5, 10, 25, 50, 75, 100 and every 25 after.
_FIRST_MILESTONES = frozenset({1, 5, 10})
_WORD = re.compile(r"\w+")
FileMaker = Callable[[], bytes]
# A file of a part: its path, what its bytes are made of (see publisher.site.pages; None: the
# fields but the bodies of every article), and how to make them.
TopicFile = tuple[str, "tuple[Article | str, ...] | None", FileMaker]


def is_milestone(years: int) -> bool:
    """Return whether an appearance ``years`` after the first is a milestone (1, 5, 10, 25k)."""
    return years in _FIRST_MILESTONES or (years > 0 and years % 25 == 0)


def tag_key(tag: str) -> str:
    """Return the key of a tag as written in front matter: lower case, words joined by ``-``.

    ``Space Race`` and ``space-race`` are one topic; the key is also the tag's folder name.
    """
    return "-".join(_WORD.findall(tag.casefold())).replace("_", "-")


def milestone_events(calendar: Calendar, day: date, limit: int) -> list[Event]:
    """Return up to ``limit`` milestone appearances on or before ``day``, newest first."""
    return calendar.recent(day, limit,
                           lambda event: event.is_first or is_milestone(event.years_since))


def topic_files(site: SiteConfig, calendar: Calendar, day: date, env: jinja2.Environment
                ) -> Iterator[TopicFile]:
    """Yield the milestones' and each tag's feeds (and calendar) on ``day``."""
    yield from _feeds(site, day, env, f"{MILESTONES_FOLDER}/", f"{site.title}: milestones",
                      milestone_events(calendar, day, site.feed_items))
    # Each tag keyed once, not once per tag and article: make bench, build.py, cold build.
    tagged: dict[str, list[Article]] = defaultdict(list)
    names: dict[str, str] = {}  # of the tags of articles published by then, the first written
    for article in calendar.articles:  # by slug
        for tag in article.tags:
            key = tag_key(tag)
            if key and (not tagged[key] or tagged[key][-1] is not article):
                tagged[key].append(article)
            if key and article.date <= day:
                names.setdefault(key, tag)
    for key, name in sorted(names.items()):
        folder = f"{TAGS_FOLDER}/{key}/"
        subset = Calendar(tagged[key], calendar.leap_day)
        title = f"{site.title}: {name}"
        yield from _feeds(site, day, env, folder, title, subset.recent(day, site.feed_items))
        # Made of the tag's members, which the fields but the bodies of every article name.
        yield (folder + TAG_ICS_NAME, None, functools.partial(
            _calendar, site, subset, day, title, folder + TAG_ICS_NAME))


def _calendar(site: SiteConfig, subset: Calendar, day: date, title: str, path: str) -> bytes:
    from publisher.ics import calendar_ics

    return calendar_ics(site, subset.published(day), subset.leap_day, title, path)


def _feeds(site: SiteConfig, day: date, env: jinja2.Environment, folder: str, title: str,
           events: list[Event]) -> Iterator[TopicFile]:
    from publisher.feeds import FEEDS, feed_files

    built = functools.cache(lambda: feed_files(site, events, day, env, folder=folder,
                                               title=title))
    # The title too: it names the tag as an article that need not be among the items wrote it.
    depends: tuple[Article | str, ...] = (title, *(event.article for event in events))
    for feed in FEEDS:
        yield (folder + feed.name, depends,
               functools.partial(lambda name: built()[name], feed.name))
