"""The micro-batcher: concurrent ``segment`` calls share forward passes.

Several graph runs at once (``segment_many``, a pipelined ``eval``, the MCP and LangGraph
servers under concurrent calls) each reach the segmentation node with one image. A
:class:`MicroBatcher` stands in the runtime context where the segmenter would: it is a
:class:`~openseg_r.segmenters.base.Segmenter` whose ``segment`` queues the image and waits, while
one worker thread collects up to ``max_batch`` queued images (waiting at most
``max_wait_ms`` for more, and not at all when no other run could add one) and runs them as
one ``segment_batch`` (docs/design.md §3.9). One image's failure is that image's alone:
a batch that fails is run again image by image, so each caller gets its own result or
its own error. Each image carries its caller's cancel token (:mod:`openseg_r._support.cancel`): a
cancelled caller stops waiting at once, and its image is dropped from the queue, or from
the batch at the next window pass, while the other callers' images go on.
"""

from __future__ import annotations

import queue
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import Future

import numpy as np

from openseg_r._support.cancel import Cancelled, current_token, result_unless_cancelled
from openseg_r.segmenters.base import ClassFilter, SegmentationArrays, SegmentJob

IDLE_EXIT_S = 2.0  # the worker thread ends after this long without work (and starts again on demand)


class MicroBatcher:
    def __init__(
        self,
        segmenter,
        max_batch: int = 8,
        max_wait_ms: float = 5.0,
        expected_callers: Callable[[], int] | None = None,
    ) -> None:
        """``segmenter`` needs ``segment_batch(jobs)``. ``expected_callers()`` says how many
        runs could be about to queue an image (the model's runs in flight); the worker
        waits for more only while a batch holds fewer images than that."""
        if not hasattr(segmenter, "segment_batch"):
            raise TypeError(f"{type(segmenter).__name__} has no segment_batch(): nothing to batch")
        self.segmenter = segmenter
        self.max_batch = max(1, int(max_batch))
        self.max_wait_s = max(0.0, float(max_wait_ms)) / 1000.0
        self.expected_callers = expected_callers or (lambda: self.max_batch)
        self.batch_sizes: Counter[int] = Counter()  # how many forward passes ran with each batch size
        self._queue: queue.Queue = queue.Queue()
        self._worker: threading.Thread | None = None
        self._start_lock = threading.Lock()

    # The Segmenter protocol: the text side and the description are the segmenter's own.
    def query_bank(self, prompts):
        return self.segmenter.query_bank(prompts)

    def describe(self) -> dict:
        return self.segmenter.describe()

    def __getattr__(self, name: str):  # embed_names, config, text, ...: the segmenter's
        if name == "segmenter":
            raise AttributeError(name)
        return getattr(self.segmenter, name)

    def segment(
        self,
        rgb: np.ndarray,
        bank,
        *,
        class_filter: ClassFilter | None = None,
        logit_scale: float = 40.0,
        background_index: int | None = None,
        background_threshold: float = 0.0,
        image_key: str | None = None,
    ) -> SegmentationArrays:
        token = current_token()
        job = SegmentJob(
            rgb, bank, class_filter, logit_scale, background_index, background_threshold, image_key, cancel=token
        )
        future = self.submit(job)
        try:
            return result_unless_cancelled(future, token)
        except Cancelled:
            future.cancel()  # still queued: never run; running: dropped at its next window pass
            raise

    def submit(self, job: SegmentJob) -> Future:
        """Queue one image; the future holds its arrays, or its own error (:class:`Cancelled`
        once ``job.cancel`` is set)."""
        future: Future = Future()
        with self._start_lock:  # the worker cannot retire between this check and the put
            if self._worker is None:
                self._worker = threading.Thread(target=self._serve, name="openseg-r-batcher", daemon=True)
                self._worker.start()
            self._queue.put((job, future))
        return future

    # ------------------------------------------------------------------ the worker

    def _serve(self) -> None:
        while True:
            try:
                first = self._queue.get(timeout=IDLE_EXIT_S)
            except queue.Empty:
                with self._start_lock:
                    if self._queue.empty():
                        self._worker = None
                        return
                continue
            self._run(self._gather(first))

    def _gather(self, first) -> list:
        """``first`` and what else is queued: up to ``max_batch`` images, waiting at most
        ``max_wait_s`` and only while other runs could still add one."""
        batch = [first]
        deadline = time.monotonic() + self.max_wait_s
        while len(batch) < self.max_batch:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or len(batch) >= self.expected_callers():
                    break
                try:
                    item = self._queue.get(timeout=min(remaining, 0.001))
                except queue.Empty:
                    continue
            batch.append(item)
        return batch

    def _run(self, batch: list) -> None:
        live = []
        for job, future in batch:
            if not future.set_running_or_notify_cancel():
                continue
            if job.cancel is not None and job.cancel.cancelled:  # its caller gave up while it was queued
                future.set_exception(job.cancel.error())
                continue
            live.append((job, future))
        if not live:
            return
        self.batch_sizes[len(live)] += 1
        try:
            results = self.segmenter.segment_batch([job for job, _ in live])
        except BaseException as exc:
            if len(live) == 1 or not isinstance(exc, Exception) or isinstance(exc, Cancelled):
                for _, future in live:
                    future.set_exception(exc)
                return
            for job, future in live:  # find whose image it was: each alone
                try:
                    _settle(future, job, self.segmenter.segment_batch([job])[0])
                except Exception as single:
                    future.set_exception(single)
            return
        for (job, future), arrays in zip(live, results):
            _settle(future, job, arrays)


def _settle(future: Future, job: SegmentJob, arrays: SegmentationArrays | None) -> None:
    """The image's arrays; None is the segmenter's word for an image whose caller cancelled."""
    if arrays is None and job.cancel is not None and job.cancel.cancelled:
        future.set_exception(job.cancel.error())
    elif arrays is None:
        future.set_exception(RuntimeError("the segmenter returned no arrays for an image"))
    else:
        future.set_result(arrays)
