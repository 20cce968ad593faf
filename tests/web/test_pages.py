"""The service's own pages: errors without details, the sign-up page on its own, and assets
loaded from the host that served them."""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import urljoin

from tests.fixtures.browser import MakeWebSite, WebSite, link_in
from tests.fixtures.web import confirmed_member, form_action, path_of, sign_up


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
    _, unsubscribe = confirmed_member(web_site)
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
