"""The web service through Starlette's TestClient: the built site, sign-up, confirmation,
unsubscription, previews, limits and security headers; and `publisher serve` for real."""

from __future__ import annotations

import base64
import contextlib
import gzip
import hashlib
import os
import queue
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import zlib
from dataclasses import dataclass
from datetime import date, timedelta
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from pathlib import Path
from urllib.parse import urljoin, urlsplit

import anyio
import feedparser
import httpx2
import pytest
from itsdangerous import URLSafeSerializer
from starlette.datastructures import Headers
from starlette.testclient import TestClient

from publisher import web
from publisher.calendar import Calendar
from publisher.content import load_article
from publisher.dispatch import send_date
from publisher.ledger import Ledger, new_key
from publisher.mail import Mailer, Recipient
from publisher.site import build_site, load_calendar
from publisher.subscriptions.csvfiles import import_csv
from publisher.subscriptions.fields import subscriber_row
from publisher.tokens import SECRET_ENV, UNSUBSCRIBE_SALT, confirm_token, unsubscribe_token
from tests.fixtures import tool_missing
from tests.fixtures.browser import (
    LOOPBACK_CLIENT,
    SECRET,
    SITE_DAY,
    TEST_ORIGIN,
    MakeWebSite,
    WebSite,
    WriteArticle,
    link_in,
    text_part,
    wait_for,
)
from tests.fixtures.smtp import SmtpSink

IDENTITY = {"accept-encoding": "identity"}
EVIL = "https://evil.example"


def status_of(ledger: Ledger, email: str) -> str | None:
    """Return a subscriber's status, or None when the address is unknown."""
    subscriber = ledger.find_subscriber(email)
    return subscriber.status if subscriber is not None else None


def path_of(url: str) -> str:
    """Return the path of an absolute URL, for the TestClient."""
    return urlsplit(url).path


def form_action(page: httpx2.Response, url: str) -> str:
    """Return the absolute address the only form of a page posts to, as shown at ``url``."""
    [action] = re.findall(r'<form [^>]*action="([^"]*)"', page.text)
    return urljoin(url, action)


def sign_up(client: TestClient, email: str, name: str = "", timezone: str = "",
            **headers: str) -> httpx2.Response:
    """Post the sign-up form."""
    return client.post("/subscribe", data={"email": email, "name": name, "timezone": timezone},
                       headers=headers)


# ---------------------------------------------------------------------------------------------
# Pure helpers
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("header", "expected"), [
    ("gzip", True),
    ("gzip, deflate, br", True),
    ("br;q=1.0, gzip;q=0.5", True),
    ("gzip;q=0", False),
    ("identity", False),
    ("", False),
    ("*", True),
    ("*, gzip;q=0", False),
    ("x-gzip", True),
    ("GZIP;Q=0.001", True),
])
def test_accepts_gzip_follows_quality_values(header: str, expected: bool) -> None:
    assert web.accepts_gzip(header) is expected


@pytest.mark.parametrize(("url_path", "expected"), [
    ("/", "index.html"),
    ("/feed.xml", "feed.xml"),
    ("/articles/pi/", "articles/pi/index.html"),
    ("/articles/pi", "articles/pi"),
    ("/../etc/passwd", None),
    ("/articles/../../secret", None),
    ("/.site.build-x/index.html", None),
    ("/articles/.hidden", None),
    ("/a//b", None),
    ("/a\\b", None),
    ("/a\x00b", None),
])
def test_site_path_refuses_what_may_not_be_served(url_path: str, expected: str | None) -> None:
    assert web.site_path(url_path) == expected


@pytest.mark.parametrize(("relative", "expected"), [
    ("feed.xml", "application/rss+xml"),
    ("atom.xml", "application/atom+xml"),
    ("feed.json", "application/feed+json"),
    ("articles/x/feed.xml", "application/xml"),
    ("data.json", "application/json"),
    ("index.html", "text/html; charset=utf-8"),
    ("style.css", "text/css; charset=utf-8"),
    ("images/moon.png", "image/png"),
    ("blob.unknown", "application/octet-stream"),
])
def test_media_type_from_the_path_in_the_site(relative: str, expected: str) -> None:
    assert web.media_type(relative) == expected


def test_sliding_window_counts_only_the_last_window() -> None:
    window = web.SlidingWindow(limit=2, window=60)
    assert window.hit("a", 0) is None
    assert window.hit("a", 10) is None
    assert window.hit("a", 20) == pytest.approx(40)
    assert window.hit("b", 20) is None  # another key has its own count
    assert window.hit("a", 60) is None  # the hit at 0 has left the window
    assert window.hit("a", 61) == pytest.approx(9)


def test_sliding_window_forgets_the_oldest_keys_past_its_bound() -> None:
    window = web.SlidingWindow(limit=1, window=60, max_keys=2)
    for key in ("a", "b", "c"):
        assert window.hit(key, 0) is None
    assert window.hit("a", 1) is None  # "a" was forgotten, so it may sign up again
    assert window.hit("c", 1) is not None


@pytest.mark.parametrize(("headers", "expected"), [
    ({}, True),
    ({"sec-fetch-site": "same-origin"}, True),
    ({"sec-fetch-site": "none"}, True),
    ({"origin": "http://testserver"}, True),
    ({"origin": "HTTP://TESTSERVER"}, True),
    ({"sec-fetch-site": "cross-site"}, False),
    ({"sec-fetch-site": "same-site", "origin": "http://blog.testserver"}, False),
    ({"origin": EVIL}, False),
    ({"origin": "null"}, False),
    ({"sec-fetch-site": "cross-site", "origin": "http://testserver"}, True),
])
def test_same_origin_uses_fetch_metadata_then_origin(headers: dict[str, str],
                                                     expected: bool) -> None:
    assert web.same_origin(Headers(headers), {"http://testserver"}) is expected


def test_etag_comparison_is_weak_and_accepts_lists_and_star() -> None:
    assert web.etag_matches('W/"abc"', ['"abc"'])
    assert web.etag_matches('"x", "abc"', ['"abc"'])
    assert web.etag_matches("*", ['"abc"'])
    assert not web.etag_matches('"abd"', ['"abc"'])


# ---------------------------------------------------------------------------------------------
# The built site
# ---------------------------------------------------------------------------------------------


def test_pages_and_feeds_are_served_with_their_media_types(web_site: WebSite) -> None:
    client = web_site.client()
    expected = {
        "/": "text/html; charset=utf-8",
        "/articles/pi/": "text/html; charset=utf-8",
        "/style.css": "text/css; charset=utf-8",
        "/feed.xml": "application/rss+xml",
        "/atom.xml": "application/atom+xml",
        "/feed.json": "application/feed+json",
    }
    site_dir = web_site.config.site.output_dir
    for path, content_type in expected.items():
        response = client.get(path)
        assert response.status_code == 200, path
        assert response.headers["content-type"] == content_type
        relative = web.site_path(path)
        assert relative is not None
        assert response.content == (site_dir / relative).read_bytes()
    rss = feedparser.parse(client.get("/feed.xml").content)
    atom = feedparser.parse(client.get("/atom.xml").content)
    assert rss.version == "rss20" and atom.version == "atom10"
    assert [e.title for e in rss.entries] == [e.title for e in atom.entries]
    assert any("Pi day" in entry.title for entry in rss.entries)


def test_etag_gives_304_for_either_representation(web_site: WebSite) -> None:
    client = web_site.client()
    plain = client.get("/feed.xml", headers=IDENTITY)
    zipped = client.get("/feed.xml", headers={"accept-encoding": "gzip"})
    assert plain.headers["etag"] != zipped.headers["etag"]
    for etag in (plain.headers["etag"], zipped.headers["etag"], "W/" + plain.headers["etag"],
                 f'"other", {plain.headers["etag"]}', "*"):
        again = client.get("/feed.xml", headers={"if-none-match": etag, **IDENTITY})
        assert again.status_code == 304, etag
        assert again.content == b""
        assert again.headers["etag"] == plain.headers["etag"]
        assert again.headers["cache-control"] == web.SITE_CACHE
    assert client.get("/feed.xml", headers={"if-none-match": '"stale"'}).status_code == 200


def test_if_modified_since_gives_304_unless_the_file_is_newer(web_site: WebSite) -> None:
    client = web_site.client()
    first = client.get("/atom.xml")
    last_modified = first.headers["last-modified"]
    assert client.get("/atom.xml", headers={"if-modified-since": last_modified}
                      ).status_code == 304
    assert client.get("/atom.xml", headers={"if-modified-since": "Mon, 01 Jan 2001 00:00:00 GMT"}
                      ).status_code == 200
    assert client.get("/atom.xml", headers={"if-modified-since": "not a date"}).status_code == 200
    # If-None-Match wins over If-Modified-Since (RFC 9110, 13.2.2).
    assert client.get("/atom.xml", headers={"if-modified-since": last_modified,
                                            "if-none-match": '"stale"'}).status_code == 200


def test_gzip_when_accepted_and_identity_when_refused(web_site: WebSite) -> None:
    client = web_site.client()
    on_disk = (web_site.config.site.output_dir / "feed.json").read_bytes()
    zipped = client.get("/feed.json", headers={"accept-encoding": "gzip"})
    assert zipped.headers["content-encoding"] == "gzip"
    assert zipped.headers["vary"] == "Accept-Encoding"
    assert int(zipped.headers["content-length"]) < len(on_disk)
    assert zipped.content == on_disk  # decoded by the client
    refused = client.get("/feed.json", headers={"accept-encoding": "gzip;q=0, identity"})
    assert "content-encoding" not in refused.headers
    assert refused.content == on_disk


def test_gzip_bytes_decompress_to_the_file(web_site: WebSite) -> None:
    client = web_site.client()
    with client.stream("GET", "/", headers={"accept-encoding": "gzip"}) as response:
        raw = b"".join(response.iter_raw())
    assert gzip.decompress(raw) == (web_site.config.site.output_dir / "index.html").read_bytes()


def test_head_answers_headers_without_a_body(web_site: WebSite) -> None:
    response = web_site.client().head("/feed.xml", headers=IDENTITY)
    assert response.status_code == 200
    assert response.content == b""
    size = (web_site.config.site.output_dir / "feed.xml").stat().st_size
    assert int(response.headers["content-length"]) == size


def test_a_rebuild_is_served_at_once_and_unchanged_files_keep_their_etag(
        web_site: WebSite) -> None:
    client = web_site.client()
    index, style = client.get("/"), client.get("/style.css")
    assert "14 March 2026" in index.text
    web_site.rebuild(SITE_DAY + timedelta(days=1))
    new_index, new_style = client.get("/"), client.get("/style.css")
    assert "15 March 2026" in new_index.text
    assert new_index.headers["etag"] != index.headers["etag"]
    assert new_style.headers["etag"] == style.headers["etag"]
    assert client.get("/", headers={"if-none-match": index.headers["etag"]}).status_code == 200


@pytest.fixture
def curl_command() -> str:
    """Return the path of the real curl; skip where it is missing (fail in CI)."""
    found = shutil.which("curl")
    if found is None:
        tool_missing("curl is not installed (make test installs Debian's curl package)")
    return found


@dataclass(frozen=True)
class Fetched:
    """What curl got: the status, the response headers (names in lower case) and the body."""

    status: int
    headers: dict[str, str]
    body: bytes


def curl(command: str, url: str, folder: Path, *options: str) -> Fetched:
    """GET ``url`` with the real curl command, as a libcurl feed reader would."""
    headers, body = folder / "headers.txt", folder / "body"
    body.unlink(missing_ok=True)
    done = subprocess.run([command, "--silent", "--show-error", "--dump-header", str(headers),
                           "--output", str(body), "--write-out", "%{http_code}", *options, url],
                          capture_output=True, text=True, timeout=30, check=True)
    fields = {}
    for line in headers.read_text(encoding="latin-1").splitlines()[1:]:
        name, _, value = line.partition(":")
        if value:
            fields[name.strip().lower()] = value.strip()
    return Fetched(int(done.stdout), fields, body.read_bytes() if body.exists() else b"")


def test_curl_gets_a_feed_rebuilt_within_the_same_second(
        web_site: WebSite, write_article: WriteArticle, curl_command: str,
        tmp_path: Path) -> None:
    feed_file = web_site.config.site.output_dir / "feed.xml"
    with web.serving(web_site.app(), web.bind("127.0.0.1", 0), access_log=False) as url:
        feed = url + "/feed.xml"
        for attempt in range(5):
            time.sleep(1 - time.time() % 1)  # from the start of a second, so both builds fit
            started = int(time.time())
            write_article("pi", f"The first version{'.' * attempt}", title="Pi day",
                          date="2020-03-14")
            web_site.rebuild()
            first = curl(curl_command, feed, tmp_path)
            write_article("pi", f"The second version, a little longer{'.' * attempt}",
                          title="Pi day", date="2020-03-14")
            web_site.rebuild()
            if int(time.time()) == started:
                break
        else:
            pytest.fail("no two builds fell within one second in five tries")
        assert first.status == 200 and b"The first version" in first.body
        # libcurl sends both validators; given an answer whose Last-Modified is not later
        # than its If-Modified-Since, it throws the body away and keeps the new ETag.
        second = curl(curl_command, feed, tmp_path, "--time-cond", first.headers["last-modified"],
                      "--header", f"If-None-Match: {first.headers['etag']}")
        assert second.status == 200
        assert second.body == feed_file.read_bytes()
        assert b"The second version" in second.body
        assert second.headers["etag"] != first.headers["etag"]
        # The next poll, with what the reader now holds, is told nothing changed.
        third = curl(curl_command, feed, tmp_path, "--time-cond", second.headers["last-modified"],
                     "--header", f"If-None-Match: {second.headers['etag']}")
        assert (third.status, third.body) == (304, b"")


def test_a_request_during_the_swap_waits_for_the_new_folder(web_site: WebSite) -> None:
    root = web_site.config.site.output_dir
    files = web.SiteFiles(root)
    retired = root.with_name("retired")
    root.rename(retired)

    async def scenario() -> object:
        async with anyio.create_task_group() as tasks:
            result: list[object] = []

            async def ask() -> None:
                result.append(await files.find("/feed.xml"))

            tasks.start_soon(ask)
            await anyio.sleep(0)  # the request has found the folder missing and is waiting
            retired.rename(root)
        return result[0]

    found = anyio.run(scenario)
    assert isinstance(found, web.StaticFile)
    assert found.body == (root / "feed.xml").read_bytes()


def test_a_folder_without_its_slash_is_redirected(web_site: WebSite) -> None:
    response = web_site.client().get("/articles/pi?x=1")
    assert response.status_code == 301
    assert response.headers["location"].endswith("/articles/pi/?x=1")


@pytest.mark.parametrize("path", ["/missing.html", "/articles/", "/.lock", "/%2e%2e/secret.key",
                                  "/articles/%2e%2e/%2e%2e/secret.key"])
def test_missing_hidden_and_outside_paths_are_404(web_site: WebSite, path: str) -> None:
    (web_site.config.site.output_dir / ".lock").write_text("private")
    response = web_site.client().get(path)
    assert response.status_code == 404
    assert response.headers["content-type"] == "text/html; charset=utf-8"
    assert "Not found" in response.text


def test_posting_to_a_site_file_is_405(web_site: WebSite) -> None:
    assert web_site.client().post("/feed.xml").status_code == 405


def test_large_files_are_streamed_with_validators(web_site: WebSite) -> None:
    big = web_site.config.site.output_dir / "archive.pdf"
    big.write_bytes(os.urandom(web.CACHE_FILE_BYTES + 1))
    client = web_site.client()
    response = client.get("/archive.pdf")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/pdf"
    assert response.content == big.read_bytes()
    again = client.get("/archive.pdf", headers={"if-none-match": response.headers["etag"]})
    assert again.status_code == 304


def test_no_site_folder_is_404(web_site: WebSite) -> None:
    shutil.rmtree(web_site.config.site.output_dir)
    assert web_site.client().get("/").status_code == 404


def test_the_icon_is_served_as_an_image(web_site: WebSite) -> None:
    response = web_site.client().get("/favicon.ico")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("image/")
    data = response.content
    # An icon directory (reserved 0, type 1) whose entries each point at a PNG inside the file.
    reserved, kind, count = struct.unpack_from("<HHH", data)
    assert (reserved, kind) == (0, 1) and count >= 1
    for number in range(count):
        width, height, *_, size, offset = struct.unpack_from("<BBBBHHII", data, 6 + 16 * number)
        assert width == height and offset + size <= len(data)
        assert data[offset:offset + 8] == b"\x89PNG\r\n\x1a\n"


def test_the_subscribe_script_is_served_with_validators(web_site: WebSite) -> None:
    client = web_site.client()
    script = client.get("/subscribe.js")
    assert script.headers["content-type"] == "text/javascript; charset=utf-8"
    assert "resolvedOptions().timeZone" in script.text
    assert client.get("/subscribe.js", headers={"if-none-match": script.headers["etag"]}
                      ).status_code == 304


# ---------------------------------------------------------------------------------------------
# Security headers and escaping
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("method", "path"), [
    ("GET", "/"), ("GET", "/feed.xml"), ("GET", "/subscribe"), ("GET", "/missing"),
    ("GET", "/unsubscribe/forged"), ("POST", "/subscribe"),
])
def test_every_response_carries_the_security_headers(web_site: WebSite, method: str,
                                                     path: str) -> None:
    response = web_site.client().request(method, path)
    policy_ = response.headers["content-security-policy"]
    assert "script-src 'self'" in policy_ and "'unsafe-inline'" not in policy_.split(
        "script-src", 1)[1].split(";", 1)[0]
    assert "frame-ancestors 'none'" in policy_
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["x-frame-options"] == "DENY"
    assert response.headers["referrer-policy"] in ("same-origin", "no-referrer")


def test_the_front_page_has_the_form_and_no_inline_script(web_site: WebSite) -> None:
    page = web_site.client().get("/").text
    assert f'action="{TEST_ORIGIN}/subscribe"' in page
    assert 'name="timezone"' in page
    assert f'<script src="{TEST_ORIGIN}/subscribe.js" defer></script>' in page
    assert re.search(r"<script(?![^>]*\bsrc=)", page) is None


def test_user_values_are_escaped_on_every_page(web_site: WebSite) -> None:
    client = web_site.client()
    hostile = '"><script>alert(1)</script>'
    bad = sign_up(client, f"not-an-address{hostile}", name=hostile)
    assert bad.status_code == 400
    assert "<script>alert(1)" not in bad.text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in bad.text
    good = sign_up(client, "reader@example.org", name=hostile)
    assert good.status_code == 200
    assert "<script>alert" not in good.text
    assert "Web &lt;Anniversaries&gt;" in good.text  # the configured title is escaped too


# ---------------------------------------------------------------------------------------------
# Sign-up and confirmation
# ---------------------------------------------------------------------------------------------


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
        ledger.unsubscribe(gone.id, gone.email)
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


# ---------------------------------------------------------------------------------------------
# Abuse limits
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("headers", [
    {"origin": EVIL},
    {"sec-fetch-site": "cross-site"},
    {"sec-fetch-site": "same-site", "origin": "http://shop.testserver"},
    {"origin": "null"},
])
def test_cross_site_posts_are_refused(web_site: WebSite, headers: dict[str, str]) -> None:
    client = web_site.client()
    response = sign_up(client, "victim@example.org", **headers)
    assert response.status_code == 403
    assert web_site.ledger.find_subscriber("victim@example.org") is None
    sign_up(client, "victim@example.org")
    [mail] = web_site.mails()
    link = path_of(link_in(mail, web_site.config.site.base_url, "confirm"))
    assert client.post(link, headers=headers).status_code == 403
    assert status_of(web_site.ledger, "victim@example.org") == "pending"


def test_same_origin_posts_are_accepted(web_site: WebSite) -> None:
    client = web_site.client()
    assert sign_up(client, "a@example.org", origin=TEST_ORIGIN,
                   **{"sec-fetch-site": "same-origin"}).status_code == 200
    # Reached under another name (a tunnel, an IP address): the Host it used counts as ours.
    assert client.post("/subscribe", data={"email": "b@example.org"},
                       headers={"host": "127.0.0.1:8000", "origin": "http://127.0.0.1:8000"}
                       ).status_code == 200


def test_sign_ups_per_client_are_limited(make_web_site: MakeWebSite) -> None:
    site = make_web_site(web_table={"rate_limit_per_ip": 2})
    app = site.app()
    client = TestClient(app, client=("198.51.100.7", 1000))
    assert sign_up(client, "one@example.org").status_code == 200
    assert sign_up(client, "two@example.org").status_code == 200
    refused = sign_up(client, "three@example.org")
    assert refused.status_code == 429
    assert int(refused.headers["retry-after"]) == web.RATE_WINDOW_SECONDS + 1
    assert site.ledger.find_subscriber("three@example.org") is None
    other = TestClient(app, client=("198.51.100.8", 1000))
    assert sign_up(other, "four@example.org").status_code == 200
    site.clock.advance(seconds=web.RATE_WINDOW_SECONDS)
    assert sign_up(client, "three@example.org").status_code == 200


def test_confirmations_per_address_are_limited_silently(make_web_site: MakeWebSite) -> None:
    site = make_web_site(web_table={"rate_limit_per_address": 1})
    client = site.client()
    first = sign_up(client, "target@example.org")
    second = sign_up(client, "target@example.org")
    assert first.status_code == second.status_code == 200
    assert first.text == second.text
    assert len(site.mails()) == 1
    site.clock.advance(seconds=web.RATE_WINDOW_SECONDS)
    sign_up(client, "target@example.org")
    assert len(site.mails()) == 2


def test_an_oversized_form_is_413(web_site: WebSite) -> None:
    response = web_site.client().post("/subscribe", data={"email": "a@example.org",
                                                          "name": "x" * web.MAX_BODY_BYTES})
    assert response.status_code == 413


# ---------------------------------------------------------------------------------------------
# Purging sign-ups never confirmed
# ---------------------------------------------------------------------------------------------


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


# ---------------------------------------------------------------------------------------------
# Unsubscribe
# ---------------------------------------------------------------------------------------------


ONE_CLICK = b"List-Unsubscribe=One-Click"
FORM = {"content-type": "application/x-www-form-urlencoded"}


def _confirmed(site: WebSite, email: str = "member@example.org") -> tuple[int, str]:
    subscriber, _ = site.ledger.add_subscriber(subscriber_row(email, "Member"))
    token = unsubscribe_token(SECRET, str(subscriber.unsubscribe_key))
    return subscriber.id, f"/unsubscribe/{token}"


def legacy_link(subscriber_id: int, email: str) -> str:
    """Return an unsubscribe path as emails sent before subscriber keys carried it."""
    serializer = URLSafeSerializer(SECRET, salt=UNSUBSCRIBE_SALT,
                                   signer_kwargs={"digest_method": hashlib.sha256})
    return f"/unsubscribe/{serializer.dumps([subscriber_id, email])}"


def mailed_unsubscribe_link(site: WebSite, email: str) -> str:
    """Send the day's emails as `publisher send` does; return the path of ``email``'s
    List-Unsubscribe link."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(SECRET_ENV, SECRET.decode())
        report = send_date(site.config, SITE_DAY, clock=site.clock)
    assert report.sent > 0, report.problems
    for message in site.mails():
        if message["To"].addresses[0].addr_spec == email and message["List-Unsubscribe"]:
            url = re.search(r"<(https?://[^>]+)>", str(message["List-Unsubscribe"]))
            assert url is not None
            return path_of(url.group(1))
    raise AssertionError(f"no email to {email}")


def test_the_unsubscribe_page_changes_nothing_until_its_button(web_site: WebSite) -> None:
    _, path = _confirmed(web_site)
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
    _, path = _confirmed(site)
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
    _, path = _confirmed(web_site)
    body = (b'--b0\r\nContent-Disposition: form-data; name="List-Unsubscribe"\r\n\r\n'
            b"One-Click\r\n--b0--\r\n")
    response = web_site.client().post(path, content=body, headers={
        "content-type": "multipart/form-data; boundary=b0", "origin": EVIL})
    assert response.status_code == 200
    assert status_of(web_site.ledger, "member@example.org") == "unsubscribed"


def test_the_button_form_posted_cross_site_is_refused(web_site: WebSite) -> None:
    _, path = _confirmed(web_site)
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
    _, path = _confirmed(web_site)
    forged = "/unsubscribe/" + mangle(path.rsplit("/", 1)[1])
    client = web_site.client()
    assert client.get(forged).status_code == 400
    response = client.post(forged, content=b"List-Unsubscribe=One-Click",
                           headers={"content-type": "application/x-www-form-urlencoded"})
    assert response.status_code == 400
    assert "forged or damaged" in response.text
    assert status_of(web_site.ledger, "member@example.org") == "confirmed"


def test_a_confirm_token_does_not_unsubscribe(web_site: WebSite) -> None:
    subscriber_id, _ = _confirmed(web_site)
    member = web_site.ledger.get_subscriber(subscriber_id)
    assert member is not None
    token = confirm_token(SECRET, str(member.unsubscribe_key), now=web_site.clock.now)
    assert web_site.client().post(f"/unsubscribe/{token}").status_code == 400
    assert status_of(web_site.ledger, "member@example.org") == "confirmed"


def test_unsubscribing_a_removed_address_still_answers_200(web_site: WebSite) -> None:
    _, path = _confirmed(web_site)
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
    subscriber_id, _ = _confirmed(web_site)
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


# ---------------------------------------------------------------------------------------------
# Previews
# ---------------------------------------------------------------------------------------------


def test_the_preview_lists_coming_appearances(web_site: WebSite) -> None:
    response = web_site.client().get("/preview/?days=7")
    assert response.status_code == 200
    assert response.headers["cache-control"] == "no-store"
    text = response.text
    assert "Pi day &amp; &lt;circles&gt;" in text and "A birthday" in text
    assert "Equinox" in text  # 20 March is within 7 days of the clock's 14 March
    # Relative to /preview/: the links stay on the host that served the listing.
    assert 'href="../preview/email/2026-03-14/pi.html"' in text
    assert 'href="../preview/feeds/2026-03-20/feed.json"' in text
    shorter = web_site.client().get("/preview/?from=2026-03-15&days=3").text
    assert "Equinox" not in shorter and "A birthday" not in shorter


def test_the_email_preview_shows_both_parts(web_site: WebSite) -> None:
    client = web_site.client()
    html_preview = client.get("/preview/email/2026-03-14/pi.html")
    assert html_preview.status_code == 200
    assert "Pi day &amp; &lt;circles&gt;" in html_preview.text
    assert "Sample Reader" in html_preview.text
    assert html_preview.headers["content-security-policy"] == web.EMAIL_PREVIEW_POLICY
    text_preview = client.get("/preview/email/2026-03-14/pi.txt")
    assert text_preview.headers["content-type"] == "text/plain; charset=utf-8"
    assert text_preview.text.startswith("Subject: Pi day & <circles>")
    assert "The ratio of a circle" in text_preview.text


@pytest.mark.parametrize(("path", "status"), [
    ("/preview/email/2026-03-15/pi.html", 404),
    ("/preview/email/2026-03-14/nothing.html", 404),
    ("/preview/email/2026-03-14/pi.pdf", 404),
    ("/preview/email/2026-13-14/pi.html", 400),
    ("/preview/feeds/2026-03-14/other.xml", 404),
    ("/preview/feeds/yesterday/feed.xml", 400),
    ("/preview/?from=14.03.2026", 400),
    ("/preview/?days=many", 400),
])
def test_bad_preview_requests(web_site: WebSite, path: str, status: int) -> None:
    assert web_site.client().get(path).status_code == status


def test_the_feed_preview_is_the_feed_that_day_will_build(web_site: WebSite,
                                                          tmp_path: Path) -> None:
    day = date(2026, 3, 20)
    build_site(web_site.config, day, out=tmp_path / "later")
    client = web_site.client()
    for name in ("feed.xml", "atom.xml", "feed.json"):
        response = client.get(f"/preview/feeds/{day}/{name}")
        assert response.status_code == 200
        assert response.content == (tmp_path / "later" / name).read_bytes()
        assert response.headers["content-type"] == web.media_type(name)
    newest = feedparser.parse(client.get(f"/preview/feeds/{day}/feed.xml").content).entries[0]
    assert newest.title.startswith("Equinox")
    as_text = client.get(f"/preview/feeds/{day}/atom.xml?view=text")
    assert as_text.headers["content-type"] == "text/plain; charset=utf-8"


@pytest.mark.parametrize(("client_host", "headers"), [
    ("203.0.113.9", {}),
    ("127.0.0.1", {"x-forwarded-for": "203.0.113.9"}),
    ("127.0.0.1", {"forwarded": "for=203.0.113.9"}),
])
def test_previews_are_refused_to_other_machines(web_site: WebSite, client_host: str,
                                                headers: dict[str, str]) -> None:
    client = web_site.client(client=(client_host, 4000))
    for path in ("/preview/", "/preview/email/2026-03-14/pi.html",
                 "/preview/feeds/2026-03-14/feed.xml"):
        response = client.get(path, headers=headers)
        assert response.status_code == 403
        assert "preview token" in response.text


def test_ipv6_loopback_may_see_previews(web_site: WebSite) -> None:
    assert web_site.client(client=("::1", 4000)).get("/preview/").status_code == 200


def test_with_a_preview_token_everyone_needs_it(make_web_site: MakeWebSite) -> None:
    site = make_web_site(web_table={"preview_token": "open sesame"})
    local = site.client()
    remote = site.client(client=("203.0.113.9", 4000))
    assert local.get("/preview/").status_code == 403
    assert remote.get("/preview/?token=wrong").status_code == 403
    listing = remote.get("/preview/?token=open+sesame")
    assert listing.status_code == 200
    assert "pi.html?token=open+sesame" in listing.text  # links keep the token
    assert 'name="token" value="open sesame"' in listing.text
    assert remote.get("/preview/email/2026-03-14/pi.txt",
                      headers={"x-preview-token": "open sesame"}).status_code == 200


def test_the_preview_uses_the_shared_sample_article(make_web_site: MakeWebSite,
                                                    seed_path: Path, content_dir: Path) -> None:
    shutil.copy(seed_path, content_dir / "seed.txt")
    site = make_web_site()
    seed = load_article(content_dir / "seed.txt")
    year = max(seed.date.year + 1, SITE_DAY.year)
    [event] = [e for e in Calendar([seed]).between(date(year, 1, 1), date(year, 12, 31))]
    client = site.client()
    listing = client.get(f"/preview/?from={event.on}&days=1")
    assert listing.status_code == 200
    email = client.get(f"/preview/email/{event.on}/{seed.slug}.txt")
    assert email.status_code == 200
    assert seed.title in email.text
    assert seed.body_text.split()[-1] in email.text


# ---------------------------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------------------------


def test_a_broken_template_gives_a_500_page_without_details(make_web_site: MakeWebSite,
                                                            tmp_path: Path) -> None:
    overrides = tmp_path / "templates"
    overrides.mkdir()
    (overrides / "subscribe_sent.html").write_text("{{ secret_detail.missing }}")
    site = make_web_site(templates_dir=str(overrides))
    response = sign_up(site.client(raise_server_exceptions=False), "a@example.org")
    assert response.status_code == 500
    assert "Something went wrong" in response.text
    assert "secret_detail" not in response.text


def test_subscribe_page_stands_alone(web_site: WebSite) -> None:
    page = web_site.client().get("/subscribe")
    assert page.status_code == 200
    assert 'class="subscribe-form"' in page.text
    assert page.headers["cache-control"] == "no-store"


STAGING = "http://staging.example:8080"  # a name other than base_url's host


def page_references(page_url: str, html: str) -> dict[str, list[str]]:
    """Return the stylesheets, icons, scripts and form actions of a page, as absolute URLs."""
    found = {
        "stylesheet": re.findall(r'<link rel="stylesheet" href="([^"]*)"', html),
        "icon": re.findall(r'<link rel="icon" href="([^"]*)"', html),
        "script": re.findall(r'<script src="([^"]*)"', html),
        "form": re.findall(r'<form [^>]*action="([^"]*)"', html),
    }
    return {kind: [urljoin(page_url, url) for url in urls] for kind, urls in found.items()}


def test_service_pages_load_their_assets_from_the_host_that_served_them(
        make_web_site: MakeWebSite) -> None:
    web_site = make_web_site(web_table={"allowed_hosts": ["staging.example"]})
    client = web_site.client(base_url=STAGING)
    _, unsubscribe = _confirmed(web_site)
    sent = sign_up(client, "reader@example.org")
    [mail] = web_site.mails()
    confirm = path_of(link_in(mail, web_site.config.site.base_url, "confirm"))
    pages = {"/subscribe": client.get("/subscribe"), "/subscribe (sent)": sent,
             "/preview/": client.get("/preview/"), unsubscribe: client.get(unsubscribe),
             confirm: client.get(confirm), "/articles/none/here": client.get("/articles/none/here")}
    assert [response.status_code for response in pages.values()] == [200] * 5 + [404]
    for path, response in pages.items():
        url = STAGING + path.split(" ")[0]
        references = page_references(url, response.text)
        assert len(references["stylesheet"]) == len(references["icon"]) == 1, path
        for kind, urls in references.items():
            for reference in urls:
                assert reference.startswith(STAGING + "/"), (path, kind, reference)
                if kind != "form":  # each asset is there to load, on the same host
                    assert client.get(reference).status_code == 200, (path, reference)
    assert page_references(STAGING + "/subscribe", pages["/subscribe"].text)["script"] == [
        f"{STAGING}/subscribe.js"]
    assert form_action(pages[confirm], STAGING + confirm) == STAGING + confirm


# ---------------------------------------------------------------------------------------------
# Serving for real
# ---------------------------------------------------------------------------------------------


def test_the_listening_socket_says_tcp_so_asyncio_turns_nagle_off() -> None:
    # asyncio sets TCP_NODELAY only on sockets whose protocol is IPPROTO_TCP; without it each
    # response with a body stalls on the client's delayed ACK (benchmarks/web.py shows ~8x).
    with web.bind("127.0.0.1", 0) as sock:
        assert sock.proto == socket.IPPROTO_TCP


def test_serving_in_a_thread_answers_and_stops(web_site: WebSite) -> None:
    sock = web.bind("127.0.0.1", 0)
    with web.serving(web_site.app(), sock, access_log=False) as url:
        response = httpx2.get(url + "/feed.xml")
        assert response.status_code == 200
        assert response.headers["content-type"] == "application/rss+xml"
    with pytest.raises(httpx2.ConnectError):
        httpx2.get(url + "/feed.xml")


def _write_toml(web_site: WebSite, folder: Path, extra: str = "") -> Path:
    site = web_site.config.site
    toml = folder / "publisher.toml"
    toml.write_text(
        f'[site]\nbase_url = "http://127.0.0.1/"\ncontent_dir = "{site.content_dir}"\n'
        f'output_dir = "{site.output_dir}"\n'
        f'[state]\ndatabase_url = "sqlite:///{folder / "serve.db"}"\n'
        f'key_file = "{folder / "serve.key"}"\n{extra}', encoding="utf-8")
    return toml


def _start(toml: Path, *arguments: str) -> tuple[subprocess.Popen[str], queue.Queue[str]]:
    """Start ``publisher --config TOML ARGUMENTS``, with its stderr lines in a queue."""
    process = subprocess.Popen([sys.executable, "-m", "publisher", "--config", str(toml),
                                *arguments], stderr=subprocess.PIPE, text=True, cwd=toml.parent)
    lines: queue.Queue[str] = queue.Queue()

    def pump() -> None:
        for line in process.stderr or ():
            lines.put(line)

    threading.Thread(target=pump, daemon=True).start()
    return process, lines


def _address_in(lines: queue.Queue[str]) -> str:
    def address() -> str | None:
        try:
            line = lines.get_nowait()
        except queue.Empty:
            return None
        found = re.search(r"on (http://127\.0\.0\.1:\d+)", line)
        return found.group(1) if found else None

    return wait_for(address, "the server's address on stderr")


def _answers(url: str) -> bool:
    try:
        return httpx2.get(url).status_code == 200
    except httpx2.TransportError:
        return False


def _stop(process: subprocess.Popen[str]) -> int:
    process.send_signal(signal.SIGTERM)
    try:
        return process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_the_serve_command_serves_until_sigterm(web_site: WebSite, tmp_path: Path) -> None:
    process, lines = _start(_write_toml(web_site, tmp_path), "serve", "--port", "0",
                            "--no-access-log")
    try:
        url = _address_in(lines)
        wait_for(lambda: _answers(url + "/subscribe"), "the server to answer")
        assert httpx2.get(url + "/feed.json").headers["content-type"] == "application/feed+json"
    finally:
        assert _stop(process) == 0


def test_run_serve_serves_beside_the_daemon(web_site: WebSite, tmp_path: Path) -> None:
    with web.bind("127.0.0.1", 0) as probe:
        port = probe.getsockname()[1]
    shutil.rmtree(web_site.config.site.output_dir)  # the daemon's first tick builds it again
    toml = _write_toml(web_site, tmp_path, f"[web]\nport = {port}\n")
    process, lines = _start(toml, "run", "--serve")
    try:
        url = _address_in(lines)
        assert url == f"http://127.0.0.1:{port}"
        wait_for(lambda: _answers(url + "/feed.xml"), "the daemon's site, served")
        response = httpx2.post(url + "/subscribe", data={"email": "beside@example.org"})
        assert response.status_code == 200
        with Ledger.open(f"sqlite:///{tmp_path / 'serve.db'}") as shared:
            assert status_of(shared, "beside@example.org") == "pending"
    finally:
        assert _stop(process) == 0


def test_the_serve_command_reports_a_port_in_use(web_site: WebSite, tmp_path: Path) -> None:
    from click.testing import CliRunner

    from publisher.cli import EXIT_CONFIG, cli

    taken = web.bind("127.0.0.1", 0)
    with taken:
        toml = tmp_path / "publisher.toml"
        toml.write_text(f'[state]\ndatabase_url = "sqlite:///{tmp_path / "x.db"}"\n'
                        f'key_file = "{tmp_path / "x.key"}"\n', encoding="utf-8")
        result = CliRunner().invoke(cli, ["--config", str(toml), "serve", "--port",
                                          str(taken.getsockname()[1])])
    assert result.exit_code == EXIT_CONFIG
    assert "cannot listen" in result.output
