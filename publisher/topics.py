"""The feeds of a part of the archive: one per tag, and one of the milestones only.

``tags/<tag>/feed.xml``, ``atom.xml`` and ``feed.json`` hold the newest appearances of the
articles with that tag, with the tag's ``anniversaries.ics`` beside them; ``milestones/…`` hold
those that are a milestone (1, 5, 10, 25, 50, 75, 100 years and every 25 after) or a first
publication, as a subscriber choosing milestones gets them. Items keep the main feeds' ids, one
per (article, anniversary year).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator, Sequence
from datetime import date

import jinja2

from publisher.calendar import Calendar, Event
from publisher.config import SiteConfig
from publisher.content import Article
from publisher.feeds import FEEDS, feed_files
from publisher.ics import calendar_ics
from publisher.preferences import is_milestone, tag_key

TAGS_FOLDER = "tags"
MILESTONES_FOLDER = "milestones"
TAG_ICS_NAME = "anniversaries.ics"
FileMaker = Callable[[], bytes]
# A file of a part: its path, the articles its bytes are made of, and how to make them.
TopicFile = tuple[str, tuple[Article, ...], FileMaker]


def milestone_events(calendar: Calendar, day: date, limit: int) -> list[Event]:
    """Return up to ``limit`` milestone appearances on or before ``day``, newest first."""
    return calendar.recent(day, limit,
                           lambda event: event.is_first or is_milestone(event.years_since))


def topic_files(site: SiteConfig, calendar: Calendar, published: Sequence[Article], day: date,
                env: jinja2.Environment) -> Iterator[TopicFile]:
    """Yield the milestones' and each tag's feeds (and calendar) on ``day``."""
    yield from _feeds(site, day, env, f"{MILESTONES_FOLDER}/", f"{site.title}: milestones",
                      milestone_events(calendar, day, site.feed_items))
    # The tags of the articles published by then, each named as first written.
    names: dict[str, str] = {}
    for article in sorted(published, key=lambda a: a.slug):
        for tag in article.tags:
            names.setdefault(tag_key(tag), tag)
    names.pop("", None)
    for key, name in sorted(names.items()):
        folder = f"{TAGS_FOLDER}/{key}/"
        subset = Calendar([a for a in calendar.articles if key in _keys(a.tags)],
                          calendar.leap_day)
        title = f"{site.title}: {name}"
        yield from _feeds(site, day, env, folder, title, subset.recent(day, site.feed_items))
        members = tuple(subset.published(day))
        yield (folder + TAG_ICS_NAME, members, functools.partial(
            calendar_ics, site, members, calendar.leap_day, title, folder + TAG_ICS_NAME))


def _keys(tags: Sequence[str]) -> set[str]:
    return {tag_key(tag) for tag in tags}


def _feeds(site: SiteConfig, day: date, env: jinja2.Environment, folder: str, title: str,
           events: list[Event]) -> Iterator[TopicFile]:
    built = functools.cache(lambda: feed_files(site, events, day, env, folder=folder,
                                               title=title))
    depends = tuple(event.article for event in events)
    for feed in FEEDS:
        yield (folder + feed.name, depends,
               functools.partial(lambda name: built()[name], feed.name))
