"""Cancellation: a flag that abandoned work reads at its next batch.

A server gives up on a call at its time limit (or when it is stopped), but the call's
thread cannot be killed. So the call carries a :class:`CancelToken`; the service sets it,
and the long loops read it at every step they take anyway: each text batch
(:mod:`openseg_r.segmenters.dense_clip.text`), each window pass of the segmenter, each graph step. The
work then ends with :class:`Cancelled` instead of running on for minutes
(docs/design.md §3.9).

The token reaches the loops through a context variable (:func:`cancellable`), which
LangGraph copies into the threads that run the nodes; the micro-batcher, whose worker
serves several callers, keeps each caller's token with its image instead, so a cancelled
caller's image is dropped while the others go on.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from contextvars import ContextVar

from openseg_r.errors import OpenSegRError


class Cancelled(OpenSegRError):
    """The work was cancelled (its call passed its time limit, or the server is stopping)."""


class CancelToken:
    """Set once, read often; thread-safe. ``reason`` says why, for the :class:`Cancelled` message."""

    def __init__(self) -> None:
        self._set = threading.Event()
        self._lock = threading.Lock()
        self._listeners: list[Callable[[], None]] = []
        self.reason = ""

    @property
    def cancelled(self) -> bool:
        return self._set.is_set()

    def cancel(self, reason: str = "cancelled") -> None:
        with self._lock:
            if self._set.is_set():
                return
            self.reason = reason
            self._set.set()
            listeners, self._listeners = self._listeners, []
        for listener in listeners:
            listener()

    def error(self) -> Cancelled:
        return Cancelled(f"cancelled: {self.reason}")

    def check(self) -> None:
        """Raise :class:`Cancelled` if the token is set."""
        if self._set.is_set():
            raise self.error()

    def on_cancel(self, listener: Callable[[], None]) -> Callable[[], None]:
        """Call ``listener()`` when the token is set (at once if it is); returns a function
        that forgets the listener."""
        with self._lock:
            if not self._set.is_set():
                self._listeners.append(listener)
                return lambda: self._forget(listener)
        listener()
        return lambda: None

    def _forget(self, listener: Callable[[], None]) -> None:
        with self._lock, contextlib.suppress(ValueError):
            self._listeners.remove(listener)


_current: ContextVar[CancelToken | None] = ContextVar("openseg_r_cancel_token", default=None)
_process = CancelToken()  # set once, when this process is told to stop (Ctrl-C, SIGTERM)


def process_token() -> CancelToken:
    """The token every waiting request of this process also watches: set by
    :func:`stop_process`, it makes them leave at once, whatever work they are in."""
    return _process


def stop_process(reason: str) -> None:
    """This process is stopping (a signal): waits on LMM requests give up now."""
    _process.cancel(reason)


def current_token() -> CancelToken | None:
    """The token of the work this thread is doing (None: nobody can cancel it)."""
    return _current.get()


def check_cancelled() -> None:
    """Raise :class:`Cancelled` if the current work's token is set (a no-op without one)."""
    token = _current.get()
    if token is not None:
        token.check()


@contextlib.contextmanager
def cancellable(token: CancelToken | None) -> Iterator[CancelToken | None]:
    """Make ``token`` the current work's token inside the block (None: leave it as it is)."""
    if token is None:
        yield _current.get()
        return
    reset = _current.set(token)
    try:
        yield token
    finally:
        _current.reset(reset)


def result_unless_cancelled(future: Future, token: CancelToken | None, timeout: float | None = None):
    """``future.result(timeout)``, but :class:`Cancelled` as soon as ``token`` is set: the
    waiter leaves at once, whatever the work it waits for is doing. Raises
    ``concurrent.futures.TimeoutError`` after ``timeout`` seconds."""
    if token is None:
        return future.result(timeout)
    woken = threading.Event()
    future.add_done_callback(lambda _: woken.set())
    forget = token.on_cancel(woken.set)
    try:
        woken.wait(timeout)
    finally:
        forget()
    if future.done():
        return future.result()
    if token.cancelled:
        raise token.error()
    from concurrent.futures import TimeoutError as FutureTimeout

    raise FutureTimeout()
