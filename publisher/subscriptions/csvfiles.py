"""Subscriber lists as CSV files: read, import (in chunks, never all in memory), export."""

from __future__ import annotations

import csv
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from publisher.config import SubscriberStatus
from publisher.errors import SubscriberError
from publisher.preferences import parse_choices
from publisher.subscriptions.fields import SUPPRESSED, SubscriberRow, subscriber_row

if TYPE_CHECKING:
    from publisher.ledger import Ledger

# make bench, million.py import: 12 GB of log for a million rows in chunks of 5,000, 2 GB in
# these. Below PostgreSQL's 65,535 values a statement: a chunk's addresses are looked up in one.
IMPORT_CHUNK = 50_000
IMPORT_COLUMNS = ("email", "name", "timezone")
# The subscriber's choices (publisher.preferences): empty cells are the defaults.
CHOICE_COLUMNS = ("frequency", "years", "time", "tags")
EXPORT_COLUMNS = ("email", "name", "timezone", "status", "created_at", "confirmed_at",
                  "unsubscribed_at", *CHOICE_COLUMNS)
# An export read back keeps who unsubscribed or bounced: those rows stay suppressed.
_IMPORT_STATUSES: dict[str, SubscriberStatus | None] = {
    "": "confirmed", "confirmed": "confirmed", "unsubscribed": "unsubscribed",
    "bounced": "bounced", "pending": None,
}


# A cell starting with one of these is a formula to a spreadsheet (OWASP, "CSV Injection"):
# the export puts a single quote before it, which spreadsheets show as text, and the import
# takes one leading quote away. A value starting with a quote gets one too, so both round-trip.
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r", "'")


@dataclass
class ImportReport:
    """What a CSV import did: rows added, rows already present, and every rejected row."""

    added: int = 0
    unchanged: int = 0
    skipped_pending: int = 0
    resubscribed: int = 0  # suppressed addresses subscribed again on the operator's word
    suppressed: list[tuple[str, SubscriberStatus]] = field(default_factory=list)  # left out
    errors: list[SubscriberError] = field(default_factory=list)


def as_cell(value: str) -> str:
    """Return a value as a CSV cell that no spreadsheet runs as a formula."""
    return f"'{value}" if value.startswith(_FORMULA_STARTS) else value


def from_cell(cell: str) -> str:
    """Return the value of a CSV cell written by :func:`as_cell`."""
    return cell[1:] if cell.startswith("'") else cell


def read_subscriber_csv(path: Path) -> Iterator[SubscriberRow | SubscriberError | None]:
    """Yield a row, or the error of a bad one, per record of a subscriber CSV; None: pending."""
    try:
        handle = path.open(encoding="utf-8-sig", newline="")
    except OSError as exc:
        raise SubscriberError(f"cannot read: {exc.strerror}", path=path) from None
    with handle:
        reader = csv.reader(handle)
        columns: list[str] = list(IMPORT_COLUMNS)
        start = 1  # the line the next record starts on
        try:
            for number, record in enumerate(reader):
                line, start = start, reader.line_num + 1
                if not any(cell.strip() for cell in record):
                    continue
                if number == 0 and "email" in (named := [c.strip().lower() for c in record]):
                    unknown = [c for c in named if c and c not in EXPORT_COLUMNS]
                    if unknown:
                        raise SubscriberError(
                            f"unknown column (known: {', '.join(EXPORT_COLUMNS)})",
                            path=path, line=1, field=unknown[0])
                    columns = named
                    continue
                yield _parse_record(record, columns, path, line)
        except UnicodeDecodeError as exc:
            raise SubscriberError(f"not UTF-8 text ({exc.reason})", path=path, line=start,
                                  field="encoding") from None
        except csv.Error as exc:
            raise SubscriberError(f"malformed CSV: {exc}", path=path, line=start) from None


def _parse_record(record: list[str], columns: list[str], path: Path, line: int
                  ) -> SubscriberRow | SubscriberError | None:
    if len(record) > len(columns):
        return SubscriberError(f"expected at most {len(columns)} columns, got {len(record)}",
                               path=path, line=line)
    values = dict(zip(columns, map(from_cell, record), strict=False))
    status_text = values.get("status", "").strip().lower()
    if status_text not in _IMPORT_STATUSES:
        return SubscriberError(f"unknown status {status_text!r}", path=path, line=line,
                               field="status")
    status = _IMPORT_STATUSES[status_text]
    if status is None:
        return None
    try:
        choices = parse_choices(years=values.get("years"), frequency=values.get("frequency"),
                                at=values.get("time"), tags=values.get("tags"))
        return subscriber_row(values.get("email", ""), values.get("name"),
                              values.get("timezone"), status, choices=choices)
    except SubscriberError as exc:
        return SubscriberError(exc.message, path=path, line=line, field=exc.field)


def import_csv(ledger: Ledger, path: Path, now: datetime | None = None, *,
               include_suppressed: bool = False) -> ImportReport:
    """Import a subscriber CSV: good rows become confirmed subscribers, bad rows are reported."""
    report = ImportReport()
    chunk: list[SubscriberRow] = []

    def flush() -> None:
        known = ledger.statuses_of(row.email for row in chunk) if chunk else {}
        new: list[SubscriberRow] = []
        for row in chunk:
            status = known.get(row.email)
            if status is None:
                new.append(row)
            elif status not in SUPPRESSED or row.status != "confirmed":
                report.unchanged += 1
            elif include_suppressed:
                ledger.add_subscriber(row, resubscribe=True, now=now)
                report.resubscribed += 1
            else:
                report.suppressed.append((row.email, status))
        added = ledger.insert_new(new, now)
        report.added += added
        report.unchanged += len(new) - added
        chunk.clear()

    try:
        for item in read_subscriber_csv(path):
            if item is None:
                report.skipped_pending += 1
            elif isinstance(item, SubscriberError):
                report.errors.append(item)
            else:
                chunk.append(item)
                if len(chunk) >= IMPORT_CHUNK:
                    flush()
    except SubscriberError as exc:
        # The rest of the file cannot be read; what was read before still counts.
        report.errors.append(exc)
    flush()
    return report


def _iso(value: datetime | None) -> str:
    return value.isoformat(timespec="seconds") if value is not None else ""


def export_csv(ledger: Ledger, out: TextIO, status: SubscriberStatus | None = None) -> int:
    """Write subscribers as CSV (a header, then one row each) while reading them; return count."""
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(EXPORT_COLUMNS)
    count = 0
    for s in ledger.iter_subscribers(status):
        cells = s.choices.cells()
        writer.writerow([as_cell(s.email), as_cell(s.name or ""), as_cell(s.timezone or ""),
                         s.status, _iso(s.created_at), _iso(s.confirmed_at),
                         _iso(s.unsubscribed_at), *(cells[c] for c in CHOICE_COLUMNS)])
        count += 1
    return count
