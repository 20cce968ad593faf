"""Abuse limits of the web service: cross-site posts, sign-ups per client and per address,
the size of a form."""

from __future__ import annotations

import pytest
from starlette.datastructures import Headers
from starlette.testclient import TestClient

from publisher import web
from tests.fixtures.browser import TEST_ORIGIN, MakeWebSite, WebSite, link_in
from tests.fixtures.web import EVIL, path_of, sign_up, status_of


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
