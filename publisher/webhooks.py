"""Take bounce and complaint webhooks from SES, Postmark, SendGrid and Mailgun, authenticated."""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import hmac
import json
import logging
import re
import urllib.request
from collections.abc import Awaitable, Callable, Iterable, Mapping
from datetime import UTC
from typing import Any
from urllib.parse import urlsplit

import anyio
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from publisher.bounces import (
    BounceReport,
    Recorder,
    Report,
    Return,
    Source,
    angle_id,
    one_line,
    status_code,
)
from publisher.calendar import Clock, utcnow
from publisher.config import Config
from publisher.errors import WebhookError
from publisher.ledger import Ledger, ReturnKind

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 2 * 1024 * 1024  # SendGrid batches events; SES notifications carry headers
FETCH_TIMEOUT_SECONDS = 10
CERTIFICATES_KEPT = 16
# Where SNS keeps its signing certificates and subscription links: https://sns.<region>.amazonaws.com
SNS_HOST = re.compile(r"sns\.[a-z0-9-]+\.amazonaws\.com(\.cn)?")
_SNS_SIGNED = {
    "Notification": ("Message", "MessageId", "Subject", "Timestamp", "TopicArn", "Type"),
    **dict.fromkeys(("SubscriptionConfirmation", "UnsubscribeConfirmation"), (
        "Message", "MessageId", "SubscribeURL", "Timestamp", "Token", "TopicArn", "Type")),
}
_SNS_HASHES: dict[str, Callable[[], hashes.HashAlgorithm]] = {
    "1": hashes.SHA1, "2": hashes.SHA256}
SENDGRID_SIGNATURE = "X-Twilio-Email-Event-Webhook-Signature"
SENDGRID_TIMESTAMP = "X-Twilio-Email-Event-Webhook-Timestamp"
# Postmark's bounce types (its "Type" field) by what they mean here; the rest are not returns.
_POSTMARK_KINDS: dict[str, ReturnKind] = {
    "HardBounce": "hard", "BadEmailAddress": "hard", "ManuallyDeactivated": "hard",
    "SoftBounce": "soft", "Transient": "soft", "DnsError": "soft", "Blocked": "soft",
    "SpamComplaint": "complaint",
}

Fetch = Callable[[str], bytes]


def fetch_https(url: str) -> bytes:
    """Fetch an SNS certificate or subscription link (``sns_url`` has checked it)."""
    with urllib.request.urlopen(url, timeout=FETCH_TIMEOUT_SECONDS) as answer:
        return bytes(answer.read(256 * 1024))


def sns_url(url: object, what: str) -> str:
    """Return an SNS URL after checking it is https on an SNS host, else raise WebhookError."""
    if not isinstance(url, str):
        raise WebhookError(f"{what} is missing")
    parts = urlsplit(url)
    if parts.scheme != "https" or not SNS_HOST.fullmatch(parts.hostname or "") or parts.port:
        raise WebhookError(f"{what} {url!r} is not an https URL on an SNS host")
    return url


def sns_string_to_sign(message: Mapping[str, Any]) -> bytes:
    """Return the bytes SNS signs for a message: chosen fields as name and value lines."""
    kind = message.get("Type")
    if kind not in _SNS_SIGNED:
        raise WebhookError(f"unknown SNS message type {kind!r}")
    return "".join(f"{name}\n{message[name]}\n" for name in _SNS_SIGNED[kind]
                   if name in message).encode("utf-8")


class SnsVerifier:
    """Check SNS messages: the topic, and the signature against SNS's signing certificate."""

    def __init__(self, topic_arn: str, fetch: Fetch = fetch_https,
                 clock: Clock = utcnow) -> None:
        self.topic_arn = topic_arn
        self.fetch = fetch
        self.clock = clock
        self._load = functools.lru_cache(maxsize=CERTIFICATES_KEPT)(self._download)

    def _download(self, url: str) -> x509.Certificate:
        try:
            return x509.load_pem_x509_certificate(self.fetch(url))
        except (OSError, ValueError) as exc:
            raise WebhookError(f"cannot load the signing certificate {url}: {exc}") from None

    def certificate(self, url: str) -> x509.Certificate:
        """Return the certificate at a checked SNS URL, fetched once and then kept."""
        found = self._load(url)
        now = self.clock().astimezone(UTC)
        if not found.not_valid_before_utc <= now <= found.not_valid_after_utc:
            raise WebhookError(f"the signing certificate {url} is not valid now")
        return found

    def verify(self, message: Mapping[str, Any]) -> None:
        """Raise WebhookError unless the message is from the topic and signed by SNS."""
        if message.get("TopicArn") != self.topic_arn:
            raise WebhookError(f"topic {message.get('TopicArn')!r} is not the configured one")
        algorithm = _SNS_HASHES.get(str(message.get("SignatureVersion")))
        if algorithm is None:
            raise WebhookError(f"unknown SignatureVersion {message.get('SignatureVersion')!r}")
        url = sns_url(message.get("SigningCertURL"), "SigningCertURL")
        key = self.certificate(url).public_key()
        if not isinstance(key, rsa.RSAPublicKey):
            raise WebhookError("the signing certificate does not hold an RSA key")
        try:
            signature = base64.b64decode(str(message.get("Signature", "")), validate=True)
            key.verify(signature, sns_string_to_sign(message), padding.PKCS1v15(), algorithm())
        except (binascii.Error, InvalidSignature):
            raise WebhookError("the SNS signature does not match") from None


def verify_sendgrid(public_key: str, signature: str, timestamp: str, body: bytes) -> None:
    """Raise WebhookError unless SendGrid's ECDSA signature covers the timestamp and body."""
    try:
        key = serialization.load_der_public_key(base64.b64decode(public_key, validate=True))
    except (binascii.Error, ValueError):
        log.error("bounces.sendgrid.public_key is not a base64 DER public key")
        raise WebhookError("the verification key is not usable") from None
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise WebhookError("the verification key is not an elliptic-curve key")
    try:
        key.verify(base64.b64decode(signature, validate=True), timestamp.encode() + body,
                   ec.ECDSA(hashes.SHA256()))
    except (binascii.Error, InvalidSignature):
        raise WebhookError("the signature does not match") from None


def verify_mailgun(signing_key: str, signed: object) -> None:
    """Raise WebhookError unless a Mailgun ``signature`` object is the HMAC of its fields."""
    if not isinstance(signed, dict):
        raise WebhookError("the signature is missing")
    text = f"{signed.get('timestamp', '')}{signed.get('token', '')}".encode()
    expected = hmac.new(signing_key.encode(), text, hashlib.sha256).hexdigest()
    if not hmac.compare_digest(expected, str(signed.get("signature", ""))):
        raise WebhookError("the signature does not match")


def _text(value: object) -> str | None:
    return value.strip() or None if isinstance(value, str) else None


def _header(headers: object, name: str) -> str | None:
    """Return a header from SES's list of {name, value} objects or a provider's mapping."""
    if isinstance(headers, list):
        for item in headers:
            if isinstance(item, dict) and str(item.get("name", "")).lower() == name.lower():
                return _text(item.get("value"))
    if isinstance(headers, dict):
        for key, value in headers.items():
            if str(key).lower() == name.lower():
                return _text(value)
    return None


def ses_report(notification: Mapping[str, Any], event_id: str) -> Report:
    """Turn an SES bounce or complaint notification (or event) into a report."""
    kind = notification.get("notificationType") or notification.get("eventType")
    mail = notification.get("mail") or {}
    message_id = angle_id(_header(mail.get("headers"), "Message-ID")
                          or (mail.get("commonHeaders") or {}).get("messageId"))
    return_paths = tuple(a for a in (_text(mail.get("source")),) if a)
    returns: list[Return] = []
    if kind == "Bounce":
        bounce = notification.get("bounce") or {}
        kind_of: ReturnKind = "hard" if bounce.get("bounceType") == "Permanent" else "soft"
        identity = f"ses:{bounce.get('feedbackId') or event_id}"
        for recipient in bounce.get("bouncedRecipients") or []:
            diagnostic = _text(recipient.get("diagnosticCode"))
            returns.append(Return(kind_of, _text(recipient.get("emailAddress")),
                                  status_code(_text(recipient.get("status")) or diagnostic),
                                  diagnostic, message_id, return_paths))
    elif kind == "Complaint":
        complaint = notification.get("complaint") or {}
        identity = f"ses:{complaint.get('feedbackId') or event_id}"
        feedback = _text(complaint.get("complaintFeedbackType")) or "abuse"
        if feedback != "not-spam":
            for recipient in complaint.get("complainedRecipients") or []:
                returns.append(Return("complaint", _text(recipient.get("emailAddress")), None,
                                      f"{feedback} complaint through Amazon SES", message_id,
                                      return_paths))
    else:
        identity = f"ses:{event_id}"
    return Report("return" if returns else "other", identity, tuple(returns))


def sendgrid_reports(events: Iterable[Mapping[str, Any]]) -> list[Report]:
    """Turn SendGrid events into reports: bounces, blocks and spam reports count."""
    reports = []
    for event in events:
        name = event.get("event")
        identity = f"sendgrid:{event.get('sg_event_id') or event.get('sg_message_id')}"
        message_id = angle_id(_text(event.get("smtp-id")))
        recipient = _text(event.get("email"))
        returns: tuple[Return, ...] = ()
        if name == "bounce":
            reason = _text(event.get("reason"))
            status = status_code(_text(event.get("status")) or reason)
            # "blocked" is SendGrid's word for a refusal that may pass later (a policy block).
            soft = event.get("type") == "blocked" or (status or "").startswith("4")
            returns = (Return("soft" if soft else "hard", recipient, status, reason,
                              message_id),)
        elif name == "spamreport":
            returns = (Return("complaint", recipient, None, "spam report through SendGrid",
                              message_id),)
        reports.append(Report("return" if returns else "other", identity, returns))
    return reports


def mailgun_report(data: Mapping[str, Any]) -> Report:
    """Turn a Mailgun event (the ``event-data`` object) into a report."""
    name = data.get("event")
    identity = f"mailgun:{data.get('id')}"
    headers = (data.get("message") or {}).get("headers")
    message_id = angle_id(_header(headers, "message-id"))
    return_paths = tuple(a for a in (_text((data.get("envelope") or {}).get("sender")),) if a)
    recipient = _text(data.get("recipient"))
    returns: tuple[Return, ...] = ()
    if name == "failed":
        status_info = data.get("delivery-status") or {}
        diagnostic = one_line(" ".join(str(status_info.get(key) or "") for key in
                                       ("code", "message", "description")))
        status = status_code(diagnostic)
        soft = data.get("severity") == "temporary" or (status or "").startswith("4")
        returns = (Return("soft" if soft else "hard", recipient, status, diagnostic, message_id,
                          return_paths),)
    elif name == "complained":
        returns = (Return("complaint", recipient, None, "complaint through Mailgun",
                          message_id, return_paths),)
    return Report("return" if returns else "other", identity, returns)


def postmark_report(payload: Mapping[str, Any]) -> Report:
    """Turn a Postmark bounce or spam complaint webhook into a report."""
    kind = _POSTMARK_KINDS.get(str(payload.get("Type") or payload.get("RecordType")))
    identity = f"postmark:{payload.get('RecordType')}:{payload.get('ID')}"
    if kind is None:
        return Report("auto-reply" if payload.get("Type") == "AutoResponder" else "other",
                      identity)
    details = one_line(" ".join(str(payload.get(key) or "") for key in ("Description",
                                                                       "Details")))
    return Report("return", identity, (Return(kind, _text(payload.get("Email")),
                                              status_code(details), details),))


def _refuse(status: int, reason: str, provider: str, headers: Mapping[str, str] | None = None
            ) -> Response:
    log.warning("webhook %s refused (%d): %s", provider, status, reason)
    return PlainTextResponse(f"{reason}\n", status_code=status, headers=headers)


class _Refused(Exception):
    """A request answered with ``status`` rather than the 403 of a WebhookError."""

    def __init__(self, status: int, reason: str, headers: Mapping[str, str] | None = None
                 ) -> None:
        super().__init__(reason)
        self.status = status
        self.headers = headers


def _json(body: bytes, status: int = 400) -> Any:
    try:
        return json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _Refused(status, f"the body is not JSON ({exc})") from None


Take = Callable[[Request, str], Awaitable[list[Report] | Response]]


class Webhooks:
    """The ``/webhooks/<provider>`` routes over one configuration, ledger and secret."""

    def __init__(self, config: Config, ledger: Ledger, secret: bytes, *,
                 clock: Clock = utcnow) -> None:
        self.settings = config.bounces.webhooks
        self.recorder = Recorder(config, ledger, secret, clock=clock)
        ses = self.settings.get("ses")
        topic = ses.get("topic_arn") if ses is not None else None
        self.sns = SnsVerifier(topic or "", fetch_https, clock)  # asked only once topic is set

    def routes(self) -> list[Route]:
        """Return one POST route per provider, each taking bodies up to MAX_BODY_BYTES."""
        # Each provider with the setting that turns it on.
        providers: list[tuple[Source, str, Take]] = [
            ("ses", "topic_arn", self.ses), ("postmark", "password", self.postmark),
            ("sendgrid", "public_key", self.sendgrid), ("mailgun", "signing_key", self.mailgun)]
        return [Route(f"/webhooks/{name}", self._endpoint(name, key, take), methods=["POST"],
                      max_body_size=MAX_BODY_BYTES) for name, key, take in providers]

    def _endpoint(self, provider: Source, key: str, take: Take
                  ) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            """Refuse the request unless ``key`` is set and it is authentic; record it."""
            settings = self.settings.get(provider)
            secret = settings.get(key) if settings is not None else None
            try:
                if not secret:
                    raise WebhookError("this webhook is not configured")
                taken = await take(request, secret)
            except WebhookError as exc:
                return _refuse(403, str(exc), provider)
            except _Refused as exc:
                return _refuse(exc.status, str(exc), provider, exc.headers)
            return taken if isinstance(taken, Response) else await self._record(taken, provider)

        return endpoint

    async def _record(self, reports: list[Report], source: Source) -> Response:
        tally = BounceReport()

        def record() -> None:
            for report in reports:
                self.recorder.record(report, source, tally)

        await anyio.to_thread.run_sync(record)
        if tally.hard or tally.soft or tally.complaints:
            log.info("webhook %s: %s", source, tally.line())
        return PlainTextResponse("ok\n")

    async def ses(self, request: Request, _topic: str) -> list[Report] | Response:
        """Take an SNS message: confirm the subscription, or record SES notifications."""
        message = _json(await request.body(), 403)
        if not isinstance(message, dict):
            raise WebhookError("not an SNS message")
        await anyio.to_thread.run_sync(self.sns.verify, message)
        if message["Type"] == "SubscriptionConfirmation":
            url = sns_url(message.get("SubscribeURL"), "SubscribeURL")
            try:
                await anyio.to_thread.run_sync(fetch_https, url)
            except (WebhookError, OSError) as exc:
                log.error("webhook ses: cannot confirm the subscription: %s", exc)
                return PlainTextResponse("cannot confirm the subscription\n", status_code=502)
            log.info("webhook ses: subscribed to %s", message.get("TopicArn"))
            return PlainTextResponse("subscribed\n")
        if message["Type"] != "Notification":
            return []
        notification = _json(str(message.get("Message", "")).encode("utf-8"))
        if not isinstance(notification, dict):
            raise _Refused(400, "the notification is not an object")
        return [ses_report(notification, str(message.get("MessageId")))]

    async def postmark(self, request: Request, password: str) -> list[Report]:
        """Take a Postmark webhook, authenticated by HTTP basic auth."""
        scheme, _, encoded = request.headers.get("authorization", "").partition(" ")
        try:
            given = base64.b64decode(encoded, validate=True)
        except binascii.Error:
            given = b""
        expected = f"{self.settings['postmark'].get('username')}:{password}".encode()
        if scheme.lower() != "basic" or not hmac.compare_digest(given, expected):
            raise _Refused(401, "authentication required", {
                "www-authenticate": 'Basic realm="webhooks", charset="UTF-8"'})
        payload = _json(await request.body())
        if not isinstance(payload, dict):
            raise _Refused(400, "expected one JSON object")
        return [postmark_report(payload)]

    async def sendgrid(self, request: Request, public_key: str) -> list[Report]:
        """Take a batch of SendGrid events, authenticated by SendGrid's ECDSA signature."""
        body = await request.body()
        verify_sendgrid(public_key, request.headers.get(SENDGRID_SIGNATURE, ""),
                        request.headers.get(SENDGRID_TIMESTAMP, ""), body)
        events = _json(body)
        if not isinstance(events, list) or not all(isinstance(e, dict) for e in events):
            raise _Refused(400, "expected a JSON array of events")
        return sendgrid_reports(events)

    async def mailgun(self, request: Request, signing_key: str) -> list[Report]:
        """Take a Mailgun event, authenticated by the HMAC of its timestamp and token."""
        payload = _json(await request.body(), 403)
        verify_mailgun(signing_key, payload.get("signature") if isinstance(payload, dict)
                       else None)
        data = payload.get("event-data")
        if not isinstance(data, dict):
            raise _Refused(400, "event-data is missing")
        return [mailgun_report(data)]
