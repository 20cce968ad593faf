"""The built site through the web service: media types, validators, gzip, rebuilds and
paths, and curl polling a feed as a feed reader does."""

from __future__ import annotations

import gzip
import os
import shutil
import struct
import subprocess
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import anyio
import feedparser
import pytest

from publisher import web
from tests.fixtures import tool_missing
from tests.fixtures.browser import SITE_DAY, WebSite, WriteArticle

IDENTITY = {"accept-encoding": "identity"}


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


def test_etag_comparison_is_weak_and_accepts_lists_and_star() -> None:
    assert web.etag_matches('W/"abc"', ['"abc"'])
    assert web.etag_matches('"x", "abc"', ['"abc"'])
    assert web.etag_matches("*", ['"abc"'])
    assert not web.etag_matches('"abd"', ['"abc"'])


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
