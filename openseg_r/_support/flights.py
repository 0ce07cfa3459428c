"""Single flight: concurrent callers asking for the same thing share one computation.

When several images with the same vocabulary run at once (``segment_many``, a pipelined
``eval``, a server under load), each would ask the LMM about every class it has not
cached yet, all at the same moment. A :class:`SingleFlight` lets the first caller of a
key compute it while the others wait for that answer (docs/design.md §3.9).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Any


class _Flight:
    def __init__(self) -> None:
        self.done = threading.Event()
        self.value: Any = None
        self.error: BaseException | None = None


class SingleFlight:
    """``run(key, compute)`` returns ``(value, shared)``: ``shared`` is True when another
    caller computed it. A value for which ``keep(value)`` holds is remembered for the
    ``remember`` most recent keys, so a caller that arrives just after a flight landed
    does not start another; an error reaches every waiter and is not remembered."""

    def __init__(self, remember: int = 1024) -> None:
        self.remember = remember
        self._lock = threading.Lock()
        self._flights: dict[str, _Flight] = {}
        self._landed: OrderedDict[str, Any] = OrderedDict()

    def run(self, key: str, compute: Callable[[], Any], keep: Callable[[Any], bool] = bool) -> tuple[Any, bool]:
        with self._lock:
            if key in self._landed:
                self._landed.move_to_end(key)
                return self._landed[key], True
            flight = self._flights.get(key)
            leader = flight is None
            if leader:
                flight = self._flights[key] = _Flight()
        if not leader:
            flight.done.wait()
            if flight.error is not None:
                raise flight.error
            return flight.value, True
        try:
            flight.value = compute()
        except BaseException as exc:
            flight.error = exc
            raise
        finally:
            with self._lock:
                del self._flights[key]
                if flight.error is None and keep(flight.value):
                    self._landed[key] = flight.value
                    while len(self._landed) > self.remember:
                        self._landed.popitem(last=False)
            flight.done.set()
        return flight.value, False
