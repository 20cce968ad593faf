"""The web service answers only for its own host names (no DNS rebinding onto the previews)."""

from __future__ import annotations

import subprocess

import pytest

from publisher import web
from publisher.config import from_mapping
from publisher.errors import ConfigError
from tests.fixtures.browser import MakeWebSite, WebSite

PREVIEW = "/preview/email/2026-03-14/pi.txt"


@pytest.mark.parametrize("host", ["evil.test", "evil.test:8000", "testserver.evil.test",
                                  "127.0.0.2", "[::2]:8000"])
def test_a_foreign_host_name_gets_nothing_even_from_this_machine(web_site: WebSite,
                                                                  host: str) -> None:
    client = web_site.client()
    for path in ("/preview/", PREVIEW, "/", "/feed.xml"):
        response = client.get(path, headers={"host": host})
        assert response.status_code == 400, path
        assert "Pi day" not in response.text
        assert response.headers["x-frame-options"] == "DENY"  # still a response of ours


@pytest.mark.parametrize("host", ["testserver", "TestServer:80", "localhost", "localhost:8000",
                                  "127.0.0.1", "127.0.0.1:8000", "[::1]", "[::1]:8000"])
def test_own_and_loopback_host_names_are_answered(web_site: WebSite, host: str) -> None:
    response = web_site.client().get(PREVIEW, headers={"host": host})
    assert response.status_code == 200
    assert response.text.startswith("Subject: Pi day")


def test_allowed_hosts_adds_names_and_wildcards(make_web_site: MakeWebSite) -> None:
    site = make_web_site(base_url="https://example.org/archive/",
                         web_table={"allowed_hosts": ["www.example.org", "*.example.net"]})
    client = site.client()
    for host, status in [("example.org", 200), ("www.example.org", 200),
                         ("news.example.net", 200), ("a.b.example.net", 200),
                         ("example.net", 400), ("testserver", 400), ("evil.test", 400)]:
        assert client.get("/feed.xml", headers={"host": host}).status_code == status, host


def test_any_host_when_allowed_hosts_says_so(make_web_site: MakeWebSite) -> None:
    site = make_web_site(web_table={"allowed_hosts": ["*"]})
    assert site.client().get("/feed.xml", headers={"host": "evil.test"}).status_code == 200


def test_a_rebound_name_reaching_the_real_server_is_refused(web_site: WebSite) -> None:
    sock = web.bind("127.0.0.1", 0)
    with web.serving(web_site.app(), sock, access_log=False) as url:
        def curl(*arguments: str) -> str:
            return subprocess.run(["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}",
                                   *arguments, url + "/preview/"], capture_output=True,
                                  text=True, timeout=60, check=True).stdout

        assert curl("-H", "Host: evil.test") == "400"
        assert curl() == "200"  # curl names the address it was given: 127.0.0.1:PORT


@pytest.mark.parametrize("name", ["evil.test:80", "http://evil.test", "ev*l.test", "*evil.test",
                                  "", "a b"])
def test_allowed_hosts_must_be_host_names(name: str) -> None:
    with pytest.raises(ConfigError) as caught:
        from_mapping({"web": {"allowed_hosts": ["example.org", name]}})
    assert caught.value.field == "web.allowed_hosts"
    assert repr(name) in caught.value.message
