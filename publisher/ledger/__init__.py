"""The delivery ledger: subscribers, deliveries and a little state, in SQLite or PostgreSQL.

Everything the publisher must remember between runs lives here, so that each (article, anniversary
year, subscriber) is sent once: a delivery row is inserted before anything is sent, claimed under a
lease, and marked sent only after the server accepted the message.

One module per concern, each adding its statements to :class:`Ledger`: ``schema`` (tables and
migrations), ``database`` (engines, transactions), ``subscribers``, ``deliveries`` (queue, claims,
leases, outcomes, counts), ``returns`` (bounces and complaints) and ``state`` (values and locks).
"""

from __future__ import annotations

# Defined with the configuration (a light module for the command line); named here as before.
from publisher.config import SUBSCRIBER_STATUSES as SUBSCRIBER_STATUSES
from publisher.config import SubscriberStatus as SubscriberStatus
from publisher.ledger.deliveries import (
    DIGEST_KEY,
    DIGEST_SLUG,
    DIGEST_WAITING,
    Claim,
    DeliveryCount,
    DeliveryStatus,
    DeliveryStore,
    Problem,
    digest_day,
    digest_year,
)
from publisher.ledger.returns import (
    ReturnCount,
    ReturnEffect,
    ReturnKind,
    ReturnRow,
    ReturnStore,
    ReturnTarget,
)
from publisher.ledger.schema import (
    MIGRATIONS,
    accepted,
    deliveries,
    new_key,
    returns,
    schema_migrations,
    signups,
    state,
    subscribers,
)
from publisher.ledger.state import StateStore
from publisher.ledger.subscribers import (
    ALL_ZONES,
    SUPPRESSED,
    AddOutcome,
    AllZones,
    PendingSignUp,
    RemoveOutcome,
    Subscriber,
    SubscriberStore,
    ZoneChoice,
)

__all__ = [
    "ALL_ZONES", "DIGEST_KEY", "DIGEST_SLUG", "DIGEST_WAITING", "MIGRATIONS", "SUBSCRIBER_STATUSES",
    "SUPPRESSED", "AddOutcome", "AllZones", "Claim", "DeliveryCount", "DeliveryStatus", "Ledger",
    "PendingSignUp", "Problem", "RemoveOutcome", "ReturnCount", "ReturnEffect", "ReturnKind",
    "ReturnRow", "ReturnTarget", "Subscriber", "SubscriberStatus", "ZoneChoice", "accepted",
    "deliveries", "digest_day", "digest_year", "new_key", "returns", "schema_migrations",
    "signups", "state", "subscribers",
]


class Ledger(SubscriberStore, DeliveryStore, ReturnStore, StateStore):
    """The database of subscribers and deliveries; every method is one short transaction."""
