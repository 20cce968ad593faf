"""Signed link tokens (unsubscribe, confirm) and the secret key that signs them."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import hmac
import logging
import os
import re
import secrets
import stat
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from itsdangerous import (
    BadSignature,
    SignatureExpired,
    Signer,
    URLSafeSerializer,
    URLSafeTimedSerializer,
)
from itsdangerous.timed import TimestampSigner

from publisher.config import Config
from publisher.errors import SecretKeyError, TokenError

SECRET_ENV = "PUBLISHER_SECRET_KEY"
# Distinct salts derive distinct keys, so a confirm token is never accepted as an unsubscribe
# token or the other way round.
UNSUBSCRIBE_KEY_SALT = "publisher.unsubscribe-key"
UNSUBSCRIBE_SALT = "publisher.unsubscribe"  # links made before keys: [id, address]
CONFIRM_SALT = "publisher.confirm"
KEY_LENGTH = 32  # the longest key a token may name (the keys made are 22 characters)
_SIGNER_OPTIONS = {"digest_method": hashlib.sha256}

log = logging.getLogger(__name__)


def load_secret(config: Config) -> bytes:
    """Return the signing secret from ``PUBLISHER_SECRET_KEY``, else from the key file."""
    from_env = os.environ.get(SECRET_ENV, "").strip()
    if from_env:
        return from_env.encode("utf-8")
    path = config.state.key_file
    if not path.exists():
        _create_key_file(path)
    return _read_key_file(path)


def _create_key_file(path: Path) -> None:
    # The key is written to a private temporary file and linked into place, so a second process
    # starting at the same moment either wins the link or reads the complete winner's key.
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.fchmod(descriptor, 0o600)  # the umask may only narrow the mode; make it exact
            os.write(descriptor, (secrets.token_urlsafe(48) + "\n").encode("ascii"))
            os.fsync(descriptor)
        finally:
            os.close(descriptor)
        try:
            os.link(temporary, path)
        except FileExistsError:
            return  # another process created it first: its key is read
    except OSError as exc:
        raise SecretKeyError(f"cannot create the key file: {exc.strerror}", path=path,
                             field="state.key_file") from None
    finally:
        with contextlib.suppress(OSError):
            temporary.unlink()
    log.warning("created a new secret key in %s (mode 0600); keep it, or links in emails "
                "already sent stop working; set %s to use another key", path, SECRET_ENV)


def _read_key_file(path: Path) -> bytes:
    try:
        mode = path.stat().st_mode
        key = path.read_bytes().strip()
    except OSError as exc:
        raise SecretKeyError(f"cannot read the key file: {exc.strerror}", path=path,
                             field="state.key_file") from None
    if not key:
        raise SecretKeyError("the key file is empty", path=path, field="state.key_file")
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        log.warning("%s is readable by other users; run chmod 600 on it", path)
    return key


@dataclass(frozen=True)
class SignedAddress:
    """Whom a link signed before subscribers had keys names: their id and address."""

    subscriber_id: int
    email: str


# What a link token names: a random key (links made now), or the id and address that links
# made before keys carry in clear. Those are still honoured: they are in emails already sent.
LinkSubject = str | SignedAddress


@functools.lru_cache(maxsize=8)
def _unsubscribe_signers(secret: bytes) -> tuple[Signer, URLSafeSerializer]:
    # One signer per secret, since one token is signed for every message sent; the serializer
    # reads the links made before keys.
    signer = Signer(secret, salt=UNSUBSCRIBE_KEY_SALT, digest_method=hashlib.sha256)
    legacy = URLSafeSerializer(secret, salt=UNSUBSCRIBE_SALT, signer_kwargs=_SIGNER_OPTIONS)
    return signer, legacy


def unsubscribe_token(secret: bytes, key: str) -> str:
    """Sign a token naming a subscriber's unsubscribe key; it never expires."""
    # The same token every time: a message sent again has the same bytes.
    signer, _ = _unsubscribe_signers(secret)
    return signer.sign(key).decode("ascii")


def read_unsubscribe_token(secret: bytes, token: str) -> LinkSubject:
    """Return the key (or, for an older link, the id and address) a token was signed for."""
    signer, legacy = _unsubscribe_signers(secret)
    with contextlib.suppress(BadSignature):
        return _subject_of(signer.unsign(token).decode("utf-8"))
    try:
        payload = legacy.loads(token)
    except BadSignature:
        raise TokenError("the unsubscribe link is forged or damaged") from None
    if isinstance(payload, str):  # only keys signed as above name a key
        raise TokenError("the link token has an unknown format")
    return _subject_of(payload)


class _ClockSigner(TimestampSigner):
    """A timestamp signer whose notion of now can be set, so expiry is testable without waiting."""

    def __init__(self, *args: Any, now: datetime | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.now = now

    def get_timestamp(self) -> int:
        """Return the injected instant, or the current time, as a Unix timestamp."""
        return int(self.now.timestamp()) if self.now is not None else super().get_timestamp()


def _confirm_serializer(secret: bytes, now: datetime | None) -> URLSafeTimedSerializer:
    return URLSafeTimedSerializer(secret, salt=CONFIRM_SALT, signer=_ClockSigner,
                                  signer_kwargs={**_SIGNER_OPTIONS, "now": now})


def confirm_token(secret: bytes, key: str, *, now: datetime | None = None) -> str:
    """Sign a token naming a sign-up's random key; it carries the time it was signed."""
    return _confirm_serializer(secret, now).dumps(key)


def read_confirm_token(secret: bytes, token: str, max_age_seconds: int, *,
                       now: datetime | None = None) -> LinkSubject:
    """Return what a confirm token younger than ``max_age_seconds`` names."""
    try:
        payload = _confirm_serializer(secret, now).loads(token, max_age=max_age_seconds)
    except SignatureExpired:
        raise TokenError("the confirmation link has expired") from None
    except BadSignature:
        raise TokenError("the confirmation link is forged or damaged") from None
    return _subject_of(payload)


def _subject_of(payload: object) -> LinkSubject:
    # A valid signature over an unexpected shape means a token from another format.
    if isinstance(payload, str) and 0 < len(payload) <= KEY_LENGTH:
        return payload
    if (isinstance(payload, list) and len(payload) == 2 and type(payload[0]) is int
            and isinstance(payload[1], str)):
        return SignedAddress(payload[0], payload[1])
    raise TokenError("the link token has an unknown format")


# -- return-path tags (VERP) ------------------------------------------------------------------

RETURN_PATH_SALT = b"publisher.return-path"
_TAG_SIGNATURE_BYTES = 8
_TAG = re.compile(r"([0-9a-f]{1,16})-(.+)", re.DOTALL)  # the delivery id, then the signature


@functools.lru_cache(maxsize=8)
def _return_path_key(secret: bytes) -> bytes:
    return hmac.new(secret, RETURN_PATH_SALT, hashlib.sha256).digest()


def _tag_signature(secret: bytes, delivery_id: int, slug: str, year: int,
                   subscriber_id: int) -> str:
    # Keyed BLAKE2 is a MAC of its own, and a tag is signed for every message sent.
    message = f"{delivery_id}\n{slug}\n{year}\n{subscriber_id}".encode()
    return hashlib.blake2b(message, key=_return_path_key(secret),
                           digest_size=_TAG_SIGNATURE_BYTES).hexdigest()


def return_path_tag(secret: bytes, delivery_id: int, slug: str, year: int,
                    subscriber_id: int) -> str:
    """Sign a short tag naming one delivery, for the envelope sender ``local+TAG@domain``."""
    # Lower-case hexadecimal only: mail servers may change the case of a local part.
    signature = _tag_signature(secret, delivery_id, slug, year, subscriber_id)
    return f"{delivery_id:x}-{signature}"


def read_return_path_tag(tag: str) -> tuple[int, str] | None:
    """Return the delivery id a tag names and its signature, or None if it is not a tag."""
    match = _TAG.fullmatch(tag.lower())
    return (int(match[1], 16), match[2]) if match else None


def check_return_path_tag(secret: bytes, signature: str, delivery_id: int, slug: str,
                          year: int, subscriber_id: int) -> bool:
    """Return whether a tag's signature was made for this very delivery."""
    expected = _tag_signature(secret, delivery_id, slug, year, subscriber_id)
    return hmac.compare_digest(expected, signature.lower())
