"""The daily digest: one email holding every appearance due on a subscriber's local date."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date

from publisher.calendar import Event
from publisher.ledger import DIGEST_KEY, digest_year
from publisher.mail import PREFERENCES, UNSUBSCRIBE, Edition, Mailer, reflow, slot
from publisher.render import Language, language_of


@dataclass(frozen=True)
class DigestItem:
    """One appearance in a digest, as its templates show it."""

    event: Event
    web_url: str
    summary_text: str
    locale: Language


def digest_edition(mailer: Mailer, events: Sequence[Event], day: date) -> Edition:
    """Render the digest of ``events`` for local date ``day``, ready to fill in per recipient."""
    site = mailer.config.site
    items = [DigestItem(event, site.article_url(event.article.slug),
                        reflow(event.article.summary),
                        language_of(event.article.lang, site.language))
             for event in events]
    context = {
        "locale": language_of(None, site.language), "site": site, "day": day,
        "events": list(events), "items": items,
        "unsubscribe_url": slot(UNSUBSCRIBE), "preferences_url": slot(PREFERENCES),
    }
    named, anonymous = mailer.variants(context, html="digest.html", text="digest.txt",
                                       subject="digest_subject")
    return Edition(mailer, None, named, anonymous, key=(DIGEST_KEY, digest_year(day)), on=day)
