"""Hand finished messages to a maildir or an SMTP server and report what became of each one.

A transport never touches the ledger: it takes envelopes and yields one :class:`Outcome` per
envelope, as soon as the server (or the disk) has answered for it.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import ipaddress
import logging
import mailbox
import re
import socket
import ssl
import time
from collections import deque
from collections.abc import Awaitable, Callable, Generator, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Literal, Protocol, cast

from publisher.config import Config, SmtpConfig
from publisher.errors import TransportError

logger = logging.getLogger(__name__)

# "unsent": the send was asked to stop before the message went out; the row goes back.
OutcomeStatus = Literal["sent", "deferred", "failed", "bounced", "unsent"]
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
    # ``data`` is SMTP DATA content already (CRLF, leading dots doubled, ending CRLF.CRLF),
    # as its maker can prepare it for less than a pass over every byte.
    stuffed: bool = False


@dataclass(frozen=True)
class Outcome:
    """What became of one envelope: the status, the server's reply code (if any) and text."""

    status: OutcomeStatus
    code: int | None
    reply: str


UNSENT = Outcome("unsent", None, "not sent: the send was asked to stop")


class Stop(Protocol):
    """A flag that asks a send to stop after the messages in flight (a threading.Event)."""

    def is_set(self) -> bool:
        """Return whether the send should stop."""
        ...


class Transport(Protocol):
    """Something that delivers envelopes and says, per envelope, how it went."""

    def send(self, envelopes: Iterable[Envelope], stop: Stop | None = None
             ) -> Iterator[tuple[Envelope, Outcome]]:
        """Deliver the envelopes, yielding each with its outcome as soon as it is known.

        Once ``stop`` is set, no message's content goes out any more: each envelope not sent
        yet comes back with the outcome ``unsent``.
        """
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


def _prepared(envelope: Envelope) -> bytes:
    """Return an envelope's message as DATA content."""
    return envelope.data if envelope.stuffed else data_content(to_crlf(envelope.data))


def _unstuffed(content: bytes) -> bytes:
    """Return the message that DATA content carries: the inverse of :func:`data_content`."""
    data = content[:-3]
    return (data[1:] if data.startswith(b"..") else data).replace(b"\r\n..", b"\r\n.")


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

    def send(self, envelopes: Iterable[Envelope], stop: Stop | None = None
             ) -> Iterator[tuple[Envelope, Outcome]]:
        """Store each message as a file in ``new/`` (one at a time: ``stop`` has no effect)."""
        for envelope in envelopes:
            try:
                # Maildir files conventionally end lines with LF, as an MTA would store them.
                data = _unstuffed(envelope.data) if envelope.stuffed else envelope.data
                key = self._box.add(data.replace(b"\r\n", b"\n"))
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
    """Space messages evenly at ``per_second`` across all connections (a bucket of one token)."""

    def __init__(self, per_second: float, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> None:
        self.interval = 1.0 / per_second if per_second > 0 else 0.0
        self._clock = clock
        self._sleep = sleep
        self._next = 0.0

    def reserve(self) -> float:
        """Take the next free slot; return how many seconds until it comes."""
        if not self.interval:
            return 0.0
        now = self._clock()
        slot = max(now, self._next)
        self._next = slot + self.interval
        return slot - now

    async def wait(self) -> None:
        """Wait until the caller may send one message."""
        delay = self.reserve()
        if delay > 0:
            await self._sleep(delay)


def ehlo_name(domain: str) -> str:
    """Return the name to greet the server with: the site's host, or an address literal."""
    try:
        address = ipaddress.ip_address(domain)
    except ValueError:
        return domain
    return f"[IPv6:{address}]" if address.version == 6 else f"[{address}]"


class SmtpProtocolError(TransportError):
    """The server closed the connection, or answered outside the protocol (never leaves here)."""


class SessionRefused(TransportError):
    """The server refused the session itself: greeting, STARTTLS or login (never leaves here)."""

    def __init__(self, code: int, reply: str) -> None:
        super().__init__(f"{code} {reply}")
        self.code = code
        self.reply = reply


_LONGEST_LINE = 65536
# What ends a session: the network, TLS, a timeout (all OSError), or the server's own words.
_SESSION_ERRORS = (OSError, SmtpProtocolError, ValueError)

Take = Callable[[], "Envelope | None"]
Report = Callable[[Envelope, Outcome], Awaitable[None]]
Pace = Callable[[], Awaitable[None]]


class _Wire(Protocol):
    """The bytes under one SMTP session: a blocking socket, or asyncio streams."""

    async def connect(self, host: str, port: int, context: ssl.SSLContext | None) -> None:
        """Open the connection (with TLS from the first byte when ``context`` is given)."""
        ...

    async def start_tls(self, context: ssl.SSLContext, host: str) -> None:
        """Switch the open connection to TLS."""
        ...

    def write(self, data: bytes) -> None:
        """Send ``data`` (or queue it, for :meth:`flush`)."""
        ...

    async def flush(self) -> None:
        """Wait until what was written is on its way."""
        ...

    async def readline(self) -> bytes:
        """Return the next line, or b"" when the server closed the connection."""
        ...

    def close(self) -> None:
        """Close the connection at once."""
        ...


class _Socket:
    """A blocking socket: one connection driven by the caller's own thread, no event loop.

    Its coroutines never wait for anything but the socket, so they finish in one step.
    """

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self._socket: socket.socket | None = None
        self._file: BinaryIO | None = None

    async def connect(self, host: str, port: int, context: ssl.SSLContext | None) -> None:
        """Open the connection (with TLS from the first byte when ``context`` is given)."""
        opened = socket.create_connection((host, port), self.timeout)
        try:
            self._socket = (context.wrap_socket(opened, server_hostname=host)
                            if context is not None else opened)
        except BaseException:
            opened.close()
            raise
        self._file = self._socket.makefile("rb")

    async def start_tls(self, context: ssl.SSLContext, host: str) -> None:
        """Switch the open connection to TLS."""
        assert self._socket is not None and self._file is not None
        self._file.close()
        self._socket = context.wrap_socket(self._socket, server_hostname=host)
        self._file = self._socket.makefile("rb")

    def write(self, data: bytes) -> None:
        """Send ``data``."""
        assert self._socket is not None
        self._socket.sendall(data)

    async def flush(self) -> None:
        """Nothing is queued."""

    async def readline(self) -> bytes:
        """Return the next line, or b"" when the server closed the connection."""
        assert self._file is not None
        return self._file.readline(_LONGEST_LINE)

    def close(self) -> None:
        """Close the connection at once."""
        if self._file is not None:
            self._file.close()
        if self._socket is not None:
            self._socket.close()
        self._socket = self._file = None


class _Streams:
    """asyncio streams: one of several connections driven by one event loop."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def connect(self, host: str, port: int, context: ssl.SSLContext | None) -> None:
        """Open the connection (with TLS from the first byte when ``context`` is given)."""
        async with asyncio.timeout(self.timeout):
            self._reader, self._writer = await asyncio.open_connection(
                host, port, ssl=context, server_hostname=host if context is not None else None,
                limit=_LONGEST_LINE)

    async def start_tls(self, context: ssl.SSLContext, host: str) -> None:
        """Switch the open connection to TLS."""
        assert self._writer is not None
        async with asyncio.timeout(self.timeout):
            await self._writer.start_tls(context, server_hostname=host)

    def write(self, data: bytes) -> None:
        """Queue ``data``; the event loop sends it."""
        assert self._writer is not None
        self._writer.write(data)

    async def flush(self) -> None:
        """Wait until the queue is short enough."""
        assert self._writer is not None
        async with asyncio.timeout(self.timeout):
            await self._writer.drain()

    async def readline(self) -> bytes:
        """Return the next line, or b"" when the server closed the connection."""
        assert self._reader is not None
        async with asyncio.timeout(self.timeout):
            return await self._reader.readline()

    def close(self) -> None:
        """Close the connection at once."""
        if self._writer is not None:
            self._writer.close()
        self._reader = self._writer = None


class SmtpConnection:
    """One SMTP session: opened on first use, reused across messages, reopened after a drop.

    Commands and replies follow RFC 5321; TLS comes from the standard library (implicit, or
    after STARTTLS, never falling back to plain text), login by AUTH PLAIN or LOGIN. The same
    coroutines drive a blocking socket (one connection, in the caller's thread) and asyncio
    streams (several connections in one event loop).
    """

    def __init__(self, settings: SmtpConfig, local_hostname: str, wire: _Wire) -> None:
        self.settings = settings
        self.local_hostname = local_hostname
        self._wire = wire
        self._open_now = False
        self._features: dict[str, str] = {}  # EHLO keywords (lower case) and their parameters
        self.stage: Stage = "connect"

    @property
    def where(self) -> str:
        """Return ``host:port`` for messages."""
        return f"{self.settings.host}:{self.settings.port}"

    def offers(self, keyword: str) -> bool:
        """Return whether the server announced the EHLO keyword (lower case)."""
        return keyword in self._features

    # -- the wire --------------------------------------------------------------------------

    def _write(self, data: bytes) -> None:
        if not self._open_now:
            raise SmtpProtocolError("the connection is closed")
        self._wire.write(data)

    async def _flush(self) -> None:
        if not self._open_now:
            raise SmtpProtocolError("the connection is closed")
        await self._wire.flush()

    async def _reply(self) -> tuple[int, str]:
        """Read one reply, every line of it; a garbled code reads as -1."""
        if not self._open_now:
            raise SmtpProtocolError("the connection is closed")
        lines: list[bytes] = []
        while True:
            line = await self._wire.readline()
            if not line:
                raise SmtpProtocolError("Connection unexpectedly closed")
            lines.append(line[4:].strip())
            try:
                code = int(line[:3])
            except ValueError:
                code = -1
                break
            if line[3:4] != b"-":
                break
        return code, b"\n".join(lines).decode("utf-8", "replace")

    async def _command(self, line: str, encoding: str = "ascii") -> tuple[int, str]:
        self._write(line.encode(encoding) + b"\r\n")
        await self._flush()
        return await self._reply()

    # -- the session -----------------------------------------------------------------------

    async def _open(self) -> None:
        s = self.settings
        context = ssl.create_default_context() if s.security != "none" else None
        await self._wire.connect(s.host, s.port, context if s.security == "ssl" else None)
        self._open_now = True
        try:
            code, reply = await self._reply()
            if code != 220:
                raise SessionRefused(code, reply)
            await self._hello()
            if s.security == "starttls":
                assert context is not None
                if not self.offers("starttls"):
                    raise SmtpProtocolError("STARTTLS extension not supported by server.")
                code, reply = await self._command("STARTTLS")
                if code != 220:
                    raise SessionRefused(code, reply)
                await self._wire.start_tls(context, s.host)
                await self._hello()
            if s.username:
                await self._login(s.username, s.password or "")
        except BaseException:
            self.reset()
            raise
        logger.debug("connected to %s", self.where)

    async def _hello(self) -> None:
        code, reply = await self._command(f"EHLO {self.local_hostname}")
        if code == 250:
            self._features = {}
            for line in reply.splitlines()[1:]:
                keyword, _, parameters = line.strip().partition(" ")
                self._features[keyword.lower()] = parameters
            return
        code, reply = await self._command(f"HELO {self.local_hostname}")
        if code != 250:
            raise SessionRefused(code, reply)
        self._features = {}

    async def _login(self, username: str, password: str) -> None:
        mechanisms = self._features.get("auth", "").upper().split()
        if "PLAIN" in mechanisms:
            token = base64.b64encode(f"\0{username}\0{password}".encode()).decode("ascii")
            code, reply = await self._command(f"AUTH PLAIN {token}")
        elif "LOGIN" in mechanisms:
            code, reply = await self._command("AUTH LOGIN")
            for secret in (username, password):
                if code != 334:
                    break
                code, reply = await self._command(
                    base64.b64encode(secret.encode()).decode("ascii"))
        else:
            raise SmtpProtocolError("the server offers neither AUTH PLAIN nor AUTH LOGIN")
        if code != 235:
            raise SessionRefused(code, reply)

    def reset(self) -> None:
        """Drop the session (if any) at once: the next message opens a new one."""
        self._wire.close()
        self._open_now = False

    async def close(self) -> None:
        """Say QUIT and close the connection."""
        if self._open_now:
            with contextlib.suppress(*_SESSION_ERRORS):
                await self._command("QUIT")
            self.reset()

    # -- messages --------------------------------------------------------------------------

    async def stream(self, take: Take, report: Report, pace: Pace,
                     halted: Callable[[], bool]) -> None:
        """Send the messages ``take`` hands out one after another, reporting each outcome.

        Every failure becomes an outcome, never an exception. Where the server offers
        PIPELINING (RFC 2920), a message's MAIL, RCPT and DATA go out in one write right behind
        the previous message's content, and the previous outcome is reported while the server
        takes in that content: the caller records one message while the next one travels, so
        at most two messages are unrecorded at any moment. ``report`` returns once the caller
        has recorded the outcome; ``pace`` is awaited before each message goes out (the rate
        limit). The message after the next is taken while the server reads the content. Once
        ``halted()`` is true no content goes out any more: the message in flight is finished,
        those taken are reported ``unsent``, and no other is taken.
        """
        pending: list[Envelope] = []  # taken ahead, handed out before anything new

        def next_envelope() -> Envelope | None:
            return pending.pop() if pending else take()

        current = next_envelope()
        finished: tuple[Envelope, Outcome] | None = None  # reported once the next is sent
        announced = retrying = False  # announced: current's MAIL, RCPT and DATA went out
        while current is not None:
            message = current
            if halted():
                if announced:
                    # The server waits for content after DATA: only closing the connection
                    # ends that transaction without delivering anything.
                    self.reset()
                break
            following: Envelope | None = None
            ahead = False  # following's MAIL, RCPT and DATA went out behind current's content
            fresh = not self._open_now
            self.stage = "connect"
            try:
                if not self._open_now:
                    await self._open()
                wire = _prepared(message)
                if not self.offers("pipelining"):
                    await pace()
                    outcome = await self._transaction(message, wire)
                else:
                    self.stage = "mail"
                    refusal: Outcome | None = None
                    if not announced:
                        line = await self._announcement(message, wire, pace)
                        if isinstance(line, bytes):
                            self._write(line)
                        else:
                            refusal = line
                    refusal = refusal or await self._envelope_replies()
                    if refusal is None and halted():
                        self.reset()  # the server waits for content that will not come
                        break
                    if refusal is None:
                        following = next_envelope()
                        announcement = b""
                        if following is not None:
                            line = await self._announcement(following, _prepared(following),
                                                            pace)
                            if isinstance(line, bytes):
                                announcement, ahead = line, True
                        # The content and the next envelope in one write: a server answers
                        # both at once, where two writes could each wait for their own
                        # round trip. From here a lost connection may have taken the
                        # message: no retry.
                        self._write(wire + announcement)
                        await self._flush()
                        if finished is not None:
                            await report(*finished)
                            finished = None
                        if following is not None and not pending:
                            # Built while the server reads: send.py loopback 0.32-0.83 vs 0.27-0.62.
                            ahead_of_time = take()
                            if ahead_of_time is not None:
                                pending.append(ahead_of_time)
                        self.stage = "data"
                        code, reply = await self._reply()
                        finished = (message, classify(code, _reply_text(reply), "data"))
                        if code == 421:
                            self.reset()
                            ahead = False
                        current, announced, retrying = following, ahead, False
                        continue
                    outcome = refusal
            except SessionRefused as exc:
                # Refused while connecting (greeting, STARTTLS, login): nothing was said about
                # this message, so even a 5xx here (e.g. bad credentials) only defers it.
                self.reset()
                outcome = Outcome("deferred", exc.code, f"{self.where} refused the session: "
                                  f"{exc.code} {_reply_text(exc.reply)}")
            except _SESSION_ERRORS as exc:
                self.reset()
                # A reused connection the server closed while idle fails on MAIL FROM, before
                # anything was sent: reconnecting and trying once more cannot duplicate.
                if self.stage == "mail" and not fresh and not retrying:
                    announced, retrying = False, True
                    continue
                outcome = self._lost(exc)
            if finished is not None:
                await report(*finished)
                finished = None
            await report(message, outcome)
            # A message announced behind a lost one was never sent: it goes out afresh.
            current = following if following is not None else next_envelope()
            announced = retrying = False
        if finished is not None:
            await report(*finished)
        for unsent in [current, *pending]:
            if unsent is not None:
                await report(unsent, UNSENT)

    def _lost(self, exc: BaseException) -> Outcome:
        what = ("cannot connect to" if self.stage == "connect"
                else f"connection lost during {self.stage.upper()} with")
        reason = str(exc) or type(exc).__name__
        return Outcome("deferred", None, f"{what} {self.where}: {reason}")

    def _mail_options(self, envelope: Envelope, wire: bytes) -> list[str] | Outcome:
        """Return the MAIL FROM parameters the message needs, or why it cannot be sent."""
        options: list[str] = []
        if not wire.isascii() and self.offers("8bitmime"):
            options.append("BODY=8BITMIME")
        if not (envelope.sender.isascii() and envelope.recipient.isascii()):
            if not self.offers("smtputf8"):
                return Outcome("failed", None,
                               f"{self.where} does not offer SMTPUTF8, needed for this address")
            options.append("SMTPUTF8")
        return options

    @staticmethod
    def _envelope_lines(envelope: Envelope, options: list[str]) -> tuple[bytes, bytes]:
        """Return the MAIL FROM and RCPT TO command lines."""
        encoding = "utf-8" if "SMTPUTF8" in options else "ascii"
        extra = "".join(f" {option}" for option in options)
        # The addresses were validated when they entered the ledger and the configuration.
        return (f"MAIL FROM:<{envelope.sender}>{extra}\r\n".encode(encoding),
                f"RCPT TO:<{envelope.recipient}>\r\n".encode(encoding))

    async def _transaction(self, envelope: Envelope, wire: bytes) -> Outcome:
        """Send one message one command at a time, to a server without PIPELINING."""
        options = self._mail_options(envelope, wire)
        if isinstance(options, Outcome):
            return options
        mail, rcpt = self._envelope_lines(envelope, options)
        self.stage = "mail"
        for stage, line, accepted in (("mail", mail, (250,)), ("rcpt", rcpt, (250, 251)),
                                      ("data", b"DATA\r\n", (354,))):
            self.stage = cast(Stage, stage)
            self._write(line)
            await self._flush()
            code, reply = await self._reply()
            if code not in accepted:
                return await self._refused(code, reply, self.stage)
        self._write(wire)
        await self._flush()
        code, reply = await self._reply()
        if code == 421:
            self.reset()
        return classify(code, _reply_text(reply), "data")

    async def _announcement(self, envelope: Envelope, wire: bytes, pace: Pace
                            ) -> bytes | Outcome:
        """Return one message's MAIL, RCPT and DATA as one write, or why it cannot go."""
        options = self._mail_options(envelope, wire)
        if isinstance(options, Outcome):
            return options
        await pace()
        mail, rcpt = self._envelope_lines(envelope, options)
        return mail + rcpt + b"DATA\r\n"

    async def _envelope_replies(self) -> Outcome | None:
        """Read the replies to MAIL, RCPT and DATA; None when the content may follow.

        Each reply is judged for its own command: a refused RCPT is reported with the RCPT
        reply, not with the DATA refusal that follows from it.
        """
        await self._flush()
        refusal: tuple[int, str, Stage] | None = None
        for stage, accepted in _PIPELINED_REPLIES:
            self.stage = stage
            code, reply = await self._reply()
            if refusal is None and code not in accepted:
                refusal = (code, reply, stage)
            if code == 421:  # the server is closing: the replies after this one never come
                self.reset()
                first_code, first_reply, first_stage = refusal or (code, reply, stage)
                return classify(first_code, _reply_text(first_reply), first_stage)
        if refusal is None:
            return None
        if code == 354:
            # DATA was accepted after the envelope was refused: the server waits for content.
            # An empty message ends it; with no recipient it goes nowhere.
            self._write(b".\r\n")
            await self._flush()
            await self._reply()
        return await self._refused(*refusal)

    async def _refused(self, code: int, reply: str, stage: Stage) -> Outcome:
        if code == 421:  # the server is closing the connection
            self.reset()
        else:
            try:
                await self._command("RSET")
            except _SESSION_ERRORS:
                self.reset()
        return classify(code, _reply_text(reply), stage)


class _Call:
    """One :meth:`SmtpTransport.send`: the caller's envelopes, and outcomes waiting to be read."""

    def __init__(self, source: Iterator[Envelope], stop: Stop | None,
                 unreported: list[tuple[Envelope, Outcome]]) -> None:
        self.source = source
        self.stop = stop
        self.unreported = unreported
        self.exhausted = False
        self.abandoned = False  # the caller stopped reading outcomes
        self.error: BaseException | None = None  # raised by the caller's iterable
        self.outcomes: deque[tuple[Envelope, Outcome, asyncio.Future[None]]] = deque()
        self.ready = asyncio.Event()

    def halted(self) -> bool:
        """Return whether no more content may go out."""
        return self.abandoned or (self.stop is not None and self.stop.is_set())

    def take(self) -> Envelope | None:
        """Return the caller's next envelope, or None when there is none or no more may go."""
        if self.exhausted or self.halted():
            return None
        try:
            envelope = next(self.source, None)
        except Exception as exc:  # the caller's own failure: raised where it reads outcomes
            self.error = exc
            envelope = None
        if envelope is None:
            self.exhausted = True
            self.ready.set()
        return envelope

    async def report(self, envelope: Envelope, outcome: Outcome) -> None:
        """Hand one outcome to the caller; return once the caller has recorded it."""
        if self.abandoned:
            self.unreported.append((envelope, outcome))
            return
        recorded = asyncio.get_running_loop().create_future()
        self.outcomes.append((envelope, outcome, recorded))
        self.ready.set()
        await recorded

    async def next_outcomes(self) -> None:
        """Wait until an outcome is there, or something else the caller must know happened."""
        await self.ready.wait()
        self.ready.clear()


class _Handover:
    """Hand one outcome to whoever drives the coroutine; resume when it asks for the next."""

    def __init__(self, item: tuple[Envelope, Outcome]) -> None:
        self.item = item

    def __await__(self) -> Generator[tuple[Envelope, Outcome], None, None]:
        yield self.item


async def _blocking_sleep(seconds: float) -> None:
    """Sleep in the calling thread: the pace of a connection driven without an event loop."""
    time.sleep(seconds)


class SmtpTransport:
    """Send through an SMTP server over ``connections`` parallel sessions, rate-limited.

    Each connection streams the messages it takes from the caller's iterable (pipelined where
    the server offers it) and waits until the caller has recorded each outcome, so at most two
    messages per connection are unrecorded and at most four per connection are held in
    memory. One connection is driven by the caller's thread on a blocking socket; several by
    one asyncio event loop, run in the caller's thread while it waits for outcomes.
    Connections are kept open across calls.
    """

    def __init__(self, settings: SmtpConfig, local_hostname: str,
                 limiter: RateLimiter | None = None) -> None:
        if settings.username and settings.password is None:
            raise TransportError("[email.smtp] username is set but PUBLISHER_SMTP_PASSWORD is "
                                 "not: export the password in that environment variable")
        self.settings = settings
        several = settings.connections > 1
        self.limiter = limiter or RateLimiter(
            settings.rate_limit, sleep=asyncio.sleep if several else _blocking_sleep)
        # One event loop rather than a thread per connection: sending 20 KB messages to
        # smtp-sink over 64 connections cost 67 us of processor time per message in one
        # loop, against 722 us from 64 threads waiting for each other's interpreter lock.
        # A single connection is cheapest on a blocking socket (50 us against 93 us).
        self._loop = asyncio.new_event_loop() if several else None
        self._connections = [
            SmtpConnection(settings, local_hostname,
                           _Streams(settings.timeout) if several else _Socket(settings.timeout))
            for _ in range(settings.connections)]
        self._unreported: list[tuple[Envelope, Outcome]] = []

    def send(self, envelopes: Iterable[Envelope], stop: Stop | None = None
             ) -> Generator[tuple[Envelope, Outcome], None, None]:
        """Deliver the envelopes, yielding each one's outcome in the order they complete."""
        call = _Call(iter(envelopes), stop, self._unreported)
        if self._loop is None:
            return self._send_inline(self._connections[0], call)
        return self._send_looped(self._loop, call)

    def _send_inline(self, connection: SmtpConnection, call: _Call
                     ) -> Generator[tuple[Envelope, Outcome], None, None]:
        while self._unreported:
            yield self._unreported.pop(0)

        async def report(envelope: Envelope, outcome: Outcome) -> None:
            if call.abandoned:
                self._unreported.append((envelope, outcome))
            else:
                await _Handover((envelope, outcome))

        # Nothing in the stream waits for anything but the socket, except each outcome
        # handed over here.
        stream = connection.stream(call.take, report, self.limiter.wait, call.halted)
        done = False
        try:
            while True:
                try:
                    outcome = stream.send(None)
                except StopIteration:
                    done = True
                    break
                yield outcome
        finally:
            if not done:
                # The caller stopped early (an error): no more content goes out, and what the
                # server says about the message in flight is kept for the next call.
                call.abandoned = True
                with contextlib.suppress(StopIteration):
                    while True:
                        stream.send(None)
        if call.error is not None:
            raise call.error

    def _send_looped(self, loop: asyncio.AbstractEventLoop, call: _Call
                     ) -> Generator[tuple[Envelope, Outcome], None, None]:
        while self._unreported:
            yield self._unreported.pop(0)
        run = loop.run_until_complete
        drivers = [loop.create_task(self._drive(connection, call))
                   for connection in self._connections]
        for driver in drivers:
            driver.add_done_callback(lambda _task: call.ready.set())
        try:
            while True:
                if not call.outcomes:
                    if all(driver.done() for driver in drivers):
                        break
                    run(call.next_outcomes())
                while call.outcomes:
                    envelope, outcome, recorded = call.outcomes.popleft()
                    try:
                        yield envelope, outcome
                    finally:
                        recorded.set_result(None)
        finally:
            # The caller stopped early (an error): no more content goes out, and what the
            # servers say about the messages in flight is kept for the next call.
            call.abandoned = True
            while call.outcomes:
                envelope, outcome, recorded = call.outcomes.popleft()
                self._unreported.append((envelope, outcome))
                recorded.set_result(None)
            run(asyncio.wait(drivers))
        if call.error is not None:
            raise call.error

    async def _drive(self, connection: SmtpConnection, call: _Call) -> None:
        """Stream the call's messages over one connection."""
        taken: dict[int, Envelope] = {}

        def take() -> Envelope | None:
            envelope = call.take()
            if envelope is not None:
                taken[envelope.delivery_id] = envelope
            return envelope

        async def report(envelope: Envelope, outcome: Outcome) -> None:
            taken.pop(envelope.delivery_id, None)
            await call.report(envelope, outcome)

        try:
            await connection.stream(take, report, self.limiter.wait, call.halted)
        except Exception as exc:
            # A bug here must still produce an outcome per envelope, or the caller would wait
            # forever.
            logger.exception("sending over %s failed", connection.where)
            connection.reset()
            for envelope in list(taken.values()):
                await call.report(envelope, Outcome("deferred", None, f"internal error: {exc!r}"))

    def close(self) -> None:
        """Say QUIT on every connection and close them."""
        if self._loop is None:
            with contextlib.suppress(StopIteration):
                self._connections[0].close().send(None)
            return
        if not self._loop.is_closed():
            self._loop.run_until_complete(self._close_connections())
            self._loop.close()

    async def _close_connections(self) -> None:
        await asyncio.gather(*(connection.close() for connection in self._connections))
        # Each socket is closed by a callback the loop runs next: let it run before it ends.
        await asyncio.sleep(0)


def open_transport(config: Config) -> Transport:
    """Return the transport named by ``[email] transport``."""
    if config.email.transport == "smtp":
        return SmtpTransport(config.email.smtp, ehlo_name(config.site.domain))
    return MaildirTransport(config.email.maildir)
