"""The web service in Debian's Chromium (Playwright), served by uvicorn on loopback, with mail
going to the aiosmtpd test server."""

from __future__ import annotations

import re
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser

import httpx2
import pytest
from playwright.sync_api import ConsoleMessage, Page, Route

from publisher.calendar import Event
from publisher.ledger import Subscriber, subscriber_row
from publisher.mail import Mailer, Recipient
from publisher.site import load_calendar
from publisher.tokens import unsubscribe_token
from tests.fixtures.browser import BROWSER_ZONE, SITE_DAY, LiveSite, link_in, wait_for

pytestmark = pytest.mark.browser



def _one_click(client: httpx2.Client, url: str) -> int:
    """Post RFC 8058's one-click body as a mail provider does; return the status code."""
    return client.post(url, content=b"List-Unsubscribe=One-Click",
                       headers={"content-type": "application/x-www-form-urlencoded"}
                       ).status_code


def _status(live: LiveSite, email: str) -> str | None:
    subscriber = live.ledger.find_subscriber(email)
    return subscriber.status if subscriber is not None else None


def _confirmation_for(live: LiveSite, email: str) -> EmailMessage:
    received = wait_for(lambda: live.smtp.received_by(email) or None,
                        f"the confirmation email to {email}")
    message = BytesParser(policy=policy.default).parsebytes(received[0].data)
    assert isinstance(message, EmailMessage)
    return message


def _event(live: LiveSite, slug: str) -> Event:
    calendar, _ = load_calendar(live.config)
    [event] = [e for e in calendar.events_on(SITE_DAY) if e.article.slug == slug]
    return event


def _list_unsubscribe_url(live: LiveSite, subscriber: Subscriber) -> str:
    # The link a real edition carries, as a subscriber's mail program shows it.
    data = Mailer(live.config, live.secret).edition(_event(live, "pi")).message(
        Recipient(subscriber.id, subscriber.email, subscriber.name,
                  unsubscribe_key=str(subscriber.unsubscribe_key)))
    header = BytesParser(policy=policy.default).parsebytes(data)["List-Unsubscribe"]
    found = re.search(r"<(http[^>]+)>", str(header))
    assert found is not None
    return found.group(1)


def _csp_complaints(page: Page) -> list[str]:
    complaints: list[str] = []

    def listen(message: ConsoleMessage) -> None:
        if "Content Security Policy" in message.text or "Content-Security-Policy" in message.text:
            complaints.append(message.text)

    page.on("console", listen)
    return complaints


def test_subscribe_confirm_and_unsubscribe_in_the_browser(live_site: LiveSite,
                                                          browser_page: Page) -> None:
    page = browser_page
    complaints = _csp_complaints(page)
    page.goto(live_site.url)
    # The script filled in the browser's zone under the page's Content-Security-Policy.
    assert page.input_value("form.subscribe-form input[name=timezone]") == BROWSER_ZONE
    page.fill("#subscribe-email", "Reader@Example.org")
    page.fill("#subscribe-name", "Ada <Lovelace>")
    page.click("form.subscribe-form button[type=submit]")
    page.wait_for_selector("text=Check your inbox")
    assert "reader@example.org" in page.inner_text("main")

    message = _confirmation_for(live_site, "reader@example.org")
    assert _status(live_site, "reader@example.org") == "pending"
    page.goto(link_in(message, live_site.url, "confirm"))
    assert _status(live_site, "reader@example.org") == "pending"  # opening the link is not enough
    page.click("text=Yes, confirm my subscription")
    page.wait_for_selector("text=You are subscribed")
    subscriber = live_site.ledger.find_subscriber("reader@example.org")
    assert subscriber is not None and subscriber.status == "confirmed"
    assert (subscriber.name, subscriber.timezone) == ("Ada <Lovelace>", BROWSER_ZONE)

    page.goto(_list_unsubscribe_url(live_site, subscriber))
    page.wait_for_selector("text=Stop sending")
    assert _status(live_site, "reader@example.org") == "confirmed"
    page.click("button:has-text('Unsubscribe')")
    page.wait_for_selector("text=You are unsubscribed")
    assert _status(live_site, "reader@example.org") == "unsubscribed"
    assert complaints == []


def test_a_preview_renders_the_article(live_site: LiveSite, browser_page: Page) -> None:
    page = browser_page
    page.goto(live_site.url + f"preview/?from={SITE_DAY.isoformat()}&days=1")
    title = _event(live_site, "pi").article.title
    assert title in page.inner_text("table.preview-events")
    page.click(f"a[href$='/preview/email/{SITE_DAY.isoformat()}/pi.html']")
    page.wait_for_load_state()
    assert page.url.endswith("/pi.html")
    text = page.inner_text("body")
    assert title in text
    assert "The ratio of a circle" in text
    assert "Sample Reader" in text


def test_a_cross_site_form_is_refused(live_site: LiveSite, browser_page: Page) -> None:
    page = browser_page
    attack = (f'<form method="post" action="{live_site.url}subscribe">'
              '<input name="email" value="victim@example.org"></form>'
              "<script>document.forms[0].submit()</script>")

    def evil(route: Route) -> None:
        route.fulfill(status=200, content_type="text/html", body=attack)

    page.route("http://evil.test/", evil)
    with page.expect_response(f"{live_site.url}subscribe") as answer:
        page.goto("http://evil.test/")
    assert answer.value.status == 403
    page.wait_for_selector("text=Not allowed")
    assert _status(live_site, "victim@example.org") is None
    assert live_site.smtp.received_by("victim@example.org") == []


def test_conditional_get_from_the_page_gets_304(live_site: LiveSite,
                                                browser_page: Page) -> None:
    page = browser_page
    page.goto(live_site.url)
    statuses = page.evaluate("""async () => {
        const first = await fetch("feed.xml", {cache: "no-store"});
        const etag = first.headers.get("ETag");
        const again = await fetch("feed.xml", {headers: {"If-None-Match": etag}});
        const other = await fetch("feed.xml", {headers: {"If-None-Match": '"stale"'}});
        return [first.status, again.status, other.status, etag];
    }""")
    assert statuses[:3] == [200, 304, 200]
    assert statuses[3].startswith('"')


def test_one_click_and_forged_tokens_over_http(live_site: LiveSite, browser_page: Page) -> None:
    subscriber, _ = live_site.ledger.add_subscriber(subscriber_row("member@example.org", "M"))
    url = _list_unsubscribe_url(live_site, subscriber)
    token = url.rsplit("/", 1)[1]
    forged = url[: -len(token)] + unsubscribe_token(b"another secret",
                                                    str(subscriber.unsubscribe_key))
    # A mail provider's POST: no cookies, no Origin, no browser.
    with httpx2.Client() as client:
        assert _one_click(client, forged) == 400
        assert _status(live_site, "member@example.org") == "confirmed"
        assert _one_click(client, url) == 200
        assert _one_click(client, url) == 200  # idempotent
        assert not client.cookies
    assert _status(live_site, "member@example.org") == "unsubscribed"
    browser_page.goto(forged)
    assert "forged or damaged" in browser_page.inner_text("main")
