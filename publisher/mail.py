"""Build email: one rendered Edition per event, then each subscriber's bytes by filling slots."""

from __future__ import annotations

import binascii
import hashlib
import html
import logging
import re
import textwrap
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import date, datetime, time
from email.header import Header
from email.headerregistry import Address, HeaderRegistry, UniqueAddressHeader
from email.message import MIMEPart
from email.policy import SMTP, EmailPolicy
from email.utils import parseaddr
from html.parser import HTMLParser
from typing import Any, NamedTuple
from urllib.parse import urljoin, urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import css_inline
import jinja2
from markupsafe import Markup

from publisher.calendar import Clock, Event, publish_instant, utcnow
from publisher.config import CONFIG_NAME, Config, DkimConfig
from publisher.content import absolute_links
from publisher.errors import ConfigError, SubscriberError, TemplateError
from publisher.render import (
    compile_string,
    config_environment,
    language_of,
    render,
    render_template,
)
from publisher.tokens import return_path_tag, unsubscribe_token
from publisher.transports import dot_stuffed

HTML_TEMPLATE = "email.html"
TEXT_TEMPLATE = "email.txt"
CONFIRM_HTML_TEMPLATE = "confirm.html"
CONFIRM_TEXT_TEMPLATE = "confirm.txt"
GMAIL_CLIP_BYTES = 102 * 1024  # Gmail cuts the HTML of longer messages behind a link
# Signed twice each: the second, absent instance makes adding such a header break the signature.
DKIM_HEADERS = ("from", "to", "subject", "date", "message-id", "reply-to", "list-id",
                "list-unsubscribe", "list-unsubscribe-post", "auto-submitted", "mime-version",
                "content-type")

log = logging.getLogger(__name__)

# Slots are plain ASCII letters and digits: they survive HTML escaping, URL quoting and the CSS
# inliner's parser (which drops private-use characters). The mixed case lets a filter that changed
# a slot (upper, title, truncate) be detected instead of leaking a half-replaced placeholder.
_MARK = "Xq7Slot"
NAME, EMAIL, UNSUBSCRIBE, PREFERENCES = "name", "email", "unsubscribe", "preferences"
_SLOT = re.compile(f"{_MARK}({NAME}|{EMAIL}|{UNSUBSCRIBE}|{PREFERENCES}){_MARK}")
_DAMAGED_SLOT = re.compile(_MARK, re.IGNORECASE)

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\ud800-\udfff]")
_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_PLAIN_NAME = re.compile(f"{_ATEXT}(?: {_ATEXT})*")
# A dot-atom at a domain: an address a header carries as it is (RFC 5322 section 3.4.1).
_ADDRESS = re.compile(rf"{_ATEXT}(?:\.{_ATEXT})*@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*")
_FENCE = re.compile(r"\s{0,3}(```|~~~)")
_VERBATIM = re.compile(r"(\s{4,}|\t|\s{0,3}(#|\||[-*_](\s*[-*_]){2,}\s*$))")
_LIST_ITEM = re.compile(r"(\s{0,3}(?:[-*+]|\d{1,9}[.)])\s+)(.*)")
_QUOTE = re.compile(r"\s{0,3}>\s?(.*)")
TEXT_WIDTH = 72
_LINE = 78  # RFC 5322's recommended maximum, without CRLF
# Tags as the CSS inliner writes them: lower case, attributes in double quotes.
_HEAD = re.compile(r"<head(?:\s[^>]*)?>")
_META_CHARSET = re.compile(r"<meta charset=[^>]*>\s*")
_SOFT_BREAK = b"=\r\n"
_LANGUAGE_TAG = re.compile(r"[A-Za-z]{1,8}(-[A-Za-z0-9]{1,8})*")
_END_OF_DATA = b".\r\n"  # the message's last line ends in CRLF already

# Headers are written by the email package under its SMTP policy (CRLF, 78 columns), which
# encodes and folds them. List-Id takes a phrase as a mailbox does (RFC 2919), so it is written
# as one; the registry is the package's own otherwise.
_HEADERS = HeaderRegistry()
# (typeshed asks for a BaseHeader subclass; the registry mixes BaseHeader in itself)
_HEADERS.map_to_type("list-id", UniqueAddressHeader)  # type: ignore[arg-type]
_POLICY = SMTP.clone(header_factory=_HEADERS)
# At 78 columns the package turns a URL longer than a line into encoded-words, which no client
# reads as a URL again; List-Unsubscribe is left on one line (RFC 5322 allows 998).
_URL_POLICY = _POLICY.clone(max_line_length=998)
# Stand-ins as long as the values they stand for, so that a field is folded as it will be sent.
_DIGEST = (_MARK + "digest").ljust(32, "0")
_TOKEN = _MARK + "token" + _MARK
# A whole line of the serialised skeleton that one recipient's bytes replace.
_SLOT_LINE = re.compile(rb"(?m)^(?:[A-Za-z-]+: )?" + _MARK.encode() + rb"([a-z-]+)"
                        + _MARK.encode() + rb"\r\n")


def slot(key: str) -> str:
    """Return the placeholder that stands for a subscriber value in a rendered template."""
    return f"{_MARK}{key}{_MARK}"


@dataclass(frozen=True)
class Recipient:
    """Who one message goes to; ``timezone`` (IANA name) sets the Date, else the site's zone.

    ``unsubscribe_key`` is the subscriber's key, which their unsubscribe link names (a sample
    recipient's link, with none, unsubscribes nobody). ``at``: their own delivery time
    (``HH:MM``), else the site's publish time.
    """

    subscriber_id: int
    email: str
    name: str | None
    timezone: str | None = None
    unsubscribe_key: str = ""
    at: str | None = None


@dataclass(frozen=True)
class TemplateSubscriber:
    """The ``subscriber`` variable of the email templates."""

    name: str | None
    email: str


class Link(NamedTuple):
    """A link found in an article, listed under the text part."""

    text: str
    url: str


@dataclass(frozen=True)
class Preview:
    """One recipient's subject and body parts as text, before MIME encoding."""

    subject: str
    text: str
    html: str


def _message_digest(slug: str, year: int, email: str) -> str:
    return hashlib.sha256(f"{slug}\n{year}\n{email.strip().lower()}".encode()).hexdigest()[:32]


def _message_id_parts(slug: str, year: int, domain: str) -> tuple[str, str]:
    return f"<{slug}.{year}.", f"@{_dot_atom(domain)}>"


def message_id_for(slug: str, year: int, email: str, domain: str) -> str:
    """Return the Message-ID of one (article, year, subscriber): the same on every resend."""
    return _message_digest(slug, year, email).join(_message_id_parts(slug, year, domain))


def unsubscribe_url(config: Config, token: str) -> str:
    """Return the one-click unsubscribe URL served by the web service."""
    return config.site.url(f"unsubscribe/{token}")


def preferences_url(config: Config, token: str) -> str:
    """Return the URL of the page where a subscriber changes their choices.

    It takes the unsubscribe link's token: whoever holds one may already end the subscription,
    and each message then signs one token, not two.
    """
    return config.site.url(f"preferences/{token}")


def _clean(value: str) -> str:
    """Return a value safe for one header line: controls become spaces, whitespace collapses."""
    # Every header value from content, configuration or a subscriber comes through here, so
    # none can smuggle in CR, LF or NUL and start a header line of its own.
    return " ".join(_CONTROL.sub(" ", value).split())


def _dot_atom(domain: str) -> str:
    return re.sub(r"[^A-Za-z0-9.-]", "-", domain).strip(".") or "localhost"


def _literal(text: str) -> bool:
    return text.isascii() and "=?" not in text


def _header_line(name: str, value: object, policy: EmailPolicy[Any] = _POLICY) -> bytes:
    """Return one header field as the email package encodes and folds it."""
    # Python 3.11's header writer drops the space where it folds between two encoded-words, and
    # decodes encoded-word syntax in the text it is given and writes it back unencoded
    # ("=?utf-8?q?=0A?=" became a line break): text that is not ASCII or holds "=?" goes
    # through email.header, which encodes all of it and decodes nothing.
    if isinstance(value, str) and not _literal(value):
        encoded = Header(value, "utf-8", header_name=name)
    elif isinstance(value, Address) and not _literal(value.display_name):
        encoded = Header(value.display_name, "utf-8", header_name=name)
        encoded.append(f"<{value.addr_spec}>", "us-ascii")
    else:
        folded: str = policy.header_factory(name, value).fold(policy=policy)
        return folded.encode("ascii")
    return f"{name}: {encoded.encode(linesep=_POLICY.linesep)}\r\n".encode("ascii")


def _mailbox(name: str, address: str) -> Address:
    return Address(display_name=name, addr_spec=address)


def _to_line(name: str, address: str) -> bytes:
    """Return the To field for one recipient, as the email package writes it."""
    line = f"To: {name} <{address}>\r\n" if name else f"To: {address}\r\n"
    if len(line) <= _LINE + 2 and (not name or (_PLAIN_NAME.fullmatch(name) and _literal(name))):
        # As the package writes it (a test compares); ~200 µs less for send.py's loopback figure.
        return line.encode("ascii")
    return _header_line("To", _mailbox(name, address))


def header_address(email: str) -> str:
    """Return an address fit for a header (IDNA domain), or raise ValueError saying why not."""
    cleaned = _clean(email)
    local, at, domain = cleaned.rpartition("@")
    if not at:
        raise ValueError(f"{email!r} is not an email address")
    if not local.isascii():
        raise ValueError(f"{email!r} has a non-ASCII local part, which needs SMTPUTF8")
    if not domain.isascii():
        try:
            domain = domain.encode("idna").decode("ascii")
        except UnicodeError:
            raise ValueError(f"{email!r} has an invalid domain") from None
    address = f"{local}@{domain}"
    if not _ADDRESS.fullmatch(address):
        raise ValueError(f"{email!r} cannot be written in a header as a plain address")
    return address


def _recipient_address(recipient: Recipient) -> str:
    try:
        return header_address(recipient.email)
    except ValueError as exc:
        raise SubscriberError(str(exc), field="email",
                              path=f"subscriber {recipient.subscriber_id}") from None


def _quoted_printable(text: str) -> bytes:
    """Encode text (``\\n`` line ends) as quoted-printable with CRLF line ends."""
    return binascii.b2a_qp(text.encode("utf-8"), istext=True).replace(b"\n", b"\r\n")


def _piece(text: str) -> bytes:
    """Encode one piece of a body so that the next piece starts on a fresh line."""
    encoded = _quoted_printable(text)
    if encoded and not encoded.endswith(b"\r\n"):
        # A soft break decodes to nothing: pieces join seamlessly, and line lengths stay within
        # 76 because every piece is encoded from the start of a line.
        encoded += _SOFT_BREAK
    return encoded


def _escaped(values: Mapping[str, str]) -> dict[str, str]:
    """Return slot values escaped for HTML text and attribute values alike."""
    return {key: html.escape(value) for key, value in values.items()}


def _body_text(text: str) -> str:
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    return text if text.endswith("\n") else text + "\n"


class _Slotted:
    """A rendered text cut at its slots; the text between them is encoded once."""

    def __init__(self, text: str, origin: str) -> None:
        pieces = _SLOT.split(text)
        for static in pieces[0::2]:
            if _DAMAGED_SLOT.search(static):
                raise TemplateError(
                    "a filter changed subscriber.name, subscriber.email, unsubscribe_url or "
                    "preferences_url; "
                    "these are filled in per subscriber after rendering, print them as they are",
                    path=origin, field="personalisation")
        self.pieces = pieces
        self.slots = frozenset(pieces[1::2])
        self.encoded = [_piece(p) if i % 2 == 0 else b"" for i, p in enumerate(pieces)]
        # Every piece starts a line, so each can be made SMTP DATA content on its own.
        self.stuffed = [dot_stuffed(p) for p in self.encoded]

    def fill(self, values: Mapping[str, str]) -> str:
        """Return the text with each slot replaced by its value."""
        pieces = self.pieces.copy()
        pieces[1::2] = [values[key] for key in pieces[1::2]]
        return "".join(pieces)

    def encode(self, encoded_values: Mapping[str, bytes], *, wire: bool = False) -> bytes:
        """Return the quoted-printable text with each slot replaced by its encoded value.

        With ``wire``, the text and the values are SMTP DATA content (leading dots doubled).
        """
        encoded = (self.stuffed if wire else self.encoded).copy()
        encoded[1::2] = [encoded_values[key] for key in self.pieces[1::2]]
        return b"".join(encoded)


@dataclass(frozen=True)
class _Variant:
    """The subject and both body parts of one event for one kind of subscriber."""

    subject: _Slotted
    subject_line: bytes | None  # the encoded header when the subject has no slots
    text: _Slotted
    html: _Slotted
    html_bytes: int


class _LinkCollector(HTMLParser):
    """Collect the absolute http(s) and mailto links of an HTML fragment, in order, once each."""

    def __init__(self, base: str) -> None:
        super().__init__(convert_charrefs=True)
        self.base = base
        self.links: dict[str, Link] = {}
        self._href: str | None = None
        self._text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        """Start collecting the text of a link."""
        href = dict(attrs).get("href") if tag == "a" else None
        if href:
            self._href = urljoin(self.base, href.strip())
            self._text = []

    def handle_data(self, data: str) -> None:
        """Collect text inside a link."""
        if self._href is not None:
            self._text.append(data)

    def handle_endtag(self, tag: str) -> None:
        """Record a finished link."""
        if tag == "a" and self._href is not None:
            url, self._href = self._href, None
            if urlsplit(url).scheme in ("http", "https", "mailto") and url not in self.links:
                self.links[url] = Link(" ".join("".join(self._text).split()) or url, url)


def reflow(text: str, width: int = TEXT_WIDTH) -> str:
    """Rewrap prose, list items and quotes of plain or Markdown text; keep code and tables."""
    out: list[str] = []
    block: list[str] = []
    first = rest = ""  # the prefixes of the block's first and following lines

    def flush() -> None:
        """Wrap the pending block into ``out`` and start a new one."""
        if block:
            out.extend(textwrap.wrap(" ".join(block), width, initial_indent=first,
                                     subsequent_indent=rest, break_long_words=False,
                                     break_on_hyphens=False))
            block.clear()

    fenced = False
    for line in text.replace("\r\n", "\n").split("\n"):
        if _FENCE.match(line) or fenced:
            flush()
            fenced ^= bool(_FENCE.match(line))
            out.append(line)
        elif not line.strip() or _VERBATIM.match(line):
            flush()
            out.append(line.rstrip())
        elif item := _LIST_ITEM.match(line):
            flush()
            first, rest = item.group(1), " " * len(item.group(1))
            block.append(item.group(2))
        elif quote := _QUOTE.match(line):
            if not block or first != "> ":
                flush()
            first = rest = "> "
            block.append(quote.group(1))
        else:
            if not block:
                first = rest = ""
            block.append(line.strip())
            if line.endswith(("  ", "\\")):  # a Markdown hard line break
                flush()
    flush()
    return "\n".join(out).strip("\n")


def article_links(body_html: str, base: str) -> list[Link]:
    """Return the links of an article body, made absolute against ``base``."""
    collector = _LinkCollector(base)
    collector.feed(body_html)
    collector.close()
    return list(collector.links.values())


def _charset_first(document: str) -> str:
    """Move an HTML document's ``<meta charset>`` to the start of its ``<head>``."""
    # The CSS inliner writes the @media rules it keeps as the first child of <head>, which pushes
    # the declaration towards the end of the 1,024 bytes a parser scans for it.
    head = _HEAD.search(document)
    if head is None:
        return document
    meta = _META_CHARSET.search(document, head.end(), document.find("</head>", head.end()))
    if meta is None or meta.start() == head.end():
        return document
    declaration = meta.group().rstrip()
    document = document[:meta.start()] + document[meta.end():]
    return document[:head.end()] + declaration + "\n" + document[head.end():]


def _content_language(tag: str) -> list[tuple[str, object]]:
    """Return the Content-Language header (RFC 3282) naming a BCP 47 tag, if it is one."""
    tag = tag.strip()
    return [("Content-Language", tag)] if _LANGUAGE_TAG.fullmatch(tag) else []


class _Skeleton:
    """A multipart/alternative message serialised once, cut at the lines filled per recipient.

    A header given the value None is a slot named after it in lower case; the bodies of the
    plain and HTML parts are the slots ``text`` and ``html``. Every slot is a whole line, so
    what fills it is a header field or a body as its own encoder wrote it.
    """

    def __init__(self, headers: Iterable[tuple[str, object]], boundary: str) -> None:
        message = MIMEPart(policy=_POLICY)
        fields = {}
        for name, value in headers:
            message.set_raw(name, slot(name.lower()))
            if value is not None:
                fields[name.lower()] = _header_line(name, value)
        message["MIME-Version"] = "1.0"
        message["Content-Type"] = "multipart/alternative"
        for subtype, body in (("plain", "text"), ("html", "html")):
            part = MIMEPart(policy=_POLICY)
            part.set_content(slot(body) + "\n", subtype=subtype, charset="utf-8",
                             cte="quoted-printable")
            message.attach(part)
        message.set_boundary(boundary)
        pieces = _SLOT_LINE.split(message.as_bytes())
        self._pieces = pieces[:1]
        self._slots: list[str] = []
        for key, following in zip(pieces[1::2], pieces[2::2], strict=True):
            field = fields.get(key.decode("ascii"))
            if field is None:
                self._slots.append(key.decode("ascii"))
                self._pieces += (b"", following)
            else:
                self._pieces[-1] += field + following

    def fill(self, values: Mapping[str, bytes], end: bytes = b"") -> bytes:
        """Return the message with each slot's line replaced by its value, then ``end``."""
        pieces = self._pieces.copy()
        pieces[1::2] = [values[key] for key in self._slots]
        pieces.append(end)
        return b"".join(pieces)


def _boundary(*seed: object) -> str:
    # "=_" never occurs in quoted-printable text, so the boundary cannot collide with the body;
    # deriving it from the content keeps the bytes reproducible.
    return "=_" + hashlib.sha256(repr(seed).encode()).hexdigest()[:28]


class _DkimSigner:
    """Sign finished messages with the configured DKIM key."""

    def __init__(self, settings: DkimConfig, from_domain: str) -> None:
        # Imported where used: with its DNS library it costs a fifth of a second, which every
        # command importing this module (`publisher status`, say) would pay unsigned.
        import dkim

        self.path = settings.private_key
        try:
            self.selector = settings.selector.encode("ascii")
            self.domain = settings.domain.encode("idna")
        except UnicodeError:
            raise ConfigError("the DKIM selector and domain must be ASCII or a valid domain",
                              field="email.dkim") from None
        try:
            self.key = settings.private_key.read_bytes()
        except OSError as exc:
            raise ConfigError(f"cannot read the DKIM private key: {exc.strerror}",
                              path=self.path, field="email.dkim.private_key") from None
        try:
            dkim.crypto.parse_pem_private_key(self.key)
        except dkim.crypto.UnparsableKeyError as exc:
            raise ConfigError(f"not a PEM RSA private key ({exc})", path=self.path,
                              field="email.dkim.private_key") from None
        if from_domain != settings.domain and not from_domain.endswith("." + settings.domain):
            log.warning("DKIM domain %s does not cover the From domain %s: DMARC alignment "
                        "will fail", settings.domain, from_domain)

    def sign(self, message: bytes) -> bytes:
        """Return the message with a DKIM-Signature header in front."""
        import dkim  # loaded by __init__ already

        try:
            signature = dkim.sign(message, self.selector, self.domain, self.key,
                                  include_headers=[h.encode() for h in DKIM_HEADERS * 2])
        except dkim.DKIMException as exc:
            raise ConfigError(f"DKIM signing failed: {exc}", path=self.path,
                              field="email.dkim") from None
        return bytes(signature) + message


class Mailer:
    """Render editions and confirmation emails under one configuration and secret."""

    def __init__(self, config: Config, secret: bytes, env: jinja2.Environment | None = None, *,
                 clock: Clock | None = None) -> None:
        self.config = config
        self.secret = secret
        self.env = env or config_environment(config)
        self.clock = clock or utcnow
        email = config.email
        sender_name, self.envelope_sender = self._configured_mailbox("from", email.sender)
        self.domain = config.site.domain
        self.from_header: tuple[str, object] = ("From", _mailbox(sender_name,
                                                                 self.envelope_sender))
        self.reply_to_header: list[tuple[str, object]] = []
        if email.reply_to:
            self.reply_to_header.append(("Reply-To", _mailbox(
                *self._configured_mailbox("reply_to", email.reply_to))))
        self.unsubscribe_mailto: str | None = None
        if email.unsubscribe_mailto:
            _, self.unsubscribe_mailto = self._configured_mailbox(
                "unsubscribe_mailto", email.unsubscribe_mailto.removeprefix("mailto:"))
        site_title = _clean(config.site.title)
        label = re.sub(r"[^a-z0-9]+", "-", site_title.lower()).strip("-") or "publisher"
        # Written as a mailbox whose address is the list's id, the dot after its label as "@".
        line = _header_line("List-Id", _mailbox(site_title, f"{label}@{_dot_atom(self.domain)}"))
        at = line.rindex(b"@")
        self.list_id_line = line[:at] + b"." + line[at + 1:]
        self.signer = (_DkimSigner(email.dkim, self.envelope_sender.rpartition("@")[2])
                       if email.dkim else None)
        self.bounce_address: str | None = None
        if email.bounce_address:
            _, self.bounce_address = self._configured_mailbox("bounce_address",
                                                              email.bounce_address)
        # Compiled once, now: a syntax error stops start-up, not a send.
        self._subject = compile_string(self.env, email.subject, self._origin("subject"))
        self._confirm_subject = compile_string(self.env, email.confirm_subject,
                                               self._origin("confirm_subject"))
        self._digest_subject = compile_string(self.env, email.digest_subject,
                                              self._origin("digest_subject"))

    def _origin(self, key: str) -> str:
        return f"{self.config.path or CONFIG_NAME} [email] {key}"

    def return_path(self, delivery_id: int | None = None, *, slug: str = "", year: int = 0,
                    subscriber_id: int = 0) -> str:
        """Return the envelope sender: with a bounce address, tagged with the delivery (VERP)."""
        if self.bounce_address is None:
            return self.envelope_sender
        if delivery_id is None:
            return self.bounce_address
        local, _, domain = self.bounce_address.rpartition("@")
        tag = return_path_tag(self.secret, delivery_id, slug, year, subscriber_id)
        return f"{local}+{tag}@{domain}"

    def _configured_mailbox(self, key: str, value: str) -> tuple[str, str]:
        name, address = parseaddr(_clean(value))
        try:
            return _clean(name), header_address(address)
        except ValueError as exc:
            raise ConfigError(str(exc), path=self.config.path, field=f"email.{key}") from None

    def _template_path(self, name: str) -> str:
        return self.env.get_template(name).filename or name

    def _render_subject(self, key: str, template: jinja2.Template,
                        context: Mapping[str, Any]) -> str:
        return _clean(render_template(template, context, self._origin(key)))

    def _render_html(self, name: str, context: Mapping[str, Any]) -> str:
        try:
            inlined = str(css_inline.inline(render(self.env, name, context), keep_at_rules=True,
                                            load_remote_stylesheets=False))
        except css_inline.InlineError as exc:
            raise TemplateError(f"cannot inline its CSS: {exc}", path=name, field="css") from None
        return _charset_first(inlined)

    def edition(self, event: Event) -> Edition:
        """Render one event's email once, ready to be filled in for each recipient."""
        article, site = event.article, self.config.site
        web_url = site.article_url(article.slug)
        locale = language_of(article.lang, site.language)
        context = {
            "locale": locale,
            "article": article, "event": event, "site": site, "web_url": web_url,
            "body_html": Markup(absolute_links(article.body_html, web_url)),
            "body_text": reflow(article.body_text),
            "links": article_links(article.body_html, web_url),
            "unsubscribe_url": slot(UNSUBSCRIBE), "preferences_url": slot(PREFERENCES),
        }
        # Rendering and CSS inlining are the costly part, so they run once per event for two
        # variants (with and without a name); subscriber values are left as slots, the text
        # around them is encoded once, and each message is a join of precomputed bytes.
        named, anonymous = self.variants(context)
        return Edition(self, event, named, anonymous)

    def variants(self, context: Mapping[str, Any], *, html: str = HTML_TEMPLATE,
                 text: str = TEXT_TEMPLATE, subject: str = "subject"
                 ) -> tuple[_Variant, _Variant]:
        """Render a message's templates twice: for a subscriber with a name, and without."""
        named = TemplateSubscriber(slot(NAME), slot(EMAIL))
        anonymous = TemplateSubscriber(None, slot(EMAIL))
        return (self._variant({**context, "subscriber": named}, html, text, subject),
                self._variant({**context, "subscriber": anonymous}, html, text, subject))

    def _variant(self, context: Mapping[str, Any], html_name: str, text_name: str,
                 subject_key: str) -> _Variant:
        template = self._subject if subject_key == "subject" else self._digest_subject
        subject = _Slotted(self._render_subject(subject_key, template, context),
                           self._origin(subject_key))
        html_text = self._render_html(html_name, context)
        return _Variant(
            subject=subject,
            subject_line=None if subject.slots else _header_line("Subject", subject.fill({})),
            text=_Slotted(_body_text(render(self.env, text_name, context)),
                          self._template_path(text_name)),
            html=_Slotted(_body_text(html_text), self._template_path(html_name)),
            html_bytes=len(html_text.encode("utf-8")),
        )

    def date_line(self, when: datetime) -> bytes:
        """Return the Date header for an instant."""
        return _header_line("Date", when)

    def confirmation(self, recipient: Recipient, confirm_url: str) -> bytes:
        """Build the double opt-in email that asks a new subscriber to follow ``confirm_url``."""
        address = _recipient_address(recipient)
        name = _clean(recipient.name or "")
        context = {"site": self.config.site, "confirm_url": confirm_url,
                   "subscriber": TemplateSubscriber(name or None, address),
                   "confirm_hours": self.config.web.confirm_hours}
        subject = self._render_subject("confirm_subject", self._confirm_subject, context)
        text = _quoted_printable(_body_text(render(self.env, CONFIRM_TEXT_TEMPLATE, context)))
        html_part = _quoted_printable(_body_text(self._render_html(CONFIRM_HTML_TEMPLATE, context)))
        digest = hashlib.sha256(f"{recipient.subscriber_id}\n{confirm_url}".encode()).hexdigest()
        data = _Skeleton([
            self.from_header,
            ("To", _mailbox(name, address)),
            ("Subject", subject),
            ("Date", self.clock().astimezone(self.config.site.zone)),
            ("Message-ID", f"<confirm.{digest[:32]}@{_dot_atom(self.domain)}>"),
            *self.reply_to_header,
            ("Auto-Submitted", "auto-generated"),
            *_content_language(self.config.site.language),
        ], _boundary("confirm", digest)).fill({"text": text, "html": html_part})
        return self.signer.sign(data) if self.signer else data


class Edition:
    """One event's email, rendered once; :meth:`message` fills in one recipient cheaply.

    A daily digest is an Edition too, named by ``key`` and dated ``on`` instead of an event's.
    """

    def __init__(self, mailer: Mailer, event: Event | None, named: _Variant,
                 anonymous: _Variant, *, key: tuple[str, int] | None = None,
                 on: date | None = None, lang: str | None = None) -> None:
        self.event = event
        self.key = key or (event.key if event else ("", 0))
        self.on = on or (event.on if event else date.min)
        lang = lang or (event.article.lang if event else None)
        self._mailer = mailer
        self._named = named
        self._anonymous = anonymous
        config = mailer.config
        self._unsubscribe_base = unsubscribe_url(config, "")
        self._preferences_base = preferences_url(config, "")
        self._zones: dict[tuple[str | None, str | None], bytes] = {}
        slug, year = self.key
        # Header lines never start with a dot: the skeleton is the same in both forms.
        self._skeleton = _Skeleton([
            mailer.from_header, ("To", None), ("Subject", None), ("Date", None),
            ("Message-ID", None), *mailer.reply_to_header, ("List-Id", None),
            ("List-Unsubscribe", None),
            *_content_language(lang or config.site.language),
            ("List-Unsubscribe-Post", "List-Unsubscribe=One-Click"),
            ("Auto-Submitted", "auto-generated"),
        ], _boundary(*self.key))
        # Fields that differ per recipient only in a value of fixed shape are written once with
        # a stand-in and cut at it.
        self._message_id_value = _message_id_parts(slug, year, mailer.domain)
        self._message_id = _header_line("Message-ID", _DIGEST.join(self._message_id_value)).split(
            _DIGEST.encode())
        unsubscribe = f"<{self._unsubscribe_base}{_TOKEN}>"
        if mailer.unsubscribe_mailto:
            unsubscribe += f", <mailto:{mailer.unsubscribe_mailto}?subject=unsubscribe%20{_TOKEN}>"
        self._list_unsubscribe = _header_line("List-Unsubscribe", unsubscribe,
                                              _URL_POLICY).split(_TOKEN.encode())
        self.size_warning: str | None = None
        size = max(named.html_bytes, anonymous.html_bytes)
        if size > GMAIL_CLIP_BYTES:
            self.size_warning = (
                f"{slug} {year}: the HTML part is {size // 1024} KB, over "
                f"Gmail's {GMAIL_CLIP_BYTES // 1024} KB limit; Gmail will clip the message")
            log.warning("%s", self.size_warning)

    def _date_line(self, zone_name: str | None, subscriber_id: int, at: str | None) -> bytes:
        line = self._zones.get((zone_name, at))
        if line is None:
            site = self._mailer.config.site
            try:
                zone = ZoneInfo(zone_name) if zone_name else site.zone
            except (ZoneInfoNotFoundError, ValueError):
                raise SubscriberError(f"unknown time zone {zone_name!r}", field="timezone",
                                      path=f"subscriber {subscriber_id}") from None
            # The Date is the instant the edition falls due for this subscriber, so a resend of
            # the same Message-ID carries the same bytes.
            due = publish_instant(self.on, time.fromisoformat(at) if at else site.publish_time,
                                  zone)
            line = self._mailer.date_line(due.astimezone(zone))
            self._zones[(zone_name, at)] = line
        return line

    def message_id(self, recipient: Recipient) -> str:
        """Return the Message-ID this recipient's message carries."""
        return self._message_id_of(_message_digest(*self.key, recipient.email))

    def _message_id_of(self, digest: str) -> str:
        return digest.join(self._message_id_value)

    def _values(self, recipient: Recipient) -> tuple[_Variant, dict[str, str], str]:
        address = _recipient_address(recipient)
        name = _clean(recipient.name) if recipient.name else ""
        token = unsubscribe_token(self._mailer.secret, recipient.unsubscribe_key)
        values = {NAME: name, EMAIL: address, UNSUBSCRIBE: self._unsubscribe_base + token,
                  PREFERENCES: self._preferences_base + token}
        return (self._named if name else self._anonymous), values, token

    def preview(self, recipient: Recipient) -> Preview:
        """Return the subject and both parts as this recipient would read them."""
        variant, values, _ = self._values(recipient)
        return Preview(_clean(variant.subject.fill(values)), variant.text.fill(values),
                       variant.html.fill(_escaped(values)))

    def message(self, recipient: Recipient) -> bytes:
        """Return the complete RFC 5322 message for one recipient."""
        data = self._build(recipient, _message_digest(*self.key, recipient.email), wire=False)
        return self._mailer.signer.sign(data) if self._mailer.signer else data

    def content(self, recipient: Recipient) -> tuple[bytes, bool, str]:
        """Return one recipient's message, whether it is SMTP DATA content, and its Message-ID.

        Unsigned, it is DATA content, joined from pieces dot-stuffed once per edition: that
        spares the transport a pass over every byte of every message.
        """
        digest = _message_digest(*self.key, recipient.email)
        if self._mailer.signer:
            data = self._mailer.signer.sign(self._build(recipient, digest, wire=False))
            return data, False, self._message_id_of(digest)
        return self._build(recipient, digest, wire=True), True, self._message_id_of(digest)

    def _build(self, recipient: Recipient, digest: str, *, wire: bool) -> bytes:
        variant, values, token = self._values(recipient)
        text_values: dict[str, bytes] = {}
        html_values: dict[str, bytes] = {}
        for key, value in values.items():
            # Each value encoded once for both parts unless escaping changes it (rarely).
            piece = _piece(value)
            escaped = html.escape(value)
            html_piece = piece if escaped == value else _piece(escaped)
            if wire:
                piece = dot_stuffed(piece)
                html_piece = piece if escaped == value else dot_stuffed(html_piece)
            text_values[key] = piece
            html_values[key] = html_piece
        return self._skeleton.fill({
            "to": _to_line(values[NAME], values[EMAIL]),
            "subject": variant.subject_line or _header_line(
                "Subject", _clean(variant.subject.fill(values))),
            "date": self._date_line(recipient.timezone, recipient.subscriber_id, recipient.at),
            "message-id": digest.encode().join(self._message_id),
            "list-id": self._mailer.list_id_line,
            "list-unsubscribe": token.encode().join(self._list_unsubscribe),
            "text": variant.text.encode(text_values, wire=wire),
            "html": variant.html.encode(html_values, wire=wire)}, _END_OF_DATA if wire else b"")
