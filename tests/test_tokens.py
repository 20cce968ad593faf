"""Signed unsubscribe and confirm tokens, and the secret key behind them."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import logging
import re
import stat
import zlib
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from itsdangerous import Signer, URLSafeSerializer, URLSafeTimedSerializer

from publisher.config import Config, from_mapping
from publisher.errors import SecretKeyError, TokenError
from publisher.ledger import new_key
from publisher.tokens import (
    CONFIRM_SALT,
    KEY_LENGTH,
    SECRET_ENV,
    UNSUBSCRIBE_KEY_SALT,
    UNSUBSCRIBE_SALT,
    SignedAddress,
    confirm_token,
    load_secret,
    read_confirm_token,
    read_unsubscribe_token,
    unsubscribe_token,
)

SECRET = b"a secret for the tests"
SIGNED_AT = datetime(2026, 3, 14, 9, 0, tzinfo=UTC)


def config_with_key(tmp_path: Path, key_file: str | None = None) -> Config:
    """Return a config whose database (and so the default key file) lives under tmp_path."""
    state = {"database_url": f"sqlite:///{tmp_path}/state/publisher.db"}
    if key_file is not None:
        state["key_file"] = key_file
    return from_mapping({"state": state}, base_dir=tmp_path)


def tampered(token: str) -> str:
    """Return the token with one character of its signature changed."""
    last = "A" if token[-1] != "A" else "B"
    return token[:-1] + last


KEY = "q1Xf8Kc0mWbT3vZr9LhJ2A"  # as new_key() makes them; fixed, so every token is too


def decoded_parts(token: str) -> bytes:
    """Return every dot-separated part of a token base64-decoded (and inflated if it can be)."""
    decoded = b""
    for part in token.split("."):
        raw = base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))
        with contextlib.suppress(zlib.error):
            raw = zlib.decompress(raw)
        decoded += raw + b"\n"
    return decoded


def legacy_unsubscribe_token(subscriber_id: int, email: str) -> str:
    """Return an unsubscribe token as links in emails sent before keys carried it."""
    return URLSafeSerializer(SECRET, salt=UNSUBSCRIBE_SALT,
                             signer_kwargs={"digest_method": hashlib.sha256}).dumps(
        [subscriber_id, email])


def test_unsubscribe_token_round_trips() -> None:
    token = unsubscribe_token(SECRET, KEY)
    assert read_unsubscribe_token(SECRET, token) == KEY


def test_unsubscribe_token_is_url_safe_and_stable() -> None:
    token = unsubscribe_token(SECRET, KEY)
    assert token == unsubscribe_token(SECRET, KEY)
    assert all(c.isalnum() or c in "-_." for c in token)


def test_keys_are_random_and_url_safe() -> None:
    keys = {new_key() for _ in range(1000)}
    assert len(keys) == 1000
    assert all(len(key) == 22 and re.fullmatch(r"[A-Za-z0-9_-]+", key) for key in keys)


@pytest.mark.parametrize("email", ["ada@example.org", "zoe+news@example.org"])
def test_new_tokens_reveal_nothing_about_the_subscriber(email: str) -> None:
    # Before, the token was base64 of [id, "address"]: anyone seeing the URL (a proxy log, a
    # mail scanner) could read the address. Now it names a random key and nothing else.
    legacy = decoded_parts(legacy_unsubscribe_token(42, email))
    assert email.encode() in legacy  # what the old links gave away
    for token in (unsubscribe_token(SECRET, KEY), confirm_token(SECRET, KEY, now=SIGNED_AT)):
        decoded = decoded_parts(token)
        assert email.encode() not in decoded and b"example" not in decoded
        assert b"42" not in decoded and "@" not in token and email not in token


@pytest.mark.parametrize("email", [
    "ada@example.org", "Zoë+news@example.org", "a" * 60 + "@example.org",
    "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa@aa.aa",
    "\u540d\u524d@\u4f8b\u3048.jp", 'quote"back\\slash@example.org'])
@pytest.mark.parametrize("subscriber_id", [1, 7, 123456789])
def test_links_already_sent_keep_working(subscriber_id: int, email: str) -> None:
    # Emails sent before keys carry itsdangerous's signature over [id, address]: still valid.
    token = legacy_unsubscribe_token(subscriber_id, email)
    assert read_unsubscribe_token(SECRET, token) == SignedAddress(subscriber_id, email)


@pytest.mark.parametrize("key", [KEY, new_key(), "x", "k" * KEY_LENGTH])
def test_unsubscribe_token_is_what_itsdangerous_signs(key: str) -> None:
    # Tokens must stay itsdangerous's bytes, so that links already sent keep verifying.
    reference = Signer(SECRET, salt=UNSUBSCRIBE_KEY_SALT, digest_method=hashlib.sha256)
    assert unsubscribe_token(SECRET, key) == reference.sign(key).decode()
    assert read_unsubscribe_token(SECRET, reference.sign(key).decode()) == key


@pytest.mark.parametrize("payload", [[1, 2], {"id": 1}, 7, "", KEY])
def test_an_old_style_token_of_another_shape_is_refused(payload: object) -> None:
    reference = URLSafeSerializer(SECRET, salt=UNSUBSCRIBE_SALT,
                                  signer_kwargs={"digest_method": hashlib.sha256})
    with pytest.raises(TokenError, match="unknown format"):
        read_unsubscribe_token(SECRET, reference.dumps(payload))


@pytest.mark.parametrize("key", ["", "k" * (KEY_LENGTH + 1)])
def test_a_key_of_another_length_is_refused(key: str) -> None:
    with pytest.raises(TokenError, match="unknown format"):
        read_unsubscribe_token(SECRET, unsubscribe_token(SECRET, key))


@pytest.mark.parametrize("mangle", [tampered, lambda t: t[:10], lambda t: "", lambda t: t + "x"])
def test_forged_unsubscribe_token_is_refused(mangle: object) -> None:
    for token in (unsubscribe_token(SECRET, KEY), legacy_unsubscribe_token(42, "ada@example.org")):
        with pytest.raises(TokenError, match="forged or damaged"):
            read_unsubscribe_token(SECRET, mangle(token))  # type: ignore[operator]


def test_token_from_another_secret_is_refused() -> None:
    token = unsubscribe_token(b"another secret", KEY)
    with pytest.raises(TokenError):
        read_unsubscribe_token(SECRET, token)


def test_confirm_token_round_trips_within_its_age() -> None:
    token = confirm_token(SECRET, KEY, now=SIGNED_AT)
    later = SIGNED_AT + timedelta(hours=47)
    assert read_confirm_token(SECRET, token, 48 * 3600, now=later) == KEY


def test_confirm_tokens_signed_before_keys_still_confirm() -> None:
    old = URLSafeTimedSerializer(SECRET, salt=CONFIRM_SALT,
                                 signer_kwargs={"digest_method": hashlib.sha256}).dumps(
        [5, "bo@example.org"])
    assert read_confirm_token(SECRET, old, 3600) == SignedAddress(5, "bo@example.org")


def test_confirm_token_expires() -> None:
    token = confirm_token(SECRET, KEY, now=SIGNED_AT)
    later = SIGNED_AT + timedelta(hours=48, seconds=1)
    with pytest.raises(TokenError, match="expired"):
        read_confirm_token(SECRET, token, 48 * 3600, now=later)


def test_confirm_token_without_clock_uses_the_current_time() -> None:
    token = confirm_token(SECRET, KEY)
    assert read_confirm_token(SECRET, token, 60) == KEY


def test_one_kind_of_token_is_not_accepted_as_the_other() -> None:
    confirm = confirm_token(SECRET, KEY, now=SIGNED_AT)
    unsubscribe = unsubscribe_token(SECRET, KEY)
    with pytest.raises(TokenError):
        read_unsubscribe_token(SECRET, confirm)
    with pytest.raises(TokenError):
        read_confirm_token(SECRET, unsubscribe, 3600, now=SIGNED_AT)


def test_secret_comes_from_the_environment(tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(SECRET_ENV, "from the environment")
    config = config_with_key(tmp_path)
    assert load_secret(config) == b"from the environment"
    assert not config.state.key_file.exists()


def test_key_file_is_created_private_next_to_the_database(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.delenv(SECRET_ENV, raising=False)
    config = config_with_key(tmp_path)
    assert config.state.key_file == tmp_path / "state" / "secret.key"
    with caplog.at_level(logging.WARNING, logger="publisher.tokens"):
        secret = load_secret(config)
    assert stat.S_IMODE(config.state.key_file.stat().st_mode) == 0o600
    assert len(secret) >= 32
    assert [r.getMessage() for r in caplog.records if "created a new secret key" in
            r.getMessage()] != []
    assert list(config.state.key_file.parent.iterdir()) == [config.state.key_file]

    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="publisher.tokens"):
        assert load_secret(config) == secret
    assert caplog.records == []


def test_existing_key_file_is_kept(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(SECRET_ENV, raising=False)
    key_file = tmp_path / "my.key"
    key_file.write_text("kept key\n")
    key_file.chmod(0o600)
    assert load_secret(config_with_key(tmp_path, str(key_file))) == b"kept key"


def test_readable_key_file_is_reported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                      caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.delenv(SECRET_ENV, raising=False)
    key_file = tmp_path / "open.key"
    key_file.write_text("open key\n")
    key_file.chmod(0o644)
    with caplog.at_level(logging.WARNING, logger="publisher.tokens"):
        load_secret(config_with_key(tmp_path, str(key_file)))
    assert any("readable by other users" in r.getMessage() for r in caplog.records)


def test_empty_key_file_is_an_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(SECRET_ENV, raising=False)
    key_file = tmp_path / "empty.key"
    key_file.write_text("\n")
    with pytest.raises(SecretKeyError, match="empty") as caught:
        load_secret(config_with_key(tmp_path, str(key_file)))
    assert caught.value.path == key_file
    assert caught.value.field == "state.key_file"


def test_key_file_that_cannot_be_created_is_an_error(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(SECRET_ENV, raising=False)
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where a folder should be")
    with pytest.raises(SecretKeyError, match="cannot create") as caught:
        load_secret(config_with_key(tmp_path, str(blocker / "secret.key")))
    assert caught.value.path == blocker / "secret.key"
