"""Security headers on every response, no inline script, and user values escaped."""

from __future__ import annotations

import re

import pytest

from tests.fixtures.browser import TEST_ORIGIN, WebSite
from tests.fixtures.web import sign_up


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
