"""Hand finished messages to a maildir or an SMTP server and report what became of each one.

A transport never touches the ledger: it takes envelopes and yields one :class:`Outcome` per
envelope, as soon as the server (or the disk) has answered for it.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import mailbox
import queue
import re
import smtplib
import ssl
import threading
import time
from collections.abc import Callable, Generator, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

from publisher.config import Config, SmtpConfig
from publisher.errors import TransportError

logger = logging.getLogger(__name__)

OutcomeStatus = Literal["sent", "deferred", "failed", "bounced"]
Stage = Literal["connect", "mail", "rcpt", "data"]
# RFC 3463 enhanced status code at the start of a reply's text, e.g. "5.1.1".
_ENHANCED = re.compile(r"^([245])\.(\d{1,3})\.(\d{1,3})(?!\d)")
# 5.1.7 and 5.1.8 are about our sender address, not the subscriber's mailbox.
_SENDER_PROBLEMS = frozenset({"7", "8"})
_BARE_LF = re.compile(rb"(?<!\r)\n")


@dataclass(frozen=True)
class Envelope:
    """One message for one recipient, tied to the delivery row it fulfils."""

    delivery_id: int
    sender: str
    recipient: str
    data: bytes
    # The same message as SMTP DATA content (CRLF, leading dots doubled, ending CRLF.CRLF),
    # where its maker can prepare that for less than a pass over every byte.
    wire: bytes | None = None


@dataclass(frozen=True)
class Outcome:
    """What became of one envelope: the status, the server's reply code (if any) and text."""

    status: OutcomeStatus
    code: int | None
    reply: str


class Transport(Protocol):
    """Something that delivers envelopes and says, per envelope, how it went."""

    def send(self, envelopes: Iterable[Envelope]) -> Iterator[tuple[Envelope, Outcome]]:
        """Deliver the envelopes, yielding each with its outcome as soon as it is known."""
        ...

    def close(self) -> None:
        """Release connections and threads."""
        ...


def classify(code: int, reply: str, stage: Stage) -> Outcome:
    """Map an SMTP reply to an outcome: 2xx sent, 4xx deferred, 5xx failed, 5.1.x bounced."""
    text = f"{code} {reply}".strip()
    if 200 <= code < 300:
        return Outcome("sent", code, text)
    if 500 <= code < 600:
        enhanced = _ENHANCED.match(reply)
        # Only a recipient-stage 5.1.x says the mailbox itself is bad; after MAIL FROM the same
        # code is about our sender, and a bare 550 may be a policy block rather than a dead box.
        if (enhanced and enhanced.group(1) == "5" and enhanced.group(2) == "1"
                and enhanced.group(3) not in _SENDER_PROBLEMS and stage != "mail"):
            return Outcome("bounced", code, text)
        return Outcome("failed", code, text)
    # 4xx, and anything a broken server might say outside the defined classes: try again later.
    return Outcome("deferred", code, text)


def to_crlf(data: bytes) -> bytes:
    """Return message bytes with CRLF line ends, as SMTP requires."""
    if data.count(b"\n") == data.count(b"\r\n"):
        return data
    return _BARE_LF.sub(b"\r\n", data)


# What each pipelined command's reply must be for the transaction to go on.
_PIPELINED_REPLIES: tuple[tuple[Stage, frozenset[int]], ...] = (
    ("mail", frozenset({250})), ("rcpt", frozenset({250, 251})), ("data", frozenset({354})))


def dot_stuffed(data: bytes) -> bytes:
    """Return CRLF text that starts a line with the dots that begin its lines doubled."""
    data = data.replace(b"\r\n.", b"\r\n..")
    return b"." + data if data.startswith(b".") else data


def data_content(data: bytes) -> bytes:
    """Return CRLF-ended message bytes as DATA content: leading dots doubled, then ``.``."""
    data = dot_stuffed(data)
    if not data.endswith(b"\r\n"):
        data += b"\r\n"
    return data + b".\r\n"


def _prepared(envelope: Envelope) -> tuple[bytes, bytes]:
    """Return an envelope's message with CRLF line ends, and as DATA content."""
    if envelope.wire is not None:
        return envelope.data, envelope.wire
    data = to_crlf(envelope.data)
    return data, data_content(data)


def _reply_text(reply: bytes | str) -> str:
    text = reply.decode("utf-8", "replace") if isinstance(reply, bytes) else reply
    return " ".join(text.split())


# ---------------------------------------------------------------------------------------------
# Maildir
# ---------------------------------------------------------------------------------------------


class MaildirTransport:
    """Write each message into a local maildir: nothing leaves the machine."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._box = mailbox.Maildir(path, create=True)
            # mailbox makes these only in a folder it creates; an existing empty one (say, the
            # mount point of a disk of its own) needs them too.
            for folder in ("tmp", "new", "cur"):
                (path / folder).mkdir(exist_ok=True)
        except OSError as exc:
            raise TransportError(f"cannot create the maildir {path}: {exc.strerror}") from None

    def send(self, envelopes: Iterable[Envelope]) -> Iterator[tuple[Envelope, Outcome]]:
        """Store each message as a file in ``new/``."""
        for envelope in envelopes:
            try:
                # Maildir files conventionally end lines with LF, as an MTA would store them.
                key = self._box.add(envelope.data.replace(b"\r\n", b"\n"))
            except OSError as exc:  # e.g. a full disk: the message waits for its retry
                yield envelope, Outcome("deferred", None,
                                        f"cannot write to {self.path}: {exc.strerror or exc}")
            else:
                yield envelope, Outcome("sent", None, f"stored in {self.path} as {key}")

    def close(self) -> None:
        """Nothing to release."""


# ---------------------------------------------------------------------------------------------
# SMTP
# ---------------------------------------------------------------------------------------------


class RateLimiter:
    """Space messages evenly at ``per_second`` across all threads (a bucket of one token)."""

    def __init__(self, per_second: float, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.interval = 1.0 / per_second if per_second > 0 else 0.0
        self._clock = clock
        self._sleep = sleep
        self._next = 0.0
        self._lock = threading.Lock()

    def wait(self) -> None:
        """Block until the caller may send one message."""
        if not self.interval:
            return
        with self._lock:
            now = self._clock()
            slot = max(now, self._next)
            self._next = slot + self.interval
        # Sleep outside the lock: each thread has its own slot already.
        if slot > now:
            self._sleep(slot - now)


def ehlo_name(domain: str) -> str:
    """Return the name to greet the server with: the site's host, or an address literal."""
    try:
        address = ipaddress.ip_address(domain)
    except ValueError:
        return domain
    return f"[IPv6:{address}]" if address.version == 6 else f"[{address}]"


class SmtpConnection:
    """One SMTP session: opened on first use, reused across messages, reopened after a drop."""

    def __init__(self, settings: SmtpConfig, local_hostname: str) -> None:
        self.settings = settings
        self.local_hostname = local_hostname
        self._smtp: smtplib.SMTP | None = None
        self._stage: Stage = "connect"
        # Outcomes learnt after the caller stopped reading; handed out by the next stream.
        self.leftover: list[tuple[Envelope, Outcome]] = []

    @property
    def stage(self) -> Stage:
        """Return the step the current or last message reached."""
        return self._stage

    @property
    def where(self) -> str:
        """Return ``host:port`` for messages."""
        return f"{self.settings.host}:{self.settings.port}"

    def _open(self) -> smtplib.SMTP:
        s = self.settings
        context = ssl.create_default_context()
        smtp: smtplib.SMTP
        if s.security == "ssl":
            smtp = smtplib.SMTP_SSL(s.host, s.port, local_hostname=self.local_hostname,
                                    timeout=s.timeout, context=context)
        else:
            smtp = smtplib.SMTP(s.host, s.port, local_hostname=self.local_hostname,
                                timeout=s.timeout)
        try:
            smtp.ehlo_or_helo_if_needed()
            if s.security == "starttls":
                # Raises when the server does not offer STARTTLS: never fall back to plain text.
                smtp.starttls(context=context)
                smtp.ehlo()
            if s.username:
                smtp.login(s.username, s.password or "")
        except BaseException:
            smtp.close()
            raise
        logger.debug("connected to %s", self.where)
        return smtp

    def _discard(self) -> None:
        if self._smtp is not None:
            self._smtp.close()
            self._smtp = None

    def _reset(self, smtp: smtplib.SMTP) -> None:
        try:
            smtp.rset()
        except (smtplib.SMTPException, OSError):
            self._discard()

    def deliver(self, envelope: Envelope) -> Outcome:
        """Send one message; every failure becomes an outcome, never an exception."""
        for _, outcome in self.stream([envelope]):
            return outcome
        raise AssertionError("unreachable: one envelope has one outcome")

    def stream(self, envelopes: Iterable[Envelope], pace: Callable[[], None] | None = None
               ) -> Iterator[tuple[Envelope, Outcome]]:
        """Send messages one after another, yielding each with its outcome, in their order.

        Every failure becomes an outcome, never an exception. Where the server offers
        PIPELINING (RFC 2920), a message's MAIL, RCPT and DATA go out in one write right behind
        the previous message's content, and the previous outcome is handed back while the
        server takes in that content: the caller records one message while the next one
        travels, so at most two messages are unrecorded at any moment. ``pace`` is called
        before each message goes out (the rate limit).
        """
        source = iter(envelopes)
        current = next(source, None)
        finished: tuple[Envelope, Outcome] | None = None  # handed back once the next is sent
        announced = retrying = False  # announced: current's MAIL, RCPT and DATA went out
        # The next message's bytes (CRLF, then dot-stuffed), prepared while the server works.
        ready: tuple[Envelope, bytes, bytes] | None = None
        while current is not None:
            message = current
            following: Envelope | None = None
            ahead = False  # following's MAIL, RCPT and DATA went out behind current's content
            fresh = self._smtp is None
            self._stage = "connect"
            try:
                if self._smtp is None:
                    self._smtp = self._open()
                smtp = self._smtp
                if ready is not None and ready[0] is message:
                    _, data, wire = ready
                else:
                    data, wire = _prepared(message)
                if not smtp.has_extn("pipelining"):
                    if pace is not None:
                        pace()
                    outcome = self._transaction(smtp, message, data)
                else:
                    self._stage = "mail"
                    refusal = None if announced else self._announce(smtp, message, data, pace)
                    refusal = refusal or self._envelope_replies(smtp)
                    if refusal is None:
                        # From here a lost connection may have taken the message: no retry.
                        smtp.send(wire)
                        following = next(source, None)
                        if following is not None:
                            following_data, following_wire = _prepared(following)
                            ahead = self._announce(smtp, following, following_data, pace) is None
                            ready = (following, following_data, following_wire)
                        if finished is not None:
                            yield finished
                            finished = None
                        self._stage = "data"
                        code, reply = smtp.getreply()
                        finished = (message, classify(code, _reply_text(reply), "data"))
                        if code == 421:
                            self._discard()
                            ahead = False
                        current, announced, retrying = following, ahead, False
                        continue
                    outcome = refusal
            except GeneratorExit:
                self._abandon(message, ahead)
                raise
            except smtplib.SMTPResponseException as exc:
                # Refused while connecting (greeting, STARTTLS, login): nothing was said about
                # this message, so even a 5xx here (e.g. bad credentials) only defers it.
                self._discard()
                outcome = Outcome("deferred", exc.smtp_code,
                                  f"{self.where} refused the session: {exc.smtp_code} "
                                  f"{_reply_text(exc.smtp_error)}")
            except (smtplib.SMTPException, OSError) as exc:
                self._discard()
                # A reused connection the server closed while idle fails on MAIL FROM, before
                # anything was sent: reconnecting and trying once more cannot duplicate.
                if self.stage == "mail" and not fresh and not retrying:
                    announced, retrying = False, True
                    continue
                outcome = self._lost(exc)
            try:
                if finished is not None:
                    yield finished
                    finished = None
            except GeneratorExit:
                self.leftover.append((message, outcome))
                raise
            yield message, outcome
            # A message announced behind a lost one was never sent: it goes out afresh.
            current = following if following is not None else next(source, None)
            announced = retrying = False
        if finished is not None:
            yield finished

    def _lost(self, exc: BaseException) -> Outcome:
        what = ("cannot connect to" if self.stage == "connect"
                else f"connection lost during {self.stage.upper()} with")
        reason = str(exc) or type(exc).__name__
        return Outcome("deferred", None, f"{what} {self.where}: {reason}")

    def _abandon(self, envelope: Envelope, announced_next: bool) -> None:
        """Keep the outcome of a message whose content is on its way when the caller stops."""
        smtp = self._smtp
        if smtp is None:
            return
        try:
            self._stage = "data"
            code, reply = smtp.getreply()
            outcome = classify(code, _reply_text(reply), "data")
        except (smtplib.SMTPException, OSError) as exc:
            code, outcome = 0, self._lost(exc)
        self.leftover.append((envelope, outcome))
        if announced_next or code in (0, 421):
            # The server now waits for the content of a message that will not come: only
            # closing the connection ends that transaction without sending anything.
            self._discard()

    def _mail_options(self, smtp: smtplib.SMTP, envelope: Envelope, data: bytes
                      ) -> list[str] | Outcome:
        """Return the MAIL FROM parameters the message needs, or why it cannot be sent."""
        options: list[str] = []
        if not data.isascii() and smtp.has_extn("8bitmime"):
            options.append("BODY=8BITMIME")
        if not (envelope.sender.isascii() and envelope.recipient.isascii()):
            if not smtp.has_extn("smtputf8"):
                return Outcome("failed", None,
                               f"{self.where} does not offer SMTPUTF8, needed for this address")
            options.append("SMTPUTF8")
        return options

    def _transaction(self, smtp: smtplib.SMTP, envelope: Envelope, data: bytes) -> Outcome:
        """Send one message one command at a time, to a server without PIPELINING."""
        options = self._mail_options(smtp, envelope, data)
        if isinstance(options, Outcome):
            return options
        self._stage = "mail"
        code, reply = smtp.mail(envelope.sender, options)
        if code != 250:
            return self._refused(smtp, code, reply, "mail")
        self._stage = "rcpt"
        code, reply = smtp.rcpt(envelope.recipient)
        if code not in (250, 251):
            return self._refused(smtp, code, reply, "rcpt")
        self._stage = "data"
        try:
            code, reply = smtp.data(data)
        except smtplib.SMTPDataError as exc:
            return self._refused(smtp, exc.smtp_code, exc.smtp_error, "data")
        if code == 421:
            self._discard()
        return classify(code, _reply_text(reply), "data")

    def _announce(self, smtp: smtplib.SMTP, envelope: Envelope, data: bytes,
                  pace: Callable[[], None] | None) -> Outcome | None:
        """Send one message's MAIL, RCPT and DATA in one write; an outcome says it cannot go."""
        options = self._mail_options(smtp, envelope, data)
        if isinstance(options, Outcome):
            return options
        if pace is not None:
            pace()
        encoding = "utf-8" if "SMTPUTF8" in options else "ascii"
        extra = "".join(f" {option}" for option in options)
        # The addresses were validated when they entered the ledger and the configuration.
        smtp.send(f"MAIL FROM:<{envelope.sender}>{extra}\r\nRCPT TO:<{envelope.recipient}>\r\n"
                  "DATA\r\n".encode(encoding))
        return None

    def _envelope_replies(self, smtp: smtplib.SMTP) -> Outcome | None:
        """Read the replies to MAIL, RCPT and DATA; None when the content may follow.

        Each reply is judged for its own command: a refused RCPT is reported with the RCPT
        reply, not with the DATA refusal that follows from it.
        """
        refusal: tuple[int, bytes, Stage] | None = None
        for stage, accepted in _PIPELINED_REPLIES:
            self._stage = stage
            code, reply = smtp.getreply()
            if refusal is None and code not in accepted:
                refusal = (code, reply, stage)
            if code == 421:  # the server is closing: the replies after this one never come
                self._discard()
                first_code, first_reply, first_stage = refusal or (code, reply, stage)
                return classify(first_code, _reply_text(first_reply), first_stage)
        if refusal is None:
            return None
        if code == 354:
            # DATA was accepted after the envelope was refused: the server waits for content.
            # An empty message ends it; with no recipient it goes nowhere.
            smtp.send(b".\r\n")
            smtp.getreply()
        return self._refused(smtp, *refusal)

    def _refused(self, smtp: smtplib.SMTP, code: int, reply: bytes | str, stage: Stage
                 ) -> Outcome:
        if code == 421:  # the server is closing the connection
            self._discard()
        else:
            self._reset(smtp)
        return classify(code, _reply_text(reply), stage)

    def close(self) -> None:
        """Say QUIT and close the socket."""
        if self._smtp is not None:
            with contextlib.suppress(smtplib.SMTPException, OSError):
                self._smtp.quit()
            self._discard()


class SmtpTransport:
    """Send through an SMTP server over ``connections`` parallel sessions, rate-limited.

    One connection is driven by the caller's own thread: nothing is handed over ahead and no
    thread waits for the interpreter lock while the ledger is written. Several connections each
    get a thread owning one :class:`SmtpConnection`; envelopes are then taken lazily from the
    caller's iterable, at most two per connection ahead, so memory stays flat. Connections are
    kept open across batches.
    """

    def __init__(self, settings: SmtpConfig, local_hostname: str,
                 limiter: RateLimiter | None = None) -> None:
        if settings.username and settings.password is None:
            raise TransportError("[email.smtp] username is set but PUBLISHER_SMTP_PASSWORD is "
                                 "not: export the password in that environment variable")
        self.settings = settings
        self.local_hostname = local_hostname
        self.limiter = limiter or RateLimiter(settings.rate_limit)
        self._inbox: queue.SimpleQueue[Envelope | None] = queue.SimpleQueue()
        self._outbox: queue.SimpleQueue[tuple[Envelope, Outcome]] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._unreported: list[tuple[Envelope, Outcome]] = []
        self._inline = (SmtpConnection(settings, local_hostname)
                        if settings.connections == 1 else None)

    def _start(self) -> None:
        if self._threads:
            return
        for number in range(self.settings.connections):
            connection = SmtpConnection(self.settings, self.local_hostname)
            thread = threading.Thread(target=self._work, args=(connection,),
                                      name=f"smtp-{number}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def _deliver(self, connection: SmtpConnection, envelope: Envelope) -> Outcome:
        self.limiter.wait()
        try:
            return connection.deliver(envelope)
        except Exception as exc:
            # A bug here must still produce an outcome, or the caller would wait forever.
            logger.exception("sending delivery %d failed", envelope.delivery_id)
            return Outcome("deferred", None, f"internal error: {exc!r}")

    def _work(self, connection: SmtpConnection) -> None:
        while (envelope := self._inbox.get()) is not None:
            self._outbox.put((envelope, self._deliver(connection, envelope)))
        connection.close()

    def send(self, envelopes: Iterable[Envelope]
             ) -> Generator[tuple[Envelope, Outcome], None, None]:
        """Deliver the envelopes, yielding each one's outcome in the order they complete."""
        if self._inline is not None:
            return self._send_inline(self._inline, envelopes)
        return self._send_threaded(envelopes)

    def _send_inline(self, connection: SmtpConnection, envelopes: Iterable[Envelope]
                     ) -> Generator[tuple[Envelope, Outcome], None, None]:
        while connection.leftover:
            yield connection.leftover.pop(0)
        yield from connection.stream(envelopes, self.limiter.wait)

    def _send_threaded(self, envelopes: Iterable[Envelope]
                       ) -> Generator[tuple[Envelope, Outcome], None, None]:
        self._start()
        while self._unreported:
            yield self._unreported.pop()
        window = 2 * len(self._threads)
        source = iter(envelopes)
        in_flight = 0
        more = True
        try:
            while True:
                while more and in_flight < window:
                    envelope = next(source, None)
                    if envelope is None:
                        more = False
                    else:
                        self._inbox.put(envelope)
                        in_flight += 1
                if not in_flight:
                    return
                result = self._outbox.get()
                in_flight -= 1
                yield result
        finally:
            # A caller that stops early still owns the messages already handed over: keep their
            # outcomes for the next call rather than lose what the server said.
            for _ in range(in_flight):
                self._unreported.append(self._outbox.get())

    def close(self) -> None:
        """Stop the threads, each saying QUIT to its server."""
        if self._inline is not None:
            self._inline.close()
        for _ in self._threads:
            self._inbox.put(None)
        for thread in self._threads:
            thread.join()
        self._threads.clear()


def open_transport(config: Config) -> Transport:
    """Return the transport named by ``[email] transport``."""
    if config.email.transport == "smtp":
        return SmtpTransport(config.email.smtp, ehlo_name(config.site.domain))
    return MaildirTransport(config.email.maildir)
