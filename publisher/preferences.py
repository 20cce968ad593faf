"""What each subscriber chose: which anniversaries, how and when, about which topics."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import time
from typing import Literal, get_args

from sqlalchemy import Table, and_, false, or_, true
from sqlalchemy.sql.elements import ColumnElement

from publisher.errors import SubscriberError
from publisher.topics import is_milestone, tag_key

Frequency = Literal["each", "digest"]
FREQUENCIES: tuple[Frequency, ...] = get_args(Frequency)
EVERY = "every"
MILESTONES = "milestones"
MAX_YEARS = 50
# The limits publisher.content sets on an article's tags (not imported: reading the ledger must
# not load the Markdown and YAML parsers).
MAX_TAGS = 50
TAG_LENGTH = 100
# The widest encoded column: 50 tags of 100 characters and their commas.
TAGS_COLUMN_LENGTH = MAX_TAGS * (TAG_LENGTH + 1) + 1
YEARS_COLUMN_LENGTH = 400
_TIME = re.compile(r"([01]\d|2[0-3]):([0-5]\d)")


@dataclass(frozen=True)
class Choices:
    """One subscriber's choices; each default keeps what a subscriber who chose nothing gets."""

    years: str | tuple[int, ...] | None = None  # None: every year; "milestones"; their own
    frequency: Frequency = "each"
    at: str | None = None  # local delivery time HH:MM; None: the site's publish time
    tags: tuple[str, ...] | None = None  # the tag keys chosen; None: every topic

    @property
    def anniversaries(self) -> str:
        """Return ``every``, ``milestones`` or ``years``: which anniversaries are wanted."""
        if self.years is None:
            return EVERY
        return MILESTONES if self.years == MILESTONES else "years"

    def wants(self, years_since: int, tags: Iterable[str]) -> bool:
        """Return whether an appearance is wanted: the rule of the filters below, in Python."""
        if self.years == MILESTONES:
            year_wanted = is_milestone(years_since)
        else:
            year_wanted = self.years is None or years_since in self.years
        return ((year_wanted or not years_since)  # a first publication reaches everyone
                and (self.tags is None or bool(set(self.tags) & {tag_key(t) for t in tags})))

    def columns(self) -> dict[str, str | None]:
        """Return the stored form of the choices, by column name."""
        # Defaults are NULL, so rows from before the choices need no rewrite; lists are framed
        # in commas (",1,10,50,"), so that the query queueing an appearance tests ",10," per row.
        years = _framed(self.years) if isinstance(self.years, tuple) else self.years
        return {"years": years, "frequency": None if self.frequency == "each" else self.frequency,
                "send_time": self.at, "tags": None if self.tags is None else _framed(self.tags)}

    @classmethod
    def from_columns(cls, row: Mapping[str, object]) -> Choices:
        """Read the choices back from their stored columns (missing columns: defaults)."""
        years, at, tags = (_text(row.get(name)) for name in ("years", "send_time", "tags"))
        own_years = tuple(map(int, _unframed(years))) if years and years != MILESTONES else None
        return cls(own_years if own_years is not None else years or None,
                   "digest" if row.get("frequency") == "digest" else "each",
                   at, None if tags is None else tuple(_unframed(tags)))

    def cells(self) -> dict[str, str]:
        """Return the choices as CSV cells (``frequency``, ``years``, ``time``, ``tags``)."""
        years = (",".join(map(str, self.years)) if isinstance(self.years, tuple)
                 else self.years or EVERY)
        return {"frequency": self.frequency, "years": years, "time": self.at or "",
                "tags": ",".join(self.tags) if self.tags is not None else ""}

    def describe(self) -> str:
        """Describe the choices in a few words, as ``subscribers set`` confirms them."""
        cells = self.cells()
        return (f"{cells['frequency']} {cells['years']} at {self.at or 'publish time'} "
                f"tags {cells['tags'] or 'all'}")


def _text(value: object) -> str | None:
    return value if isinstance(value, str) else None


def _framed(items: Iterable[object]) -> str:
    return "," + ",".join(map(str, items)) + ","


def _unframed(value: str) -> list[str]:
    return [part for part in value.split(",") if part]


# -- parsing: the command line, CSV cells and the web form share these ---------------------------


def parse_years(value: str | None) -> str | tuple[int, ...] | None:
    """Read ``every``, ``milestones`` or a list of years such as ``1, 10, 50`` (empty: every)."""
    text = (value or "").strip().lower()
    if text in ("", EVERY):
        return None
    if text == MILESTONES:
        return MILESTONES
    found: set[int] = set()
    for part in text.replace(" ", ",").split(","):
        if not part:
            continue
        if not part.isdigit() or not 0 < int(part) <= 10_000:
            raise SubscriberError(f"expected 'every', 'milestones' or years from 1 to 10000, "
                                  f"got {part!r}", field="years")
        found.add(int(part))
    if not found:
        return None
    if len(found) > MAX_YEARS:
        raise SubscriberError(f"{len(found)} years, more than the {MAX_YEARS} allowed",
                              field="years")
    return tuple(sorted(found))


def parse_frequency(value: str | None) -> Frequency:
    """Read ``each`` or ``digest`` (empty: each)."""
    text = (value or "").strip().lower() or "each"
    if text not in FREQUENCIES:
        raise SubscriberError(f"expected 'each' or 'digest', got {text!r}", field="frequency")
    return "digest" if text == "digest" else "each"


def parse_time(value: str | None) -> str | None:
    """Read a delivery time ``HH:MM`` (24-hour clock; empty: the site's publish time)."""
    text = (value or "").strip()
    if not text:
        return None
    if not _TIME.fullmatch(text):
        raise SubscriberError(f"expected a time HH:MM, got {text!r}", field="time")
    return text


def parse_tags(value: str | Sequence[str] | None) -> tuple[str, ...] | None:
    """Read chosen tags, comma-separated or as a list (none: every topic)."""
    parts = value.split(",") if isinstance(value, str) else list(value or ())
    keys = sorted({key for part in parts if (key := tag_key(part))})
    if not keys:
        return None
    if len(keys) > MAX_TAGS:
        raise SubscriberError(f"{len(keys)} tags, more than the {MAX_TAGS} allowed",
                              field="tags")
    if long := next((k for k in keys if len(k) > TAG_LENGTH), None):
        raise SubscriberError(f"tag {long[:20]!r}… is longer than {TAG_LENGTH} characters",
                              field="tags")
    return tuple(keys)


def parse_choices(*, years: str | None = None, frequency: str | None = None,
                  at: str | None = None, tags: str | Sequence[str] | None = None) -> Choices:
    """Validate every choice from text; the error names the field at fault."""
    return Choices(parse_years(years), parse_frequency(frequency), parse_time(at),
                   parse_tags(tags))


# -- the filters of the query that queues an appearance ------------------------------------------


def years_filter(subscribers: Table, years_since: int) -> ColumnElement[bool]:
    """Return the condition on ``subscribers`` of wanting an appearance ``years_since`` on."""
    # Whether it is a milestone is decided here, once: each row only compares its stored text.
    if years_since == 0:
        return true()  # a first publication reaches everyone
    years = subscribers.c.years
    wanted = [years.is_(None), years.contains(_framed([years_since]), autoescape=True)]
    if is_milestone(years_since):
        wanted.append(years == MILESTONES)
    return or_(*wanted)


def tags_filter(subscribers: Table, tags: Iterable[str]) -> ColumnElement[bool]:
    """Return the condition on ``subscribers`` of wanting an article with these tags."""
    column = subscribers.c.tags
    keys = sorted({key for tag in tags if (key := tag_key(tag))})
    return or_(column.is_(None),
               *(column.contains(_framed([key]), autoescape=True) for key in keys))


@dataclass(frozen=True)
class DeliveryGroup:
    """Subscribers who get their mail at one local time in one zone (the daemon's unit)."""

    zone: str
    at: time


def group_filter(subscribers: Table, groups: Iterable[DeliveryGroup], site_zone: str,
                 site_time: time) -> ColumnElement[bool]:
    """Return the condition of belonging to one of ``groups`` (NULLs: the site's zone, time)."""
    wanted = [and_(equal_or_null(subscribers.c.timezone, group.zone, group.zone == site_zone),
                   equal_or_null(subscribers.c.send_time, group.at.isoformat("minutes"),
                                 group.at == site_time))
              for group in groups]
    return or_(*wanted) if wanted else false()


def equal_or_null(column: ColumnElement[str], value: str, null_too: bool
                  ) -> ColumnElement[bool]:
    """Return the condition ``column == value``, or NULL as well with ``null_too``."""
    condition: ColumnElement[bool] = column == value
    return or_(condition, column.is_(None)) if null_too else condition
