"""Previews of coming emails and feeds: what they show, who may see them, and dates at the
ends of the calendar."""

from __future__ import annotations

import shutil
from datetime import date
from pathlib import Path

import feedparser
import pytest

from publisher import web
from publisher.calendar import Calendar
from publisher.content import load_article
from publisher.site import build_site
from tests.fixtures.browser import SITE_DAY, MakeWebSite, WebSite


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


@pytest.mark.parametrize(("path", "status"), [
    ("/preview/?from=9999-12-31&days=366", 400),
    ("/preview/?from=9999-12-30&days=3", 400),
    ("/preview/?from=9999-12-31&days=1", 200),
    ("/preview/?from=9999-12-30&days=2", 200),
    ("/preview/?from=0001-01-01&days=366", 200),
    ("/preview/email/9999-12-31/pi.html", 404),
    ("/preview/email/9999-03-14/pi.txt", 200),
    ("/preview/email/0001-01-01/pi.txt", 404),
    ("/preview/feeds/9999-12-31/feed.xml", 200),
    ("/preview/feeds/0001-01-01/atom.xml", 200),
    ("/preview/?from=10000-01-01", 400),
    ("/preview/?from=0000-12-31", 400),
])
def test_preview_dates_at_the_ends_of_the_calendar(web_site: WebSite, path: str,
                                                   status: int) -> None:
    response = web_site.client(raise_server_exceptions=False).get(path)
    assert response.status_code == status
    if status == 400:
        assert "9999-12-31" in response.text or "YYYY-MM-DD" in response.text
