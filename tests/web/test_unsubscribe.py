"""Unsubscribing through the web service: the page, its button, RFC 8058 one-click, and
every link old or new."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import re
import zlib
from email import policy
from email.parser import BytesParser

import pytest
from itsdangerous import URLSafeSerializer

from publisher.ledger import Ledger, new_key
from publisher.mail import Mailer, Recipient
from publisher.site import load_calendar
from publisher.subscriptions.fields import subscriber_row
from publisher.tokens import UNSUBSCRIBE_SALT, confirm_token, unsubscribe_token
from tests.fixtures.browser import SECRET, SITE_DAY, TEST_ORIGIN, MakeWebSite, WebSite, text_part
from tests.fixtures.web import (
    EVIL,
    FORM,
    ONE_CLICK,
    confirmed_member,
    mailed_unsubscribe_link,
    path_of,
    status_of,
)


def legacy_link(subscriber_id: int, email: str) -> str:
    """Return an unsubscribe path as emails sent before subscriber keys carried it."""
    serializer = URLSafeSerializer(SECRET, salt=UNSUBSCRIBE_SALT,
                                   signer_kwargs={"digest_method": hashlib.sha256})
    return f"/unsubscribe/{serializer.dumps([subscriber_id, email])}"


def test_the_unsubscribe_page_changes_nothing_until_its_button(web_site: WebSite) -> None:
    _, path = confirmed_member(web_site)
    client = web_site.client()
    for _ in range(2):  # link scanners fetch the page, sometimes repeatedly
        shown = client.get(path)
        assert shown.status_code == 200
        assert shown.headers["referrer-policy"] == "no-referrer"
        assert "member@example.org" in shown.text
        assert client.head(path).status_code == 200
    assert status_of(web_site.ledger, "member@example.org") == "confirmed"
    done = client.post(path, data={"unsubscribe": "yes"},
                       headers={"origin": TEST_ORIGIN, "sec-fetch-site": "same-origin"})
    assert done.status_code == 200
    assert "You are unsubscribed" in done.text
    assert status_of(web_site.ledger, "member@example.org") == "unsubscribed"


def test_one_click_post_needs_no_cookie_and_no_origin(make_web_site: MakeWebSite,
                                                      ledger: Ledger) -> None:
    site = make_web_site(ledger)
    _, path = confirmed_member(site)
    client = site.client()
    client.cookies.clear()
    first = client.post(path, content=b"List-Unsubscribe=One-Click",
                        headers={"content-type": "application/x-www-form-urlencoded"})
    assert first.status_code == 200
    assert "set-cookie" not in first.headers
    assert status_of(ledger, "member@example.org") == "unsubscribed"
    second = client.post(path, content=b"List-Unsubscribe=One-Click",
                         headers={"content-type": "application/x-www-form-urlencoded"})
    assert second.status_code == 200  # idempotent


def test_one_click_post_is_accepted_as_multipart_and_cross_site(web_site: WebSite) -> None:
    _, path = confirmed_member(web_site)
    body = (b'--b0\r\nContent-Disposition: form-data; name="List-Unsubscribe"\r\n\r\n'
            b"One-Click\r\n--b0--\r\n")
    response = web_site.client().post(path, content=body, headers={
        "content-type": "multipart/form-data; boundary=b0", "origin": EVIL})
    assert response.status_code == 200
    assert status_of(web_site.ledger, "member@example.org") == "unsubscribed"


def test_the_button_form_posted_cross_site_is_refused(web_site: WebSite) -> None:
    _, path = confirmed_member(web_site)
    response = web_site.client().post(path, data={"unsubscribe": "yes"},
                                      headers={"origin": EVIL})
    assert response.status_code == 403
    assert status_of(web_site.ledger, "member@example.org") == "confirmed"


@pytest.mark.parametrize("mangle", [
    lambda token: token[:-2] + ("AA" if not token.endswith("AA") else "BB"),
    lambda token: token.split(".")[0],
    lambda token: "garbage",
])
def test_a_forged_unsubscribe_token_is_400_and_changes_nothing(web_site: WebSite,
                                                               mangle: object) -> None:
    assert callable(mangle)
    _, path = confirmed_member(web_site)
    forged = "/unsubscribe/" + mangle(path.rsplit("/", 1)[1])
    client = web_site.client()
    assert client.get(forged).status_code == 400
    response = client.post(forged, content=b"List-Unsubscribe=One-Click",
                           headers={"content-type": "application/x-www-form-urlencoded"})
    assert response.status_code == 400
    assert "forged or damaged" in response.text
    assert status_of(web_site.ledger, "member@example.org") == "confirmed"


def test_a_confirm_token_does_not_unsubscribe(web_site: WebSite) -> None:
    subscriber_id, _ = confirmed_member(web_site)
    member = web_site.ledger.get_subscriber(subscriber_id)
    assert member is not None
    token = confirm_token(SECRET, str(member.unsubscribe_key), now=web_site.clock.now)
    assert web_site.client().post(f"/unsubscribe/{token}").status_code == 400
    assert status_of(web_site.ledger, "member@example.org") == "confirmed"


def test_unsubscribing_a_removed_address_still_answers_200(web_site: WebSite) -> None:
    _, path = confirmed_member(web_site)
    web_site.ledger.remove("member@example.org")
    response = web_site.client().post(path, content=ONE_CLICK, headers=FORM)
    assert response.status_code == 200
    assert "was already unsubscribed" in response.text
    web_site.ledger.remove("member@example.org", forget=True)
    response = web_site.client().post(path, content=ONE_CLICK, headers=FORM)
    assert response.status_code == 200
    assert "nothing was changed" in response.text


def test_every_unsubscribe_link_old_or_new_unsubscribes_its_address(
        make_web_site: MakeWebSite, ledger: Ledger) -> None:
    site = make_web_site(ledger)
    client = site.client()
    ada, _ = ledger.add_subscriber(subscriber_row("ada@example.org", "Ada"))
    bo, _ = ledger.add_subscriber(subscriber_row("bo@example.org"))
    # A link from before keys, signed for an id the address no longer has (say, it was
    # removed and imported again since): the signature vouches for the address.
    old_path = legacy_link(ada.id + 1000, "ada@example.org")
    shown = client.get(old_path)
    assert shown.status_code == 200 and "ada@example.org" in shown.text
    done = client.post(old_path, content=ONE_CLICK, headers=FORM)
    assert done.status_code == 200
    assert status_of(ledger, "ada@example.org") == "unsubscribed"
    assert "ada@example.org</strong> will receive no more emails" in done.text
    assert client.post(legacy_link(bo.id, "bo@example.org"), content=ONE_CLICK,
                       headers=FORM).status_code == 200
    assert status_of(ledger, "bo@example.org") == "unsubscribed"
    new_path = f"/unsubscribe/{unsubscribe_token(SECRET, str(ada.unsubscribe_key))}"
    again = client.post(new_path, content=ONE_CLICK, headers=FORM)
    assert again.status_code == 200 and "was already unsubscribed" in again.text


def test_the_unsubscribe_page_never_claims_a_change_it_did_not_make(web_site: WebSite) -> None:
    client = web_site.client()

    def check(path: str) -> None:
        for response in (client.get(path), client.post(path, content=ONE_CLICK, headers=FORM)):
            assert response.status_code == 200
            assert "You are unsubscribed" not in response.text
            assert "nothing was changed" in response.text
            assert "<button" not in response.text.split('class="unsubscribed"')[1]

    check(legacy_link(7, "stranger@example.org"))  # signed for an address never known
    check(f"/unsubscribe/{unsubscribe_token(SECRET, new_key())}")  # a key nobody has
    assert web_site.ledger.find_subscriber("stranger@example.org") is None


def test_unsubscribe_links_in_emails_name_a_key_and_nothing_else(
        make_web_site: MakeWebSite, ledger: Ledger) -> None:
    site = make_web_site(ledger)
    member, _ = ledger.add_subscriber(subscriber_row("member@example.org", "Member"))
    path = mailed_unsubscribe_link(site, "member@example.org")
    token = path.rsplit("/", 1)[1]
    decoded = b""
    for part in token.split("."):
        raw = base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))
        with contextlib.suppress(zlib.error):
            raw = zlib.decompress(raw)
        decoded += raw
    # (Clues of five bytes or more: a short one could turn up in the random bytes by chance.)
    for clue in (b"member", b"example", b"Member", f'[{member.id},"'.encode()):
        assert clue not in decoded
    assert "@" not in token and "member" not in token
    # One token per subscriber, the same every time: a message sent again has the same bytes.
    assert token == unsubscribe_token(SECRET, str(member.unsubscribe_key))
    mails = [m for m in site.mails() if m["To"].addresses[0].addr_spec == member.email]
    assert len(mails) == 2  # both of the day's articles
    assert all(token in text_part(m) and token in str(m["List-Unsubscribe"]) for m in mails)
    response = site.client().post(path, content=ONE_CLICK, headers=FORM)
    assert response.status_code == 200
    assert status_of(ledger, "member@example.org") == "unsubscribed"


def test_the_list_unsubscribe_header_of_an_email_works(web_site: WebSite) -> None:
    subscriber_id, _ = confirmed_member(web_site)
    calendar, _ = load_calendar(web_site.config)
    [event] = [e for e in calendar.events_on(SITE_DAY) if e.article.slug == "pi"]
    mailer = Mailer(web_site.config, SECRET)
    member = web_site.ledger.get_subscriber(subscriber_id)
    assert member is not None
    data = mailer.edition(event).message(Recipient(subscriber_id, "member@example.org", "Member",
                                                   unsubscribe_key=str(member.unsubscribe_key)))
    message = BytesParser(policy=policy.default).parsebytes(data)
    assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    url = re.search(r"<(https?://[^>]+)>", str(message["List-Unsubscribe"]))
    assert url is not None
    assert url.group(1).startswith(web_site.config.site.url("unsubscribe/"))
    response = web_site.client().post(path_of(url.group(1)),
                                      content=b"List-Unsubscribe=One-Click",
                                      headers={"content-type": "application/x-www-form-urlencoded"})
    assert response.status_code == 200
    assert status_of(web_site.ledger, "member@example.org") == "unsubscribed"
