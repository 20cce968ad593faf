"""A TCP proxy on loopback that delays every byte by half a round trip in each direction.

Usage: .venv/bin/python benchmarks/latency.py --listen PORT --to PORT --rtt MS

Stands for a relay ``--rtt`` milliseconds away: whatever arrives on one side is written to the
other ``rtt / 2`` later, in order, with no limit on bandwidth. It listens on 127.0.0.1 and
connects only to 127.0.0.1. It prints ``ready`` once it listens and stops on SIGTERM, or by
itself after ``--seconds``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

CHUNK = 65536


async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay: float) -> None:
    """Copy ``reader`` to ``writer``, each chunk written ``delay`` seconds after it arrived."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

    async def deliver() -> None:
        while True:
            due, data = await queue.get()
            if not data:
                break
            wait = due - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            writer.write(data)
            await writer.drain()
        with contextlib.suppress(OSError):
            writer.write_eof()

    delivering = asyncio.create_task(deliver())
    try:
        while True:
            data = await reader.read(CHUNK)
            queue.put_nowait((loop.time() + delay, data))
            if not data:
                break
        await delivering
    except (ConnectionError, OSError):
        delivering.cancel()
    finally:
        writer.close()


async def serve(listen: int, target: int, rtt_ms: float, seconds: float) -> None:
    """Proxy connections on ``listen`` to ``target`` until stopped or ``seconds`` have passed."""
    delay = rtt_ms / 2000

    async def connect(client_reader: asyncio.StreamReader,
                      client_writer: asyncio.StreamWriter) -> None:
        try:
            server_reader, server_writer = await asyncio.open_connection("127.0.0.1", target)
        except OSError:
            client_writer.close()
            return
        # Stopping the proxy cancels the connections still open: they end with it.
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(pipe(client_reader, server_writer, delay),
                                 pipe(server_reader, client_writer, delay),
                                 return_exceptions=True)

    server = await asyncio.start_server(connect, "127.0.0.1", listen, backlog=512)
    stopped = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopped.set)
    print("ready", flush=True)
    async with server:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stopped.wait(), seconds)


def free_port() -> int:
    """Return a loopback port nobody listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextlib.contextmanager
def relay(port: int, rtt_ms: float) -> Iterator[int]:
    """Yield the port of this proxy, run in a process of its own, to ``port`` (or ``port``)."""
    if not rtt_ms:
        yield port
        return
    listen = free_port()
    process = subprocess.Popen([sys.executable, str(Path(__file__)), "--listen", str(listen),
                                "--to", str(port), "--rtt", str(rtt_ms), "--seconds", "1800"],
                               stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        if process.stdout.readline().strip() != "ready":
            raise SystemExit("the latency proxy did not start")
        yield listen
    finally:
        process.terminate()
        process.wait()


def main() -> None:
    """Run the proxy."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listen", type=int, required=True)
    parser.add_argument("--to", type=int, required=True)
    parser.add_argument("--rtt", type=float, required=True, help="round trip in milliseconds")
    parser.add_argument("--seconds", type=float, default=3600,
                        help="stop by itself after this long")
    args = parser.parse_args()
    asyncio.run(serve(args.listen, args.to, args.rtt, args.seconds))
    sys.exit(0)


if __name__ == "__main__":
    main()
