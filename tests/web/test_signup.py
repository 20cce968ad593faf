"""Double opt-in sign-up through the web service: the form, the confirmation link, and the
purge of sign-ups never confirmed."""

from __future__ import annotations

from datetime import timedelta
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from publisher.ledger import Ledger
from publisher.subscriptions.csvfiles import import_csv
from publisher.subscriptions.fields import subscriber_row
from publisher.tokens import unsubscribe_token
from tests.fixtures.browser import LOOPBACK_CLIENT, SECRET, MakeWebSite, WebSite, link_in, wait_for
from tests.fixtures.smtp import SmtpSink
from tests.fixtures.web import (
    FORM,
    ONE_CLICK,
    form_action,
    mailed_unsubscribe_link,
    path_of,
    sign_up,
    status_of,
)


def test_sign_up_sends_a_link_that_confirms(make_web_site: MakeWebSite, ledger: Ledger) -> None:
    site = make_web_site(ledger)
    client = site.client()
    response = sign_up(client, " Reader@Example.ORG ", name="Ada", timezone="America/Chicago")
    assert response.status_code == 200
    assert "Check your inbox" in response.text
    pending = ledger.find_subscriber("reader@example.org")
    assert pending is not None and pending.status == "pending"
    assert (pending.name, pending.timezone) == ("Ada", "America/Chicago")
    [mail] = site.mails()
    assert mail["To"].addresses[0].addr_spec == "reader@example.org"
    link = link_in(mail, site.config.site.base_url, "confirm")

    shown = client.get(path_of(link))
    assert shown.status_code == 200
    assert "Yes, confirm my subscription" in shown.text
    assert form_action(shown, link) == link  # the button posts back to the same address
    assert status_of(ledger, "reader@example.org") == "pending"

    done = client.post(path_of(link))
    assert done.status_code == 200
    assert "You are subscribed" in done.text
    confirmed = ledger.find_subscriber("reader@example.org")
    assert confirmed is not None and confirmed.status == "confirmed"
    assert confirmed.confirmed_at == site.clock.now
    assert client.post(path_of(link)).status_code == 200  # following it twice is harmless


def check_same_answer_as_for_a_new_address(client: TestClient, email: str) -> None:
    """Sign up ``email`` and a new address with the same name and zone: the answers match."""
    for_known = sign_up(client, email, name="Someone", timezone="Asia/Tokyo")
    for_new = sign_up(client, "fresh@example.org", name="Someone", timezone="Asia/Tokyo")
    assert for_known.status_code == for_new.status_code == 200
    assert (for_known.text.replace(email, "ADDRESS")
            == for_new.text.replace("fresh@example.org", "ADDRESS"))


def test_a_confirmed_address_gets_the_same_answer_and_nothing_else(
        make_web_site: MakeWebSite, ledger: Ledger) -> None:
    site = make_web_site(ledger)
    known, _ = ledger.add_subscriber(subscriber_row("known@example.org", "Old Name"),
                                     now=site.clock.now - timedelta(days=30))
    check_same_answer_as_for_a_new_address(site.client(), "known@example.org")
    assert ledger.find_subscriber("known@example.org") == known
    assert [m["To"].addresses[0].addr_spec for m in site.mails()] == ["fresh@example.org"]


def test_a_pending_address_gets_a_fresh_link(web_site: WebSite) -> None:
    client = web_site.client()
    sign_up(client, "twice@example.org")
    web_site.clock.advance(hours=1)
    sign_up(client, "twice@example.org")
    links = [link_in(m, web_site.config.site.base_url, "confirm") for m in web_site.mails()]
    assert len(links) == 2 and links[0] != links[1]
    assert client.post(path_of(links[0])).status_code == 200  # the first one still works


@pytest.mark.parametrize("leave", ["unsubscribed", "bounced"])
def test_an_address_that_left_comes_back_only_through_its_own_link(
        make_web_site: MakeWebSite, ledger: Ledger, leave: str) -> None:
    site = make_web_site(ledger)
    gone, _ = ledger.add_subscriber(subscriber_row("back@example.org", "Back", "UTC"),
                                    now=site.clock.now - timedelta(days=30))
    if leave == "bounced":
        ledger.bounce(gone.id, "5.1.1 no such user")
    else:
        ledger.unsubscribe_link(email=gone.email)
    before = ledger.find_subscriber("back@example.org")
    client = site.client()
    check_same_answer_as_for_a_new_address(client, "back@example.org")
    # Anyone can post the form: until the emailed link is followed nothing changes.
    assert ledger.find_subscriber("back@example.org") == before
    mail = next(m for m in site.mails() if m["To"].addresses[0].addr_spec == "back@example.org")
    link = path_of(link_in(mail, site.config.site.base_url, "confirm"))
    shown = client.get(link)
    assert shown.status_code == 200 and "back@example.org" in shown.text
    assert ledger.find_subscriber("back@example.org") == before
    site.clock.advance(hours=1)
    assert client.post(link).status_code == 200
    back = ledger.find_subscriber("back@example.org")
    assert back is not None
    assert (back.status, back.name, back.timezone, back.confirmed_at, back.unsubscribed_at) == (
        "confirmed", "Someone", "Asia/Tokyo", site.clock.now, None)
    assert back.id == gone.id


def test_anyone_posting_the_form_cannot_undo_an_unsubscribe(
        make_web_site: MakeWebSite, ledger: Ledger, tmp_path: Path) -> None:
    # The chain that undid an unsubscribe: a stranger's sign-up turned the row to pending, the
    # purge deleted it with its suppression, an old CSV imported it again under a new id, and
    # the old unsubscribe link then said "You are unsubscribed" while changing nothing.
    site = make_web_site(ledger)
    victim, _ = ledger.add_subscriber(subscriber_row("victim@example.org", "Victim"))
    client = site.client()
    link = mailed_unsubscribe_link(site, victim.email)
    assert client.post(link, content=ONE_CLICK, headers=FORM).status_code == 200
    left = ledger.find_subscriber("victim@example.org")
    assert left is not None and left.status == "unsubscribed"

    assert sign_up(client, "victim@example.org", name="Stranger").status_code == 200
    assert ledger.find_subscriber("victim@example.org") == left
    site.clock.advance(days=site.config.web.pending_days, hours=1)
    assert site.app(purge=False).state.service.subscriptions.purge() == 1
    assert ledger.find_subscriber("victim@example.org") == left
    old_csv = tmp_path / "old.csv"
    old_csv.write_text("email,name\nvictim@example.org,Victim\n", encoding="utf-8")
    report = import_csv(ledger, old_csv)
    assert (report.added, report.suppressed) == (0, [("victim@example.org", "unsubscribed")])
    assert ledger.find_subscriber("victim@example.org") == left
    again = client.post(link, content=ONE_CLICK, headers=FORM)
    assert again.status_code == 200
    assert "victim@example.org</strong> was already unsubscribed" in again.text
    assert ledger.find_subscriber("victim@example.org") == left


@pytest.mark.parametrize(("email", "name", "message"), [
    ("", "", "Please check the address"),
    ("no-at-sign", "", "Please check the address"),
    ("a@example.org", "x" * 201, "Please shorten the name"),
])
def test_bad_input_shows_the_form_again(web_site: WebSite, email: str, name: str,
                                        message: str) -> None:
    response = sign_up(web_site.client(), email, name=name)
    assert response.status_code == 400
    assert message in response.text
    assert 'class="subscribe-form"' in response.text
    assert web_site.mails() == []
    assert web_site.ledger.subscriber_counts()["pending"] == 0


def test_an_unknown_time_zone_falls_back_to_the_site_zone(web_site: WebSite) -> None:
    sign_up(web_site.client(), "zone@example.org", timezone="Mars/Olympus_Mons")
    subscriber = web_site.ledger.find_subscriber("zone@example.org")
    assert subscriber is not None and subscriber.timezone is None


def test_an_expired_confirmation_link_changes_nothing(web_site: WebSite) -> None:
    client = web_site.client()
    sign_up(client, "late@example.org")
    [mail] = web_site.mails()
    link = path_of(link_in(mail, web_site.config.site.base_url, "confirm"))
    web_site.clock.advance(hours=web_site.config.web.confirm_hours, seconds=1)
    for response in (client.get(link), client.post(link)):
        assert response.status_code == 400
        assert "expired" in response.text
    assert status_of(web_site.ledger, "late@example.org") == "pending"


@pytest.mark.parametrize("token", ["forged", "eyJhIjoxfQ.AAAA.BBBB", "x" * 300])
def test_a_forged_confirmation_link_is_400(web_site: WebSite, token: str) -> None:
    client = web_site.client()
    assert client.get(f"/confirm/{token}").status_code == 400
    response = client.post(f"/confirm/{token}")
    assert response.status_code == 400
    assert "forged or damaged" in response.text


def test_an_unsubscribe_token_does_not_confirm(web_site: WebSite) -> None:
    client = web_site.client()
    sign_up(client, "mixed@example.org")
    subscriber = web_site.ledger.find_subscriber("mixed@example.org")
    assert subscriber is not None
    token = unsubscribe_token(SECRET, str(subscriber.unsubscribe_key))
    assert client.post(f"/confirm/{token}").status_code == 400
    assert status_of(web_site.ledger, "mixed@example.org") == "pending"


def test_a_link_for_a_removed_sign_up_is_400(web_site: WebSite) -> None:
    client = web_site.client()
    sign_up(client, "removed@example.org")
    [mail] = web_site.mails()
    web_site.ledger.remove("removed@example.org")
    response = client.post(path_of(link_in(mail, web_site.config.site.base_url, "confirm")))
    assert response.status_code == 400
    assert "no longer valid" in response.text
    assert web_site.ledger.find_subscriber("removed@example.org") is None


def test_confirmation_mail_through_smtp(make_web_site: MakeWebSite,
                                        smtp_server: SmtpSink) -> None:
    site = make_web_site(email=smtp_server.email_table())
    sign_up(site.client(), "smtp@example.org", name="Grace")
    [received] = smtp_server.received_by("smtp@example.org")
    message = BytesParser(policy=policy.default).parsebytes(received.data)
    assert isinstance(message, EmailMessage)
    assert "Grace" in message["To"]
    assert link_in(message, site.config.site.base_url, "confirm")


def test_a_failing_mail_server_leaves_the_answer_unchanged(
        make_web_site: MakeWebSite, smtp_server: SmtpSink, caplog: pytest.LogCaptureFixture
) -> None:
    site = make_web_site(email=smtp_server.email_table())
    smtp_server.answer("451 4.3.0 try later")
    response = sign_up(site.client(), "unlucky@example.org")
    assert response.status_code == 200 and "Check your inbox" in response.text
    assert "not sent" in caplog.text and "451" in caplog.text


def _sign_ups_of_various_ages(site: WebSite) -> None:
    ledger, now = site.ledger, site.clock.now
    days = site.config.web.pending_days
    ledger.add_pending(subscriber_row("stale@example.org", status="pending"),
                       now=now - timedelta(days=days, seconds=1))
    ledger.add_pending(subscriber_row("recent@example.org", status="pending"),
                       now=now - timedelta(days=days - 1))
    ledger.add_subscriber(subscriber_row("kept@example.org"), now=now - timedelta(days=400))


def test_purge_deletes_only_stale_pending_sign_ups(make_web_site: MakeWebSite,
                                                   ledger: Ledger) -> None:
    site = make_web_site(ledger)
    _sign_ups_of_various_ages(site)
    service = site.app(purge=False).state.service
    assert service.subscriptions.purge() == 1
    assert ledger.find_subscriber("stale@example.org") is None
    assert ledger.find_subscriber("recent@example.org") is not None
    assert ledger.find_subscriber("kept@example.org") is not None


def test_the_running_app_purges_at_start(web_site: WebSite) -> None:
    _sign_ups_of_various_ages(web_site)
    with TestClient(web_site.app(), client=LOOPBACK_CLIENT):
        wait_for(lambda: web_site.ledger.find_subscriber("stale@example.org") is None,
                 "the start-up purge")
    assert web_site.ledger.find_subscriber("recent@example.org") is not None
