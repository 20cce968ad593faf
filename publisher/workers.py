"""Run work in other processes of this program: where forking is safe, and the extra senders."""

from __future__ import annotations

import multiprocessing
import threading
from collections.abc import Callable
from multiprocessing.connection import Connection
from multiprocessing.context import ForkContext, ForkServerContext
from typing import Generic, Literal, TypeVar, cast

T = TypeVar("T")
StartMethod = Literal["fork", "forkserver"]

# Modules a fork server imports once, so that each process it starts is ready at once.
FORKSERVER_PRELOAD = ["publisher.dispatch"]


class WorkerDied(Exception):
    """A worker process ended without handing back a result (killed, or out of memory)."""

    def __init__(self, exitcode: int | None) -> None:
        super().__init__(f"the worker process ended with code {exitcode}")
        self.exitcode = exitcode


def fork_is_safe() -> bool:
    """Return whether this process may fork a copy of itself: it runs no other thread.

    A copy of a process running other threads (the daemon's clock, the web service) could
    inherit a lock held half-way by one of them.
    """
    return (threading.active_count() == 1
            and "fork" in multiprocessing.get_all_start_methods())


def start_method() -> StartMethod | None:
    """Return how to start a worker here: a forked copy, a fork server, or None (neither)."""
    if fork_is_safe():
        return "fork"
    if "forkserver" in multiprocessing.get_all_start_methods():
        return "forkserver"
    return None


def context(method: StartMethod) -> ForkContext | ForkServerContext:
    """Return the multiprocessing context for ``method`` (a fork server preloads our modules)."""
    if method == "fork":
        return multiprocessing.get_context("fork")
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(FORKSERVER_PRELOAD)
    return ctx


class Worker(Generic[T]):
    """Work running in another process, and the way to its result.

    Under a fork server ``work`` and everything it holds are pickled; a forked copy inherits
    them. Either way the result comes back pickled.
    """

    def __init__(self, work: Callable[[], T], *, name: str, method: StartMethod) -> None:
        ctx = context(method)
        self.receiver, sender = ctx.Pipe(duplex=False)
        self._process = ctx.Process(target=_send_result, args=(work, sender), name=name,
                                    daemon=True)
        self._process.start()
        sender.close()

    def result(self) -> T:
        """Wait for the work to finish; return its result, or raise its exception."""
        try:
            outcome = self.receiver.recv()
        except EOFError:
            self._process.join()
            raise WorkerDied(self._process.exitcode) from None
        finally:
            self.receiver.close()
        self._process.join()
        if isinstance(outcome, BaseException):
            raise outcome
        return cast(T, outcome)

    def stop(self) -> None:
        """End the process if it still runs (its work is no longer wanted)."""
        if self._process.is_alive():
            self._process.terminate()
        self._process.join()
        self.receiver.close()


def _send_result(work: Callable[[], object], sender: Connection) -> None:
    try:
        outcome = work()
    except BaseException as exc:  # handed to the parent, which raises it
        outcome = exc
    sender.send(outcome)
    sender.close()
