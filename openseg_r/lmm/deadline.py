"""Requests to an LMM server that can be given up on.

An HTTP client's timeout bounds each wait for the next bytes, not the whole reply: a
server that sends one byte a second keeps a request open for as long as it likes, and a
thread blocked in that read cannot be interrupted. So a request runs on a daemon thread of
its own, and the caller waits for it, for at most the time left, while watching two
cancel tokens: the work's own (a server's time limit, ``stop()``, SIGTERM to a server) and
the process's (:func:`openseg_r._support.cancel.process_token`, set by the command line on
Ctrl-C). Whichever comes first, the
caller leaves at once; the abandoned request ends on its own, and being a daemon thread
it never keeps the process alive.
"""

from __future__ import annotations

import contextvars
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from typing import TypeVar

from openseg_r._support.cancel import current_token, process_token

R = TypeVar("R")


class RequestTimedOut(TimeoutError):
    """No complete reply before the deadline."""


class Deadline:
    """A point in time ``seconds`` from now (None: no deadline)."""

    def __init__(self, seconds: float | None) -> None:
        self.seconds = seconds
        self.at = None if seconds is None else time.monotonic() + seconds

    def left(self) -> float | None:
        return None if self.at is None else max(0.0, self.at - time.monotonic())

    @property
    def passed(self) -> bool:
        return self.at is not None and time.monotonic() >= self.at


def run_abandonable(work: Callable[[], R], timeout: float | None, name: str = "openseg-r LMM request") -> R:
    """``work()`` on a daemon thread, its result or exception here; :class:`RequestTimedOut`
    after ``timeout`` seconds, :class:`~openseg_r._support.cancel.Cancelled` as soon as the work's or
    the process's token is set."""
    for token in _tokens():
        token.check()
    outcome: Future = Future()
    context = contextvars.copy_context()

    def target() -> None:
        try:
            outcome.set_result(context.run(work))
        except BaseException as exc:  # noqa: BLE001 (handed to the waiting caller)
            outcome.set_exception(exc)

    woken = threading.Event()
    outcome.add_done_callback(lambda _: woken.set())
    threading.Thread(target=target, name=name, daemon=True).start()
    _wait_unless_cancelled(woken, timeout)
    if not outcome.done():
        raise RequestTimedOut(f"no complete reply within {timeout:g} s")
    return outcome.result()


def sleep_unless_cancelled(seconds: float) -> None:
    """``time.sleep``, cut short (with :class:`~openseg_r._support.cancel.Cancelled`) by either token."""
    _wait_unless_cancelled(threading.Event(), seconds)


def _tokens() -> list:
    return [token for token in (current_token(), process_token()) if token is not None]


def _wait_unless_cancelled(woken: threading.Event, seconds: float | None) -> None:
    """Wait until ``woken`` is set or ``seconds`` pass; :class:`Cancelled` if either token is set."""
    tokens = _tokens()
    forget = [token.on_cancel(woken.set) for token in tokens]
    try:
        woken.wait(seconds)
    finally:
        for undo in forget:
            undo()
    for token in tokens:
        token.check()
