"""Time per-recipient email building: Edition.message() against rendering for every recipient.

Usage: .venv/bin/python benchmarks/mail_messages.py [--messages 20000] [--size 20000] [--dkim]

Builds one edition of a generated article whose message is about ``--size`` bytes, then prints
messages per second for Edition.message(), for the naive alternative (a fresh Edition, i.e.
templates rendered and CSS inlined, per recipient) and their ratio. ``--dkim`` also times
signing with a 2048-bit RSA key (needs the ``cryptography`` package from the test extra).
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import date
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from publisher.calendar import Event
from publisher.config import Config, from_mapping
from publisher.content import Article, render_markdown
from publisher.ledger import new_key
from publisher.mail import Mailer, Recipient

# Made-up words, a few with non-ASCII letters, as quoted-printable meets them in real text.
SYLLABLES = ("ka", "lo", "mi", "ne", "ru", "sa", "te", "vo", "zé", "ør", "an", "il")


def article_of_size(size: int) -> Article:
    """Return an article whose Markdown body is about ``size`` bytes of prose."""
    rng = random.Random(20)
    paragraphs: list[str] = []
    while sum(len(p) + 2 for p in paragraphs) < size:
        words = ("".join(rng.choices(SYLLABLES, k=rng.randint(1, 4)))
                 for _ in range(rng.randint(30, 90)))
        sentences = " ".join(words).capitalize() + "."
        paragraphs.append(sentences)
    body = "\n\n".join(paragraphs)
    return Article(slug="benchmark", title="A benchmark article", date=date(2020, 5, 1),
                   anniversary=(5, 1), body_html=render_markdown(body), body_text=body,
                   summary=paragraphs[0][:200], source=Path("benchmark.md"))


def make_config(folder: Path, dkim: bool) -> Config:
    """Return a config under ``folder``, with a fresh DKIM key when asked."""
    email: dict[str, Any] = {"unsubscribe_mailto": "leave@example.org"}
    if dkim:
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import rsa

        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        (folder / "dkim.key").write_bytes(key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption()))
        email["dkim"] = {"domain": "example.org", "private_key": str(folder / "dkim.key")}
    return from_mapping({"site": {"base_url": "https://example.org/"}, "email": email},
                        base_dir=folder)


def rate(build: Callable[[Recipient], bytes], count: int) -> float:
    """Return messages per second for ``count`` recipients, half of them with a name."""
    recipients = [Recipient(i, f"reader{i}@example.org", f"Reader {i}" if i % 2 else None,
                            unsubscribe_key=new_key()) for i in range(count)]
    start = time.perf_counter()
    for recipient in recipients:
        build(recipient)
    return count / (time.perf_counter() - start)


def main() -> None:
    """Print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=20000)
    parser.add_argument("--size", type=int, default=20000, help="message size in bytes")
    parser.add_argument("--dkim", action="store_true")
    options = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        mailer = Mailer(make_config(Path(folder), options.dkim), b"benchmark secret")
        # The body appears in both parts, around ~5 KB of layout: aim the article accordingly.
        body = max((options.size - 5000) * 2 // 7, 500)
        event = Event(article_of_size(body), date(2026, 5, 1), 6)
        start = time.perf_counter()
        edition = mailer.edition(event)
        render_seconds = time.perf_counter() - start
        size = len(edition.message(Recipient(0, "reader0@example.org", "Reader 0")))
        fast = rate(edition.message, options.messages)
        naive = rate(lambda r: mailer.edition(event).message(r), max(options.messages // 100, 20))
    print(f"message size:            {size} bytes{' (DKIM-signed)' if options.dkim else ''}")
    print(f"edition (render+inline): {render_seconds * 1000:.1f} ms, once per event")
    print(f"Edition.message():       {fast:,.0f} messages/s over {options.messages} recipients")
    print(f"rendering per recipient: {naive:,.0f} messages/s")
    print(f"ratio:                   {fast / naive:.0f}x")


if __name__ == "__main__":
    main()
