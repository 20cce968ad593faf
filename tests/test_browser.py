"""The web service in Debian's Chromium (Playwright), served by uvicorn on loopback, with mail
going to the aiosmtpd test server."""

from __future__ import annotations

import re
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser

import httpx2
import pytest
from playwright.sync_api import Browser, ConsoleMessage, Page, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from publisher import web
from publisher.calendar import Event
from publisher.ledger import Subscriber
from publisher.mail import Mailer, Recipient
from publisher.site import load_calendar
from publisher.subscriptions.fields import subscriber_row
from publisher.tokens import unsubscribe_token
from tests.fixtures.browser import (
    BROWSER_ZONE,
    SITE_DAY,
    LiveSite,
    MakeWebSite,
    link_in,
    wait_for,
)

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


# ---------------------------------------------------------------------------------------------
# How the pages look and load: form controls, assets from the serving host, the icon
# ---------------------------------------------------------------------------------------------

PHONE = {"width": 375, "height": 740}
MIN_TOUCH_PX = 44

MEASURE_CONTROLS = """() => {
    const body = getComputedStyle(document.body);
    const controls = [...document.querySelectorAll(
        "input:not([type=hidden]), button, select, textarea")];
    return {
        fontSize: body.fontSize,
        scrollWidth: document.documentElement.scrollWidth,
        controls: controls.map(control => {
            const box = control.getBoundingClientRect();
            const style = getComputedStyle(control);
            return {name: control.id || control.textContent.trim(), height: box.height,
                    fontSize: style.fontSize, background: style.backgroundColor,
                    color: style.color};
        }),
    };
}"""


def _luminance(css_colour: str) -> float:
    """Return the WCAG relative luminance of an ``rgb()``/``rgba()`` colour from the browser."""
    red, green, blue = (int(part) for part in re.findall(r"[\d.]+", css_colour)[:3])

    def linear(channel: int) -> float:
        value = channel / 255
        return value / 12.92 if value <= 0.04045 else ((value + 0.055) / 1.055) ** 2.4

    return 0.2126 * linear(red) + 0.7152 * linear(green) + 0.0722 * linear(blue)


def _contrast(first: str, second: str) -> float:
    lighter, darker = sorted((_luminance(first), _luminance(second)), reverse=True)
    return (lighter + 0.05) / (darker + 0.05)


def _form_pages(live: LiveSite) -> list[str]:
    """Return a page of each kind that has form controls: sign-up, confirm, unsubscribe,
    preferences, preview."""
    email = "measured@example.org"
    with httpx2.Client() as client:
        assert client.post(live.url + "subscribe", data={"email": email}).status_code == 200
    confirm = link_in(_confirmation_for(live, email), live.url, "confirm")
    subscriber, _ = live.ledger.add_subscriber(subscriber_row("member@example.org", "M"))
    unsubscribe = _list_unsubscribe_url(live, subscriber)
    return [live.url, live.url + "subscribe", confirm, unsubscribe,
            unsubscribe.replace("/unsubscribe/", "/preferences/"), live.url + "preview/"]


def test_form_controls_fit_a_finger_in_light_and_dark(live_site: LiveSite,
                                                       chromium: Browser) -> None:
    pages = _form_pages(live_site)
    for scheme in ("light", "dark"):
        context = chromium.new_context(viewport=PHONE, color_scheme=scheme)
        try:
            page = context.new_page()
            for url in pages:
                page.goto(url)
                measured = page.evaluate(MEASURE_CONTROLS)
                assert measured["controls"], url
                assert measured["scrollWidth"] <= PHONE["width"], url
                for control in measured["controls"]:
                    where = (scheme, url, control["name"])
                    assert control["height"] >= MIN_TOUCH_PX, where
                    assert control["fontSize"] == measured["fontSize"], where
                    assert _contrast(control["color"], control["background"]) >= 4.5, where
                    if scheme == "dark":  # no white boxes on the dark page
                        assert _luminance(control["background"]) < 0.2, where
        finally:
            context.close()


def test_form_controls_show_where_the_focus_is(live_site: LiveSite, browser_page: Page) -> None:
    page = browser_page
    page.goto(live_site.url + "subscribe")
    page.focus("#subscribe-email")
    focused = []
    # The address, the name, the optional choices (closed) and the button, as the keyboard
    # reaches them.
    for _ in range(4):
        focused.append(page.evaluate("""() => {
            const style = getComputedStyle(document.activeElement);
            return [document.activeElement.id || document.activeElement.tagName,
                    style.outlineStyle, parseFloat(style.outlineWidth)];
        }"""))
        page.keyboard.press("Tab")
    assert [name for name, _, _ in focused] == ["subscribe-email", "subscribe-name", "SUMMARY",
                                                "BUTTON"]
    for name, style, width in focused:
        assert style != "none" and width >= 2, name


class _Answers:
    """ASGI middleware remembering the status of each response by path."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.statuses: dict[str, int] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Pass the request on, noting the status its response starts with."""

        async def note(message: Message) -> None:
            """Note the response status, then send the message on."""
            if message["type"] == "http.response.start":
                self.statuses[scope["path"]] = message["status"]
            await send(message)

        await self.app(scope, receive, note if scope["type"] == "http" else send)


def _console_errors(page: Page) -> list[str]:
    errors: list[str] = []
    page.on("console", lambda message: errors.append(message.text)
            if message.type == "error" else None)
    page.on("pageerror", lambda error: errors.append(str(error)))
    return errors


def _visit(page: Page, url: str, answers: _Answers) -> None:
    """Open a page and wait until the browser has had its icon (which no page event shows)."""
    answers.statuses.pop("/favicon.ico", None)
    page.goto(url, wait_until="networkidle")
    status = wait_for(lambda: answers.statuses.get("/favicon.ico"),
                      "the browser to ask for the icon")
    assert status in (200, 304), url  # 304: the browser revalidated the icon it has


def test_service_pages_served_under_another_name_load_everything(
        make_web_site: MakeWebSite, browser_page: Page) -> None:
    # The site is built for a host this browser cannot reach: what the service pages load
    # must come from the one that served them.
    site = make_web_site(base_url="https://archive.invalid/")
    answers = _Answers(site.app())
    page = browser_page
    errors = _console_errors(page)
    with web.serving(answers, web.bind("127.0.0.1", 0), access_log=False) as url:
        for path in ("/subscribe", "/preview/", "/articles/none/here"):
            _visit(page, url + path, answers)
            assert page.evaluate("getComputedStyle(document.body).maxWidth") != "none", path
        _visit(page, url + "/subscribe", answers)
        assert page.input_value("form.subscribe-form input[name=timezone]") == BROWSER_ZONE
    # The 404 page's own status is the one error expected.
    assert [error for error in errors if "404" not in error] == []
    assert len(errors) == 1


def test_the_front_page_loads_with_its_icon_and_no_console_error(
        make_web_site: MakeWebSite, browser_page: Page) -> None:
    sock = web.bind("127.0.0.1", 0)
    site = make_web_site(base_url=f"http://127.0.0.1:{sock.getsockname()[1]}/")
    answers = _Answers(site.app())
    page = browser_page
    errors = _console_errors(page)
    with web.serving(answers, sock, access_log=False) as url:
        _visit(page, url + "/", answers)
        size = page.evaluate("""() => new Promise((resolve, reject) => {
            const icon = new Image();
            icon.onload = () => resolve([icon.naturalWidth, icon.naturalHeight]);
            icon.onerror = reject;
            icon.src = document.querySelector("link[rel=icon]").href;
        })""")
    assert size[0] >= 16 and size[0] == size[1]  # decoded as a square image
    assert errors == []
