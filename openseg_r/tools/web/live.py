"""One browser run, without Gradio: the graph advanced in a service slot, its step-log
events turned into the live trace as they arrive, and the human self-check's questions
answered one at a time with :meth:`SegmentationRun.answer` semantics.

>>> live = runs.add(LiveRun(service, model, rgb, vocabulary, settings, record=False, image_name="voc.jpg"))
>>> for _ in live.start(): page.show(live.trace.html())     # after every batch of events
>>> for _ in live.answer("r1.1", "sofa", 1.0): ...          # paused: one question answered
"""

from __future__ import annotations

import queue
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from openseg_r._support.cancel import CancelToken
from openseg_r.errors import OpenSegRError, clipped
from openseg_r.model import OpenSegR, SegmentationRun
from openseg_r.result import SegmentationResult
from openseg_r.schemas import Vocabulary
from openseg_r.tools.safety import ToolInputError
from openseg_r.tools.service import SegmentationService
from openseg_r.tools.web.trace import LiveTrace

POLL_S = 0.2  # how often the page hears about a step that sends no events
HUMAN_REASON = "answered in the browser"
BUSY = "this run is already working on a step; wait for it to finish"
STEP_ENDED: dict = {"event": "step_ended"}  # put on the event queue when a step's work ends


class LiveRun:
    """A run the page follows. ``trace`` grows as events arrive; when a step ends, exactly
    one of ``questions`` (paused for a person), ``result`` or ``error`` (one line) says how."""

    def __init__(
        self,
        service: SegmentationService,
        model: OpenSegR,
        rgb: np.ndarray,
        vocabulary: Vocabulary,
        settings: dict,
        *,
        record: bool = False,
        image_name: str | None = None,
    ) -> None:
        self.id = uuid.uuid4().hex
        self.service, self.model, self.rgb, self.vocabulary = service, model, rgb, vocabulary
        self.settings, self.record, self.image_name = settings, record, image_name
        self.trace = LiveTrace()
        self.run: SegmentationRun | None = None
        self.error: str | None = None
        self.touched = time.monotonic()
        self._events: queue.Queue = queue.Queue()
        self._labels_key: str | None = None  # the segmenter's label map, from its node_end event
        self._busy = threading.Lock()  # one step at a time: a second click waits for nothing, it is refused

    @property
    def questions(self) -> list[dict]:
        return [] if self.run is None or self.run.result is not None else list(self.run.questions)

    @property
    def result(self) -> SegmentationResult | None:
        return None if self.run is None else self.run.result

    @property
    def run_id(self) -> str | None:
        """Its id in the runs database, when it is recorded there."""
        return self.run.run_id if self.run is not None and self.run.recorded else None

    def crop(self, question: dict, key: str = "crop_key") -> np.ndarray | None:
        """The marked crop (or with ``context_key``, the context view) a question is about."""
        store_key = question.get(key)
        return None if self.run is None or not store_key else self.run.store.get(store_key)

    def segmenter_labels(self) -> np.ndarray | None:
        """The segmenter's label map, once segmentation has run (before the self-check)."""
        if self.run is None or self._labels_key is None:
            return None
        return self.run.store.get(self._labels_key)

    def start(self) -> Iterator[None]:
        """Run the graph until it finishes, fails or pauses with questions."""

        def work(token: CancelToken) -> SegmentationRun:
            return self.model.start(
                self.rgb,
                self.vocabulary,
                on_event=self._events.put,
                cancel=token,
                record=self.record,
                image_name=self.image_name,
                **self.settings,
            )

        def keep(run: SegmentationRun) -> None:
            self.run = run

        yield from self._step(work, keep)

    def answer(self, region_id: str, choice: str, confidence: float) -> Iterator[None]:
        """Answer one pending question and continue: the others stay pending, so a round's
        questions can be answered in any order (:meth:`SegmentationRun.answer`). A click
        while the run is busy with another answer waits for it (at most the call's time
        limit), then answers if its question is still pending."""
        if not self._busy.acquire(timeout=self.service.limits.call_timeout_s):
            self.error = BUSY
            yield
            return
        refusal = self._refusal(region_id, choice)
        if refusal is not None:
            self._busy.release()
            self.error = refusal
            yield
            return
        try:
            confidence = min(1.0, max(0.0, float(confidence)))
        except (TypeError, ValueError):
            confidence = 1.0
        reply = {"choice": choice, "confidence": confidence, "reason": HUMAN_REASON}
        run = self.run

        def work(token: CancelToken) -> SegmentationRun:
            run.cancel = token  # this step's own time limit and stop
            return run.answer({region_id: reply})

        yield from self._locked_step(work, lambda _: None)

    def _refusal(self, region_id: str, choice: str) -> str | None:
        """Why an answer cannot be taken (one line), or None."""
        pending = {q["region_id"]: q for q in self.questions}
        if region_id not in pending:
            return f"no pending question for region {clipped(str(region_id), 40)!r}" + (
                f"; pending: {', '.join(pending)}" if pending else "; this run has none"
            )
        if choice not in pending[region_id]["choices"]:
            return f"{clipped(str(choice), 40)!r} is not one of this question's choices"
        return None

    def _step(self, work, keep) -> Iterator[None]:
        """Advance in a service slot, yielding after each batch of events; a failure or the
        time limit ends the step with one line in ``error``, and the page goes on."""
        if not self._busy.acquire(blocking=False):
            self.error = BUSY
            yield
            return
        yield from self._locked_step(work, keep)

    def _locked_step(self, work, keep) -> Iterator[None]:
        """:meth:`_step` with the run's lock taken; gives it back when the work has ended."""
        self.error = None
        self.touched = time.monotonic()
        call = None
        try:
            try:
                call = self.service.begin(work)
            except ToolInputError as exc:
                self.error = str(exc)
                yield
                return
            call.future.add_done_callback(lambda _: self._events.put(STEP_ENDED))  # wakes the wait below at once
            while not call.future.done() and call.seconds_left() > 0:
                try:
                    self._show(self._events.get(timeout=POLL_S))
                except queue.Empty:
                    pass
                self._drain()
                yield
            try:
                keep(call.result())
                self.error = None  # a click refused meanwhile must not hide this step's outcome
            except OpenSegRError as exc:
                self.error = str(exc)
            except Exception as exc:  # a bug shows as this run's one line, and the server goes on
                self.error = f"internal error: {type(exc).__name__}: {exc}"
            self._drain()
            yield
        finally:
            self.touched = time.monotonic()
            if call is not None and not call.future.done():
                # abandoned at its time limit or by a stop: the run stays busy until that work has
                # really ended, so a retry never advances the same graph thread beside it
                call.future.add_done_callback(lambda _: self._busy.release())
            else:
                self._busy.release()

    def _drain(self) -> None:
        while True:
            try:
                self._show(self._events.get_nowait())
            except queue.Empty:
                return

    def _show(self, event: dict) -> None:
        if event is STEP_ENDED:
            return
        self.trace.add(event)
        if event.get("event") == "node_end" and event.get("node") == "segmentation":
            output = getattr(event.get("output"), "segmentation", None)
            self._labels_key = getattr(output, "labels_key", self._labels_key)


class LiveRuns:
    """The runs pages are following, by id: at most ``capacity``, holding at most
    ``max_held_pixels`` image pixels between them (each keeps its image and, once done, its
    result's arrays), the oldest dropped first; each is forgotten ``idle_s`` after its last
    step (a tab closed mid-question)."""

    def __init__(self, capacity: int = 32, idle_s: float = 3600.0, max_held_pixels: int = 200_000_000) -> None:
        self.capacity, self.idle_s, self.max_held_pixels = capacity, idle_s, max_held_pixels
        self._runs: OrderedDict[str, LiveRun] = OrderedDict()
        self._lock = threading.Lock()

    def add(self, live: LiveRun) -> LiveRun:
        with self._lock:
            self._expire()
            self._runs[live.id] = live
            while len(self._runs) > 1 and (len(self._runs) > self.capacity or self._pixels() > self.max_held_pixels):
                self._runs.popitem(last=False)
        return live

    def _pixels(self) -> int:
        return sum(int(live.rgb.shape[0]) * int(live.rgb.shape[1]) for live in self._runs.values())

    def get(self, run_id: str | None) -> LiveRun:
        with self._lock:
            self._expire()
            live = self._runs.get(str(run_id or ""))
        if live is None:
            raise ToolInputError(
                "this run is no longer kept by the server (it was idle too long, or the server "
                "restarted); start it again"
            )
        return live

    def _expire(self) -> None:
        now = time.monotonic()
        for run_id in [k for k, live in self._runs.items() if now - live.touched > self.idle_s]:
            del self._runs[run_id]


def write_downloads(result: SegmentationResult, folder: Path) -> dict[str, Path]:
    """labels.png, overlay.png and result.json (as ``segment --out`` writes them; with
    instances, instances.json and their outlines too), the panoptic files (as ``segment
    --panoptic`` writes them) and the masks as a COCO file with RLE segmentations."""
    import json

    from openseg_r._support.files import write_atomically
    from openseg_r.panoptic.build import DEFAULT_MIN_AREA
    from openseg_r.tools.output import coco_masks

    paths = result.save(folder, instances=bool(result.instances), panoptic=DEFAULT_MIN_AREA)
    masks = folder / "masks_coco_rle.json"
    text = json.dumps(coco_masks(result, file_name=Path(result.state.image.source or "image").name), indent=1)
    write_atomically(masks, lambda f: f.write(text.encode("utf-8")))
    return paths | {"masks": masks}
