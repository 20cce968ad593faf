"""Exactly once under random changes of choices, crashes and restarts (property tests).

The ledger is driven as the daemon drives it: each day's appearances are queued at the group's
moment, then claimed in batches and recorded as the server accepts each message. Between any
two steps a subscriber may switch between single emails and a digest or change which
anniversaries and topics they want, and a sender may die after claiming (its lease then runs out and
another sender takes the rows over) or after the server accepted a message but before the
ledger folded that in. Whatever the schedule:

* an appearance (article, year) reaches a subscriber at most once, alone or in a digest;
* a digest reaches a subscriber at most once per local date;
* every appearance a subscriber wanted when their moment came reaches them (nothing dropped).
"""

from __future__ import annotations

import tempfile
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from publisher.ledger import DIGEST_SLUG, Ledger, digest_day
from publisher.preferences import Choices, DeliveryGroup
from publisher.subscriptions.fields import subscriber_row

SITE_ZONE = "UTC"
AT = time(9, 0)
LEASE = timedelta(minutes=5)
GIVE_UP = timedelta(hours=48)
# Each day's appearances: (slug, year, years since the first publication, tags).
DAYS = {
    date(2025, 6, 5): (("one", 2025, 1, ("space",)), ("six", 2025, 6, ()),
                       ("ten", 2025, 10, ("space", "history"))),
    date(2025, 6, 6): (("fifty", 2025, 50, ("history",)), ("two", 2025, 2, ("space",))),
}
READERS = ("ada@example.org", "bo@example.org", "cy@example.org")

choice = st.builds(Choices, years=st.sampled_from([None, "milestones", (2, 6)]),
                   frequency=st.sampled_from(["each", "digest"]),
                   tags=st.sampled_from([None, ("space",), ("history",)]))
change = st.tuples(st.sampled_from(range(len(READERS))), choice)
# What a sender does with its next claimed message: send it, die before sending it (its lease
# runs out), or die after the server accepted it (the acceptance is recorded, not folded in).
fate = st.sampled_from(["send"] * 6 + ["die", "die-accepted"])


@dataclass
class Outbox:
    """What the server accepted: (subscriber, slug, year) per appearance, and digests."""

    appearances: Counter[tuple[int, str, int]] = field(default_factory=Counter)
    digests: Counter[tuple[int, date]] = field(default_factory=Counter)


@dataclass
class Run:
    """One ledger file, reopened after every crash, with a clock that only moves forward."""

    path: Path
    now: datetime
    ledger: Ledger = field(init=False)
    outbox: Outbox = field(default_factory=Outbox)
    senders: int = 0

    def __post_init__(self) -> None:
        self.ledger = Ledger.open(f"sqlite:///{self.path}")

    def restart(self) -> None:
        """A new process on the same database, after the dead one's leases ran out."""
        self.ledger.close()
        self.ledger = Ledger.open(f"sqlite:///{self.path}")
        self.now += LEASE + timedelta(seconds=1)

    def queue(self, day: date) -> None:
        """Queue the day's appearances for the site's group, then its digests."""
        for slug, year, years_since, tags in DAYS[day]:
            self.ledger.enqueue(slug, year, day, due_at=self.now, give_up_at=self.now + GIVE_UP,
                                zone=None, site_zone=SITE_ZONE, now=self.now,
                                groups=[DeliveryGroup(SITE_ZONE, AT)], site_time=AT,
                                years_since=years_since, tags=tags)
        self.ledger.enqueue_digests(day, due_at=self.now, give_up_at=self.now + GIVE_UP,
                                    now=self.now)

    def send(self, fates: list[str], batch: int) -> None:
        """Claim and send until nothing is due, the sender dying as ``fates`` say."""
        while True:
            self.senders += 1
            worker = f"sender-{self.senders}"
            claims = self.ledger.claim(worker, batch, LEASE, self.now)
            if not claims:
                return
            for claim in claims:
                what = fates.pop(0) if fates else "send"
                if what == "die":
                    self.restart()
                    break
                if claim.is_digest:
                    self.outbox.digests[(claim.subscriber_id, digest_day(claim.year))] += 1
                    items = [(slug, year) for slug, year, _ in claim.items]
                else:
                    items = [(claim.slug, claim.year)]
                for slug, year in items:
                    self.outbox.appearances[(claim.subscriber_id, slug, year)] += 1
                self.ledger.record_sent(claim.delivery_id, code=250, reply="ok",
                                        message_id=f"<{claim.delivery_id}@x>", now=self.now)
                if what == "die-accepted":
                    self.restart()
                    break
            else:
                self.ledger.settle()
            self.now += timedelta(seconds=1)


def wants(run: Run, ids: dict[str, int], day: date) -> set[tuple[int, str, int]]:
    """Return the day's appearances each subscriber's current choices want."""
    found: set[tuple[int, str, int]] = set()
    for sid in ids.values():
        subscriber = run.ledger.get_subscriber(sid)
        assert subscriber is not None
        found |= {(sid, slug, year) for slug, year, years, tags in DAYS[day]
                  if subscriber.choices.wants(years, tags)}
    return found


@settings(max_examples=25, deadline=None)
@given(st.lists(change, max_size=4), st.lists(change, max_size=4), st.lists(change, max_size=4),
       st.lists(fate, max_size=30), st.integers(1, 4))
def test_changes_crashes_and_restarts_never_repeat_or_drop(
        before: list[tuple[int, Choices]], midday: list[tuple[int, Choices]],
        overnight: list[tuple[int, Choices]], fates: list[str], batch: int) -> None:
    with tempfile.TemporaryDirectory() as folder:
        run = Run(Path(folder) / "ledger.db", datetime(2025, 6, 5, 8, 0, tzinfo=UTC))
        try:
            ids = {email: run.ledger.add_subscriber(subscriber_row(email), now=run.now)[0].id
                   for email in READERS}
            wanted: set[tuple[int, str, int]] = set()
            schedule = [before, midday, overnight]
            for number, day in enumerate(DAYS):
                for who, chosen in schedule[number]:
                    run.ledger.set_choices(chosen, email=READERS[who], now=run.now)
                run.now = datetime.combine(day, AT, tzinfo=UTC) + timedelta(minutes=1)
                wanted |= wants(run, ids, day)
                run.queue(day)
                run.send(fates, batch)
                # Switching mid-day, after some or all of the day's mail went: then the
                # day's group is queued again, as a second tick in the same minute would.
                for who, chosen in (midday if number == 0 else []):
                    run.ledger.set_choices(chosen, email=READERS[who], now=run.now)
                wanted |= wants(run, ids, day)
                run.queue(day)
                run.restart()
                run.send(fates, batch)
            run.restart()
            run.send([], batch)
            outbox = run.outbox
            assert all(n == 1 for n in outbox.appearances.values()), outbox.appearances
            assert all(n == 1 for n in outbox.digests.values()), outbox.digests
            assert set(outbox.appearances) == wanted
            assert DIGEST_SLUG not in {slug for _, slug, _ in outbox.appearances}
            # The ledger agrees: every row sent, an appearance in a digest with its digest.
            assert {c.status for c in run.ledger.delivery_counts()} <= {"sent"}
        finally:
            run.ledger.close()
