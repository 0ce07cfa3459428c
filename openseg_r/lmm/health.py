"""Backend health: a dead or misconfigured LMM is one failure, not one per question.

A refused connection, a host that does not resolve, a connection that times out, a
server that hangs up without an HTTP answer, a rejected API key (401/403) or a missing
model or endpoint (404) says nothing about the question asked: the next question would
fail the same way. Such an error is :class:`BackendUnavailable`, never re-asked.

Two guards keep a run from asking a dead backend again and again:

- :class:`BackendHealth`, one per backend object (shared by every run that uses it):
  until the backend is known to answer, one caller checks it (``probe``: a cheap
  ``GET /models`` for an OpenAI-compatible server) while concurrent callers wait for
  that verdict, so a closed port costs one connection attempt, not one per class.
  After a failure the next caller checks again, so a long-lived server recovers as
  soon as the LMM server is back.
- :class:`RunBreaker`, one per run (in the runtime context): after the first such
  failure the run asks nothing more, and records one fallback that names the cause.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable

from openseg_r.schemas import Fallback

NOT_ASKED = "no further LMM call in this run: bare class names, no image reasoning, no self-check answers"


class BackendUnavailable(Exception):
    """The backend cannot answer any question (unreachable, refused, no such model)."""


class RequestUnsupported(Exception):
    """The backend cannot answer this kind of request (images to a text-only model): asking
    again would not help, but other requests still work."""


def unavailable_cause(exc: BaseException) -> str | None:
    """What makes the backend unusable, in a few words ("unreachable: connection refused"),
    or None when ``exc`` is about this one request (a malformed answer, a slow reply, a
    rate limit, a server error). Looks through the chain of causes, so a client library's
    wrapper (openai, langchain) around the network error is understood."""
    chain = _chain(exc)
    for error in chain:
        if isinstance(error, BackendUnavailable):
            return str(error)
    status = _status(exc)
    if status == 401:
        return "rejected the API key (HTTP 401); set OPENSEG_R_API_KEY or OPENAI_API_KEY"
    if status == 403:
        return "denied access (HTTP 403)"
    if status == 404:
        return "has no such model or endpoint (HTTP 404)"
    for error in chain:
        cause = _network_cause(error)
        if cause is not None:
            return cause
    if any(_is(error, "openai", "APITimeoutError") for error in chain):
        return None  # a reply too slow for the timeout: the server is there
    if any(_is(error, "openai", "APIConnectionError") for error in chain):
        return "unreachable: connection error"
    return None


def _chain(exc: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in seen and len(seen) < 10:
        seen.append(current)
        current = current.__cause__ or current.__context__
    return seen


def _status(exc: BaseException) -> int | None:
    status = getattr(exc, "status_code", None) or getattr(getattr(exc, "response", None), "status_code", None)
    return status if isinstance(status, int) else None


def _is(error: BaseException, module: str, name: str) -> bool:
    """``error`` is (a subclass of) ``module.name``, without importing ``module``; a renamed
    copy of the package (``httpx2``, as some openai releases use) counts too."""
    return any(
        kind.__name__ == name and kind.__module__.split(".")[0].rstrip("0123456789") == module
        for kind in type(error).__mro__
    )


def _network_cause(error: BaseException) -> str | None:
    if _is(error, "httpx", "ConnectTimeout"):
        return "unreachable: connecting timed out"
    if _is(error, "httpx", "ConnectError") or isinstance(error, (ConnectionRefusedError, socket.gaierror)):
        return "unreachable: " + _connect_problem(error)
    if _is(error, "httpx", "UnsupportedProtocol") or _is(error, "httpx", "InvalidURL"):
        return f"unreachable: bad URL ({str(error)[:120]})"
    if any(_is(error, "httpx", name) for name in ("RemoteProtocolError", "ReadError", "WriteError")) or isinstance(
        error, (ConnectionResetError, ConnectionAbortedError, BrokenPipeError)
    ):
        return "unreachable: the server closed the connection without an HTTP answer"
    return None


def _connect_problem(error: BaseException) -> str:
    text = " ".join(str(part) for part in _chain(error)).lower()
    if isinstance(error, socket.gaierror) or any(
        words in text
        for words in (
            "name or service not known",
            "name resolution",
            "nodename nor servname",
            "getaddrinfo",
            "no address associated",
        )
    ):
        return "cannot resolve the host name"
    if "refused" in text:
        return "connection refused"
    if "unreachable" in text:
        return "network unreachable"
    return f"cannot connect ({str(error)[:120] or type(error).__name__})"


def unavailable_message(cause: str, location: str | None) -> str:
    """``LMM backend unreachable: connection refused at http://127.0.0.1:9/v1``."""
    if cause.startswith("LMM backend"):
        return cause
    where = f" at {location}" if location else ""
    head, sep, hint = cause.partition("; ")
    return f"LMM backend {head}{where}{sep}{hint}"


class _Probe:
    def __init__(self) -> None:
        self.done = threading.Event()
        self.cause: str | None = None


class BackendHealth:
    """Whether a backend is known to answer, shared by all runs using it (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._up = False
        self._cause: str | None = None
        self._probe: _Probe | None = None

    @property
    def down(self) -> str | None:
        """The cause of the last failure, while no call has succeeded since."""
        with self._lock:
            return None if self._up else self._cause

    def admit(self, probe: Callable[[], str | None]) -> tuple[str | None, bool]:
        """(the cause if the backend is down, whether this caller ran the check). Once the
        backend is up this returns at once; otherwise one caller runs ``probe`` and the
        callers that arrive meanwhile wait for its verdict."""
        with self._lock:
            if self._up:
                return None, False
            current = self._probe
            leader = current is None
            if leader:
                current = self._probe = _Probe()
        if not leader:
            current.done.wait()
            return current.cause, False
        cause = None
        try:
            cause = probe()
        except Exception:  # a check that breaks says nothing: the real call will tell
            cause = None
        finally:
            with self._lock:
                self._up, self._cause, current.cause = cause is None, cause, cause
                self._probe = None
            current.done.set()
        return cause, True

    def mark_down(self, cause: str) -> None:
        with self._lock:
            self._up, self._cause = False, cause

    def mark_up(self) -> None:
        with self._lock:
            self._up, self._cause = True, None


class RunBreaker:
    """One run's circuit breaker: tripped by the first "backend unavailable" failure, after
    which the run asks the LMM nothing more. ``claim_report`` is true once, for the node
    that records the run's one fallback naming the cause."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._cause: str | None = None
        self._reported = False

    @property
    def cause(self) -> str | None:
        return self._cause

    def trip(self, cause: str) -> None:
        with self._lock:
            if self._cause is None:
                self._cause = cause

    def claim_report(self) -> bool:
        with self._lock:
            if self._cause is None or self._reported:
                return False
            self._reported = True
            return True


def unavailable_fallback(step: str, cause: str) -> Fallback:
    """The one fallback a run records when its backend is unavailable."""
    return Fallback(step=step, subject=None, reason=cause, used=NOT_ASKED)


def is_unavailable_fallback(fallback: Fallback) -> bool:
    return fallback.subject is None and fallback.used == NOT_ASKED
