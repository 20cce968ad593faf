"""The delivery ledger: subscribers, deliveries and a little state, in SQLite or PostgreSQL.

One module per concern adds its statements to :class:`Ledger`: ``schema`` (tables, migrations),
``database`` (engines, transactions), ``subscribers``, ``deliveries``, ``returns`` and ``state``.
"""

from __future__ import annotations

from publisher.ledger.deliveries import (
    DIGEST_KEY,
    DIGEST_SLUG,
    Claim,
    DeliveryCount,
    DeliveryStore,
    Problem,
    digest_day,
    digest_year,
)
from publisher.ledger.returns import ReturnKind, ReturnRow, ReturnStore, ReturnTarget
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

__all__ = [
    "ALL_ZONES", "DIGEST_KEY", "DIGEST_SLUG", "MIGRATIONS", "Claim", "DeliveryCount", "Ledger",
    "PendingSignUp", "Problem", "ReturnKind", "ReturnRow", "ReturnTarget", "Subscriber",
    "ZoneChoice", "accepted", "deliveries", "digest_day", "digest_year", "new_key", "returns",
    "schema_migrations", "subscribers",
]


class Ledger(SubscriberStore, DeliveryStore, ReturnStore, StateStore):
    """The database of subscribers and deliveries; every method is one short transaction."""
