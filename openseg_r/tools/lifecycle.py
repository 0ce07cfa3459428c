"""How a server stops: SIGINT and SIGTERM cancel the work in flight and end the process
within a bounded time, the same way for ``serve mcp`` and ``serve web``."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from openseg_r.tools.service import SegmentationService

STOP_GRACE_S = 5.0  # how long cancelled work may take to end before the process exits anyway
EXIT_GRACE_S = 1.0  # and how long the usual way out may take once it has ended


class StopOnSignal:
    """What SIGINT and SIGTERM do to a server: every call in flight is cancelled (its work
    ends at its next text batch or window pass, and its caller gets a one-line tool error),
    the transport shuts down, and a watchdog makes sure the process really ends: threads
    the libraries leave behind (a stdin reader blocked in read(), an HTTP stream that
    stays open) must not keep it alive. The exit code is 130 for SIGINT, 0 for SIGTERM."""

    def __init__(self, service: SegmentationService) -> None:
        self.service = service
        self.signal: int | None = None
        self._said = threading.Lock()  # the last line is said once, by whoever gets there first

    @property
    def exit_code(self) -> int:
        return 130 if self.signal == signal.SIGINT else 0

    def notice(self, number: int) -> None:
        """The first signal cancels the work and starts the watchdog; later ones change nothing."""
        if self.signal is not None:
            return
        self.signal = number
        self.service.stop("the server is stopping")
        threading.Thread(target=self._watchdog, name="openseg-r-stop", daemon=True).start()

    def handler(self, number: int, frame) -> None:
        self.notice(number)
        raise KeyboardInterrupt  # leaves the event loop; run_mcp_server catches it

    @contextlib.contextmanager
    def installed(self):
        if threading.current_thread() is not threading.main_thread():  # signals reach the main thread only
            yield self
            return
        previous = {number: signal.signal(number, self.handler) for number in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield self
        finally:
            for number, handler in previous.items():
                signal.signal(number, handler)

    def farewell(self, detail: str = "") -> None:
        if self._said.acquire(blocking=False):
            word = "interrupted" if self.signal == signal.SIGINT else "stopped"
            print(f"openseg-r: {word}{detail}", file=sys.stderr, flush=True)

    def _watchdog(self) -> None:
        ended = self.service.wait_idle(STOP_GRACE_S)
        time.sleep(EXIT_GRACE_S)
        self.farewell("" if ended else f"; a segmentation still running {STOP_GRACE_S:g} s later was abandoned")
        os._exit(self.exit_code)
