"""Exceptions raised by the publisher; every one derives from :class:`PublisherError`."""

from __future__ import annotations

from pathlib import Path


class PublisherError(Exception):
    """Base class of every error the publisher raises on purpose."""


class LocatedError(PublisherError):
    """An error about one place in one input: file, line (where known) and field."""

    def __init__(
        self,
        message: str,
        *,
        path: Path | str | None = None,
        line: int | None = None,
        field: str | None = None,
    ) -> None:
        self.message = message
        self.path = Path(path) if path is not None else None
        self.line = line
        self.field = field
        super().__init__(self.describe())

    def describe(self) -> str:
        """Format the error as ``file:line: field: message``."""
        line = f":{self.line}" if self.line is not None else ""
        where = f"{self.path}{line}: " if self.path is not None else ""
        field = f"{self.field}: " if self.field else ""
        return f"{where}{field}{self.message}"


class ConfigError(LocatedError):
    """The configuration file is missing, unreadable or holds an invalid value."""


class ContentError(LocatedError):
    """An article file cannot be loaded: bad encoding, front matter, date or field."""


class DuplicateSlugError(ContentError):
    """Two articles claim the same slug."""


class UnreadableError(ContentError):
    """A content entry cannot be read: a link loop or to nothing, not a file, no permission."""


class TemplateError(LocatedError):
    """A template failed to load or render (syntax error, unknown variable)."""


class OutputError(LocatedError):
    """The site's output folder cannot be written or swapped into place."""


class SubscriberError(LocatedError):
    """A subscriber record is invalid: bad address, unknown time zone, bad CSV row."""


class LedgerError(PublisherError):
    """The delivery ledger cannot be opened, migrated or updated."""


class TransportError(PublisherError):
    """A message could not be handed to the configured transport."""


class TokenError(PublisherError):
    """A signed link token is forged, garbled or expired."""


class SecretKeyError(LocatedError):
    """The key that signs link tokens cannot be read or created."""


class MailboxError(PublisherError):
    """A mailbox of bounces and complaints cannot be reached, logged into or read."""


class WebhookError(PublisherError):
    """A provider's webhook request is not authentic or not in the provider's format."""
