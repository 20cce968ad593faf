"""The preferences page and the sign-up form's choices, through Starlette's TestClient."""

from __future__ import annotations

import re
from urllib.parse import urlsplit

import pytest

from publisher.preferences import Choices, parse_choices
from publisher.subscriptions.fields import subscriber_row
from publisher.tokens import confirm_token, unsubscribe_token
from tests.fixtures.browser import SECRET, TEST_ORIGIN, WebSite

SAME_SITE = {"origin": TEST_ORIGIN, "sec-fetch-site": "same-origin"}
DIGEST_MILESTONES = {"anniversaries": "milestones", "frequency": "digest", "time": "07:30",
                     "tags": ["physics"]}


def member(site: WebSite, email: str = "member@example.org") -> str:
    """Add a confirmed subscriber; return the path of their preferences page."""
    subscriber, _ = site.ledger.add_subscriber(subscriber_row(email, "Member"))
    return f"/preferences/{unsubscribe_token(SECRET, str(subscriber.unsubscribe_key))}"


def choices_of(site: WebSite, email: str = "member@example.org") -> Choices:
    """Return what a subscriber has chosen, as stored."""
    found = site.ledger.find_subscriber(email)
    assert found is not None
    return found.choices


def test_the_page_shows_the_choices_and_a_get_changes_nothing(web_site: WebSite) -> None:
    path = member(web_site)
    web_site.ledger.set_choices(parse_choices(years="1, 10", tags="science"),
                                email="member@example.org")
    shown = web_site.client().get(path)
    assert shown.status_code == 200
    assert shown.headers["referrer-policy"] == "no-referrer"
    assert "member@example.org" in shown.text
    assert re.search(r'value="years" checked', shown.text)
    assert 'value="1,10"' in shown.text
    assert re.search(r'value="each" checked', shown.text)
    assert choices_of(web_site) == parse_choices(years="1, 10", tags="science")


def test_saving_stores_every_choice(web_site: WebSite) -> None:
    path = member(web_site)
    saved = web_site.client().post(path, data=DIGEST_MILESTONES, headers=SAME_SITE)
    assert saved.status_code == 200
    assert "Saved." in saved.text
    assert choices_of(web_site) == Choices("milestones", "digest", "07:30", ("physics",))
    again = web_site.client().post(path, data={"anniversaries": "years", "years": "3 7",
                                               "frequency": "each", "time": ""},
                                   headers=SAME_SITE)
    assert again.status_code == 200
    assert choices_of(web_site) == Choices((3, 7))


def test_saving_a_new_time_records_when(web_site: WebSite) -> None:
    path = member(web_site)
    form = {"anniversaries": "every", "frequency": "each", "time": ""}
    assert web_site.client().post(path, data=form, headers=SAME_SITE).status_code == 200
    found = web_site.ledger.find_subscriber("member@example.org")
    assert found is not None and found.changed_at is None  # nothing changed
    web_site.clock.advance(minutes=5)
    assert web_site.client().post(path, data={**form, "time": "06:45"},
                                  headers=SAME_SITE).status_code == 200
    found = web_site.ledger.find_subscriber("member@example.org")
    assert found is not None and found.changed_at == web_site.clock.now


def test_a_bad_choice_is_400_and_changes_nothing(web_site: WebSite) -> None:
    path = member(web_site)
    response = web_site.client().post(path, data={**DIGEST_MILESTONES, "time": "25:00"},
                                      headers=SAME_SITE)
    assert response.status_code == 400
    assert "Please check the time" in response.text
    assert choices_of(web_site) == Choices()


def test_the_form_posted_cross_site_is_refused(web_site: WebSite) -> None:
    path = member(web_site)
    response = web_site.client().post(path, data=DIGEST_MILESTONES,
                                      headers={"origin": "https://evil.example"})
    assert response.status_code == 403
    assert choices_of(web_site) == Choices()


@pytest.mark.parametrize("mangle", [
    lambda token: token[:-2] + ("AA" if not token.endswith("AA") else "BB"),
    lambda token: token.split(".")[0],
    lambda token: "garbage",
])
def test_a_forged_token_is_400_and_changes_nothing(web_site: WebSite, mangle: object) -> None:
    assert callable(mangle)
    path = member(web_site)
    forged = "/preferences/" + mangle(path.rsplit("/", 1)[1])
    client = web_site.client()
    assert client.get(forged).status_code == 400
    response = client.post(forged, data=DIGEST_MILESTONES, headers=SAME_SITE)
    assert response.status_code == 400
    assert choices_of(web_site) == Choices()


def test_a_confirm_token_does_not_open_the_preferences(web_site: WebSite) -> None:
    member(web_site)
    found = web_site.ledger.find_subscriber("member@example.org")
    assert found is not None
    token = confirm_token(SECRET, str(found.unsubscribe_key), now=web_site.clock.now)
    assert web_site.client().get(f"/preferences/{token}").status_code == 400


def test_an_unsubscribed_address_has_nothing_to_choose(web_site: WebSite) -> None:
    path = member(web_site)
    web_site.ledger.unsubscribe_link(email="member@example.org")
    response = web_site.client().post(path, data=DIGEST_MILESTONES, headers=SAME_SITE)
    assert response.status_code == 200
    assert "Save" not in response.text
    assert choices_of(web_site) == Choices()


def test_sign_up_choices_apply_once_confirmed(web_site: WebSite) -> None:
    client = web_site.client()
    page = client.get("/subscribe")
    assert page.status_code == 200
    assert 'name="frequency" value="digest"' in page.text
    response = client.post("/subscribe", data={"email": "new@example.org", "name": "",
                                               "timezone": "", **DIGEST_MILESTONES},
                           headers=SAME_SITE)
    assert response.status_code == 200
    [mail] = web_site.mails()
    link = re.search(r"/confirm/[A-Za-z0-9._-]+", mail.get_body(("plain",)).get_content())
    assert link is not None
    done = client.post(link.group(0), headers=SAME_SITE)
    assert done.status_code == 200
    preferences = re.search(r'href="([^"]*/preferences/[^"]+)"', done.text)
    assert preferences is not None
    assert choices_of(web_site, "new@example.org") == Choices("milestones", "digest", "07:30",
                                                              ("physics",))
    shown = client.get(urlsplit(preferences.group(1)).path)
    assert shown.status_code == 200 and "new@example.org" in shown.text


def test_a_bad_choice_at_sign_up_is_400_and_stores_nothing(web_site: WebSite) -> None:
    response = web_site.client().post(
        "/subscribe", data={"email": "new@example.org", "anniversaries": "years",
                            "years": "ten"}, headers=SAME_SITE)
    assert response.status_code == 400
    assert "Please check the years" in response.text
    assert web_site.ledger.find_subscriber("new@example.org") is None


def test_the_preview_shows_the_days_digest(web_site: WebSite) -> None:
    client = web_site.client()
    listing = client.get("/preview/?days=1").text
    assert 'href="../preview/email/2026-03-14/@digest.html"' in listing
    digest = client.get("/preview/email/2026-03-14/@digest.txt")
    assert digest.status_code == 200
    assert digest.text.startswith("Subject: Web <Anniversaries>: 14 March 2026")
    assert "Pi day & <circles>" in digest.text and "A birthday" in digest.text
    assert client.get("/preview/email/2026-03-15/@digest.html").status_code == 404
