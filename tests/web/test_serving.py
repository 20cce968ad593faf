"""`publisher serve` for real: the listening socket, serving from a thread, the command and
`publisher run --serve`."""

from __future__ import annotations

import queue
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

import httpx2
import pytest

from publisher import web
from publisher.ledger import Ledger
from tests.fixtures.browser import WebSite, wait_for
from tests.fixtures.web import status_of


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
