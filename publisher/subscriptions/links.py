"""Sign-up, confirmation, preferences, unsubscription and purge through emailed links."""

from __future__ import annotations

import logging
from collections.abc import Callable
from contextlib import closing
from dataclasses import dataclass
from datetime import timedelta

from publisher import transports
from publisher.calendar import Clock
from publisher.config import Config
from publisher.errors import PublisherError, SubscriberError, TokenError
from publisher.ledger import Ledger, PendingSignUp, Subscriber
from publisher.mail import Mailer, Recipient, preferences_url
from publisher.preferences import Choices
from publisher.subscriptions.fields import check_timezone, subscriber_row
from publisher.tokens import (
    LinkSubject,
    SignedAddress,
    confirm_token,
    read_confirm_token,
    read_unsubscribe_token,
    unsubscribe_token,
)

log = logging.getLogger(__name__)

NO_LONGER_VALID = "this confirmation link is no longer valid: please subscribe again"


@dataclass(frozen=True)
class SignUp:
    """What a sign-up did: the address as stored, and the sign-up to confirm (if any)."""

    email: str
    pending: PendingSignUp | None


@dataclass(frozen=True)
class Unsubscribed:
    """What following an unsubscribe link did: whom it names now, if anyone, and if it changed."""

    email: str | None
    changed: bool


class Subscriptions:
    """Double opt-in over the ledger: every answer is the same whether an address was known."""

    def __init__(self, config: Config, ledger: Ledger, secret: bytes, mailer: Mailer,
                 clock: Clock,
                 open_transport: Callable[[Config], transports.Transport]
                 = transports.open_transport) -> None:
        self.config = config
        self.ledger = ledger
        self.secret = secret
        self.mailer = mailer
        self.clock = clock
        self.open_transport = open_transport

    def sign_up(self, email: str, name: str | None, timezone: str | None,
                choices: Choices | None = None) -> SignUp:
        """Record a sign-up; raise SubscriberError for a bad address or name."""
        try:
            zone = check_timezone(timezone)
        except SubscriberError:
            zone = None  # a zone the browser knows but tzdata does not: use the site's
        row = subscriber_row(email, name, zone, status="pending", choices=choices)
        return SignUp(row.email, self.ledger.add_pending(row, now=self.clock()))

    def deliver_confirmation(self, pending: PendingSignUp) -> None:
        """Send the confirmation after the visitor has their answer; log the outcome."""
        recipient = Recipient(pending.subscriber_id, pending.email, pending.name,
                              pending.timezone)
        try:
            token = confirm_token(self.secret, pending.key, now=self.clock())
            data = self.mailer.confirmation(recipient, self.config.site.url(f"confirm/{token}"))
            envelope = transports.Envelope(0, self.mailer.return_path(), recipient.email, data)
            with closing(self.open_transport(self.config)) as transport:
                outcome = next((result for _, result in transport.send([envelope])),
                               transports.Outcome("deferred", None,
                                                  "the transport reported nothing"))
        except PublisherError as exc:
            log.warning("confirmation to subscriber %d not sent: %s", recipient.subscriber_id, exc)
            return
        if outcome.status == "sent":
            log.info("confirmation sent to subscriber %d", recipient.subscriber_id)
        else:
            log.warning("confirmation to subscriber %d not sent: %s %s %s",
                        recipient.subscriber_id, outcome.status, outcome.code or "",
                        outcome.reply)

    def _confirm_subject(self, token: str) -> LinkSubject:
        return read_confirm_token(self.secret, token, self.config.web.confirm_hours * 3600,
                                  now=self.clock())

    def confirm_address(self, token: str) -> str:
        """Return the address a valid confirmation link is for; raise TokenError otherwise."""
        subject = self._confirm_subject(token)
        if isinstance(subject, SignedAddress):
            return subject.email
        found = self.ledger.find_sign_up(subject)
        if found is None:
            raise TokenError(NO_LONGER_VALID)
        return found.email

    def confirm(self, token: str) -> Subscriber:
        """Confirm the sign-up a token names (idempotent); raise TokenError when it cannot."""
        subject = self._confirm_subject(token)
        now = self.clock()
        subscriber = (self.ledger.confirm(subject.subscriber_id, subject.email, now=now)
                      if isinstance(subject, SignedAddress)
                      else self.ledger.confirm_sign_up(subject, now=now))
        if subscriber is None or subscriber.status != "confirmed":
            raise TokenError(NO_LONGER_VALID)
        return subscriber

    def unsubscribe_address(self, token: str) -> str | None:
        """Return the address an unsubscribe link names, None when it names nobody now."""
        found = self._link_owner(token)
        return found.email if found is not None else None

    def unsubscribe(self, token: str) -> Unsubscribed:
        """Unsubscribe whom a token names (idempotent); raise TokenError for a bad token."""
        subject = read_unsubscribe_token(self.secret, token)
        now = self.clock()
        found, changed = (self.ledger.unsubscribe_link(email=subject.email, now=now)
                          if isinstance(subject, SignedAddress)
                          else self.ledger.unsubscribe_link(key=subject, now=now))
        return Unsubscribed(found.email if found is not None else None, changed)

    def _link_owner(self, token: str) -> Subscriber | None:
        subject = read_unsubscribe_token(self.secret, token)
        return (self.ledger.find_subscriber(subject.email) if isinstance(subject, SignedAddress)
                else self.ledger.find_unsubscribe_key(subject))

    def preferences_of(self, token: str) -> Subscriber | None:
        """Return whom a preferences link names, None when nobody is subscribed under it now."""
        found = self._link_owner(token)
        return found if found is not None and found.status == "confirmed" else None

    def save_preferences(self, token: str, choices: Choices) -> Subscriber | None:
        """Store the choices of whom a preferences link names; None when nobody is subscribed."""
        found = self.preferences_of(token)
        if found is None:
            return None
        return self.ledger.set_choices(choices, email=found.email, now=self.clock())

    def preferences_link(self, subscriber: Subscriber) -> str:
        """Return the preferences page of a subscriber (as their emails link it)."""
        return preferences_url(self.config, unsubscribe_token(self.secret,
                                                              subscriber.unsubscribe_key or ""))

    def purge(self) -> int:
        """Drop sign-ups left unconfirmed for ``web.pending_days``; return how many."""
        return self.ledger.purge_pending(timedelta(days=self.config.web.pending_days),
                                         now=self.clock())
