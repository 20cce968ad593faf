"""Provider webhooks on the web service: Amazon SES through SNS (signatures checked against a
certificate made here, never fetched), Postmark, SendGrid and Mailgun; forgeries change nothing."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.oid import NameOID
from starlette.testclient import TestClient

from publisher import webhooks
from publisher.errors import WebhookError
from publisher.ledger import Ledger
from publisher.web import create_app
from publisher.webhooks import (
    SENDGRID_SIGNATURE,
    SENDGRID_TIMESTAMP,
    sns_string_to_sign,
    verify_mailgun,
    verify_sendgrid,
)
from tests.fixtures.returns import SECRET, BounceWorld, payload_text

READERS = [f"reader{n}@example.org" for n in range(3)]
TOPIC = "arn:aws:sns:eu-west-1:123456789012:publisher-returns"
CERT_URL = ("https://sns.eu-west-1.amazonaws.com/"
            "SimpleNotificationService-9c6465fa7f48f5cacd23014631ec1136.pem")
SUBSCRIBE_URL = ("https://sns.eu-west-1.amazonaws.com/?Action=ConfirmSubscription&TopicArn="
                 f"{TOPIC}&Token=2336412f37fb687f5d51e6e2425c464de1e2b1a8")
POSTMARK_AUTH = ("postmark", "horse battery staple")
MAILGUN_KEY = "key-3ax6xnjp29jd6fds4gc373sgvjxteol0"
SITE = "https://example.org"  # the host of the world's base_url, which the service answers for


def _certificate(key: rsa.RSAPrivateKey, days: int = 30) -> bytes:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "sns.amazonaws.com")])
    now = datetime.now(UTC)
    certificate = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
                   .public_key(key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(now - timedelta(days=1))
                   .not_valid_after(now + timedelta(days=days)).sign(key, hashes.SHA256()))
    return certificate.public_bytes(serialization.Encoding.PEM)


@pytest.fixture(scope="module")
def sns_key() -> rsa.RSAPrivateKey:
    """Return the RSA key standing in for SNS's signing key."""
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@dataclass
class FakeSns:
    """What SNS's web servers would answer: the certificate, and subscription confirmations."""

    certificate: bytes
    fetched: list[str] = field(default_factory=list)

    def __call__(self, url: str) -> bytes:
        self.fetched.append(url)
        if url == CERT_URL:
            return self.certificate
        return b"<ConfirmSubscriptionResponse/>"


def sns_message(key: rsa.RSAPrivateKey, kind: str, version: str = "1",
                **fields: str) -> dict[str, str]:
    """Return an SNS message of ``kind``, signed the way SNS signs."""
    message = {"Type": kind, "MessageId": "165545c9-2a5c-472c-8df2-7ff2be2b3b1b",
               "TopicArn": TOPIC, "Timestamp": "2024-11-09T09:00:06.482Z",
               "SignatureVersion": version, "SigningCertURL": CERT_URL, **fields}
    algorithm = hashes.SHA1() if version == "1" else hashes.SHA256()
    signature = key.sign(sns_string_to_sign(message), padding.PKCS1v15(), algorithm)
    message["Signature"] = base64.b64encode(signature).decode("ascii")
    return message


@dataclass
class Hooks:
    """A sent edition, the web service with every webhook on, and SNS's stand-in."""

    world: BounceWorld
    client: TestClient
    sns: FakeSns
    sendgrid_key: ec.EllipticCurvePrivateKey
    sns_key: rsa.RSAPrivateKey

    def about(self, address: str) -> dict[str, str]:
        sent = self.world.last_message(address)
        return {"recipient": address, "message_id": str(sent.message["Message-ID"]).strip(),
                "return_path": sent.mail_from}

    def notification(self, name: str, address: str, version: str = "1") -> dict[str, str]:
        return sns_message(self.sns_key, "Notification", version,
                           Message=payload_text(name, **self.about(address)),
                           Subject="Amazon SES Email Event Notification",
                           UnsubscribeURL=f"https://sns.eu-west-1.amazonaws.com/?Action="
                                          f"Unsubscribe&SubscriptionArn={TOPIC}:1")

    def sendgrid(self, body: bytes, timestamp: str = "1731143710") -> dict[str, str]:
        signature = self.sendgrid_key.sign(timestamp.encode() + body, ec.ECDSA(hashes.SHA256()))
        return {SENDGRID_SIGNATURE: base64.b64encode(signature).decode(),
                SENDGRID_TIMESTAMP: timestamp, "content-type": "application/json"}


def mailgun_signed(text: str, key: str = MAILGUN_KEY) -> dict[str, Any]:
    payload: dict[str, Any] = json.loads(text)
    signed = payload["signature"]
    signed["signature"] = hmac.new(key.encode(), f"{signed['timestamp']}{signed['token']}"
                                   .encode(), hashlib.sha256).hexdigest()
    return payload


@pytest.fixture
def hooks(bounce_world: BounceWorld, sns_key: rsa.RSAPrivateKey,
          monkeypatch: pytest.MonkeyPatch) -> Iterator[Hooks]:
    """Yield the web service of a world that sent an edition to READERS."""
    sendgrid_key = ec.generate_private_key(ec.SECP256R1())
    public = sendgrid_key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    bounce_world.bounces = {
        "ses": {"topic_arn": TOPIC},
        "postmark": {"username": POSTMARK_AUTH[0], "password": POSTMARK_AUTH[1]},
        "sendgrid": {"public_key": base64.b64encode(public).decode()},
        "mailgun": {"signing_key": MAILGUN_KEY},
    }
    bounce_world.subscribe(*READERS)
    bounce_world.send()
    sns = FakeSns(_certificate(sns_key))
    # The service's certificate and subscription fetches go to the stand-in, never the network.
    monkeypatch.setattr(webhooks, "fetch_https", sns)
    with Ledger.open(bounce_world.database_url) as ledger:
        app = create_app(bounce_world.config(), ledger=ledger, secret=SECRET.encode(),
                         purge=False)
        with TestClient(app, base_url=SITE) as client:
            yield Hooks(bounce_world, client, sns, sendgrid_key, sns_key)


# --- Amazon SES through SNS ---------------------------------------------------------------------


@pytest.mark.parametrize("version", ["1", "2"])
def test_an_ses_bounce_marks_the_subscriber_bounced_once(hooks: Hooks, version: str) -> None:
    message = hooks.notification("ses_bounce.json", READERS[1], version)
    for _ in range(2):  # SNS retries until it gets a 2xx: the second delivery changes nothing
        answer = hooks.client.post("/webhooks/ses", json=message)
        assert answer.status_code == 200, answer.text
    assert hooks.world.status(READERS[1]) == "bounced"
    [row] = hooks.world.returns()
    assert (row.source, row.kind, row.status_code, row.matched_by) == ("ses", "hard", "5.1.1",
                                                                       "tag")
    assert row.diagnostic == "smtp; 550 5.1.1 user unknown"
    assert hooks.sns.fetched == [CERT_URL]  # fetched once, then kept


def test_an_ses_complaint_unsubscribes(hooks: Hooks) -> None:
    answer = hooks.client.post("/webhooks/ses",
                               json=hooks.notification("ses_complaint.json", READERS[2]))
    assert answer.status_code == 200
    assert hooks.world.status(READERS[2]) == "unsubscribed"


def _tampered(message: dict[str, str]) -> dict[str, str]:
    changed = json.loads(message["Message"])
    changed["bounce"]["bouncedRecipients"][0]["emailAddress"] = READERS[0]
    return {**message, "Message": json.dumps(changed)}


@pytest.mark.parametrize(("forge", "reason"), [
    (_tampered, "signature does not match"),
    (lambda m: {**m, "TopicArn": "arn:aws:sns:eu-west-1:999999999999:other"}, "topic"),
    (lambda m: {**m, "SignatureVersion": "3"}, "SignatureVersion"),
    (lambda m: {**m, "SigningCertURL": CERT_URL.replace("https:", "http:")}, "not an https"),
    (lambda m: {**m, "SigningCertURL": CERT_URL.replace(".com/", ".com.evil.example/")},
     "not an https URL on an SNS host"),
    (lambda m: {**m, "SigningCertURL": "https://attacker.example/sns.eu-west-1.amazonaws.com.pem"},
     "not an https URL on an SNS host"),
    (lambda m: {**m, "Signature": "not base64!"}, "signature does not match"),
])
def test_sns_forgeries_are_refused_and_change_nothing(hooks: Hooks, forge: Any,
                                                      reason: str) -> None:
    message = forge(hooks.notification("ses_bounce.json", READERS[1]))
    answer = hooks.client.post("/webhooks/ses", json=message)
    assert answer.status_code == 403 and reason in answer.text
    assert hooks.world.returns() == []
    assert {hooks.world.status(r) for r in READERS} == {"confirmed"}
    assert all(url == CERT_URL for url in hooks.sns.fetched)  # no other host was asked


def test_a_message_signed_by_another_key_is_refused(hooks: Hooks) -> None:
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    message = hooks.notification("ses_bounce.json", READERS[1])
    forged = sns_message(other, "Notification", Message=message["Message"])
    assert hooks.client.post("/webhooks/ses", json=forged).status_code == 403
    assert hooks.world.returns() == []


def test_an_expired_signing_certificate_is_refused(hooks: Hooks, sns_key: rsa.RSAPrivateKey
                                                   ) -> None:
    hooks.sns.certificate = _certificate(sns_key, days=-1)
    answer = hooks.client.post("/webhooks/ses",
                               json=hooks.notification("ses_bounce.json", READERS[1]))
    assert answer.status_code == 403 and "not valid now" in answer.text


def test_the_subscription_is_confirmed_only_when_the_request_is_genuine(hooks: Hooks) -> None:
    confirmation = sns_message(
        hooks.sns_key, "SubscriptionConfirmation", Token="2336412f37fb687f5d51e6e2425c464d",
        Message=f"You have chosen to subscribe to the topic {TOPIC}.", SubscribeURL=SUBSCRIBE_URL)
    forged = {**confirmation, "SubscribeURL": "https://attacker.example/confirm"}
    assert hooks.client.post("/webhooks/ses", json=forged).status_code == 403
    assert SUBSCRIBE_URL not in hooks.sns.fetched
    answer = hooks.client.post("/webhooks/ses", json=confirmation)
    assert answer.status_code == 200
    assert hooks.sns.fetched[-1] == SUBSCRIBE_URL
    assert "attacker.example/confirm" not in " ".join(hooks.sns.fetched)


# --- Postmark -----------------------------------------------------------------------------------


def test_postmark_asks_for_basic_auth_and_refuses_a_wrong_password(hooks: Hooks) -> None:
    body = payload_text("postmark_bounce.json", recipient=READERS[1])
    answer = hooks.client.post("/webhooks/postmark", content=body)
    assert answer.status_code == 401
    assert answer.headers["www-authenticate"].startswith("Basic")
    wrong = hooks.client.post("/webhooks/postmark", content=body, auth=("postmark", "guess"))
    assert wrong.status_code == 401
    assert hooks.world.returns() == []


def test_postmark_bounces_and_complaints_are_recorded(hooks: Hooks) -> None:
    for name, reader in (("postmark_bounce.json", READERS[1]),
                         ("postmark_spam_complaint.json", READERS[2]),
                         ("postmark_autoresponder.json", READERS[0])):
        answer = hooks.client.post("/webhooks/postmark", auth=POSTMARK_AUTH,
                                   content=payload_text(name, recipient=reader))
        assert answer.status_code == 200
    assert [hooks.world.status(r) for r in READERS] == ["confirmed", "bounced", "unsubscribed"]
    assert [(r.kind, r.status_code, r.matched_by) for r in hooks.world.returns()] == [
        ("hard", "5.1.1", "address"), ("complaint", None, "address")]


# --- SendGrid -----------------------------------------------------------------------------------


def _sendgrid_body(hooks: Hooks) -> bytes:
    text = payload_text("sendgrid_events.json", **{
        k: v for k, v in hooks.about(READERS[1]).items() if k != "return_path"})
    complainer = hooks.about(READERS[2])
    text = text.replace("complainer@example.net", READERS[2]).replace(
        "moon-landing.2024.0b1c2d3e4f5a6b7c8d9e0f1a2b3c4d5e@example.org",
        complainer["message_id"].strip("<>"))
    return text.encode()


def test_a_signed_sendgrid_batch_records_its_bounce_and_spam_report(hooks: Hooks) -> None:
    body = _sendgrid_body(hooks)
    answer = hooks.client.post("/webhooks/sendgrid", content=body, headers=hooks.sendgrid(body))
    assert answer.status_code == 200, answer.text
    assert [hooks.world.status(r) for r in READERS] == ["confirmed", "bounced", "unsubscribed"]
    # Processed, deferred (SendGrid still retries) and delivered events are no returns.
    assert [(r.kind, r.matched_by) for r in hooks.world.returns()] == [
        ("hard", "message-id"), ("complaint", "message-id")]


def test_a_sendgrid_batch_changed_after_signing_is_refused(hooks: Hooks) -> None:
    body = _sendgrid_body(hooks)
    headers = hooks.sendgrid(body)
    changed = body.replace(b'"type": "bounce"', b'"type": "blocked"')
    assert hooks.client.post("/webhooks/sendgrid", content=changed,
                             headers=headers).status_code == 403
    unsigned = {"content-type": "application/json"}
    assert hooks.client.post("/webhooks/sendgrid", content=body,
                             headers=unsigned).status_code == 403
    assert hooks.world.returns() == []


def test_sendgrid_verification_accepts_sendgrids_own_sample() -> None:
    # The public sample of SendGrid's own libraries: key, signature, timestamp and payload.
    key = ("MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEEDr2LjtURuePQzplybdC+u4CwrqDqBaWjcMMsTbhdbcwHB"
           "cepxo7yAQGhHPTnlvFYPAZFceEu/1FwCM/QmGUhA==")
    signature = ("MEUCIQCtIHJeH93Y+qpYeWrySphQgpNGNr/U+UyUlBkU6n7RAwIgJTz2C+8a8xonZGi6BpSzoQsbVR"
                 "amr2nlxFDWYNH2j/0=")
    payload = b'{"category":"example_payload","event":"test_event","message_id":"message_id"}'
    verify_sendgrid(key, signature, "1588788367", payload)
    with pytest.raises(WebhookError):
        verify_sendgrid(key, signature, "1588788368", payload)


# --- Mailgun ------------------------------------------------------------------------------------


def test_mailgun_failures_and_complaints_are_recorded(hooks: Hooks) -> None:
    failed = mailgun_signed(payload_text("mailgun_failed.json", **hooks.about(READERS[1])))
    complained = mailgun_signed(payload_text("mailgun_complained.json",
                                             **hooks.about(READERS[2])))
    for payload in (failed, complained, failed):
        assert hooks.client.post("/webhooks/mailgun", json=payload).status_code == 200
    assert [hooks.world.status(r) for r in READERS] == ["confirmed", "bounced", "unsubscribed"]
    assert [(r.kind, r.status_code, r.matched_by) for r in hooks.world.returns()] == [
        ("hard", "5.1.1", "tag"), ("complaint", None, "message-id")]


def test_a_mailgun_event_with_a_wrong_signature_is_refused(hooks: Hooks) -> None:
    forged = mailgun_signed(payload_text("mailgun_failed.json", **hooks.about(READERS[1])),
                            key="key-guessed")
    assert hooks.client.post("/webhooks/mailgun", json=forged).status_code == 403
    unsigned = json.loads(payload_text("mailgun_failed.json"))
    del unsigned["signature"]
    assert hooks.client.post("/webhooks/mailgun", json=unsigned).status_code == 403
    assert hooks.world.returns() == []
    with pytest.raises(WebhookError):
        verify_mailgun(MAILGUN_KEY, {"timestamp": "1", "token": "t", "signature": "00"})


# --- every provider ------------------------------------------------------------------------------


@pytest.mark.parametrize("provider", ["ses", "postmark", "sendgrid", "mailgun"])
def test_a_webhook_that_is_not_configured_refuses_everything(
        bounce_world: BounceWorld, provider: str) -> None:
    with Ledger.open(bounce_world.database_url) as ledger:
        app = create_app(bounce_world.config(), ledger=ledger, secret=SECRET.encode(),
                         purge=False)
        with TestClient(app, base_url=SITE) as client:
            answer = client.post(f"/webhooks/{provider}", json={}, auth=POSTMARK_AUTH)
    assert answer.status_code == 403
    assert answer.text == "this webhook is not configured\n"


@pytest.mark.parametrize("provider", ["ses", "mailgun"])
def test_a_body_that_is_not_json_is_refused_before_authentication(hooks: Hooks,
                                                                   provider: str) -> None:
    answer = hooks.client.post(f"/webhooks/{provider}", content=b"{not json")
    assert answer.status_code == 403 and "not JSON" in answer.text


def test_an_authentic_request_in_the_wrong_shape_is_400(hooks: Hooks) -> None:
    for body in (b"{not json", b"[]"):
        answer = hooks.client.post("/webhooks/postmark", auth=POSTMARK_AUTH, content=body)
        assert answer.status_code == 400
    body = b'{"event": "bounce"}'
    answer = hooks.client.post("/webhooks/sendgrid", content=body, headers=hooks.sendgrid(body))
    assert (answer.status_code, answer.text) == (400, "expected a JSON array of events\n")
    no_event = mailgun_signed(payload_text("mailgun_failed.json", **hooks.about(READERS[1])))
    del no_event["event-data"]
    answer = hooks.client.post("/webhooks/mailgun", json=no_event)
    assert (answer.status_code, answer.text) == (400, "event-data is missing\n")
    assert hooks.world.returns() == []


def test_a_body_over_the_limit_is_refused(hooks: Hooks) -> None:
    body = b"[" + b" " * webhooks.MAX_BODY_BYTES + b"]"
    answer = hooks.client.post("/webhooks/sendgrid", content=body, headers=hooks.sendgrid(body))
    assert answer.status_code == 413
