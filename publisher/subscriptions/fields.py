"""What people type, checked: addresses, names and time zones become a :class:`SubscriberRow`."""

from __future__ import annotations

import functools
import re
import unicodedata
from dataclasses import dataclass, field
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from publisher.config import SubscriberStatus
from publisher.errors import SubscriberError
from publisher.preferences import Choices

if TYPE_CHECKING:
    from email_validator import ValidatedEmail

NAME_LENGTH = 200
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
# Nothing is sent to these addresses, and only the person (by confirming a new sign-up) or the
# operator (by saying so explicitly) can subscribe them again.
SUPPRESSED: tuple[SubscriberStatus, ...] = ("unsubscribed", "bounced")


@dataclass(frozen=True)
class SubscriberRow:
    """A validated subscriber record to be added: normalised address, clean name, known zone."""

    email: str
    name: str | None = None
    timezone: str | None = None
    status: SubscriberStatus = "confirmed"
    choices: Choices = field(default_factory=Choices)


def normalise_address(value: str) -> str:
    """Check an address's syntax (no DNS) and return its unique, lower-case form."""
    text = value.strip()
    # make bench, million.py import: a plain ASCII address passes a pattern and its domain a
    # cached check (~1 us, where email-validator takes ~150 us); anything else the full check.
    plain = _PLAIN_ADDRESS.fullmatch(text)
    if plain is not None and len(text) <= _MAX_ADDRESS:
        domain = _plain_domain(plain[2].lower())
        if domain is not None:
            return f"{plain[1]}@{domain}".lower()
    info = _validate(text)
    # An internationalised domain is stored in its ASCII (punycode) form, so one person cannot
    # subscribe twice under two spellings of one domain.
    return (info.ascii_email or info.normalized).lower()


# email-validator's dot-atom (RFC 5322) local part, and a domain of ASCII letters, digits,
# dots and hyphens: a subset of what email-validator accepts, left unchanged but for case.
_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_PLAIN_ADDRESS = re.compile(rf"({_ATEXT}(?:\.{_ATEXT})*)@([A-Za-z0-9.-]+)")
_MAX_ADDRESS = 254  # RFC 5321's limit, which email-validator applies to the whole address


@functools.lru_cache(maxsize=4096)
def _plain_domain(domain: str) -> str | None:
    # None: refused, or written in punycode (whose Unicode form may differ in length); the
    # full check then gives the verdict and its reason.
    try:
        info = _validate(f"a@{domain}")
    except SubscriberError:
        return None
    return info.ascii_domain if info.domain == info.ascii_domain else None


def _validate(text: str) -> ValidatedEmail:
    # Imported on first use: commands that read the ledger without checking an address
    # (`publisher status`) need not compile its Unicode tables.
    from email_validator import EmailNotValidError, validate_email

    try:
        # No SMTPUTF8: a non-ASCII local part cannot be written in the To header we send, so it
        # is refused here, where the operator or the subscriber sees why.
        return validate_email(text, check_deliverability=False, allow_smtputf8=False)
    except EmailNotValidError as exc:
        raise SubscriberError(str(exc), field="email") from None


def clean_name(value: str | None) -> str | None:
    """Return a display name without control characters or line breaks, or None when empty."""
    if value is None:
        return None
    flat = " ".join(_CONTROL.sub(" ", unicodedata.normalize("NFC", value)).split())
    if len(flat) > NAME_LENGTH:
        raise SubscriberError(f"longer than {NAME_LENGTH} characters", field="name")
    return flat or None


def check_timezone(value: str | None) -> str | None:
    """Return an IANA time zone name unchanged if it is known, None when empty."""
    zone = (value or "").strip()
    if not zone:
        return None
    try:
        ZoneInfo(zone)
    except (ZoneInfoNotFoundError, ValueError):
        raise SubscriberError(f"unknown IANA time zone {zone!r}", field="timezone") from None
    return zone


def subscriber_row(email: str, name: str | None = None, timezone: str | None = None,
                   status: SubscriberStatus = "confirmed", *,
                   choices: Choices | None = None) -> SubscriberRow:
    """Validate one subscriber's fields; the error names the field at fault."""
    return SubscriberRow(normalise_address(email), clean_name(name), check_timezone(timezone),
                         status, choices or Choices())

