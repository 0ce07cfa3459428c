"""Reasoning slots: how many images may be in their LMM stage at once.

``concurrency`` in ``eval`` and ``segment_many`` bounds the images whose reasoning is in
flight. An image gives its slot back when its reasoning is done (its run starts the class
alignment, or, without reasoning, the prompt composition or the segmentation), so the
next image's reasoning starts while this one is being aligned, composed and segmented:
LMM latency overlaps that work instead of waiting behind it (docs/design.md §3.9). The
callers run twice as many worker threads as slots, so at most ``concurrency`` more images
are past their reasoning at a time.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator

from openseg_r.errors import ConfigError

MAX_CONCURRENCY = 1024
AFTER_REASONING = ("class_alignment", "prompt_composition", "segmentation")  # the first to start ends it


def checked_concurrency(value: object, name: str = "concurrency") -> int:
    """A number of images in flight, or a one-line error naming ``name`` (an option or argument)."""
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_CONCURRENCY:
        raise ConfigError(f"{name} must be between 1 and {MAX_CONCURRENCY}, got {value!r}")
    return value


class ReasoningSlots:
    def __init__(self, concurrency: int) -> None:
        self.concurrency = checked_concurrency(concurrency)
        self._free = threading.BoundedSemaphore(self.concurrency)

    @property
    def workers(self) -> int:
        """Threads to run images on: as many again as slots, so that many may be past their
        reasoning; with one slot, one thread (strictly one image at a time)."""
        return 1 if self.concurrency == 1 else 2 * self.concurrency

    @contextlib.contextmanager
    def slot(self) -> Iterator[Callable[[dict], None]]:
        """Hold a slot; yields an ``on_event`` handler for the run's step log that gives the
        slot back when the reasoning is done (or, at the latest, when the block ends)."""
        self._free.acquire()
        lock, held = threading.Lock(), [True]

        def release() -> None:
            with lock:
                if held[0]:
                    held[0] = False
                    self._free.release()

        def on_event(event: dict) -> None:
            if event.get("event") == "node_start" and event.get("node") in AFTER_REASONING:
                release()

        try:
            yield on_event
        finally:
            release()
