"""The delivery ledger: subscribers, deliveries and a little state, in SQLite or PostgreSQL.

One module per concern adds its statements to :class:`Ledger`: ``schema`` (tables, migrations),
``database`` (engines, transactions), ``subscribers``, ``deliveries``, ``returns`` and ``state``;
the counts and stored values ``publisher status`` shows come from :mod:`publisher.ledger_reads`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sqlalchemy import inspect, text

from publisher.ledger.deliveries import DIGEST_KEY, Claim, DeliveryStore, digest_day, digest_year
from publisher.ledger.returns import ReturnRow, ReturnStore, ReturnTarget
from publisher.ledger.schema import (
    MIGRATIONS,
    accepted,
    deliveries,
    new_key,
    returns,
    schema_migrations,
    subscribers,
)
from publisher.ledger.state import StateStore
from publisher.ledger.subscribers import (
    ALL_ZONES,
    PendingSignUp,
    Subscriber,
    SubscriberStore,
    ZoneChoice,
)
from publisher.ledger_reads import (
    DIGEST_SLUG,
    DeliveryCount,
    LedgerReads,
    Problem,
    ReturnCount,
    ReturnKind,
)

__all__ = [
    "ALL_ZONES", "DIGEST_KEY", "DIGEST_SLUG", "MIGRATIONS", "Claim", "DeliveryCount", "Ledger",
    "PendingSignUp", "Problem", "ReturnKind", "ReturnRow", "ReturnTarget", "Subscriber",
    "ZoneChoice", "accepted", "deliveries", "digest_day", "digest_year", "new_key", "returns",
    "schema_migrations", "subscribers",
]


class Ledger(SubscriberStore, DeliveryStore, ReturnStore, StateStore, LedgerReads):
    """The database of subscribers and deliveries; every method is one short transaction."""

    def _rows(self, sql: str, params: Mapping[str, Any] | None = None) -> list[Any]:
        # text() turns the :name parameters into the driver's own.
        with self._read() as conn:
            return list(conn.execute(text(sql), self._bound(params)))

    def return_counts(self) -> list[ReturnCount]:
        """Return how many deliveries of each edition came back, per kind."""
        if self.read_only:
            with self._read() as conn:
                if not inspect(conn).has_table(returns.name):
                    return []  # a database nobody here may migrate, from before returns were kept
        return super().return_counts()
